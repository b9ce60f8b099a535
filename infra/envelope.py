"""The sealed IML: a model encrypted for one device, bound to one user and one model, streamed in chunks.

docs/envelope.md is the normative specification; this module implements it. In short:

    preamble   = "IMLSEAL" | 0x01 | u32 header length | header (JSON)
    digest     = SHA-256(preamble)
    key block  = u16 length | HPKE base-mode Seal(device key, info = "IMLSEAL v1 key" | digest, data key)
    chunk i    = AES-256-GCM(data key, nonce = 0^7 | u32 i | final flag, chunk, aad = digest)

A fresh 256-bit data key per model; every chunk authenticated with its index and whether it is the last, so
truncation, reordering and appending are detected; the header (user, model, sizes, digests, suite) bound
into the HPKE info and every chunk. Sealing and opening hold a few chunks in memory whatever the model's
size; opening writes to a temporary file and renames it only once the last chunk verified.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import struct
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, Union

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric import ec, mlkem, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from infra.errors import EnvelopeError, InvalidDeviceKey

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


# --- errors: one class per way an envelope can fail, named in docs/envelope.md and the negative vectors

class BadMagic(EnvelopeError):
    """Not a sealed IML."""


class UnsupportedVersion(EnvelopeError):
    """A format version this reader does not know."""


class MalformedHeader(EnvelopeError):
    """The header is not the JSON object the format requires."""


class LimitExceeded(EnvelopeError):
    """A declared length or size is outside the format's limits."""


class Truncated(EnvelopeError):
    """The envelope ends before what its header declares."""


class TrailingData(EnvelopeError):
    """Bytes follow the final chunk."""


class SuiteMismatch(EnvelopeError):
    """The envelope was sealed for another kind of key than the one opening it."""


class WrongRecipient(EnvelopeError):
    """The data key does not unseal: another device's key, or a changed header or key block."""


class ChunkAuthenticationFailed(EnvelopeError):
    """A chunk was changed, moved, or taken from another envelope."""


class DigestMismatch(EnvelopeError):
    """The plaintext does not have the digest the header declares."""


class WrongUser(EnvelopeError):
    """The envelope was issued to another user than expected."""


class WrongModel(EnvelopeError):
    """The envelope holds another model than expected."""


# --- device keys and suites


class XWingPrivateKey:
    """An X-Wing (MLKEM768-X25519) private key held as its 32-byte seed, as CryptoKit and BoringSSL store it.

    The seed expands with SHAKE-256 to the ML-KEM-768 seed (64 bytes) and the X25519 private key (32 bytes)."""

    SEED_SIZE = 32

    def __init__(self, seed: bytes):
        _require_xwing()
        if len(seed) != self.SEED_SIZE:
            raise InvalidDeviceKey("an X-Wing private key is a 32-byte seed")
        self.seed = bytes(seed)
        expanded = hashlib.shake_256(seed).digest(96)
        self._mlkem = mlkem.MLKEM768PrivateKey.from_seed_bytes(expanded[:64])
        self._x25519 = x25519.X25519PrivateKey.from_private_bytes(expanded[64:])

    @classmethod
    def generate(cls) -> "XWingPrivateKey":
        return cls(os.urandom(cls.SEED_SIZE))

    def hpke_key(self) -> hpke.MLKEM768X25519PrivateKey:
        return hpke.MLKEM768X25519PrivateKey(self._mlkem, self._x25519)

    def public_bytes(self) -> bytes:
        """pk = ML-KEM-768 public key (1184 bytes) || X25519 public key (32 bytes)."""
        return self._mlkem.public_key().public_bytes_raw() + self._x25519.public_key().public_bytes_raw()


@dataclass(frozen=True)
class XWingPublicKey:
    raw: bytes

    def hpke_key(self) -> hpke.MLKEM768X25519PublicKey:
        return hpke.MLKEM768X25519PublicKey(
            mlkem.MLKEM768PublicKey.from_public_bytes(self.raw[:1184]),
            x25519.X25519PublicKey.from_public_bytes(self.raw[1184:]),
        )


