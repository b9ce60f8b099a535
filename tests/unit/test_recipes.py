"""Recipes and the user's own data: discovery through entry points, the data a signup names and every way it
can be wrong, and base models published once, never trained by generate."""
from __future__ import annotations

import io
import json
import shutil
import sys
import tomllib
import zipfile

import numpy as np
import pytest

from functions import base_model, names, recipes
from functions.chain import STEPS
from functions.recipes import InvalidUserData, RecipeNotInstalled
from functions.runner import Outcome, run_step
from iml import simulated
from infra.bootstrap import local_ports
from infra.local_storage import LocalBlobStore
from tests.helpers import DIGITS_BASE, PUBLISHED_AT, ROOT, make_signup
from watermark import base
from watermark.base import BaseNotPublished

DIGITS = recipes.load("digits-mlp")


def npz(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def good(n: int = 40) -> dict:
    rng = np.random.default_rng(1)
    return {"x": rng.uniform(0, 1, (n, 64)).astype(np.float32), "y": rng.integers(0, 10, n)}


def test_the_tests_publish_the_default_recipes_base_version():
    assert DIGITS_BASE == recipes.load(recipes.DEFAULT).base_version


def test_the_bundled_recipes_are_the_entry_points_pyproject_declares():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["iml.recipes"]
    assert declared == recipes.BUNDLED
    assert set(recipes.BUNDLED) <= set(recipes.installed())
    for name in recipes.BUNDLED:
        assert recipes.load(name).name == name


def test_a_model_owners_recipe_is_found_through_its_packages_entry_point(tmp_path, monkeypatch):
    """A package installed beside ours (a dist-info with an entry point, and its module) is a recipe."""
    (tmp_path / "owner_recipe.py").write_text(
        "from functions.recipes.digits import DigitsMlp\n"
        "class Owner(DigitsMlp):\n"
        "    name = 'owner-mlp'\n"
        "    base_version = 'owner-mlp-v3'\n")
    info = tmp_path / "owner_recipe-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: owner-recipe\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[iml.recipes]\nowner-mlp = owner_recipe:Owner\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    recipes.load.cache_clear()
    try:
        assert recipes.installed()["owner-mlp"] == "owner_recipe:Owner"
        assert recipes.load("owner-mlp").base_version == "owner-mlp-v3"
    finally:
        recipes.load.cache_clear()
        sys.modules.pop("owner_recipe", None)


def test_a_recipe_that_is_not_installed_is_refused_naming_the_installed_ones():
    with pytest.raises(RecipeNotInstalled, match="recipe 'nope' is not installed .*digits-mlp"):
        recipes.load("nope")


def test_a_recipe_that_breaks_the_contract_is_refused_naming_the_attribute():
    class Broken(type(DIGITS)):
        fingerprint_layers = ()

    with pytest.raises(recipes.RecipeError, match="fingerprint_layers"):
        Broken().check()


def test_data_with_held_out_arrays_is_split_as_given_and_without_them_every_fifth_sample_is_held_out():
    data = good(40)
    split = DIGITS.read_user_data(npz(**data))
    assert len(split.train.y) == 32 and len(split.held_out.y) == 8
    assert np.array_equal(split.held_out.x, data["x"][4::5])
    given = DIGITS.read_user_data(npz(**data, x_eval=data["x"][:3], y_eval=data["y"][:3]))
    assert len(given.train.y) == 40 and len(given.held_out.y) == 3
    assert given.train.x.dtype == np.float32 and given.train.y.dtype == np.int64


def _declared(shape: tuple, data_bytes: int) -> bytes:
    """An .npz whose x.npy header declares `shape` (float64) over `data_bytes` of zeros, deflated."""
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, {"descr": "<f8", "fortran_order": False, "shape": shape})
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("x.npy", head.getvalue() + b"\0" * data_bytes)
        archive.writestr("y.npy", npz_member(np.zeros(40, np.int64)))
    return buffer.getvalue()


def npz_member(array: np.ndarray) -> bytes:
    member = io.BytesIO()
    np.save(member, array)
    return member.getvalue()


def _renamed(member: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(member, npz_member(good()["x"]))
        archive.writestr("y.npy", npz_member(good()["y"]))
    return buffer.getvalue()


def _pickled() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, x=np.array([{"a": 1}] * 40, dtype=object), y=np.zeros(40, int))
    return buffer.getvalue()


