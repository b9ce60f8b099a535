"""Sealing: a fresh data key per model, sealed to the device key with HPKE; the model in AES-256-GCM chunks."""
from __future__ import annotations

import hashlib
import struct
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from infra.envelope.errors import TrailingData, Truncated
from infra.envelope.header import DEFAULT_CHUNK_SIZE, HPKE_INFO_LABEL, TAG, SealedHeader, nonce, preamble
from infra.envelope.keys import DevicePublicKey, Suite, hpke_key, public_key_bytes, suite_for
from infra.envelope.streams import Source, atomic_destination, opened_source, readinto_exactly, sha256_of, write_all


def seal(
    source: Source,
    destination: Path | BinaryIO,
    device_key: DevicePublicKey,
    *,
    user_id: str,
    model_id: str,
    created_at: datetime,
    content_type: str = "application/vnd.tflite",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    plaintext_sha256: str | None = None,
) -> SealedHeader:
    """Seal `source` for `device_key`. Pass `plaintext_sha256` when it is already known from the same bytes
    (the pipeline's watermark step computed it): one pass. Otherwise it is computed first: two passes. The
    digest is the model's identity in the header; the chunks' tags, not the digest, protect its integrity.
    A path destination appears only complete; a stream destination gets the chunks as they are made."""
    suite = suite_for(device_key)
    with opened_source(source) as (stream, size):
        if size is None:
            raise ValueError("sealing needs the model as bytes, a path or a seekable stream (its size goes first)")
        if plaintext_sha256 is None:
            plaintext_sha256 = sha256_of(stream)
        header = SealedHeader(
            kem_id=suite.kem_id, user_id=user_id, model_id=model_id, content_type=content_type,
            plaintext_size=size, plaintext_sha256=plaintext_sha256, chunk_size=chunk_size,
            device_key_sha256=hashlib.sha256(public_key_bytes(device_key)).hexdigest(),
            created_at=created_at.isoformat(),
        )
        header.check_limits()
        if isinstance(destination, _MemorySink):
            _write_sealed(stream, destination, header, suite, device_key)
        else:
            with atomic_destination(destination) as out:
                _write_sealed(stream, _FileSink(out), header, suite, device_key)
    return header


def seal_bytes(plaintext: bytes, device_key: DevicePublicKey, **fields) -> bytearray:
    """`seal` for a model held in memory; returns the envelope (a bytearray: copying it into bytes would
    cost a second model-sized allocation)."""
    sink = _MemorySink()
    seal(plaintext, sink, device_key, **fields)
    return sink.buffer


def _write_sealed(stream: BinaryIO, sink: "_Sink", header: SealedHeader, suite: Suite, device_key) -> None:
    head = preamble(header.to_bytes())
    digest = hashlib.sha256(head).digest()
    data_key = AESGCM.generate_key(bit_length=256)
    sealed_key = suite.hpke().encrypt(data_key, hpke_key(device_key), info=HPKE_INFO_LABEL + digest)
    lead = head + struct.pack(">H", len(sealed_key)) + sealed_key
    sink.start(len(lead) + header.plaintext_size + TAG * header.chunk_count)
    sink.write(lead)
    aead = AESGCM(data_key)
    plain = memoryview(bytearray(header.chunk_size))  # one buffer for the whole model, whatever its size
    remaining = header.plaintext_size
    for index in range(header.chunk_count):
        n = min(header.chunk_size, remaining)
        if readinto_exactly(stream, plain[:n]) < n:
            raise Truncated("the source ended before its declared size")
        remaining -= n
        target = sink.reserve(n + TAG)
        aead.encrypt_into(nonce(index, index == header.chunk_count - 1), plain[:n], digest, target)
        sink.commit(target)
    if stream.read(1):
        raise TrailingData("the source grew while it was sealed")


class _Sink:
    """Where sealed bytes go: `reserve` a slice to encrypt into, then `commit` it."""

    def start(self, total: int) -> None: ...

    def write(self, data: bytes) -> None:
        target = self.reserve(len(data))
        target[:] = data
        self.commit(target)


class _FileSink(_Sink):
    def __init__(self, file: BinaryIO):
        self._file, self._scratch = file, memoryview(b"")

    def reserve(self, n: int) -> memoryview:
        if len(self._scratch) < n:
            self._scratch = memoryview(bytearray(n))
        return self._scratch[:n]

    def commit(self, view: memoryview) -> None:
        write_all(self._file, view)


class _MemorySink(_Sink):
    """Encrypts straight into the final buffer: no copy, no growth."""

    def start(self, total: int) -> None:
        self.buffer, self._used = bytearray(total), 0

    def reserve(self, n: int) -> memoryview:
        return memoryview(self.buffer)[self._used : self._used + n]

    def commit(self, view: memoryview) -> None:
        self._used += len(view)
