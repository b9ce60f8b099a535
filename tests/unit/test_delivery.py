"""Exactly-once effects under Pub/Sub's delivery: a failure at every call the steps make, crashes that leave
a claim behind, and the same message delivered from several threads and processes at once."""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Callable

import pytest

from functions import names, users
from functions.progress import ClaimHeld
from functions.chain import STEPS
from functions.events import Ready
from functions.runner import Outcome, deliver_locally, run_step
from infra.bootstrap import Ports, local_ports
from infra.errors import RequestLimitExceeded, TransientError
from infra.ledger import Ledger
from infra.settings import Settings
from tests.helpers import (with_base_and_data, admit_in_process, at_once, make_signup, on_threads, run_step_in_process,
                           watermarked_event)


class Crash(BaseException):
    """The process dies here: nothing of the runner's cleanup runs (only a lease frees its claim)."""


@dataclass
class Call:
    step: str  # the step whose delivery made the call
    what: str  # e.g. "state.put"
    name: str  # the object or topic


class Faults:
    """Counts every call the steps make to the stores and the bus, and fails the one numbered `fail_at`."""

    def __init__(self, fail_at: int | None = None, error: BaseException | None = None,
                 fail_when: Callable[[Call], bool] | None = None):
        self.fail_at, self.error, self.fail_when = fail_at, error, fail_when
        self.calls: list[Call] = []
        self.step = ""

    def tick(self, what: str, name: str) -> None:
        call = Call(self.step, what, name)
        self.calls.append(call)
        if len(self.calls) == self.fail_at or (self.fail_when and self.fail_when(call)):
            self.fail_when = None  # once
            raise self.error


class _Faulty:
    def __init__(self, inner, label: str, faults: Faults):
        self._inner, self._label, self._faults = inner, label, faults

    def __getattr__(self, method: str):
        inner = getattr(self._inner, method)

        def call(name="", *args, **kwargs):
            self._faults.tick(f"{self._label}.{method}", str(name))
            return inner(name, *args, **kwargs)

        return call


class Pipeline:
    """encrypt and publish (and watermark, given a model) wired on the in-process bus as deployed, every store
    and the bus behind `faults`; `redeliver` plays Pub/Sub after a crash (the message was never acknowledged)."""

    def __init__(self, ports: Ports, faults: Faults, steps=("encrypt", "publish")):
        self.inner_bus, self.faults = ports.bus, faults
        faulty = {role: _Faulty(getattr(ports, role), role, faults) for role in ("staging", "delivery", "state")}
        self.ports = replace(ports, **faulty, bus=_Faulty(ports.bus, "bus", faults),
                             ledger=Ledger(_Faulty(ports.ledger._store, "evidence", faults), ports.kms))
        self.results = []
        self.delivering: tuple[str, dict] | None = None
        for name in steps:
            step = STEPS[name]
            topic = step.input_topic(ports.settings.topics)
            self.inner_bus.subscribe(topic, lambda payload, step=step, topic=topic: self._deliver(step, topic, payload))

    def _deliver(self, step, topic: str, payload: bytes) -> None:
        self.faults.step, self.delivering = step.name, (topic, json.loads(payload))
        self.results.append(deliver_locally(step, payload, self.ports))
        self.delivering = None

    def run(self, topic: str, event: dict) -> None:
        self.inner_bus.publish(topic, event)
        self.inner_bus.drain()

    def redeliver(self) -> None:
        topic, event = self.delivering
        self.run(topic, event)


def _outcome(ports: Ports) -> dict:
    topics = ports.settings.topics
    ready = [Ready.parse(m) for m in ports.bus.journal(topics.ready)]
    return {
        "ready": len(ready),
        "notification_ids": {r.notification_id for r in ready},
        "issued": len(list(ports.ledger.entries("issued"))),
        "delivered": [info.name for info in ports.delivery.list()],
        "staging": [info.name for info in ports.staging.list()],
        "dead": [m["reason"] for m in ports.bus.journal(topics.dead_letter)],
        "done": sorted(info.name.split("/")[1] for info in ports.state.list("done/")),
    }


def _fresh(tmp_path: Path, clock, label: str) -> tuple[Ports, dict]:
    ports = local_ports(Settings(workdir=tmp_path / label), clock)
    signup = make_signup("alice", "req-1")
    return ports, watermarked_event(signup, ports)


def _clean_trace(tmp_path: Path, clock) -> list[Call]:
    ports, event = _fresh(tmp_path, clock, "clean")
    pipeline = Pipeline(ports, Faults())
    pipeline.run(ports.settings.topics.watermarked, event)
    assert _outcome(ports)["ready"] == 1
    return pipeline.faults.calls


def _the_window(call: Call) -> bool:
    """The one place a second copy of the ready notification may go out: it was published, and the step died
    (or failed) before recording that (docs/events.md)."""
    return call.step == "publish" and call.what == "state.put" and call.name.startswith("done/")


