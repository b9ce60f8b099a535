"""Taking in an untrusted model file: a bounded copy, its digest, and parsing it in a child process that holds
nothing worth stealing.

A leaked file may be crafted to exploit its parser (LiteRT's flatbuffer reader, Keras, TensorFlow), and the
verifier holds ledger and fingerprint-key access. So:

- `snapshot` copies the file (or a SavedModel folder) into a private folder first, regular files only (a link,
  a pipe or a device is refused) and at most MAX_INPUT_BYTES: the digest and the parse then read the same
  bytes, and nothing outside the copy is reachable through it;
- `read_model_isolated` parses the copy in a fresh Python process (isolated mode: no PYTHON* variables, no
  user site, not the caller's folder) with an environment of six fixed variables (no credentials, no IML_*
  settings, no emulator hosts), an empty folder as home, working and temporary folder, no standard streams
  and no inherited descriptors, limits on address space, CPU time and file size, a wall-time limit, and, where
  the kernel allows it, a network namespace of its own (no network at all). It hands back arrays only: an
  uncompressed NumPy .npz read with pickling off and checked name by name, and a format from a fixed list;
  at most a short reason otherwise. A file that makes the parser fail, crash, hang or exhaust a limit is
  unreadable.
- `probe_activations_isolated` runs the copy on a base model's probe inputs in the same kind of child (the
  probe handed over as a plain .npy) and takes back float32 arrays only, checked the same way: a file that
  fails, crashes or computes values that are not finite there is unreadable, never run in the verifier.
- `shield_this_process` makes the verifier's own process non-dumpable, so a parser that was exploited all the
  same cannot read the verifier's memory or environment through /proc as the same (non-root) user.

What this does not do: the child still runs as the same operating-system user, so it can read the files that
user can read; where files from strangers are verified, run the verifier as a user that cannot read the
local key file (the cloud's keys are never on disk).
"""
from __future__ import annotations

import ctypes
import hashlib
import io
import os
import re
import resource
import signal
import stat
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from watermark.base import LAYER_KINDS
from watermark.errors import UnreadableModel
from watermark.reader import ReadModel

_ROOT = Path(__file__).resolve().parents[1]
_ARRAY = re.compile(r"^(kernel|bias)_(\d{3})$")
_ACTIVATIONS = re.compile(r"^activations_(\d{3})$")
_FORMAT = re.compile(r"^(keras|savedmodel|tflite (float16|float32|int8)(\+(float16|float32|int8)){0,2})$")
_NOTE = re.compile(r"^[A-Za-z0-9 ,()_]{1,160}$")  # watermark.graph's notes: words, op names, counts
_SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,10}$")
EXIT_UNREADABLE = 3
MAX_LAYERS = 256
MAX_FOLDED_NOTES = 500  # a note per rewrite, which removes an op: at most watermark.graph.MAX_OPS
MAX_REASON_BYTES = 2048
MAX_INPUT_BYTES = 2 << 30
_CLONE_NEWUSER, _CLONE_NEWNET = 0x10000000, 0x40000000
_PR_SET_DUMPABLE = 4


@dataclass(frozen=True)
class ReadLimits:
    seconds: float = 120.0  # wall time, TensorFlow's import (about 4 s) included
    memory_bytes: int = 4 << 30  # address space: TensorFlow reads a Keras file within 2 GiB
    output_bytes: int = 1 << 30


def snapshot(path: Path, folder: Path, limit: int = MAX_INPUT_BYTES) -> Path:
    """A private copy of the file or SavedModel folder at `path` inside `folder`: regular files and folders
    only, `limit` bytes in all. Names keep their suffix (Keras needs `.keras`) but nothing else of the caller's."""
    path = Path(path)
    suffix = path.suffix if _SUFFIX.match(path.suffix) else ""
    copy = Path(folder) / f"model{suffix}"
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        raise UnreadableModel("the file cannot be opened") from None
    budget = [limit]
    if stat.S_ISREG(mode):
        _copy_file(path, copy, budget)
    elif stat.S_ISDIR(mode):
        _copy_folder(path, copy, budget)
    else:
        raise UnreadableModel("not a regular file or folder")
    return copy


def _copy_folder(source: Path, target: Path, budget: list[int]) -> None:
    target.mkdir()
    for entry in sorted(os.scandir(source), key=lambda e: e.name):
        if not entry.name.isprintable():
            raise UnreadableModel("the folder holds a file whose name has control characters")
        if entry.is_dir(follow_symlinks=False):
            _copy_folder(Path(entry.path), target / entry.name, budget)
        elif entry.is_file(follow_symlinks=False):
            _copy_file(Path(entry.path), target / entry.name, budget)
        else:
            raise UnreadableModel("the folder holds a link, a pipe or a device, not only files and folders")


