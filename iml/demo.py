"""`iml demo`: the real pipeline for a few users on the embedded defaults, end to end.

The recipe's base model is published if it is not yet; each user's data (simulated, or the .npz files of
--user-data) goes to the user-data bucket as an app backend would put it there; signup -> generate ->
watermark -> encrypt -> publish through the in-process bus; each device downloads, opens and runs its model
on its held-out data, beside the base model; one decrypted model leaks and the verifier traces it; a model
never issued accuses nobody; the clock moves past the TTL and expire deletes what was delivered.
"""
from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Callable

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
MAX_MODELS_PER_USER = 10
DEMO_USER_MODEL_LIMIT = 1000
DATA_OBJECT = "data.npz"  # each user's data object: <user_id>/data.npz in the user-data bucket
_USER_FILE = re.compile(r"^([A-Za-z0-9_-]{1,64})\.npz$")


class DemoError(ValueError):
    """The demo cannot run as asked; the text says why."""


@dataclass
class Progress:
    """What the demo tells its caller as it goes; the CLI turns it into progress bars."""

    on_stage: Callable[[str, int], None] = lambda stage, total: None
    on_advance: Callable[[str, float], None] = lambda stage, seconds: None  # one unit of work just took `seconds`


@dataclass
class _Run:
    progress: Progress
    results: list[StepResult] = field(default_factory=list)
    ready: dict[str, list[Ready]] = field(default_factory=dict)  # user id -> their models, in the order made
    timings: dict[str, float] = field(default_factory=dict)

    def done(self, stage: str, seconds: float) -> None:
        self.timings[stage] = round(self.timings.get(stage, 0.0) + seconds, 3)
        self.progress.on_advance(stage, seconds)


def run_demo(users: int, workdir: Path, progress: Progress = Progress(), settings: Settings | None = None,
             recipe: str | None = None, user_data: Path | None = None, models_per_user: int = 1) -> dict:
    """Run the pipeline for `users` simulated users of `recipe`, or for the users whose data files are in
    `user_data` (DIR/<user_id>.npz); each user signs up `models_per_user` times and gets as many models (all
    carrying the user's one fingerprint)."""
    from functions import recipes

    if user_data is None and not 1 <= users <= 100:
        raise DemoError("--users must be between 1 and 100")
    if not 1 <= models_per_user <= MAX_MODELS_PER_USER:
        raise DemoError(f"--models-per-user must be between 1 and {MAX_MODELS_PER_USER}")
    settings = settings or Settings(workdir=workdir)
    if recipe is not None:
        settings = replace(settings, recipe=recipe)
    # the per-user limit counts every model admitted in its period, a reused workdir's earlier runs included
    settings = replace(settings, user_model_limit=max(settings.user_model_limit, DEMO_USER_MODEL_LIMIT))
    chosen = recipes.load(settings.recipe)
    people = _brought_users(user_data) if user_data is not None else _simulated_users(chosen.name, users)
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

    # 0. the recipe's base model is published once (a reused workdir has it)
    progress.on_stage("base", 1)
    started = time.perf_counter()
    from functions import base_model

    base_model.publish(chosen, ports.models, clock().isoformat())
    run.done("base", time.perf_counter() - started)

    # 1. every device makes its key pair; the app backend stores the user's data and signs the user up
    stamp = clock().strftime("%Y%m%dT%H%M%S")
    phones = [devices.Device.create(workdir / "devices" / user_id, user_id) for user_id in people]
    for stage in (name for name in STEPS if name != "expire"):  # what a signup goes through, in order
        progress.on_stage(stage, len(phones) * models_per_user)
    held_out = {}
    for phone in phones:
        raw = people[phone.user_id]()
        held_out[phone.user_id] = chosen.read_user_data(raw).held_out  # as generate will read it
        data_ref = f"{phone.user_id}/{DATA_OBJECT}"
        ports.user_data.put(data_ref, raw)
        for copy in range(1, models_per_user + 1):
            signup = Signup(request_id=f"demo-{stamp}-{phone.user_id}-{copy}", user_id=phone.user_id,
                            device_public_key=phone.public_key_b64, data_ref=data_ref)
            ports.bus.publish(topics.signup, signup.to_dict())
    # 2-5. the pipeline runs until the bus is quiet
    ports.bus.drain()

    # 6. each device fetches, opens and runs its own model on its own held-out data; the base model beside it
    progress.on_stage("device", len(phones) * models_per_user)
    on_device: dict[str, float] = {}  # model id -> accuracy
    base_accuracy: dict[str, float] = {}  # user id -> accuracy
    base_tflite = _base_tflite(chosen, ports)
    for phone in phones:
        data = held_out[phone.user_id]
        base_accuracy[phone.user_id] = devices.accuracy(base_tflite, data.x, data.y)
        for ready in run.ready.get(phone.user_id, []):
            started = time.perf_counter()
            tflite = phone.receive(fetch_local_url(ready.download_url, clock()), ready.model_id)
            on_device[ready.model_id] = devices.accuracy(tflite, data.x, data.y)
            run.done("device", time.perf_counter() - started)

    # 7. one decrypted model leaks; the verifier names its user. A model never issued names nobody.
    progress.on_stage("verify", 2)
    leak = _leak(phones, run, workdir, ports)
    never_issued = _never_issued(run, workdir, ports, chosen, people)

    # 8. the clock moves past the TTL; the hourly expiry deletes what was delivered
    progress.on_stage("expire", 1)
    delivered_before = sum(1 for _ in ports.delivery.list())
    clock.advance(settings.model_max_age + timedelta(minutes=1))
    ports.bus.publish(topics.expire, {"schema_version": 1, "reason": "demo: clock moved past the TTL"})
    ports.bus.drain()
    # a reused workdir holds earlier runs' records
    ours = {ready.model_id for made in run.ready.values() for ready in made}
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
        "recipe": chosen.name,
        "base_model_version": chosen.base_version,
        "models_per_user": models_per_user,
        "users": [row for phone in phones for row in _user_rows(phone, run, issued, on_device, base_accuracy)],
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
    run.ready.setdefault(ready.user_id, []).append(ready)


