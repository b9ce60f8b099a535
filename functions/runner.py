"""Running one step on one message, with Pub/Sub's delivery semantics, the same locally and in the cloud.

- The message is parsed and validated first; a PermanentError (bad input, duplicate request, missing object),
  an envelope refused (infra.envelope.EnvelopeError: a device key that is no key, say) or a step's Refusal
  publishes the message and its reason to the dead-letter topic and acknowledges it.
- Work on a model is done once however many deliveries overlap, crash or repeat (functions/progress.py keeps
  the records, docs/delivery.md has the argument): claim it; run the handler, or take the outputs an earlier
  delivery recorded; record them; publish them where the chain (functions/chain.py) routes them; record the
  step done; only then delete the input. A delivery that finds the work done completes what is missing.
- Anything else propagates, so the delivery fails and is retried (the claim given back first);
  `deliver_locally` bounds those retries as a subscription's dead-letter policy does.
"""
from __future__ import annotations

import base64
import hashlib
import json
import math
import time
from dataclasses import dataclass
from enum import Enum
from typing import Callable

from functions import progress
from functions.chain import STEPS, Step
from functions.events import Refusal
from infra.bootstrap import Ports
from infra.envelope import EnvelopeError
from infra.errors import DuplicateRequest, InvalidEvent, PermanentError
from infra.ledger import canonical_json
from infra.logs import get_logger

log = get_logger("iml.runner")


class Outcome(Enum):
    DONE = "done"
    DUPLICATE = "duplicate"
    DEAD_LETTERED = "dead-lettered"


@dataclass(frozen=True)
class StepResult:
    step: str
    outcome: Outcome
    seconds: float
    user_id: str | None = None
    model_id: str | None = None
    reason: str | None = None


def run_step(step: Step, payload: bytes, ports: Ports) -> StepResult:
    started = time.perf_counter()
    event = None
    try:
        event = step.event.parse(_decode(payload))
        if hasattr(event, "model_id"):
            outcome = _run_once(step, event, ports)
        else:  # the expire tick: no unit of work to claim; deleting twice has one effect
            _publish(_routed(step, step.handle(event, ports), ports), ports)
            outcome = Outcome.DONE
    except (PermanentError, EnvelopeError) as error:
        dead_letter(step.name, payload, str(error), type(error).__name__, ports)
        return _result(step, Outcome.DEAD_LETTERED, started, event, reason=str(error))
    result = _result(step, outcome, started, event)
    if outcome is Outcome.DUPLICATE:
        log.info("redelivered message: the work was done already", step=step.name, model_id=event.model_id)
    else:
        log.info("step done", step=step.name, user_id=result.user_id, model_id=result.model_id,
                 seconds=round(result.seconds, 3))
    return result


def _run_once(step: Step, event, ports: Ports) -> Outcome:
    """Claim, run or replay, record, publish, mark done, consume: in this order (docs/delivery.md)."""
    state, settings = ports.state, ports.settings
    digest = hashlib.sha256(canonical_json(event.to_dict())).hexdigest()
    claim = progress.acquire(state, step.name, event.model_id, digest, clock=ports.clock,
                             lease=settings.claim_lease, wait=settings.claim_wait)
    if isinstance(claim, progress.Done):
        return _already_done(step, event, claim, digest, ports)
    try:
        done = progress.completed(state, step.name, event.model_id)  # finished since acquire first looked?
        if done is not None:
            _give_back(claim, ports)
            return _already_done(step, event, done, digest, ports)
        outputs = progress.recorded_outputs(state, step.name, event.model_id) if step.records_outputs else None
        if outputs is None:
            produced = step.handle(event, ports)
            outputs = progress.Outputs(digest, _routed(step, produced, ports))
            refusals = [output.error for output in produced if isinstance(output, Refusal)]
            if refusals:
                _publish(outputs.messages, ports)
                raise refusals[0]
            if step.records_outputs:
                outputs = progress.record_outputs(state, step.name, event.model_id, outputs)
        if outputs.input_sha256 != digest:
            raise _conflict(step, event)
        progress.check_held(claim, ports.clock)  # past its lease another delivery may be at work: leave it be
        _publish(outputs.messages, ports)
        progress.mark_done(state, step.name, event.model_id, digest, ports.clock())
        _consume(step, event, ports)
    except PermanentError:
        _give_back(claim, ports)
        done = progress.completed(state, step.name, event.model_id)
        if done is not None and done.input_sha256 == digest:
            # a delivery that outlived its lease finished the work meanwhile
            return _already_done(step, event, done, digest, ports)
        raise
    except (Exception, KeyboardInterrupt, SystemExit):  # not a process killed outright: its lease frees it
        _give_back(claim, ports)
        raise
    return Outcome.DONE


