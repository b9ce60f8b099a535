"""The five steps, each a plain function of (event, ports) returning the next event, or None.

They know nothing of HTTP, CloudEvents or which adapters they were given. TensorFlow and numpy are imported
inside generate and watermark only, so that encrypt, publish and expire start fast.
"""
from __future__ import annotations

import hashlib
from datetime import datetime

from functions import users
from functions.events import ExpireTick, ModelEvent, Ready, Signup, decode_device_key
from infra.envelope import public_key_bytes, seal_bytes
from infra.errors import ObjectMissing
from infra.logs import get_logger
from infra.ports import BlobStore, Ports
from infra.staging import get_staged, put_staged

log = get_logger("iml.steps")


def generate(signup: Signup, ports: Ports) -> ModelEvent:
    from functions import base_model, model, userdata

    users.admit(signup.user_id, signup.model_id, ports)
    base = model.load_or_train_base(ports.models)
    tuned = model.fine_tune(base, userdata.for_user(signup.user_id).train, signup.user_id)
    artifact = f"generated/{signup.model_id}.keras"
    put_staged(ports.staging, ports.kms, artifact, model.to_keras_bytes(tuned))
    return ModelEvent(
        request_id=signup.request_id,
        user_id=signup.user_id,
        model_id=signup.model_id,
        device_public_key=signup.device_public_key,
        base_model_version=base_model.BASE_MODEL_VERSION,
        artifact=artifact,
        facts={"generated_at": ports.clock().isoformat()},
    )


def watermark(event: ModelEvent, ports: Ports) -> ModelEvent:
    from functions import base_model, model, userdata
    from watermark.codeword import codeword_seed, expand
    from watermark.embed import codeword_length, embed

    tuned = model.from_keras_bytes(get_staged(ports.staging, ports.kms, event.artifact))
    base_kernels = base_model.load_kernels(ports.models, event.base_model_version)
    held_out = userdata.for_user(event.user_id).held_out
    accuracy_before = model.accuracy(tuned, held_out)
    key_id = ports.kms.fingerprint_key_id  # recorded below: the verifier derives the codeword under this version
    codeword = expand(codeword_seed(ports.kms, event.model_id, key_id), codeword_length(base_kernels))
    strength = ports.settings.watermark_strength
    model.set_kernels(tuned, embed(model.kernels(tuned), base_kernels, codeword, strength))
    accuracy_after = model.accuracy(tuned, held_out)
    tflite = model.to_tflite(tuned)
    artifact = f"watermarked/{event.model_id}.tflite"
    put_staged(ports.staging, ports.kms, artifact, tflite)
    ports.staging.delete(event.artifact)
    return event.advanced(
        artifact,
        accuracy_unwatermarked=round(accuracy_before, 6),
        accuracy_watermarked=round(accuracy_after, 6),
        fingerprint_key_id=key_id,
        watermark_strength=strength,
        plaintext_sha256=hashlib.sha256(tflite).hexdigest(),
    )


def encrypt(event: ModelEvent, ports: Ports) -> ModelEvent:
    users.refuse_deleted(event.user_id, ports)
    tflite = get_staged(ports.staging, ports.kms, event.artifact)
    name = f"{event.model_id}.iml"
    device_key = decode_device_key(event.device_public_key)
    sealed = seal_bytes(
        tflite,
        device_key,
        user_id=event.user_id,
        model_id=event.model_id,
        created_at=ports.clock(),
        plaintext_sha256=event.facts.get("plaintext_sha256"),  # checked while sealing
    )
    if not ports.delivery.put(name, sealed, if_absent=True):
        sealed = ports.delivery.get(name)  # an earlier attempt delivered it: that copy is the issued one
    sealed_sha256 = hashlib.sha256(sealed).hexdigest()
    ports.ledger.append(
        "issued",
        event.model_id,
        {
            "user_id": event.user_id,
            "request_id": event.request_id,
            "base_model_version": event.base_model_version,
            "device_key_sha256": hashlib.sha256(public_key_bytes(device_key)).hexdigest(),
            "sealed_sha256": sealed_sha256,
            "delivery_object": name,
            **event.facts,
        },
        ports.clock(),
    )
    ports.staging.delete(event.artifact)
    return event.advanced(name, sealed_sha256=sealed_sha256, sealed_size=len(sealed))


def publish(event: ModelEvent, ports: Ports) -> Ready:
    if ports.state.exists(f"users/{event.user_id}/deleted"):  # deleted while its model was on the way:
        # expire is the one step that deletes delivered models (its service account alone may), so ask it again
        ports.bus.publish(ports.settings.topics.expire,
                          ExpireTick(reason="model delivered after its user was deleted",
                                     deleted_user_id=event.user_id).to_dict())
        users.refuse_deleted(event.user_id, ports)
    if not ports.delivery.exists(event.artifact):
        raise ObjectMissing(f"delivered model {event.artifact!r} is gone (expired before publication?)")
    ttl = ports.settings.url_ttl
    return Ready(
        request_id=event.request_id,
        user_id=event.user_id,
        model_id=event.model_id,
        download_url=ports.delivery.download_url(event.artifact, ttl),
        url_expires_at=(ports.clock() + ttl).isoformat(),
        sealed_sha256=event.facts["sealed_sha256"],
        sealed_size=event.facts["sealed_size"],
    )


def expire(tick: ExpireTick, ports: Ports) -> None:
    """Delete delivered models and leftover staging objects older than their TTL; record each deletion.
    A tick naming a deleted user deletes every model of that user at once, whatever its age."""
    now = ports.clock()
    if tick.deleted_user_id:
        _delete_user(tick.deleted_user_id, ports, now)
        return
    deleted = _expire_area(ports, ports.delivery, ports.settings.model_max_age, "expired", now)
    deleted += _expire_area(ports, ports.staging, ports.settings.staging_max_age, "staging-expired", now)
    log.info("expiry done", deleted=deleted, reason=tick.reason)


def _expire_area(ports: Ports, store: BlobStore, max_age, kind: str, now: datetime) -> int:
    deleted = 0
    for info in list(store.list()):
        if now - info.created < max_age or not store.delete(info.name):
            continue
        stage, _, filename = info.name.rpartition("/")
        model_id = filename.split(".", 1)[0]
        ports.ledger.append(
            f"{kind}-{stage}" if stage else kind,
            model_id,
            {"object": info.name, "created_at": info.created.isoformat(), "deleted_at": now.isoformat()},
            now,
        )
        deleted += 1
    return deleted



def _delete_user(user_id: str, ports: Ports, now: datetime) -> None:
    model_ids = users.mark_deleted(user_id, ports)
    leftovers = {}
    for info in ports.staging.list():
        leftovers.setdefault(info.name.rpartition("/")[2].split(".", 1)[0], []).append(info.name)
    for model_id in model_ids:
        objects = [name for name in [f"{model_id}.iml"] if ports.delivery.delete(name)]
        objects += [name for name in leftovers.get(model_id, []) if ports.staging.delete(name)]
        ports.ledger.append("user-deleted", model_id,
                            {"user_id": user_id, "objects_deleted": objects, "deleted_at": now.isoformat()}, now)
    log.info("user deleted", models=len(model_ids))