def _copy_file(source: Path, target: Path, budget: list[int]) -> None:
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        raise UnreadableModel("the file cannot be opened") from None
    with os.fdopen(fd, "rb") as f, open(target, "wb") as out:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise UnreadableModel("not a regular file")
        for block in iter(lambda: f.read(1 << 20), b""):
            budget[0] -= len(block)
            if budget[0] < 0:
                raise UnreadableModel(f"the model is larger than {MAX_INPUT_BYTES >> 30} GiB")
            out.write(block)


def file_sha256(path: Path) -> str:
    """The file's SHA-256. A folder's is the SHA-256 of its `sha256sum` manifest: one line `HEX  NAME` per file,
    names relative and sorted bytewise, as `find . -type f | sed 's|^./||' | LC_ALL=C sort | xargs sha256sum`
    prints it (run inside the folder), so anyone can reproduce it with standard tools."""
    path = Path(path)
    if not path.is_dir():
        return _sha256_of(path)
    names = sorted((p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()), key=str.encode)
    manifest = "".join(f"{_sha256_of(path / name)}  {name}\n" for name in names)
    return hashlib.sha256(manifest.encode()).hexdigest()


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_model_isolated(path: Path, limits: ReadLimits = ReadLimits()) -> ReadModel:
    """The file's kernels and biases, read by a child process under `limits`."""
    return from_npz(_in_child(path, limits))


def probe_activations_isolated(path: Path, probe: np.ndarray, limits: ReadLimits = ReadLimits()) -> list[np.ndarray]:
    """watermark.reader.probe_activations, run by a child process under `limits`: the file is run on the probe
    inputs there, never here."""
    with tempfile.TemporaryDirectory(prefix="iml-probe-", ignore_cleanup_errors=True) as folder:
        probe_file = Path(folder) / "probe.npy"
        np.save(probe_file, np.asarray(probe, np.float32), allow_pickle=False)
        return activations_from_npz(_in_child(path, limits, probe_file))


def _in_child(path: Path, limits: ReadLimits, probe: Path | None = None) -> bytes:
    """What the child hands back: the arrays it wrote, at most limits.output_bytes; UnreadableModel otherwise."""
    path = Path(path).resolve()
    with tempfile.TemporaryDirectory(prefix="iml-read-", ignore_cleanup_errors=True) as scratch:
        out, reason = Path(scratch) / "weights.npz", Path(scratch) / "reason.txt"
        command = [sys.executable, "-I", "-c",
                   f"import sys; sys.path.insert(0, {str(_ROOT)!r}); from watermark.sandbox import _child; _child()",
                   str(path), str(out), str(reason), str(limits.memory_bytes), str(int(limits.seconds) + 1),
                   str(limits.output_bytes), str(probe or "")]
        environment = {"PATH": os.defpath, "HOME": scratch, "TMPDIR": scratch, "LANG": "C.UTF-8",
                       "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
        # no pipes: a process the child leaves behind can hold nothing open that the verifier waits on
        child = subprocess.Popen(command, cwd=scratch, env=environment, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True,
                                 start_new_session=True)
        try:
            child.wait(timeout=limits.seconds)
        except subprocess.TimeoutExpired:
            raise UnreadableModel(f"the model parser did not finish within {limits.seconds:g} s") from None
        finally:
            _kill(child)
        if child.returncode == EXIT_UNREADABLE:
            said = _read_bounded(reason, MAX_REASON_BYTES).decode("utf-8", "replace")
            raise UnreadableModel("".join(c if c.isprintable() else "?" for c in said).strip() or "unreadable")
        if child.returncode != 0:
            raise UnreadableModel(f"the model parser failed ({_how(child.returncode)})")
        return _read_bounded(out, limits.output_bytes)


def _read_bounded(path: Path, limit: int) -> bytes:
    """At most `limit` bytes of a regular file the child wrote; never through a link, never blocking on a pipe."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        raise UnreadableModel("the model parser handed back nothing") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise UnreadableModel("the model parser handed back something other than a file")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise UnreadableModel("the model parser handed back more than its limit")
    return data


def to_npz(model: ReadModel) -> bytes:
    arrays = {f"kernel_{i:03d}": np.asarray(k, np.float64) for i, k in enumerate(model.kernels)}
    arrays |= {f"bias_{i:03d}": np.asarray(b, np.float64) for i, b in enumerate(model.biases)}
    buffer = io.BytesIO()
    np.savez(buffer, format=np.array(model.format), kinds=np.array(",".join(model.layer_kinds)),
             folded=np.array("\n".join(model.folded)), **arrays)
    return buffer.getvalue()


def from_npz(data: bytes) -> ReadModel:
    """A ReadModel from the child's arrays, refusing anything but float64 kernels (of their kind's dimensions)
    and biases (1-D), known layer kinds and a format from the reader's list. Only stored (uncompressed) members: no archive inflates in the verifier."""
    loaded = _stored_arrays(data, "arrays")
    form = loaded.pop("format", None)
    if form is None or form.dtype.kind != "U" or form.ndim != 0 or not _FORMAT.match(str(form)):
        raise UnreadableModel("the model parser handed back no known format")
    kinds = loaded.pop("kinds", None)
    if kinds is None or kinds.dtype.kind != "U" or kinds.ndim != 0:
        raise UnreadableModel("the model parser handed back no layer kinds")
    kinds = str(kinds).split(",")
    folded = loaded.pop("folded", None)
    if folded is None or folded.dtype.kind != "U" or folded.ndim != 0:
        raise UnreadableModel("the model parser handed back no account of the graph's folding")
    notes = tuple(str(folded).split("\n")) if str(folded) else ()
    if len(notes) > MAX_FOLDED_NOTES or not all(_NOTE.match(note) for note in notes):
        raise UnreadableModel("the model parser handed back an account of the graph's folding it does not write")
    layers: dict[str, dict[int, np.ndarray]] = {"kernel": {}, "bias": {}}
    for name, array in loaded.items():
        match = _ARRAY.match(name)
        if not match or array.dtype != np.float64:
            raise UnreadableModel("the model parser handed back something other than weights")
        layers[match[1]][int(match[2])] = array
    count = len(layers["kernel"])
    if not 0 < count <= MAX_LAYERS or set(layers["kernel"]) != set(range(count)) \
            or set(layers["bias"]) != set(range(count)):
        raise UnreadableModel("the model parser handed back an incomplete set of layers")
    kernels = [layers["kernel"][i] for i in range(count)]
    biases = [layers["bias"][i] for i in range(count)]
    if len(kinds) != count or any(kind not in LAYER_KINDS for kind in kinds) \
            or any(k.ndim != LAYER_KINDS[kind] for k, kind in zip(kernels, kinds)) or any(b.ndim != 1 for b in biases):
        raise UnreadableModel("the model parser handed back weights of the wrong shape")
    return ReadModel(str(form), kernels, biases, kinds, notes)


