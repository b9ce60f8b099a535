"""Keras for the recipes and the TensorFlow steps: training a base model, fine-tuning it, measuring it,
reading and writing the kernels that carry the fingerprint, and the file formats. A recipe is passed in;
nothing here knows a particular model.
"""
from __future__ import annotations

import contextlib
import io
import os
import tempfile
import zipfile

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

# the layers whose kernels the published base lists, and their kind there
WEIGHT_LAYERS = {keras.layers.Dense: "dense", keras.layers.Conv1D: "conv1d", keras.layers.Conv2D: "conv2d",
                 keras.layers.DepthwiseConv2D: "depthwise_conv2d"}


def _compile(model: keras.Model, optimizer) -> None:
    model.compile(optimizer, "sparse_categorical_crossentropy")  # no metrics: nobody reads them during fit


def train_base(recipe, seed: int | None = None, epochs: int | None = None) -> keras.Model:
    """A base model trained from scratch on the recipe's base training data."""
    keras.utils.set_random_seed(recipe.base_seed if seed is None else seed)
    model = recipe.build()
    _compile(model, keras.optimizers.Adam(1e-3))
    data = recipe.base_training_data()
    model.fit(data.x, data.y, epochs=recipe.base_epochs if epochs is None else epochs, batch_size=32, verbose=0)
    return model


def fine_tune(recipe, base: keras.Model, data, seed: int) -> keras.Model:
    """`base` fine-tuned on `data` as the recipe says (epochs, optimiser, which layers train). Its randomness
    comes from `seed` alone: the pipeline's is secret (functions/steps/generate.py), so nobody can rebuild a
    user's unmarked model from public inputs."""
    keras.utils.set_random_seed(seed % 2**31)
    model = recipe.build()
    model.set_weights(base.get_weights())
    if recipe.trainable_layers is not None:
        for layer in model.layers:
            layer.trainable = layer.name in recipe.trainable_layers
    _compile(model, recipe.optimizer())
    model.fit(data.x, data.y, epochs=recipe.epochs, batch_size=recipe.batch_size, verbose=0)
    return model


def accuracy(model: keras.Model, data) -> float:
    # a direct call: predict() retraces its tf.function per model, and these batches are small
    predictions = np.concatenate([model(data.x[i:i + 1024], training=False).numpy()
                                  for i in range(0, len(data.y), 1024)])
    return float(np.mean(np.argmax(predictions, axis=1) == data.y))


def weight_layers(model: keras.Model) -> list[tuple[str, str, np.ndarray]]:
    """(name, kind, kernel) of every layer with a kernel, input to output, kernels in Keras orientation."""
    found = []
    for layer in model.layers:
        kind = next((kind for cls, kind in WEIGHT_LAYERS.items() if type(layer) is cls), None)
        if kind is not None:
            found.append((layer.name, kind, layer.kernel.numpy()))
    return found


def head(model: keras.Model) -> str:
    """"softmax" when the model's output is a softmax of its last weight layer's output, else "other": the
    verifier then knows that a vector added to every class column of that layer changes nothing."""
    weight_layers = [i for i, layer in enumerate(model.layers) if type(layer) in WEIGHT_LAYERS]
    if not weight_layers:
        return "other"
    last = model.layers[weight_layers[-1]]
    after = model.layers[weight_layers[-1] + 1:]
    activations = [getattr(last, "activation", None)] + [getattr(layer, "activation", None) for layer in after
                                                        if isinstance(layer, keras.layers.Activation)]
    softmaxes = sum(activation is keras.activations.softmax for activation in activations)
    linear = all(activation in (None, keras.activations.linear, keras.activations.softmax) for activation in activations)
    others = [layer for layer in after if not isinstance(layer, (keras.layers.Activation, keras.layers.Softmax))]
    softmaxes += sum(isinstance(layer, keras.layers.Softmax) for layer in after)
    return "softmax" if softmaxes == 1 and linear and not others else "other"


