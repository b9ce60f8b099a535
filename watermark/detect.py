"""Accusation statistics: a score per fingerprint identity, its p-value, and the decision rule, in exact arithmetic.

Informed detection: the verifier aligns the suspect to the base model (watermark.align), subtracts the base
model, centres a softmax head's rows across classes, and scales each block (the input unit a weight reads) to
unit RMS, giving a fixed vector a (zero where the suspect's weight is exactly zero); every step looks at the
suspect and the base alone. For an identity j whose codeword c_j was not embedded in the suspect, c_j is
independent of a and uniform on {-1, +1}^n, so S_j = <c_j, a> is a Rademacher sum and
Hoeffding's inequality gives, with no assumption on the suspect's weights,

    P(S_j >= z * ||a||) <= exp(-z^2 / 2),   z_j = <c_j, a> / ||a||.

p_j = exp(-z_j^2/2) for z_j > 0 (else 1) is therefore a valid p-value. Accusing model j only when
p_j <= alpha / M (M identities) bounds, by the union bound, the probability of accusing *any* innocent
user by alpha.

The bound is about the numbers actually compared, so they are computed exactly: the file is first checked
against a bound derived from the base model (RESIDUAL_BOUND), and `a` (|a_i| <= sqrt(its block's size)) is
rounded to integers on a fixed grid (the rounding is
a function of the file and the base alone, so the rounded vector is as independent of every codeword as `a`
is, and the bound holds for it exactly); every S_j is then an exact int64 sum and ||a||^2 an exact integer.
z_j = S_j / ||a|| is the one rounded operation (a few units in the last place). Every z_j is checked to be
finite and at most ||a||_1 / ||a||_2 in size, which no sum of +-a_i can exceed; a violation is a defect,
reported as an error and never as a verdict. p-values are reported as log10 p = -z^2 / (2 ln 10): p itself
underflows a double above z = 38.6, and "p = 0" would claim an impossibility.
"""
from __future__ import annotations

import hashlib
import math
import multiprocessing
import os
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from watermark.base import PublishedBase
from watermark.errors import ImplausibleWeights, ScoringError

DEFAULT_ALPHA = 1e-9
# How far (in base spreads s_l of its layer) an aligned weight may lie from the base model's. Fine-tuning
# moves weights by about learning rate x steps: the demo's users move at most 0.8 s_l, a thief's 50 epochs at
# a 10x learning rate (which costs the model 15 points) 3.5 s_l, a model trained from scratch from another seed
# 5.6 s_l, a 30x learning rate that wrecks the model 10.7 s_l (bench/robustness.py and docs/verifier.md). At
# 100 s_l a layer-1 weight would turn a single pixel (0..16) into a pre-activation of over 200: nothing a
# descendant of the base model holds.
RESIDUAL_BOUND = 100.0
SMALLEST_NORMAL_LOG10 = -307.0  # 10**-307 is a normal double; below it a p-value is given as log10 only
_LN10 = math.log(10.0)


