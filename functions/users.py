"""What the pipeline keeps per user in the state store (functions/names.py names the keys): the models a user
was admitted for (for deletion), the request limit's slots, and whether the user was deleted."""
from __future__ import annotations

from functions import names
from infra.bootstrap import Ports
from infra.errors import ObjectMissing, RequestLimitExceeded, UserDeleted


def admit(user_id: str, model_id: str, ports: Ports) -> None:
    """Let a new model for `user_id` be made, or refuse: the user is deleted, or already has as many models as
    the limit allows in this period. A model admitted before (a redelivery) is admitted again without counting
    twice, also when its delivery died between taking its slot and marking the model admitted.

    The limit holds under any concurrency: each admitted model takes one of the period's numbered slots with a
    create-once write, so of N + 1 simultaneous requests under a limit of N exactly N get a slot. Periods are
    fixed windows of IML_USER_LIMIT_PERIOD_HOURS counted from the Unix epoch (UTC)."""
    refuse_deleted(user_id, ports)
    marker = names.user_model(user_id, model_id)
    if ports.state.exists(marker):
        return
    settings = ports.settings
    period = int(ports.clock().timestamp() // settings.user_limit_period.total_seconds())
    taken = [info.name for info in ports.state.list(names.user_slots(user_id, period))]
    mine = model_id.encode()
    if not any(_holder(name, ports) == mine for name in taken):  # (at most the limit's number of reads)
        for slot in range(len(taken), settings.user_model_limit):
            name = names.user_slot(user_id, period, slot)
            if ports.state.put(name, mine, if_absent=True) or _holder(name, ports) == mine:
                break  # (the second test: a retried write whose first try had landed)
        else:
            hours = settings.user_limit_period.total_seconds() / 3600
            raise RequestLimitExceeded(
                f"user {user_id!r} already has {settings.user_model_limit} models made in this {hours:g} h "
                f"period; the limit is {settings.user_model_limit} (IML_USER_MODEL_LIMIT, "
                f"IML_USER_LIMIT_PERIOD_HOURS): nothing made")
    ports.state.put(marker, b"", if_absent=True)


def _holder(slot: str, ports: Ports) -> bytes | None:
    try:
        return ports.state.get(slot)
    except ObjectMissing:  # deleted by the lifecycle rule since it was listed
        return None


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


def delete_data(user_id: str, ports: Ports) -> int:
    """Delete every object in the user's data folder; how many were deleted."""
    folder = names.user_data_folder(user_id)
    return sum(ports.user_data.delete(info.name) for info in list(ports.user_data.list(folder)))
