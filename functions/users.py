"""What the pipeline keeps per user in the state store (functions/names.py names the keys): the models a user
asked for (for the request limit and for deletion) and whether the user was deleted."""
from __future__ import annotations

from functions import names
from infra.bootstrap import Ports
from infra.errors import RequestLimitExceeded, UserDeleted


def admit(user_id: str, model_id: str, ports: Ports) -> None:
    """Let a new model for `user_id` be made, or refuse: the user is deleted, or asked for too many models
    within the period. A model admitted before (a redelivery) is admitted again without counting twice."""
    refuse_deleted(user_id, ports)
    marker = names.user_model(user_id, model_id)
    if ports.state.exists(marker):
        return
    settings = ports.settings
    since = ports.clock() - settings.user_limit_period
    recent = sum(1 for info in ports.state.list(names.user_models(user_id)) if info.created >= since)
    if recent >= settings.user_model_limit:
        hours = settings.user_limit_period.total_seconds() / 3600
        raise RequestLimitExceeded(
            f"user {user_id!r} already has {recent} models made in the last {hours:g} h; the limit is "
            f"{settings.user_model_limit} (IML_USER_MODEL_LIMIT, IML_USER_LIMIT_PERIOD_HOURS): nothing made")
    ports.state.put(marker, b"", if_absent=True)


def is_deleted(user_id: str, ports: Ports) -> bool:
    return ports.state.exists(names.user_deleted(user_id))


def deleted(user_id: str) -> UserDeleted:
    return UserDeleted(f"user {user_id!r} was deleted: no model is made or published for them")


def refuse_deleted(user_id: str, ports: Ports) -> None:
    if is_deleted(user_id, ports):
        raise deleted(user_id)


def mark_deleted(user_id: str, ports: Ports) -> list[str]:
    """Leave the tombstone; the ids of every model the user was ever admitted for."""
    ports.state.put(names.user_deleted(user_id), ports.clock().isoformat().encode(), if_absent=True)
    prefix = names.user_models(user_id)
    return [info.name[len(prefix):] for info in ports.state.list(prefix)]
