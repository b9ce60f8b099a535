"""IML_BACKEND=gcp wires Cloud Storage and Pub/Sub: steps run through those ports, against both emulators (the
storage one, fake-gcs-server, enforces generation preconditions as Cloud Storage does)."""
from __future__ import annotations

import json
import uuid

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from google.auth.credentials import AnonymousCredentials
from google.cloud import pubsub_v1, storage

from functions.chain import STEPS
from functions.runner import Outcome, run_step
from infra.bootstrap import build_ports
from infra.envelope import open_sealed_bytes
from infra.gcs_storage import GcsBlobStore
from infra.settings import BUCKETS, ROLES, Settings, SettingsError
from tests.helpers import (admit_in_process, at_once, gcs_emulator, make_signup, pubsub_emulator, run_step_in_process,
                           watermarked_event)



@pytest.fixture(scope="module")
def emulators(tmp_path_factory):
    with gcs_emulator() as (gcs, _), pubsub_emulator(tmp_path_factory.mktemp("pubsub")) as pubsub:
        yield gcs, pubsub


@pytest.fixture
def cloud(emulators, monkeypatch, tmp_path) -> dict[str, str]:
    """The environment of a function deployed on fresh buckets and topics of the emulators."""
    gcs, pubsub = emulators
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs)
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub)
    project = f"iml-{uuid.uuid4().hex[:8]}"
    env = {"IML_BACKEND": "gcp", "IML_PROJECT": project, "IML_WORKDIR": str(tmp_path),
           "STORAGE_EMULATOR_HOST": gcs, "PUBSUB_EMULATOR_HOST": pubsub}
    env |= {variable: f"{project}-{role}" for role, variable in BUCKETS.items()}
    client = storage.Client(project=project, credentials=AnonymousCredentials())
    for role in ROLES:
        client.create_bucket(f"{project}-{role}")
    publisher = pubsub_v1.PublisherClient()
    for topic in ("iml-sealed", "iml-dead-letter"):
        publisher.create_topic(name=publisher.topic_path(project, topic))
    return env


def _pull_subscription(env: dict[str, str], topic: str) -> str:
    subscriber = pubsub_v1.SubscriberClient()
    return subscriber.create_subscription(name=subscriber.subscription_path(env["IML_PROJECT"], f"{topic}-watch"),
                                          topic=f"projects/{env['IML_PROJECT']}/topics/{topic}").name


def test_a_step_runs_on_cloud_storage_and_pubsub(cloud):
    pulled = _pull_subscription(cloud, "iml-sealed")
    ports = build_ports(Settings.from_env(cloud))
    assert isinstance(ports.delivery, GcsBlobStore)
    key = ec.generate_private_key(ec.SECP256R1())
    signup = make_signup("alice", key=key)
    event = watermarked_event(signup, ports, b"a model")
    artifact = event["artifact"]
    result = run_step(STEPS["encrypt"], json.dumps(event).encode(), ports)

    assert result.outcome is Outcome.DONE
    client = storage.Client(project=cloud["IML_PROJECT"], credentials=AnonymousCredentials())
    sealed = client.bucket(cloud["IML_DELIVERY_BUCKET"]).blob(f"{signup.model_id}.iml").download_as_bytes()
    assert open_sealed_bytes(sealed, key, expected_user_id="alice")[1] == b"a model"
    assert not client.bucket(cloud["IML_STAGING_BUCKET"]).blob(artifact).exists()
    (message,) = pubsub_v1.SubscriberClient().pull(subscription=pulled, max_messages=5, timeout=10).received_messages
    assert json.loads(message.message.data)["model_id"] == signup.model_id
    (record,) = ports.ledger.entries("issued")
    assert record.valid


def test_one_message_delivered_by_four_processes_at_once_is_done_once_on_cloud_storage(cloud):
    pulled = _pull_subscription(cloud, "iml-sealed")
    ports = build_ports(Settings.from_env(cloud))
    payload = json.dumps(watermarked_event(make_signup("alice"), ports, b"a model")).encode()
    outcomes = at_once(run_step_in_process, [(cloud, "encrypt", payload)] * 4)

    assert sorted(outcomes) == ["done", "duplicate", "duplicate", "duplicate"]
    received = pubsub_v1.SubscriberClient().pull(subscription=pulled, max_messages=10, timeout=10)
    assert len(received.received_messages) == 1
    assert len(list(ports.ledger.entries("issued"))) == 1
    assert [info.name for info in ports.delivery.list()] == [f"{make_signup('alice').model_id}.iml"]
    assert [info.name.rpartition("/")[2] for info in ports.state.list("claims/")] == ["000000000"]


def test_n_plus_one_simultaneous_requests_under_a_limit_of_n_admit_n_on_cloud_storage(cloud):
    env = cloud | {"IML_USER_MODEL_LIMIT": "3"}
    results = at_once(admit_in_process, [(env, "alice", f"m-{n:032x}") for n in range(4)])
    assert sorted(results) == ["admitted"] * 3 + ["refused"]
    ports = build_ports(Settings.from_env(env))
    assert len(list(ports.state.list("slots/alice/"))) == 3


def test_gcp_settings_name_what_is_missing():
    with pytest.raises(SettingsError, match="IML_BACKEND=gcp needs IML_STAGING_BUCKET.*IML_PROJECT"):
        Settings.from_env({"IML_BACKEND": "gcp", "IML_DELIVERY_BUCKET": "d"})
