"""What a thief may do to a leaked model to wash the fingerprint out, while keeping it useful.

Each attack maps a model's weights, `Weights` (kernels and biases, input to output), to new weights; the
ones that need TensorFlow (fine-tuning, TFLite conversion, a convolution network's accuracy) import it when
called. An attack counts only while the attacked model keeps its accuracy within 5 points of the original
(bench/robustness.py checks).

Kernels are in Keras orientation: dense (in, out), conv1d (k, in, out), conv2d (kh, kw, in, out). A layer's
units (neurons, channels) are its kernel's last axis; the next layer's kernel, viewed as (-1, units, out),
holds their outgoing weights: true after a Dense, a convolution, pooling and a channels-last Flatten alike.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import numpy as np

from watermark.reader import ReadModel

KINDS = {"Dense": "dense", "Conv1D": "conv1d", "Conv2D": "conv2d"}  # the Keras layers these attacks edit
WIDTHS = {"Dense": "units", "Conv1D": "filters", "Conv2D": "filters"}  # where each holds its number of units


@dataclass(frozen=True)
class Weights:
    kernels: list[np.ndarray]
    biases: list[np.ndarray]
    # the Keras Sequential the weights fit (its widths aside: dummy neurons widen them), as get_config() gives
    # it; None: a ReLU MLP with a softmax output, whose forward pass needs no TensorFlow
    config: dict | None = None

    @classmethod
    def of(cls, read: ReadModel, like) -> "Weights":
        """A file's weights in the kernel shapes and with the config of `like`, a Keras model of the same
        architecture."""
        shapes = [layer.kernel.shape for layer in like.layers if type(layer).__name__ in KINDS]
        return cls([k.reshape(shape) for k, shape in zip(read.kernels, shapes, strict=True)], list(read.biases),
                   like.get_config())

    def with_arrays(self, kernels: list[np.ndarray], biases: list[np.ndarray]) -> "Weights":
        return replace(self, kernels=kernels, biases=biases)

    @property
    def kinds(self) -> list[str]:
        if self.config is None:
            return ["dense"] * len(self.kernels)
        return [KINDS[layer["class_name"]] for layer in self.config["layers"] if layer["class_name"] in KINDS]

    def read(self) -> ReadModel:
        """As the verifier reads a file holding these weights."""
        return ReadModel("weights", self.kernels, self.biases, self.kinds)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The model's class scores."""
        if self.config is not None:
            keras_model = to_keras(self)
            return np.concatenate([keras_model(x[i:i + 1024], training=False).numpy()
                                   for i in range(0, len(x), 1024)])
        h = x.astype(np.float64)  # the ReLU MLP, as the per-user digits model is built
        for layer, (kernel, bias) in enumerate(zip(self.kernels, self.biases, strict=True)):
            h = h @ kernel + bias
            if layer < len(self.kernels) - 1:
                h = np.maximum(h, 0.0)
        return h

    def accuracy(self, x: np.ndarray, y: np.ndarray) -> float:
        return float(np.mean(np.argmax(self.predict(x), axis=1) == y))


def _outgoing(kernel: np.ndarray, units: int) -> np.ndarray:
    """The next layer's kernel as (-1, units, out): the outgoing weights of each unit of the layer before."""
    return kernel.reshape(-1, units, kernel.shape[-1])


def _as_next(rows: np.ndarray, like: np.ndarray) -> np.ndarray:
    """`rows` (-1, units, out) back in the next layer's kernel layout, its units possibly more than before."""
    if like.ndim == 2:  # a Dense layer: after a Dense or a Flatten
        return rows.reshape(-1, like.shape[-1])
    return rows.reshape(like.shape[:-2] + rows.shape[1:])


def gaussian_noise(w: Weights, sigma: float, rng: np.random.Generator) -> Weights:
    """Noise of standard deviation sigma x each layer's own weight spread."""
    return w.with_arrays([k + rng.normal(0.0, sigma * np.std(k), k.shape) for k in w.kernels], list(w.biases))


def weight_shift(w: Weights, fraction: float) -> Weights:
    """Move every weight of a layer by the same amount, `fraction` x the layer's spread: a shift the
    detector's residual cannot tell from signal, and that a network tolerates while it is small."""
    return w.with_arrays([k + fraction * np.std(k) for k in w.kernels], list(w.biases))


