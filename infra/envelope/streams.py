"""Where bytes come from and go: sources of known size, destinations that appear only complete, and reads
and writes that are never short."""
from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Union

Source = Union[bytes, Path, BinaryIO]
HASH_BLOCK = 1 << 18


class opened_source:
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


class atomic_destination:
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


def write_all(file: BinaryIO, view: memoryview) -> None:
    """Unbuffered writes may be short; a sealed or opened model must never be."""
    while view:
        view = view[file.write(view):]


def readinto_exactly(stream: BinaryIO, view: memoryview) -> int:
    got = 0
    while got < len(view):
        n = stream.readinto(view[got:])
        if not n:
            break
        got += n
    return got


def read_exactly(stream: BinaryIO, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        block = stream.read(n - got)
        if not block:
            break
        parts.append(block)
        got += len(block)
    return b"".join(parts)


def sha256_of(stream: BinaryIO) -> str:
    start = stream.tell()
    digest = hashlib.sha256()
    while block := stream.read(HASH_BLOCK):
        digest.update(block)
    stream.seek(start)
    return digest.hexdigest()
