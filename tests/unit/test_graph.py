"""watermark.graph: a TFLite file whose graph re-expresses a model (identity layers, split layers, 1x1
convolutions, constants, gathers, weights computed at run time, dead branches) reads as the model it
computes, and a graph that cannot be folded to a chain of layers is refused with its reason (the verifier's
"cannot analyse", exit 2)."""
from __future__ import annotations

import functools

import numpy as np
import pytest

from watermark.align import align
from watermark.errors import UnreadableModel
from watermark.reader import read_tflite, tflite_activations
from watermark.research import attacks
from watermark.research.attacks import Weights


@functools.cache
def random_model(recipe_name: str) -> tuple[Weights, np.ndarray]:
    """A model of the recipe's architecture with random weights, and probe inputs."""
    from functions import recipes

    recipe = recipes.load(recipe_name)
    keras_model = recipe.build()
    rng = np.random.default_rng(11)
    for layer in keras_model.layers:
        if layer.get_weights():
            layer.set_weights([rng.normal(0, 0.3, a.shape).astype(np.float32) for a in layer.get_weights()])
    return attacks.from_keras(keras_model, Weights([], [], keras_model.get_config())), recipe.probe_inputs()[:16]


@pytest.fixture(params=["digits-mlp", "exercises-conv"])
def model(request) -> tuple[Weights, np.ndarray]:
    return random_model(request.param)


def assert_reads_as(data: bytes, original: Weights) -> None:
    """The file's folded layers are the original's, up to the permutation and positive scale per unit that
    alignment undoes."""
    read, plain = read_tflite(data), read_tflite(attacks.to_tflite(original))
    assert read.layer_kinds == plain.layer_kinds
    aligned = align(read.kernels, plain.kernels, suspect_kinds=read.layer_kinds, base_kinds=plain.layer_kinds)
    for got, want in zip(aligned.kernels, plain.kernels, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("how", attacks.REEXPRESSIONS)
def test_a_reexpressed_graph_reads_as_the_model_it_computes(model, how):
    weights, probe = model
    data = attacks.reexpress(weights, how, np.random.default_rng(5))
    assert_reads_as(data, weights)
    if how not in ("rescaled by a constant", "permuted by a gather"):  # those move units: alignment's job
        plain = tflite_activations(attacks.to_tflite(weights), probe)
        for got, want in zip(tflite_activations(data, probe), plain, strict=True):
            np.testing.assert_allclose(got, want, atol=1e-4)  # each folded layer reads what the base's reads
    if how != "rescaled by a constant":  # the converter itself folds a constant into the next dense layer
        assert read_tflite(data).folded


def test_weights_computed_at_run_time_are_read_as_computed(model):
    weights, _ = model
    data = attacks.computed_weights(attacks.to_tflite(weights), np.random.default_rng(2))
    read = read_tflite(data)
    assert read.format == "tflite float32"
    for got, want in zip(read.kernels, weights.kernels, strict=True):
        np.testing.assert_allclose(got.reshape(want.shape), want, atol=1e-5)


def test_a_dead_branch_holding_another_models_weights_is_not_read():
    weights, _ = random_model("digits-mlp")  # the dead branch is built of dense layers
    other = attacks.gaussian_noise(weights, 1.0, np.random.default_rng(4))
    read = read_tflite(attacks.dead_branch(attacks.to_tflite(weights), other))
    assert len(read.kernels) == 3
    for got, want in zip(read.kernels, weights.kernels, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6)


def _converted(function, shape=(1, 64)) -> bytes:
    import tensorflow as tf

    concrete = tf.function(function, input_signature=[tf.TensorSpec(shape, tf.float32)]).get_concrete_function()
    return tf.lite.TFLiteConverter.from_concrete_functions([concrete]).convert()


def _layers(rng, *shapes):
    import tensorflow as tf

    return [tf.constant(rng.normal(0, 0.3, shape).astype(np.float32)) for shape in shapes]


def test_graphs_that_are_not_a_chain_of_layers_are_refused_with_the_reason():
    import tensorflow as tf

    rng = np.random.default_rng(0)
    w1, w2, w3 = _layers(rng, (64, 128), (128, 128), (128, 10))

    def skip(x):
        h = tf.nn.relu(x @ w1)
        return tf.nn.softmax((h + tf.nn.relu(h @ w2)) @ w3)

    def split_inputs(x):  # one layer's inputs split in halves, each half through its own layer, then added
        return tf.nn.softmax(tf.nn.relu(x[:, :32] @ w1[:32] + x[:, 32:] @ w1[32:]) @ w3[:, :10] @ tf.eye(10))

    def in_a_subgraph(x):
        return tf.cond(tf.reduce_sum(x) > -1e30, lambda: tf.nn.softmax(tf.nn.relu(x @ w1) @ w3),
                       lambda: tf.zeros([1, 10]))

    def input_as_weights(x):  # a "layer" multiplying by values computed from the input
        return tf.nn.softmax(tf.nn.relu(x @ (tf.transpose(x) @ x)) @ w1 @ w3)

    def hidden_beside_a_decoy(x):  # the working model as MUL and SUM ops, dense layers as a decoy added in
        working = tf.reduce_sum(tf.expand_dims(tf.nn.relu(x @ w1), 2) * w3, axis=1)
        return working + 1e-9 * (tf.nn.relu(x @ w1) @ w3)

    def skip_from_the_input(x):
        return tf.nn.softmax(tf.nn.relu(tf.nn.relu(x @ w1[:, :64]) + x) @ w3[:64])

    for function, reason in ((skip, "ADD computes on the data"), (split_inputs, "computes on the data"),
                             (in_a_subgraph, "inside subgraph"), (input_as_weights, "depend on the model's input"),
                             (hidden_beside_a_decoy, "computes on the data"),
                             (skip_from_the_input, "ADD computes on the data")):
        with pytest.raises(UnreadableModel, match=reason):
            read_tflite(_converted(function))
