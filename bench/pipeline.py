"""Per-step time and peak memory of an `iml demo` run, with the physical references beside them.

    python bench/pipeline.py [--recipe digits-mlp] [--users 5] [--workdir DIR]

Peak memory is the process's resident set size (sampled every 5 ms from /proc/self/statm, Linux only)
at its highest while a step ran. One-off costs (importing TensorFlow, training the base model) are measured
first and apart, so the step rows show what each further user costs. References in the same run: raw
AES-256-GCM over one model's bytes (the floor of encrypt) and a bare Keras fine-tune of the recipe's model
from the published base, same data, epochs, batch size and optimiser, written here with Keras alone (the
floor of generate, run as often as there are users after one uncounted warm-up fit; the last line gives
generate's overhead over it); and the fingerprint embedding alone, apart from the watermark step's TFLite export and
fidelity measurement.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


class RssSampler(threading.Thread):
    def __init__(self, every: float = 0.005):
        super().__init__(daemon=True)
        self.every, self.samples, self.running = every, [], True

    def run(self) -> None:
        with open("/proc/self/statm") as statm:
            while self.running:
                statm.seek(0)
                self.samples.append((time.perf_counter(), int(statm.read().split()[1]) * PAGE))
                time.sleep(self.every)

    def peak(self, start: float, end: float) -> int:
        """Highest sample within the window; for a window shorter than the period, the next sample."""
        inside = [rss for t, rss in self.samples if start <= t <= end]
        return max(inside) if inside else next((rss for t, rss in self.samples if t >= start), 0)


def timed(fn):
    started = time.perf_counter()
    value = fn()
    return value, started, time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=5)
    parser.add_argument("--recipe", default="digits-mlp")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="iml-bench-"))
    sampler = RssSampler()
    sampler.start()
    rows = []

    _, s, e = timed(lambda: __import__("functions.model"))
    rows.append(("import tensorflow (functions.model)", 1, e - s, e - s, [(s, e)]))
    from functions import base_model, recipes
    from iml import simulated
    from iml.demo import Progress, run_demo
    from infra import logs
    from infra.local_storage import LocalBlobStore

    recipe = recipes.load(args.recipe)
    store = LocalBlobStore(workdir / "buckets" / "models")
    (published, _), s, e = timed(lambda: base_model.publish(recipe, store, "bench"))
    rows.append(("base model, trained and published once", 1, e - s, e - s, [(s, e)]))

    base = base_model.load_model(recipe, store)
    data = simulated.user_data(recipe.name, "user-001").train
    bare_fine_tune(recipe, base, data)  # warm-up, not counted: the first fit of a process pays one-off costs

    windows: dict[str, list[tuple[float, float]]] = defaultdict(list)
    logs.configure(open(os.devnull, "w"))
    hooks = Progress(on_advance=lambda stage, seconds: windows[stage].append(
        (time.perf_counter() - seconds, time.perf_counter())))
    report = run_demo(args.users, workdir, hooks, recipe=recipe.name)
    for stage, spans in windows.items():
        durations = [end - start for start, end in spans]
        rows.append((stage, len(spans), sum(durations), statistics.mean(durations), spans))

    # references, same process, same run
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    tflite = (workdir / "devices" / report["users"][0]["user_id"] / "model.tflite").read_bytes()
    aes = AESGCM(AESGCM.generate_key(bit_length=256))
    repeats = 200
    _, s, e = timed(lambda: [aes.encrypt(os.urandom(12), tflite, None) for _ in range(repeats)])
    rows.append((f"reference: raw AES-256-GCM of one {len(tflite) // 1024} KiB model", repeats, e - s,
                 (e - s) / repeats, [(s, e)]))
    from infra.settings import Settings
    from watermark.codeword import expand
    from watermark.embed import embed

    carriers = [layer.kernel for layer in published.carriers]
    repeats = 100
    _, s, e = timed(lambda: [embed(carriers, published, expand(os.urandom(32), published.codeword_length),
                                   Settings().watermark_strength)
                             for _ in range(repeats)])
    rows.append(("fingerprint embedding alone (codeword + add)", repeats, e - s, (e - s) / repeats, [(s, e)]))
    references = []
    for _ in range(args.users):
        _, s, e = timed(lambda: bare_fine_tune(recipe, base, data))
        references.append((s, e))
    mean_reference = statistics.mean(e - s for s, e in references)
    rows.append(("reference: bare Keras fine-tune, same epochs", len(references),
                 sum(e - s for s, e in references), mean_reference, references))
    time.sleep(0.05)  # the sample after the last window
    sampler.running = False

    table = Table(title=f"iml demo, {args.users} users, {os.cpu_count()} cores")
    for column in ("step", "runs", "total s", "mean ms", "peak RSS MiB"):
        table.add_column(column, justify="right" if column != "step" else "left")
    for name, runs, total, mean, spans in rows:
        peak = max(sampler.peak(start, end) for start, end in spans)
        table.add_row(name, str(runs), f"{total:.3f}", f"{1000 * mean:.3f}", f"{peak / 2**20:.0f}")
    Console(width=110).print(table)
    generate = statistics.mean(end - start for start, end in windows["generate"])
    print(f"recipe {recipe.name}: generate {1000 * generate:.0f} ms per user against the bare fine-tune's "
          f"{1000 * mean_reference:.0f} ms: overhead {100 * (generate / mean_reference - 1):+.1f}%")
    leak = report["leak"]
    print(f"leak traced to {leak['accused']} (z = {leak['score']:.1f}, log10 p = {leak['log10_p_value']:.1f}); "
          f"never-issued accused "
          f"{report['never_issued']['accused']}; expiry left {report['expiry']['remaining']} models")


def bare_fine_tune(recipe, base, data):
    """What a model owner would write with Keras alone: the reference generate is measured against."""
    import keras

    model = recipe.build()
    model.set_weights(base.get_weights())
    model.compile(keras.optimizers.Adam(recipe.learning_rate), "sparse_categorical_crossentropy")
    model.fit(data.x, data.y, epochs=recipe.epochs, batch_size=recipe.batch_size, verbose=0)
    return model


if __name__ == "__main__":
    main()