def magnitude_prune(w: Weights, fraction: float) -> Weights:
    """Zero the `fraction` of each kernel's weights with the smallest magnitude."""
    pruned = []
    for kernel in w.kernels:
        cut = np.quantile(np.abs(kernel), fraction)
        pruned.append(np.where(np.abs(kernel) <= cut, 0.0, kernel))
    return w.with_arrays(pruned, list(w.biases))


def permute_and_scale(w: Weights, rng: np.random.Generator, low: float = 0.5, high: float = 2.0) -> Weights:
    """Shuffle every hidden layer's units and scale each by a positive factor; the function is unchanged."""
    kernels, biases = [k.copy() for k in w.kernels], [b.copy() for b in w.biases]
    for layer in range(len(kernels) - 1):
        units = kernels[layer].shape[-1]
        order, scale = rng.permutation(units), rng.uniform(low, high, units)
        kernels[layer] = kernels[layer][..., order] * scale
        biases[layer] = biases[layer][order] * scale
        rows = _outgoing(kernels[layer + 1], units)
        kernels[layer + 1] = _as_next(rows[:, order, :] / scale[None, :, None], kernels[layer + 1])
    return w.with_arrays(kernels, biases)


def dummy_neurons(w: Weights, expansion: float, rng: np.random.Generator) -> Weights:
    """Add expansion x units units to every hidden layer, with plausible incoming weights and no effect."""
    kernels, biases = [k.copy() for k in w.kernels], [b.copy() for b in w.biases]
    for layer in range(len(kernels) - 1):
        units = kernels[layer].shape[-1]
        extra = max(1, int(round(expansion * units)))
        incoming = kernels[layer]
        kernels[layer] = np.concatenate(
            [incoming, rng.normal(0.0, np.std(incoming), incoming.shape[:-1] + (extra,))], axis=-1)
        biases[layer] = np.concatenate([biases[layer], rng.normal(0.0, np.std(biases[layer]) + 1e-3, extra)])
        rows = _outgoing(kernels[layer + 1], units)
        silent = np.zeros((rows.shape[0], extra, rows.shape[2]))
        kernels[layer + 1] = _as_next(np.concatenate([rows, silent], axis=1), kernels[layer + 1])
    return w.with_arrays(kernels, biases)


def inactive_flood(w: Weights, fraction: float, spreads: float, rng: np.random.Generator) -> Weights:
    """Beside `fraction` of every hidden layer's units, a copy that never fires (the unit's own incoming weights,
    so alignment merges it; a bias of -1e3) with outgoing weights of `spreads` standard deviations of the next
    kernel: the function is unchanged (on inputs that keep pre-activations under 1e3), the next kernel's
    residual is flooded."""
    kernels, biases = [k.copy() for k in w.kernels], [b.copy() for b in w.biases]
    for layer in range(len(kernels) - 1):
        units = kernels[layer].shape[-1]
        chosen = rng.choice(units, size=max(1, int(round(fraction * units))), replace=False)
        kernels[layer] = np.concatenate([kernels[layer], kernels[layer][..., chosen]], axis=-1)
        biases[layer] = np.concatenate([biases[layer], np.full(chosen.size, -1e3)])
        rows = _outgoing(kernels[layer + 1], units)
        flood = rng.normal(0.0, spreads * np.std(rows), (rows.shape[0], chosen.size, rows.shape[2]))
        kernels[layer + 1] = _as_next(np.concatenate([rows, flood], axis=1), kernels[layer + 1])
    return w.with_arrays(kernels, biases)