BAD_DATA = [
    (lambda: b"", "not an .npz file"),
    (lambda: b"PK\x03\x04 truncated", "not an .npz file"),
    (lambda: npz(**good())[:-200], "not an .npz file|cannot be read"),
    (lambda: npz(y=good()["y"]), "holds no 'x' array"),
    (lambda: npz(**good(), extra=np.zeros(3)), "holds an array other than x, y, x_eval, y_eval"),
    (lambda: _renamed("x"), "holds an array other than"),
    (lambda: _renamed("SECRET-name\x1b[31m.npy"), "holds an array other than"),
    (lambda: npz(**good(), x_eval=good()["x"]), "both x_eval and y_eval"),
    (lambda: npz(x=good()["x"].reshape(40, 8, 8), y=good()["y"]), r"shape \(40, 8, 8\); recipe 'digits-mlp' needs"),
    (lambda: npz(x=(good()["x"] * 16).astype(np.int64), y=good()["y"]), "must hold float32"),
    (lambda: npz(x=good()["x"], y=good()["y"].astype(np.float32)), "whole-number labels"),
    (lambda: npz(x=good()["x"], y=good()["y"][:39]), "one label per sample"),
    (lambda: npz(x=good()["x"], y=np.full(40, 10)), r"label outside 0 \.\. 9"),
    (lambda: npz(x=good()["x"], y=np.full(40, -1)), r"label outside 0 \.\. 9"),
    (lambda: npz(**good(5)), "fewer than the recipe's minimum 20"),
    (lambda: npz(x=np.full((40, 64), np.nan, np.float32), y=good()["y"]), "not finite"),
    (lambda: npz(x=np.full((40, 64), np.inf, np.float32), y=good()["y"]), "not finite"),
    (lambda: npz(x=np.full((40, 64), 1e38, np.float32), y=good()["y"]), "outside the recipe's input range"),
    (lambda: npz(x=np.zeros((0, 64), np.float32), y=np.zeros(0, int)), "holds 0 samples"),
    (_pickled, "not a plain numeric array"),
    (lambda: _declared((100_000, 64), 100_000 * 64 * 8), "declares more data than the recipe takes"),
    (lambda: _declared((10**12, 64), 16), "declares more data than the recipe takes"),
    (lambda: _declared((10_000, 64), 16), "declares more data than .* the file holds"),
    (lambda: npz(x=np.zeros((40, 64), np.complex64), y=good()["y"]), "not a plain numeric array"),
]


@pytest.mark.parametrize("make, problem", BAD_DATA)
def test_bad_data_is_refused_naming_the_problem_never_quoting_it(make, problem):
    with pytest.raises(InvalidUserData, match=problem) as refused:
        DIGITS.read_user_data(make())
    assert "SECRET" not in str(refused.value)


def _nothing_made(ports, user: str) -> None:
    assert list(ports.staging.list()) == [] and list(ports.delivery.list()) == []
    assert list(ports.state.list(names.user_models(user))) == []  # no request slot taken either
    assert ports.bus.journal(ports.settings.topics.generated) == []


def _generate(ports, signup) -> tuple:
    result = run_step(STEPS["generate"], json.dumps(signup.to_dict()).encode(), ports)
    dead = ports.bus.journal(ports.settings.topics.dead_letter)
    return result, (dead[-1]["reason"] if dead else None)


@pytest.mark.parametrize("make, problem", BAD_DATA[:6] + BAD_DATA[10:11] + BAD_DATA[13:14])
def test_a_signup_whose_data_is_bad_is_dead_lettered_with_the_reason_and_nothing_is_made(make, problem,
                                                                                       trained_ports):
    trained_ports.user_data.put("erin/bad.npz", make())
    result, reason = _generate(trained_ports, make_signup("erin", data_ref="erin/bad.npz"))
    assert result.outcome == Outcome.DEAD_LETTERED
    assert __import__("re").search(problem, reason)
    _nothing_made(trained_ports, "erin")


