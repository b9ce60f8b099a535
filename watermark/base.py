"""A published base model, as the models bucket holds it: what the watermark step marks against and the
verifier subtracts, read without TensorFlow and without the recipe that made it.

    base/<version>/model.keras     the model, for fine-tuning (generate)
    base/<version>/weights.npz     every weight layer's kernel (input to output), the carrier positions, the
                                   recipe's probe inputs
    base/<version>/manifest.json   the recipe, input and output, each weight layer's name, kind, shape and
                                   whether it carries the fingerprint, the codeword length, the other two
                                   objects' SHA-256; written last: a version is published once it is there

Carrier positions: the fingerprint lives in the kernels of the layers the recipe names, at most
MAX_POSITIONS weights of them. When those kernels hold more, the positions are a uniform sample without
replacement, drawn once per base version from a generator seeded with SHA-256 of the version (no user
enters it), sorted, and published: the verifier reads them, it never draws them again.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from infra.errors import ObjectMissing, PermanentError
from infra.ports import BlobStore

MAX_POSITIONS = 65_536
LAYER_KINDS = {"dense": 2, "conv1d": 3, "conv2d": 4, "depthwise_conv2d": 4}  # kind -> its kernel's dimensions
FORMAT = 1
HEADS = ("softmax", "other")  # what the output is made of the last weight layer's output
VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # it names a folder of the models bucket


class BaseNotPublished(PermanentError):
    """No base model of this version is published (`iml base publish` publishes one)."""


class BaseInvalid(PermanentError):
    """The published objects of a base version do not agree with each other."""


def model_key(version: str) -> str:
    return f"base/{version}/model.keras"


def weights_key(version: str) -> str:
    return f"base/{version}/weights.npz"


def manifest_key(version: str) -> str:
    return f"base/{version}/manifest.json"


@dataclass(frozen=True)
class BaseLayer:
    name: str
    kind: str  # a key of LAYER_KINDS
    kernel: np.ndarray  # Keras orientation: dense (in, out), conv2d (kh, kw, in, out), ...
    carrier: bool  # carries the fingerprint


@dataclass(frozen=True)
class PublishedBase:
    version: str
    recipe: str
    input_shape: tuple[int, ...]
    classes: int
    layers: tuple[BaseLayer, ...]
    positions: np.ndarray  # int64, sorted, distinct: indices into the carriers' kernels, raveled and joined
    probe: np.ndarray  # model inputs: the watermark step keeps its marked layers' mean pre-activations on them
    head: str  # a key of HEADS: "softmax" when the output is a softmax of the last weight layer's

    @property
    def carriers(self) -> list[BaseLayer]:
        return [layer for layer in self.layers if layer.carrier]

    @property
    def codeword_length(self) -> int:
        return int(self.positions.size)

    @cached_property
    def segments(self) -> list[np.ndarray]:
        """Per carrier, the raveled indices into its kernel that carry the fingerprint; joined in carrier
        order they line up with the codeword."""
        bounds = np.cumsum([0] + [layer.kernel.size for layer in self.carriers])
        return [self.positions[(self.positions >= lo) & (self.positions < hi)] - lo
                for lo, hi in zip(bounds[:-1], bounds[1:])]

    @cached_property
    def spreads(self) -> list[float]:
        """Each carrier kernel's standard deviation: the unit the fingerprint is embedded and scored in."""
        return [float(np.std(layer.kernel)) for layer in self.carriers]


def select_positions(version: str, carrier_sizes: list[int], limit: int = MAX_POSITIONS) -> np.ndarray:
    """The published carrier positions of a base version (see the top of this module)."""
    total = int(sum(carrier_sizes))
    if total <= limit:
        return np.arange(total, dtype=np.int64)
    seed = int.from_bytes(hashlib.sha256(b"iml-carrier-positions-v1\0" + version.encode()).digest()[:8], "big")
    return np.sort(np.random.default_rng(seed).choice(total, size=limit, replace=False)).astype(np.int64)


def with_positions(version: str, recipe: str, input_shape: tuple[int, ...], classes: int,
                   layers: tuple[BaseLayer, ...], probe: np.ndarray, head: str = "other") -> PublishedBase:
    """A base to publish: its carrier positions selected for `version`."""
    sizes = [layer.kernel.size for layer in layers if layer.carrier]
    return PublishedBase(version, recipe, tuple(input_shape), classes, tuple(layers),
                         select_positions(version, sizes), probe, head)


