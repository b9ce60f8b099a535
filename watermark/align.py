"""Aligning a suspect model to the base model before extraction.

A network's function survives some weight changes that would scramble a naive comparison: its hidden neurons
can be permuted, each scaled by a positive factor (ReLU(a·z) = a·ReLU(z), undone on the next layer), split
into several copies whose outgoing weights add up, or joined by dummy neurons that contribute nothing. The
verifier holds the base model, so it can undo all of these, layer by layer from the input:

- every suspect neuron is matched to the base neuron whose incoming weights it is most parallel to (cosine);
  below `min_cosine` it is a dummy and is dropped;
- its scale against that base neuron is estimated by least squares; a scale outside 1/MAX_SCALE to MAX_SCALE
  is not a rescaling anyone needs to hide a model (the attacks we know use 0.5 to 2), and dividing it out
  would multiply the neuron's outgoing weights without bound, so such a neuron counts as unmatched, is
  dropped and reported;
- the scale is divided out of the incoming weights and multiplied into the outgoing weights, which then
  follow the neuron to its base position (copies of one neuron add up there).

The input features and the output classes have a fixed meaning, so only hidden layers move. Alignment looks
at the suspect and the base model only, never at a codeword: it cannot make an innocent model's codeword
correlate, so the p-values of watermark.detect stay valid.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from watermark.errors import IncompatibleModel

MIN_COSINE = 0.5
MAX_SCALE = 100.0
# A suspect layer may hold this many times the base layer's neurons (dummies and copies); wider is not a
# model made from the base one, and its cosine matrix would be unbounded work.
MAX_WIDTH_FACTOR = 16


@dataclass(frozen=True)
class Alignment:
    kernels: list[np.ndarray]  # the suspect's kernels, in the base model's shapes and neuron order
    report: list[str]  # what was undone, layer by layer, for the evidence report
    matched: list[tuple[int, int]]  # per hidden layer: base neurons that found a suspect neuron, of how many


def align(suspect: list[np.ndarray], base: list[np.ndarray], min_cosine: float = MIN_COSINE) -> Alignment:
    _check_shapes(suspect, base)
    aligned, report, matched = [], [], []
    incoming = suspect[0].astype(np.float64)
    for layer, reference in enumerate(base[:-1]):
        mapping, scales, cosines, out_of_range = _match(incoming, reference.astype(np.float64), min_cosine)
        columns = np.zeros(reference.shape)
        moves = np.zeros((incoming.shape[1], reference.shape[1]))  # suspect neuron -> base neuron, with scale
        for j in np.flatnonzero(mapping >= 0):
            moves[j, mapping[j]] = scales[j]
        # a base neuron takes the best-matching suspect neuron's (rescaled) incoming weights
        for i in range(reference.shape[1]):
            candidates = np.flatnonzero(mapping == i)
            if candidates.size:
                best = candidates[np.argmax(cosines[candidates])]
                columns[:, i] = incoming[:, best] / scales[best]
        aligned.append(columns)
        incoming = moves.T @ suspect[layer + 1].astype(np.float64)  # outgoing weights follow, scaled, summed
        report.append(_describe(layer, mapping, scales, out_of_range, reference.shape[1]))
        matched.append((int(np.unique(mapping[mapping >= 0]).size), reference.shape[1]))
    aligned.append(incoming)
    return Alignment(aligned, report, matched)


def _check_shapes(suspect: list[np.ndarray], base: list[np.ndarray]) -> None:
    if len(suspect) != len(base):
        raise IncompatibleModel(f"the model has {len(suspect)} dense layers, the base model {len(base)}")
    if any(kernel.ndim != 2 or 0 in kernel.shape for kernel in suspect):
        raise IncompatibleModel("the model has a dense layer without inputs or outputs")
    if any(a.shape[1] != b.shape[0] for a, b in zip(suspect, suspect[1:])):
        raise IncompatibleModel("the model's dense layers do not chain (one's outputs are not the next's inputs)")
    if suspect[0].shape[0] != base[0].shape[0] or suspect[-1].shape[1] != base[-1].shape[1]:
        raise IncompatibleModel(
            f"the model maps {suspect[0].shape[0]} inputs to {suspect[-1].shape[1]} outputs, the base model "
            f"{base[0].shape[0]} to {base[-1].shape[1]}")
    for layer, (kernel, reference) in enumerate(zip(suspect[:-1], base[:-1]), start=1):
        if kernel.shape[1] > MAX_WIDTH_FACTOR * reference.shape[1]:
            raise IncompatibleModel(
                f"hidden layer {layer} has {kernel.shape[1]} neurons, more than {MAX_WIDTH_FACTOR} times the base "
                f"model's {reference.shape[1]}")


def _match(incoming: np.ndarray, reference: np.ndarray, min_cosine: float):
    suspect_norms = np.linalg.norm(incoming, axis=0)
    reference_norms = np.linalg.norm(reference, axis=0)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        cosine = (incoming.T @ reference) / np.outer(suspect_norms, reference_norms)
    cosine = np.nan_to_num(cosine, nan=-1.0, posinf=-1.0, neginf=-1.0)
    best = np.argmax(cosine, axis=1)
    best_cosine = cosine[np.arange(len(best)), best]
    scales = (incoming * reference[:, best]).sum(axis=0) / np.maximum(reference_norms[best] ** 2, 1e-30)
    in_range = (scales >= 1.0 / MAX_SCALE) & (scales <= MAX_SCALE)
    parallel = best_cosine >= min_cosine
    mapping = np.where(parallel & in_range, best, -1)
    return mapping, np.where(mapping >= 0, scales, 1.0), best_cosine, parallel & ~in_range


def _describe(layer: int, mapping: np.ndarray, scales: np.ndarray, out_of_range: np.ndarray, base_units: int) -> str:
    kept = mapping[mapping >= 0]
    moved = int(np.sum((mapping >= 0) & (mapping != np.arange(mapping.size))))
    kept_scales = scales[mapping >= 0]
    dropped = int(np.sum(mapping < 0)) - int(out_of_range.sum())
    merged = int(kept.size - np.unique(kept).size)
    missing = base_units - int(np.unique(kept).size)
    scale_range = f"{kept_scales.min():.2f} to {kept_scales.max():.2f}" if kept_scales.size else "none"
    return (f"hidden layer {layer + 1}: {mapping.size} neurons for the base model's {base_units}; "
            f"{moved} moved to another position, scales divided out from {scale_range}, {merged} merged as "
            f"copies, {dropped} dropped as dummies, {int(out_of_range.sum())} unmatched for a scale outside "
            f"1/{MAX_SCALE:g} to {MAX_SCALE:g}, {missing} base neurons without a match")
