"""A Kms on Cloud KMS, through google-cloud-kms.

Every call sends the CRC32C of what it sends and checks every integrity field of the answer (the
`verified_*_crc32c` flags, the CRC32C of what came back, and the key `name` that answered), as Google asks
of clients: an answer corrupted in transit or by the service is refused, never used.

| port method | Cloud KMS method | key (a variable of settings) |
|---|---|---|
| wrap / unwrap | Encrypt / Decrypt (with the context as additional authenticated data) | a symmetric ENCRYPT_DECRYPT key |
| sign / public_key_pem | AsymmetricSign / GetPublicKey | an EC_SIGN_P256_SHA256 key version |
| fingerprint_mac | MacSign | an HMAC_SHA256 key version |
"""
from __future__ import annotations

import hashlib

import google_crc32c
from google.api_core import exceptions as google_errors
from google.api_core.retry import Retry, if_exception_type
from google.cloud import kms_v1

from infra.errors import KeyUnavailable, TransientError, UnwrapFailed


class KmsIntegrityError(TransientError):
    """An answer failed its CRC32C or key-name check: corrupted on the way; the call may be retried."""


class KmsKeyUnusable(KeyUnavailable):
    """The key does not exist, is disabled, or this service account may not use it."""


def crc32c(data: bytes) -> int:
    return google_crc32c.value(bytes(data))


def client_for(endpoint: str | None = None) -> kms_v1.KeyManagementServiceClient:
    """The real client; with `endpoint` (host:port), over a plaintext channel to a local stand-in."""
    if endpoint is None:
        return kms_v1.KeyManagementServiceClient()
    import grpc
    from google.cloud.kms_v1.services.key_management_service.transports import KeyManagementServiceGrpcTransport

    return kms_v1.KeyManagementServiceClient(
        transport=KeyManagementServiceGrpcTransport(channel=grpc.insecure_channel(endpoint)))


class CloudKms:
    def __init__(self, client: kms_v1.KeyManagementServiceClient, *, wrap_key: str, signing_key_version: str,
                 fingerprint_key_version: str, timeout: float = 30.0):
        self._client = client
        self._wrap_key = wrap_key
        self.signing_key_id = signing_key_version
        self.fingerprint_key_id = fingerprint_key_version
        self._timeout = timeout
        self._public_pem: bytes | None = None

    def wrap(self, data_key: bytes, aad: bytes) -> bytes:
        response = self._call(self._client.encrypt, kms_v1.EncryptRequest(
            name=self._wrap_key, plaintext=data_key, plaintext_crc32c=crc32c(data_key),
            additional_authenticated_data=aad, additional_authenticated_data_crc32c=crc32c(aad)))
        _require(response.verified_plaintext_crc32c and response.verified_additional_authenticated_data_crc32c,
                 "Encrypt did not verify the request's checksums")
        prefix, _, version = response.name.rpartition("/cryptoKeyVersions/")
        _require(prefix == self._wrap_key and version.isdigit(), "Encrypt answered for another key")
        _require(response.ciphertext_crc32c == crc32c(response.ciphertext), "Encrypt's ciphertext failed its CRC32C")
        return response.ciphertext

    def unwrap(self, wrapped: bytes, aad: bytes) -> bytes:
        try:
            response = self._call(self._client.decrypt, kms_v1.DecryptRequest(
                name=self._wrap_key, ciphertext=wrapped, ciphertext_crc32c=crc32c(wrapped),
                additional_authenticated_data=aad, additional_authenticated_data_crc32c=crc32c(aad)))
        except google_errors.InvalidArgument:
            raise UnwrapFailed("the wrapped data key does not open under this KMS key and context") from None
        _require(response.plaintext_crc32c == crc32c(response.plaintext), "Decrypt's plaintext failed its CRC32C")
        return response.plaintext

    def sign(self, message: bytes) -> bytes:
        digest = hashlib.sha256(message).digest()
        response = self._call(self._client.asymmetric_sign, kms_v1.AsymmetricSignRequest(
            name=self.signing_key_id, digest=kms_v1.Digest(sha256=digest), digest_crc32c=crc32c(digest)))
        _require(response.verified_digest_crc32c, "AsymmetricSign did not verify the digest's checksum")
        _require(response.name == self.signing_key_id, "AsymmetricSign answered for another key version")
        _require(response.signature_crc32c == crc32c(response.signature), "the signature failed its CRC32C")
        return response.signature

    def public_key_pem(self) -> bytes:
        if self._public_pem is None:
            response = self._call(self._client.get_public_key, kms_v1.GetPublicKeyRequest(name=self.signing_key_id))
            _require(response.name == self.signing_key_id, "GetPublicKey answered for another key version")
            _require(response.pem_crc32c == crc32c(response.pem.encode()), "the public key failed its CRC32C")
            self._public_pem = response.pem.encode()
        return self._public_pem

    def fingerprint_mac(self, message: bytes, key_id: str | None = None) -> bytes:
        version = key_id or self.fingerprint_key_id
        if not _key_of(version) or _key_of(version) != _key_of(self.fingerprint_key_id):  # ours alone
            raise KmsKeyUnusable(f"{version!r} is not a version of the configured fingerprint key")
        response = self._call(self._client.mac_sign, kms_v1.MacSignRequest(
            name=version, data=message, data_crc32c=crc32c(message)))
        _require(response.verified_data_crc32c, "MacSign did not verify the data's checksum")
        _require(response.name == version, "MacSign answered for another key version")
        _require(response.mac_crc32c == crc32c(response.mac), "the MAC failed its CRC32C")
        return response.mac

    def _call(self, method, request):
        # retry briefly here; past `timeout` the step fails and Pub/Sub's redelivery takes over
        retry = Retry(initial=0.1, maximum=2.0, multiplier=2.0, timeout=self._timeout,
                      predicate=if_exception_type(google_errors.ServiceUnavailable, google_errors.DeadlineExceeded))
        try:
            return method(request=request, retry=retry, timeout=self._timeout)
        except (google_errors.NotFound, google_errors.PermissionDenied, google_errors.FailedPrecondition) as error:
            raise KmsKeyUnusable(f"Cloud KMS refused the key {request.name}: {type(error).__name__}") from None
        except (google_errors.ServiceUnavailable, google_errors.DeadlineExceeded, google_errors.InternalServerError,
                google_errors.TooManyRequests, google_errors.RetryError) as error:
            raise TransientError(f"Cloud KMS is unavailable: {type(error).__name__}") from None


def _key_of(version: str) -> str:
    key, separator, number = version.rpartition("/cryptoKeyVersions/")
    return key if separator and number.isdigit() else ""


def _require(condition: bool, problem: str) -> None:
    if not condition:
        raise KmsIntegrityError(problem)