@pytest.mark.parametrize("data_ref, problem", [
    (None, "the signup has no data_ref: recipe 'digits-mlp' fine-tunes on the user's data"),
    ("erin/../alice/data.npz", "not a plain object name"),
    ("/erin/data.npz", "not a plain object name"),
    ("erin//data.npz", "not a plain object name"),
    ("erin/.hidden", "not a plain object name"),
    ("erin\\data.npz", "not a plain object name"),
    ("alice/data.npz", "in the user's own folder"),
    ("gs://someone-elses-bucket/erin/data.npz", "outside the user-data bucket"),
    ("erin/missing.npz", "names no object in the user-data bucket"),
])
def test_a_data_ref_that_may_not_be_read_is_dead_lettered_without_quoting_it(data_ref, problem, trained_ports):
    result, reason = _generate(trained_ports, make_signup("erin", data_ref=data_ref))
    assert result.outcome == Outcome.DEAD_LETTERED and problem in reason
    assert data_ref is None or data_ref not in reason
    _nothing_made(trained_ports, "erin")


def test_a_recipe_that_is_not_installed_dead_letters_the_signup(trained_ports):
    from dataclasses import replace

    ports = local_ports(replace(trained_ports.settings, recipe="not-installed"), trained_ports.clock)
    result, reason = _generate(ports, make_signup("erin"))
    assert result.outcome == Outcome.DEAD_LETTERED and "recipe 'not-installed' is not installed" in reason
    _nothing_made(ports, "erin")


def test_generate_never_trains_a_base_model_it_refuses_the_signup(ports, user_data_dir):
    ports.user_data.put("erin/data.npz", (user_data_dir / "erin" / "data.npz").read_bytes())
    result, reason = _generate(ports, make_signup("erin"))
    assert result.outcome == Outcome.DEAD_LETTERED
    assert f"base model '{DIGITS_BASE}' is not published (run `iml base publish`)" in reason
    assert list(ports.models.list()) == []
    _nothing_made(ports, "erin")


def test_a_users_data_is_deleted_with_the_user(trained_ports):
    trained_ports.user_data.put("erin/more.npz", b"second object")
    trained_ports.bus.publish(trained_ports.settings.topics.expire,
                              {"schema_version": 1, "reason": "user deleted", "deleted_user_id": "erin"})
    run_step(STEPS["expire"], json.dumps(trained_ports.bus.journal(trained_ports.settings.topics.expire)[-1]).encode(),
             trained_ports)
    assert list(trained_ports.user_data.list("erin/")) == []
    assert [info.name for info in trained_ports.user_data.list("alice/")] == ["alice/data.npz"]


# ---- base publication ----------------------------------------------------------------------------------------

def test_a_published_base_holds_what_the_watermark_step_and_the_verifier_need(base_models_dir):
    published = base.load(LocalBlobStore(base_models_dir), DIGITS_BASE)
    manifest = json.loads((base_models_dir / "base" / DIGITS_BASE / "manifest.json").read_text())
    assert manifest["recipe"] == "digits-mlp" and manifest["input_shape"] == [64] and manifest["classes"] == 10
    assert [(layer["name"], layer["kind"], layer["shape"], layer["carrier"]) for layer in manifest["layers"]] == [
        ("hidden_1", "dense", [64, 128], True), ("hidden_2", "dense", [128, 32], True),
        ("classes", "dense", [32, 10], False)]
    assert published.codeword_length == 64 * 128 + 128 * 32  # every hidden weight: fewer than the bound
    assert published.probe.shape == (DIGITS.probe_samples, 64)
    assert manifest["head"] == published.head == "softmax"  # the verifier may centre a marked head's rows


def test_a_head_is_softmax_only_when_the_output_is_a_softmax_of_the_last_weight_layer():
    import keras

    from functions.model import head

    def mlp(*tail, activation=None):
        return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation=activation), *tail])

    assert head(mlp(activation="softmax")) == "softmax"
    assert head(mlp(keras.layers.Softmax())) == head(mlp(keras.layers.Activation("softmax"))) == "softmax"
    assert head(mlp(activation="relu")) == head(mlp(activation="sigmoid")) == "other"
    assert head(mlp(keras.layers.Softmax(), activation="relu")) == "other"  # softmax of a ReLU: not invariant
    assert head(mlp(keras.layers.Softmax(), keras.layers.Softmax())) == "other"