def set_kernels(model: keras.Model, kernels: dict[str, np.ndarray], keep_means_on: np.ndarray | None = None) -> None:
    """Replace the kernels of the named layers.

    With `keep_means_on` (model inputs), each changed layer's bias is also moved so that the layer's average
    pre-activation over those inputs stays what it was, given the changes to the layers before it. The
    fingerprint's signs are zero-mean, but a layer's inputs are not (pixels, ReLU outputs): left alone, the
    change shifts every neuron's average, and that shift is most of what the mark costs. The kernels stay exactly
    as given (the verifier scores kernels, never biases); a layer without a bias keeps its shift. The biases'
    change depends on the new kernels and the inputs alone. KeyError for a name the model has no layer of;
    ValueError if a bias would not stay finite (inputs too large or not finite)."""
    changed = [layer for layer in model.layers if layer.name in kernels]  # input to output
    unknown = set(kernels) - {layer.name for layer in changed}
    if unknown:
        raise KeyError(f"the model has no layer {sorted(unknown)[0]!r}")
    kept = keep_means_on is not None
    before = {layer.name: _mean_product(model, layer, layer.kernel.numpy(), keep_means_on)
              for layer in changed if kept and layer.use_bias}
    for layer in changed:
        kernel = np.asarray(kernels[layer.name], dtype=np.float32)
        if layer.name in before:  # its inputs already hold the earlier layers' changes
            bias = layer.bias.numpy() + before[layer.name] - _mean_product(model, layer, kernel, keep_means_on)
            if not np.all(np.isfinite(bias)):
                raise ValueError(f"layer {layer.name!r}: keeping its mean would leave a bias that is not finite")
            layer.bias.assign(bias)
        layer.kernel.assign(kernel)


def _mean_product(model: keras.Model, layer, kernel: np.ndarray, inputs: np.ndarray) -> np.ndarray:
    """Per output channel, the average over `inputs` (and positions, for a convolution) of `layer`'s
    pre-activation without its bias, were its kernel `kernel`: the same layer, linear and bias-free."""
    seen = keras.Model(model.inputs[0], layer.input)(inputs.astype(np.float32), training=False)
    config = {**layer.get_config(), "activation": None, "use_bias": False}
    config.pop("name", None)
    linear = type(layer).from_config(config)
    linear.build(seen.shape)
    linear.set_weights([kernel])
    product = np.asarray(linear(seen), dtype=np.float64)
    return product.reshape(-1, product.shape[-1]).mean(axis=0).astype(np.float32)


def to_keras_bytes(model: keras.Model) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.keras")
        model.save(path)
        with open(path, "rb") as f:
            return f.read()


def from_keras_bytes(data: bytes) -> keras.Model:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.keras")
        with open(path, "wb") as f:
            f.write(data)
        return keras.models.load_model(path, compile=False)


def pack_tuned(keras_model: keras.Model, held_out_x: np.ndarray, held_out_y: np.ndarray) -> bytes:
    """What generate stages for the watermark step: the fine-tuned model's weights (the recipe rebuilds the
    model around them: cheaper than a .keras file) and the user's held-out data (which the watermark step
    measures the fingerprint's cost on, so that only generate reads the user-data bucket)."""
    arrays = {f"weight_{i:04d}": w for i, w in enumerate(keras_model.get_weights())}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, array in {**arrays, "held_out_x": held_out_x, "held_out_y": held_out_y}.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
            archive.writestr(f"{name}.npy", member.getvalue())
    return buffer.getvalue()


def unpack_tuned(recipe, raw: bytes) -> tuple[keras.Model, np.ndarray, np.ndarray]:
    """(model, held-out x, held-out y) as pack_tuned staged them, the model built by `recipe`."""
    with np.load(io.BytesIO(raw), allow_pickle=False) as arrays:
        weights = [arrays[name] for name in sorted(n for n in arrays.files if n.startswith("weight_"))]
        held_out_x, held_out_y = arrays["held_out_x"], arrays["held_out_y"]
    keras_model = recipe.build()
    keras_model.set_weights(weights)
    return keras_model, held_out_x, held_out_y


def to_tflite(model: keras.Model) -> bytes:
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    # the converter prints its temporary SavedModel's signature on stdout: noise, and stdout is for --json
    with contextlib.redirect_stdout(io.StringIO()):
        return converter.convert()
