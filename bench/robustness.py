"""Robustness of the fingerprint: every attack and strength against many issued models, and null trials.

    python bench/robustness.py [--recipe digits-mlp] [--users 20] [--strength S] [--out bench-out]
                               [--attacks TEXT ...] [--sections collusion,copies,null]

Issues models to --users users of the recipe through the real pipeline (embedded adapters; the recipe's base
model published first, each user's data in the user-data bucket) and prints what the fingerprint costs on their
held-out data (median and maximum). It then adds to each the anchor's mark (watermark/research/baseline.py:
Uchida-style, per-user key, 256 bits, in the kernel with the most weights: digits-mlp's first), then attacks each user's model (any recipe: the attacks
edit Dense and convolution kernels alike, watermark/research/attacks.py). Both detectors judge the same attacked file: ours (aligned by what the model does on the
probe, as `iml verify` aligns a file: the attacked weights run in Keras, a converted file in LiteRT; informed;
accusing at alpha / M) and the anchor's (sign extraction, binomial tail, accusing at the same alpha / M). Per attack: the attacked accuracy on the user's held-out data; whether it stays within 5
points (only then does the attack count); the true user's rank and p-value; whether the true user was accused
at alpha 1e-9; how many innocents were (for decoys and dead branches, the user whose weights were planted counts as innocent). Re-expressed graphs (identity layers, split layers, 1x1 convolutions, constants, gathers, computed weights) are TFLite files the verifier folds back (watermark/graph.py). Collusion: groups of k users pooling their models. Copies: five users
each ask for four more models and pool k of their own copies (midpoint, mean, median). Null trials: every
issued model scored against never-issued codewords (at least 10,000 pairs), plus models never issued (the base
model and a model trained from another seed) against the ledger: the empirical distribution of z is plotted
against the bound exp(-z^2/2) into --out/null-scores.png.
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from functions import base_model, recipes  # noqa: E402
from iml import simulated  # noqa: E402
from functions.events import Ready, Signup  # noqa: E402
from functions.runner import subscribe_steps  # noqa: E402
from iml.device import public_key_b64  # noqa: E402
from infra import logs  # noqa: E402
from infra.bootstrap import local_ports  # noqa: E402
from infra.ledger import IssuedModel  # noqa: E402
from infra.envelope import open_sealed_bytes  # noqa: E402
from infra.local_storage import fetch_local_url  # noqa: E402
from infra.settings import Settings  # noqa: E402
from watermark.research import attacks  # noqa: E402
from watermark.align import align  # noqa: E402
from watermark import base as published_base  # noqa: E402
from watermark.research.attacks import Weights  # noqa: E402
from watermark.research.baseline import UchidaMark  # noqa: E402
from watermark.detect import Residual, log10_threshold, z_scores, z_threshold  # noqa: E402
from watermark.reader import ReadModel, keras_activations, read_tflite, tflite_activations  # noqa: E402
from watermark.errors import VerificationError  # noqa: E402
from watermark.verify import verify  # noqa: E402

TIER = 0.05


def held(user: str, recipe: str) -> tuple[np.ndarray, np.ndarray]:
    data = simulated.user_data(recipe, user).held_out
    return data.x, data.y


def issue(users: int, workdir: Path, strength: float, recipe: str):
    ports = local_ports(Settings(workdir=workdir, watermark_strength=strength, recipe=recipe, user_model_limit=100))
    base_model.publish(recipes.load(recipe), ports.models, "bench")
    subscribe_steps(ports.bus, ports)
    names = [f"user-{i:03d}" for i in range(1, users + 1)]
    for user in names:
        ports.user_data.put(f"{user}/data.npz", simulated.to_npz(simulated.user_data(recipe, user)))
    return ports, {user: copies[0] for user, copies in sign_up(ports, names, 1, recipe).items()}


def sign_up(ports, users: list[str], copies: int, recipe: str, first: int = 1) -> dict[str, list[Weights]]:
    """Each user signs up `copies` times (request ids r<first>, r<first + 1>, ...); their models, as read back."""
    keys = {(user, f"r{n}"): ec.generate_private_key(ec.SECP256R1())
            for user in users for n in range(first, first + copies)}
    for (user, request), key in keys.items():
        ports.bus.publish(ports.settings.topics.signup,
                          Signup(request_id=request, user_id=user, device_public_key=public_key_b64(key),
                                 data_ref=f"{user}/data.npz").to_dict())
    ports.bus.drain()
    models, like = defaultdict(list), recipes.load(recipe).build()
    for message in ports.bus.journal(ports.settings.topics.ready):
        ready = Ready.parse(message)
        key = keys.get((ready.user_id, ready.request_id))
        if key is not None:
            tflite = open_sealed_bytes(fetch_local_url(ready.download_url, ports.clock()), key)[1]
            models[ready.user_id].append(Weights.of(read_tflite(tflite), like))
    return models


def weight_attacks(rng: np.random.Generator, recipe: str, models: dict[str, Weights]):
    """(family, strength, attack(weights, user) -> Weights | bytes)."""
    users = sorted(models)

    def planted(user: str) -> Weights:  # the next user's model, whose weights the decoys carry
        return models[users[(users.index(user) + 1) % len(users)]]

    def own(user: str):  # the strongest thief: the user, leaking their own model, with their own data
        return simulated.user_data(recipe, user).train

    def fine(epochs, rate):
        def attack(w, user):
            data = own(user)
            return attacks.fine_tune(w, data.x, data.y, epochs, rate)
        return attack

    table = [("none", "-", lambda w, u: w)]
    table += [("noise", f"sigma {s}", lambda w, u, s=s: attacks.gaussian_noise(w, s, rng)) for s in (0.1, 0.3, 0.5, 1.0)]
    table += [("prune", f"{int(f * 100)}%", lambda w, u, f=f: attacks.magnitude_prune(w, f))
              for f in (0.1, 0.3, 0.5, 0.7, 0.9)]
    table += [("tflite", q, lambda w, u, q=q: attacks.to_tflite(w, q, own(u).x[:100]))
              for q in ("float16", "dynamic", "int8")]
    table += [("fine-tune", f"{e} ep, lr {r}", fine(e, r)) for e in (1, 5, 20) for r in (1e-3, 1e-2)]
    table += [("weight shift", f"{f} sd", lambda w, u, f=f: attacks.weight_shift(w, f)) for f in (0.05, 0.1, 0.2)]
    table += [("permute+scale", "0.5-2x", lambda w, u: attacks.permute_and_scale(w, rng))]
    table += [("dummy neurons", f"+{int(x * 100)}%", lambda w, u, x=x: attacks.permute_and_scale(
        attacks.dummy_neurons(w, x, rng), rng)) for x in (0.1, 0.3, 0.5)]
    table += [("head null-space shift", f"{s} sd", lambda w, u, s=s: attacks.head_shift(w, s, rng))
              for s in (1, 10, 50)]
    table += [("inactive-neuron flood", f"{int(f * 100)}%, {s} sd", lambda w, u, f=f, s=s: attacks.permute_and_scale(
        attacks.inactive_flood(w, f, s, rng), rng)) for f, s in ((0.02, 20), (0.1, 20), (0.3, 10))]
    table += [("decoys: another user's weights", "every unit", lambda w, u: attacks.permute_and_scale(
        attacks.decoys(w, planted(u)), rng))]
    table += [("re-expressed graph", how, lambda w, u, how=how: attacks.reexpress(w, how, rng))
              for how in attacks.REEXPRESSIONS]
    table += [("re-expressed graph", "weights computed at run time",
               lambda w, u: attacks.computed_weights(attacks.to_tflite(w), rng))]
    if set(models[users[0]].kinds) == {"dense"}:  # the dead branch is a chain of dense layers
        table += [("dead branch: another user's weights", "beside the model",
                   lambda w, u: attacks.dead_branch(attacks.to_tflite(w), planted(u)))]
    return table


def as_weights(result, original: Weights):
    """An attack's result (weights, or a TFLite file in the original's architecture), what the verifier reads
    of it, and how it runs on a probe (the file in LiteRT, weights in Keras)."""
    if isinstance(result, bytes):
        read = read_tflite(result)
        return Weights.of(read, attacks.to_keras(original)), read, lambda probe: tflite_activations(result, probe)
    return result, result.read(), runner(result)


def runner(w: Weights):
    """The weights run on a probe, as the verifier runs a file (watermark.reader.probe_activations)."""
    return lambda probe: keras_activations(attacks.to_keras(w), probe)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--attacks", action="append", metavar="TEXT",
                        help="only the attack families containing TEXT (repeatable); default: every attack")
    parser.add_argument("--sections", type=lambda text: set(text.split(",")), default={"collusion", "copies", "null"},
                        help="which of collusion,copies,null to run after the single-model attacks (default: all)")
    parser.add_argument("--recipe", default="digits-mlp", help="an installed recipe the demo simulates users of")
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    parser.add_argument("--strength", type=float, default=Settings().watermark_strength,
                        help="fingerprint amplitude (IML_WATERMARK_STRENGTH); default: the pipeline's")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    logs.configure(open(os.devnull, "w"))
    rng = np.random.default_rng(2026)
    workdir = Path(tempfile.mkdtemp(prefix="iml-robustness-"))
    started = time.perf_counter()
    ports, issued = issue(args.users, workdir, args.strength, args.recipe)
    print(f"issued {len(issued)} models in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    records = [IssuedModel.from_record(e.record) for e in ports.ledger.entries("issued")]
    costs = [r.accuracy_unwatermarked - r.accuracy_watermarked for r in records]
    print(f"our fingerprint (strength {args.strength}) costs {100 * statistics.median(costs):.2f} accuracy points "
          f"median, {100 * max(costs):.2f} at most, over {len(costs)} users of {args.recipe}", file=sys.stderr)
    first = next(iter(issued.values()))
    anchored = max(range(len(first.kernels)), key=lambda layer: first.kernels[layer].size)  # room for 256 bits
    marks = {user: UchidaMark(user, w.kernels[anchored].size) for user, w in issued.items()}
    models = {user: w.with_arrays([marks[user].embed(k) if layer == anchored else k
                                   for layer, k in enumerate(w.kernels)], w.biases)
              for user, w in issued.items()}
    baseline_threshold = 1e-9 / len(models)

    def anchor_accuses(attacked: Weights) -> set[str]:
        return {u for u, mark in marks.items() if mark.p_value(attacked.kernels[anchored]) <= baseline_threshold}

    fidelity = [issued[u].accuracy(*held(u, args.recipe)) - models[u].accuracy(*held(u, args.recipe)) for u in models]
    print(f"the anchor's mark costs {100 * statistics.mean(fidelity):.2f} accuracy points on average",
          file=sys.stderr)

    def judge(read: ReadModel, run):
        """The verdict, aligning by what the model does on the probe as `iml verify` does, or None where the
        verifier refuses the file (exit 2: cannot analyse, never a verdict)."""
        try:
            return verify(read, "-", ports.ledger, ports.kms, ports.models, top=len(models), activations=run)
        except VerificationError:
            return None

    rows = defaultdict(list)
    for user, original in models.items():
        x, y = held(user, args.recipe)
        baseline = original.accuracy(x, y)
        for family, strength, attack in weight_attacks(rng, args.recipe, models):
            if args.attacks and not any(text in family for text in args.attacks):
                continue
            attacked, read, run = as_weights(attack(original, user), original)
            accuracy = attacked.accuracy(x, y)
            verdict = judge(read, run)
            candidates, accused = (verdict.candidates, verdict.accused) if verdict else ([], [])
            ranked = [c.user_id for c in candidates]
            true = next((c for c in candidates if c.user_id == user), None)
            anchor = anchor_accuses(attacked)
            rows[(family, strength)].append({
                "drop": baseline - accuracy, "counts": accuracy >= baseline - TIER, "refused": verdict is None,
                "rank": ranked.index(user) + 1 if user in ranked else len(models),
                "log10_p": true.log10_p_value if true else 0.0, "right": user in accused,
                "innocents": len([a for a in accused if a != user]),
                "anchor_right": user in anchor, "anchor_innocents": len(anchor - {user}),
            })
        print(f"attacked {user}", file=sys.stderr)

    table = Table(title=f"Fingerprint robustness, {args.recipe}: {len(models)} users, alpha 1e-9 (an attack counts within "
                        f"{int(TIER * 100)} points)")
    for column in ("attack", "strength", "acc. drop (mean)", "counted", "right user accused", "refused (exit 2)",
                   "median rank",
                   "median log10 p (true user)", "innocents accused", "anchor: right accused", "anchor: innocents"):
        table.add_column(column, justify="left" if column in ("attack", "strength") else "right")
    for (family, strength), results in rows.items():
        counted = [r for r in results if r["counts"]]
        table.add_row(family, strength, f"{100 * statistics.mean(r['drop'] for r in results):.1f} pts",
                      f"{len(counted)}/{len(results)}",
                      f"{sum(r['right'] for r in counted)}/{len(counted)}" if counted else "-",
                      f"{sum(r['refused'] for r in counted)}/{len(counted)}" if counted else "-",
                      f"{statistics.median(r['rank'] for r in counted):.0f}" if counted else "-",
                      f"{statistics.median(r['log10_p'] for r in counted):.1f}" if counted else "-",
                      str(sum(r["innocents"] for r in results)),
                      f"{sum(r['anchor_right'] for r in counted)}/{len(counted)}" if counted else "-",
                      str(sum(r["anchor_innocents"] for r in results)))
    Console(width=160).print(table)

    users = list(models)
    if "collusion" in args.sections:
        collusion = Table(title="Collusion: k users pool their models (5 groups each)")
        for column in ("k", "how", "acc. drop (mean)", "some colluder accused", "all colluders accused",
                       "innocents accused", "anchor: some colluder", "anchor: innocents"):
            collusion.add_column(column, justify="right")
        for k in (k for k in (2, 3, 5, 8) if k <= len(users)):
            for how in ("mean", "median", "interleave"):
                some = every = innocents = anchor_some = anchor_innocents = 0
                drops = []
                for _ in range(5):
                    group = list(rng.choice(users, size=k, replace=False))
                    pooled = attacks.collude([models[u] for u in group], how, rng)
                    x, y = held(group[0], args.recipe)
                    drops.append(models[group[0]].accuracy(x, y) - pooled.accuracy(x, y))
                    verdict = judge(pooled.read(), runner(pooled))
                    accused = set(verdict.accused) if verdict else set()
                    some += bool(accused & set(group))
                    every += set(group) <= accused
                    innocents += len(accused - set(group))
                    anchor = anchor_accuses(pooled)
                    anchor_some += bool(anchor & set(group))
                    anchor_innocents += len(anchor - set(group))
                collusion.add_row(str(k), how, f"{100 * statistics.mean(drops):.1f} pts", f"{some}/5", f"{every}/5",
                                  str(innocents), f"{anchor_some}/5", str(anchor_innocents))
        Console(width=160).print(collusion)

    if "copies" in args.sections:
        copies = Table(title="A user's own copies pooled (one identity: the same codeword in each)")
        for column in ("k", "how", "acc. drop (mean)", "user accused", "innocents accused", "median log10 p"):
            copies.add_column(column, justify="right")
        owners = users[:5]
        more = sign_up(ports, owners, 4, args.recipe, first=2)  # r2..r5 beside each owner's r1
        for k in (2, 3, 5):
            for how in ("midpoint", "mean", "median"):
                right = innocents = 0
                drops, log10_p = [], []
                for user in owners:
                    pooled = attacks.collude([issued[user]] + more[user][:k - 1], how, rng)
                    x, y = held(user, args.recipe)
                    drops.append(issued[user].accuracy(x, y) - pooled.accuracy(x, y))
                    verdict = judge(pooled.read(), runner(pooled))
                    right += bool(verdict) and user in verdict.accused
                    innocents += len(set(verdict.accused) - {user}) if verdict else 0
                    log10_p.append(next((c.log10_p_value for c in verdict.candidates if c.user_id == user), 0.0)
                                   if verdict else 0.0)
                copies.add_row(str(k), how, f"{100 * statistics.mean(drops):.1f} pts", f"{right}/{len(owners)}",
                               str(innocents), f"{statistics.median(log10_p):.1f}")
        Console(width=160).print(copies)

    if "null" in args.sections:
        null_trials(ports, models, args.recipe, args.out, rng)
    shutil.rmtree(workdir, ignore_errors=True)


def null_trials(ports, models: dict[str, Weights], recipe_name: str, out: Path, rng: np.random.Generator) -> None:
    """z of codewords that were never embedded in the file: innocent by construction."""
    from functions import model as tf_model

    recipe = recipes.load(recipe_name)
    published = published_base.load(ports.models, recipe.base_version)
    base, kinds = [layer.kernel for layer in published.layers], [layer.kind for layer in published.layers]
    per_model = max(1, math.ceil(10_000 / len(models)))
    null_z = []
    for weights in models.values():
        aligned = align(weights.kernels, base, suspect_kinds=weights.kinds, base_kinds=kinds).kernels
        null_z.append(z_scores(Residual.of(aligned, published), [rng.bytes(32) for _ in range(per_model)],
                               workers=1))
    null_z = np.concatenate(null_z)
    other_seed = tf_model.train_base(recipe, seed=99)  # never issued
    biases = [np.zeros(k.shape[-1]) for k in base]
    never = {"base model": ReadModel("weights", base, biases, kinds),
             "model from another seed": ReadModel("weights", [k for _, _, k in tf_model.weight_layers(other_seed)],
                                                  biases, kinds)}
    runs = {"model from another seed": lambda probe: keras_activations(other_seed, probe)}

    def outcome(name: str, read: ReadModel) -> str:
        try:
            verdict = verify(read, "-", ports.ledger, ports.kms, ports.models, activations=runs.get(name))
        except VerificationError as error:
            return f"cannot analyse (exit 2): {error}"
        return f"accused {verdict.accused or 'nobody'}"

    accusations = {name: outcome(name, read) for name, read in never.items()}
    threshold_z = z_threshold(log10_threshold(len(models), 1e-9))
    print(f"null trials: {null_z.size} (issued model, never-embedded codeword) pairs; max z {null_z.max():.2f}; "
          f"accused at alpha 1e-9 (z >= {threshold_z:.2f}): {int(np.sum(null_z >= threshold_z))}")
    for t in (1, 2, 3, 4):
        print(f"  share of z >= {t}: {np.mean(null_z >= t):.5f}  (bound exp(-z^2/2) = {math.exp(-t * t / 2):.5f})")
    for name, said in accusations.items():
        print(f"never issued, {name}: {said}")
    np.save(out / "null-scores.npy", null_z)
    plot(null_z, out / "null-scores.png")


def plot(null_z: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.linspace(0, max(6.0, null_z.max() + 0.5), 200)
    survival = np.array([np.mean(null_z >= t) for t in grid])
    observed = survival > 0  # past the largest score there is nothing to plot, not a share of 0 drawn as a floor
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.semilogy(grid[observed], survival[observed], label=f"innocent codewords, {null_z.size} pairs: P(z >= t)")
    axis.semilogy(grid, np.exp(-grid ** 2 / 2), "--", label="Hoeffding bound exp(-t²/2)")
    axis.set_xlabel("t")
    axis.set_ylabel("share of scores at or above t")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
