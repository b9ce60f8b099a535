"""The functions-framework entry points, through the real framework (its Flask app), as a Pub/Sub push
subscription calls them; and the promise that encrypt, publish and expire never import TensorFlow."""
from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest
from functions_framework import create_app

from infra.bootstrap import local_ports
from infra.settings import Settings
from tests.helpers import ROOT, make_signup, watermarked_event

MAIN = str(ROOT / "functions" / "main.py")


def push_body(payload: bytes) -> dict:
    """What a Pub/Sub push subscription POSTs."""
    return {
        "message": {"data": base64.b64encode(payload).decode(), "messageId": "42",
                    "publishTime": "2026-11-21T12:00:00Z"},
        "subscription": "projects/demo/subscriptions/iml-encrypt",
    }


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("IML_WORKDIR", str(tmp_path / "work"))
    return tmp_path / "work"


def _client(target: str):
    return create_app(target=target, source=MAIN, signature_type="cloudevent").test_client()


def _watermarked_event(workdir: Path) -> dict:
    return watermarked_event(make_signup("alice"), local_ports(Settings(workdir=workdir)))


def test_encrypt_through_a_push_request(workdir, capfd):
    event = _watermarked_event(workdir)
    response = _client("encrypt").post("/", json=push_body(json.dumps(event).encode()))
    assert response.status_code == 200
    ports = local_ports(Settings(workdir=workdir))
    assert ports.delivery.exists(f"{event['model_id']}.iml")
    (sealed,) = ports.bus.journal(ports.settings.topics.sealed)
    assert sealed["model_id"] == event["model_id"]
    lines = [json.loads(line) for line in capfd.readouterr().err.splitlines() if line.startswith("{")]
    assert any(line["message"] == "step done" and line["severity"] == "INFO" for line in lines)


def test_a_structured_cloudevent_works_too(workdir):
    event = _watermarked_event(workdir)
    headers = {"ce-id": "1", "ce-specversion": "1.0", "ce-source": "//pubsub.googleapis.com/projects/p/topics/t",
               "ce-type": "google.cloud.pubsub.topic.v1.messagePublished"}
    body = {"message": push_body(json.dumps(event).encode())["message"]}
    response = _client("encrypt").post("/", json=body, headers=headers)
    assert response.status_code == 200
    assert local_ports(Settings(workdir=workdir)).delivery.exists(f"{event['model_id']}.iml")


@pytest.mark.parametrize("payload, reason", [
    (b"{not json", "is not valid JSON"),
    (json.dumps({"schema_version": 1}).encode(), "field 'request_id': is required"),
])
def test_a_poison_push_is_acknowledged_and_dead_lettered(workdir, payload, reason):
    response = _client("generate").post("/", json=push_body(payload))
    assert response.status_code == 200  # acknowledged: Pub/Sub must not redeliver it
    ports = local_ports(Settings(workdir=workdir))
    (dead,) = ports.bus.journal(ports.settings.topics.dead_letter)
    assert reason in dead["reason"] and dead["step"] == "generate"


def test_a_message_without_data_is_dead_lettered(workdir):
    headers = {"ce-id": "1", "ce-specversion": "1.0", "ce-source": "//pubsub.googleapis.com/projects/p/topics/t",
               "ce-type": "google.cloud.pubsub.topic.v1.messagePublished"}
    response = _client("expire").post("/", json={"message": {"attributes": {}}}, headers=headers)
    assert response.status_code == 200
    ports = local_ports(Settings(workdir=workdir))
    (dead,) = ports.bus.journal(ports.settings.topics.dead_letter)
    assert dead["reason"] == "not a Pub/Sub push message with base64 data"


def test_a_failing_step_answers_500_so_pubsub_retries(workdir):
    event = _watermarked_event(workdir)
    staged = workdir / "buckets" / "staging" / event["artifact"]
    staged.unlink()
    staged.mkdir()  # storage that cannot be read: a transient fault, not the message's
    client = create_app(target="encrypt", source=MAIN, signature_type="cloudevent")
    client.config["PROPAGATE_EXCEPTIONS"] = False
    response = client.test_client().post("/", json=push_body(json.dumps(event).encode()))
    assert response.status_code == 500
    ports = local_ports(Settings(workdir=workdir))
    assert not ports.bus.journal(ports.settings.topics.dead_letter)


LIGHT_STEPS = """
import json, sys
from pathlib import Path
import functions.main
from functions.chain import STEPS
from functions.runner import Outcome, run_step
from infra.bootstrap import local_ports
from infra.settings import Settings
from tests.helpers import make_signup, watermarked_event

ports = local_ports(Settings(workdir=Path(sys.argv[1])))
event = watermarked_event(make_signup("alice"), ports, b"model")
outcomes = [run_step(STEPS["encrypt"], json.dumps(event).encode(), ports).outcome]
(sealed,) = ports.bus.journal(ports.settings.topics.sealed)
outcomes.append(run_step(STEPS["publish"], json.dumps(sealed).encode(), ports).outcome)
outcomes.append(run_step(STEPS["expire"], b'{"schema_version": 1}', ports).outcome)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "sklearn", "scipy", "numpy"))
print(json.dumps({"outcomes": [o.value for o in outcomes], "heavy": heavy}))
"""


def test_encrypt_publish_and_expire_never_import_tensorflow_or_numpy(tmp_path):
    done = subprocess.run([sys.executable, "-c", LIGHT_STEPS, str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, check=True)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["outcomes"] == ["done", "done", "done"]
    assert report["heavy"] == []


def test_every_step_of_the_chain_has_its_entry_point_and_loads_nothing_before_it_runs():
    """functions/main.py serves every step of functions/chain.py; loading it imports no step module."""
    probe = ("import json, sys; import functions.main as main; from functions.chain import STEPS; "
             "print(json.dumps({'missing': [n for n in STEPS if not callable(getattr(main, n, None))], "
             "'steps': sorted(m for m in sys.modules if m.startswith('functions.steps.'))}))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == {"missing": [], "steps": []}
