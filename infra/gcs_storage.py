"""A BlobStore on a Google Cloud Storage bucket, through google-cloud-storage.

The client honours STORAGE_EMULATOR_HOST, so the same code runs against fake-gcs-server in the dev stack and
the tests. Create-once writes use the generation precondition `if_generation_match=0` (the object must not
exist): of two writers exactly one wins, atomically, on Cloud Storage and on fake-gcs-server alike (a stand-in
that ignores preconditions, such as gcp-storage-emulator, would let both win: do not use one). The runner's
claims, the request limit's slots and the ledger's records rest on it. Download URLs are V4 signed GET URLs: signed with the
credentials' own key where they have one, otherwise through IAM signBlob with the runtime's service account
email and access token, as on Cloud Functions (no key file anywhere).
"""
from __future__ import annotations

from datetime import timedelta
from typing import Iterator

import requests
from google.api_core import exceptions as google_errors
from google.cloud import storage
from google.cloud.storage.retry import DEFAULT_RETRY

from infra.errors import ObjectMissing, TransientError
from infra.ports import BlobInfo
from infra.settings import MAX_URL_TTL

TRANSIENT = (google_errors.ServiceUnavailable, google_errors.InternalServerError, google_errors.TooManyRequests,
             google_errors.GatewayTimeout, google_errors.RetryError, requests.ConnectionError, requests.Timeout)


class GcsBlobStore:
    def __init__(self, client: storage.Client, bucket: str, *, signing_credentials=None,
                 url_endpoint: str | None = None, retry_seconds: float = 30.0):
        self._client = client
        # retry briefly here; past that the step fails and Pub/Sub's redelivery takes over
        self._retry = DEFAULT_RETRY.with_timeout(retry_seconds)
        self._bucket = client.bucket(bucket)
        self._signing_credentials = signing_credentials
        self._url_endpoint = url_endpoint  # where signed URLs point: Google's endpoint unless an emulator's

    def put(self, name: str, data: bytes, *, if_absent: bool = False) -> bool:
        blob = self._bucket.blob(name)
        try:
            with _transient():
                blob.upload_from_string(bytes(data), content_type="application/octet-stream",
                                        if_generation_match=0 if if_absent else None, retry=self._retry)
        except google_errors.PreconditionFailed:
            return False
        return True

    def get(self, name: str) -> bytes:
        try:
            with _transient():
                return self._bucket.blob(name).download_as_bytes(retry=self._retry)
        except google_errors.NotFound:
            raise ObjectMissing(f"no object {name!r}") from None

    def exists(self, name: str) -> bool:
        with _transient():
            return self._bucket.blob(name).exists(retry=self._retry)

    def delete(self, name: str) -> bool:
        try:
            with _transient():
                self._bucket.blob(name).delete(retry=self._retry)
        except google_errors.NotFound:
            return False
        return True

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        with _transient():
            blobs = list(self._client.list_blobs(self._bucket, prefix=prefix or None, retry=self._retry))
        for blob in blobs:
            yield BlobInfo(blob.name, blob.size or 0, blob.time_created)

    def download_url(self, name: str, ttl: timedelta) -> str:
        if not timedelta(0) < ttl <= MAX_URL_TTL:
            raise ValueError(f"a signed URL lives more than 0 and at most 7 days, not {ttl}")
        extra = {"api_access_endpoint": self._url_endpoint} if self._url_endpoint else {}
        return self._bucket.blob(name).generate_signed_url(
            version="v4", expiration=ttl, method="GET", **extra, **self._signing())

    def _signing(self) -> dict:
        if self._signing_credentials is not None:
            return {"credentials": self._signing_credentials}
        credentials = self._client._credentials
        if hasattr(credentials, "sign_bytes") and getattr(credentials, "signer", None) is not None:
            return {}  # a service account key: the library signs locally
        # the runtime's own identity, no key: IAM signBlob signs as this service account
        import google.auth.transport.requests

        if not credentials.valid:
            credentials.refresh(google.auth.transport.requests.Request())
        return {"service_account_email": credentials.service_account_email, "access_token": credentials.token}


class _transient:
    """Storage that is unavailable is the delivery's problem to retry, not the message's fault."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and issubclass(exc_type, TRANSIENT):
            raise TransientError(f"Cloud Storage is unavailable: {exc_type.__name__}") from None
