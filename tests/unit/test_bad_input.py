"""Poison messages: a typed error naming the problem, the message dead-lettered with its reason, nothing made,
and never a crash or an endless retry."""
from __future__ import annotations

import base64
import json

import pytest

from functions.events import Signup, model_id_for
from functions.chain import ATTEMPTS as LOCAL_MAX_DELIVERY_ATTEMPTS
from functions.chain import STEPS
from functions.runner import Outcome, deliver_locally, run_step
from tests.helpers import make_signup, model_step_event

GOOD = make_signup("alice").to_dict()


def _dead_letters(ports) -> list[dict]:
    return ports.bus.journal(ports.settings.topics.dead_letter)


def _nothing_made(ports) -> bool:
    stores = (ports.staging, ports.delivery, ports.state)
    return not any(list(store.list()) for store in stores) and not list(ports.ledger.entries())


@pytest.mark.parametrize(
    "event, reason",
    [
        ({k: v for k, v in GOOD.items() if k != "user_id"}, "field 'user_id': is required"),
        ({k: v for k, v in GOOD.items() if k != "device_public_key"}, "field 'device_public_key': is required"),
        ({**GOOD, "user_id": "../../etc"}, "field 'user_id': must match"),
        ({**GOOD, "user_id": "a" * 65}, "field 'user_id': must match"),
        ({**GOOD, "schema_version": 2}, "field 'schema_version': must be 1"),
        ({**GOOD, "surprise": True}, "field 'surprise': is not a field of this event"),
        ({**GOOD, "device_public_key": base64.b64encode(b"\x04" + bytes(64)).decode()},
         "not a point on the P-256 curve"),
        ({**GOOD, "device_public_key": "%" * 88}, "field 'device_public_key': is not valid base64"),
        (["not", "an", "object"], "field '(event)': must be a JSON object"),
    ],
)
def test_a_poison_signup_is_dead_lettered_with_its_reason(ports, wired, event, reason):
    ports.bus.publish(ports.settings.topics.signup, event)
    ports.bus.drain()
    (result,) = wired
    assert result.outcome is Outcome.DEAD_LETTERED
    (dead,) = _dead_letters(ports)
    assert reason in dead["reason"]
    assert dead["step"] == "generate" and dead["message"] == event
    assert _nothing_made(ports)


def test_bytes_that_are_not_json_are_kept_in_the_dead_letter(ports):
    result = run_step(STEPS["generate"], b"\xff\xfe not json", ports)
    assert result.outcome is Outcome.DEAD_LETTERED
    (dead,) = _dead_letters(ports)
    assert dead["reason"] == "invalid event: field '(event)': is not valid JSON"
    assert base64.b64decode(dead["message_base64"]) == b"\xff\xfe not json"


@pytest.mark.parametrize("payload, reason", [
    (b'{"schema_version": 1, "facts": {"accuracy_watermarked": 1e999}}', "is not valid JSON"),
    (b'{"schema_version": NaN}', "is not valid JSON"),
    (b"[" * 200_000 + b"]" * 200_000, "nests deeper than 16 levels"),
    (b'{"schema_version": 1, "a": ' + b"[" * 900 + b"]" * 900 + b"}", "nests deeper than 16 levels"),
    (b'{"schema_version": 1, "request_id": "r", "user_id": "alice", "data_ref": "\\ud800"}', "is not valid JSON"),
])
def test_numbers_json_has_not_and_nesting_no_event_has_are_dead_lettered(payload, reason, ports):
    """What Python's parser would let through (a float that overflows to infinity, NaN, a lone surrogate) or
    choke on (deep nesting) is refused at the edge, and the dead letter keeps the bytes."""
    result = run_step(STEPS["encrypt"], payload, ports)
    assert result.outcome is Outcome.DEAD_LETTERED
    (dead,) = _dead_letters(ports)
    assert dead["reason"] == f"invalid event: field '(event)': {reason}"
    assert base64.b64decode(dead["message_base64"]) == payload


def test_an_internal_event_pointing_at_nothing_is_dead_lettered(ports):
    event = model_step_event(make_signup("alice"), "watermarked/gone.tflite")
    result = run_step(STEPS["encrypt"], json.dumps(event).encode(), ports)
    assert result.outcome is Outcome.DEAD_LETTERED
    assert "no object 'watermarked/gone.tflite'" in _dead_letters(ports)[0]["reason"]


def test_a_failing_dependency_is_retried_a_bounded_number_of_times(ports):
    """Storage that cannot be read (here: a folder where the staged object should be) is not the message's
    fault, so it is retried; after the subscription's attempts it goes to the dead letters, not forever."""
    (ports.staging.root / "watermarked" / "m.tflite").mkdir(parents=True)
    event = model_step_event(make_signup("alice"), "watermarked/m.tflite")
    result = deliver_locally(STEPS["encrypt"], json.dumps(event).encode(), ports)
    assert result.outcome is Outcome.DEAD_LETTERED
    (dead,) = _dead_letters(ports)
    assert dead["reason"].startswith(f"failed {LOCAL_MAX_DELIVERY_ATTEMPTS} delivery attempts")
    assert dead["error_type"] == "IsADirectoryError"
    assert not list(ports.delivery.list()) and not list(ports.ledger.entries())


def test_model_ids_are_stable_per_request_and_distinct_across_requests():
    assert model_id_for("alice", "r1") == model_id_for("alice", "r1")
    assert len({model_id_for("alice", "r1"), model_id_for("alice", "r2"), model_id_for("bob", "r1")}) == 3
    assert Signup.parse(GOOD).model_id == model_id_for("alice", GOOD["request_id"])
