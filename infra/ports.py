"""The small protocols the step handlers depend on: storage, the bus, and the server's keys.

Handlers see only these (bundled as infra.bootstrap.Ports); `infra.bootstrap` decides whether a port is a
local folder or a cloud service.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Iterator, Protocol


@dataclass(frozen=True)
class BlobInfo:
    name: str
    size: int
    created: datetime


class BlobStore(Protocol):
    """A flat namespace of immutable-once-written objects (a GCS bucket, or a local folder)."""

    def put(self, name: str, data: bytes, *, if_absent: bool = False) -> bool:
        """Store `data`; with if_absent, store only when no object has that name. True when written."""

    def get(self, name: str) -> bytes:
        """The object's bytes; raises infra.errors.ObjectMissing when there is none."""

    def exists(self, name: str) -> bool: ...

    def delete(self, name: str) -> bool:
        """True when an object was deleted, False when there was none."""

    def list(self, prefix: str = "") -> Iterator[BlobInfo]: ...

    def download_url(self, name: str, ttl: timedelta) -> str:
        """A URL a device can GET the object from, valid for `ttl`. Secret: never log it."""


class Bus(Protocol):
    def publish(self, topic: str, event: dict) -> None: ...


class Kms(Protocol):
    """The server's keys: data-key wrapping, ledger signatures and the fingerprint secret.

    Key material never leaves the implementation; callers get wrapped keys, signatures and MACs.
    """

    signing_key_id: str
    fingerprint_key_id: str

    def wrap(self, data_key: bytes, aad: bytes) -> bytes: ...

    def unwrap(self, wrapped: bytes, aad: bytes) -> bytes: ...

    def sign(self, message: bytes) -> bytes:
        """ECDSA P-256 over SHA-256, DER-encoded."""

    def public_key_pem(self) -> bytes:
        """The signing key's public half, to verify ledger records."""

    def fingerprint_mac(self, message: bytes, key_id: str | None = None) -> bytes:
        """HMAC-SHA256 under the fingerprint secret: the version `key_id` names (a model's codeword comes from
        the version its ledger record names), or the current one, `fingerprint_key_id`. Raises
        infra.errors.KeyUnavailable for a version this KMS does not hold or may not use."""
