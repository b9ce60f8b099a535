"""Opening: the data key unsealed with the device's private key, every chunk authenticated before the model
appears (a destination file is renamed into place only once the last chunk verified)."""
from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from infra.envelope.errors import (ChunkAuthenticationFailed, DigestMismatch, SuiteMismatch, TrailingData, Truncated,
                                   WrongModel, WrongRecipient, WrongUser)
from infra.envelope.header import HPKE_INFO_LABEL, TAG, EnvelopeHead, SealedHeader, nonce, read_header
from infra.envelope.keys import DevicePrivateKey, hpke_key, suite_for
from infra.envelope.streams import Source, atomic_destination, opened_source, readinto_exactly, write_all


def open_sealed(
    source: Source,
    destination: Path,
    device_key: DevicePrivateKey,
    *,
    expected_user_id: str | None = None,
    expected_model_id: str | None = None,
    verify_digest: bool = True,
) -> SealedHeader:
    """Open `source` into the file `destination`, which appears only once every chunk authenticated (and,
    with verify_digest, the model's SHA-256 matched the header's: no extra integrity, but the model is then
    known to be the one the ledger records)."""
    with opened_source(source) as (stream, size):
        head = read_header(stream)
        if size is not None and size < head.sealed_size:
            raise Truncated("the envelope is shorter than its header declares")
        if size is not None and size > head.sealed_size:
            raise TrailingData("bytes follow the final chunk")
        data_key = _unseal_key(head, device_key, expected_user_id, expected_model_id)
        with atomic_destination(Path(destination)) as out:
            _write_opened(stream, out, head, data_key, verify_digest)
    return head.header


def open_sealed_bytes(blob: bytes, device_key: DevicePrivateKey, **expected) -> tuple[SealedHeader, bytes]:
    """`open_sealed` for an envelope held in memory; returns the header and the model."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model"
        header = open_sealed(blob, path, device_key, **expected)
        return header, path.read_bytes()


def _unseal_key(head: EnvelopeHead, device_key, expected_user_id, expected_model_id) -> bytes:
    header, suite = head.header, suite_for(device_key)
    if header.kem_id != suite.kem_id:
        raise SuiteMismatch(f"sealed with KEM 0x{header.kem_id:04x}, opened with a {suite.name} key")
    if expected_user_id is not None and header.user_id != expected_user_id:
        raise WrongUser("the sealed model was issued to another user")
    if expected_model_id is not None and header.model_id != expected_model_id:
        raise WrongModel("the sealed model is another model than expected")
    try:
        data_key = suite.hpke().decrypt(head.sealed_key, hpke_key(device_key), info=HPKE_INFO_LABEL + head.digest)
    except (InvalidTag, ValueError):
        raise WrongRecipient("the data key does not unseal with this device key (another device's, or tampered)") \
            from None
    if len(data_key) != 32:
        raise WrongRecipient("the unsealed data key is not 256 bits")
    return data_key


def _write_opened(stream: BinaryIO, out: BinaryIO, head: EnvelopeHead, data_key: bytes, verify_digest: bool) -> None:
    header, digest, aead = head.header, head.digest, AESGCM(data_key)
    sealed, plain = memoryview(bytearray(header.chunk_size + TAG)), memoryview(bytearray(header.chunk_size))
    hasher = hashlib.sha256() if verify_digest else None
    remaining = header.plaintext_size
    for index in range(header.chunk_count):
        n = min(header.chunk_size, remaining)
        if readinto_exactly(stream, sealed[: n + TAG]) < n + TAG:
            raise Truncated(f"the envelope ends inside chunk {index}")
        try:
            aead.decrypt_into(nonce(index, index == header.chunk_count - 1), sealed[: n + TAG], digest, plain[:n])
        except InvalidTag:
            raise ChunkAuthenticationFailed(f"chunk {index} does not authenticate") from None
        remaining -= n
        if hasher:
            hasher.update(plain[:n])
        write_all(out, plain[:n])
    if stream.read(1):
        raise TrailingData("bytes follow the final chunk")
    if hasher and hasher.hexdigest() != header.plaintext_sha256:
        raise DigestMismatch("the opened model does not have the SHA-256 its header declares")
