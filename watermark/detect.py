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

import hashlib
import math
import multiprocessing
import os
from typing import Callable, Sequence

import numpy as np

from watermark.embed import layer_scales

DEFAULT_ALPHA = 1e-9


def weighted_residual(suspect: list[np.ndarray], base: list[np.ndarray]) -> np.ndarray:
    """The aligned suspect minus the base, weighted per layer. Weights the suspect holds at exactly zero
    (pruned) say nothing about any codeword and are left out; that choice looks at the suspect alone."""
    return np.concatenate([
        np.where(s != 0, scale * (s - b), 0.0).ravel()
        for s, b, scale in zip(suspect, base, layer_scales(base), strict=True)
    ]).astype(np.float64)


class Scorer:
    """z for many codewords at once, exactly, without expanding them to signs.

    With c = 2b - 1 for the codeword's bits b: <c, a> = 2 * sum(b_i a_i) - sum(a_i), and sum(b_i a_i) is one
    table lookup per codeword byte (the table holds, per byte position, the sum of a over each bit pattern)."""

    BYTE_BITS = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).astype(np.float64)  # MSB first

    def __init__(self, residual: np.ndarray):
        self.size = residual.size
        padded = np.concatenate([residual, np.zeros(-residual.size % 8)])
        self.table = (padded.reshape(-1, 8) @ self.BYTE_BITS.T).astype(np.float32)  # (bytes, 256)
        self.offsets = np.arange(self.table.shape[0], dtype=np.int64) * 256
        self.total = float(residual.sum())
        self.norm = float(np.linalg.norm(residual))

    def z(self, seeds: Sequence[bytes]) -> np.ndarray:
        if self.norm == 0 or not seeds:
            return np.zeros(len(seeds))
        width = self.table.shape[0]
        stream = b"".join(hashlib.shake_256(seed).digest(width) for seed in seeds)
        codeword_bytes = np.frombuffer(stream, np.uint8).reshape(len(seeds), width)
        # codeword_length bits are used; padding bits meet zeros in the residual
        ones = np.take(self.table.ravel(), codeword_bytes + self.offsets).sum(axis=1, dtype=np.float64)
        return (2.0 * ones - self.total) / self.norm


def z_scores(residual: np.ndarray, seeds: Sequence[bytes], *, batch: int = 4096, workers: int | None = None,
             progress: Callable[[int, int], None] = lambda done, total: None) -> np.ndarray:
    """One z per seed, in order; over many seeds, on every core."""
    scorer = Scorer(residual)
    chunks = [seeds[i:i + batch] for i in range(0, len(seeds), batch)]
    workers = workers or os.cpu_count() or 1
    if workers == 1 or len(seeds) < PARALLEL_FROM:
        results = []
        for chunk in chunks:
            results.append(scorer.z(chunk))
            progress(sum(map(len, results)), len(seeds))
        return np.concatenate(results) if results else np.zeros(0)
    context = multiprocessing.get_context("spawn")  # no fork of a process that may hold TensorFlow's threads
    with context.Pool(workers, initializer=_init_worker, initargs=(scorer,)) as pool:
        results, done = [], 0
        for scores in pool.imap(_score_chunk, chunks):
            results.append(scores)
            done += len(scores)
            progress(done, len(seeds))
    return np.concatenate(results)


PARALLEL_FROM = 50_000
_worker_scorer: Scorer | None = None


def _init_worker(scorer: Scorer) -> None:
    global _worker_scorer
    _worker_scorer = scorer


def _score_chunk(seeds: Sequence[bytes]) -> np.ndarray:
    return _worker_scorer.z(seeds)


def p_value(z: float) -> float:
    return math.exp(-z * z / 2.0) if z > 0 else 1.0


def accusation_threshold(models: int, alpha: float = DEFAULT_ALPHA) -> float:
    """The p-value at or under which a model's user is accused, with `models` issued models."""
    return alpha / max(models, 1)
