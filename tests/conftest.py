"""Shared fixtures, and the tiers: a test module under tests/unit, tests/integration or tests/e2e carries that
marker (`pytest -m unit`, or `pytest tests/unit`).

The base model is trained and published once per test run, into one folder (`base_models_dir`), and the test
users' data written once (`user_data_dir`); both are copied wherever a test needs them: the embedded adapters'
workdirs, the demo's workdir, the dev stack's buckets.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from functions.runner import StepResult, subscribe_steps
from infra.bootstrap import MovableClock, Ports, local_ports
from infra.ledger import IssuedModel
from infra.settings import Settings
from tests.helpers import CROWD_SIZE, DIGITS_BASE, FACTS, PUBLISHED_AT, TEST_USERS, issue_models, with_base_and_data

TIERS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(items) -> None:
    tests = Path(__file__).resolve().parent
    for item in items:
        tier = Path(item.fspath).resolve().relative_to(tests).parts[0]
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture
def clock() -> MovableClock:
    return MovableClock()


@pytest.fixture
def ports(tmp_path: Path, clock: MovableClock) -> Ports:
    """Embedded adapters in a fresh workdir, no base model."""
    return local_ports(Settings(workdir=tmp_path / "work"), clock)


@pytest.fixture(scope="session")
def base_models_dir(tmp_path_factory) -> Path:
    """A models bucket's folder holding the digits recipe's published base model: trained here, once per run."""
    from functions import base_model, recipes
    from infra.local_storage import LocalBlobStore

    folder = tmp_path_factory.mktemp("models")
    base_model.publish(recipes.load("digits-mlp"), LocalBlobStore(folder), PUBLISHED_AT)
    return folder


@pytest.fixture(scope="session")
def user_data_dir(tmp_path_factory) -> Path:
    """A user-data bucket's folder: every test user's simulated digits data, at <user>/data.npz."""
    from iml import simulated

    folder = tmp_path_factory.mktemp("user-data")
    for user in TEST_USERS:
        (folder / user).mkdir()
        (folder / user / "data.npz").write_bytes(simulated.to_npz(simulated.digits_user(user)))
    return folder


@pytest.fixture
def trained_ports(tmp_path: Path, clock: MovableClock, base_models_dir: Path, user_data_dir: Path) -> Ports:
    """Embedded adapters in a fresh workdir that already holds the published base model and the users' data."""
    with_base_and_data(tmp_path / "work", base_models_dir, user_data_dir)
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
    models: dict  # user -> watermark.research.attacks.Weights
    tflite: dict[str, bytes]


@pytest.fixture(scope="session")
def issued(tmp_path_factory, base_models_dir, user_data_dir) -> Issued:
    from watermark.reader import read_tflite
    from watermark.research.attacks import Weights

    workdir = tmp_path_factory.mktemp("issued")
    with_base_and_data(workdir, base_models_dir, user_data_dir)
    ports = local_ports(Settings(workdir=workdir), MovableClock())
    tflite = issue_models(ports, ("alice", "bob", "carol"))
    models = {}
    for user, data in tflite.items():
        read = read_tflite(data)
        models[user] = Weights(read.kernels, read.biases)
    return Issued(workdir, ports, models, tflite)


@dataclass
class Crowd:
    workdir: Path
    ports: Ports
    source: bytes  # alice's issued TFLite file: the attacker's raw material


@pytest.fixture(scope="session")
def crowd(issued, tmp_path_factory) -> Crowd:
    """alice, bob and carol's issued models plus CROWD_SIZE more issued records, each with its own codeword."""
    workdir = tmp_path_factory.mktemp("crowd") / "work"
    shutil.copytree(issued.workdir, workdir)
    ports = local_ports(Settings(workdir=workdir), MovableClock())
    for i in range(CROWD_SIZE):
        ports.ledger.issue(IssuedModel(
            model_id=f"m-crowd-{i:04d}", user_id=f"crowd-{i:04d}", request_id=f"r-{i}",
            base_model_version=DIGITS_BASE, recipe="digits-mlp", **{**FACTS, "fingerprint_key_id": ports.kms.fingerprint_key_id},
            plaintext_sha256="0" * 64, device_key_sha256="0" * 64, sealed_sha256="0" * 64,
            delivery_object=f"m-crowd-{i:04d}.iml"), ports.clock())
    return Crowd(workdir, ports, issued.tflite["alice"])