def decoys(w: Weights, other: Weights) -> Weights:
    """Beside every hidden unit, the same unit of `other` (another user's model of the same base), which never
    fires (a bias of -1e3), with outgoing weights that make each pair's outgoing weights add up to `other`'s:
    the function is unchanged, while the file holds `other`'s weights everywhere and, summed over copies,
    `other`'s next layers. A verifier that goes by weights alone may accuse `other`'s user."""
    kernels, biases = [k.copy() for k in w.kernels], [b.copy() for b in w.biases]
    for layer in range(len(kernels) - 1):
        units = w.kernels[layer].shape[-1]
        theirs = other.kernels[layer]
        if layer:  # inputs: the working units, then the decoys before (never firing: weight 0)
            before = w.kernels[layer - 1].shape[-1]
            rows = _outgoing(theirs, before)
            theirs = _as_next(np.concatenate([rows, np.zeros_like(rows)], axis=1), kernels[layer])
        kernels[layer] = np.concatenate([kernels[layer], theirs], axis=-1)
        biases[layer] = np.concatenate([biases[layer], np.full(units, -1e3)])
        rows = _outgoing(kernels[layer + 1], units)
        planted = _outgoing(other.kernels[layer + 1], units) - _outgoing(w.kernels[layer + 1], units)
        kernels[layer + 1] = _as_next(np.concatenate([rows, planted], axis=1), kernels[layer + 1])
    return w.with_arrays(kernels, biases)


def head_shift(w: Weights, spreads: float, rng: np.random.Generator) -> Weights:
    """The same vector added to every class column of the last kernel: a softmax output does not change."""
    kernels = list(w.kernels)
    last = kernels[-1]
    kernels[-1] = last + rng.normal(0.0, spreads * np.std(last), last.shape[:-1] + (1,))
    return w.with_arrays(kernels, list(w.biases))


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
    return w.with_arrays(kernels, biases)


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
    """k users (or one user's k copies) pool them: the mean, the median, the midpoint of the lowest and highest
    value, or each weight from a random one of them."""
    def combine(arrays: list[np.ndarray]) -> np.ndarray:
        stack = np.stack(arrays)
        if how == "mean":
            return stack.mean(axis=0)
        if how == "median":
            return np.median(stack, axis=0)
        if how == "midpoint":
            return (stack.min(axis=0) + stack.max(axis=0)) / 2
        if how == "interleave":
            pick = rng.integers(0, len(arrays), size=arrays[0].shape)
            return np.take_along_axis(stack, pick[None], axis=0)[0]
        raise ValueError(f"unknown collusion {how!r}")

    return models[0].with_arrays([combine([m.kernels[i] for m in models]) for i in range(len(models[0].kernels))],
                                 [combine([m.biases[i] for m in models]) for i in range(len(models[0].biases))])


def to_keras(w: Weights):
    """A Keras model holding `w`, to fine-tune, to run or to convert as a thief would: `w.config` with each
    layer as wide as its kernel, or (no config) ReLU hidden layers and a softmax output, as the leaked MLP has."""
    import keras

    if w.config is None:
        layers = [keras.Input((w.kernels[0].shape[0],))]
        layers += [keras.layers.Dense(kernel.shape[1], activation="relu") for kernel in w.kernels[:-1]]
        layers.append(keras.layers.Dense(w.kernels[-1].shape[1], activation="softmax"))
        keras_model = keras.Sequential(layers)
    else:
        config, widths = copy.deepcopy(w.config), iter(kernel.shape[-1] for kernel in w.kernels)
        for layer in config["layers"]:
            layer.pop("build_config", None)  # built anew from the input, at the new widths
            if layer["class_name"] in WIDTHS:
                layer["config"][WIDTHS[layer["class_name"]]] = next(widths)
        keras_model = keras.Sequential.from_config(config)
    keras_model.set_weights([a.astype(np.float32) for pair in zip(w.kernels, w.biases) for a in pair])
    return keras_model


def from_keras(keras_model, like: Weights) -> Weights:
    arrays = [a.astype(np.float64) for a in keras_model.get_weights()]
    return like.with_arrays(arrays[0::2], arrays[1::2])


def fine_tune(w: Weights, x: np.ndarray, y: np.ndarray, epochs: int, learning_rate: float, seed: int = 0) -> Weights:
    """Continue training on the attacker's own data."""
    import keras

    keras.utils.set_random_seed(seed)
    keras_model = to_keras(w)
    keras_model.compile(keras.optimizers.Adam(learning_rate), "sparse_categorical_crossentropy")
    keras_model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    return from_keras(keras_model, w)


REEXPRESSIONS = ("identity layers", "identity layers with ReLU", "split and concatenate", "1x1 convolutions",
                 "rescaled by a constant", "permuted by a gather")