DevicePublicKey = Union[ec.EllipticCurvePublicKey, x25519.X25519PublicKey, XWingPublicKey]
DevicePrivateKey = Union[ec.EllipticCurvePrivateKey, x25519.X25519PrivateKey, XWingPrivateKey]


@dataclass(frozen=True)
class Suite:
    name: str
    kem: hpke.KEM
    kem_id: int  # the IANA HPKE KEM identifier, recorded in the header

    def hpke(self) -> hpke.Suite:
        return hpke.Suite(self.kem, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


P256 = Suite("DHKEM(P-256, HKDF-SHA256)", hpke.KEM.P256, 0x0010)
X25519 = Suite("DHKEM(X25519, HKDF-SHA256)", hpke.KEM.X25519, 0x0020)
# X-Wing needs a backend with ML-KEM (cryptography 48+ on a recent OpenSSL); without it, a clear error, not a crash
_XWING_KEM = getattr(hpke.KEM, "MLKEM768_X25519", None)
XWING = Suite("MLKEM768-X25519 (X-Wing)", _XWING_KEM, 0x647A)
SUITES_BY_KEM_ID = {suite.kem_id: suite for suite in (P256, X25519, XWING)}


def _require_xwing() -> None:
    if _XWING_KEM is None or not hasattr(hpke, "MLKEM768X25519PrivateKey"):
        raise InvalidDeviceKey("X-Wing keys need a cryptography build with ML-KEM (cryptography 48+ on OpenSSL "
                               "3.5+); this one has none: use a P-256 or X25519 device key")


def load_device_public_key(raw: bytes) -> DevicePublicKey:
    """A device key as it is sent: SEC1 uncompressed P-256 (65 bytes), raw X25519 (32) or X-Wing (1216)."""
    if len(raw) == 65 and raw[0] == 0x04:
        try:
            return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
        except ValueError:
            raise InvalidDeviceKey("device_public_key is not a point on the P-256 curve") from None
    if len(raw) == 32:
        key = x25519.X25519PublicKey.from_public_bytes(raw)
        try:  # a low-order point gives an all-zero shared secret: HPKE refuses it, so refuse it now
            X25519.hpke().encrypt(b"", key)
        except ValueError:
            raise InvalidDeviceKey("device_public_key is a low-order X25519 point") from None
        return key
    if len(raw) == 1216:
        _require_xwing()
        key = XWingPublicKey(bytes(raw))
        try:
            key.hpke_key()
        except ValueError:
            raise InvalidDeviceKey("device_public_key is not a valid X-Wing public key") from None
        return key
    raise InvalidDeviceKey(
        "device_public_key must be SEC1 uncompressed P-256 (65 bytes, 0x04 first), X25519 (32 bytes) or "
        f"X-Wing (1216 bytes), got {len(raw)} bytes"
    )


def public_key_bytes(key: DevicePublicKey) -> bytes:
    """The encoding `load_device_public_key` reads; its SHA-256 is the header's device_key_sha256."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    if isinstance(key, x25519.X25519PublicKey):
        return key.public_bytes_raw()
    return key.raw


def public_key_of(key: DevicePrivateKey) -> DevicePublicKey:
    if isinstance(key, XWingPrivateKey):
        return XWingPublicKey(key.public_bytes())
    return key.public_key()


def suite_for(key: DevicePublicKey | DevicePrivateKey) -> Suite:
    if isinstance(key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)):
        if not isinstance(key.curve, ec.SECP256R1):
            raise InvalidDeviceKey(f"device keys on {key.curve.name} are not supported; use P-256")
        return P256
    if isinstance(key, (x25519.X25519PublicKey, x25519.X25519PrivateKey)):
        return X25519
    if isinstance(key, (XWingPublicKey, XWingPrivateKey)):
        return XWING
    raise InvalidDeviceKey(f"unsupported device key type {type(key).__name__}")


def _hpke_key(key):
    return key.hpke_key() if isinstance(key, (XWingPublicKey, XWingPrivateKey)) else key


# --- the header


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


def _preamble(header_bytes: bytes) -> bytes:
    return MAGIC + bytes([FORMAT_VERSION]) + struct.pack(">I", len(header_bytes)) + header_bytes


def _nonce(index: int, final: bool) -> bytes:
    return bytes(7) + struct.pack(">I", index) + (b"\x01" if final else b"\x00")


# --- sealing

Source = Union[bytes, Path, BinaryIO]


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
    with _opened_source(source) as (stream, size):
        if size is None:
            raise ValueError("sealing needs the model as bytes, a path or a seekable stream (its size goes first)")
        if plaintext_sha256 is None:
            plaintext_sha256 = _sha256_of(stream)
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
            with _atomic_destination(destination) as out:
                _write_sealed(stream, _FileSink(out), header, suite, device_key)
    return header


def seal_bytes(plaintext: bytes, device_key: DevicePublicKey, **fields) -> bytearray:
    """`seal` for a model held in memory; returns the envelope (a bytearray: copying it into bytes would
    cost a second model-sized allocation)."""
    sink = _MemorySink()
    seal(plaintext, sink, device_key, **fields)
    return sink.buffer


def _write_sealed(stream: BinaryIO, sink: "_Sink", header: SealedHeader, suite: Suite, device_key) -> None:
    preamble = _preamble(header.to_bytes())
    digest = hashlib.sha256(preamble).digest()
    data_key = AESGCM.generate_key(bit_length=256)
    sealed_key = suite.hpke().encrypt(data_key, _hpke_key(device_key), info=HPKE_INFO_LABEL + digest)
    lead = preamble + struct.pack(">H", len(sealed_key)) + sealed_key
    sink.start(len(lead) + header.plaintext_size + TAG * header.chunk_count)
    sink.write(lead)
    aead = AESGCM(data_key)
    plain = memoryview(bytearray(header.chunk_size))  # one buffer for the whole model, whatever its size
    remaining = header.plaintext_size
    for index in range(header.chunk_count):
        n = min(header.chunk_size, remaining)
        if _readinto_exactly(stream, plain[:n]) < n:
            raise Truncated("the source ended before its declared size")
        remaining -= n
        target = sink.reserve(n + TAG)
        aead.encrypt_into(_nonce(index, index == header.chunk_count - 1), plain[:n], digest, target)
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
        _write_all(self._file, view)


class _MemorySink(_Sink):
    """Encrypts straight into the final buffer: no copy, no growth."""

    def start(self, total: int) -> None:
        self.buffer, self._used = bytearray(total), 0

    def reserve(self, n: int) -> memoryview:
        return memoryview(self.buffer)[self._used : self._used + n]

    def commit(self, view: memoryview) -> None:
        self._used += len(view)


# --- opening


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
    lead = _read_exactly(stream, len(MAGIC) + 5)
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
    header_bytes = _read_exactly(stream, header_len)
    if len(header_bytes) < header_len:
        raise Truncated("the envelope ends inside its header")
    header = SealedHeader.parse(header_bytes)
    key_len_bytes = _read_exactly(stream, 2)
    if len(key_len_bytes) < 2:
        raise Truncated("the envelope ends before its key block")
    (key_len,) = struct.unpack(">H", key_len_bytes)
    if not 1 <= key_len <= MAX_SEALED_KEY:
        raise LimitExceeded(f"the key block length must be from 1 to {MAX_SEALED_KEY} bytes")
    sealed_key = _read_exactly(stream, key_len)
    if len(sealed_key) < key_len:
        raise Truncated("the envelope ends inside its key block")
    digest = hashlib.sha256(lead + header_bytes).digest()
    return EnvelopeHead(header, digest, sealed_key, len(lead) + header_len + 2 + key_len)


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
    with _opened_source(source) as (stream, size):
        head = read_header(stream)
        if size is not None and size < head.sealed_size:
            raise Truncated("the envelope is shorter than its header declares")
        if size is not None and size > head.sealed_size:
            raise TrailingData("bytes follow the final chunk")
        data_key = _unseal_key(head, device_key, expected_user_id, expected_model_id)
        with _atomic_destination(Path(destination)) as out:
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
        data_key = suite.hpke().decrypt(head.sealed_key, _hpke_key(device_key), info=HPKE_INFO_LABEL + head.digest)
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
        if _readinto_exactly(stream, sealed[: n + TAG]) < n + TAG:
            raise Truncated(f"the envelope ends inside chunk {index}")
        try:
            aead.decrypt_into(_nonce(index, index == header.chunk_count - 1), sealed[: n + TAG], digest, plain[:n])
        except InvalidTag:
            raise ChunkAuthenticationFailed(f"chunk {index} does not authenticate") from None
        remaining -= n
        if hasher:
            hasher.update(plain[:n])
        _write_all(out, plain[:n])
    if stream.read(1):
        raise TrailingData("bytes follow the final chunk")
    if hasher and hasher.hexdigest() != header.plaintext_sha256:
        raise DigestMismatch("the opened model does not have the SHA-256 its header declares")


# --- sources and destinations


class _opened_source:
    """A readable binary stream and its size (None when it cannot be known without reading)."""

    def __init__(self, source: Source):
        self._source, self._owned = source, None

    def __enter__(self) -> tuple[BinaryIO, int | None]:
        if isinstance(self._source, (bytes, bytearray, memoryview)):
            return io.BytesIO(self._source), len(self._source)
        if isinstance(self._source, (str, Path)):
            self._owned = open(self._source, "rb", buffering=0)  # chunk-sized reads: a buffer only copies
            return self._owned, os.fstat(self._owned.fileno()).st_size
        if self._source.seekable():
            start = self._source.tell()
            size = self._source.seek(0, os.SEEK_END) - start
            self._source.seek(start)
            return self._source, size
        return self._source, None

    def __exit__(self, *exc) -> None:
        if self._owned:
            self._owned.close()


class _atomic_destination:
    """A path destination is written to a temporary file beside it and renamed only on success, so no
    partial output (above all, no partial plaintext) is ever left; a stream destination is used as it is."""

    def __init__(self, destination: Path | BinaryIO):
        self._destination, self._tmp = destination, None

    def __enter__(self) -> BinaryIO:
        if not isinstance(self._destination, (str, Path)):
            return self._destination
        target = Path(self._destination)
        fd, self._tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
        self._file = os.fdopen(fd, "wb", buffering=0)
        return self._file

    def __exit__(self, exc_type, *exc) -> None:
        if self._tmp is None:
            return
        self._file.close()
        if exc_type is None:
            os.replace(self._tmp, self._destination)
        else:
            os.unlink(self._tmp)


def _write_all(file: BinaryIO, view: memoryview) -> None:
    """Unbuffered writes may be short; a sealed or opened model must never be."""
    while view:
        view = view[file.write(view):]


def _readinto_exactly(stream: BinaryIO, view: memoryview) -> int:
    got = 0
    while got < len(view):
        n = stream.readinto(view[got:])
        if not n:
            break
        got += n
    return got


def _read_exactly(stream: BinaryIO, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        block = stream.read(n - got)
        if not block:
            break
        parts.append(block)
        got += len(block)
    return b"".join(parts)


def _sha256_of(stream: BinaryIO) -> str:
    start = stream.tell()
    digest = hashlib.sha256()
    while block := stream.read(DEFAULT_CHUNK_SIZE):
        digest.update(block)
    stream.seek(start)
    return digest.hexdigest()