@dataclass(frozen=True)
class Residual:
    """The weighted residual `a` as integers on a grid of `quantum`: |units| <= 2**bits with bits <= 27, so a
    byte's sum of 8 units fits the scorer's int32 table, and n * 2**bits < 2**61, so every sum of +-units is
    exact in int64."""

    units: np.ndarray  # int64
    quantum: float

    @classmethod
    def of(cls, aligned: list[np.ndarray], base: PublishedBase, bound: float = RESIDUAL_BOUND) -> Residual:
        """The aligned suspect's kernels (every layer of the base, in its shapes; the carriers are read) minus
        the base's at the published positions, with what the function ignores taken out and each block scaled
        to unit RMS (see `blocks`). Weights the suspect holds at exactly zero (pruned) say nothing about any
        codeword and are left out. Every step looks at the suspect and the base alone. Raises
        ImplausibleWeights, naming the layer, for a non-finite weight or one beyond `bound` spreads, anywhere in
        a carrier kernel (the other layers enter no score)."""
        if len(aligned) != len(base.layers):
            raise ScoringError(f"{len(aligned)} aligned kernels for the base model's {len(base.layers)} layers")
        parts, largest_block = [], 1
        carriers = [(index, suspect) for index, (suspect, layer) in enumerate(zip(aligned, base.layers))
                    if layer.carrier]
        for (index, suspect), layer, positions, spread in zip(carriers, base.carriers, base.segments, base.spreads,
                                                            strict=True):
            name = f"layer {layer.name!r}"
            if not math.isfinite(spread) or spread <= 0:
                raise ImplausibleWeights(name, "the base model's kernel has no spread to measure against")
            if not np.all(np.isfinite(suspect)):
                raise ImplausibleWeights(name, "after alignment a weight is not finite")
            moved = suspect - layer.kernel
            if index == len(base.layers) - 1 and base.head == "softmax":
                moved = moved - moved.mean(axis=-1, keepdims=True)  # softmax ignores what all classes share
            furthest = float(np.max(np.abs(np.where(suspect != 0, moved, 0.0)), initial=0.0)) / spread
            if not furthest <= bound:
                raise ImplausibleWeights(
                    name, f"a weight lies {furthest:.3g} base spreads from the base model's (a descendant of "
                          f"the base model stays within {bound:g}); refusing to score an implausible file")
            kept = (suspect != 0).ravel()[positions]
            values = np.where(kept, moved.ravel()[positions], 0.0)
            block = blocks(base, index)[positions]
            counts = np.bincount(block, weights=kept.astype(np.float64))
            energy = np.bincount(block, weights=values * values)
            with np.errstate(divide="ignore", invalid="ignore"):
                scale = np.where(energy > 0, np.sqrt(counts / energy), 0.0)  # 1 / RMS of the block's kept values
            parts.append(values * scale[block])
            largest_block = max(largest_block, int(counts.max(initial=1)))
        # |a_i| <= sqrt(its block's count), room for one rounding
        return cls.of_vector(np.concatenate(parts), math.sqrt(largest_block) * (1 + 1e-9))

    @classmethod
    def of_vector(cls, a: np.ndarray, limit: float) -> Residual:
        """`a` (every |a_i| <= limit) on the finest grid that keeps all sums exact."""
        a = np.asarray(a, dtype=np.float64).ravel()
        if not (math.isfinite(limit) and limit > 0 and np.all(np.abs(a) <= limit)):
            raise ScoringError("the residual is not within its stated limit")
        bits = min(27, 61 - max(a.size, 1).bit_length())
        quantum = limit / 2.0 ** bits
        return cls(np.rint(a / quantum).astype(np.int64), quantum)

    @property
    def l1(self) -> int:
        return int(np.abs(self.units).sum())

    @property
    def squared_norm(self) -> int:
        return int(np.square(self.units.astype(object)).sum()) if self.units.size else 0

    @property
    def z_limit(self) -> float:
        """||a||_1 / ||a||_2: no codeword can score more, in either direction."""
        return self.l1 / math.sqrt(self.squared_norm) if self.squared_norm else 0.0


def blocks(base: PublishedBase, index: int) -> np.ndarray:
    """For every weight of layer `index`'s kernel (raveled), its block: the input unit it reads. A Dense row, a
    convolution's input channel at every tap, and after a flatten a channel at every location. A unit the
    function ignores (an input that is always 0, a neuron that never fires) or one given weights to drown the
    mark then fills one block, which counts no more than any other once scaled to unit RMS."""
    layer = base.layers[index]
    shape = layer.kernel.shape
    inputs = np.arange(shape[-2])
    if layer.kind == "dense" and index > 0 and base.layers[index - 1].kind != "dense":
        inputs = inputs % base.layers[index - 1].kernel.shape[-1]  # flattened channels last
    return np.broadcast_to(inputs[:, None], shape).ravel()