def reexpress(w: Weights, how: str, rng: np.random.Generator) -> bytes:
    """A float32 TFLite file computing what `w` computes, its graph re-expressed (REEXPRESSIONS): an identity
    layer after every hidden layer (without or with ReLU), every hidden layer split in two halves and
    concatenated, every dense layer written as a 1x1 convolution of one position, every hidden layer's
    output multiplied by a positive constant per unit (0.5 to 2) that the next layer divides out, or its
    units permuted by a GATHER op that the next layer's weights undo."""
    import keras

    if how not in REEXPRESSIONS:
        raise ValueError(f"unknown re-expression {how!r}")
    original = to_keras(w)
    weighted = [layer for layer in original.layers if type(layer).__name__ in KINDS]
    hidden = weighted[:-1]
    scales = {id(layer): rng.uniform(0.5, 2.0, layer.get_weights()[0].shape[-1]) for layer in hidden}
    orders = {id(layer): rng.permutation(layer.get_weights()[0].shape[-1]) for layer in hidden}
    undo: dict[int, object] = {}  # a layer: what its kernel's rows, viewed (-1, units, out), must undo
    x = inputs = keras.Input(original.input_shape[1:])
    for layer in original.layers:
        if type(layer).__name__ not in KINDS:
            x = layer(x)
            continue
        kernel, bias = layer.get_weights()
        if id(layer) in undo:
            kernel = undo[id(layer)](kernel)
        activation = layer.get_config()["activation"]
        units = kernel.shape[-1]
        if how == "split and concatenate" and layer in hidden:
            half = units // 2
            parts = []
            for columns in (slice(0, half), slice(half, units)):
                part = type(layer).from_config({**layer.get_config(), "name": None,
                                                WIDTHS[type(layer).__name__]: columns.stop - columns.start})
                part.build(x.shape)
                part.set_weights([kernel[..., columns], bias[columns]])
                parts.append(part(x))
            x = keras.layers.Concatenate()(parts)
        elif how == "1x1 convolutions" and isinstance(layer, keras.layers.Dense) and len(x.shape) == 2:
            conv = keras.layers.Conv2D(units, 1, activation=activation)
            reshaped = keras.layers.Reshape((1, 1, kernel.shape[0]))(x)
            conv.build(reshaped.shape)
            conv.set_weights([kernel[None, None], bias])
            x = keras.layers.Reshape((units,))(conv(reshaped))
        else:
            copy_ = type(layer).from_config({**layer.get_config(), "name": None})
            copy_.build(x.shape)
            copy_.set_weights([kernel, bias])
            x = copy_(x)
        if layer in hidden and how.startswith("identity layers"):
            identity = keras.layers.Dense(units, activation="relu" if how.endswith("ReLU") else None)
            identity.build(x.shape)
            identity.set_weights([np.eye(units, dtype=np.float32), np.zeros(units, np.float32)])
            x = identity(x)
        elif layer in hidden and how == "rescaled by a constant":
            scale = scales[id(layer)]
            x = keras.layers.Rescaling(scale.astype(np.float32))(x)
            undo[id(weighted[weighted.index(layer) + 1])] = lambda k, s=scale: (
                k.reshape(-1, s.size, k.shape[-1]) / s[None, :, None]).reshape(k.shape)
        elif layer in hidden and how == "permuted by a gather":
            order = orders[id(layer)]
            x = keras.layers.Lambda(lambda t, o=order: keras.ops.take(t, o, axis=-1))(x)
            undo[id(weighted[weighted.index(layer) + 1])] = lambda k, o=order: (
                k.reshape(-1, o.size, k.shape[-1])[:, o, :]).reshape(k.shape)
    return _converted(keras.Model(inputs, x))


def computed_weights(data: bytes, rng: np.random.Generator) -> bytes:
    """`data` (a float32 TFLite model) with each weight layer's kernel computed at run time: an ADD of a random
    constant and the kernel minus it, so that no constant in the file is the kernel."""
    def edit(model, schema) -> None:
        graph = model.subgraphs[0]
        adds = []
        for op in graph.operators:
            if _opcode(model, schema, op) not in ("FULLY_CONNECTED", "CONV_2D"):
                continue
            kernel = graph.tensors[op.inputs[1]]
            values = np.frombuffer(bytes(model.buffers[kernel.buffer].data), "<f4").reshape(kernel.shape)
            noise = rng.normal(0, float(np.std(values)) + 1e-3, values.shape).astype("<f4")
            parts = [_constant_tensor(model, schema, noise), _constant_tensor(model, schema, values - noise)]
            computed = len(graph.tensors)
            graph.tensors.append(_tensor(schema, kernel.shape))
            adds.append(_operator(model, schema, "ADD", parts, [computed], "AddOptions"))
            op.inputs = np.array([*op.inputs[:1], computed, *op.inputs[2:]], np.int32)
        graph.operators[:0] = adds  # they read constants alone: first in execution order
    return _edited(data, edit)


