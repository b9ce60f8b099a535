"""An in-process message bus: the embedded stand-in for Pub/Sub topics with push subscriptions.

Every published message is journaled as a JSON file under `journal_dir/<topic>/`, so nothing is lost and
the dead letters of a run can be read afterwards (`<workdir>/topics/iml-dead-letter/`). Messages queue in
publication order and are delivered to subscribers by `drain()`, so one thread runs the whole pipeline.
"""
from __future__ import annotations

import json
import time
import uuid
from collections import defaultdict, deque
from pathlib import Path
from typing import Callable

Subscriber = Callable[[bytes], None]


class InProcessBus:
    def __init__(self, journal_dir: Path):
        self.journal_dir = Path(journal_dir)
        self._queue: deque[tuple[str, bytes]] = deque()
        self._subscribers: dict[str, list[Subscriber]] = defaultdict(list)

    def subscribe(self, topic: str, subscriber: Subscriber) -> None:
        self._subscribers[topic].append(subscriber)

    def publish(self, topic: str, event: dict) -> None:
        payload = json.dumps(event, sort_keys=True).encode()
        folder = self.journal_dir / topic
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{time.time_ns()}-{uuid.uuid4().hex[:8]}.json").write_bytes(payload)
        self._queue.append((topic, payload))

    def journal(self, topic: str) -> list[dict]:
        """The messages ever published to `topic` in this folder, oldest first."""
        folder = self.journal_dir / topic
        return [json.loads(p.read_bytes()) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []

    def drain(self) -> int:
        """Deliver queued messages, including those published while delivering, until none is left."""
        delivered = 0
        while self._queue:
            topic, payload = self._queue.popleft()
            for subscriber in self._subscribers.get(topic, ()):
                subscriber(payload)
            delivered += 1
        return delivered
