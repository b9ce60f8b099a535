"""The envelope's head: the preamble (magic, version, header length), the header (JSON), the key block.

Everything before the first chunk, and the limits a reader holds it to before trusting a byte of it.
"""
from __future__ import annotations

import hashlib
import json
import math
import struct
from dataclasses import asdict, dataclass
from typing import BinaryIO

from infra.envelope.errors import BadMagic, LimitExceeded, MalformedHeader, Truncated, UnsupportedVersion
from infra.envelope.keys import SUITES_BY_KEM_ID
from infra.envelope.streams import read_exactly

MAGIC = b"IMLSEAL"
FORMAT_VERSION = 1
HPKE_INFO_LABEL = b"IMLSEAL v1 key"
KDF_HKDF_SHA256 = 0x0001
AEAD_AES_256_GCM = 0x0002
TAG = 16
DEFAULT_CHUNK_SIZE = 1 << 18  # 256 KiB: stays in cache (measured fastest here) and small for a phone
MIN_CHUNK_SIZE, MAX_CHUNK_SIZE = 1 << 12, 1 << 24
MAX_HEADER = 16 * 1024
MAX_SEALED_KEY = 4096
MAX_PLAINTEXT = 1 << 40
HEADER_FIELDS = {
    "format", "version", "kem_id", "kdf_id", "aead_id", "user_id", "model_id", "content_type",
    "plaintext_size", "plaintext_sha256", "chunk_size", "device_key_sha256", "created_at",
}


@dataclass(frozen=True)
class SealedHeader:
    kem_id: int
    user_id: str
    model_id: str
    content_type: str
    plaintext_size: int
    plaintext_sha256: str
    chunk_size: int
    device_key_sha256: str
    created_at: str
    kdf_id: int = KDF_HKDF_SHA256
    aead_id: int = AEAD_AES_256_GCM

    @property
    def chunk_count(self) -> int:
        return max(1, math.ceil(self.plaintext_size / self.chunk_size))

    def to_bytes(self) -> bytes:
        fields = {"format": "iml-sealed", "version": FORMAT_VERSION, **asdict(self)}
        return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def parse(cls, raw: bytes) -> "SealedHeader":
        try:
            fields = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise MalformedHeader("the header is not UTF-8 JSON") from None
        if not isinstance(fields, dict) or set(fields) != HEADER_FIELDS:
            raise MalformedHeader("the header does not have exactly the fields of format version 1")
        if fields.pop("format") != "iml-sealed" or fields.pop("version") != FORMAT_VERSION:
            raise MalformedHeader("the header's format or version does not match the preamble")
        types = {"kem_id": int, "kdf_id": int, "aead_id": int, "plaintext_size": int, "chunk_size": int}
        for name, value in fields.items():
            if type(value) is not types.get(name, str):
                raise MalformedHeader(f"header field {name} has the wrong type")
        header = cls(**fields)
        header.check_limits()
        return header

    def check_limits(self) -> None:
        size, chunk = self.plaintext_size, self.chunk_size
        if not MIN_CHUNK_SIZE <= chunk <= MAX_CHUNK_SIZE or chunk & (chunk - 1):
            raise LimitExceeded(f"chunk_size must be a power of two from {MIN_CHUNK_SIZE} to {MAX_CHUNK_SIZE}")
        if not 0 <= size <= MAX_PLAINTEXT:
            raise LimitExceeded(f"plaintext_size must be from 0 to {MAX_PLAINTEXT}")
        if self.kem_id not in SUITES_BY_KEM_ID or (self.kdf_id, self.aead_id) != (KDF_HKDF_SHA256, AEAD_AES_256_GCM):
            raise LimitExceeded("the HPKE suite is not one of format version 1")


def preamble(header_bytes: bytes) -> bytes:
    return MAGIC + bytes([FORMAT_VERSION]) + struct.pack(">I", len(header_bytes)) + header_bytes


def nonce(index: int, final: bool) -> bytes:
    return bytes(7) + struct.pack(">I", index) + (b"\x01" if final else b"\x00")


@dataclass(frozen=True)
class EnvelopeHead:
    header: SealedHeader
    digest: bytes  # SHA-256 of the preamble: the chunks' associated data
    sealed_key: bytes
    payload_offset: int

    @property
    def sealed_size(self) -> int:
        """The exact size of the whole envelope its head declares."""
        return self.payload_offset + self.header.plaintext_size + TAG * self.header.chunk_count


def read_header(stream: BinaryIO) -> EnvelopeHead:
    """Everything before the first chunk, checked against the format's limits; `stream` is left at the first
    chunk. Nothing here is authenticated yet: the HPKE unsealing of the data key is what authenticates it."""
    lead = read_exactly(stream, len(MAGIC) + 5)
    if lead[: len(MAGIC)] != MAGIC:
        if MAGIC.startswith(lead):
            raise Truncated("the envelope ends inside its preamble")
        raise BadMagic("not a sealed IML")
    if len(lead) > len(MAGIC) and lead[len(MAGIC)] != FORMAT_VERSION:
        raise UnsupportedVersion(f"unknown sealed IML format version {lead[len(MAGIC)]}")
    if len(lead) < len(MAGIC) + 5:
        raise Truncated("the envelope ends inside its preamble")
    (header_len,) = struct.unpack(">I", lead[len(MAGIC) + 1 :])
    if not 2 <= header_len <= MAX_HEADER:
        raise LimitExceeded(f"the header length must be from 2 to {MAX_HEADER} bytes")
    header_bytes = read_exactly(stream, header_len)
    if len(header_bytes) < header_len:
        raise Truncated("the envelope ends inside its header")
    header = SealedHeader.parse(header_bytes)
    key_len_bytes = read_exactly(stream, 2)
    if len(key_len_bytes) < 2:
        raise Truncated("the envelope ends before its key block")
    (key_len,) = struct.unpack(">H", key_len_bytes)
    if not 1 <= key_len <= MAX_SEALED_KEY:
        raise LimitExceeded(f"the key block length must be from 1 to {MAX_SEALED_KEY} bytes")
    sealed_key = read_exactly(stream, key_len)
    if len(sealed_key) < key_len:
        raise Truncated("the envelope ends inside its key block")
    digest = hashlib.sha256(lead + header_bytes).digest()
    return EnvelopeHead(header, digest, sealed_key, len(lead) + header_len + 2 + key_len)
