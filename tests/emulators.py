"""Starting the real local stand-ins of cloud services for integration tests, as separate processes.

Under CI=true a missing emulator fails the run; elsewhere the tests that need it skip, saying how to install it.
"""
from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from importlib.util import find_spec

import pytest

from iml.devstack import free_port, wait_for_port


def require(available: bool, what: str, install: str) -> None:
    if available:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is missing under CI ({install})")
    pytest.skip(f"{what} is not installed here: {install}")


@contextmanager
def gcs_emulator():
    """gcp-storage-emulator in memory; yields its endpoint (http://127.0.0.1:PORT)."""
    require(find_spec("gcp_storage_emulator") is not None, "gcp-storage-emulator",
            "pip install -e '.[test]' installs it")
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "gcp_storage_emulator", "start", "--port", str(port),
                                "--in-memory", "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, process)
        yield f"http://127.0.0.1:{port}", process
    finally:
        process.terminate()
        process.wait(timeout=10)


@contextmanager
def pubsub_emulator(data_dir):
    """The official Pub/Sub emulator (gcloud beta emulators pubsub start); yields host:port."""
    import shutil

    gcloud = shutil.which("gcloud")
    require(gcloud is not None and shutil.which("java") is not None, "the Pub/Sub emulator (gcloud, Java)",
            "install the Google Cloud CLI with its pubsub-emulator component and a Java runtime")
    port = free_port()
    process = subprocess.Popen([gcloud, "beta", "emulators", "pubsub", "start", f"--host-port=127.0.0.1:{port}",
                                f"--data-dir={data_dir}", "--quiet"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_port(port, process, seconds=60)
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(process.pid, 15)  # gcloud starts the emulator's Java process as its child
        process.wait(timeout=20)
