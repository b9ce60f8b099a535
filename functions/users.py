"""What the pipeline keeps per user in the state store: the models a user asked for (for the request limit
and for deletion) and whether the user was deleted.

    users/<user_id>/models/<model_id>   one marker per model, created when generation is admitted
    users/<user_id>/deleted             the tombstone a user-deleted event leaves
"""
from __future__ import annotations

from infra.errors import RequestLimitExceeded, UserDeleted
from infra.ports import Ports


def _models_prefix(user_id: str) -> str:
    return f"users/{user_id}/models/"


def admit(user_id: str, model_id: str, ports: Ports) -> None:
    """Let a new model for `user_id` be made, or refuse: the user is deleted, or asked for too many models
    within the period. A model admitted before (a redelivery) is admitted again without counting twice."""
    refuse_deleted(user_id, ports)
    marker = _models_prefix(user_id) + model_id
    if ports.state.exists(marker):
        return
    settings = ports.settings
    since = ports.clock() - settings.user_limit_period
    recent = sum(1 for info in ports.state.list(_models_prefix(user_id)) if info.created >= since)
    if recent >= settings.user_model_limit:
        hours = settings.user_limit_period.total_seconds() / 3600
        raise RequestLimitExceeded(
            f"user {user_id!r} already has {recent} models made in the last {hours:g} h; the limit is "
            f"{settings.user_model_limit} (IML_USER_MODEL_LIMIT, IML_USER_LIMIT_PERIOD_HOURS): nothing made")
    ports.state.put(marker, b"", if_absent=True)


def refuse_deleted(user_id: str, ports: Ports) -> None:
    if ports.state.exists(f"users/{user_id}/deleted"):
        raise UserDeleted(f"user {user_id!r} was deleted: no model is made or published for them")


def mark_deleted(user_id: str, ports: Ports) -> list[str]:
    """Leave the tombstone; the ids of every model the user was ever admitted for."""
    ports.state.put(f"users/{user_id}/deleted", ports.clock().isoformat().encode(), if_absent=True)
    prefix = _models_prefix(user_id)
    return [info.name[len(prefix):] for info in ports.state.list(prefix)]