def _expect_exactly_once(ports: Ports, call: Call) -> None:
    outcome = _outcome(ports)
    model_id = make_signup("alice", "req-1").model_id
    assert outcome["dead"] == [], f"failing at {call}"
    assert outcome["issued"] == 1 and outcome["delivered"] == [f"{model_id}.iml"], f"failing at {call}"
    assert outcome["staging"] == [], f"failing at {call}: the input is consumed once the output is out"
    assert {"encrypt", "publish"} <= set(outcome["done"]), f"failing at {call}"
    assert outcome["notification_ids"] == {f"ready-{model_id}"}
    assert outcome["ready"] == (2 if _the_window(call) else 1), f"failing at {call}"


def test_a_transient_failure_at_any_call_still_ends_with_one_model_record_and_notification(tmp_path, clock):
    trace = _clean_trace(tmp_path, clock)
    assert {c.what for c in trace} >= {"state.put", "state.get", "state.list", "bus.publish",
                                       "evidence.put", "delivery.put", "staging.get", "staging.delete"}
    for number, call in enumerate(trace, start=1):
        ports, event = _fresh(tmp_path, clock, f"transient-{number}")
        pipeline = Pipeline(ports, Faults(number, TransientError("injected: storage unavailable")))
        pipeline.run(ports.settings.topics.watermarked, event)
        _expect_exactly_once(ports, call)
        assert {r.outcome for r in pipeline.results} <= {Outcome.DONE, Outcome.DUPLICATE}, call
        for step in ("encrypt", "publish"):  # a failed delivery gave its claim back; its successor's stands
            claims = [info.name for info in ports.state.list(f"claims/{step}/")]
            held = [name for name in claims if not name.endswith(".released") and name + ".released" not in claims]
            assert len(held) <= 1, f"failing at {call}: {claims}"


def test_a_crash_at_any_call_is_taken_over_once_its_lease_is_over(tmp_path, clock):
    trace = _clean_trace(tmp_path, clock)
    for number, call in enumerate(trace, start=1):
        ports, event = _fresh(tmp_path, clock, f"crash-{number}")
        pipeline = Pipeline(ports, Faults(number, Crash()))
        with pytest.raises(Crash):
            pipeline.run(ports.settings.topics.watermarked, event)
        clock.advance(ports.settings.claim_lease + timedelta(seconds=1))  # Pub/Sub retries until then
        pipeline.redeliver()
        _expect_exactly_once(ports, call)


def test_a_delivery_that_finds_a_live_claim_neither_runs_nor_dead_letters(ports):
    event = watermarked_event(make_signup("alice"), ports)
    model_id = event["model_id"]
    ports.state.put(names.step_claim("encrypt", model_id, 0), json.dumps(
        {"claimed_at": ports.clock().isoformat(), "input_sha256": "0" * 64,
         "lease_until": (ports.clock() + timedelta(minutes=10)).isoformat()}).encode())
    impatient = replace(ports, settings=replace(ports.settings, claim_wait=timedelta(0)))

    with pytest.raises(ClaimHeld, match=f"step encrypt of model {model_id} is claimed by another delivery"):
        run_step(STEPS["encrypt"], json.dumps(event).encode(), impatient)
    assert not ports.bus.journal(ports.settings.topics.sealed) and not ports.bus.journal(
        ports.settings.topics.dead_letter)
    assert not list(ports.delivery.list()) and ports.staging.exists(event["artifact"])


@pytest.mark.parametrize("what, name", [("bus.publish", "iml-watermarked"), ("state.put", "done/watermark/")])
def test_a_failure_after_watermarking_neither_loses_nor_remakes_the_model(what, name, tmp_path, clock,
                                                                          base_models_dir, user_data_dir):
    """The failure that used to lose a model: watermark deleted its input before its output went out."""
    with_base_and_data(tmp_path / "work", base_models_dir, user_data_dir)
    ports = local_ports(Settings(workdir=tmp_path / "work"), clock)
    signup = make_signup("alice", "req-1")
    faults = Faults(error=TransientError("injected"),
                    fail_when=lambda call: call.what == what and call.name.startswith(name))
    pipeline = Pipeline(ports, faults, steps=("generate", "watermark", "encrypt", "publish"))
    pipeline.run(ports.settings.topics.signup, signup.to_dict())

    assert [(r.step, r.outcome.value) for r in pipeline.results if r.step == "watermark"] == [("watermark", "done")]
    assert sum(1 for c in faults.calls if c.what == "staging.put" and c.name.startswith("watermarked/")) == 1, \
        "the retry published what the first delivery recorded, without watermarking again"
    _expect_exactly_once(ports, Call("watermark", what, name))


@pytest.fixture
def quick_wait(ports: Ports) -> Ports:
    return replace(ports, settings=replace(ports.settings, claim_wait=timedelta(seconds=20)))


def test_one_message_delivered_on_four_threads_at_once_is_done_once(quick_wait):
    ports = quick_wait
    payload = json.dumps(watermarked_event(make_signup("alice"), ports)).encode()
    results = on_threads(run_step, [(STEPS["encrypt"], payload, ports)] * 4)

    assert sorted(r.outcome.value for r in results) == ["done", "duplicate", "duplicate", "duplicate"]
    assert len(ports.bus.journal(ports.settings.topics.sealed)) == 1
    assert len(list(ports.ledger.entries("issued"))) == 1
    assert not list(ports.staging.list())


