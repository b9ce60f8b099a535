"""Encrypt: seal the fingerprinted model to the device key, deliver it once, and record what was issued to
whom in the signed ledger."""
from __future__ import annotations

import hashlib

from functions import names, users
from functions.events import ModelEvent
from infra.bootstrap import Ports
from infra.envelope import public_key_bytes, seal_bytes
from infra.errors import DuplicateRequest, InvalidEvent
from infra.ledger import IssuedModel
from infra.staging import get_staged
from watermark.identity import MODEL_SCHEME

# what the steps before encrypt measured, and the ledger keeps
WATERMARK_FACTS = ("generated_at", "accuracy_unwatermarked", "accuracy_watermarked", "fingerprint_key_id",
                   "watermark_strength", "plaintext_sha256")


def handle(event: ModelEvent, ports: Ports) -> list[ModelEvent]:
    users.refuse_deleted(event.user_id, ports)
    tflite = get_staged(ports.staging, ports.kms, event.artifact)
    missing = [fact for fact in WATERMARK_FACTS if fact not in event.facts]
    if missing:
        raise InvalidEvent(f"facts.{missing[0]}", "is required: the watermark step records it")
    name = names.delivered_model(event.model_id)
    if ports.ledger.has(event.model_id, IssuedModel.KIND) and not ports.delivery.exists(name):
        raise DuplicateRequest(
            f"model {event.model_id} was issued already and its delivery is gone: a message replayed after its "
            f"step markers expired is not issued a second time")
    sealed = seal_bytes(tflite, event.device_key, user_id=event.user_id, model_id=event.model_id,
                        created_at=ports.clock(), plaintext_sha256=event.facts["plaintext_sha256"])  # checked
    if not ports.delivery.put(name, sealed, if_absent=True):
        sealed = ports.delivery.get(name)  # an earlier attempt delivered it: that copy is the issued one
    sealed_sha256 = hashlib.sha256(sealed).hexdigest()
    try:
        issued = IssuedModel(
            model_id=event.model_id, user_id=event.user_id, request_id=event.request_id,
            base_model_version=event.base_model_version,
            recipe=event.recipe,
            device_key_sha256=hashlib.sha256(public_key_bytes(event.device_key)).hexdigest(),
            sealed_sha256=sealed_sha256, delivery_object=name,
            # a model watermarked before identities carries its own codeword
            fingerprint_scheme=event.facts.get("fingerprint_scheme", MODEL_SCHEME),
            **{fact: event.facts[fact] for fact in WATERMARK_FACTS})
    except ValueError as error:
        raise InvalidEvent("facts", f"do not make an issued-model record ({error})") from None
    ports.ledger.issue(issued, ports.clock())
    return [event.advanced(name, sealed_sha256=sealed_sha256, sealed_size=len(sealed))]
