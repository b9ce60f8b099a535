"""The pipeline as deployed, through real processes: the Pub/Sub emulator, fake-gcs-server and five
functions-framework servers behind push subscriptions, all started by `iml dev-stack up`.

Under CI=true a missing emulator fails the run; elsewhere these tests skip, saying how to install it.
The stack runs with 1-minute TTLs (the expire test waits them out), 20-second claim leases (the crash test
waits one out) and the test run's base model. Each test makes what it checks, so they pass in any order.
"""
from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
import time

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec

from iml import simulated
from iml import device as devices
from iml import devstack
from functions.chain import STEPS
from iml.devstack import Stack, talking_to
from infra.bootstrap import build_ports
from infra.envelope import open_sealed_bytes
from tests.helpers import TEST_USERS, make_signup, require, verify_model

TTL_MINUTES = 1
LEASE_SECONDS = 20


class Inbox:
    """Every ready and dead-letter message of the stack, gathered as tests wait for theirs."""

    def __init__(self, stack: Stack):
        self.stack = stack
        self.ready: list[dict] = []
        self.dead: list[dict] = []

    def wait_until(self, condition, seconds: float = 180.0) -> None:
        topics = self.stack.settings().topics
        deadline = time.monotonic() + seconds
        while not condition(self):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; ready: {len(self.ready)}, dead letters: "
                                     f"{[d['reason'] for d in self.dead]}")
            self.ready += devstack.pull(self.stack, topics.ready, timeout=2)
            self.dead += devstack.pull(self.stack, topics.dead_letter, timeout=2)

    def ready_for(self, model_id: str) -> list[dict]:
        return [r for r in self.ready if r["model_id"] == model_id]

    def settle(self, seconds: float = 5.0) -> None:
        """Gather for a while more: a second copy of anything would arrive now."""
        deadline = time.monotonic() + seconds
        self.wait_until(lambda box: time.monotonic() > deadline, seconds=seconds + 60)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, base_models_dir, user_data_dir):
    require(shutil.which("gcloud") is not None and shutil.which("java") is not None,
            "the Pub/Sub emulator (gcloud, Java)", "install the Google Cloud CLI with its pubsub-emulator component")
    folder = tmp_path_factory.mktemp("dev-stack")
    overrides = {"IML_MODEL_MAX_AGE_MINUTES": str(TTL_MINUTES), "IML_STAGING_MAX_AGE_MINUTES": str(TTL_MINUTES),
                 "IML_CLAIM_LEASE_SECONDS": str(LEASE_SECONDS), "IML_CLAIM_WAIT_SECONDS": "5"}
    started = devstack.up(folder, "iml-test", env_overrides=overrides, say=lambda line: None,
                          base_models=base_models_dir)
    try:
        for user in TEST_USERS:  # the app backend's part: each user's data in the user-data bucket
            devstack.upload_user_data(started, user, "data.npz", (user_data_dir / user / "data.npz").read_bytes())
        yield started
    finally:
        devstack.down(folder, say=lambda line: None)
        assert not any(devstack.alive(pid) for pid in started.pids.values()), "a process outlived `down`"


@pytest.fixture(scope="module")
def abandoned(stack):
    """A delivered model and a staging object left behind as the stack starts, for expire to find."""
    late = _bucket(stack, "delivery").blob("m-fedcba9876543210fedcba9876543210.iml")
    late.upload_from_string(b"a sealed model nobody fetched")
    leftover = _bucket(stack, "staging").blob("watermarked/m-0123456789abcdef0123456789abcdef.tflite")
    leftover.upload_from_string(b"an abandoned staging envelope")
    return late, leftover


@pytest.fixture(scope="module")
def inbox(stack, abandoned) -> Inbox:
    return Inbox(stack)


@pytest.fixture(scope="module")
def keys() -> dict:
    """Every device key the module makes, to check afterwards that none reached a log."""
    return {}


