"""The sealed IML (docs/envelope.md): opens only for its device, user and model, only untouched, in bounded
memory, and never leaves partial plaintext behind."""
from __future__ import annotations

import hashlib
import io
import json
import struct
import tracemalloc

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infra import envelope
from infra.envelope import (
    DigestMismatch, EnvelopeError, InvalidDeviceKey, TrailingData, Truncated, XWingPrivateKey,
    load_device_public_key, open_sealed, open_sealed_bytes, public_key_of, seal, seal_bytes,
)
from iml.device import SUITES
from tests.unit.envelope_vectors import CREATED_AT, FOLDER, apply, new_key, private_key_from_text, raised_by


def vector(suite: str) -> dict:
    return json.loads((FOLDER / f"{suite}.json").read_text())


class OneWayStream(io.RawIOBase):
    """A stream that cannot seek, like a network download."""

    def __init__(self, data: bytes):
        self._inner = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        return self._inner.readinto(buffer)


@pytest.mark.parametrize("suite", SUITES)
def test_every_positive_vector_opens(suite, tmp_path):
    v = vector(suite)
    key = private_key_from_text(suite, v["device_private_key"])
    for source in (bytes.fromhex(v["sealed_hex"]), io.BufferedReader(OneWayStream(bytes.fromhex(v["sealed_hex"])))):
        out = tmp_path / "model.tflite"
        header = open_sealed(source, out, key, expected_user_id="alice", expected_model_id=f"m-vector-{suite}")
        plaintext = out.read_bytes()
        assert hashlib.sha256(plaintext).hexdigest() == v["plaintext"]["sha256"] == header.plaintext_sha256
        assert plaintext == bytes(i % 251 for i in range(v["plaintext"]["size"]))
        assert header.kem_id == v["kem_id"]
        assert envelope.public_key_bytes(load_device_public_key(bytes.fromhex(v["device_public_key_hex"]))) == \
            envelope.public_key_bytes(public_key_of(key))


NEGATIVE = json.loads((FOLDER / "negative.json").read_text())


@pytest.mark.parametrize("case", NEGATIVE["cases"], ids=lambda case: case["name"])
def test_every_negative_vector_raises_its_error(case):
    base = bytes.fromhex(vector("p256")["sealed_hex"])
    others = {name: private_key_from_text(name.split("_")[1], text) for name, text in NEGATIVE["keys"].items()}
    key = private_key_from_text("p256", vector("p256")["device_private_key"])
    assert raised_by(case, base, key, others) == case["error"]


@pytest.mark.parametrize("case", NEGATIVE["cases"], ids=lambda case: case["name"])
def test_a_failed_open_leaves_no_plaintext(case, tmp_path):
    """Also from a stream that cannot seek, where the size is only known at the end."""
    base = bytes.fromhex(vector("p256")["sealed_hex"])
    key_text = NEGATIVE["keys"][case["open_with"]] if "open_with" in case else vector("p256")["device_private_key"]
    key = private_key_from_text(case.get("open_with", "_p256").split("_")[1], key_text)
    stream = io.BufferedReader(OneWayStream(apply(base, case["mutations"])))
    with pytest.raises(EnvelopeError):
        open_sealed(stream, tmp_path / "model.tflite", key, expected_user_id=case.get("expected_user_id"),
                    expected_model_id=case.get("expected_model_id"))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suite", SUITES)
