"""Cold start of each entry point, against `import tensorflow`, and the peak memory to size each function.

    python bench/cold_start.py [--repeats 3]

Each measurement is a fresh Python process, as a new Cloud Functions instance is: it loads functions/main.py
through functions-framework (import), then serves one Pub/Sub push with a real event for that step (first
invocation, which includes the per-instance bootstrap on the embedded adapters), then imports the Google
Cloud clients that IML_BACKEND=gcp adds to that bootstrap, and reports its peak resident memory. The inputs come
from one setup run of the pipeline on the embedded adapters (a trained base model, one event per step).
The reference, in the same run: a fresh process that only imports TensorFlow.
Goal: encrypt, publish and expire start in under 15% of the TensorFlow import.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from functions.chain import STEPS  # noqa: E402

MAIN = ROOT / "functions" / "main.py"
GOAL = 0.15

SETUP = """
import json, sys
from pathlib import Path
from cryptography.hazmat.primitives.asymmetric import ec
from functions import base_model, recipes
from iml import simulated
from functions.chain import STEPS
from functions.runner import run_step
from iml.device import public_key_b64
from infra.bootstrap import local_ports
from infra.settings import Settings
from functions.events import Signup

ports = local_ports(Settings(workdir=Path(sys.argv[1])))
base_model.publish(recipes.load("digits-mlp"), ports.models, "bench")
inputs = {"expire": {"schema_version": 1, "reason": "cold start bench"}}
chain = [name for name in STEPS if name != "expire"]  # the steps a signup goes through, in order
for depth, step in enumerate(chain):  # user k runs the first k steps, so step k's input is waiting
    key = ec.generate_private_key(ec.SECP256R1())
    user = f"user-{depth}"
    event = Signup(request_id="bench", user_id=user, device_public_key=public_key_b64(key),
                   data_ref=simulated.put_user_data(ports.user_data, "digits-mlp", user)).to_dict()
    for earlier in chain[:depth]:
        run_step(STEPS[earlier], json.dumps(event).encode(), ports)
        event = list(ports.bus.journal(STEPS[earlier].output_topics(ports.settings.topics)[0]))[-1]
    inputs[step] = event
print(json.dumps(inputs))
"""

PROBE = """
import base64, json, resource, sys, time
started = time.perf_counter()
from functions_framework import create_app
app = create_app(target=sys.argv[1], source=sys.argv[2], signature_type="cloudevent")
loaded = time.perf_counter()
body = {"message": {"data": base64.b64encode(sys.argv[3].encode()).decode(), "messageId": "1"},
        "subscription": "projects/bench/subscriptions/bench"}
status = app.test_client().post("/", json=body).status_code
served = time.perf_counter()
from google.cloud import kms_v1, pubsub_v1, storage  # what IML_BACKEND=gcp adds to the bootstrap
clients = time.perf_counter()
print(json.dumps({"import": loaded - started, "first": served - loaded, "clients": clients - served,
                  "status": status,
                  "tensorflow": "tensorflow" in sys.modules,
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

TENSORFLOW = """
import json, resource, time
started = time.perf_counter()
import tensorflow
print(json.dumps({"import": time.perf_counter() - started,
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(code: str, *args: str, env: dict | None = None) -> dict:
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})})
    if done.returncode != 0:
        raise SystemExit(f"a measured process failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per entry point (median)")
    args = parser.parse_args()
    reference = [run(TENSORFLOW) for _ in range(args.repeats)]
    tf_import = statistics.median(r["import"] for r in reference)

    table = Table(title=f"Cold start per entry point (median of {args.repeats} fresh processes) vs import "
                        f"tensorflow {tf_import:.2f} s")
    for column in ("entry point", "import (load main.py)", "first invocation", "+ cloud clients", "total",
                   "vs import tensorflow", f"goal < {GOAL:.0%}", "TensorFlow loaded", "peak memory"):
        table.add_column(column, justify="left" if column == "entry point" else "right")
    table.add_row("import tensorflow (reference)", f"{tf_import:.2f} s", "-", "-", f"{tf_import:.2f} s", "100%", "-",
                  "yes", f"{max(r['peak_mib'] for r in reference):.0f} MiB")
    for step, wiring in STEPS.items():
        samples = []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory(prefix="iml-cold-start-") as workdir:
                inputs = run(SETUP, workdir)  # fresh inputs each time: a step consumes its input
                samples.append(run(PROBE, step, str(MAIN), json.dumps(inputs[step]), env={"IML_WORKDIR": workdir}))
        if any(s["status"] != 200 for s in samples):
            raise SystemExit(f"{step} answered {[s['status'] for s in samples]}")
        load = statistics.median(s["import"] for s in samples)
        first = statistics.median(s["first"] for s in samples)
        clients = statistics.median(s["clients"] for s in samples)
        share = (load + first + clients) / tf_import
        light = wiring.archive == "light"
        table.add_row(step, f"{load:.2f} s", f"{first:.2f} s", f"{clients:.2f} s", f"{load + first + clients:.2f} s",
                      f"{share:.1%}",
                      ("met" if share < GOAL else "MISSED") if light else "-",
                      "yes" if any(s["tensorflow"] for s in samples) else "no",
                      f"{max(s['peak_mib'] for s in samples):.0f} MiB")
        print(f"measured {step}", file=sys.stderr)
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
