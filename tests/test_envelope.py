"""The sealed IML: opens only for its device, its user and its model, and only untouched."""
from __future__ import annotations

import json
import struct
from datetime import datetime, timezone

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519

from infra.envelope import MAGIC, load_device_public_key, open_sealed, seal
from infra.errors import EnvelopeError, InvalidDeviceKey

MODEL = bytes(range(256)) * 40
NOW = datetime(2026, 11, 21, tzinfo=timezone.utc)


def sealed_for(key, user_id="alice", model_id="m-1") -> bytes:
    return seal(MODEL, key.public_key(), user_id=user_id, model_id=model_id, created_at=NOW)


def new_key(kind: str):
    return ec.generate_private_key(ec.SECP256R1()) if kind == "p256" else x25519.X25519PrivateKey.generate()


def kind_of(key) -> str:
    return "x25519" if isinstance(key, x25519.X25519PrivateKey) else "p256"


@pytest.fixture(params=["p256", "x25519"])
def device_key(request):
    return new_key(request.param)


def test_the_device_opens_its_model(device_key):
    header, plaintext = open_sealed(sealed_for(device_key), device_key, expected_user_id="alice",
                                    expected_model_id="m-1")
    assert plaintext == MODEL
    assert (header.user_id, header.model_id, header.plaintext_size) == ("alice", "m-1", len(MODEL))


def test_every_seal_is_fresh(device_key):
    assert sealed_for(device_key) != sealed_for(device_key)


def test_another_device_cannot_open_it(device_key):
    with pytest.raises(EnvelopeError, match="does not open with this device key"):
        open_sealed(sealed_for(device_key), new_key(kind_of(device_key)))


def test_a_key_of_the_other_suite_is_refused(device_key):
    other_kind = "p256" if kind_of(device_key) == "x25519" else "x25519"
    with pytest.raises(EnvelopeError, match="another HPKE suite"):
        open_sealed(sealed_for(device_key), new_key(other_kind))


def _header_span(blob: bytes) -> tuple[int, int]:
    (length,) = struct.unpack_from(">I", blob, len(MAGIC) + 1)
    start = len(MAGIC) + 5
    return start, start + length


def _with_header(blob: bytes, header: dict) -> bytes:
    start, end = _header_span(blob)
    encoded = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    return blob[: start - 4] + struct.pack(">I", len(encoded)) + encoded + blob[end:]


def test_a_blob_relabelled_for_another_user_does_not_open(device_key):
    blob = sealed_for(device_key)
    start, end = _header_span(blob)
    header = json.loads(blob[start:end])
    relabelled = _with_header(blob, {**header, "user_id": "mallory"})
    with pytest.raises(EnvelopeError, match="does not open"):
        open_sealed(relabelled, device_key)


def test_a_blob_for_another_user_or_model_is_refused_before_decrypting(device_key):
    blob = sealed_for(device_key, user_id="bob", model_id="m-2")
    with pytest.raises(EnvelopeError, match="another user"):
        open_sealed(blob, device_key, expected_user_id="alice")
    with pytest.raises(EnvelopeError, match="another model"):
        open_sealed(blob, device_key, expected_model_id="m-1")


@pytest.mark.parametrize("where", ["header", "sealed key", "payload", "tag"])
def test_any_flipped_byte_is_detected(device_key, where):
    blob = bytearray(sealed_for(device_key))
    start, end = _header_span(blob)
    position = {"header": start + 5, "sealed key": end + 10, "payload": len(blob) - 100, "tag": len(blob) - 1}[where]
    blob[position] ^= 0x01
    with pytest.raises(EnvelopeError):
        open_sealed(bytes(blob), device_key)


@pytest.mark.parametrize("cut", [0, 3, len(MAGIC) + 3, 200, -1])
def test_truncated_blobs_are_refused(device_key, cut):
    with pytest.raises(EnvelopeError):
        open_sealed(sealed_for(device_key)[:cut], device_key)


def test_trailing_bytes_are_refused(device_key):
    with pytest.raises(EnvelopeError):
        open_sealed(sealed_for(device_key) + b"\0", device_key)


def test_unknown_version_and_hostile_header_length_are_named(device_key):
    blob = bytearray(sealed_for(device_key))
    blob[len(MAGIC)] = 9
    with pytest.raises(EnvelopeError, match="unknown sealed IML format version 9"):
        open_sealed(bytes(blob), device_key)
    hostile = MAGIC + b"\x01" + struct.pack(">I", 2**32 - 1) + b"{}"
    with pytest.raises(EnvelopeError, match="header length is out of bounds"):
        open_sealed(hostile, device_key)


def _p256_point(key: ec.EllipticCurvePrivateKey, fmt) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.X962, fmt)


@pytest.mark.parametrize(
    "raw, problem",
    [
        (b"\x04" + bytes(64), "not a point on the P-256 curve"),
        (b"\x04" + b"\x01" * 64, "not a point on the P-256 curve"),
        (b"\x00", "got 1 bytes"),
        (bytes(32), "low-order X25519 point"),
        (b"\x04" + bytes(20), "got 21 bytes"),
    ],
)
def test_invalid_device_keys_are_named(raw, problem):
    with pytest.raises(InvalidDeviceKey, match=problem):
        load_device_public_key(raw)


def test_a_compressed_p256_point_is_refused():
    compressed = _p256_point(ec.generate_private_key(ec.SECP256R1()), serialization.PublicFormat.CompressedPoint)
    with pytest.raises(InvalidDeviceKey, match="uncompressed"):
        load_device_public_key(compressed)
