"""Robustness of the fingerprint: every attack and strength against many issued models, and null trials.

    python bench/robustness.py [--recipe digits-mlp] [--users 20] [--strength S] [--out bench-out]

Issues models to --users users of the recipe through the real pipeline (embedded adapters; the recipe's base
model published first, each user's data in the user-data bucket) and prints what the fingerprint costs on their
held-out data (median and maximum). For the Dense recipe (digits-mlp) it then adds to each the anchor's mark
(watermark/research/baseline.py: Uchida-style, per-user key, 256 bits, in the first layer), then attacks each user's
model. Both detectors judge the same attacked file: ours (aligned, informed, accusing at alpha / M) and the
anchor's (sign extraction, binomial tail, accusing at the same alpha / M). Per attack: the attacked accuracy on the user's held-out data; whether it stays within 5
points (only then does the attack count); the true user's rank and p-value; whether the true user was accused
at alpha 1e-9; how many innocents were. Collusion: groups of k users pooling their models. Null trials: every
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
from watermark.reader import ReadModel, read_tflite  # noqa: E402
from watermark.verify import verify  # noqa: E402

TIER = 0.05


def held(user: str, recipe: str = "digits-mlp") -> tuple[np.ndarray, np.ndarray]:
    data = simulated.user_data(recipe, user).held_out
    return data.x, data.y


def issue(users: int, workdir: Path, strength: float, recipe: str):
    ports = local_ports(Settings(workdir=workdir, watermark_strength=strength, recipe=recipe))
    base_model.publish(recipes.load(recipe), ports.models, "bench")
    subscribe_steps(ports.bus, ports)
    keys = {f"user-{i:03d}": ec.generate_private_key(ec.SECP256R1()) for i in range(1, users + 1)}
    for user, key in keys.items():
        ports.user_data.put(f"{user}/data.npz", simulated.to_npz(simulated.user_data(recipe, user)))
        ports.bus.publish(ports.settings.topics.signup,
                          Signup(request_id="r1", user_id=user, device_public_key=public_key_b64(key),
                                 data_ref=f"{user}/data.npz").to_dict())
    ports.bus.drain()
    models = {}
    for message in ports.bus.journal(ports.settings.topics.ready):
        ready = Ready.parse(message)
        tflite = open_sealed_bytes(fetch_local_url(ready.download_url, ports.clock()), keys[ready.user_id])[1]
        read = read_tflite(tflite)
        models[ready.user_id] = Weights(read.kernels, read.biases) if set(read.layer_kinds) == {"dense"} else tflite
    return ports, models


def weight_attacks(rng: np.random.Generator):
    """(family, strength, attack(weights, user) -> Weights | bytes)."""
    def fine(epochs, rate):
        def attack(w, user):  # the strongest thief: the user, leaking their own model, with their own data
            own = simulated.digits_user(user).train
            return attacks.fine_tune(w, own.x, own.y, epochs, rate)
        return attack

    table = [("none", "-", lambda w, u: w)]
    table += [("noise", f"sigma {s}", lambda w, u, s=s: attacks.gaussian_noise(w, s, rng)) for s in (0.1, 0.3, 0.5, 1.0)]
    table += [("prune", f"{int(f * 100)}%", lambda w, u, f=f: attacks.magnitude_prune(w, f))
              for f in (0.1, 0.3, 0.5, 0.7, 0.9)]
    table += [("tflite", q, lambda w, u, q=q: attacks.to_tflite(w, q, simulated.digits_user(u).train.x[:100]))
              for q in ("float16", "dynamic", "int8")]
    table += [("fine-tune", f"{e} ep, lr {r}", fine(e, r)) for e in (1, 5, 20) for r in (1e-3, 1e-2)]
    table += [("weight shift", f"{f} sd", lambda w, u, f=f: attacks.weight_shift(w, f)) for f in (0.05, 0.1, 0.2)]
    table += [("permute+scale", "0.5-2x", lambda w, u: attacks.permute_and_scale(w, rng))]
    table += [("dummy neurons", f"+{int(x * 100)}%", lambda w, u, x=x: attacks.permute_and_scale(
        attacks.dummy_neurons(w, x, rng), rng)) for x in (0.1, 0.3, 0.5)]
    return table


def as_weights(result) -> tuple[Weights, ReadModel]:
    if isinstance(result, bytes):
        read = read_tflite(result)
        return Weights(read.kernels, read.biases), read
    return result, ReadModel("weights", result.kernels, result.biases)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20)
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
    if args.recipe != "digits-mlp":  # the attacks below edit a Dense network's weights (watermark/research)
        conv_attacks(ports, issued, args.recipe)
        return
    marks = {user: UchidaMark(user, w.kernels[0].size) for user, w in issued.items()}
    models = {user: Weights([marks[user].embed(w.kernels[0])] + w.kernels[1:], w.biases)
              for user, w in issued.items()}
    baseline_threshold = 1e-9 / len(models)

    def anchor_accuses(attacked: Weights) -> set[str]:
        return {u for u, mark in marks.items() if mark.p_value(attacked.kernels[0]) <= baseline_threshold}

    fidelity = [issued[u].accuracy(*held(u)) - models[u].accuracy(*held(u)) for u in models]
    print(f"the anchor's mark costs {100 * statistics.mean(fidelity):.2f} accuracy points on average",
          file=sys.stderr)

    def judge(read: ReadModel):
        return verify(read, "-", ports.ledger, ports.kms, ports.models, top=len(models))

    rows = defaultdict(list)
    for user, original in models.items():
        x, y = held(user)
        baseline = original.accuracy(x, y)
        for family, strength, attack in weight_attacks(rng):
            attacked, read = as_weights(attack(original, user))
            accuracy = attacked.accuracy(x, y)
            verdict = judge(read)
            ranked = [c.user_id for c in verdict.candidates]
            true = next((c for c in verdict.candidates if c.user_id == user), None)
            anchor = anchor_accuses(attacked)
            rows[(family, strength)].append({
                "drop": baseline - accuracy, "counts": accuracy >= baseline - TIER,
                "rank": ranked.index(user) + 1 if user in ranked else len(models),
                "log10_p": true.log10_p_value if true else 0.0, "right": user in verdict.accused,
                "innocents": len([a for a in verdict.accused if a != user]),
                "anchor_right": user in anchor, "anchor_innocents": len(anchor - {user}),
            })
        print(f"attacked {user}", file=sys.stderr)

    table = Table(title=f"Fingerprint robustness: {len(models)} users, alpha 1e-9 (an attack counts within "
                        f"{int(TIER * 100)} points)")
    for column in ("attack", "strength", "acc. drop (mean)", "counted", "right user accused", "median rank",
                   "median log10 p (true user)", "innocents accused", "anchor: right accused", "anchor: innocents"):
        table.add_column(column, justify="left" if column in ("attack", "strength") else "right")
    for (family, strength), results in rows.items():
        counted = [r for r in results if r["counts"]]
        table.add_row(family, strength, f"{100 * statistics.mean(r['drop'] for r in results):.1f} pts",
                      f"{len(counted)}/{len(results)}",
                      f"{sum(r['right'] for r in counted)}/{len(counted)}" if counted else "-",
                      f"{statistics.median(r['rank'] for r in counted):.0f}" if counted else "-",
                      f"{statistics.median(r['log10_p'] for r in counted):.1f}" if counted else "-",
                      str(sum(r["innocents"] for r in results)),
                      f"{sum(r['anchor_right'] for r in counted)}/{len(counted)}" if counted else "-",
                      str(sum(r["anchor_innocents"] for r in results)))
    Console(width=160).print(table)

    collusion = Table(title="Collusion: k users pool their models (5 groups each)")
    for column in ("k", "how", "acc. drop (mean)", "some colluder accused", "all colluders accused",
                   "innocents accused", "anchor: some colluder", "anchor: innocents"):
        collusion.add_column(column, justify="right")
    users = list(models)
    for k in (k for k in (2, 3, 5, 8) if k <= len(users)):
        for how in ("mean", "median", "interleave"):
            some = every = innocents = anchor_some = anchor_innocents = 0
            drops = []
            for _ in range(5):
                group = list(rng.choice(users, size=k, replace=False))
                pooled = attacks.collude([models[u] for u in group], how, rng)
                x, y = held(group[0])
                drops.append(models[group[0]].accuracy(x, y) - pooled.accuracy(x, y))
                accused = set(judge(ReadModel("weights", pooled.kernels, pooled.biases)).accused)
                some += bool(accused & set(group))
                every += set(group) <= accused
                innocents += len(accused - set(group))
                anchor = anchor_accuses(pooled)
                anchor_some += bool(anchor & set(group))
                anchor_innocents += len(anchor - set(group))
            collusion.add_row(str(k), how, f"{100 * statistics.mean(drops):.1f} pts", f"{some}/5", f"{every}/5",
                              str(innocents), f"{anchor_some}/5", str(anchor_innocents))
    Console(width=160).print(collusion)

    null_trials(ports, models, args.out, rng)
    shutil.rmtree(workdir, ignore_errors=True)


def null_trials(ports, models: dict[str, Weights], out: Path, rng: np.random.Generator) -> None:
    """z of codewords that were never embedded in the file: innocent by construction."""
    from functions import model as tf_model

    recipe = recipes.load("digits-mlp")
    base = [layer.kernel for layer in published_base.load(ports.models, recipe.base_version).layers]
    per_model = max(1, math.ceil(10_000 / len(models)))
    null_z = []
    for weights in models.values():
        residual = Residual.of(align(weights.kernels, base).kernels, published_base.load(ports.models,
                                                                                         recipe.base_version))
        null_z.append(z_scores(residual, [rng.bytes(32) for _ in range(per_model)], workers=1))
    null_z = np.concatenate(null_z)
    other_seed = tf_model.train_base(recipe, seed=99)  # never issued
    never = {"base model": ReadModel("weights", base, [np.zeros(k.shape[1]) for k in base]),
             "model from another seed": ReadModel("weights", [k for _, _, k in tf_model.weight_layers(other_seed)],
                                                  [np.zeros(k.shape[1]) for k in base])}
    accusations = {name: verify(read, "-", ports.ledger, ports.kms, ports.models).accused
                   for name, read in never.items()}
    threshold_z = z_threshold(log10_threshold(len(models), 1e-9))
    print(f"null trials: {null_z.size} (issued model, never-embedded codeword) pairs; max z {null_z.max():.2f}; "
          f"accused at alpha 1e-9 (z >= {threshold_z:.2f}): {int(np.sum(null_z >= threshold_z))}")
    for t in (1, 2, 3, 4):
        print(f"  share of z >= {t}: {np.mean(null_z >= t):.5f}  (bound exp(-z^2/2) = {math.exp(-t * t / 2):.5f})")
    for name, accused in accusations.items():
        print(f"never issued, {name}: accused {accused or 'nobody'}")
    np.save(out / "null-scores.npy", null_z)
    plot(null_z, out / "null-scores.png")


def conv_attacks(ports, issued: dict[str, bytes], recipe_name: str) -> None:
    """The attacks that apply to any recipe's TFLite file: quantization, and the user's own fine-tuning;
    each judged by the verifier as a leaked file would be."""
    import keras
    import tensorflow as tf

    recipe = recipes.load(recipe_name)
    table = Table(title=f"{recipe_name}: attacks on {len(issued)} issued TFLite files, alpha 1e-9")
    for column in ("attack", "acc. drop (mean)", "counted", "right user accused", "median log10 p", "innocents"):
        table.add_column(column, justify="left" if column == "attack" else "right")

    def as_keras(data: bytes):
        model = recipe.build()
        read = read_tflite(data)
        layers = [layer for layer in model.layers if layer.weights]
        model.set_weights([a for k, b, layer in zip(read.kernels, read.biases, layers)
                           for a in (k.reshape(layer.kernel.shape).astype(np.float32), b.astype(np.float32))])
        return model

    def quantized(model, how: str, user: str) -> bytes:
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        if how == "float16":
            converter.optimizations, converter.target_spec.supported_types = [tf.lite.Optimize.DEFAULT], [tf.float16]
        elif how in ("dynamic", "int8"):
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if how == "int8":
            probe = simulated.user_data(recipe_name, user).train.x[:100]
            converter.representative_dataset = lambda: ([x[None]] for x in probe)
        return converter.convert()

    def fine_tuned(model, user: str, epochs: int, rate: float) -> bytes:
        own = simulated.user_data(recipe_name, user).train
        model.compile(keras.optimizers.Adam(rate), "sparse_categorical_crossentropy")
        model.fit(own.x, own.y, epochs=epochs, batch_size=32, verbose=0)
        return recipe.export(model)

    attacks_ = [("none", lambda m, u: recipe.export(m))]
    attacks_ += [(f"tflite {q}", lambda m, u, q=q: quantized(m, q, u)) for q in ("float16", "dynamic", "int8")]
    attacks_ += [(f"fine-tune {e} ep, lr {r}", lambda m, u, e=e, r=r: fine_tuned(m, u, e, r))
                 for e in (5, 20) for r in (1e-3, 1e-2)]
    for name, attack in attacks_:
        drops, right, logs_p, innocents = [], 0, [], 0
        for user, data in issued.items():
            x, y = held(user, recipe_name)
            before = float(np.mean(np.argmax(as_keras(data)(x).numpy(), 1) == y))
            attacked = attack(as_keras(data), user)
            after = float(np.mean(np.argmax(as_keras(attacked)(x).numpy(), 1) == y))
            verdict = verify(read_tflite(attacked), "-", ports.ledger, ports.kms, ports.models, top=len(issued))
            true = next((c for c in verdict.candidates if c.user_id == user), None)
            drops.append(before - after)
            right += user in verdict.accused
            logs_p.append(true.log10_p_value if true else 0.0)
            innocents += len([a for a in verdict.accused if a != user])
        counted = sum(d <= TIER for d in drops)
        table.add_row(name, f"{100 * statistics.mean(drops):.1f} pts", f"{counted}/{len(drops)}",
                      f"{right}/{len(drops)}", f"{statistics.median(logs_p):.1f}", str(innocents))
    Console(width=160).print(table)


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
