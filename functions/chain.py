"""The step chain: which topic each step reads, what it may publish where, how it is deployed and delivered.

The one table of it: the runner routes by it, the entry points and the dev stack serve by it, the packager
builds the archives by it, and tests/integration/test_terraform.py holds terraform/main.tf to it.

    signup ─▶ generate ─▶ generated ─▶ watermark ─▶ watermarked ─▶ encrypt ─▶ sealed ─▶ publish ─▶ ready
                                                                                          └──────▶ expire
    expire ─▶ expire  (the hourly tick, a user's deletion, a model delivered after its user was deleted)
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from functions.events import ExpireTick, ModelEvent, Ready, Signup
from infra.settings import Topics


@dataclass(frozen=True)
class Step:
    name: str  # also the entry point's name and the module under functions/steps/
    input: str  # the Topics field it reads
    event: type  # what it reads, parsed and validated at the edge by event.parse
    outputs: tuple[tuple[type, str], ...]  # (event type, Topics field) it may publish
    archive: str  # the function source archive it ships in: "tensorflow" or "light"
    concurrency: int  # requests one instance serves at once
    delivery_attempts: int  # deliveries of one message before the dead-letter topic
    consumes_input: bool = False  # deletes its input (a staging object) once its outputs are out
    records_outputs: bool = True  # False: a retry recomputes them (publish's hold a fresh signed URL, a secret)

    @property
    def handle(self) -> Callable[[Any, Any], list]:
        """The step's handler; its module (TensorFlow, for some) is imported on first use only."""
        return importlib.import_module(f"functions.steps.{self.name}").handle

    def input_topic(self, topics: Topics) -> str:
        return getattr(topics, self.input)

    def output_topics(self, topics: Topics) -> list[str]:
        return [getattr(topics, field) for _, field in self.outputs]

    def topic_for(self, output: object, topics: Topics) -> str:
        """Where an output goes; a step returning a type it does not declare is a defect."""
        for kind, field in self.outputs:
            if isinstance(output, kind):
                return getattr(topics, field)
        raise TypeError(f"step {self.name} returned a {type(output).__name__}, which it does not publish")


ATTEMPTS = 16  # terraform's max_delivery_attempts default: enough to outlast a crashed claimant's lease (docs/delivery.md)
STEPS = {
    step.name: step
    for step in (
        Step("generate", "signup", Signup, ((ModelEvent, "generated"),), "tensorflow", 1, ATTEMPTS),
        Step("watermark", "generated", ModelEvent, ((ModelEvent, "watermarked"),), "tensorflow", 1, ATTEMPTS,
             consumes_input=True),
        Step("encrypt", "watermarked", ModelEvent, ((ModelEvent, "sealed"),), "light", 1, ATTEMPTS,
             consumes_input=True),
        Step("publish", "sealed", ModelEvent, ((Ready, "ready"), (ExpireTick, "expire")), "light", 1, ATTEMPTS,
             records_outputs=False),
        Step("expire", "expire", ExpireTick, (), "light", 1, ATTEMPTS),
    )
}
