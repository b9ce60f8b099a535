"""Expire: delete delivered models and leftover staging objects older than their TTL, recording each
deletion in the ledger; or, for a deleted user, every model of theirs at once, whatever its age."""
from __future__ import annotations

from datetime import datetime, timedelta

from functions import names, users
from functions.events import ExpireTick
from infra.bootstrap import Ports
from infra.logs import get_logger
from infra.ports import BlobStore

log = get_logger("iml.steps")


def handle(tick: ExpireTick, ports: Ports) -> list:
    now = ports.clock()
    if tick.deleted_user_id:
        _delete_user(tick.deleted_user_id, ports, now)
        return []
    deleted = _expire_area(ports, ports.delivery, ports.settings.model_max_age, "expired", now)
    deleted += _expire_area(ports, ports.staging, ports.settings.staging_max_age, "staging-expired", now)
    log.info("expiry done", deleted=deleted, reason=tick.reason)
    return []


def _expire_area(ports: Ports, store: BlobStore, max_age: timedelta, kind: str, now: datetime) -> int:
    deleted = 0
    for info in list(store.list()):
        if now - info.created < max_age:
            continue
        stage, model_id = names.stage_and_model(info.name)
        # recorded first (create-once), then deleted: a retried or concurrent expiry records it once, and a
        # delete whose first try landed unanswered cannot leave it unrecorded
        ports.ledger.append(
            f"{kind}-{stage}" if stage else kind,
            model_id,
            {"object": info.name, "created_at": info.created.isoformat(), "deleted_at": now.isoformat()},
            now,
        )
        deleted += store.delete(info.name)
    return deleted


def _delete_user(user_id: str, ports: Ports, now: datetime) -> None:
    model_ids = users.mark_deleted(user_id, ports)
    leftovers: dict[str, list[str]] = {}
    for info in ports.staging.list():
        leftovers.setdefault(names.stage_and_model(info.name)[1], []).append(info.name)
    for model_id in model_ids:
        objects = [(ports.delivery, names.delivered_model(model_id), "user-deleted")]
        objects += [(ports.staging, name, f"user-deleted-{names.stage_and_model(name)[0]}")
                    for name in leftovers.get(model_id, [])]
        for store, name, kind in objects:
            if not store.exists(name):
                continue  # gone already (expired), or not made yet: whoever makes it finds the tombstone
            # recorded first (create-once), then deleted, as in _expire_area
            ports.ledger.append(kind, model_id, {"user_id": user_id, "objects_deleted": [name],
                                                 "deleted_at": now.isoformat()}, now)
            store.delete(name)
    log.info("user deleted", models=len(model_ids), data_objects=users.delete_data(user_id, ports))
