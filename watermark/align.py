"""Aligning a suspect model to the base model before extraction.

A network's function survives some weight changes that would scramble a naive comparison: its hidden units
(a Dense layer's neurons, a convolution's output channels) can be permuted, each scaled by a positive factor (ReLU(a·z) = a·ReLU(z), undone on the next layer), split
into several copies whose outgoing weights add up, or joined by dummy neurons that contribute nothing. The
verifier holds the base model, so it can undo all of these, layer by layer from the input:

- every suspect neuron is matched to the base neuron whose incoming weights it is most parallel to (cosine);
  below `min_cosine` it is a dummy and is dropped. In that cosine (and the scale below) the weights from each
  input unit count at most ROW_SLACK times the base's norm of them (measured without the units set aside for
  their scale), so inflated outgoing weights of a unit the function ignores cannot pull every unit it feeds
  away from its match;
- its scale against that base neuron is estimated by least squares; a scale outside 1/MAX_SCALE to MAX_SCALE
  is not a rescaling anyone needs to hide a model (the attacks we know use 0.5 to 2), and dividing it out
  would multiply the neuron's outgoing weights without bound, so such a neuron counts as unmatched, is
  dropped and reported; so is one whose whole incoming weights, the scale divided out, are more than
  MAX_SCALE times its base neuron's (a single weight of 1e30);
- the scale is divided out of the incoming weights and multiplied into the outgoing weights, which then
  follow the neuron to its base position (copies of one neuron add up there).

Given what the file's layers read on the base's probe inputs (`activations`), alignment goes by function as
well: idle units and inputs are set aside, copies are grouped by their activations, outgoing weights fold by
least squares on them, and a layer whose matched units reproduce too little cannot be analysed (`_fold`).

A convolution's output channel is matched by its whole kernel (every tap, every input channel) and moves the
next layer's input channel with it: the next convolution's at every tap, or a Dense layer's at every
flattened location after a Flatten (max pooling commutes with both moves). The input features and the output
classes have a fixed meaning, so only hidden layers move. Alignment looks
at the suspect and the base model only, never at a codeword: it cannot make an innocent model's codeword
correlate, so the p-values of watermark.detect stay valid.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from watermark.errors import IncompatibleModel

MIN_COSINE = 0.5
# In matching, an input unit's weights count up to this many times the base's norm (fine-tuning at ten times
# the learning rate grows a row by well under that; a flood of dead copies' weights by far more).
ROW_SLACK = 1.5
MAX_SCALE = 100.0
# Activations (over the probe) at least this parallel are copies of one unit: float32 rounding, nothing more.
COPY_COSINE = 1.0 - 1e-6
# Below this share of what a hidden layer's units send on reproduced, the file does not run the base's path.
MIN_REPRODUCED = 0.5
# A suspect layer may hold this many times the base layer's neurons (dummies and copies); wider is not a
# model made from the base one, and its cosine matrix would be unbounded work.
MAX_WIDTH_FACTOR = 16


@dataclass(frozen=True)
class Alignment:
    kernels: list[np.ndarray]  # the suspect's kernels, in the base model's shapes and neuron order
    report: list[str]  # what was undone, layer by layer, for the evidence report
    matched: list[tuple[int, int]]  # per hidden layer: base neurons that found a suspect neuron, of how many
    ambiguous: int = 0  # base neurons with two working candidates of comparable weight (functional only)
    functional: bool = False  # aligned by what the units do on the probe, not by their weights alone


def align(suspect: list[np.ndarray], base: list[np.ndarray], min_cosine: float = MIN_COSINE, *,
          suspect_kinds: list[str] | None = None, base_kinds: list[str] | None = None,
          activations: list[np.ndarray] | None = None) -> Alignment:
    """The suspect's kernels in the base model's shapes and unit order. Kinds (watermark.base.LAYER_KINDS) say
    how to read each kernel; without them every layer is dense. `activations` (watermark.reader.
    probe_activations: per suspect kernel, what it reads on the base's probe inputs) make the alignment
    functional (see `_fold`); without them it goes by the weights alone."""
    suspect_kinds = suspect_kinds or ["dense"] * len(suspect)
    base_kinds = base_kinds or ["dense"] * len(base)
    theirs, ours = _shaped(suspect, suspect_kinds, base_kinds), _shaped(base, base_kinds, base_kinds)
    _check_shapes(theirs, ours)
    sent = _sent(activations, theirs) if activations else None
    aligned, report, matched, ambiguous = [], [], [], 0
    incoming = theirs[0]
    if sent is not None:  # an input that is 0 on every probe input (a digit's corner pixel) is none of the function
        idle_inputs = ~np.any(sent[0] != 0, axis=0)
        incoming = incoming * np.where(idle_inputs, 0.0, 1.0)[None, :, None]
    for layer, reference in enumerate(ours[:-1]):
        flat_in, flat_ref = incoming.reshape(-1, incoming.shape[2]), reference.reshape(-1, reference.shape[2])
        # units set aside for their scale (a silenced neuron's 1e6 weights) would inflate every input unit
        set_aside = _match(flat_in, flat_ref, min_cosine, whole=flat_in)[3]
        counted = (flat_in * np.where(set_aside, 0.0, 1.0)[None, :]).reshape(incoming.shape)
        caps = _row_caps(counted, reference)
        capped = (incoming * caps[None, :, None]).reshape(flat_in.shape)
        mapping, scales, cosines, out_of_range = _match(capped, flat_ref, min_cosine, whole=flat_in)
        outgoing = theirs[layer + 1]
        if sent is None:
            chosen, moves = _by_weights(mapping, scales, cosines, flat_ref.shape[1])
            function = "; weights alone (no activations)"
        else:
            chosen, moves, unsure, function = _fold(mapping, scales, cosines, sent[layer + 1], outgoing,
                                                    flat_ref.shape[1], layer)
            if layer == 0:
                function += f"; {int(idle_inputs.sum())} inputs 0 on every probe input left out"
            ambiguous += unsure
        columns = np.zeros(flat_ref.shape)
        for i, unit in enumerate(chosen):
            if unit >= 0:
                columns[:, i] = flat_in[:, unit] / scales[unit]
        aligned.append(columns.reshape(reference.shape))
        # outgoing weights follow, scaled and summed: the next layer's input channels, at every position
        incoming = np.matmul(moves.T[None], outgoing)
        report.append(_describe(layer, mapping, scales, out_of_range, flat_ref.shape[1], int(np.sum(caps < 1)))
                      + function)
        matched.append((int(np.unique(mapping[mapping >= 0]).size), flat_ref.shape[1]))
    aligned.append(incoming)
    return Alignment([a.reshape(b.shape) for a, b in zip(aligned, base)], report, matched, ambiguous,
                     functional=sent is not None)


def _by_weights(mapping: np.ndarray, scales: np.ndarray, cosines: np.ndarray, base_units: int):
    """Without activations: a base unit takes the best-matching suspect unit's incoming weights, and every unit
    matched to it sends its outgoing weights there, times its scale (copies add up)."""
    chosen = np.full(base_units, -1)
    moves = np.zeros((mapping.size, base_units))  # suspect unit -> base unit, with scale
    for i in range(base_units):
        candidates = np.flatnonzero(mapping == i)
        if candidates.size:
            chosen[i] = candidates[np.argmax(cosines[candidates])]
            moves[candidates, i] = scales[candidates]
    return chosen, moves


def _sent(activations: list[np.ndarray], theirs: list[np.ndarray]) -> list[np.ndarray]:
    """Per weight layer, what each of its input units (the model's inputs, then each hidden layer's units)
    sends on over the probe: (rows, units), a row per probe input (and position, after a convolution or a
    flatten: channels last)."""
    if len(activations) != len(theirs):
        raise IncompatibleModel(f"the model ran {len(activations)} weight layers on the probe inputs and holds "
                                f"{len(theirs)}")
    sent = []
    for layer, (values, kernel) in enumerate(zip(activations, theirs), start=1):
        units = kernel.shape[1]
        if values.ndim != 2 or values.shape[1] % units or values.shape[1] // units not in (1, kernel.shape[0]):
            raise IncompatibleModel(f"layer {layer} read {values.shape[-1]} values per probe row, not its "
                                    f"{units} input channels")
        sent.append(np.asarray(values, np.float64).reshape(-1, units))
    return sent


def _fold(mapping: np.ndarray, scales: np.ndarray, cosines: np.ndarray, sent: np.ndarray, outgoing: np.ndarray,
          base_units: int, layer: int):
    """With activations (`sent`: what each suspect unit sends on over the probe), by function:

    - a unit that never fires on the probe, or sends to nothing, carries nothing of the model's function: it
      is set aside, and its weights (another user's, a flood) count nowhere;
    - the suspect units matched to one base unit are grouped into copies (activations proportional on the
      probe); a group carries the sum of its members' outgoing weights, each times its activation's size, so
      copies whose outgoing weights cancel carry nothing; the base unit takes its incoming weights from the
      group that carries the most (a runner-up carrying at least half as much is counted as ambiguous);
    - every matched unit's outgoing weights move to its base unit times the least-squares factor of its
      activation on the chosen unit's (for a copy exactly its scale, for a unit that never fires 0);
    - what the aligned layer reproduces of what the file's units send on (activation times outgoing weights,
      unit by unit) is reported; below MIN_REPRODUCED the file's working path is not the base model's, and
      IncompatibleModel says so.
    """
    units = mapping.size
    sizes = np.sqrt(np.square(sent).sum(axis=0))
    out_norms = np.sqrt(np.square(outgoing).sum(axis=(0, 2)))
    live = (sizes > 0) & (out_norms > 0)
    directions = sent / np.where(sizes > 0, sizes, 1.0)
    chosen, moves = np.full(base_units, -1), np.zeros((units, base_units))
    errors = np.where(live, np.square(sizes * out_norms), 0.0)  # what is not reproduced, unit by unit
    signal = float(errors.sum())
    ambiguous = 0
    for i in range(base_units):
        members = np.flatnonzero((mapping == i) & live)
        if not members.size:
            continue
        carried = []  # (what a group carries, its members)
        remaining = members[np.argsort(-sizes[members] * out_norms[members], kind="stable")]
        while remaining.size:
            copies = remaining[directions[:, remaining].T @ directions[:, remaining[0]] >= COPY_COSINE]
            summed = np.tensordot(outgoing[:, copies, :], sizes[copies], axes=([1], [0]))
            carried.append((float(np.linalg.norm(summed)), copies))
            remaining = np.setdiff1d(remaining, copies, assume_unique=True)
        carried.sort(key=lambda group: -group[0])
        ambiguous += len(carried) > 1 and carried[1][0] >= 0.5 * carried[0][0] > 0
        group = carried[0][1]
        unit = chosen[i] = group[np.argmax(cosines[group])]
        reference = sent[:, unit] / scales[unit]
        factors = (sent[:, members].T @ reference) / (reference @ reference)
        moves[members, i] = factors
        left = sent[:, members] - reference[:, None] * factors[None, :]
        errors[members] = np.square(np.sqrt(np.square(left).sum(axis=0)) * out_norms[members])
    if signal <= 0:
        raise IncompatibleModel(f"hidden layer {layer + 1} sends nothing on over the probe inputs")
    reproduced = 1.0 - float(errors.sum()) / signal
    if not reproduced >= MIN_REPRODUCED:
        raise IncompatibleModel(
            f"hidden layer {layer + 1}: the units matched to the base model reproduce {max(reproduced, 0):.0%} of "
            f"what its units send on over the probe inputs (at least {MIN_REPRODUCED:.0%} needed): its working "
            f"path is not the base model's")
    idle = int(np.sum(~live))
    return chosen, moves, ambiguous, (
        f"; {idle} units idle on the probe ({len(sent)} rows) set aside, {ambiguous} base neurons with two "
        f"working candidates of comparable weight; the aligned layer reproduces {reproduced:.1%} of what its "
        f"units send on over the probe")


_FAMILY = {"dense": "dense", "conv1d": "convolution", "conv2d": "convolution"}


def _shaped(kernels: list[np.ndarray], kinds: list[str], base_kinds: list[str]) -> list[np.ndarray]:
    """Each kernel as (positions, input channels, output units), float64: a dense kernel has one position, or,
    after a convolution, one per flattened location (Keras and TFLite flatten channels last); a 1-D or 2-D
    convolution one per kernel tap. Permuting or scaling a layer's units is then the same operation on the
    next layer's middle axis, whatever the layers are."""
    if len(kernels) != len(base_kinds) or len(kinds) != len(kernels):
        raise IncompatibleModel(f"the model has {len(kernels)} weight layers, the base model {len(base_kinds)}")
    shaped = []
    for layer, (kernel, kind, base_kind) in enumerate(zip(kernels, kinds, base_kinds), start=1):
        if kind not in _FAMILY or base_kind not in _FAMILY:
            raise IncompatibleModel(f"layer {layer} is a {kind if kind not in _FAMILY else base_kind} layer, "
                                    f"which alignment does not cover")
        if _FAMILY[kind] != _FAMILY[base_kind]:
            raise IncompatibleModel(f"layer {layer} is a {_FAMILY[kind]} layer, the base model's a {_FAMILY[base_kind]}")
        if kernel.ndim != {"dense": 2, "conv1d": 3, "conv2d": 4}[kind] or 0 in kernel.shape:
            raise IncompatibleModel(f"layer {layer} has a kernel without inputs or outputs")
        kernel = np.asarray(kernel, np.float64)
        shaped.append(kernel[None] if kind == "dense" else kernel.reshape(-1, *kernel.shape[-2:]))
    for layer in range(1, len(shaped)):
        if kinds[layer] == "dense" and kinds[layer - 1] != "dense":  # a flatten between them
            channels, inputs = shaped[layer - 1].shape[2], shaped[layer].shape[1]
            if inputs % channels:
                raise IncompatibleModel(f"layer {layer + 1} takes {inputs} inputs, not a whole number of the "
                                        f"{channels} channels before it")
            shaped[layer] = shaped[layer].reshape(inputs // channels, channels, -1)
    return shaped


def _check_shapes(suspect: list[np.ndarray], base: list[np.ndarray]) -> None:
    if any(a.shape[2] != b.shape[1] for a, b in zip(suspect, suspect[1:])):
        raise IncompatibleModel("the model's layers do not chain (one's outputs are not the next's inputs)")
    for layer, (kernel, reference) in enumerate(zip(suspect, base), start=1):
        if kernel.shape[0] != reference.shape[0]:
            raise IncompatibleModel(f"layer {layer} spans {kernel.shape[0]} positions (kernel taps or flattened "
                                    f"locations), the base model's {reference.shape[0]}")
    if suspect[0].shape[1] != base[0].shape[1] or suspect[-1].shape[2] != base[-1].shape[2]:
        raise IncompatibleModel(
            f"the model maps {suspect[0].shape[1]} input channels to {suspect[-1].shape[2]} outputs, the base "
            f"model {base[0].shape[1]} to {base[-1].shape[2]}")
    for layer, (kernel, reference) in enumerate(zip(suspect[:-1], base[:-1]), start=1):
        if kernel.shape[2] > MAX_WIDTH_FACTOR * reference.shape[2]:
            raise IncompatibleModel(
                f"hidden layer {layer} has {kernel.shape[2]} units, more than {MAX_WIDTH_FACTOR} times the base "
                f"model's {reference.shape[2]}")


def _row_caps(incoming: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per input unit (axis 1), the factor that brings the suspect's weights from it down to at most ROW_SLACK
    times the base's norm: for matching only. A unit whose outgoing weights were inflated where the function
    does not look (a copy that never fires, an input that is always 0) would otherwise pull every unit it feeds
    away from its base unit; capped, it weighs in the cosine no more than an honest one."""
    theirs = np.sqrt(np.square(incoming).sum(axis=(0, 2)))
    ours = np.sqrt(np.square(reference).sum(axis=(0, 2)))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        caps = np.where(theirs > ROW_SLACK * ours, ROW_SLACK * ours / theirs, 1.0)
    return np.nan_to_num(caps, nan=0.0, posinf=0.0, neginf=0.0)


def _match(incoming: np.ndarray, reference: np.ndarray, min_cosine: float, whole: np.ndarray):
    """Each suspect unit's best base unit, its scale, its cosine, and whether it was set aside for its scale:
    one outside 1/MAX_SCALE to MAX_SCALE, or incoming weights (`whole`, uncapped) that, the scale divided out,
    are more than MAX_SCALE times the base unit's."""
    suspect_norms = np.linalg.norm(incoming, axis=0)
    reference_norms = np.linalg.norm(reference, axis=0)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        cosine = (incoming.T @ reference) / np.outer(suspect_norms, reference_norms)
    cosine = np.nan_to_num(cosine, nan=-1.0, posinf=-1.0, neginf=-1.0)
    best = np.argmax(cosine, axis=1)
    best_cosine = cosine[np.arange(len(best)), best]
    scales = (incoming * reference[:, best]).sum(axis=0) / np.maximum(reference_norms[best] ** 2, 1e-30)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        size = np.linalg.norm(whole, axis=0) / (np.abs(scales) * np.maximum(reference_norms[best], 1e-30))
    in_range = (scales >= 1.0 / MAX_SCALE) & (scales <= MAX_SCALE) & (np.nan_to_num(size, nan=np.inf) <= MAX_SCALE)
    parallel = best_cosine >= min_cosine
    mapping = np.where(parallel & in_range, best, -1)
    return mapping, np.where(mapping >= 0, scales, 1.0), best_cosine, parallel & ~in_range


def _describe(layer: int, mapping: np.ndarray, scales: np.ndarray, out_of_range: np.ndarray, base_units: int,
              capped: int) -> str:
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
            f"1/{MAX_SCALE:g} to {MAX_SCALE:g} or weights over {MAX_SCALE:g} times their match's, {missing} base "
            f"neurons without a match; {capped} inputs capped at {ROW_SLACK:g} times the base's weights while "
            f"matching")
