"""Watermark: embed the user's fingerprint at the published base's carrier positions, measure what it costs on
the user's held-out data (staged by generate), export for the phone, stage the export. The fingerprint is the
codeword of the identity (user, base version) under the current fingerprint key version: the same in every
model the user gets from that base."""
from __future__ import annotations

import hashlib

from functions import model, names, recipes
from functions.events import ModelEvent
from infra.bootstrap import Ports
from infra.staging import get_staged, put_staged
from watermark import base
from watermark.codeword import codeword_seed, expand
from watermark.embed import embed
from watermark.identity import IDENTITY_SCHEME, Identity


def handle(event: ModelEvent, ports: Ports) -> list[ModelEvent]:
    recipe = recipes.load(event.recipe)
    published = base.load(ports.models, event.base_model_version)
    tuned, held_out_x, held_out_y = model.unpack_tuned(recipe, get_staged(ports.staging, ports.kms, event.artifact))
    held_out = recipes.Split(held_out_x, held_out_y)
    accuracy_before = recipe.evaluate(tuned, held_out)
    key_id = ports.kms.fingerprint_key_id  # recorded below: the verifier derives the codeword under this version
    identity = Identity.of(IDENTITY_SCHEME, user_id=event.user_id, base_model_version=event.base_model_version,
                           model_id=event.model_id, key_id=key_id)
    codeword = expand(codeword_seed(ports.kms, identity), published.codeword_length)
    kernels = {name: kernel for name, _, kernel in model.weight_layers(tuned)}
    carriers = [kernels[layer.name] for layer in published.carriers]
    strength = ports.settings.watermark_strength
    marked = embed(carriers, published, codeword, strength)
    model.set_kernels(tuned, {layer.name: kernel for layer, kernel in zip(published.carriers, marked)},
                      keep_means_on=published.probe)
    accuracy_after = recipe.evaluate(tuned, held_out)
    exported = recipe.export(tuned)
    artifact = names.watermarked_model(event.model_id)
    if not put_staged(ports.staging, ports.kms, artifact, exported):
        exported = get_staged(ports.staging, ports.kms, artifact)  # staged by an earlier delivery: that copy goes on
    return [event.advanced(
        artifact,
        accuracy_unwatermarked=round(accuracy_before, 6),
        accuracy_watermarked=round(accuracy_after, 6),
        fingerprint_key_id=key_id,
        fingerprint_scheme=identity.scheme,
        watermark_strength=strength,
        plaintext_sha256=hashlib.sha256(exported).hexdigest(),
    )]
