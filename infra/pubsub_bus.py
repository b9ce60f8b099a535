"""A Bus on Cloud Pub/Sub, through google-cloud-pubsub (which honours PUBSUB_EMULATOR_HOST).

Each event is one message: its JSON as the data, no attributes (nothing about it, secret or not, travels
outside the data). Publishing waits for the server's acknowledgement, so a step is done only once its
output is on the topic; a failure is transient, so the step's delivery fails and Pub/Sub redelivers it.
"""
from __future__ import annotations

import json
from concurrent.futures import TimeoutError as FutureTimeout

from google.api_core import exceptions as google_errors
from google.cloud import pubsub_v1

from infra.errors import TransientError


class PubSubBus:
    def __init__(self, publisher: pubsub_v1.PublisherClient, project: str, timeout: float = 30.0):
        self._publisher = publisher
        self._project = project
        self._timeout = timeout

    def publish(self, topic: str, event: dict) -> None:
        path = self._publisher.topic_path(self._project, topic)
        data = json.dumps(event, sort_keys=True).encode()
        try:
            self._publisher.publish(path, data).result(timeout=self._timeout)
        except (google_errors.GoogleAPICallError, FutureTimeout) as error:
            raise TransientError(f"publishing to {topic} failed: {type(error).__name__}") from None
