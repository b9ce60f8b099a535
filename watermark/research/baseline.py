"""The anchor we measure against: an Uchida et al. (2017) style projection watermark.

Each user has a secret projection X (256 x one layer's weights: bench/robustness.py takes the largest kernel) and 256 secret bits b. Embedding is
Uchida's regularizer applied after fine-tuning: gradient steps on the binary cross-entropy of sigmoid(X w)
against b, until every bit reads right with a margin. Extraction reads sign(X w) from the file as it is
(no base model, no alignment, as in the paper), and accuses by the binomial tail of matching bits.
Used by bench/robustness.py only, to put our fingerprint's numbers beside the anchor's.
"""
from __future__ import annotations

import hashlib

import numpy as np
from scipy.stats import binom

BITS = 256


class UchidaMark:
    def __init__(self, user_id: str, weights: int):
        seed = int.from_bytes(hashlib.sha256(f"uchida\0{user_id}".encode()).digest()[:8], "big")
        rng = np.random.default_rng(seed)
        self.projection = rng.normal(0.0, 1.0, (BITS, weights))
        self.bits = rng.integers(0, 2, BITS)

    def embed(self, kernel: np.ndarray, rate: float = 1e-3, margin: float = 1.0, steps: int = 500) -> np.ndarray:
        w = kernel.ravel().astype(np.float64).copy()
        signs = 2.0 * self.bits - 1.0
        for _ in range(steps):
            logits = self.projection @ w
            if np.all(signs * logits >= margin):
                break
            # gradient of the binary cross-entropy of sigmoid(X w) against the bits
            w -= rate * self.projection.T @ (1.0 / (1.0 + np.exp(-logits)) - self.bits)
        return w.reshape(kernel.shape)

    def p_value(self, kernel: np.ndarray) -> float:
        """P(a random 256-bit string matches at least this many of the bits): the binomial tail."""
        if kernel.size != self.projection.shape[1]:
            return 1.0  # another shape (dummy neurons): the projection no longer applies
        matches = int(np.sum((self.projection @ kernel.ravel() > 0).astype(int) == self.bits))
        return float(binom.sf(matches - 1, BITS, 0.5))