def dead_branch(data: bytes, other: Weights) -> bytes:
    """`data` (a float32 TFLite dense model) with a second chain of FULLY_CONNECTED layers holding `other`'s
    weights, reading the model's input, whose result nobody reads: the file contains `other`'s weights, its
    output does not depend on them."""
    def edit(model, schema) -> None:
        graph = model.subgraphs[0]
        current = int(graph.inputs[0])
        for kernel, bias in zip(other.kernels, other.biases, strict=True):
            inputs = [current, _constant_tensor(model, schema, kernel.T.astype("<f4")),
                      _constant_tensor(model, schema, bias.astype("<f4"))]
            current = len(graph.tensors)
            graph.tensors.append(_tensor(schema, [1, kernel.shape[1]]))
            graph.operators.append(_operator(model, schema, "FULLY_CONNECTED", inputs, [current],
                                             "FullyConnectedOptions"))
    return _edited(data, edit)


def _edited(data: bytes, edit) -> bytes:
    """A TFLite file rewritten through the schema's object API: `edit(model, schema)` changes the model."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(data, 0)
    edit(model, schema)
    builder = flatbuffers.Builder(len(data) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _opcode(model, schema, op) -> str:
    code = model.operatorCodes[op.opcodeIndex]
    number = max(code.builtinCode, code.deprecatedBuiltinCode)
    return next(name for name, value in vars(schema.BuiltinOperator).items() if value == number)


def _tensor(schema, shape, buffer: int = 0):
    tensor = schema.TensorT()
    tensor.shape, tensor.type, tensor.buffer = np.array(shape, np.int32), schema.TensorType.FLOAT32, buffer
    tensor.name = f"edited_{id(tensor)}".encode()
    return tensor


def _constant_tensor(model, schema, values: np.ndarray) -> int:
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(np.ascontiguousarray(values, "<f4").tobytes(), np.uint8)
    model.buffers.append(buffer)
    model.subgraphs[0].tensors.append(_tensor(schema, values.shape, len(model.buffers) - 1))
    return len(model.subgraphs[0].tensors) - 1


def _operator(model, schema, name: str, inputs: list[int], outputs: list[int], options: str):
    number = getattr(schema.BuiltinOperator, name)
    found = [i for i, c in enumerate(model.operatorCodes) if max(c.builtinCode, c.deprecatedBuiltinCode) == number]
    if not found:
        code = schema.OperatorCodeT()
        code.builtinCode, code.deprecatedBuiltinCode, code.version = number, min(number, 127), 1
        model.operatorCodes.append(code)
        found = [len(model.operatorCodes) - 1]
    op = schema.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = found[0], np.array(inputs, np.int32), np.array(outputs, np.int32)
    op.builtinOptionsType = getattr(schema.BuiltinOptions, options)
    op.builtinOptions = getattr(schema, f"{options}T")()
    return op


def to_tflite(w: Weights, quantization: str = "float32", representative: np.ndarray | None = None) -> bytes:
    """Convert as an attacker would: float32, float16, dynamic-range int8, or full-integer int8."""
    return _converted(to_keras(w), quantization, representative)


def _converted(keras_model, quantization: str = "float32", representative: np.ndarray | None = None) -> bytes:
    import contextlib
    import io
    import warnings

    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(keras_model)
    if quantization != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "int8":
        samples = representative if representative is not None else np.zeros((1,) + keras_model.input_shape[1:])
        converter.representative_dataset = lambda: ([s[None].astype(np.float32)] for s in samples)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    elif quantization != "dynamic" and quantization != "float32":
        raise ValueError(f"unknown quantization {quantization!r}")
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs")  # float input, by design
        return converter.convert()