def _user_rows(phone: devices.Device, run: _Run, issued: dict[str, IssuedModel], on_device: dict,
               base_accuracy: dict) -> list[dict]:
    """One row per model the user received; one row without a model when none arrived."""
    rows = []
    for ready in run.ready.get(phone.user_id) or [None]:
        record = issued.get(ready.model_id) if ready else None
        rows.append({
            "user_id": phone.user_id,
            "model_id": ready.model_id if ready else None,
            "accuracy_base_model": base_accuracy.get(phone.user_id),
            "accuracy_unwatermarked": record.accuracy_unwatermarked if record else None,
            "accuracy_watermarked": record.accuracy_watermarked if record else None,
            "accuracy_on_device": on_device.get(ready.model_id) if ready else None,
            "sealed_sha256": ready.sealed_sha256 if ready else None,
        })
    return rows


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
        "leaked_model": run.ready[leaker.user_id][-1].model_id,
        "accused": verdict.accused,
        "accused_models": [model for c in verdict.candidates if c.accused for model in c.model_ids],
        "score": best.score,
    }, log10_p_value=best.log10_p_value, log10_p_threshold=verdict.log10_p_threshold)


def _never_issued(run: _Run, workdir: Path, ports, recipe, people: dict) -> dict:
    """A model fine-tuned like any other (on the first user's data, with its own secret seed) but never
    watermarked or issued: it must accuse nobody."""
    from functions import base_model
    from functions.steps.generate import fine_tune_seed

    data = recipe.read_user_data(people[next(iter(people))]())
    tuned = recipe.fine_tune(base_model.load_model(recipe, ports.models), data.train,
                             fine_tune_seed(ports.kms, NEVER_ISSUED_USER))
    path = workdir / "leak" / "never-issued.tflite"
    path.write_bytes(recipe.export(tuned))
    verdict = _timed_verify(run, path, ports)
    return _with_p_values({"file": str(path), "accused": verdict.accused},
                          best_log10_p_value=verdict.candidates[0].log10_p_value)


def _base_tflite(recipe, ports) -> bytes:
    from functions import base_model

    return recipe.export(base_model.load_model(recipe, ports.models))


def _simulated_users(recipe: str, count: int) -> dict[str, Callable[[], bytes]]:
    """user id -> the bytes of that simulated user's data object."""
    from iml import simulated

    if recipe not in simulated.SIMULATIONS:
        raise DemoError(f"the demo simulates no users for recipe {recipe!r}: bring their data with --user-data DIR")
    return {f"user-{i:03d}": (lambda i=i: simulated.to_npz(simulated.user_data(recipe, f"user-{i:03d}")))
            for i in range(1, count + 1)}


def _brought_users(folder: Path) -> dict[str, Callable[[], bytes]]:
    """user id -> the bytes of DIR/<user_id>.npz, for every such file."""
    if not folder.is_dir():
        raise DemoError(f"--user-data {folder}: no such folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and _USER_FILE.match(p.name))
    if not files:
        raise DemoError(f"--user-data {folder} holds no <user_id>.npz file (user ids: letters, digits, _ and -)")
    if len(files) > 100:
        raise DemoError(f"--user-data {folder} holds {len(files)} users; the demo takes at most 100")
    return {_USER_FILE.match(p.name).group(1): p.read_bytes for p in files}


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

