"""The sealed IML: a model encrypted for one device, bound to one user and one model, streamed in chunks.

docs/envelope.md is the normative specification; this package implements it. In short:

    preamble   = "IMLSEAL" | 0x01 | u32 header length | header (JSON)
    digest     = SHA-256(preamble)
    key block  = u16 length | HPKE base-mode Seal(device key, info = "IMLSEAL v1 key" | digest, data key)
    chunk i    = AES-256-GCM(data key, nonce = 0^7 | u32 i | final flag, chunk, aad = digest)

A fresh 256-bit data key per model; every chunk authenticated with its index and whether it is the last, so
truncation, reordering and appending are detected; the header (user, model, sizes, digests, suite) bound
into the HPKE info and every chunk. Sealing and opening hold a few chunks in memory whatever the model's
size; opening writes to a temporary file and renames it only once the last chunk verified.

A small library: it needs the standard library and `cryptography` only, and every failure is an
EnvelopeError subclass (errors.py). By job: keys.py (device keys and suites), header.py (preamble, header,
limits), sealing.py, opening.py, streams.py (sources, destinations, exact reads and writes).
"""
from infra.envelope.errors import (BadMagic, ChunkAuthenticationFailed, DigestMismatch, EnvelopeError,
                                   InvalidDeviceKey, LimitExceeded, MalformedHeader, SuiteMismatch, TrailingData,
                                   Truncated, UnsupportedVersion, WrongModel, WrongRecipient, WrongUser)
from infra.envelope.header import DEFAULT_CHUNK_SIZE, TAG, EnvelopeHead, SealedHeader, read_header
from infra.envelope.keys import (P256, X25519, XWING, DevicePrivateKey, DevicePublicKey, Suite, XWingPrivateKey,
                                 XWingPublicKey, load_device_public_key, public_key_bytes, public_key_of, suite_for)
from infra.envelope.opening import open_sealed, open_sealed_bytes
from infra.envelope.sealing import seal, seal_bytes

__all__ = [
    "BadMagic", "ChunkAuthenticationFailed", "DEFAULT_CHUNK_SIZE", "DevicePrivateKey", "DevicePublicKey",
    "DigestMismatch", "EnvelopeError", "EnvelopeHead", "InvalidDeviceKey", "LimitExceeded", "MalformedHeader",
    "P256", "SealedHeader", "Suite", "SuiteMismatch", "TAG", "TrailingData", "Truncated", "UnsupportedVersion",
    "WrongModel", "WrongRecipient", "WrongUser", "X25519", "XWING", "XWingPrivateKey", "XWingPublicKey",
    "load_device_public_key", "open_sealed", "open_sealed_bytes", "public_key_bytes", "public_key_of",
    "read_header", "seal", "seal_bytes", "suite_for",
]