@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 3 * 4096])
def test_seal_then_open_at_chunk_boundaries(suite, size):
    key = new_key(suite)
    model = bytes(range(256)) * (size // 256) + bytes(size % 256)
    sealed = seal_bytes(model, public_key_of(key), user_id="u", model_id="m", created_at=CREATED_AT,
                        chunk_size=4096)
    header, opened = open_sealed_bytes(sealed, key)
    assert opened == model and header.chunk_count == max(1, -(-size // 4096))
    assert len(sealed) == envelope.read_header(io.BytesIO(sealed)).sealed_size


def test_every_seal_is_fresh():
    key = new_key("p256")
    first, second = (seal_bytes(b"model", key.public_key(), user_id="u", model_id="m", created_at=CREATED_AT)
                     for _ in range(2))
    assert first != second


def test_a_false_declared_digest_is_caught_by_a_verifying_reader():
    key = new_key("p256")
    sealed = seal_bytes(b"model" * 1000, key.public_key(), user_id="u", model_id="m", created_at=CREATED_AT,
                        plaintext_sha256="00" * 32)
    with pytest.raises(DigestMismatch):
        open_sealed_bytes(sealed, key)
    assert open_sealed_bytes(sealed, key, verify_digest=False)[1] == b"model" * 1000


class Resized(io.BytesIO):
    """A seekable source whose reported size is off by `delta` from what it yields."""

    def __init__(self, data: bytes, delta: int):
        super().__init__(data)
        self.delta = delta

    def seek(self, *args):
        position = super().seek(*args)
        return position + self.delta if args[1:] == (2,) else position


def test_a_source_shorter_than_it_says_leaves_no_output(tmp_path):
    with pytest.raises(Truncated):
        seal(Resized(b"z" * 5000, +10), tmp_path / "model.iml", new_key("p256").public_key(), user_id="u",
             model_id="m", created_at=CREATED_AT)
    assert list(tmp_path.iterdir()) == []


def test_a_source_that_grows_while_sealed_is_refused():
    with pytest.raises(TrailingData):
        seal(Resized(b"y" * 5000, -1), io.BytesIO(), new_key("p256").public_key(), user_id="u", model_id="m",
             created_at=CREATED_AT)


def test_memory_stays_a_few_chunks_whatever_the_size(tmp_path):
    key = new_key("p256")
    source, sealed, opened = tmp_path / "m", tmp_path / "m.iml", tmp_path / "m.out"
    with open(source, "wb") as f:
        for _ in range(32):
            f.write(bytes(range(256)) * 4096)  # 32 MiB in all
    tracemalloc.start()
    seal(source, sealed, key.public_key(), user_id="u", model_id="m", created_at=CREATED_AT,
         chunk_size=1 << 20)
    open_sealed(sealed, opened, key)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 12 * (1 << 20), f"peak {peak / 2**20:.1f} MiB for a 32 MiB model in 1 MiB chunks"
    assert opened.stat().st_size == 32 << 20


@pytest.mark.parametrize("suite", ["p256", "x25519"])
def test_the_spec_is_enough_for_an_independent_hpke_implementation(suite):
    """Open a vector with pyhpke, following only docs/envelope.md (pyhpke has no X-Wing)."""
    from pyhpke import AEADId, CipherSuite, KDFId, KEMId, KEMKey

    v = vector(suite)
    blob = bytes.fromhex(v["sealed_hex"])
    assert blob[:8] == b"IMLSEAL\x01"
    (header_length,) = struct.unpack(">I", blob[8:12])
    header = json.loads(blob[12:12 + header_length])
    digest = hashlib.sha256(blob[:12 + header_length]).digest()
    (key_block_length,) = struct.unpack(">H", blob[12 + header_length:14 + header_length])
    key_block = blob[14 + header_length:14 + header_length + key_block_length]
    kem = {16: KEMId.DHKEM_P256_HKDF_SHA256, 32: KEMId.DHKEM_X25519_HKDF_SHA256}[header["kem_id"]]
    hpke_suite = CipherSuite.new(kem, KDFId.HKDF_SHA256, AEADId.AES256_GCM)
    n_enc = {16: 65, 32: 32}[header["kem_id"]]
    recipient = KEMKey.from_pem(v["device_private_key"])
    context = hpke_suite.create_recipient_context(key_block[:n_enc], recipient, info=b"IMLSEAL v1 key" + digest)
    data_key = context.open(key_block[n_enc:])
    chunks = -(-header["plaintext_size"] // header["chunk_size"]) or 1
    position, plaintext = 14 + header_length + key_block_length, b""
    for i in range(chunks):
        size = min(header["chunk_size"], header["plaintext_size"] - len(plaintext)) + 16
        nonce = bytes(7) + struct.pack(">I", i) + (b"\x01" if i == chunks - 1 else b"\x00")
        plaintext += AESGCM(data_key).decrypt(nonce, blob[position:position + size], digest)
        position += size
    assert position == len(blob)
    assert hashlib.sha256(plaintext).hexdigest() == header["plaintext_sha256"] == v["plaintext"]["sha256"]


FUZZ_KEY = ec.generate_private_key(ec.SECP256R1())
FUZZ_BASE = seal_bytes(bytes(range(256)) * 20, FUZZ_KEY.public_key(), user_id="u", model_id="m",
                       created_at=CREATED_AT, chunk_size=4096)
mutation = st.one_of(
    st.tuples(st.just("xor"), st.integers(0, len(FUZZ_BASE) - 1), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, len(FUZZ_BASE) - 1), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, len(FUZZ_BASE)), st.integers(0, 255)),
    st.tuples(st.just("u32"), st.sampled_from([8, 12]), st.integers(0, 2**32 - 1)),
)


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mutation, min_size=1, max_size=4))
def test_mutated_envelopes_raise_only_our_typed_errors(mutations):
    blob = bytearray(FUZZ_BASE)
    for op, position, value in mutations:
        position = min(position, max(len(blob) - 1, 0))
        if op == "xor" and blob:
            blob[position] ^= value
        elif op == "truncate":
            del blob[position:]
        elif op == "insert":
            blob.insert(position, value)
        elif op == "u32" and len(blob) >= position + 4:
            blob[position:position + 4] = struct.pack(">I", value)
    try:
        open_sealed_bytes(bytes(blob), FUZZ_KEY)
    except EnvelopeError:
        return
    assert bytes(blob) == FUZZ_BASE, "a changed envelope opened"


@pytest.mark.parametrize(
    "raw, problem",
    [
        (b"\x04" + bytes(64), "not a point on the P-256 curve"),
        (b"\x04" + b"\x01" * 64, "not a point on the P-256 curve"),
        (b"\x00", "got 1 bytes"),
        (bytes(32), "low-order X25519 point"),
        (b"\x04" + bytes(20), "got 21 bytes"),
        (bytes(1215), "got 1215 bytes"),
    ],
)
def test_invalid_device_keys_are_named(raw, problem):
    with pytest.raises(InvalidDeviceKey, match=problem):
        load_device_public_key(raw)


def test_a_compressed_p256_point_is_refused():
    from cryptography.hazmat.primitives import serialization

    compressed = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
    with pytest.raises(InvalidDeviceKey, match="uncompressed"):
        load_device_public_key(compressed)


def test_an_xwing_key_is_its_seed():
    key = XWingPrivateKey.generate()
    assert len(key.public_bytes()) == 1216
    assert XWingPrivateKey(key.seed).public_bytes() == key.public_bytes()
    with pytest.raises(InvalidDeviceKey):
        XWingPrivateKey(b"short")


def test_without_ml_kem_an_xwing_key_is_a_clear_error(monkeypatch):
    from infra.envelope import keys

    monkeypatch.setattr(keys, "_XWING_KEM", None)
    with pytest.raises(InvalidDeviceKey, match="need a cryptography build with ML-KEM"):
        load_device_public_key(bytes(1216))
    with pytest.raises(InvalidDeviceKey, match="need a cryptography build with ML-KEM"):
        XWingPrivateKey.generate()
