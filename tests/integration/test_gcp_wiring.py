"""IML_BACKEND=gcp wires Cloud Storage and Pub/Sub: a step run through those ports, against both emulators."""
from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from google.auth.credentials import AnonymousCredentials
from google.cloud import pubsub_v1, storage

from functions.chain import STEPS
from functions.runner import Outcome, run_step
from infra.bootstrap import build_ports
from infra.envelope import open_sealed_bytes
from infra.gcs_storage import GcsBlobStore
from infra.settings import Settings, SettingsError
from tests.helpers import make_signup, watermarked_event
from tests.helpers import gcs_emulator, pubsub_emulator

ROLES = ("staging", "delivery", "models", "evidence", "state")


@pytest.fixture(scope="module")
def emulators(tmp_path_factory):
    with gcs_emulator() as (gcs, _), pubsub_emulator(tmp_path_factory.mktemp("pubsub")) as pubsub:
        yield gcs, pubsub


def test_a_step_runs_on_cloud_storage_and_pubsub(emulators, monkeypatch, tmp_path):
    gcs, pubsub = emulators
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs)
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub)
    env = {"IML_BACKEND": "gcp", "IML_PROJECT": "iml-test", "IML_WORKDIR": str(tmp_path)}
    env |= {f"IML_{role.upper()}_BUCKET": f"iml-{role}" for role in ROLES}
    client = storage.Client(project="iml-test", credentials=AnonymousCredentials())
    for role in ROLES:
        client.create_bucket(f"iml-{role}")
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic = publisher.create_topic(name=publisher.topic_path("iml-test", "iml-sealed")).name
    pulled = subscriber.create_subscription(name=subscriber.subscription_path("iml-test", "iml-publish"),
                                            topic=topic).name

    ports = build_ports(Settings.from_env(env))
    assert isinstance(ports.delivery, GcsBlobStore)
    key = ec.generate_private_key(ec.SECP256R1())
    signup = make_signup("alice", key=key)
    event = watermarked_event(signup, ports, b"a model")
    artifact = event["artifact"]
    result = run_step(STEPS["encrypt"], json.dumps(event).encode(), ports)

    assert result.outcome is Outcome.DONE
    sealed = client.bucket("iml-delivery").blob(f"{signup.model_id}.iml").download_as_bytes()
    assert open_sealed_bytes(sealed, key, expected_user_id="alice")[1] == b"a model"
    assert not client.bucket("iml-staging").blob(artifact).exists()
    (message,) = subscriber.pull(subscription=pulled, max_messages=5, timeout=10).received_messages
    assert json.loads(message.message.data)["model_id"] == signup.model_id
    (record,) = ports.ledger.entries("issued")
    assert record.valid


def test_gcp_settings_name_what_is_missing():
    with pytest.raises(SettingsError, match="IML_BACKEND=gcp needs IML_STAGING_BUCKET.*IML_PROJECT"):
        Settings.from_env({"IML_BACKEND": "gcp", "IML_DELIVERY_BUCKET": "d"})
