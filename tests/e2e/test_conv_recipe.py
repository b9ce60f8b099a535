"""The convolution recipe end to end: real people's smartwatch data through the pipeline, and the verifier on
its TFLite files, as issued and after the function-preserving edits a thief would make to the channels."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

import numpy as np
import pytest

from iml import simulated
from infra.bootstrap import MovableClock, Ports, local_ports
from infra.settings import Settings
from tests.helpers import DIGITS_BASE, PUBLISHED_AT, issue_models, verify_model
from watermark.research import attacks
from watermark.research.attacks import Weights

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


def _weights(data: bytes) -> Weights:
    """The issued TFLite file's weights in the recipe's Keras shapes (what a thief would edit)."""
    from functions import recipes
    from watermark.reader import read_tflite

    return Weights.of(read_tflite(data), recipes.load("exercises-conv").build())


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


@pytest.mark.parametrize("edit", ["permuted and rescaled", "dummy channels added, permuted and rescaled"])
def test_function_preserving_edits_of_the_channels_still_name_the_user(conv_issued, edit):
    """Every hidden layer's channels (conv_1, conv_2) and neurons shuffled and scaled by positive factors, undone
    on the next layer (ReLU and max pooling commute with both); or first widened by 30% silent channels."""
    rng = np.random.default_rng(3)
    data = simulated.exercises_user("user-001").held_out
    original = _weights(conv_issued.tflite["user-001"])
    edited = attacks.permute_and_scale(
        attacks.dummy_neurons(original, 0.3, rng) if edit.startswith("dummy") else original, rng)
    assert [k.shape[-1] for k in edited.kernels[:-1]] == ([21, 42, 83] if edit.startswith("dummy") else [16, 32, 64])
    same = np.argmax(original.predict(data.x), 1) == np.argmax(edited.predict(data.x), 1)
    assert same.mean() > 0.99  # the edit keeps the model's function
    verdict = verify_model(attacks.to_tflite(edited), conv_issued.ports)
    assert verdict.accused == ["user-001"]
    found = [re.search(r"hidden layer (\d): (\d+) neurons for the base model's (\d+); (\d+) moved to another position, "
                       r".* (\d+) dropped as dummies", line) for line in verdict.alignment]
    counts = {int(m[1]): [int(n) for n in m.groups()[1:]] for m in found if m}
    assert sorted(counts) == [1, 2, 3]  # conv_1's channels, conv_2's channels, hidden's neurons, each aligned
    for units, base_units, moved, dummies in counts.values():
        assert moved > base_units // 2  # shuffled: most channels found at another position
        if edit.startswith("dummy"):
            assert units > base_units and dummies > 0  # silent channels recognised and dropped
        else:
            assert units == base_units and dummies == 0


@pytest.mark.parametrize("how", ["identity layers with ReLU", "split and concatenate", "permuted by a gather"])
def test_a_reexpressed_conv_graph_is_folded_and_still_names_the_user(conv_issued, how):
    """Conv1D layers split in halves and concatenated, identity layers after each hidden layer, or channels
    permuted by a GATHER before the pooling: folded back to the base's chain (watermark.graph)."""
    data = attacks.reexpress(_weights(conv_issued.tflite["user-003"]), how, np.random.default_rng(8))
    verdict = verify_model(data, conv_issued.ports)
    assert verdict.accused == ["user-003"]
    assert any("folded to the base model's form" in line for line in verdict.alignment)


def test_a_per_channel_int8_conv_file_is_read_and_names_the_user(conv_issued):
    from watermark.reader import read_tflite

    probe = simulated.exercises_user("user-004").train.x[:100]
    quantized = attacks.to_tflite(_weights(conv_issued.tflite["user-002"]), "int8", representative=probe)
    read = read_tflite(quantized)
    assert read.format == "tflite int8" and read.layer_kinds == ["conv2d", "conv2d", "dense", "dense"]
    assert verify_model(quantized, conv_issued.ports).accused == ["user-002"]


def test_the_reader_gives_depthwise_and_conv2d_kernels_in_keras_orientation(tmp_path):
    import keras
    import tensorflow as tf

    from watermark.reader import read_model, read_tflite

    model = keras.Sequential([
        keras.Input((8, 8, 3)),
        keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
        keras.layers.DepthwiseConv2D(3, depth_multiplier=2, activation="relu", name="depthwise"),
        keras.layers.Flatten(),
        keras.layers.Dense(5, name="classes"),
    ])
    read = read_tflite(tf.lite.TFLiteConverter.from_keras_model(model).convert())
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


def test_one_ledger_holding_both_recipes_scores_each_file_against_its_own_base(conv_issued, base_models_dir,
                                                                              tmp_path):
    """A digits-mlp model issued beside the convolution models, into the same ledger (a copy of the module's)."""
    import shutil

    from functions import recipes
    from infra.ledger import IssuedModel

    workdir = tmp_path / "both"
    shutil.copytree(conv_issued.ports.settings.workdir, workdir)
    shutil.copytree(base_models_dir / "base" / DIGITS_BASE, workdir / "buckets" / "models" / "base" / DIGITS_BASE)
    digits = local_ports(Settings(workdir=workdir, recipe="digits-mlp"), MovableClock())
    digits.user_data.put("alice/data.npz", simulated.to_npz(simulated.digits_user("alice")))
    alice = issue_models(digits, ["alice"])["alice"]
    conv_base = recipes.load("exercises-conv").base_version
    issued = [IssuedModel.from_record(entry.record) for entry in digits.ledger.entries("issued")]
    assert sorted((r.recipe, r.base_model_version) for r in issued) == [
        ("digits-mlp", DIGITS_BASE)] + [("exercises-conv", conv_base)] * len(USERS)

    for user, data, other in (("alice", alice, conv_base), ("user-003", conv_issued.tflite["user-003"], DIGITS_BASE)):
        verdict = verify_model(data, digits)
        assert verdict.accused == [user] and verdict.identities_ranked == len(USERS) + 1
        others = len(USERS) if other == conv_base else 1  # the other recipe's records: this file cannot be theirs
        assert len(verdict.excluded_records) == others
        assert all(f"cannot descend from base model {other!r}" in line for line in verdict.excluded_records)