class Scorer:
    """z for many codewords at once, exactly, without expanding them to signs.

    With c = 2b - 1 for the codeword's bits b: <c, a> = 2 * sum(b_i a_i) - sum(a_i), and sum(b_i a_i) is one
    table lookup per codeword byte (the table holds, per byte position, the integer sum of a over each bit
    pattern)."""

    BYTE_BITS = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).astype(np.int64)  # MSB first

    def __init__(self, residual: Residual):
        units = residual.units
        padded = np.concatenate([units, np.zeros(-units.size % 8, dtype=np.int64)])
        self.table = (padded.reshape(-1, 8) @ self.BYTE_BITS.T).astype(np.int32)  # (bytes, 256); |entry| < 2**30
        self.offsets = np.arange(self.table.shape[0], dtype=np.int64) * 256
        self.total = int(units.sum())
        self.l1 = residual.l1
        self.norm = math.sqrt(residual.squared_norm)

    def z(self, seeds: Sequence[bytes]) -> np.ndarray:
        if self.norm == 0 or not seeds:
            return np.zeros(len(seeds))
        width = self.table.shape[0]
        stream = b"".join(hashlib.shake_256(seed).digest(width) for seed in seeds)
        codeword_bytes = np.frombuffer(stream, np.uint8).reshape(len(seeds), width)
        # codeword_length bits are used; padding bits meet zeros in the residual
        ones = np.take(self.table.ravel(), codeword_bytes + self.offsets).sum(axis=1, dtype=np.int64)
        sums = 2 * ones - self.total
        if np.any(np.abs(sums) > self.l1):
            raise ScoringError("a score exceeds the sum of the residual's magnitudes")
        return sums / self.norm


def z_scores(residual: Residual, seeds: Sequence[bytes], *, batch: int = 4096, workers: int | None = None,
             progress: Callable[[int, int], None] = lambda done, total: None) -> np.ndarray:
    """One z per seed, in order; over many seeds, on every core. Every z is checked before it is returned."""
    scorer = Scorer(residual)
    chunks = [seeds[i:i + batch] for i in range(0, len(seeds), batch)]
    workers = workers or os.cpu_count() or 1
    if workers == 1 or len(seeds) < PARALLEL_FROM:
        results = []
        for chunk in chunks:
            results.append(scorer.z(chunk))
            progress(sum(map(len, results)), len(seeds))
    else:
        context = multiprocessing.get_context("spawn")  # no fork of a process that may hold TensorFlow's threads
        with context.Pool(workers, initializer=_init_worker, initargs=(scorer,)) as pool:
            results, done = [], 0
            for scores in pool.imap(_score_chunk, chunks):
                results.append(scores)
                done += len(scores)
                progress(done, len(seeds))
    z = np.concatenate(results) if results else np.zeros(0)
    check_scores(z, residual)
    return z


def check_scores(z: np.ndarray, residual: Residual) -> None:
    """Every z finite and within ||a||_1 / ||a||_2 (with room for the final division's rounding)."""
    if z.size and not (np.all(np.isfinite(z)) and np.max(np.abs(z)) <= residual.z_limit * (1 + 1e-12)):
        raise ScoringError("a score is not finite or exceeds ||a||_1 / ||a||_2")


PARALLEL_FROM = 50_000
_worker_scorer: Scorer | None = None


def _init_worker(scorer: Scorer) -> None:
    global _worker_scorer
    _worker_scorer = scorer


def _score_chunk(seeds: Sequence[bytes]) -> np.ndarray:
    return _worker_scorer.z(seeds)


def log10_p_value(z: float) -> float:
    """log10 of the p-value exp(-z^2/2) (z > 0; else p = 1): finite for every finite z."""
    return -(z * z) / (2.0 * _LN10) if z > 0 else 0.0


def representable(log10_p: float) -> float | None:
    """10**log10_p as a double, or None where that would underflow (never 0)."""
    return 10.0 ** log10_p if log10_p >= SMALLEST_NORMAL_LOG10 else None


def log10_threshold(models: int, alpha: float = DEFAULT_ALPHA) -> float:
    """log10 of the p-value at or under which a model's user is accused, with `models` issued models."""
    return math.log10(alpha) - math.log10(max(models, 1))


def z_threshold(log10_threshold_: float) -> float:
    """The z at which log10 p reaches the threshold."""
    return math.sqrt(-2.0 * _LN10 * log10_threshold_) if log10_threshold_ < 0 else 0.0


def format_p(log10_p: float) -> str:
    """A p-value for people: mantissa and decimal exponent from its log10, so it never reads 0."""
    if log10_p >= -3:
        return f"{10.0 ** log10_p:.3g}"
    exponent = math.floor(log10_p)
    mantissa = 10.0 ** (log10_p - exponent)
    if mantissa >= 9.995:  # rounds up to the next power of ten
        mantissa, exponent = 1.0, exponent + 1
    return f"{mantissa:.2f}e{exponent}"
