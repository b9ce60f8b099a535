"""Crafted files against the verifier: does any rewrite of a leaked model's weights accuse an innocent?

    python bench/verify_fuzz.py [--cases 10000] [--crowd 1000] [--workers 2]

Issues models to alice and bob through the real pipeline (embedded adapters), adds --crowd more issued
records to the ledger (each with its own codeword), then rewrites alice's decrypted TFLite file --cases times
with 1 to 4 random edits of its weight buffers (watermark.research.attacks.Mutation: values such as +-1e30,
+-3.4e38, 1e-45, +-inf, NaN, sign flips, rows and columns scaled by up to 1e38, silenced neurons with +-1e36
outgoing weights, any float32 bit pattern) and runs the verifier's whole path on each: read, refuse non-finite
weights, align, bound the residual, score exactly against every record, decide, render strict JSON. The file
is read in-process here (watermark.reader; the command line reads it in watermark.sandbox: the same code in a
child process); the edits touch weight buffers only, so the parse itself is never at risk.

Prints the outcomes: alice accused (alone), nobody accused, errors by kind, and the two counts that must be
0: innocents accused, and failures that were not a clear VerificationError. The reference in the same run is
the unedited file. The last line reads `false accusations: N`.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import replace
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from infra import logs  # noqa: E402
from infra.bootstrap import MovableClock, local_ports  # noqa: E402
from infra.ledger import IssuedModel  # noqa: E402
from infra.settings import Settings  # noqa: E402
from watermark.research.attacks import (LARGE_FACTORS, MUTATION_KINDS, SPECIAL_VALUES, Mutation,  # noqa: E402
                                        mutate_tflite)
from watermark.errors import VerificationError  # noqa: E402
from watermark.reader import probe_activations, read_model  # noqa: E402
from watermark.verify import verify_file  # noqa: E402

SOURCE = "alice"


def random_mutation(rng: np.random.Generator) -> Mutation:
    if rng.random() < 0.5:
        value = float(rng.choice(SPECIAL_VALUES + LARGE_FACTORS))
    else:  # any float32 bit pattern: subnormals, NaNs with payloads, infinities, everything between
        value = float(np.frombuffer(rng.integers(0, 2**32, dtype=np.uint64).astype(np.uint32).tobytes(), "<f4")[0])
    return Mutation(kind=str(rng.choice(MUTATION_KINDS)), layer=int(rng.integers(0, 3)),
                    index=int(rng.integers(0, 20_000)), value=value, count=int(rng.integers(1, 41)))


def issue(workdir: Path, crowd: int) -> bytes:
    """alice's and bob's models through the pipeline, plus `crowd` more issued records; alice's TFLite file."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from functions import base_model, recipes
    from iml import simulated
    from functions.events import Ready, Signup
    from functions.runner import subscribe_steps
    from iml.device import public_key_b64
    from infra.envelope import open_sealed_bytes
    from infra.local_storage import fetch_local_url

    ports = local_ports(Settings(workdir=workdir), MovableClock())
    base_model.publish(recipes.load("digits-mlp"), ports.models, "bench")
    subscribe_steps(ports.bus, ports)
    keys = {user: ec.generate_private_key(ec.SECP256R1()) for user in (SOURCE, "bob")}
    for user, key in keys.items():
        ports.bus.publish(ports.settings.topics.signup,
                          Signup(request_id="r1", user_id=user, device_public_key=public_key_b64(key),
                                 data_ref=simulated.put_user_data(ports.user_data, "digits-mlp", user)).to_dict())
    ports.bus.drain()
    ready = next(Ready.parse(m) for m in ports.bus.journal(ports.settings.topics.ready)
                 if m["user_id"] == SOURCE)
    issued = next(IssuedModel.from_record(e.record) for e in ports.ledger.entries("issued"))
    for i in range(crowd):  # as many more issued models, each with its own codeword
        ports.ledger.issue(replace(issued, model_id=f"m-crowd-{i:05d}", user_id=f"crowd-{i:05d}",
                                   request_id=f"r-{i}", delivery_object=f"m-crowd-{i:05d}.iml"), ports.clock())
    return open_sealed_bytes(fetch_local_url(ready.download_url, ports.clock()), keys[SOURCE])[1]


def judge(workdir: Path, source: bytes, seeds: list[int]) -> Counter:
    """The outcome of each case (seeded), counted."""
    logs.configure(open(os.devnull, "w"))
    ports = local_ports(Settings(workdir=workdir), MovableClock())
    outcomes: Counter = Counter()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "crafted.tflite"
        for seed in seeds:
            rng = np.random.default_rng(seed)
            edits = [random_mutation(rng) for _ in range(int(rng.integers(1, 5)))]
            path.write_bytes(mutate_tflite(source, edits))
            outcomes[_outcome(path, ports)] += 1
    return outcomes


def _outcome(path: Path, ports) -> str:
    try:
        verdict = verify_file(path, ports.ledger, ports.kms, ports.models, read=read_model, run=probe_activations)
        json.loads(verdict.to_json())  # strict: NaN or infinity would raise
    except VerificationError as error:
        return f"error: {error.kind}"
    except Exception as error:  # the one outcome besides a false accusation that must never happen
        return f"FAILURE: {type(error).__name__}"
    if set(verdict.accused) - {SOURCE}:
        return "FALSE ACCUSATION"
    return "alice accused" if verdict.accused else "nobody accused"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--crowd", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    logs.configure(open(os.devnull, "w"))
    workdir = Path(tempfile.mkdtemp(prefix="iml-verify-fuzz-"))
    started = time.perf_counter()
    source = issue(workdir, args.crowd)
    print(f"issued 2 models and {args.crowd} more records in {time.perf_counter() - started:.0f} s", file=sys.stderr)

    ports = local_ports(Settings(workdir=workdir), MovableClock())
    (workdir / "leak.tflite").write_bytes(source)
    reference_started = time.perf_counter()
    reference = _outcome(workdir / "leak.tflite", ports)
    reference_seconds = time.perf_counter() - reference_started

    started = time.perf_counter()
    shares = [list(range(i, args.cases, args.workers)) for i in range(args.workers)]
    with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
        outcomes = sum(pool.starmap(judge, [(workdir, source, share) for share in shares]), Counter())
    seconds = time.perf_counter() - started

    table = Table(title=f"{args.cases:,} crafted files from alice's model against {args.crowd + 2:,} issued models")
    table.add_column("outcome")
    table.add_column("files", justify="right")
    for outcome in ("alice accused", "nobody accused"):
        table.add_row(outcome, str(outcomes.pop(outcome, 0)))
    for outcome, count in sorted(outcomes.items()):
        if outcome.startswith("error"):
            table.add_row(outcome, str(count))
    false = outcomes.get("FALSE ACCUSATION", 0)
    failures = sum(count for outcome, count in outcomes.items() if outcome.startswith("FAILURE"))
    table.add_row("[bold]innocents accused (must be 0)[/]", str(false))
    table.add_row("[bold]failures other than a clear error (must be 0)[/]", str(failures))
    Console().print(table)
    print(f"reference, the unedited file: {reference} in {reference_seconds:.2f} s")
    print(f"{args.cases / seconds:.0f} files per second on {args.workers} workers ({seconds:.0f} s)")
    for outcome, count in outcomes.items():
        if outcome.startswith("FAILURE"):
            print(f"  {outcome}: {count}")
    shutil.rmtree(workdir, ignore_errors=True)
    print(f"false accusations: {false}")


if __name__ == "__main__":
    main()
