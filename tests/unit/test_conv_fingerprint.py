"""The fingerprint on convolution kernels, without TensorFlow: embedding at the published positions, alignment
of permuted and rescaled channels across conv -> conv -> flatten -> dense, and scores that name the codeword
that was embedded and no other."""
from __future__ import annotations

import numpy as np
import pytest

from watermark.align import align
from watermark.base import BaseLayer, with_positions
from watermark.codeword import expand
from watermark.detect import Residual, z_scores
from watermark.embed import embed
from watermark.errors import ImplausibleWeights, IncompatibleModel

RNG = np.random.default_rng(14)
KINDS = ["conv1d", "conv1d", "dense", "dense"]


def conv_base(carriers=("conv_1", "conv_2", "hidden", "classes"), version="conv-test-v1"):
    """Conv1D 6->8 (k 5), Conv1D 8->12 (k 3), flatten of 10 steps x 12 channels, Dense 120->16, Dense 16->4."""
    shapes = {"conv_1": (5, 6, 8), "conv_2": (3, 8, 12), "hidden": (120, 16), "classes": (16, 4)}
    layers = tuple(BaseLayer(name, kind, RNG.normal(0, 0.2, shape), name in carriers)
                   for (name, shape), kind in zip(shapes.items(), KINDS))
    return with_positions(version, "test", (40, 6), 4, layers, np.zeros((1, 40, 6), np.float32))


def permute_and_scale(kernels: list[np.ndarray]) -> list[np.ndarray]:
    """A function-preserving edit of the chain: every hidden layer's units shuffled and scaled by a positive
    factor, undone on the next layer (for the dense layer after the flatten, at every flattened step)."""
    k = [kernel.copy() for kernel in kernels]
    for layer in range(3):
        units = k[layer].shape[-1]
        order, scale = RNG.permutation(units), RNG.uniform(0.5, 2.0, units)
        k[layer] = k[layer][..., order] * scale
        nxt = k[layer + 1]
        if layer == 0:
            k[1] = nxt[:, order, :] / scale[None, :, None]
        elif layer == 1:
            rows = nxt.reshape(-1, units, nxt.shape[-1])
            k[2] = (rows[:, order, :] / scale[None, :, None]).reshape(nxt.shape)
        else:
            k[3] = nxt[order, :] / scale[:, None]
    return k


def scores(kernels, base, seeds):
    aligned = align(kernels, [layer.kernel for layer in base.layers], suspect_kinds=KINDS,
                    base_kinds=[layer.kind for layer in base.layers])
    return z_scores(Residual.of(aligned.kernels, base), seeds, workers=1), aligned


def marked_model(base, seed: bytes, strength: float = 0.08) -> list[np.ndarray]:
    tuned = [layer.kernel + RNG.normal(0, 0.02, layer.kernel.shape) for layer in base.layers]  # a fine-tune
    carriers = [kernel for kernel, layer in zip(tuned, base.layers) if layer.carrier]
    marked = iter(embed(carriers, base, expand(seed, base.codeword_length), strength))
    return [next(marked) if layer.carrier else kernel for kernel, layer in zip(tuned, base.layers)]


def test_convolution_kernels_carry_the_fingerprint_through_permuted_and_rescaled_channels():
    base = conv_base()
    seed, others = b"embedded", [f"innocent-{i}".encode() for i in range(200)]
    model = marked_model(base, seed)
    plain, _ = scores(model, base, [seed] + others)
    edited, aligned = scores(permute_and_scale(model), base, [seed] + others)
    assert plain[0] > 20 and edited[0] > 20  # the embedded codeword stands out, before and after the edit
    assert np.max(np.abs(edited[1:])) < 5  # innocent codewords stay within their bound's range
    assert abs(edited[0] - plain[0]) < 0.05 * plain[0]  # alignment undid the edit
    assert any("moved to another position" in line for line in aligned.report)


def test_only_the_named_layers_carry_it_and_the_positions_are_bounded():
    base = conv_base(carriers=("conv_2",))
    assert base.codeword_length == 3 * 8 * 12  # all of conv_2, nothing else
    model = marked_model(base, b"embedded")
    z = scores(model, base, [b"embedded", b"innocent"])[0]
    assert z[0] > 6 and abs(z[1]) < 4  # 288 marked weights under fine-tuning noise: z near 10
    far = [kernel.copy() for kernel in model]
    far[3][0, 0] = 1e30  # in the output layer, which carries nothing and enters no score
    assert scores(far, base, [b"embedded"])[0][0] == z[0]
    every = conv_base(version="conv-test-v2")  # all four layers carry: the same weight is no descendant's
    far = marked_model(every, b"embedded")
    far[3][0, 0] = 1e30
    with pytest.raises(ImplausibleWeights, match="layer 'classes': a weight lies .* base spreads"):
        scores(far, every, [b"embedded"])
    big = with_positions("big-v1", "test", (40, 6), 4,
                         (BaseLayer("wide", "dense", np.zeros((300, 300)), True),), np.zeros((1, 300)))
    assert big.codeword_length == 65_536


def test_a_file_whose_layers_do_not_fit_the_convolution_chain_is_incompatible():
    base = conv_base()
    kernels = [layer.kernel for layer in base.layers]
    base_kernels, base_kinds = kernels, [layer.kind for layer in base.layers]
    with pytest.raises(IncompatibleModel, match="layer 1 is a dense layer, the base model's a convolution"):
        align(kernels, base_kernels, suspect_kinds=["dense", "conv1d", "dense", "dense"], base_kinds=base_kinds)
    wider_taps = [np.zeros((7, 6, 8))] + kernels[1:]
    with pytest.raises(IncompatibleModel, match="layer 1 spans 7 positions"):
        align(wider_taps, base_kernels, suspect_kinds=KINDS, base_kinds=base_kinds)
    odd_flatten = kernels[:2] + [np.zeros((121, 16)), kernels[3]]
    with pytest.raises(IncompatibleModel, match="not a whole number of the 12 channels"):
        align(odd_flatten, base_kernels, suspect_kinds=KINDS, base_kinds=base_kinds)
