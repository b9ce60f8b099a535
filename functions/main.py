"""functions-framework entry points: one `cloud_event` function per step, each behind a Pub/Sub push
subscription. Deploy with `--entry-point generate` (or watermark, encrypt, publish, expire).

An entry point unwraps the Pub/Sub message from the CloudEvent, builds the ports once per instance, and
runs the step; the step's module (TensorFlow, for generate and watermark) is imported on the first request of
the target that runs it, never by loading this file. Returning normally acknowledges the message (done,
duplicate or dead-lettered); an exception makes the framework answer 500, so Pub/Sub redelivers with backoff until its dead-letter policy steps in.
"""
from __future__ import annotations

import base64
import binascii
import json
import threading

import functions_framework

from functions.chain import STEPS
from functions.runner import dead_letter, run_step
from infra import logs
from infra.bootstrap import Ports, build_ports
from infra.settings import Settings

_ports: Ports | None = None
_bootstrap = threading.Lock()  # an instance serves concurrent requests on threads


def ports() -> Ports:
    """Built on the first request of an instance, then reused: one bootstrap per instance."""
    global _ports
    with _bootstrap:
        if _ports is None:
            logs.configure()
            _ports = build_ports(Settings.from_env())
    return _ports


def _pubsub_payload(cloud_event) -> bytes | None:
    try:
        return base64.b64decode(cloud_event.data["message"]["data"], validate=True)
    except (KeyError, TypeError, binascii.Error, ValueError):
        return None


def _entry_point(name: str):
    step = STEPS[name]

    def entry(cloud_event) -> None:
        payload = _pubsub_payload(cloud_event)
        if payload is None:
            raw = json.dumps(cloud_event.data, default=str).encode()
            dead_letter(name, raw, "not a Pub/Sub push message with base64 data", "InvalidEvent", ports())
            return
        run_step(step, payload, ports())

    entry.__name__ = entry.__qualname__ = name
    return functions_framework.cloud_event(entry)


generate = _entry_point("generate")
watermark = _entry_point("watermark")
encrypt = _entry_point("encrypt")
publish = _entry_point("publish")
expire = _entry_point("expire")
