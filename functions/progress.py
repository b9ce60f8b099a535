"""What the runner keeps in the state store about one unit of work (one model at one step), so that deliveries
that overlap, crash or repeat have exactly one effect. Every record is a create-once object (a generation
precondition on Cloud Storage, an exclusive link in a local folder): of two writers exactly one wins, and the
loser reads the winner's record.

    claims/<step>/<model_id>/<epoch>   who works on it, until when: the first delivery to create epoch 0 works;
                                       another waits, and takes over by creating epoch n+1 once epoch n's
                                       lease is over (its claimant died) or it was given back (<epoch>.released)
    outbox/<step>/<model_id>           the step's outputs, recorded before any is published, so a retry
                                       publishes the very same messages instead of making new ones
    done/<step>/<model_id>             the outputs went out: a later delivery only completes what is missing

functions/names.py names the objects; functions/runner.py decides the order. The argument for the order is in
docs/delivery.md.
"""
from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable

from functions import names
from infra.errors import ObjectMissing, TransientError
from infra.ports import BlobStore


class ClaimHeld(TransientError):
    """Another delivery of the same work holds a live claim: this delivery fails, to be retried later (by then
    the work is done, or its claimant's lease is over)."""


class ClaimLapsed(TransientError):
    """This delivery's own lease ran out before it could publish: another delivery may have taken the work over,
    so this one stops short of publishing, and fails (its retry finds the work done, or takes it over)."""


@dataclass(frozen=True)
class Claim:
    """The right to do a unit of work, until `lease_until`."""

    name: str
    lease_until: datetime


@dataclass(frozen=True)
class Done:
    """The unit of work was completed, from a message with digest `input_sha256` (None: a marker written
    before markers named their message)."""

    input_sha256: str | None
    done_at: str


@dataclass(frozen=True)
class Outputs:
    """The (topic, message) pairs a delivery recorded for a unit of work, and the digest of its message."""

    input_sha256: str
    messages: list[tuple[str, dict]]


def acquire(state: BlobStore, step: str, model_id: str, input_sha256: str, *, clock: Callable[[], datetime],
            lease: timedelta, wait: timedelta, sleep: Callable[[float], None] = time.sleep) -> Claim | Done:
    """Claim the unit of work, or learn that it is done. While another claim is live, wait (polling) for up to
    `wait`, then raise ClaimHeld. The holder of a claim looks at `completed` once more before it works: the
    work may have been finished, and its claim given back, since this delivery first looked."""
    deadline = time.monotonic() + wait.total_seconds()
    pause = 0.1
    while True:
        done = completed(state, step, model_id)
        if done is not None:
            return done
        epoch, holder = _next_epoch(state, step, model_id, lease)
        now = clock()
        if holder is None or holder <= now:  # nobody works on it, or its claimant is presumed dead
            claim = Claim(names.step_claim(step, model_id, epoch), now + lease)
            record = _json({"claimed_at": now.isoformat(), "lease_until": claim.lease_until.isoformat(),
                            "input_sha256": input_sha256, "token": uuid.uuid4().hex})
            if state.put(claim.name, record, if_absent=True) or _reads(state, claim.name) == record:
                return claim  # (the second test: a retried write whose first try had landed)
            continue  # another delivery claimed it a moment ago: look again
        left = deadline - time.monotonic()
        if left <= 0:
            raise ClaimHeld(f"step {step} of model {model_id} is claimed by another delivery until "
                            f"{holder.isoformat()}: retry later")
        sleep(min(pause, left))  # the last look falls on the deadline itself
        pause = min(pause * 2, 5.0)


def check_held(claim: Claim, clock: Callable[[], datetime]) -> None:
    """Raise ClaimLapsed if the claim's lease is over."""
    if clock() >= claim.lease_until:
        raise ClaimLapsed(f"the claim {claim.name} lapsed before its work was published: retry")


def release(state: BlobStore, claim: Claim) -> None:
    """Give the claim up, so that the next delivery starts at once (this one failed). The claim stays, marked
    given back, and claims are numbered onwards: a name is never claimed twice, so no retried write or delete
    can touch another delivery's claim."""
    state.put(names.claim_released(claim.name), b"", if_absent=True)


def completed(state: BlobStore, step: str, model_id: str) -> Done | None:
    record = _record(state, names.step_done(step, model_id))
    if record is None:
        return None
    return Done(record.get("input_sha256"), str(record.get("done_at")))


def mark_done(state: BlobStore, step: str, model_id: str, input_sha256: str, now: datetime) -> None:
    record = {"done_at": now.isoformat(), "input_sha256": input_sha256}
    state.put(names.step_done(step, model_id), _json(record), if_absent=True)


def recorded_outputs(state: BlobStore, step: str, model_id: str) -> Outputs | None:
    """What an earlier delivery recorded for this unit of work, if anything."""
    record = _record(state, names.step_outbox(step, model_id))
    if record is None:
        return None
    return Outputs(record["input_sha256"], [(m["topic"], m["message"]) for m in record["messages"]])


def record_outputs(state: BlobStore, step: str, model_id: str, outputs: Outputs) -> Outputs:
    """Record the outputs before publishing them. Of two deliveries that both got here (a lease that ran out
    under a slow claimant), the first record wins, and is what both go on with."""
    record = {"input_sha256": outputs.input_sha256,
              "messages": [{"topic": topic, "message": message} for topic, message in outputs.messages]}
    if state.put(names.step_outbox(step, model_id), _json(record), if_absent=True):
        return outputs
    return recorded_outputs(state, step, model_id)


def _next_epoch(state: BlobStore, step: str, model_id: str, lease: timedelta) -> tuple[int, datetime | None]:
    """The epoch the next claim takes, and until when the newest claim holds (None: nobody holds it)."""
    claims, released = {}, set()
    for info in state.list(names.step_claims(step, model_id)):
        match = _CLAIM.fullmatch(info.name.rpartition("/")[2])
        if match is None:
            continue  # not ours: a claim name is nine digits
        epoch = int(match[1])
        if match[2]:
            released.add(epoch)
        else:
            claims[epoch] = info
    if not claims and not released:
        return 0, None
    latest = max(claims.keys() | released)
    if latest in released or latest not in claims:
        return latest + 1, None
    record = _record(state, claims[latest].name)
    try:
        holds_until = datetime.fromisoformat(record["lease_until"])
        # no claimant's clock extends a lease past what the store saw: created + lease
        return latest + 1, min(holds_until, claims[latest].created + lease)
    except (TypeError, KeyError, ValueError):
        return latest + 1, None  # unreadable: nobody can be holding it


def _record(state: BlobStore, name: str) -> dict | None:
    raw = _reads(state, name)
    if raw is None:
        return None
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _reads(state: BlobStore, name: str) -> bytes | None:
    try:
        return state.get(name)
    except ObjectMissing:
        return None


def _json(record: dict) -> bytes:
    return json.dumps(record, sort_keys=True).encode()


_CLAIM = re.compile(r"([0-9]{9})(\.released)?")
