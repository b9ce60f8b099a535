"""A model's codeword: n Rademacher signs (+1/-1) derived from the fingerprint secret and the model id.

The KMS port computes HMAC-SHA256(secret, domain || model id) (the secret never leaves it); SHAKE-256 expands
that seed to n bits. Codewords of different models are then independent uniform signs to anyone without the
secret, which is what the accusation bound in watermark.detect rests on.
"""
from __future__ import annotations

import hashlib

import numpy as np

from infra.ports import Kms

DOMAIN = b"iml-fingerprint-v1\0"


def codeword_seed(kms: Kms, model_id: str, key_id: str) -> bytes:
    """The seed under fingerprint key version `key_id`: the one the model's ledger record names."""
    return kms.fingerprint_mac(DOMAIN + model_id.encode(), key_id)


def expand(seed: bytes, n: int) -> np.ndarray:
    """n signs as float32, reproducible from the seed on any machine and NumPy version."""
    bits = np.unpackbits(np.frombuffer(hashlib.shake_256(seed).digest((n + 7) // 8), dtype=np.uint8))[:n]
    return bits.astype(np.float32) * 2.0 - 1.0
