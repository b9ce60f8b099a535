"""Shared fixtures. The base model is trained once per session and copied into each workdir that needs it,
so no test pays for training (the one end-to-end CLI test trains its own, as a user's first run would)."""
from __future__ import annotations

import base64
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from functions.events import Ready, Signup
from functions.runner import StepResult, subscribe_steps
from infra.bootstrap import MovableClock, local_ports
from infra.ports import Ports
from infra.settings import Settings


def public_key_b64(private_key: ec.EllipticCurvePrivateKey) -> str:
    raw = private_key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return base64.b64encode(raw).decode()


def make_signup(user_id: str, request_id: str = "req-1", key: ec.EllipticCurvePrivateKey | None = None) -> Signup:
    key = key or ec.generate_private_key(ec.SECP256R1())
    return Signup(request_id=request_id, user_id=user_id, device_public_key=public_key_b64(key))


def model_step_event(signup: Signup, artifact: str) -> dict:
    """An internal model-step event for `signup`'s model, as the previous step would publish it."""
    return {
        "schema_version": 1, "request_id": signup.request_id, "user_id": signup.user_id,
        "model_id": signup.model_id, "device_public_key": signup.device_public_key,
        "base_model_version": "digits-mlp-v1", "artifact": artifact, "facts": {},
    }


@pytest.fixture
def clock() -> MovableClock:
    return MovableClock()


@pytest.fixture
def ports(tmp_path: Path, clock: MovableClock) -> Ports:
    """Embedded adapters in a fresh workdir, no base model."""
    return local_ports(Settings(workdir=tmp_path / "work"), clock)


@pytest.fixture(scope="session")
def base_models_dir(tmp_path_factory) -> Path:
    from functions import model
    from infra.local_storage import LocalBlobStore

    folder = tmp_path_factory.mktemp("models")
    model.load_or_train_base(LocalBlobStore(folder))
    return folder


@pytest.fixture
def trained_ports(tmp_path: Path, clock: MovableClock, base_models_dir: Path) -> Ports:
    """Embedded adapters in a fresh workdir that already holds the trained base model."""
    shutil.copytree(base_models_dir, tmp_path / "work" / "buckets" / "models")
    return local_ports(Settings(workdir=tmp_path / "work"), clock)


@pytest.fixture
def wired(ports: Ports) -> list[StepResult]:
    """Every step subscribed on the in-process bus; the list collects each delivery's result."""
    results: list[StepResult] = []
    subscribe_steps(ports.bus, ports, results.append)
    return results


@pytest.fixture
def trained_wired(trained_ports: Ports) -> list[StepResult]:
    results: list[StepResult] = []
    subscribe_steps(trained_ports.bus, trained_ports, results.append)
    return results


@dataclass
class Issued:
    """Models the pipeline issued to alice, bob and carol: their ports (ledger, keys, base model), their
    decrypted TFLite files, and the weights read back from them."""

    workdir: Path
    ports: Ports
    models: dict  # user -> watermark.attacks.Weights
    tflite: dict[str, bytes]


ISSUED_USERS = ("alice", "bob", "carol")


@pytest.fixture(scope="session")
def issued(tmp_path_factory, base_models_dir) -> Issued:
    from infra.envelope import open_sealed_bytes
    from infra.local_storage import fetch_local_url
    from watermark.attacks import Weights
    from watermark.reader import read_tflite

    workdir = tmp_path_factory.mktemp("issued")
    shutil.copytree(base_models_dir, workdir / "buckets" / "models")
    ports = local_ports(Settings(workdir=workdir), MovableClock())
    subscribe_steps(ports.bus, ports)
    keys = {user: ec.generate_private_key(ec.SECP256R1()) for user in ISSUED_USERS}
    for user, key in keys.items():
        ports.bus.publish(ports.settings.topics.signup, make_signup(user, key=key).to_dict())
    ports.bus.drain()
    tflite = {}
    for message in ports.bus.journal(ports.settings.topics.ready):
        ready = Ready.parse(message)
        tflite[ready.user_id] = open_sealed_bytes(fetch_local_url(ready.download_url, ports.clock()),
                                                  keys[ready.user_id])[1]
    models = {}
    for user, data in tflite.items():
        read = read_tflite(data)
        models[user] = Weights(read.kernels, read.biases)
    return Issued(workdir, ports, models, tflite)
