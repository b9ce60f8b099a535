"""Reading an untrusted model file in a child process that holds nothing worth stealing.

A leaked file may be crafted to exploit its parser (LiteRT's flatbuffer reader, Keras, TensorFlow). The
verifier holds ledger and fingerprint-key access, so the file is parsed apart: a fresh Python process
(isolated mode: no PYTHON* variables, no user site, not the caller's folder) with an environment of a few
fixed variables (no credentials, no IML_* settings, no emulator hosts), a fresh empty folder as its home,
working and temporary folder, no standard input, no inherited descriptors, and limits on address space,
CPU time, file size and wall time. It hands back arrays only: a NumPy .npz read with pickling off and
checked name by name. A file that makes the parser fail, crash, hang or exhaust a limit is unreadable.

What this does not do: the child runs as the same operating-system user, so it could read files that user
can read; a deployment that verifies files from strangers should run the verifier as a user that cannot read
the local key file, or on a machine that holds none (the cloud KMS keys are never on disk).
"""
from __future__ import annotations

import io
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from watermark.errors import UnreadableModel
from watermark.reader import ReadModel

_ROOT = Path(__file__).resolve().parents[1]
_NAME = re.compile(r"^(kernel|bias)_(\d{3})$")
EXIT_UNREADABLE = 3
MAX_LAYERS = 256
MAX_FORMAT_CHARS = 200


@dataclass(frozen=True)
class ReadLimits:
    seconds: float = 120.0  # wall time, TensorFlow's import (about 4 s) included
    memory_bytes: int = 4 << 30  # address space: TensorFlow reads a Keras file within 2 GiB
    output_bytes: int = 1 << 30


def read_model_isolated(path: Path, limits: ReadLimits = ReadLimits()) -> ReadModel:
    """The file's dense kernels and biases, read by a child process under `limits`."""
    path = Path(path).resolve()
    with tempfile.TemporaryDirectory(prefix="iml-read-") as scratch:
        out = Path(scratch) / "weights.npz"
        command = [sys.executable, "-I", "-c",
                   f"import sys; sys.path.insert(0, {str(_ROOT)!r}); from watermark.sandbox import _child; _child()",
                   str(path), str(out), str(limits.memory_bytes), str(int(limits.seconds) + 1),
                   str(limits.output_bytes)]
        environment = {"PATH": os.defpath, "HOME": scratch, "TMPDIR": scratch, "LANG": "C.UTF-8",
                       "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
        child = subprocess.Popen(command, cwd=scratch, env=environment, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, close_fds=True,
                                 start_new_session=True)
        try:
            message, _ = child.communicate(timeout=limits.seconds)
        except subprocess.TimeoutExpired:
            _kill(child)
            raise UnreadableModel(f"the model parser did not finish within {limits.seconds:g} s") from None
        finally:
            _kill(child)
        if child.returncode == EXIT_UNREADABLE:
            raise UnreadableModel(message.decode("utf-8", "replace").strip()[:500] or "unreadable")
        if child.returncode != 0:
            raise UnreadableModel(f"the model parser failed ({_how(child.returncode)})")
        if not out.is_file() or out.stat().st_size > limits.output_bytes:
            raise UnreadableModel("the model parser handed back no weights")
        return from_npz(out.read_bytes())


def to_npz(model: ReadModel) -> bytes:
    arrays = {f"kernel_{i:03d}": np.asarray(k, np.float64) for i, k in enumerate(model.kernels)}
    arrays |= {f"bias_{i:03d}": np.asarray(b, np.float64) for i, b in enumerate(model.biases)}
    buffer = io.BytesIO()
    np.savez(buffer, format=np.array(model.format[:MAX_FORMAT_CHARS]), **arrays)
    return buffer.getvalue()


def from_npz(data: bytes) -> ReadModel:
    """A ReadModel from the child's arrays, refusing anything but float64 kernels (2-D) and biases (1-D)."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            loaded = {name: arrays[name] for name in arrays.files}
    except (ValueError, OSError, EOFError) as error:
        raise UnreadableModel(f"the model parser handed back no readable arrays ({type(error).__name__})") from None
    form = loaded.pop("format", None)
    if form is None or form.dtype.kind != "U" or form.ndim != 0 or len(str(form)) > MAX_FORMAT_CHARS:
        raise UnreadableModel("the model parser handed back no format")
    layers: dict[str, dict[int, np.ndarray]] = {"kernel": {}, "bias": {}}
    for name, array in loaded.items():
        match = _NAME.match(name)
        if not match or array.dtype != np.float64:
            raise UnreadableModel("the model parser handed back something other than weights")
        layers[match[1]][int(match[2])] = array
    count = len(layers["kernel"])
    if not 0 < count <= MAX_LAYERS or set(layers["kernel"]) != set(range(count)) \
            or set(layers["bias"]) != set(range(count)):
        raise UnreadableModel("the model parser handed back an incomplete set of layers")
    kernels = [layers["kernel"][i] for i in range(count)]
    biases = [layers["bias"][i] for i in range(count)]
    if any(k.ndim != 2 for k in kernels) or any(b.ndim != 1 for b in biases):
        raise UnreadableModel("the model parser handed back weights of the wrong shape")
    return ReadModel(str(form), kernels, biases)


def _kill(child: subprocess.Popen) -> None:
    """The child and anything it started in its session."""
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    child.wait()


def _how(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


def _child() -> None:
    """In the child: limits first, before a byte of the file is read; then read, and write the arrays."""
    path, out, memory, seconds, output = sys.argv[1], Path(sys.argv[2]), *map(int, sys.argv[3:6])
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CPU, (seconds, seconds))
    resource.setrlimit(resource.RLIMIT_FSIZE, (output, output))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    from watermark.reader import read_model

    try:
        model = read_model(Path(path))
    except UnreadableModel as error:
        _say_unreadable(str(error))
    except MemoryError:
        _say_unreadable(f"the model parser ran out of its {memory >> 20} MiB of memory")
    except Exception as error:  # a parser's defect, met on a crafted file: the file is unreadable all the same
        _say_unreadable(f"the model parser failed ({type(error).__name__})")
    out.write_bytes(to_npz(model))
    sys.stdout.flush()
    os._exit(0)


def _say_unreadable(reason: str) -> None:
    sys.stdout.write(reason)
    sys.stdout.flush()
    os._exit(EXIT_UNREADABLE)
