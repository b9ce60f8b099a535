"""The Pub/Sub bus adapter through the real google-cloud-pubsub client against the official emulator."""
from __future__ import annotations

import json

import pytest
from google.cloud import pubsub_v1

from infra.errors import TransientError
from infra.pubsub_bus import PubSubBus
from tests.helpers import pubsub_emulator

PROJECT = "iml-test"


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    with pubsub_emulator(tmp_path_factory.mktemp("pubsub")) as host:
        yield host


@pytest.fixture
def clients(emulator, monkeypatch):
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", emulator)
    return pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()


def test_an_event_is_published_as_one_json_message_without_attributes(clients):
    publisher, subscriber = clients
    topic = publisher.create_topic(name=publisher.topic_path(PROJECT, "iml-generated")).name
    subscription = subscriber.create_subscription(
        name=subscriber.subscription_path(PROJECT, "iml-watermark"), topic=topic).name
    event = {"schema_version": 1, "model_id": "m-1", "artifact": "generated/m-1.keras"}
    PubSubBus(publisher, PROJECT).publish("iml-generated", event)
    (received,) = subscriber.pull(subscription=subscription, max_messages=10, timeout=10).received_messages
    assert json.loads(received.message.data) == event
    assert dict(received.message.attributes) == {}


def test_publishing_to_a_missing_topic_fails_the_delivery(clients):
    publisher, _ = clients
    with pytest.raises(TransientError, match="publishing to iml-nowhere failed: NotFound"):
        PubSubBus(publisher, PROJECT, timeout=10).publish("iml-nowhere", {"schema_version": 1})
