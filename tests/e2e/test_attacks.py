"""The verifier against a thief: alice's leaked model, attacked while it stays useful, still names alice and
nobody else; a model nobody was issued names nobody."""
from __future__ import annotations

import numpy as np
import pytest

from iml import simulated
from tests.helpers import DIGITS_BASE, verify_model
from watermark import base
from watermark.reader import read_tflite
from watermark.research import attacks
from watermark.research.attacks import Weights
from watermark.verify import verify_file


def accused(issued, tflite: bytes) -> list[str]:
    return verify_model(tflite, issued.ports).accused


def held_out(user: str = "alice"):
    data = simulated.digits_user(user).held_out
    return data.x, data.y


def assert_still_useful(original: Weights, attacked: Weights) -> None:
    x, y = held_out()
    assert attacked.accuracy(x, y) >= original.accuracy(x, y) - 0.05, "the attack destroyed the model's use"


RNG = np.random.default_rng(7)


@pytest.mark.parametrize("name, attack", [
    ("noise 0.1", lambda w: attacks.gaussian_noise(w, 0.1, RNG)),
    ("prune 30%", lambda w: attacks.magnitude_prune(w, 0.3)),
    ("weight shift 0.05 sd", lambda w: attacks.weight_shift(w, 0.05)),
    ("permute and rescale", lambda w: attacks.permute_and_scale(w, RNG)),
    ("dummy neurons +50%, permuted", lambda w: attacks.permute_and_scale(attacks.dummy_neurons(w, 0.5, RNG), RNG)),
])
def test_weight_attacks_do_not_wash_out_the_fingerprint(issued, name, attack):
    original = issued.models["alice"]
    attacked = attack(original)
    assert_still_useful(original, attacked)
    assert accused(issued, attacks.to_tflite(attacked)) == ["alice"]


@pytest.mark.parametrize("quantization", ["float16", "dynamic", "int8"])
def test_quantized_copies_are_read_dequantized_and_traced(issued, quantization):
    x, _ = held_out()
    data = attacks.to_tflite(issued.models["alice"], quantization, representative=x[:100])
    assert read_tflite(data).format.startswith("tflite")
    assert accused(issued, data) == ["alice"]


def test_fine_tuning_on_the_thiefs_own_data_does_not_wash_it_out(issued):
    original = issued.models["alice"]
    own = simulated.digits_user("thief").train
    attacked = attacks.fine_tune(original, own.x, own.y, epochs=5, learning_rate=1e-3)
    assert_still_useful(original, attacked)
    assert accused(issued, attacks.to_tflite(attacked)) == ["alice"]


def test_two_colluders_averaging_are_caught_and_no_innocent_is(issued):
    pooled = attacks.collude([issued.models["alice"], issued.models["bob"]], "mean", RNG)
    found = accused(issued, attacks.to_tflite(pooled))
    assert found and set(found) <= {"alice", "bob"}


def test_the_untouched_leak_and_an_unissued_model_are_told_apart(issued):
    assert accused(issued, issued.tflite["alice"]) == ["alice"]
    stranger = attacks.fine_tune(issued.models["alice"], *_stranger_data(), epochs=1, learning_rate=1e-3)
    base_like = attacks.Weights([k.copy() for k in _base_kernels(issued)], [b.copy() for b in stranger.biases])
    assert accused(issued, attacks.to_tflite(base_like)) == []


def _stranger_data():
    data = simulated.digits_user("stranger").train
    return data.x, data.y


def _base_kernels(issued) -> list[np.ndarray]:
    return [layer.kernel for layer in base.load(issued.ports.models, DIGITS_BASE).layers]


@pytest.mark.parametrize("form", ["keras", "savedmodel"])
def test_a_leak_handed_over_as_keras_or_savedmodel_is_traced(issued, tmp_path, form):
    import contextlib
    import io

    from watermark.reader import read_model

    keras_model = attacks.to_keras(issued.models["alice"])
    path = tmp_path / ("model.keras" if form == "keras" else "saved")
    with contextlib.redirect_stdout(io.StringIO()):
        keras_model.save(path) if form == "keras" else keras_model.export(path)
    read = read_model(path)
    assert read.format == form
    for got, want in zip(read.kernels, issued.models["alice"].kernels, strict=True):
        assert np.allclose(got, want, atol=1e-6)
    verdict = verify_file(path, issued.ports.ledger, issued.ports.kms, issued.ports.models)  # read and run apart
    assert verdict.accused == ["alice"] and verdict.format == form
    # a Keras file runs on the probe; a SavedModel is not run, and the verdict says alignment went by weights
    assert verdict.needs_review == (form == "savedmodel")


@pytest.mark.parametrize("how", attacks.REEXPRESSIONS + ("weights computed at run time", "a dead branch with bob's weights"))
def test_a_reexpressed_graph_is_folded_and_traced(issued, how):
    """The leak's graph re-expressed as a thief might (watermark.graph folds each back): alice, and only alice."""
    original = issued.models["alice"]
    rng = np.random.default_rng(13)
    if how == "weights computed at run time":
        data = attacks.computed_weights(issued.tflite["alice"], rng)
    elif how.startswith("a dead branch"):
        data = attacks.dead_branch(issued.tflite["alice"], issued.models["bob"])
    else:
        data = attacks.reexpress(Weights(original.kernels, original.biases), how, rng)
    verdict = verify_model(data, issued.ports)
    assert verdict.accused == ["alice"]
    if how in ("identity layers", "split and concatenate", "1x1 convolutions", "permuted by a gather"):
        assert any("folded to the base model's form" in line for line in verdict.alignment)
