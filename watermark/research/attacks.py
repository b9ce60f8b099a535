"""What a thief may do to a leaked model to wash the fingerprint out, while keeping it useful.

Each attack maps a model's weights, `Weights` (kernels and biases, input to output), to new weights; the
ones that need TensorFlow (fine-tuning, TFLite conversion) import it when called. An attack counts only
while the attacked model keeps its accuracy within 5 points of the original (bench/robustness.py checks).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Weights:
    kernels: list[np.ndarray]
    biases: list[np.ndarray]

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The model's class scores: ReLU hidden layers, as the per-user model is built."""
        h = x.astype(np.float64)
        for layer, (kernel, bias) in enumerate(zip(self.kernels, self.biases, strict=True)):
            h = h @ kernel + bias
            if layer < len(self.kernels) - 1:
                h = np.maximum(h, 0.0)
        return h

    def accuracy(self, x: np.ndarray, y: np.ndarray) -> float:
        return float(np.mean(np.argmax(self.predict(x), axis=1) == y))


def gaussian_noise(w: Weights, sigma: float, rng: np.random.Generator) -> Weights:
    """Noise of standard deviation sigma x each layer's own weight spread."""
    return Weights([k + rng.normal(0.0, sigma * np.std(k), k.shape) for k in w.kernels], list(w.biases))


def weight_shift(w: Weights, fraction: float) -> Weights:
    """Move every weight of a layer by the same amount, `fraction` x the layer's spread: a shift the
    detector's residual cannot tell from signal, and that a network tolerates while it is small."""
    return Weights([k + fraction * np.std(k) for k in w.kernels], list(w.biases))


def magnitude_prune(w: Weights, fraction: float) -> Weights:
    """Zero the `fraction` of each kernel's weights with the smallest magnitude."""
    pruned = []
    for kernel in w.kernels:
        cut = np.quantile(np.abs(kernel), fraction)
        pruned.append(np.where(np.abs(kernel) <= cut, 0.0, kernel))
    return Weights(pruned, list(w.biases))


def permute_and_scale(w: Weights, rng: np.random.Generator, low: float = 0.5, high: float = 2.0) -> Weights:
    """Shuffle every hidden layer's neurons and scale each by a positive factor; the function is unchanged."""
    kernels, biases = [k.copy() for k in w.kernels], [b.copy() for b in w.biases]
    for layer in range(len(kernels) - 1):
        units = kernels[layer].shape[1]
        order, scale = rng.permutation(units), rng.uniform(low, high, units)
        kernels[layer] = kernels[layer][:, order] * scale
        biases[layer] = biases[layer][order] * scale
        kernels[layer + 1] = kernels[layer + 1][order, :] / scale[:, None]
    return Weights(kernels, biases)


def dummy_neurons(w: Weights, expansion: float, rng: np.random.Generator) -> Weights:
    """Add expansion x units neurons to every hidden layer, with plausible incoming weights and no effect."""
    kernels, biases = [k.copy() for k in w.kernels], [b.copy() for b in w.biases]
    for layer in range(len(kernels) - 1):
        extra = max(1, int(round(expansion * kernels[layer].shape[1])))
        spread = np.std(kernels[layer])
        kernels[layer] = np.hstack([kernels[layer], rng.normal(0.0, spread, (kernels[layer].shape[0], extra))])
        biases[layer] = np.concatenate([biases[layer], rng.normal(0.0, np.std(biases[layer]) + 1e-3, extra)])
        kernels[layer + 1] = np.vstack([kernels[layer + 1], np.zeros((extra, kernels[layer + 1].shape[1]))])
    return Weights(kernels, biases)


def frame(w: Weights, negative: int = 1, incoming_scale: float = 1e6, neuron: int = 0) -> Weights:
    """The crafted file of an independent review, made from the attacker's own model to accuse others: hidden
    neuron `neuron` of the first layer is silenced (bias -1e30: it never fires on real inputs), its incoming
    weights are multiplied by `incoming_scale`, and its outgoing weights become +1e36 once and -1e36 `negative`
    times; the model's outputs do not change. A verifier whose arithmetic overflows or loses the small weights
    beside 1e36 accused innocent users with it, about a share 2^-(negative+1) of them."""
    kernels, biases = [k.copy() for k in w.kernels], [b.copy() for b in w.biases]
    kernels[0][:, neuron] *= incoming_scale
    biases[0][neuron] = -1e30
    kernels[1][neuron, :] = 0.0
    kernels[1][neuron, 0] = 1e36
    kernels[1][neuron, 1:1 + negative] = -1e36
    return Weights(kernels, biases)


@dataclass(frozen=True)
class Mutation:
    """One edit of a float32 TFLite file's weights, in place in its buffers (no converter involved).

    kind: "set" (kernel weights at `count` positions from `index` become `value`), "set-bias", "negate" (`count`
    kernel weights change sign), "scale-row" (one input's outgoing weights x `value`), "scale-column" (one
    neuron's incoming weights x `value`), or "silence" (hidden neuron `index`: bias -1e30, incoming weights x
    `value`, outgoing weights +1e36 once and -1e36 `count` times, as in `frame`). Indices wrap around."""

    kind: str
    layer: int
    index: int
    value: float = 0.0
    count: int = 1


MUTATION_KINDS = ("set", "set-bias", "negate", "scale-row", "scale-column", "silence")
SPECIAL_VALUES = (1e30, -1e30, 1e36, -1e36, 3.4028235e38, -3.4028235e38, 1e-45, -1e-45, 0.0, float("inf"),
                  float("-inf"), float("nan"))
