"""The device reference client and the operator's seal command, as their users run them."""
from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT


def iml(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "iml", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=120)


@pytest.mark.parametrize("suite", ["p256", "x25519", "xwing"])
def test_keygen_seal_open_round_trip(tmp_path, suite):
    model = tmp_path / "model.tflite"
    model.write_bytes(bytes(range(256)) * 1000)
    assert iml("device", "keygen", "--out", "phone", "--suite", suite, cwd=tmp_path).returncode == 0
    assert stat.S_IMODE((tmp_path / "phone" / "device.key").stat().st_mode) == 0o600
    sealed = iml("seal", model, "--device-pub", "phone/device.pub", "--user-id", "alice", "--model-id", "m-1",
                 "--out", "model.iml", "--chunk-kib", "16", cwd=tmp_path)
    assert sealed.returncode == 0, sealed.stderr
    opened = iml("device", "open", "model.iml", "--key", "phone/device.key", "--out", "opened.tflite",
                 "--user-id", "alice", "--model-id", "m-1", cwd=tmp_path)
    assert opened.returncode == 0, opened.stderr
    assert (tmp_path / "opened.tflite").read_bytes() == model.read_bytes()


def test_refusals_exit_2_with_the_reason_and_leave_nothing(tmp_path):
    (tmp_path / "model.tflite").write_bytes(b"m" * 50_000)
    iml("device", "keygen", "--out", "phone", cwd=tmp_path)
    iml("device", "keygen", "--out", "other", cwd=tmp_path)
    iml("seal", "model.tflite", "--device-pub", "phone/device.pub", "--user-id", "alice", "--model-id", "m-1",
        "--out", "model.iml", cwd=tmp_path)
    wrong_user = iml("device", "open", "model.iml", "--key", "phone/device.key", "--out", "a", "--user-id", "bob",
                     cwd=tmp_path)
    assert wrong_user.returncode == 2 and "WrongUser" in wrong_user.stderr
    wrong_key = iml("device", "open", "model.iml", "--key", "other/device.key", "--out", "b", cwd=tmp_path)
    assert wrong_key.returncode == 2 and "WrongRecipient" in wrong_key.stderr
    tampered = bytearray((tmp_path / "model.iml").read_bytes())
    tampered[-10] ^= 1
    (tmp_path / "tampered.iml").write_bytes(tampered)
    broken = iml("device", "open", "tampered.iml", "--key", "phone/device.key", "--out", "c", cwd=tmp_path)
    assert broken.returncode == 2 and "ChunkAuthenticationFailed" in broken.stderr
    not_a_key = iml("seal", "model.tflite", "--device-pub", "model.tflite", "--user-id", "a", "--model-id", "m",
                    "--out", "d", cwd=tmp_path)
    assert not_a_key.returncode == 2 and "device_public_key must be SEC1 uncompressed P-256" in not_a_key.stderr
    assert not any((tmp_path / name).exists() for name in "abcd")
