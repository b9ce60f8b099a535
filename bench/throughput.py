"""Signups per minute through the local cloud (`iml dev-stack`) on this machine, against the same signups
through the in-process pipeline in the same run.

    python bench/throughput.py [--signups 20]

The local cloud is the deployed shape: the Pub/Sub emulator pushes each message to a functions-framework
server per step (generate and watermark one request at a time, as deployed), objects go through
fake-gcs-server. Time runs from the first signup published to the last ready message pulled. The reference runs the
same number of signups through the embedded adapters and the in-process bus (no HTTP, no emulators), so the
difference is what the transport costs.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from functions.events import Signup  # noqa: E402
from iml import devstack, simulated  # noqa: E402
from iml.device import public_key_b64  # noqa: E402


def signups(count: int, prefix: str) -> list[Signup]:
    """Signups whose data the caller puts at <user_id>/data.npz (simulated.put_user_data)."""
    return [Signup(request_id="bench", user_id=f"{prefix}-{i:03d}",
                   device_public_key=public_key_b64(ec.generate_private_key(ec.SECP256R1())),
                   data_ref=f"{prefix}-{i:03d}/data.npz")
            for i in range(count)]


def through_local_cloud(count: int, folder: Path) -> tuple[float, list[float]]:
    stack = devstack.up(folder, "iml-bench", say=lambda line: print(line, file=sys.stderr))
    try:
        topics = stack.settings().topics
        batch = signups(count, "cloud")
        for signup in batch:
            devstack.upload_user_data(stack, signup.user_id, "data.npz",
                                      simulated.to_npz(simulated.digits_user(signup.user_id)))
        published = {}
        started = time.perf_counter()
        for signup in batch:
            devstack.publish(stack, topics.signup, signup.to_dict())
            published[signup.model_id] = time.perf_counter()
        latencies, dead = {}, []
        while len(latencies) < count:
            for ready in devstack.pull(stack, topics.ready, timeout=2):
                latencies.setdefault(ready["model_id"], time.perf_counter() - published[ready["model_id"]])
            dead += devstack.pull(stack, topics.dead_letter, timeout=1)
            if dead:
                raise SystemExit(f"dead letters in the benchmark: {[d['reason'] for d in dead]}")
        return time.perf_counter() - started, list(latencies.values())
    finally:
        devstack.down(folder, say=lambda line: None)


def in_process(count: int, folder: Path) -> float:
    from functions import base_model, recipes
    from functions.runner import subscribe_steps
    from infra import logs
    from infra.bootstrap import local_ports
    from infra.settings import Settings

    logs.configure(open(os.devnull, "w"))
    ports = local_ports(Settings(workdir=folder))
    base_model.publish(recipes.load("digits-mlp"), ports.models, "bench")
    subscribe_steps(ports.bus, ports)
    batch = signups(count, "local")
    for signup in batch:
        simulated.put_user_data(ports.user_data, "digits-mlp", signup.user_id)
    started = time.perf_counter()
    for signup in batch:
        ports.bus.publish(ports.settings.topics.signup, signup.to_dict())
    ports.bus.drain()
    elapsed = time.perf_counter() - started
    assert len(list(ports.bus.journal(ports.settings.topics.ready))) == count
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signups", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="iml-throughput-") as tmp:
        cloud, latencies = through_local_cloud(args.signups, Path(tmp) / "stack")
        local = in_process(args.signups, Path(tmp) / "local")
    table = Table(title=f"Throughput: {args.signups} signups on {os.cpu_count()} cores, "
                        f"{datetime.now().isoformat(timespec='minutes')}")
    for column in ("path", "wall time", "signups per minute", "signup to ready: median", "p95", "vs in-process"):
        table.add_column(column, justify="left" if column == "path" else "right")
    ordered = sorted(latencies)
    table.add_row("local cloud (emulators, push, 5 servers)", f"{cloud:.1f} s", f"{60 * args.signups / cloud:.1f}",
                  f"{statistics.median(ordered):.1f} s", f"{ordered[int(0.95 * (len(ordered) - 1))]:.1f} s",
                  f"{local / cloud:.0%}")
    table.add_row("in-process bus, embedded adapters (reference)", f"{local:.1f} s",
                  f"{60 * args.signups / local:.1f}", "-", "-", "100%")
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
