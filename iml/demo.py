"""`iml demo`: the real pipeline for a few simulated users on the embedded defaults, end to end.

Signup -> generate -> watermark -> encrypt -> publish through the in-process bus; each device downloads,
opens and runs its model; one decrypted model leaks and the verifier traces it; a model never issued
accuses nobody; the clock moves past the TTL and expire deletes what was delivered.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Callable

from functions import userdata
from functions.chain import STEPS
from functions.events import Ready, Signup
from functions.runner import StepResult, subscribe_steps
from iml import device as devices
from infra.bootstrap import MovableClock, local_ports
from infra.ledger import IssuedModel
from infra.local_storage import fetch_local_url
from infra.settings import Settings
from watermark.detect import representable
from watermark.verify import verify_file

NEVER_ISSUED_USER = "never-issued"


@dataclass
class Progress:
    """What the demo tells its caller as it goes; the CLI turns it into progress bars."""

    on_stage: Callable[[str, int], None] = lambda stage, total: None
    on_advance: Callable[[str, float], None] = lambda stage, seconds: None  # one unit of work just took `seconds`


@dataclass
class _Run:
    progress: Progress
    results: list[StepResult] = field(default_factory=list)
    ready: dict[str, Ready] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def done(self, stage: str, seconds: float) -> None:
        self.timings[stage] = round(self.timings.get(stage, 0.0) + seconds, 3)
        self.progress.on_advance(stage, seconds)


def run_demo(users: int, workdir: Path, progress: Progress = Progress(), settings: Settings | None = None) -> dict:
    if not 1 <= users <= 100:
        raise ValueError("--users must be between 1 and 100")
    settings = settings or Settings(workdir=workdir)
    clock = MovableClock()
    ports = local_ports(settings, clock)
    topics = settings.topics
    run = _Run(progress)
    dead_letters_before = len(ports.bus.journal(topics.dead_letter))

    def record(result: StepResult) -> None:
        run.results.append(result)
        run.done(result.step, result.seconds)

    subscribe_steps(ports.bus, ports, record)
    ports.bus.subscribe(topics.ready, lambda payload: _keep_ready(run, payload))

    # 1. every simulated device makes its key pair and signs up
    stamp = clock().strftime("%Y%m%dT%H%M%S")
    phones = [devices.Device.create(workdir / "devices" / f"user-{i:03d}", f"user-{i:03d}") for i in range(1, users + 1)]
    for stage in (name for name in STEPS if name != "expire"):  # what a signup goes through, in order
        progress.on_stage(stage, users)
    for phone in phones:
        signup = Signup(request_id=f"demo-{stamp}-{phone.user_id}", user_id=phone.user_id,
                        device_public_key=phone.public_key_b64)
        ports.bus.publish(topics.signup, signup.to_dict())
    # 2-5. the pipeline runs until the bus is quiet
    ports.bus.drain()

    # 6. each device fetches, opens and runs its own model on its own held-out data
    progress.on_stage("device", users)
    on_device: dict[str, float] = {}
    for phone in phones:
        started = time.perf_counter()
        if phone.user_id in run.ready:
            ready = run.ready[phone.user_id]
            tflite = phone.receive(fetch_local_url(ready.download_url, clock()), ready.model_id)
            held_out = userdata.for_user(phone.user_id).held_out
            on_device[phone.user_id] = devices.accuracy(tflite, held_out.x, held_out.y)
        run.done("device", time.perf_counter() - started)

    # 7. one decrypted model leaks; the verifier names its user. A model never issued names nobody.
    progress.on_stage("verify", 2)
    leak = _leak(phones, run, workdir, ports)
    never_issued = _never_issued(run, workdir, ports)

    # 8. the clock moves past the TTL; the hourly expiry deletes what was delivered
    progress.on_stage("expire", 1)
    delivered_before = sum(1 for _ in ports.delivery.list())
    clock.advance(settings.model_max_age + timedelta(minutes=1))
    ports.bus.publish(topics.expire, {"schema_version": 1, "reason": "demo: clock moved past the TTL"})
    ports.bus.drain()
    ours = {ready.model_id for ready in run.ready.values()}  # a reused workdir holds earlier runs' records
    expired_records = [e for e in ports.ledger.entries("expired") if e.valid and e.record["model_id"] in ours]

    issued = {}
    for entry in ports.ledger.entries("issued"):
        try:
            if entry.valid:
                issued[entry.record["model_id"]] = IssuedModel.from_record(entry.record)
        except ValueError:  # a reused workdir may hold records this version does not read: not this run's
            continue
    return {
        "workdir": str(workdir),
        "users": [_user_row(phone, run, issued, on_device) for phone in phones],
        "leak": leak,
        "never_issued": never_issued,
        "expiry": {
            "delivered_before": delivered_before,
            "remaining": sum(1 for _ in ports.delivery.list()),
            "ledger_expired_records": len(expired_records),
        },
        "dead_letters": [
            {"step": m["step"], "reason": m["reason"]}
            for m in ports.bus.journal(topics.dead_letter)[dead_letters_before:]
        ],
        "timings": run.timings,
    }


def _keep_ready(run: _Run, payload: bytes) -> None:
    ready = Ready.parse(json.loads(payload))
    run.ready[ready.user_id] = ready


def _user_row(phone: devices.Device, run: _Run, issued: dict[str, IssuedModel], on_device: dict) -> dict:
    ready = run.ready.get(phone.user_id)
    record = issued.get(ready.model_id) if ready else None
    return {
        "user_id": phone.user_id,
        "model_id": ready.model_id if ready else None,
        "accuracy_base": record.accuracy_unwatermarked if record else None,
        "accuracy_watermarked": record.accuracy_watermarked if record else None,
        "accuracy_on_device": on_device.get(phone.user_id),
        "sealed_sha256": ready.sealed_sha256 if ready else None,
    }


def _leak(phones, run: _Run, workdir: Path, ports) -> dict | None:
    leaker = next((p for p in phones if p.user_id in run.ready), None)
    if leaker is None:
        return None
    leaked = workdir / "leak" / "leaked.tflite"
    leaked.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(leaker.folder / "model.tflite", leaked)
    verdict = _timed_verify(run, leaked, ports)
    best = verdict.candidates[0]
    return _with_p_values({
        "file": str(leaked),
        "leaked_user": leaker.user_id,
        "accused": verdict.accused,
        "score": best.score,
    }, log10_p_value=best.log10_p_value, log10_p_threshold=verdict.log10_p_threshold)


def _never_issued(run: _Run, workdir: Path, ports) -> dict:
    """A model fine-tuned like any other but never watermarked or issued: it must accuse nobody."""
    from functions import model
    from functions.steps.generate import fine_tune_seed

    base = model.load_or_train_base(ports.models)
    tuned = model.fine_tune(base, userdata.for_user(NEVER_ISSUED_USER).train,
                            fine_tune_seed(ports.kms, NEVER_ISSUED_USER))
    path = workdir / "leak" / "never-issued.tflite"
    path.write_bytes(model.to_tflite(tuned))
    verdict = _timed_verify(run, path, ports)
    return _with_p_values({"file": str(path), "accused": verdict.accused},
                          best_log10_p_value=verdict.candidates[0].log10_p_value)


def _with_p_values(row: dict, **log10_values: float) -> dict:
    """Each log10 value, and beside it the p-value itself where a double holds it (never a p of 0)."""
    for name, value in log10_values.items():
        row[name] = value
        if representable(value) is not None:
            row[name.replace("log10_", "")] = representable(value)
    return row


def _timed_verify(run: _Run, path: Path, ports):
    started = time.perf_counter()
    verdict = verify_file(path, ports.ledger, ports.kms, ports.models)
    run.done("verify", time.perf_counter() - started)
    return verdict