def _already_done(step: Step, event, done: progress.Done, digest: str, ports: Ports) -> Outcome:
    if done.input_sha256 not in (None, digest):
        raise _conflict(step, event)
    _consume(step, event, ports)  # what a delivery that stopped after marking done left
    return Outcome.DUPLICATE


def _conflict(step: Step, event) -> DuplicateRequest:
    return DuplicateRequest(
        f"duplicate request: model {event.model_id} (request_id {event.request_id!r} of user "
        f"{event.user_id!r}) was already made at step {step.name} from a different message")


def _routed(step: Step, outputs: list, ports: Ports) -> list[tuple[str, dict]]:
    return [(step.topic_for(output, ports.settings.topics), output.to_dict())
            for output in outputs if not isinstance(output, Refusal)]


def _publish(messages: list[tuple[str, dict]], ports: Ports) -> None:
    for topic, message in messages:
        ports.bus.publish(topic, message)


def _consume(step: Step, event, ports: Ports) -> None:
    if step.consumes_input:
        ports.staging.delete(event.artifact)


def _give_back(claim: progress.Claim, ports: Ports) -> None:
    """Release the claim; if even that fails, its lease runs out instead."""
    try:
        progress.release(ports.state, claim)
    except Exception as error:
        log.warning("claim not released; its lease will run out", claim=claim.name,
                    error_type=type(error).__name__)


def deliver_locally(step: Step, payload: bytes, ports: Ports) -> StepResult:
    """What a push subscription with a dead-letter policy does: retry a failing delivery a few times (the
    step's delivery attempts), then forward the message to the dead-letter topic, so a poison message never
    blocks the rest."""
    for attempt in range(1, step.delivery_attempts + 1):
        started = time.perf_counter()
        try:
            return run_step(step, payload, ports)
        except Exception as error:  # a transient error or a bug: Pub/Sub would redeliver
            log.warning("delivery failed, will retry", step=step.name, attempt=attempt,
                        error_type=type(error).__name__)
            last = error
    reason = f"failed {step.delivery_attempts} delivery attempts, last with {type(last).__name__}: {last}"
    dead_letter(step.name, payload, reason, type(last).__name__, ports)
    return StepResult(step.name, Outcome.DEAD_LETTERED, time.perf_counter() - started, reason=reason)


def subscribe_steps(bus, ports: Ports, on_result: Callable[[StepResult], None] = lambda result: None) -> None:
    """Wire every step to its input topic on an in-process bus, with local delivery semantics."""
    for step in STEPS.values():
        def deliver(payload: bytes, step: Step = step) -> None:
            on_result(deliver_locally(step, payload, ports))

        bus.subscribe(step.input_topic(ports.settings.topics), deliver)


def dead_letter(step: str, payload: bytes, reason: str, error_type: str, ports: Ports) -> None:
    message: dict = {
        "schema_version": 1,
        "step": step,
        "reason": reason,
        "error_type": error_type,
        "dead_lettered_at": ports.clock().isoformat(),
    }
    try:
        message["message"] = _strict_json(payload)
    except (ValueError, RecursionError):
        message["message_base64"] = base64.b64encode(payload).decode()
    ports.bus.publish(ports.settings.topics.dead_letter, message)
    log.warning("message dead-lettered", step=step, reason=reason, error_type=error_type)


def _decode(payload: bytes) -> object:
    try:
        return _strict_json(payload)
    except RecursionError:
        raise InvalidEvent("(event)", f"nests deeper than {MAX_DEPTH} levels") from None
    except ValueError:
        raise InvalidEvent("(event)", "is not valid JSON") from None


MAX_DEPTH = 16  # events nest three levels; a dead letter wraps them in one more


def _strict_json(payload: bytes) -> object:
    """JSON without what Python's parser lets through: NaN, Infinity, numbers that overflow to infinity and
    strings that are not Unicode (lone surrogates), nested at most MAX_DEPTH levels (RecursionError beyond;
    ValueError for the rest), so that every value parsed here serialises again (canonical_json, the bus)."""
    value = json.loads(payload, parse_constant=_not_json, parse_float=_finite)
    _check_depth(value)
    canonical_json({"value": value})  # UnicodeEncodeError (a ValueError) for a lone surrogate
    return value


def _check_depth(value: object) -> None:
    level = [value]
    for _ in range(MAX_DEPTH):
        level = [child for item in level if isinstance(item, (dict, list))
                 for child in (item.values() if isinstance(item, dict) else item)]
        if not level:
            return
    raise RecursionError("too deep")


def _not_json(constant: str):
    raise ValueError(f"{constant} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("a number too large for a double")
    return value


def _result(step: Step, outcome: Outcome, started: float, event, reason: str | None = None) -> StepResult:
    return StepResult(
        step.name,
        outcome,
        time.perf_counter() - started,
        user_id=getattr(event, "user_id", None),
        model_id=getattr(event, "model_id", None),
        reason=reason,
    )
