"""Ranking a ledger of many issued models against one suspect: time and memory, against a naive loop.

    python bench/verify_scale.py [--models 1000000] [--naive 20000]

What it times is the verifier's ranking: each model's codeword seed from the fingerprint key (HMAC through the
KMS port, here the local key file), its codeword, and its score against a suspect's residual of 12,608
weights as exact integers (the digits model's codeword when this was first measured; it is 12,288 now, and
a base carries at most 65,536), on every core. Reading a million ledger objects from a bucket and checking the
signatures of the few candidates shown are not in it. The naive loop (expand each codeword to +-1 and take a
dot product, one model at a time) runs on --naive models and is extrapolated; both are checked to agree.
The last line reads `ranked N models in S s`.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn  # noqa: E402
from rich.table import Table  # noqa: E402

from infra.local_kms import LocalKms  # noqa: E402
from watermark.codeword import codeword_seed, expand  # noqa: E402
from watermark.identity import IDENTITY_SCHEME, Identity  # noqa: E402
from watermark.detect import Residual, z_scores  # noqa: E402

CODEWORD_LENGTH = 64 * 128 + 128 * 32 + 32 * 10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=1_000_000)
    parser.add_argument("--naive", type=int, default=20_000)
    args = parser.parse_args()
    kms = LocalKms(Path(tempfile.mkdtemp()) / "keys.json")
    weights = np.random.default_rng(0).normal(size=CODEWORD_LENGTH)
    residual = Residual.of_vector(weights, float(np.max(np.abs(weights))))
    identities = [Identity.of(IDENTITY_SCHEME, user_id=f"user-{i:07d}", base_model_version="digits-mlp-v3",
                              model_id="", key_id=kms.fingerprint_key_id) for i in range(args.models)]

    started = time.perf_counter()
    seeds = [codeword_seed(kms, identity) for identity in identities]
    seeding = time.perf_counter() - started
    with Progress(TextColumn("ranking"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True), transient=True) as bars:
        task = bars.add_task("rank", total=len(seeds))
        scoring_started = time.perf_counter()
        scores = z_scores(residual, seeds, progress=lambda done, total: bars.update(task, completed=done))
        scoring = time.perf_counter() - scoring_started
    total = time.perf_counter() - started

    units = residual.units.astype(np.float64)
    norm = np.linalg.norm(units)
    naive_started = time.perf_counter()
    naive = np.array([expand(seed, units.size) @ units / norm for seed in seeds[: args.naive]])
    naive_seconds = (time.perf_counter() - naive_started) * args.models / args.naive
    assert np.allclose(naive, scores[: args.naive], atol=1e-5), "the fast and the naive scores disagree"

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    table = Table(title=f"Ranking {args.models:,} issued models, {os.cpu_count()} cores")
    for column in ("stage", "seconds", "models per second"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    table.add_row("codeword seeds (HMAC, fingerprint key)", f"{seeding:.2f}", f"{args.models / seeding:,.0f}")
    table.add_row("scores (table lookup, all cores)", f"{scoring:.2f}", f"{args.models / scoring:,.0f}")
    table.add_row("ranking in all", f"{total:.2f}", f"{args.models / total:,.0f}")
    table.add_row(f"naive loop (measured on {args.naive:,}, extrapolated)", f"{naive_seconds:.2f}",
                  f"{args.models / naive_seconds:,.0f}")
    Console().print(table)
    print(f"peak memory: {peak:.0f} MiB in the ranking process, {workers:.0f} MiB in the largest worker")
    print(f"ranked {args.models} models in {total:.1f} s")


if __name__ == "__main__":
    main()
