"""Device keys and the HPKE suites they select: P-256 and X25519 (DHKEM), and X-Wing (MLKEM768-X25519).

A device key travels as bytes: SEC1 uncompressed P-256 (65), raw X25519 (32) or X-Wing (1216); its type
chooses the suite, whose IANA KEM identifier the header records.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Union

from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric import ec, mlkem, x25519

from infra.envelope.errors import InvalidDeviceKey


class XWingPrivateKey:
    """An X-Wing (MLKEM768-X25519) private key held as its 32-byte seed, as CryptoKit and BoringSSL store it.

    The seed expands with SHAKE-256 to the ML-KEM-768 seed (64 bytes) and the X25519 private key (32 bytes)."""

    SEED_SIZE = 32

    def __init__(self, seed: bytes):
        require_xwing()
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


def require_xwing() -> None:
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
        require_xwing()
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


def hpke_key(key):
    return key.hpke_key() if isinstance(key, (XWingPublicKey, XWingPrivateKey)) else key
