"""A fingerprint identity's codeword (watermark.identity): n Rademacher signs (+1/-1) from the fingerprint secret.

The KMS port computes HMAC-SHA256(secret, domain || identity) (the secret never leaves it); SHAKE-256 expands
that seed to n bits. Codewords of different identities are then independent uniform signs to anyone without
the secret, which is what the accusation bound in watermark.detect rests on.
"""
from __future__ import annotations

import hashlib

import numpy as np

from infra.ports import Kms
from watermark.identity import Identity


def codeword_seed(kms: Kms, identity: Identity) -> bytes:
    """The seed under the fingerprint key version the identity names (its ledger records name it)."""
    return kms.fingerprint_mac(identity.message, identity.key_id)


def expand(seed: bytes, n: int) -> np.ndarray:
    """n signs as float32, reproducible from the seed on any machine and NumPy version."""
    bits = np.unpackbits(np.frombuffer(hashlib.shake_256(seed).digest((n + 7) // 8), dtype=np.uint8))[:n]
    return bits.astype(np.float32) * 2.0 - 1.0
