"""A Kms on a local key file: the embedded stand-in for Cloud KMS.

The file is created on first use, readable by its owner only (0600), and holds three keys: an AES-256 key
that wraps data keys, an ECDSA P-256 key that signs ledger records, and the HMAC-SHA256 fingerprint secret.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from infra.errors import KeyUnavailable, UnwrapFailed

_NONCE = 12


class LocalKms:
    def __init__(self, key_file: Path):
        self.key_file = Path(key_file)
        keys = _load_or_create(self.key_file)
        self._wrap_key = AESGCM(base64.b64decode(keys["wrap_key"]))
        self._fingerprint_key = base64.b64decode(keys["fingerprint_key"])
        self._signing_key = serialization.load_pem_private_key(keys["signing_key_pem"].encode(), password=None)
        self.signing_key_id = keys["signing_key_id"]
        self.fingerprint_key_id = keys["fingerprint_key_id"]

    def wrap(self, data_key: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        return nonce + self._wrap_key.encrypt(nonce, data_key, aad)

    def unwrap(self, wrapped: bytes, aad: bytes) -> bytes:
        try:
            return self._wrap_key.decrypt(wrapped[:_NONCE], wrapped[_NONCE:], aad)
        except (InvalidTag, ValueError):
            raise UnwrapFailed("the wrapped data key does not open under this KMS key and context") from None

    def sign(self, message: bytes) -> bytes:
        return self._signing_key.sign(message, ec.ECDSA(hashes.SHA256()))

    def public_key_pem(self) -> bytes:
        return self._signing_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def fingerprint_mac(self, message: bytes, key_id: str | None = None) -> bytes:
        if key_id is not None and key_id != self.fingerprint_key_id:
            raise KeyUnavailable(f"fingerprint key version {key_id!r} is not in this key file")
        return hmac.new(self._fingerprint_key, message, hashlib.sha256).digest()


def _load_or_create(path: Path) -> dict:
    if path.exists():
        return json.loads(path.read_text())
    signing_key = ec.generate_private_key(ec.SECP256R1())
    public_der = signing_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    keys = {
        "version": 1,
        "wrap_key": base64.b64encode(secrets.token_bytes(32)).decode(),
        "fingerprint_key": base64.b64encode(secrets.token_bytes(32)).decode(),
        "fingerprint_key_id": "local-fingerprint-" + secrets.token_hex(8),
        "signing_key_pem": signing_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode(),
        "signing_key_id": "local-signing-" + hashlib.sha256(public_der).hexdigest()[:16],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(keys, f)
    try:
        os.link(tmp, path)  # complete file or nothing; one creator wins
    except FileExistsError:
        keys = json.loads(path.read_text())
    finally:
        os.unlink(tmp)
    return keys