def activations_to_npz(activations: list[np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **{f"activations_{i:03d}": np.asarray(a, np.float32) for i, a in enumerate(activations)})
    return buffer.getvalue()


def activations_from_npz(data: bytes) -> list[np.ndarray]:
    """The child's activations: stored members only, each 2-D float32 and finite, numbered without a gap
    (watermark.align checks their widths against the kernels)."""
    loaded = _stored_arrays(data, "activations")
    found = {}
    for name, array in loaded.items():
        match = _ACTIVATIONS.match(name)
        if not match or array.dtype != np.float32 or array.ndim != 2 or not np.all(np.isfinite(array)):
            raise UnreadableModel("the model runner handed back something other than activations")
        found[int(match[1])] = array
    if len(found) > MAX_LAYERS or set(found) != set(range(len(found))):
        raise UnreadableModel("the model runner handed back an incomplete set of layers")
    return [found[i] for i in range(len(found))]


def _stored_arrays(data: bytes, what: str) -> dict[str, np.ndarray]:
    """The arrays of an .npz the child wrote; only stored (uncompressed) members: no archive inflates here."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            if any(info.compress_type != zipfile.ZIP_STORED for info in archive.infolist()):
                raise UnreadableModel(f"the model parser handed back compressed {what}")
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            return {name: arrays[name] for name in arrays.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise UnreadableModel(f"the model parser handed back no readable {what} ({type(error).__name__})") from None


def shield_this_process() -> None:
    """Make this process non-dumpable (Linux): its memory and environment are then closed, through /proc and
    ptrace, to other processes of the same non-root user, a parser child exploited by its file included."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: nothing to do
        pass


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
    """In the child: limits and a network of its own first, before a byte of the file is read; then read, and
    write the arrays (or the reason the file is unreadable)."""
    path, out, reason = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    memory, seconds, output = map(int, sys.argv[4:7])
    probe_file = sys.argv[7]
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CPU, (seconds, seconds))
    resource.setrlimit(resource.RLIMIT_FSIZE, (output, output))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    _leave_the_network()
    from watermark.reader import probe_activations, read_model

    try:
        if probe_file:
            result = activations_to_npz(probe_activations(Path(path), np.load(probe_file, allow_pickle=False)))
        else:
            result = to_npz(read_model(Path(path)))
    except UnreadableModel as error:
        _say_unreadable(reason, str(error))
    except MemoryError:
        _say_unreadable(reason, f"the model parser ran out of its {memory >> 20} MiB of memory")
    except Exception as error:  # a parser's defect, met on a crafted file: the file is unreadable all the same
        _say_unreadable(reason, f"the model parser failed ({type(error).__name__})")
    out.write_bytes(result)
    os._exit(0)


def _leave_the_network() -> None:
    """A user and network namespace of its own (no interface but a downed loopback), where the kernel allows
    it; elsewhere the child keeps the network, as documented."""
    unshare = ctypes.CDLL(None, use_errno=True).unshare
    for flags in (_CLONE_NEWUSER | _CLONE_NEWNET, _CLONE_NEWNET):
        if unshare(flags) == 0:
            return


def _say_unreadable(reason: Path, text: str) -> None:
    reason.write_text(text[:MAX_REASON_BYTES])
    os._exit(EXIT_UNREADABLE)
