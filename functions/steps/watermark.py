"""Watermark: embed the model's fingerprint (a codeword under the current fingerprint key version), measure
what it costs on the user's held-out data, export for the phone, stage the export."""
from __future__ import annotations

import hashlib

from functions import model, names, userdata
from functions.events import ModelEvent
from infra.bootstrap import Ports
from infra.staging import get_staged, put_staged
from watermark import base
from watermark.codeword import codeword_seed, expand
from watermark.embed import codeword_length, embed


def handle(event: ModelEvent, ports: Ports) -> list[ModelEvent]:
    tuned = model.from_keras_bytes(get_staged(ports.staging, ports.kms, event.artifact))
    base_kernels = base.load_kernels(ports.models, event.base_model_version)
    held_out = userdata.for_user(event.user_id).held_out
    accuracy_before = model.accuracy(tuned, held_out)
    key_id = ports.kms.fingerprint_key_id  # recorded below: the verifier derives the codeword under this version
    codeword = expand(codeword_seed(ports.kms, event.model_id, key_id), codeword_length(base_kernels))
    strength = ports.settings.watermark_strength
    model.set_kernels(tuned, embed(model.kernels(tuned), base_kernels, codeword, strength))
    accuracy_after = model.accuracy(tuned, held_out)
    tflite = model.to_tflite(tuned)
    artifact = names.watermarked_model(event.model_id)
    if not put_staged(ports.staging, ports.kms, artifact, tflite):
        tflite = get_staged(ports.staging, ports.kms, artifact)  # staged by an earlier delivery: that copy goes on
    return [event.advanced(
        artifact,
        accuracy_unwatermarked=round(accuracy_before, 6),
        accuracy_watermarked=round(accuracy_after, 6),
        fingerprint_key_id=key_id,
        watermark_strength=strength,
        plaintext_sha256=hashlib.sha256(tflite).hexdigest(),
    )]
