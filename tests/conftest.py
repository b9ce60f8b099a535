"""Shared fixtures. The base model is trained once per session and copied into each workdir that needs it,
so no test pays for training (the one end-to-end CLI test trains its own, as a user's first run would)."""
from __future__ import annotations

import base64
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from functions.events import Signup
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