def test_publishing_again_changes_nothing_and_another_model_under_the_version_is_refused(tmp_path, base_models_dir):
    folder = tmp_path / "models"
    shutil.copytree(base_models_dir, folder)
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    model_bytes = (folder / "base" / DIGITS_BASE / "model.keras").read_bytes()
    published, written = base_model.publish(DIGITS, LocalBlobStore(folder), PUBLISHED_AT, model_bytes)
    assert not written and published.version == DIGITS_BASE
    other = base_model.model.to_keras_bytes(base_model.model.train_base(DIGITS, seed=5, epochs=1))
    with pytest.raises(base_model.BaseModelRefused, match="published with another model: give the recipe a new"):
        base_model.publish(DIGITS, LocalBlobStore(folder), PUBLISHED_AT, other)
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before


def test_an_interrupted_publication_is_completed_with_the_model_it_left(tmp_path, base_models_dir):
    folder = tmp_path / "models"
    shutil.copytree(base_models_dir, folder)
    (folder / "base" / DIGITS_BASE / "manifest.json").unlink()
    (folder / "base" / DIGITS_BASE / "weights.npz").unlink()
    store = LocalBlobStore(folder)
    with pytest.raises(BaseNotPublished):
        base.load(store, DIGITS_BASE)
    steps = []
    published, written = base_model.publish(DIGITS, store, PUBLISHED_AT, on_step=steps.append)
    assert written and "train" not in steps  # the model it left is the one published
    original = base.load(LocalBlobStore(base_models_dir), DIGITS_BASE)
    assert all(np.array_equal(a.kernel, b.kernel) for a, b in zip(published.layers, original.layers))


def test_a_model_that_does_not_fit_its_recipe_is_refused(tmp_path):
    import keras

    wrong = keras.Sequential([keras.Input((32,)), keras.layers.Dense(10, name="classes")])
    with pytest.raises(base_model.BaseModelRefused, match=r"inputs of shape \(32,\); recipe 'digits-mlp' has \(64,\)"):
        base_model.publish(DIGITS, LocalBlobStore(tmp_path), PUBLISHED_AT, base_model.model.to_keras_bytes(wrong))
    with pytest.raises(base_model.BaseModelRefused, match="not a readable Keras model"):
        base_model.publish(DIGITS, LocalBlobStore(tmp_path), PUBLISHED_AT, b"PK\x03\x04 not a model")
    assert list(LocalBlobStore(tmp_path).list()) == []


def test_carrier_positions_are_bounded_and_chosen_per_base_version_by_no_user():
    few = base.select_positions("v1", [10, 20])
    assert np.array_equal(few, np.arange(30))
    many = base.select_positions("v1", [100_000, 50_000])
    assert many.size == base.MAX_POSITIONS and np.all(np.diff(many) > 0) and many[-1] < 150_000
    assert np.array_equal(many, base.select_positions("v1", [100_000, 50_000]))
    assert not np.array_equal(many, base.select_positions("v2", [100_000, 50_000]))


def test_the_demos_simulated_users_write_data_their_recipe_accepts():
    for recipe in simulated.SIMULATIONS:
        data = recipes.load(recipe).read_user_data(simulated.to_npz(simulated.user_data(recipe, "user-001")))
        assert len(data.train.y) >= recipes.load(recipe).min_samples and len(data.held_out.y) > 0


@pytest.mark.parametrize("tamper", [
    lambda m: m.pop("weights_sha256"),
    lambda m: m.update(input_shape=5),
    lambda m: m.update(classes="x"),
    lambda m: m["layers"][0].update(kind=["dense"]),
    lambda m: m["layers"][0].pop("shape"),
    lambda m: m["layers"][0].update(shape=[64, 128, 1]),
    lambda m: m.update(codeword_length=3),
    lambda m: m.update(layers=[]),
])
def test_a_tampered_base_is_invalid_never_a_crash_and_the_verifier_excludes_its_records(tamper, tmp_path,
                                                                                         base_models_dir, issued):
    folder = tmp_path / "models"
    shutil.copytree(base_models_dir, folder)
    path = folder / "base" / DIGITS_BASE / "manifest.json"
    found = json.loads(path.read_text())
    tamper(found)
    path.write_text(json.dumps(found))
    with pytest.raises(base.BaseInvalid):
        base.load(LocalBlobStore(folder), DIGITS_BASE)
    from dataclasses import replace as with_field

    from tests.helpers import verify_model
    from watermark.errors import NoLedger

    ports = with_field(issued.ports, models=LocalBlobStore(folder))
    with pytest.raises(NoLedger, match=f"base model '{DIGITS_BASE}' is not at hand"):
        verify_model(issued.tflite["alice"], ports)