def published_objects(base: PublishedBase, model_bytes: bytes, published_at: str) -> list[tuple[str, bytes]]:
    """The objects that publish `base`, in the order they must be written (the manifest last)."""
    arrays = {"positions": base.positions, "probe": base.probe,
              **{f"kernel_{i}": layer.kernel for i, layer in enumerate(base.layers)}}
    weights = _npz(arrays)
    manifest = {
        "format": FORMAT,
        "version": base.version,
        "recipe": base.recipe,
        "input_shape": list(base.input_shape),
        "classes": base.classes,
        "head": base.head,
        "layers": [{"name": layer.name, "kind": layer.kind, "shape": list(layer.kernel.shape),
                    "carrier": layer.carrier} for layer in base.layers],
        "codeword_length": base.codeword_length,
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
        "model_sha256": hashlib.sha256(model_bytes).hexdigest(),
        "published_at": published_at,
    }
    return [(model_key(base.version), model_bytes), (weights_key(base.version), weights),
            (manifest_key(base.version), json.dumps(manifest, indent=2, allow_nan=False).encode())]


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    """An .npz that np.load reads, byte for byte the same for the same arrays (np.savez stamps the time)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
            archive.writestr(zipfile.ZipInfo(f"{name}.npy", (1980, 1, 1, 0, 0, 0)), member.getvalue())
    return buffer.getvalue()


def is_published(models: BlobStore, version: str) -> bool:
    return bool(VERSION.match(version)) and models.exists(manifest_key(version))


def manifest(models: BlobStore, version: str) -> dict:
    """The manifest of a published version, its fields checked; BaseNotPublished or BaseInvalid."""
    if not VERSION.match(version):
        raise BaseNotPublished(f"{version!r} is not a base model version")
    try:
        raw = models.get(manifest_key(version))
    except ObjectMissing:
        raise BaseNotPublished(f"base model {version!r} is not published (run `iml base publish`)") from None
    try:
        found = json.loads(raw)
        layers = found["layers"]
        valid = (found["format"] == FORMAT and found["version"] == version and isinstance(found["recipe"], str)
                 and _whole_numbers(found["input_shape"]) and _whole_numbers([found["classes"]])
                 and _whole_numbers([found["codeword_length"]]) and isinstance(layers, list) and 0 < len(layers) <= 256
                 and found.get("head", "other") in HEADS  # manifests written before it: "other"
                 and all(isinstance(found[key], str) for key in ("weights_sha256", "model_sha256"))
                 and all(isinstance(layer, dict) and isinstance(layer.get("name"), str)
                         and layer.get("kind") in LAYER_KINDS and _whole_numbers(layer.get("shape"))
                         and len(layer["shape"]) == LAYER_KINDS[layer["kind"]] and isinstance(layer.get("carrier"), bool)
                         for layer in layers))
    except (ValueError, KeyError, TypeError, RecursionError):
        valid = False
    if not valid:
        raise BaseInvalid(f"base model {version!r}: the manifest is not one this version reads")
    return found


def _whole_numbers(values) -> bool:
    return isinstance(values, list) and all(isinstance(v, int) and not isinstance(v, bool) and 0 < v < 2**31
                                            for v in values)


def load(models: BlobStore, version: str) -> PublishedBase:
    """The published base `version`; BaseNotPublished, or BaseInvalid when its objects disagree or cannot be
    read (the weights are read from stored, uncompressed members only: nothing inflates here)."""
    found = manifest(models, version)
    try:
        raw = models.get(weights_key(version))
    except ObjectMissing:
        raise BaseInvalid(f"base model {version!r}: the manifest names weights that are missing") from None
    if hashlib.sha256(raw).hexdigest() != found["weights_sha256"]:
        raise BaseInvalid(f"base model {version!r}: the weights are not the ones the manifest names")
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as archive:
            if any(info.compress_type != zipfile.ZIP_STORED for info in archive.infolist()):
                raise ValueError
        with np.load(io.BytesIO(raw), allow_pickle=False) as arrays:
            layers = tuple(BaseLayer(spec["name"], spec["kind"], arrays[f"kernel_{i}"].astype(np.float64),
                                     spec["carrier"]) for i, spec in enumerate(found["layers"]))
            positions, probe = arrays["positions"], arrays["probe"]
        base = PublishedBase(version, found["recipe"], tuple(found["input_shape"]), found["classes"], layers,
                             positions.astype(np.int64), probe, found.get("head", "other"))
        _check(base, found)
    except BaseInvalid:
        raise
    except (ValueError, KeyError, TypeError, OSError, EOFError, zipfile.BadZipFile, OverflowError, MemoryError):
        raise BaseInvalid(f"base model {version!r}: the weights cannot be read") from None
    return base


def _check(base: PublishedBase, found: dict) -> None:
    """BaseInvalid naming the first way the weights disagree with the manifest or with themselves."""
    carriers_total = sum(layer.kernel.size for layer in base.carriers)
    checks = [
        (lambda: all(list(layer.kernel.shape) == spec["shape"] for layer, spec in zip(base.layers, found["layers"])),
         "a kernel of another shape than the manifest's"),
        (lambda: bool(base.carriers), "no layer carries the fingerprint"),
        (lambda: all(np.all(np.isfinite(layer.kernel)) for layer in base.layers), "a kernel weight that is not finite"),
        (lambda: all(spread > 0 for spread in base.spreads), "a carrier kernel without spread"),
        (lambda: base.positions.ndim == 1 and 0 < base.positions.size <= MAX_POSITIONS
         and base.positions.size == found["codeword_length"], "carrier positions of another count"),
        (lambda: base.positions[0] >= 0 and base.positions[-1] < carriers_total and np.all(np.diff(base.positions) > 0),
         "carrier positions out of order or range"),
        (lambda: base.probe.dtype.kind == "f" and base.probe.ndim == len(base.input_shape) + 1 and len(base.probe) > 0
         and base.probe.shape[1:] == base.input_shape and bool(np.all(np.isfinite(base.probe))),
         "probe inputs that are not finite model inputs"),
    ]
    for holds, problem in checks:  # in order: each check may rely on the ones before it
        if not holds():
            raise BaseInvalid(f"base model {base.version!r}: {problem}")
