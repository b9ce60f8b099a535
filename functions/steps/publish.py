"""Publish: announce a delivered model behind a short-lived download URL; or, when its user was deleted
while it was on the way, hand it back to expire (the one step that deletes delivered models) and refuse."""
from __future__ import annotations

from functions import users
from functions.events import ExpireTick, ModelEvent, Ready, Refusal
from infra.bootstrap import Ports
from infra.errors import ObjectMissing


def handle(event: ModelEvent, ports: Ports) -> list:
    if users.is_deleted(event.user_id, ports):
        return [ExpireTick(reason="model delivered after its user was deleted", deleted_user_id=event.user_id),
                Refusal(users.deleted(event.user_id))]
    if not ports.delivery.exists(event.artifact):
        raise ObjectMissing(f"delivered model {event.artifact!r} is gone (expired before publication?)")
    ttl = ports.settings.url_ttl
    return [Ready(
        request_id=event.request_id,
        user_id=event.user_id,
        model_id=event.model_id,
        download_url=ports.delivery.download_url(event.artifact, ttl),
        url_expires_at=(ports.clock() + ttl).isoformat(),
        sealed_sha256=event.facts["sealed_sha256"],
        sealed_size=event.facts["sealed_size"],
    )]