def test_one_message_delivered_by_four_processes_at_once_is_done_once(ports):
    event = watermarked_event(make_signup("alice"), ports)
    payload = json.dumps(event).encode()
    outcomes = at_once(run_step_in_process, [({"IML_WORKDIR": str(ports.settings.workdir)}, "encrypt", payload)] * 4)

    assert sorted(outcomes) == ["done", "duplicate", "duplicate", "duplicate"]
    assert len(ports.bus.journal(ports.settings.topics.sealed)) == 1
    assert len(list(ports.ledger.entries("issued"))) == 1
    assert [info.name for info in ports.delivery.list()] == [f"{make_signup('alice').model_id}.iml"]


def test_a_signup_delivered_three_times_at_once_trains_one_model(trained_ports):
    ports = replace(trained_ports, settings=replace(trained_ports.settings, claim_wait=timedelta(seconds=120)))
    payload = json.dumps(make_signup("alice").to_dict()).encode()
    results = on_threads(run_step, [(STEPS["generate"], payload, ports)] * 3)

    assert sorted(r.outcome.value for r in results) == ["done", "duplicate", "duplicate"]
    assert len(ports.bus.journal(ports.settings.topics.generated)) == 1
    assert [info.name for info in ports.state.list(names.user_models("alice"))] == \
        [names.user_model("alice", make_signup("alice").model_id)]


def test_n_plus_one_simultaneous_requests_under_a_limit_of_n_admit_n(ports):
    limited = replace(ports, settings=replace(ports.settings, user_model_limit=3))
    results = on_threads(users.admit, [("alice", f"m-{n:032x}", limited) for n in range(4)])
    admitted = [n for n, result in enumerate(results) if result is None]
    refused = [n for n, result in enumerate(results) if isinstance(result, RequestLimitExceeded)]

    assert len(admitted) == 3 and len(refused) == 1
    for number in admitted:  # a redelivery of an admitted request is admitted again, not counted
        users.admit("alice", f"m-{number:032x}", limited)
    with pytest.raises(RequestLimitExceeded):
        users.admit("alice", f"m-{refused[0]:032x}", limited)


def test_n_plus_one_processes_under_a_limit_of_n_admit_n(ports):
    env = {"IML_WORKDIR": str(ports.settings.workdir), "IML_USER_MODEL_LIMIT": "3"}
    results = at_once(admit_in_process, [(env, "alice", f"m-{n:032x}") for n in range(4)])
    assert sorted(results) == ["admitted"] * 3 + ["refused"]


def test_a_model_whose_admission_failed_midway_takes_one_slot_however_it_failed(ports):
    """A failure (transient, or the process dying) at any call of an admission, then its redelivery: the
    model holds exactly one slot, and the limit's other slots stay free for other models."""
    limited = replace(ports, settings=replace(ports.settings, user_model_limit=3))
    trace = Faults()
    users.admit("trace", "m-" + "0" * 32, replace(limited, state=_Faulty(ports.state, "state", trace)))
    for number in range(1, len(trace.calls) + 1):
        for error in (TransientError("injected"), Crash()):
            user = f"u{number}-{type(error).__name__}"
            faulty = replace(limited, state=_Faulty(ports.state, "state", Faults(number, error)))
            with pytest.raises(type(error)):
                users.admit(user, "m-" + "1" * 32, faulty)
            users.admit(user, "m-" + "1" * 32, limited)  # the redelivery
            slots = [ports.state.get(info.name) for info in ports.state.list(f"slots/{user}/")]
            assert slots == [b"m-" + b"1" * 32], (number, error)
            users.admit(user, "m-" + "2" * 32, limited)
            users.admit(user, "m-" + "3" * 32, limited)
            with pytest.raises(RequestLimitExceeded):
                users.admit(user, "m-" + "4" * 32, limited)


def test_a_message_replayed_after_its_markers_expired_is_not_issued_twice(ports):
    """Days later the lifecycle rule has deleted the step markers and expiry the delivered model; an operator
    replays the old message: it is refused at encrypt, and the ledger keeps its one record of the model."""
    signup = make_signup("alice")
    payload = json.dumps(watermarked_event(signup, ports)).encode()
    assert run_step(STEPS["encrypt"], payload, ports).outcome is Outcome.DONE
    for info in list(ports.state.list()):
        ports.state.delete(info.name)
    ports.delivery.delete(names.delivered_model(signup.model_id))
    watermarked_event(signup, ports)  # staged again by the replayed watermark step

    result = run_step(STEPS["encrypt"], payload, ports)
    assert result.outcome is Outcome.DEAD_LETTERED
    assert result.reason == (f"model {signup.model_id} was issued already and its delivery is gone: a message "
                             f"replayed after its step markers expired is not issued a second time")
    assert len(list(ports.ledger.entries("issued"))) == 1 and not list(ports.delivery.list())
