"""Taking in a stranger's file: a private copy and its digest, and the child process that parses it."""
from __future__ import annotations

import io
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from watermark.errors import UnreadableModel
from watermark import base
from watermark.reader import ReadModel, probe_activations, read_model
from watermark.research import attacks
from watermark.sandbox import ReadLimits, from_npz, probe_activations_isolated, read_model_isolated, to_npz
from tests.helpers import DIGITS_BASE


def test_the_sandbox_reads_what_the_process_itself_reads(crowd, tmp_path):
    path = tmp_path / "leak.tflite"
    path.write_bytes(crowd.source)
    apart, here = read_model_isolated(path), read_model(path)
    assert apart.format == here.format == "tflite float32"
    for got, want in zip(apart.kernels + apart.biases, here.kernels + here.biases, strict=True):
        assert np.array_equal(got, want)


def test_the_sandbox_runs_the_file_on_the_probe_as_the_process_itself_does(crowd, tmp_path):
    """What each weight layer reads on the base's probe inputs: the probe itself first, then each hidden
    layer's outputs (ReLU: never negative), the same apart as here."""
    path = tmp_path / "leak.tflite"
    path.write_bytes(crowd.source)
    probe = base.load(crowd.ports.models, DIGITS_BASE).probe
    apart, here = probe_activations_isolated(path, probe), probe_activations(path, probe)
    assert [a.shape for a in apart] == [(len(probe), 64), (len(probe), 128), (len(probe), 32)]
    assert np.allclose(apart[0], probe.reshape(len(probe), -1))
    assert all(np.array_equal(a, b) for a, b in zip(apart, here, strict=True))
    assert all(np.all(a >= 0) and np.any(a > 0) for a in apart[1:])


def test_a_parser_that_crashes_leaves_no_verdict_and_holds_no_credentials(tmp_path, issued, monkeypatch):
    """The child is killed mid-parse (as a parser that crashes is): unreadable. While it runs, its environment
    holds none of the parent's credentials or settings."""
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/secret/sa.json")
    monkeypatch.setenv("IML_KMS_SIGNING_KEY_VERSION", "projects/p/locations/l/keyRings/r/cryptoKeys/k/"
                                                      "cryptoKeyVersions/1")
    keras_file = tmp_path / "model.keras"
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        attacks.to_keras(issued.models["alice"]).save(keras_file)  # TensorFlow's import keeps the parser busy
    outcome: list[BaseException] = []
    reader = threading.Thread(target=lambda: _capture(outcome, read_model_isolated, keras_file))
    reader.start()
    child = _wait_for_child(str(keras_file))
    environment = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
    names = {entry.split(b"=", 1)[0].decode() for entry in environment if entry}
    assert not {name for name in names if name.startswith(("GOOGLE", "IML_", "STORAGE_", "PUBSUB_"))}
    assert names <= {"PATH", "HOME", "TMPDIR", "LANG", "TF_CPP_MIN_LOG_LEVEL", "CUDA_VISIBLE_DEVICES"}
    os.kill(child, signal.SIGSEGV)
    reader.join(60)
    (error,) = outcome
    assert isinstance(error, UnreadableModel) and "killed by SIGSEGV" in str(error)


def _capture(outcome: list, function, *args) -> None:
    try:
        function(*args)
    except BaseException as error:  # the thread hands any outcome to the test
        outcome.append(error)


def _wait_for_child(argument: str) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    command = (entry / "cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if argument.encode() in command and b"-I" in command:
                    return int(entry.name)
        time.sleep(0.05)
    raise AssertionError("the parser's child process never appeared")


def test_a_parser_out_of_time_or_memory_is_unreadable(crowd, tmp_path):
    path = tmp_path / "leak.tflite"
    path.write_bytes(crowd.source)
    with pytest.raises(UnreadableModel, match="did not finish within 0.01 s"):
        read_model_isolated(path, ReadLimits(seconds=0.01))
    with pytest.raises(UnreadableModel, match="ran out of its 64 MiB of memory|parser failed"):
        read_model_isolated(path, ReadLimits(memory_bytes=64 << 20))


def test_a_handed_back_format_outside_the_readers_list_or_compressed_arrays_are_refused():
    """A parser exploited by its file could smuggle text out through the format, or inflate in the verifier."""
    model = ReadModel("tflite float32", [np.ones((2, 3))], [np.zeros(3)])
    assert from_npz(to_npz(model)).format == "tflite float32"
    with pytest.raises(UnreadableModel, match="no known format"):
        from_npz(to_npz(ReadModel("tflite float32 GOOGLE_APPLICATION_CREDENTIALS=/x", model.kernels, model.biases)))
    squeezed = io.BytesIO()
    np.savez_compressed(squeezed, format=np.array("keras"), kernel_000=np.zeros((2, 3)), bias_000=np.zeros(3))
    with pytest.raises(UnreadableModel, match="compressed"):
        from_npz(squeezed.getvalue())


def test_a_folder_is_taken_in_with_files_only_and_its_digest_is_sha256sum_of_its_manifest(tmp_path):
    import subprocess

    from watermark.sandbox import file_sha256, snapshot

    folder = tmp_path / "saved"
    (folder / "variables").mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"graph")
    (folder / "variables" / "variables.index").write_bytes(b"index")
    copy = snapshot(folder, tmp_path)
    manifest = subprocess.run("find . -type f | sed 's|^./||' | LC_ALL=C sort | xargs sha256sum | sha256sum",
                              shell=True, cwd=folder, capture_output=True, text=True, check=True).stdout.split()[0]
    assert file_sha256(copy) == manifest
    (folder / "variables" / "elsewhere").symlink_to("/etc/hostname")
    (tmp_path / "again").mkdir()
    with pytest.raises(UnreadableModel, match="a link, a pipe or a device"):
        snapshot(folder, tmp_path / "again")