@pytest.mark.parametrize("probe", [np.zeros((0, 64), np.float32), np.full((4, 64), np.nan, np.float32),
                                   np.zeros((4, 63), np.float32), np.zeros((4, 64), np.int64)])
def test_a_base_whose_probe_inputs_are_no_model_inputs_is_invalid(probe, tmp_path, base_models_dir):
    """The watermark step keeps layer means on the probe inputs: empty, NaN or misshapen ones would give NaN or
    meaningless biases, so such a base is refused, even with digests that agree."""
    import hashlib

    folder = tmp_path / "models"
    shutil.copytree(base_models_dir, folder)
    weights = folder / "base" / DIGITS_BASE / "weights.npz"
    with np.load(weights) as arrays:
        members = {name: arrays[name] for name in arrays.files}
    buffer = io.BytesIO()
    np.savez(buffer, **{**members, "probe": probe})
    weights.write_bytes(buffer.getvalue())
    manifest = folder / "base" / DIGITS_BASE / "manifest.json"
    found = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**found, "weights_sha256": hashlib.sha256(buffer.getvalue()).hexdigest()}))
    with pytest.raises(base.BaseInvalid, match="probe inputs that are not finite model inputs"):
        base.load(LocalBlobStore(folder), DIGITS_BASE)


def test_a_version_published_for_another_recipe_is_refused_by_publish_and_by_generate(tmp_path, base_models_dir):
    folder = tmp_path / "models"
    shutil.copytree(base_models_dir, folder)

    class Other(type(recipes.load("exercises-conv"))):
        base_version = DIGITS_BASE

    with pytest.raises(base_model.BaseModelRefused, match="published for recipe 'digits-mlp', not 'exercises-conv'"):
        base_model.publish(Other(), LocalBlobStore(folder), PUBLISHED_AT)
    with pytest.raises(base.BaseInvalid, match="published for recipe 'digits-mlp'"):
        base_model.load_model(Other(), LocalBlobStore(folder))


# ---- marking the kernels ---------------------------------------------------------------------------------------

def test_marked_kernels_are_set_exactly_and_the_biases_keep_each_layers_average_on_the_probe_inputs():
    import keras

    from functions import model

    keras.utils.set_random_seed(4)
    network = keras.Sequential([  # the marked layers linear, so their outputs are their pre-activations
        keras.Input((20, 3)),
        keras.layers.Conv1D(6, 3, strides=2, padding="same", name="conv"), keras.layers.ReLU(), keras.layers.Flatten(),
        keras.layers.Dense(8, name="dense"), keras.layers.ReLU(),
        keras.layers.Dense(4, use_bias=False, name="no_bias"),
    ])
    probe = np.random.default_rng(5).uniform(0, 1, (64, 20, 3)).astype(np.float32)  # not zero-mean, as inputs are
    outputs = keras.Model(network.inputs[0], [network.get_layer(name).output for name in ("conv", "dense")])

    def means():
        return [np.asarray(out).reshape(-1, np.shape(out)[-1]).mean(axis=0) for out in outputs(probe)]

    before, original = means(), network.get_weights()
    rng = np.random.default_rng(6)
    marked = {layer.name: layer.kernel.numpy() + 0.1 * rng.choice([-1.0, 1.0], layer.kernel.shape).astype(np.float32)
              for layer in network.layers if layer.name in ("conv", "dense", "no_bias")}
    model.set_kernels(network, marked)
    drifted = means()
    network.set_weights(original)
    model.set_kernels(network, marked, keep_means_on=probe)
    kept = means()

    for name, kernel in marked.items():
        assert np.array_equal(network.get_layer(name).kernel.numpy(), kernel.astype(np.float32))
    for was, moved, now in zip(before, drifted, kept):
        assert np.max(np.abs(moved - was)) > 0.05  # the mark alone shifts the averages ...
        np.testing.assert_allclose(now, was, atol=1e-4)  # ... the biases take the shift back

    with pytest.raises(KeyError, match="no layer 'nope'"):
        model.set_kernels(network, {"nope": marked["dense"]})
    with pytest.raises(ValueError, match="layer 'conv': keeping its mean would leave a bias that is not finite"):
        model.set_kernels(network, marked, keep_means_on=np.full_like(probe, np.inf))
