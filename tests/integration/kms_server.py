"""An in-process gRPC server speaking Cloud KMS's protocol, with real cryptography, for the adapter's tests.

Cloud KMS has no emulator. This server implements the five methods the adapter uses over a real gRPC
channel, with the request and response messages of google-cloud-kms itself, so the real client is what talks
to it. `corrupt` names response fields to spoil, as a faulty network or service would.
"""
from __future__ import annotations

import hashlib
import hmac
import os
from concurrent import futures

import google_crc32c
import grpc
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.cloud.kms_v1.types import resources, service

KEY_RING = "projects/test/locations/europe-west1/keyRings/iml"
WRAP_KEY = f"{KEY_RING}/cryptoKeys/staging"
SIGNING_KEY_VERSION = f"{KEY_RING}/cryptoKeys/ledger/cryptoKeyVersions/1"
FINGERPRINT_KEY_VERSION = f"{KEY_RING}/cryptoKeys/fingerprint/cryptoKeyVersions/1"
ROTATED_FINGERPRINT_KEY_VERSION = f"{KEY_RING}/cryptoKeys/fingerprint/cryptoKeyVersions/2"


def _crc(data: bytes) -> int:
    return google_crc32c.value(bytes(data))


class FakeCloudKms:
    def __init__(self) -> None:
        self.wrap_key = AESGCM(AESGCM.generate_key(bit_length=256))
        self.signing_key = ec.generate_private_key(ec.SECP256R1())
        self.mac_key = os.urandom(32)  # version 1; version 2 is what a rotation adds
        self.mac_keys = {FINGERPRINT_KEY_VERSION: self.mac_key, ROTATED_FINGERPRINT_KEY_VERSION: os.urandom(32)}
        self.corrupt: set[str] = set()
        self.calls: list[str] = []
        self._server: grpc.Server | None = None

    # --- the methods, with real cryptography

    def encrypt(self, request: service.EncryptRequest, context) -> service.EncryptResponse:
        self._known(request.name, WRAP_KEY, context=context)
        nonce = os.urandom(12)
        ciphertext = nonce + self.wrap_key.encrypt(nonce, request.plaintext, request.additional_authenticated_data)
        return self._spoil(service.EncryptResponse(
            name=WRAP_KEY + "/cryptoKeyVersions/1", ciphertext=ciphertext, ciphertext_crc32c=_crc(ciphertext),
            verified_plaintext_crc32c=request.plaintext_crc32c == _crc(request.plaintext),
            verified_additional_authenticated_data_crc32c=(
                request.additional_authenticated_data_crc32c == _crc(request.additional_authenticated_data))))

    def decrypt(self, request: service.DecryptRequest, context) -> service.DecryptResponse:
        self._known(request.name, WRAP_KEY, context=context)
        if request.ciphertext_crc32c != _crc(request.ciphertext):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "ciphertext checksum mismatch")
        try:
            plaintext = self.wrap_key.decrypt(request.ciphertext[:12], request.ciphertext[12:],
                                              request.additional_authenticated_data)
        except (InvalidTag, ValueError):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Decryption failed")
        return self._spoil(service.DecryptResponse(plaintext=plaintext, plaintext_crc32c=_crc(plaintext)))

    def asymmetric_sign(self, request: service.AsymmetricSignRequest, context) -> service.AsymmetricSignResponse:
        self._known(request.name, SIGNING_KEY_VERSION, context=context)
        digest = request.digest.sha256
        signature = self.signing_key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))
        return self._spoil(service.AsymmetricSignResponse(
            name=SIGNING_KEY_VERSION, signature=signature, signature_crc32c=_crc(signature),
            verified_digest_crc32c=request.digest_crc32c == _crc(digest)))

    def get_public_key(self, request: service.GetPublicKeyRequest, context) -> resources.PublicKey:
        self._known(request.name, SIGNING_KEY_VERSION, context=context)
        pem = self.signing_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        return self._spoil(resources.PublicKey(name=SIGNING_KEY_VERSION, pem=pem, pem_crc32c=_crc(pem.encode()),
                                               algorithm="EC_SIGN_P256_SHA256"))

    def mac_sign(self, request: service.MacSignRequest, context) -> service.MacSignResponse:
        self._known(request.name, *self.mac_keys, context=context)
        mac = hmac.new(self.mac_keys[request.name], request.data, hashlib.sha256).digest()
        return self._spoil(service.MacSignResponse(
            name=request.name, mac=mac, mac_crc32c=_crc(mac),
            verified_data_crc32c=request.data_crc32c == _crc(request.data)))

    # --- plumbing

    def _known(self, name: str, *expected: str, context) -> None:
        self.calls.append(name)
        if name not in expected:
            context.abort(grpc.StatusCode.NOT_FOUND, f"{name} not found")

    def _spoil(self, response):
        for field in self.corrupt:
            value = getattr(response, field, None)
            if isinstance(value, bool):
                setattr(response, field, not value)
            elif isinstance(value, int):
                setattr(response, field, value ^ 1)
            elif isinstance(value, str):
                setattr(response, field, value + "-other")
        return response

    def start(self) -> str:
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(
                getattr(self, method), request_deserializer=request.deserialize, response_serializer=response.serialize)
            for name, method, request, response in (
                ("Encrypt", "encrypt", service.EncryptRequest, service.EncryptResponse),
                ("Decrypt", "decrypt", service.DecryptRequest, service.DecryptResponse),
                ("AsymmetricSign", "asymmetric_sign", service.AsymmetricSignRequest, service.AsymmetricSignResponse),
                ("GetPublicKey", "get_public_key", service.GetPublicKeyRequest, resources.PublicKey),
                ("MacSign", "mac_sign", service.MacSignRequest, service.MacSignResponse),
            )
        }
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("google.cloud.kms.v1.KeyManagementService", handlers),))
        port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()
        return f"127.0.0.1:{port}"

    def stop(self) -> None:
        if self._server:
            self._server.stop(grace=None)
