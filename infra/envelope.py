"""The sealed IML: a model encrypted for one device, bound to one user and one model.

A fresh 256-bit data key per model encrypts the model with AES-256-GCM; the data key is sealed with
RFC 9180 HPKE (base mode) to the device's public key. The header (suite ids, user id, model id, size,
digest) is the HPKE `info` and the payload's associated data, so a blob moved to another user or model,
or with any header byte changed, does not open.

Layout (all integers big-endian):
    b"IMLSEAL" | u8 format version (1)
    u32 header length | header: canonical JSON
    u16 sealed-key length | HPKE enc || ct (the sealed data key)
    12-byte nonce | AES-256-GCM ciphertext || 16-byte tag
The authenticated prefix (magic through header) is the payload's associated data.
This single-shot version holds the model in memory; the chunked, streaming format is specified in
docs/envelope.md once written (sealed-IML issue).
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from datetime import datetime

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from infra.errors import EnvelopeError, InvalidDeviceKey
from infra.ledger import canonical_json

MAGIC = b"IMLSEAL"
FORMAT_VERSION = 1
# IANA HPKE registry identifiers, recorded in the header
KEM_IDS = {hpke.KEM.P256: 0x0010, hpke.KEM.X25519: 0x0020}
KDF_HKDF_SHA256 = 0x0001
AEAD_AES_256_GCM = 0x0002
MAX_HEADER = 64 * 1024

DevicePublicKey = ec.EllipticCurvePublicKey | x25519.X25519PublicKey
DevicePrivateKey = ec.EllipticCurvePrivateKey | x25519.X25519PrivateKey


def load_device_public_key(raw: bytes) -> DevicePublicKey:
    """A device key as the signup event carries it: SEC1 uncompressed P-256 (65 bytes) or raw X25519 (32)."""
    if len(raw) == 65 and raw[0] == 0x04:
        try:
            return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
        except ValueError:
            raise InvalidDeviceKey("device_public_key is not a point on the P-256 curve") from None
    if len(raw) == 32:
        key = x25519.X25519PublicKey.from_public_bytes(raw)
        try:  # a low-order point gives an all-zero shared secret: HPKE refuses it, so refuse it now
            hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM).encrypt(b"", key)
        except ValueError:
            raise InvalidDeviceKey("device_public_key is a low-order X25519 point") from None
        return key
    raise InvalidDeviceKey(
        f"device_public_key must be SEC1 uncompressed P-256 (65 bytes, 0x04 first) or X25519 (32 bytes), "
        f"got {len(raw)} bytes"
    )


def _kem_for(key) -> hpke.KEM:
    if isinstance(key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)):
        if not isinstance(key.curve, ec.SECP256R1):
            raise InvalidDeviceKey(f"device keys on {key.curve.name} are not supported; use P-256")
        return hpke.KEM.P256
    if isinstance(key, (x25519.X25519PublicKey, x25519.X25519PrivateKey)):
        return hpke.KEM.X25519
    raise InvalidDeviceKey(f"unsupported device key type {type(key).__name__}")


def _suite(kem: hpke.KEM) -> hpke.Suite:
    return hpke.Suite(kem, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


@dataclass(frozen=True)
class SealedHeader:
    user_id: str
    model_id: str
    content_type: str
    plaintext_size: int
    plaintext_sha256: str
    created_at: str
    kem_id: int
    kdf_id: int = KDF_HKDF_SHA256
    aead_id: int = AEAD_AES_256_GCM

    def to_bytes(self) -> bytes:
        return canonical_json({"format": "iml-sealed", "version": FORMAT_VERSION, **self.__dict__})


def seal(
    plaintext: bytes,
    device_key: DevicePublicKey,
    *,
    user_id: str,
    model_id: str,
    created_at: datetime,
    content_type: str = "application/vnd.tflite",
) -> bytes:
    kem = _kem_for(device_key)
    header = SealedHeader(
        user_id=user_id,
        model_id=model_id,
        content_type=content_type,
        plaintext_size=len(plaintext),
        plaintext_sha256=hashlib.sha256(plaintext).hexdigest(),
        created_at=created_at.isoformat(),
        kem_id=KEM_IDS[kem],
    ).to_bytes()
    prefix = MAGIC + bytes([FORMAT_VERSION]) + struct.pack(">I", len(header)) + header
    data_key = AESGCM.generate_key(bit_length=256)
    sealed_key = _suite(kem).encrypt(data_key, device_key, info=header)
    nonce = os.urandom(12)
    payload = AESGCM(data_key).encrypt(nonce, plaintext, prefix)
    return prefix + struct.pack(">H", len(sealed_key)) + sealed_key + nonce + payload


def open_sealed(
    blob: bytes,
    device_key: DevicePrivateKey,
    *,
    expected_user_id: str | None = None,
    expected_model_id: str | None = None,
) -> tuple[SealedHeader, bytes]:
    """The header and the model; EnvelopeError when anything does not authenticate or match."""
    header_bytes, prefix_len = _read_header(blob)
    try:
        fields = json.loads(header_bytes)
        if fields.pop("format") != "iml-sealed" or fields.pop("version") != FORMAT_VERSION:
            raise ValueError
        header = SealedHeader(**fields)
    except (ValueError, KeyError, TypeError):
        raise EnvelopeError("the sealed model's header is malformed") from None
    kem = _kem_for(device_key)
    if header.kem_id != KEM_IDS[kem] or (header.kdf_id, header.aead_id) != (KDF_HKDF_SHA256, AEAD_AES_256_GCM):
        raise EnvelopeError("the sealed model uses another HPKE suite than this device key")
    if expected_user_id is not None and header.user_id != expected_user_id:
        raise EnvelopeError("the sealed model was issued to another user")
    if expected_model_id is not None and header.model_id != expected_model_id:
        raise EnvelopeError("the sealed model is another model than expected")
    rest = blob[prefix_len:]
    if len(rest) < 2:
        raise EnvelopeError("the sealed model is truncated")
    (key_len,) = struct.unpack_from(">H", rest)
    sealed_key, nonce, payload = rest[2 : 2 + key_len], rest[2 + key_len : 14 + key_len], rest[14 + key_len :]
    try:
        data_key = _suite(kem).decrypt(sealed_key, device_key, info=header_bytes)
        plaintext = AESGCM(data_key).decrypt(nonce, payload, blob[:prefix_len])
    except (InvalidTag, ValueError):
        raise EnvelopeError("the sealed model does not open with this device key (wrong key, or tampered)") from None
    if len(plaintext) != header.plaintext_size or hashlib.sha256(plaintext).hexdigest() != header.plaintext_sha256:
        raise EnvelopeError("the opened model does not match the header's size and digest")
    return header, plaintext


def _read_header(blob: bytes) -> tuple[bytes, int]:
    if not blob.startswith(MAGIC):
        raise EnvelopeError("not a sealed IML (bad magic)")
    if len(blob) < len(MAGIC) + 5:
        raise EnvelopeError("the sealed model is truncated")
    if blob[len(MAGIC)] != FORMAT_VERSION:
        raise EnvelopeError(f"unknown sealed IML format version {blob[len(MAGIC)]}")
    (header_len,) = struct.unpack_from(">I", blob, len(MAGIC) + 1)
    start = len(MAGIC) + 5
    if header_len > MAX_HEADER or start + header_len > len(blob):
        raise EnvelopeError("the sealed model's header length is out of bounds")
    return blob[start : start + header_len], start + header_len
