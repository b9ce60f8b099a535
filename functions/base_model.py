"""A recipe's base model: published once by `iml base publish` (trained here, or brought as a .keras file),
then read by generate for every fine-tune. Generate never trains one.

Publication writes create-once objects (watermark.base names them), the manifest last, so that it is safe to
repeat, to interrupt and to race: a second run finds what the first wrote and completes it, never replaces it.
"""
from __future__ import annotations

import hashlib
from typing import Callable

import numpy as np

from functions import model
from functions.recipes import Recipe
from infra.errors import ObjectMissing, PermanentError
from infra.ports import BlobStore
from watermark import base
from watermark.align import align
from watermark.base import BaseInvalid, BaseLayer, PublishedBase
from watermark.errors import IncompatibleModel


class BaseModelRefused(PermanentError):
    """A model brought for publication does not fit its recipe, or its version holds another model already."""


def publish(recipe: Recipe, models: BlobStore, published_at: str, model_bytes: bytes | None = None,
            on_step: Callable[[str], None] = lambda step: None) -> tuple[PublishedBase, bool]:
    """Publish the recipe's base version: `model_bytes` (a .keras file) or, without it, a model trained from
    the recipe. (the published base, whether this call published it); BaseModelRefused when the version holds
    another model already or the model does not fit the recipe."""
    version = recipe.base_version
    existing = _existing_model(models, version)
    if base.is_published(models, version):
        if model_bytes is not None and existing != model_bytes:
            raise BaseModelRefused(f"base model {version!r} is published with another model: give the recipe a new "
                                   f"base_version")
        return _of_recipe(recipe, base.load(models, version)), False
    if model_bytes is None:
        if existing is None:  # (else an interrupted publication left its model: it is completed)
            on_step("train")
            model_bytes = model.to_keras_bytes(model.train_base(recipe))
        else:
            model_bytes = existing
    on_step("check")
    keras_model = _fitting(recipe, model_bytes)
    on_step("upload")
    if not models.put(base.model_key(version), model_bytes, if_absent=True):
        if models.get(base.model_key(version)) != model_bytes:
            raise BaseModelRefused(f"base model {version!r} holds another model already (a publication of another "
                                   f"file began first): give the recipe a new base_version")
    published = describe(recipe, keras_model)
    try:  # the verifier must be able to align a file to it: the base aligned to itself is the least test
        align([layer.kernel for layer in published.layers], [layer.kernel for layer in published.layers],
              suspect_kinds=[layer.kind for layer in published.layers],
              base_kinds=[layer.kind for layer in published.layers])
    except IncompatibleModel as error:
        raise BaseModelRefused(f"the verifier cannot align files to this model ({error})") from None
    objects = dict(base.published_objects(published, model_bytes, published_at))
    weights_key = base.weights_key(version)
    if not models.put(weights_key, objects[weights_key], if_absent=True) \
            and models.get(weights_key) != objects[weights_key]:  # (the same model gives the same bytes)
        raise BaseModelRefused(f"base model {version!r} holds the weights of another model already")
    written = models.put(base.manifest_key(version), objects[base.manifest_key(version)], if_absent=True)
    return _of_recipe(recipe, base.load(models, version)), written


def describe(recipe: Recipe, keras_model) -> PublishedBase:
    """What the pipeline and the verifier need of a base model, as watermark.base publishes it."""
    layers = tuple(BaseLayer(name, kind, kernel, name in recipe.fingerprint_layers)
                   for name, kind, kernel in model.weight_layers(keras_model))
    return base.with_positions(recipe.base_version, recipe.name, recipe.input_shape, recipe.classes, layers,
                               np.asarray(recipe.probe_inputs(), dtype=np.float32), model.head(keras_model))


def load_model(recipe: Recipe, models: BlobStore):
    """The recipe's published base model, for fine-tuning (never modified: fine-tuning copies its weights);
    BaseNotPublished when there is none, BaseInvalid when what is published under its version was published
    for another recipe or model. Kept in memory by content, so an instance reads the manifest per request and
    the model once."""
    found = base.manifest(models, recipe.base_version)
    if found["recipe"] != recipe.name:
        raise BaseInvalid(f"base model {recipe.base_version!r} was published for recipe {found['recipe']!r}, not "
                          f"{recipe.name!r}: give the recipe its own base_version")
    if found["model_sha256"] in _loaded:
        return _loaded[found["model_sha256"]]
    model_bytes = _existing_model(models, recipe.base_version)
    if model_bytes is None or hashlib.sha256(model_bytes).hexdigest() != found["model_sha256"]:
        raise BaseInvalid(f"base model {recipe.base_version!r}: the model is not the one the manifest names")
    keras_model = model.from_keras_bytes(model_bytes)
    if [w.shape for w in keras_model.get_weights()] != [w.shape for w in recipe.build().get_weights()]:
        raise BaseInvalid(f"base model {recipe.base_version!r} does not have the shapes of recipe {recipe.name!r}'s "
                          f"model: give a changed recipe a new base_version")
    _loaded[found["model_sha256"]] = keras_model
    return keras_model


_loaded: dict[str, object] = {}  # model SHA-256 -> the loaded base model


def _of_recipe(recipe: Recipe, published: PublishedBase) -> PublishedBase:
    if published.recipe != recipe.name:
        raise BaseModelRefused(f"base model {published.version!r} was published for recipe {published.recipe!r}, "
                               f"not {recipe.name!r}: give the recipe its own base_version")
    return published


def _existing_model(models: BlobStore, version: str) -> bytes | None:
    try:
        return models.get(base.model_key(version))
    except ObjectMissing:
        return None


def _fitting(recipe: Recipe, model_bytes: bytes):
    """The model, loaded, when it fits the recipe: its input and output, and the layers it names."""
    try:
        keras_model = model.from_keras_bytes(model_bytes)
    except Exception as error:  # keras raises many types for a file that is not a model
        raise BaseModelRefused(f"not a readable Keras model ({type(error).__name__})") from None
    inputs = tuple(keras_model.input_shape[1:]) if not isinstance(keras_model.input_shape, list) else None
    if inputs != tuple(recipe.input_shape):
        raise BaseModelRefused(f"the model takes inputs of shape {inputs}; recipe {recipe.name!r} has "
                               f"{tuple(recipe.input_shape)}")
    if tuple(keras_model.output_shape[1:]) != (recipe.classes,):
        raise BaseModelRefused(f"the model gives outputs of shape {tuple(keras_model.output_shape[1:])}; recipe "
                               f"{recipe.name!r} has {recipe.classes} classes")
    layers = {name: kind for name, kind, _ in model.weight_layers(keras_model)}
    for name in recipe.fingerprint_layers:
        if name not in layers:
            raise BaseModelRefused(f"the model has no Dense or convolution layer {name!r}, which recipe "
                                   f"{recipe.name!r} names to carry the fingerprint")
    fresh = recipe.build()
    if [w.shape for w in fresh.get_weights()] != [w.shape for w in keras_model.get_weights()]:
        raise BaseModelRefused(f"the model's weights do not have the shapes of recipe {recipe.name!r}'s model")
    return keras_model
