"""The convolution recipe end to end: real people's smartwatch data through the pipeline, and the verifier on
its TFLite files, as issued and after the function-preserving edits a thief would make to the channels."""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest

from iml import simulated
from infra.bootstrap import MovableClock, Ports, local_ports
from infra.settings import Settings
from tests.helpers import PUBLISHED_AT, issue_models, verify_model

USERS = ("user-001", "user-002", "user-003")  # people 7, 8 and 9 of the data set: the base model never saw them


@dataclass
class ConvIssued:
    ports: Ports
    tflite: dict[str, bytes]


@pytest.fixture(scope="module")
def conv_issued(tmp_path_factory) -> ConvIssued:
    from functions import base_model, recipes

    workdir = tmp_path_factory.mktemp("conv")
    ports = local_ports(Settings(workdir=workdir, recipe="exercises-conv"), MovableClock())
    base_model.publish(recipes.load("exercises-conv"), ports.models, PUBLISHED_AT)
    for user in USERS:
        ports.user_data.put(f"{user}/data.npz", simulated.to_npz(simulated.exercises_user(user)))
    tflite = issue_models(ports, USERS)
    assert sorted(tflite) == list(USERS), ports.bus.journal(ports.settings.topics.dead_letter)
    return ConvIssued(ports, tflite)


def _keras(data: bytes):
    """The issued TFLite file's weights back in a Keras model of the recipe (what a thief would edit)."""
    from functions import recipes
    from watermark.reader import read_tflite

    model = recipes.load("exercises-conv").build()
    read = read_tflite(data)
    weights = []
    for kernel, bias, layer in zip(read.kernels, read.biases, [l for l in model.layers if l.weights]):
        weights += [kernel.reshape(layer.kernel.shape).astype(np.float32), bias.astype(np.float32)]
    model.set_weights(weights)
    return model


def _permute_and_scale_channels(model, rng: np.random.Generator):
    """Shuffle conv_1's and conv_2's output channels and the hidden layer's neurons, each times a positive
    factor, undoing it on the next layer: the function is unchanged (ReLU and max pooling commute with it)."""
    conv_1, conv_2, hidden, classes = (model.get_layer(n) for n in ("conv_1", "conv_2", "hidden", "classes"))
    w = {n: [a.copy() for a in model.get_layer(n).get_weights()] for n in ("conv_1", "conv_2", "hidden", "classes")}
    for layer, follower in (("conv_1", "conv_2"), ("conv_2", "hidden"), ("hidden", "classes")):
        kernel, bias = w[layer]
        units = kernel.shape[-1]
        order, scale = rng.permutation(units), rng.uniform(0.5, 2.0, units).astype(np.float32)
        w[layer] = [kernel[..., order] * scale, bias[order] * scale]
        nxt = w[follower][0]
        if follower == "conv_2":  # (taps, in, out)
            w[follower][0] = nxt[:, order, :] / scale[None, :, None]
        elif follower == "hidden":  # flattened (time, channels) rows
            rows = nxt.reshape(-1, units, nxt.shape[-1])
            w[follower][0] = (rows[:, order, :] / scale[None, :, None]).reshape(nxt.shape)
        else:
            w[follower][0] = nxt[order, :] / scale[:, None]
    for name, layer in (("conv_1", conv_1), ("conv_2", conv_2), ("hidden", hidden), ("classes", classes)):
        layer.set_weights(w[name])
    return model


def _tflite(model, quantize: bool = False) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if quantize:  # full integer: per-channel int8 convolution weights
        probe = simulated.exercises_user("user-004").train.x[:100]
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([x[None]] for x in probe)
    return converter.convert()


def test_each_conv_model_names_its_user_and_a_model_never_issued_names_nobody(conv_issued):
    from functions import base_model, recipes
    from functions.steps.generate import fine_tune_seed

    for user in USERS:
        verdict = verify_model(conv_issued.tflite[user], conv_issued.ports)
        assert verdict.accused == [user]
    recipe = recipes.load("exercises-conv")
    never = recipe.fine_tune(base_model.load_model(recipe, conv_issued.ports.models),
                             simulated.exercises_user("user-004").train, fine_tune_seed(conv_issued.ports.kms, "x"))
    assert verify_model(recipe.export(never), conv_issued.ports).accused == []


def test_permuted_and_rescaled_channels_still_name_the_user(conv_issued):
    data = simulated.exercises_user("user-001").held_out
    original = _keras(conv_issued.tflite["user-001"])
    edited = _permute_and_scale_channels(_keras(conv_issued.tflite["user-001"]), np.random.default_rng(3))
    same = np.argmax(original(data.x).numpy(), 1) == np.argmax(edited(data.x).numpy(), 1)
    assert same.mean() > 0.99  # the edit keeps the model's function
    verdict = verify_model(_tflite(edited), conv_issued.ports)
    assert verdict.accused == ["user-001"]
    assert any("moved to another position" in line and not line.split(": ")[1].startswith("64 neurons for the base "
               "model's 64; 0 moved") for line in verdict.alignment)


def test_a_per_channel_int8_conv_file_is_read_and_names_the_user(conv_issued):
    from watermark.reader import read_tflite

    quantized = _tflite(_keras(conv_issued.tflite["user-002"]), quantize=True)
    read = read_tflite(quantized)
    assert read.format == "tflite int8" and read.layer_kinds == ["conv2d", "conv2d", "dense", "dense"]
    assert verify_model(quantized, conv_issued.ports).accused == ["user-002"]


def test_the_reader_gives_depthwise_and_conv2d_kernels_in_keras_orientation(tmp_path):
    import keras

    from watermark.reader import read_model, read_tflite

    model = keras.Sequential([
        keras.Input((8, 8, 3)),
        keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
        keras.layers.DepthwiseConv2D(3, depth_multiplier=2, activation="relu", name="depthwise"),
        keras.layers.Flatten(),
        keras.layers.Dense(5, name="classes"),
    ])
    read = read_tflite(_tflite(model))
    assert read.layer_kinds == ["conv2d", "depthwise_conv2d", "dense"]
    expected = [model.get_layer("conv").kernel.numpy(), model.get_layer("depthwise").kernel.numpy(),
                model.get_layer("classes").kernel.numpy()]
    for got, want in zip(read.kernels, expected):
        assert got.shape == want.shape and np.allclose(got, want, atol=1e-6)
    path = tmp_path / "model.keras"
    model.save(path)
    assert read_model(path).layer_kinds == ["conv2d", "depthwise_conv2d", "dense"]


def test_the_demo_runs_with_the_conv_recipe_and_each_model_beats_the_base_model(tmp_path):
    """README's demo with the second recipe: the base model is published first, each user is a real person."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "iml", "demo", "--recipe", "exercises-conv", "--users", "2",
                          "--workdir", str(tmp_path / "demo"), "--json"], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout)
    assert report["recipe"] == "exercises-conv" and report["dead_letters"] == []
    for user in report["users"]:
        assert user["accuracy_unwatermarked"] > user["accuracy_base_model"]
    assert report["leak"]["accused"] == [report["leak"]["leaked_user"]] and report["never_issued"]["accused"] == []
    assert "oneDNN" not in run.stderr and "absl" not in run.stderr  # TensorFlow's start-up lines went to the log
    assert "oneDNN" in (tmp_path / "demo" / "logs" / "tensorflow.log").read_text()