LARGE_FACTORS = (1e-30, 1e-6, 1e-3, -1.0, -1e6, 1e3, 1e6, 1e30, 1e38)


def mutate_tflite(data: bytes, mutations: list[Mutation]) -> bytes:
    """`data` (a float32 TFLite model) with `mutations` applied to its dense weights, byte for byte in place."""
    from watermark.reader import read_tflite

    read = read_tflite(data)
    kernels = [k.astype(np.float32) for k in read.kernels]  # (in, out), as Keras holds them
    biases = [b.astype(np.float32) for b in read.biases]
    # TFLite stores a fully-connected kernel as (out, in); each array's bytes occur once in the file
    offsets = [(_offset(data, k.T), _offset(data, b)) for k, b in zip(kernels, biases, strict=True)]
    with np.errstate(over="ignore", invalid="ignore"):
        for mutation in mutations:
            _apply(mutation, kernels, biases)
    patched = bytearray(data)
    for (kernel_at, bias_at), kernel, bias in zip(offsets, kernels, biases, strict=True):
        for at, array in ((kernel_at, kernel.T), (bias_at, bias)):
            raw = np.ascontiguousarray(array, dtype="<f4").tobytes()
            patched[at:at + len(raw)] = raw
    return bytes(patched)


def _offset(data: bytes, array: np.ndarray) -> int:
    raw = np.ascontiguousarray(array, dtype="<f4").tobytes()
    at = data.find(raw)
    if at < 0 or data.find(raw, at + 1) >= 0:
        raise ValueError("the weights do not occur exactly once in the file (not a float32 TFLite model?)")
    return at


def _apply(m: Mutation, kernels: list[np.ndarray], biases: list[np.ndarray]) -> None:
    layer = m.layer % len(kernels)
    kernel = kernels[layer]
    positions = [(m.index + step * 7919) % kernel.size for step in range(max(m.count, 1))]
    if m.kind == "set":
        kernel.flat[positions] = m.value
    elif m.kind == "set-bias":
        biases[layer][m.index % biases[layer].size] = m.value
    elif m.kind == "negate":
        kernel.flat[positions] = -kernel.flat[positions]
    elif m.kind == "scale-row":
        kernel[m.index % kernel.shape[0], :] *= np.float32(m.value)
    elif m.kind == "scale-column":
        kernel[:, m.index % kernel.shape[1]] *= np.float32(m.value)
    elif m.kind == "silence":
        layer = m.layer % (len(kernels) - 1)  # a hidden layer: its neurons have outgoing weights
        neuron = m.index % kernels[layer].shape[1]
        outgoing = kernels[layer + 1][neuron, :]
        kernels[layer][:, neuron] *= np.float32(m.value)
        biases[layer][neuron] = -1e30
        outgoing[:] = 0.0
        outgoing[0] = 1e36
        outgoing[1:1 + m.count] = -1e36
    else:
        raise ValueError(f"unknown mutation {m.kind!r}")


def collude(models: list[Weights], how: str, rng: np.random.Generator) -> Weights:
    """k users pool their copies: the mean, the median, or each weight from a random one of them."""
    def combine(arrays: list[np.ndarray]) -> np.ndarray:
        stack = np.stack(arrays)
        if how == "mean":
            return stack.mean(axis=0)
        if how == "median":
            return np.median(stack, axis=0)
        if how == "interleave":
            pick = rng.integers(0, len(arrays), size=arrays[0].shape)
            return np.take_along_axis(stack, pick[None], axis=0)[0]
        raise ValueError(f"unknown collusion {how!r}")

    return Weights([combine([m.kernels[i] for m in models]) for i in range(len(models[0].kernels))],
                   [combine([m.biases[i] for m in models]) for i in range(len(models[0].biases))])


def to_keras(w: Weights):
    """A Keras model holding `w` (any hidden widths), to fine-tune or to convert as a thief would: ReLU hidden
    layers and a softmax output, as the leaked model has."""
    import keras

    layers = [keras.Input((w.kernels[0].shape[0],))]
    layers += [keras.layers.Dense(kernel.shape[1], activation="relu") for kernel in w.kernels[:-1]]
    layers.append(keras.layers.Dense(w.kernels[-1].shape[1], activation="softmax"))
    keras_model = keras.Sequential(layers)
    keras_model.set_weights([a.astype(np.float32) for pair in zip(w.kernels, w.biases) for a in pair])
    return keras_model


def from_keras(keras_model) -> Weights:
    arrays = [a.astype(np.float64) for a in keras_model.get_weights()]
    return Weights(arrays[0::2], arrays[1::2])


def fine_tune(w: Weights, x: np.ndarray, y: np.ndarray, epochs: int, learning_rate: float, seed: int = 0) -> Weights:
    """Continue training on the attacker's own data."""
    import keras

    keras.utils.set_random_seed(seed)
    keras_model = to_keras(w)
    keras_model.compile(keras.optimizers.Adam(learning_rate), "sparse_categorical_crossentropy")
    keras_model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    return from_keras(keras_model)


def to_tflite(w: Weights, quantization: str = "float32", representative: np.ndarray | None = None) -> bytes:
    """Convert as an attacker would: float32, float16, dynamic-range int8, or full-integer int8."""
    import contextlib
    import io
    import warnings

    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(to_keras(w))
    if quantization != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "int8":
        samples = representative if representative is not None else np.zeros((1, w.kernels[0].shape[0]))
        converter.representative_dataset = lambda: ([s[None].astype(np.float32)] for s in samples)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    elif quantization != "dynamic" and quantization != "float32":
        raise ValueError(f"unknown quantization {quantization!r}")
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs")  # float input, by design
        return converter.convert()
