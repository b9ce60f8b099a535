"""A BlobStore on a local folder: the embedded stand-in for a GCS bucket.

Writes are atomic (temporary file, then rename or hard link), so a reader never sees half an object and a
create-once write has exactly one winner, as with a GCS `if_generation_match=0` precondition.
"""
from __future__ import annotations

import os
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator
from urllib.parse import parse_qs, urlencode, urlsplit
from urllib.request import url2pathname

from infra.errors import ObjectMissing
from infra.ports import BlobInfo


class LocalBlobStore:
    def __init__(self, root: Path, *, clock=lambda: datetime.now(timezone.utc)):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._root = str(self.root)
        self._clock = clock

    def _file(self, name: str) -> str:
        parts = name.split("/")
        if not name or "\\" in name or any(part in ("", ".", "..") for part in parts):
            raise ValueError(f"object name {name!r} is not a safe relative name")
        return os.path.join(self._root, *parts)

    def _path(self, name: str) -> Path:
        return Path(self._file(name))

    def put(self, name: str, data: bytes, *, if_absent: bool = False) -> bool:
        path = self._path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            # the object's creation time is what expiry ages it by; it follows this store's clock
            stamp = self._clock().timestamp()
            os.utime(tmp, (stamp, stamp))
            if if_absent:
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    return False
            else:
                os.replace(tmp, path)
            return True
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def get(self, name: str) -> bytes:
        try:
            with open(self._file(name), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise ObjectMissing(f"no object {name!r}") from None

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()

    def delete(self, name: str) -> bool:
        try:
            self._path(name).unlink()
            return True
        except FileNotFoundError:
            return False

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        folder = prefix.rpartition("/")[0]  # walk only below the prefix's folder
        start = self._file(folder) if folder else self._root
        found = []
        self._walk(start, folder + "/" if folder else "", prefix, found)
        for name, stat in sorted(found, key=lambda pair: pair[0]):  # in name order, as Cloud Storage lists
            yield BlobInfo(name, stat.st_size, datetime.fromtimestamp(stat.st_mtime, timezone.utc))

    def _walk(self, directory: str, name_prefix: str, prefix: str, found: list) -> None:
        """(name, stat) of every object below `directory` whose name starts with `prefix`."""
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:  # no object was ever stored there, or it was deleted since
            return
        for entry in entries:
            name = name_prefix + entry.name
            if entry.is_dir(follow_symlinks=False):
                self._walk(entry.path, name + "/", prefix, found)
            elif entry.is_file(follow_symlinks=False) and not entry.name.startswith(".tmp-") \
                    and name.startswith(prefix):
                try:
                    found.append((name, entry.stat()))
                except FileNotFoundError:  # deleted since the walk
                    continue

    def download_url(self, name: str, ttl: timedelta) -> str:
        """A file URL with its expiry; `fetch_local_url` refuses it once expired, as GCS refuses a stale V4 URL."""
        path = self._path(name)
        expires = int((self._clock() + ttl).timestamp())
        return f"{path.as_uri()}?{urlencode({'expires': expires})}"


class UrlExpired(PermissionError):
    """The download URL's lifetime is over."""


def fetch_local_url(url: str, now: datetime) -> bytes:
    """What a device does with a local download URL: GET it, unless it expired."""
    parts = urlsplit(url)
    if parts.scheme != "file":
        raise ValueError("not a local download URL")
    expires = int(parse_qs(parts.query).get("expires", ["0"])[0])
    if now.timestamp() > expires:
        raise UrlExpired("the download URL has expired")
    try:
        return Path(url2pathname(parts.path)).read_bytes()
    except FileNotFoundError:
        raise ObjectMissing("the object behind the download URL is gone") from None