def _sign_up(stack: Stack, keys: dict, user_id: str, request_id: str = "req-1"):
    key = keys.setdefault(user_id, ec.generate_private_key(ec.SECP256R1()))
    signup = make_signup(user_id, request_id, key)
    devstack.publish(stack, stack.settings().topics.signup, signup.to_dict())
    return signup


def _bucket(stack: Stack, role: str):
    return devstack.storage_client(stack).bucket(f"{stack.project}-{role}")


def test_three_users_get_their_models_through_signed_urls(stack, inbox, keys):
    signups = [_sign_up(stack, keys, user) for user in ("alice", "bob", "carol")]
    inbox.wait_until(lambda box: all(box.ready_for(s.model_id) for s in signups))

    with talking_to(stack):
        ports = build_ports(stack.settings())
    for signup in signups:
        (ready,) = inbox.ready_for(signup.model_id)
        assert "X-Goog-Signature=" in ready["download_url"]
        response = requests.get(ready["download_url"], timeout=30)  # from fake-gcs-server, as a phone would
        assert response.status_code == 200
        header, tflite = open_sealed_bytes(response.content, keys[signup.user_id],
                                           expected_user_id=signup.user_id, expected_model_id=signup.model_id)
        held_out = simulated.digits_user(signup.user_id).held_out
        assert devices.accuracy(tflite, held_out.x, held_out.y) > 0.85
        with talking_to(stack):
            verdict = verify_model(tflite, ports)
        assert verdict.accused == [signup.user_id]


