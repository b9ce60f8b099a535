"""Accusation statistics: a score per issued model, its p-value, and the decision rule.

Informed detection: the verifier aligns the suspect to the base model (watermark.align), subtracts the base
model and weights layer l by the embedding scale s_l, giving a fixed vector a = (s_l * (W_suspect - W_base))_i
(zero where the suspect's weight is exactly zero). For a model j whose codeword c_j was not embedded
in the suspect, c_j is independent of a and uniform on {-1, +1}^n, so S_j = <c_j, a> is a Rademacher sum and
Hoeffding's inequality gives, with no assumption on the suspect's weights,

    P(S_j >= z * ||a||) <= exp(-z^2 / 2),   z_j = <c_j, a> / ||a||.

p_j = exp(-z_j^2/2) for z_j > 0 (else 1) is therefore a valid p-value. Accusing model j only when
p_j <= alpha / M (M issued models) bounds, by the union bound, the probability of accusing *any* innocent
user by alpha.
"""
from __future__ import annotations

import math
from typing import Iterable, Iterator

import numpy as np

from watermark.codeword import expand
from watermark.embed import layer_scales

DEFAULT_ALPHA = 1e-9


def weighted_residual(suspect: list[np.ndarray], base: list[np.ndarray]) -> np.ndarray:
    """The aligned suspect minus the base, weighted per layer. Weights the suspect holds at exactly zero
    (pruned) say nothing about any codeword and are left out; that choice looks at the suspect alone."""
    return np.concatenate([
        np.where(s != 0, scale * (s - b), 0.0).ravel()
        for s, b, scale in zip(suspect, base, layer_scales(base), strict=True)
    ]).astype(np.float64)


def z_scores(residual: np.ndarray, seeds: Iterable[bytes], batch: int = 256) -> Iterator[float]:
    """One z per codeword seed; codewords are expanded in batches so memory stays flat."""
    norm = float(np.linalg.norm(residual))
    pending: list[bytes] = []

    def flush() -> Iterator[float]:
        codewords = np.stack([expand(seed, residual.size) for seed in pending])
        scores = codewords @ residual / norm if norm > 0 else np.zeros(len(pending))
        pending.clear()
        yield from (float(z) for z in scores)

    for seed in seeds:
        pending.append(seed)
        if len(pending) == batch:
            yield from flush()
    if pending:
        yield from flush()


def p_value(z: float) -> float:
    return math.exp(-z * z / 2.0) if z > 0 else 1.0


def accusation_threshold(models: int, alpha: float = DEFAULT_ALPHA) -> float:
    """The p-value at or under which a model's user is accused, with `models` issued models."""
    return alpha / max(models, 1)
