"""The per-user model: a small Keras MLP on 8x8 digits, trained once as a base, fine-tuned per user,
exported to TFLite for the phone. The one module besides the TensorFlow steps that imports TensorFlow.
"""
from __future__ import annotations

import contextlib
import io
import os
import tempfile

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from functions.userdata import CLASSES, FEATURES, Split, base_training_data  # noqa: E402
from infra.ports import BlobStore  # noqa: E402
from watermark import base  # noqa: E402

BASE_MODEL_VERSION = "digits-mlp-v1"
HIDDEN_UNITS = (128, 32)


def build(hidden_units: tuple[int, ...] = HIDDEN_UNITS) -> keras.Model:
    layers = [keras.Input((FEATURES,))]
    layers += [keras.layers.Dense(units, activation="relu") for units in hidden_units]
    layers.append(keras.layers.Dense(CLASSES, activation="softmax"))
    return keras.Sequential(layers)


def _compile(model: keras.Model, learning_rate: float) -> None:
    model.compile(keras.optimizers.Adam(learning_rate), "sparse_categorical_crossentropy", metrics=["accuracy"])


def load_or_train_base(store: BlobStore) -> keras.Model:
    """The shared base model, trained on first use and cached in the models store."""
    key = base.model_key(BASE_MODEL_VERSION)
    if not store.exists(key):
        model = train(seed=0)
        # kernels first: a reader that finds the model finds its kernels too
        store.put(base.kernels_key(BASE_MODEL_VERSION), base.kernels_to_bytes(kernels(model)), if_absent=True)
        store.put(key, to_keras_bytes(model), if_absent=True)
    return from_keras_bytes(store.get(key))


def train(seed: int, epochs: int = 40) -> keras.Model:
    """A model trained from scratch on the base training data (the base model is seed 0)."""
    keras.utils.set_random_seed(seed)
    model = build()
    _compile(model, 1e-3)
    data = base_training_data()
    model.fit(data.x, data.y, epochs=epochs, batch_size=32, verbose=0)
    return model


def fine_tune(base: keras.Model, data: Split, seed: int, epochs: int = 15) -> keras.Model:
    """The base model fine-tuned on `data`. Its randomness comes from `seed` alone: the pipeline's is secret
    (functions/steps/generate.py), so nobody can rebuild a user's unmarked model from public inputs."""
    keras.utils.set_random_seed(seed % 2**31)
    model = build()
    model.set_weights(base.get_weights())
    _compile(model, 1e-3)
    model.fit(data.x, data.y, epochs=epochs, batch_size=32, verbose=0)
    return model


def accuracy(model: keras.Model, data: Split) -> float:
    # a direct call: predict() retraces its tf.function per model, and these batches are small
    predictions = model(data.x, training=False).numpy()
    return float(np.mean(np.argmax(predictions, axis=1) == data.y))


def kernels(model: keras.Model) -> list[np.ndarray]:
    """The Dense layers' kernels, input to output: the weights the fingerprint lives in."""
    return [layer.kernel.numpy() for layer in model.layers if isinstance(layer, keras.layers.Dense)]


def set_kernels(model: keras.Model, new_kernels: list[np.ndarray]) -> None:
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    for layer, kernel in zip(dense, new_kernels, strict=True):
        layer.kernel.assign(kernel)


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


def to_tflite(model: keras.Model) -> bytes:
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    # the converter prints its temporary SavedModel's signature on stdout: noise, and stdout is for --json
    with contextlib.redirect_stdout(io.StringIO()):
        return converter.convert()