def test_dev_stack_signup_with_data_uploads_it_and_the_model_is_trained_on_it(stack, inbox, keys, tmp_path):
    """`iml dev-stack signup USER --device-key PUB --data FILE`: the file goes to the user-data bucket under the
    user's folder and the signup names it; a file that is no data set is dead-lettered saying so."""
    key = keys.setdefault("oscar", ec.generate_private_key(ec.SECP256R1()))
    device_pub = tmp_path / "device.pub"
    device_pub.write_text(devices.public_key_b64(key))
    good, bad = tmp_path / "oscar.npz", tmp_path / "not-data.npz"
    good.write_bytes(simulated.to_npz(simulated.digits_user("oscar")))
    bad.write_bytes(b"these bytes are no .npz archive")

    def sign_up(data) -> tuple[str, str]:
        run = subprocess.run([sys.executable, "-m", "iml", "dev-stack", "signup", "oscar", "--device-key",
                              str(device_pub), "--data", str(data), "--dir", str(stack.folder)],
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        return re.fullmatch(r"signup (\S+) of oscar published; model (m-[0-9a-f]{32}) is on its way\n",
                            run.stdout).groups()

    def dead_for(request_id: str) -> list[dict]:
        return [d for d in inbox.dead if d.get("message", {}).get("request_id") == request_id]

    (_, trained), (refused, refused_model) = sign_up(good), sign_up(bad)
    inbox.wait_until(lambda box: box.ready_for(trained) and dead_for(refused))
    uploaded = [b.name for b in _bucket(stack, "user-data").list_blobs(prefix="oscar/")]
    assert len(uploaded) == 2 and all(re.fullmatch(r"oscar/[0-9a-f]{16}\.npz", name) for name in uploaded)
    (ready,) = inbox.ready_for(trained)
    sealed = requests.get(ready["download_url"], timeout=30).content
    tflite = open_sealed_bytes(sealed, key, expected_user_id="oscar", expected_model_id=trained)[1]
    held_out = simulated.digits_user("oscar").held_out
    assert devices.accuracy(tflite, held_out.x, held_out.y) > 0.85
    (dead,) = dead_for(refused)
    assert dead["error_type"] == "InvalidUserData" and dead["reason"] == (
        "the data object is not an .npz file (a zip of .npy arrays)")
    assert not inbox.ready_for(refused_model)


def test_a_signup_published_three_times_at_once_makes_one_model_and_a_conflicting_one_is_refused(
        stack, inbox, keys):
    signup = _sign_up(stack, keys, "dave", "req-thrice")
    for _ in range(2):
        devstack.publish(stack, stack.settings().topics.signup, signup.to_dict())
    inbox.wait_until(lambda box: box.ready_for(signup.model_id))
    before = len(inbox.dead)
    conflicting = make_signup("dave", "req-thrice")  # the same request id, another device key
    devstack.publish(stack, stack.settings().topics.signup, conflicting.to_dict())
    inbox.wait_until(lambda box: len(box.dead) > before)
    inbox.settle()

    assert len(inbox.ready_for(signup.model_id)) == 1
    assert [d["error_type"] for d in inbox.dead[before:]] == ["DuplicateRequest"]
    assert inbox.dead[before]["message"]["device_public_key"] == conflicting.device_public_key
    issued = [b for b in _bucket(stack, "evidence").list_blobs(prefix=f"records/{signup.model_id}/")]
    assert [b.name for b in issued] == [f"records/{signup.model_id}/issued.json"]
    assert _bucket(stack, "delivery").blob(f"{signup.model_id}.iml").exists()


def test_a_function_server_killed_mid_request_loses_nothing(stack, inbox, keys):
    """`iml dev-stack restart watermark` kills the server while it works on a model (its claim in the state
    bucket shows it) and starts it again on its port; the message comes back, waits out the dead claimant's
    lease and is taken over."""
    signups = [_sign_up(stack, keys, user) for user in ("kate", "liam")]
    claims = _bucket(stack, "state")
    deadline = time.monotonic() + 180
    while not any(list(claims.list_blobs(prefix=f"claims/watermark/{s.model_id}/")) for s in signups):
        assert time.monotonic() < deadline, "watermark never started on kate's or liam's model"
        time.sleep(0.05)
    restarted = subprocess.run([sys.executable, "-m", "iml", "dev-stack", "restart", "watermark", "--dir",
                                str(stack.folder)], capture_output=True, text=True, timeout=120)
    assert restarted.returncode == 0, restarted.stderr
    assert re.fullmatch(r"killed watermark \(pid \d+\)\nstarted watermark again \(pid \d+\)\n", restarted.stdout)
    inbox.wait_until(lambda box: all(box.ready_for(s.model_id) for s in signups), seconds=300)
    inbox.settle()

    for signup in signups:
        assert len(inbox.ready_for(signup.model_id)) == 1
        records = [b.name for b in _bucket(stack, "evidence").list_blobs(prefix=f"records/{signup.model_id}/")]
        assert records == [f"records/{signup.model_id}/issued.json"]
    epochs = {}
    for blob in claims.list_blobs(prefix="claims/watermark/"):
        model_id, _, epoch = blob.name.removeprefix("claims/watermark/").partition("/")
        epochs.setdefault(model_id, []).append(epoch)
    assert ["000000000", "000000001"] in epochs.values(), \
        f"the killed delivery's claim (0) lapsed and another delivery took the work over (1): {epochs}"
    assert not [b.name for b in _bucket(stack, "staging").list_blobs()
                if any(s.model_id in b.name for s in signups)], "every input consumed once its output was out"


def test_poison_events_are_dead_lettered_and_the_good_ones_around_them_complete(stack, inbox, keys):
    topic = stack.settings().topics.signup
    first = _sign_up(stack, keys, "erin")
    bad_key = make_signup("frank").to_dict() | {"device_public_key": base64.b64encode(b"\x04" + b"\1" * 64).decode()}
    missing_field = {k: v for k, v in make_signup("grace").to_dict().items() if k != "user_id"}
    for data in (json.dumps(bad_key).encode(), b"{not json", json.dumps(missing_field).encode()):
        devstack.publish_raw(stack, topic, data)
    last = _sign_up(stack, keys, "heidi")
    before = len(inbox.dead)
    inbox.wait_until(lambda box: box.ready_for(first.model_id) and box.ready_for(last.model_id)
                     and len(box.dead) >= before + 3)

    inbox.settle()
    assert len(inbox.dead) == before + 3, "each poison message is dead-lettered once"
    reasons = {d["error_type"]: d["reason"] for d in inbox.dead[before:]}
    assert reasons["InvalidDeviceKey"] == "device_public_key is not a point on the P-256 curve"
    assert sorted(d["reason"] for d in inbox.dead[before:] if d["error_type"] == "InvalidEvent") == [
        "invalid event: field '(event)': is not valid JSON", "invalid event: field 'user_id': is required"]
    assert any(d.get("message_base64") == base64.b64encode(b"{not json").decode() for d in inbox.dead[before:])


def test_storage_down_mid_run_loses_nothing(stack, inbox, keys):
    signups = [_sign_up(stack, keys, user) for user in ("ivan", "judy")]
    time.sleep(1)
    assert devstack.stop_process(Stack.load(stack.folder).pids["storage"], crash=True)  # Cloud Storage goes away
    time.sleep(6)
    inbox.wait_until(lambda box: True)
    assert not any(inbox.ready_for(s.model_id) for s in signups), "the outage came too late to matter"
    devstack.restart(stack.folder, "storage", say=lambda line: None)  # on the same port, with the same objects
    inbox.wait_until(lambda box: all(box.ready_for(s.model_id) for s in signups), seconds=300)
    inbox.settle()

    for signup in signups:
        assert len(inbox.ready_for(signup.model_id)) == 1
    ours = {signup.model_id for signup in signups}
    inbox.wait_until(lambda box: not [b for b in _bucket(stack, "staging").list_blobs()
                                      if b.name.rsplit("/", 1)[-1].split(".")[0] in ours], seconds=30)


def test_expire_past_the_ttl_deletes_delivered_and_staging_objects(stack, inbox, abandoned):
    """A sealed model nobody fetched and a staging object nobody consumed (left when the stack started, so
    that their TTL has mostly run by now), and every other delivered model as old, are deleted and recorded."""
    late, leftover = abandoned
    time.sleep(2 + max(0.0, TTL_MINUTES * 60 - min(_age_seconds(late), _age_seconds(leftover))))
    aged = [b.name for b in _bucket(stack, "delivery").list_blobs() if _age_seconds(b) > TTL_MINUTES * 60]

    devstack.publish(stack, stack.settings().topics.expire, {"schema_version": 1, "reason": "test"})
    inbox.wait_until(lambda box: not any(_bucket(stack, "delivery").blob(name).exists() for name in aged)
                     and not leftover.exists(), seconds=60)
    records = {b.name for b in _bucket(stack, "evidence").list_blobs()}
    assert "records/m-0123456789abcdef0123456789abcdef/staging-expired-watermarked.json" in records
    assert f"records/{late.name.split('.')[0]}/expired.json" in records
    assert {f"records/{name.split('.')[0]}/expired.json" for name in aged} <= records  # each deletion


def test_no_secret_reaches_any_log_line(stack, inbox, keys):
    """After a model, a dead letter and an expiry, no log line of any process holds a secret."""
    signup = _sign_up(stack, keys, "mallory")
    devstack.publish(stack, stack.settings().topics.signup, {"schema_version": 1, "poison": True})
    inbox.wait_until(lambda box: box.ready_for(signup.model_id))
    devstack.publish(stack, stack.settings().topics.expire, {"schema_version": 1, "reason": "log check"})
    time.sleep(3)  # the expire step logs as it finishes
    logs = {path.name: path.read_text(errors="replace") for path in (stack.folder / "logs").glob("*.log")}
    secrets = {"a download URL's signature": [re.search(r"X-Goog-Signature=([0-9a-f]+)", r["download_url"]).group(1)
                                               for r in inbox.ready]}
    secrets["a device private key"] = [_private_hex(key) for key in keys.values()]
    local_keys = json.loads((stack.folder / "work" / "kms" / "local-keys.json").read_text())
    secrets["a server key"] = [v for v in _strings(local_keys) if len(v) >= 32]
    url_key = json.loads((stack.folder / "url-signing-key.json").read_text())["private_key"]
    secrets["the URL signing key"] = [line for line in url_key.splitlines() if "PRIVATE KEY" not in line][:3]
    assert all(secrets.values()) and len(logs) == 7
    for name, text in logs.items():
        for what, values in secrets.items():
            assert not any(value in text for value in values), f"{what} is in {name}"
        assert "X-Goog-Signature" not in text and "PRIVATE KEY" not in text, name
    ours = [json.loads(line) for step in STEPS for line in logs[f"{step}.log"].splitlines()
            if line.startswith("{")]
    assert all({"severity", "message"} <= set(line) for line in ours)
    assert {line["message"] for line in ours} >= {"step done", "message dead-lettered", "expiry done"}
    done = {line["step"] for line in ours if line["message"] == "step done" and line.get("model_id") == signup.model_id}
    assert done == {"generate", "watermark", "encrypt", "publish"}  # each step logged its work on mallory's model


def _age_seconds(blob) -> float:
    """How long ago the object was made; infinity once it is gone (an earlier expiry took it)."""
    from datetime import datetime, timezone

    from google.api_core.exceptions import NotFound

    try:
        blob.reload()
    except NotFound:
        return float("inf")
    return (datetime.now(timezone.utc) - blob.time_created).total_seconds()


def _private_hex(key: ec.EllipticCurvePrivateKey) -> str:
    return format(key.private_numbers().private_value, "064x")


def _strings(value) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def test_down_stops_every_process_it_started(tmp_path):
    """`down` stops each process group `up` recorded (a process and its children) and forgets the stack."""
    import os

    folder = tmp_path / "stack"
    (folder / "logs").mkdir(parents=True)
    recorded = Stack(folder, "iml-test")
    nap = f"sleep {600 + os.getpid() % 1000}.5"  # this test's own, to find its processes by
    for name in ("pubsub", "generate"):  # a parent with a child of its own, as gcloud starts Java
        process = subprocess.Popen(["bash", "-c", f"{nap} & wait"], start_new_session=True)
        recorded.pids[name] = process.pid
    recorded.save()
    stopped = devstack.down(folder, say=lambda line: None)
    assert sorted(stopped) == ["generate", "pubsub"]
    assert not any(devstack.alive(pid) for pid in recorded.pids.values())
    assert subprocess.run(["pgrep", "-f", nap], capture_output=True).returncode == 1, "a child outlived `down`"
    with pytest.raises(devstack.DevStackError, match="no dev stack runs in"):
        devstack.down(folder)


def test_down_counts_a_zombie_as_stopped(tmp_path):
    """A stack process that exited but was not reaped by its parent (not us) is gone: `down` returns."""
    parent = subprocess.Popen([sys.executable, "-c", (
        "import os, sys, time\n"
        "child = os.fork()\n"
        "if child == 0:\n    os.setsid(); os._exit(0)\n"  # leads its own group, as stack processes do, and exits
        "print(child, flush=True); time.sleep(600)")], stdout=subprocess.PIPE, text=True)
    try:
        zombie = int(parent.stdout.readline())
        time.sleep(0.5)
        folder = tmp_path / "stack"
        (folder / "logs").mkdir(parents=True)
        recorded = Stack(folder, "iml-test", pids={"pubsub": zombie})
        recorded.save()
        downed = subprocess.run([sys.executable, "-m", "iml", "dev-stack", "down", "--dir", str(folder)],
                                capture_output=True, text=True, timeout=120)  # it hung here before
        assert downed.returncode == 0, downed.stderr
        assert "(1 processes stopped)" in downed.stdout
        assert not (folder / "stack.json").exists()
    finally:
        parent.kill()
        parent.wait()
