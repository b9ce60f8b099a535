"""Running one step on one message, with Pub/Sub's delivery semantics, the same locally and in the cloud.

- The message is parsed and validated first; a PermanentError (bad input, duplicate request, missing object),
  an envelope refused (infra.envelope.EnvelopeError: a device key that is no key, say) or a step's Refusal
  publishes the message and its reason to the dead-letter topic and acknowledges it.
- A step's outputs go where the chain (functions/chain.py) routes them.
- A step that already completed for a model (a marker in the state store) does not run again: a redelivered
  message makes no second model, ledger record or notification.
- Anything else propagates, so the delivery fails and is retried; `deliver_locally` bounds those retries as a
  subscription's dead-letter policy does.
"""
from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from enum import Enum
from typing import Callable

from functions import names
from functions.chain import STEPS, Step
from functions.events import Refusal
from infra.bootstrap import Ports
from infra.envelope import EnvelopeError
from infra.errors import DuplicateRequest, InvalidEvent, PermanentError
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
        marker = names.step_done(step.name, event.model_id) if hasattr(event, "model_id") else None
        if marker and ports.state.exists(marker):
            if step.duplicate_is_error:
                raise DuplicateRequest(
                    f"duplicate request: request_id {event.request_id!r} of user {event.user_id!r} "
                    f"was already turned into model {event.model_id}"
                )
            log.info("redelivered message skipped", step=step.name, model_id=event.model_id)
            return _result(step, Outcome.DUPLICATE, started, event)
        outputs = step.handle(event, ports)
        for output in outputs:
            if not isinstance(output, Refusal):
                ports.bus.publish(step.topic_for(output, ports.settings.topics), output.to_dict())
        for output in outputs:
            if isinstance(output, Refusal):
                raise output.error
        if marker:
            ports.state.put(marker, json.dumps({"done_at": ports.clock().isoformat()}).encode(), if_absent=True)
    except (PermanentError, EnvelopeError) as error:
        dead_letter(step.name, payload, str(error), type(error).__name__, ports)
        return _result(step, Outcome.DEAD_LETTERED, started, event, reason=str(error))
    result = _result(step, Outcome.DONE, started, event)
    log.info("step done", step=step.name, user_id=result.user_id, model_id=result.model_id,
             seconds=round(result.seconds, 3))
    return result


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
        message["message"] = json.loads(payload)
    except ValueError:
        message["message_base64"] = base64.b64encode(payload).decode()
    ports.bus.publish(ports.settings.topics.dead_letter, message)
    log.warning("message dead-lettered", step=step, reason=reason, error_type=error_type)


def _decode(payload: bytes) -> object:
    try:
        return json.loads(payload)
    except ValueError:
        raise InvalidEvent("(event)", "is not valid JSON") from None


def _result(step: Step, outcome: Outcome, started: float, event, reason: str | None = None) -> StepResult:
    return StepResult(
        step.name,
        outcome,
        time.perf_counter() - started,
        user_id=getattr(event, "user_id", None),
        model_id=getattr(event, "model_id", None),
        reason=reason,
    )
