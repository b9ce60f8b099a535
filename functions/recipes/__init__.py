"""Recipes: a model owner's contract with the pipeline (docs/recipes.md shows how to write one).

A recipe says which model a user gets and how it is made: the base model (its architecture, the data it
learns from, its published version), the input and output, how one user's data is read, checked and split
into training and held-out parts, how the base model is fine-tuned on it, how the result is evaluated,
which layers carry the fingerprint, and the export for the phone.

Recipes are found through the entry point group `iml.recipes` (a model owner ships theirs in their own
package); `IML_RECIPE` selects one. The bundled recipes are found without their entry points too, so that
a function's source archive, where this project is not installed as a distribution, knows them.

Importing this module does not import TensorFlow: a recipe's methods import it when they run.
"""
from __future__ import annotations

import io
import lzma
import math
import re
import zipfile
import zlib
from dataclasses import dataclass
from functools import lru_cache
from importlib import import_module, metadata

import numpy as np

from infra.errors import PermanentError
from watermark import base

GROUP = "iml.recipes"
DEFAULT = "digits-mlp"
BUNDLED = {  # name -> "module:attribute"; pyproject.toml declares the same entry points (a test checks)
    "digits-mlp": "functions.recipes.digits:DigitsMlp",
    "exercises-conv": "functions.recipes.exercises:ExercisesConv",
}
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,39}$")
DATA_MEMBERS = ("x", "y", "x_eval", "y_eval")


class RecipeNotInstalled(PermanentError):
    """No installed recipe has this name."""


class RecipeError(ValueError):
    """A recipe breaks the contract (a model owner's defect, found when it is loaded)."""


class InvalidUserData(PermanentError):
    """A user's data is missing, unreadable, or does not fit the recipe. The text names the problem, never a
    value of the data (it is the user's)."""


@dataclass(frozen=True)
class Split:
    x: np.ndarray  # float32, shape (n, *input_shape)
    y: np.ndarray  # int64 labels 0 .. classes - 1


@dataclass(frozen=True)
class UserData:
    train: Split  # what the base model is fine-tuned on
    held_out: Split  # what the fine-tuned and the fingerprinted model are measured on; never trained on


class Recipe:
    """Subclass it, set the class attributes and write `build` and `base_training_data`; everything else has a
    default that fits a Keras classifier."""

    name: str = ""  # the entry point's name; what IML_RECIPE and --recipe say
    base_version: str = ""  # the published base model's version: change it whenever the base model changes
    summary: str = ""
    input_shape: tuple[int, ...] = ()  # one sample's shape
    classes: int = 0  # labels are 0 .. classes - 1
    input_range: tuple[float, float] = (0.0, 1.0)  # every input value lies here
    # one user's data
    min_samples: int = 20
    max_samples: int = 20_000
    max_data_bytes: int = 64 * 2**20  # the data object, as stored
    held_out_every: int = 5  # without x_eval/y_eval, every 5th sample is held out
    # fine-tuning, per user
    epochs: int = 15
    learning_rate: float = 1e-3
    batch_size: int = 32
    trainable_layers: tuple[str, ...] | None = None  # layer names; None: every layer trains
    # the base model (iml base publish trains it when no file is given)
    base_epochs: int = 40
    base_seed: int = 0  # the base is published, kept confidential: its seed protects nothing
    # the fingerprint: the layers (by name) whose kernels carry it
    fingerprint_layers: tuple[str, ...] = ()
    probe_samples: int = 256  # inputs published with the base: the watermark step keeps layer means on them

    def build(self):
        """A fresh, uncompiled keras.Model with named layers."""
        raise NotImplementedError

    def base_training_data(self) -> Split:
        """What the base model learns from (used by `iml base publish` without --model)."""
        raise NotImplementedError

    def probe_inputs(self) -> np.ndarray:
        """Model inputs published with the base model: the watermark step keeps each marked layer's mean
        pre-activation on them, so they should look like the users' inputs (the default assumes the base
        training data is shuffled)."""
        return self.base_training_data().x[: self.probe_samples]

    def optimizer(self):
        import keras

        return keras.optimizers.Adam(self.learning_rate)

    def fine_tune(self, base_model, data: Split, seed: int):
        """The base model fine-tuned on one user's training data; its randomness comes from `seed` alone."""
        from functions import model

        return model.fine_tune(self, base_model, data, seed)

    def evaluate(self, keras_model, data: Split) -> float:
        """The recipe's metric on held-out data (higher is better): accuracy by default."""
        from functions import model

        return model.accuracy(keras_model, data)

    def export(self, keras_model) -> bytes:
        """The file a phone runs: TFLite."""
        from functions import model

        return model.to_tflite(keras_model)

    def read_user_data(self, raw: bytes) -> UserData:
        """One user's data from the bytes of their data object (an .npz by default: docs/recipes.md)."""
        return read_npz(self, raw)

    def check(self) -> None:
        """RecipeError naming the first attribute that breaks the contract."""
        problems = [
            (not _NAME.match(self.name), "name must be lowercase letters, digits and dashes"),
            (not base.VERSION.match(self.base_version), "base_version must match " + base.VERSION.pattern),
            (not (self.input_shape and all(isinstance(d, int) and d > 0 for d in self.input_shape)),
             "input_shape must be positive whole numbers"),
            (not (isinstance(self.classes, int) and 2 <= self.classes <= 100_000), "classes must be 2 .. 100000"),
            (not (len(self.input_range) == 2 and all(math.isfinite(v) for v in self.input_range)
                  and self.input_range[0] < self.input_range[1]), "input_range must be finite, low < high"),
            (not 2 <= self.min_samples <= self.max_samples, "min_samples must be 2 .. max_samples"),
            (not 2 <= self.held_out_every, "held_out_every must be at least 2"),
            (not self.fingerprint_layers, "fingerprint_layers must name at least one layer"),
        ]
        for broken, problem in problems:
            if broken:
                raise RecipeError(f"recipe {self.name!r}: {problem}")


def installed() -> dict[str, str]:
    """Every recipe this environment can load: name -> where it comes from ("module:attribute")."""
    found = dict(BUNDLED)
    for entry in metadata.entry_points(group=GROUP):
        found[entry.name] = entry.value
    return dict(sorted(found.items()))


@lru_cache(maxsize=None)
def load(name: str) -> Recipe:
    """The installed recipe `name`, checked; RecipeNotInstalled when there is none."""
    where = installed().get(name)
    if where is None:
        raise RecipeNotInstalled(f"recipe {name!r} is not installed (installed: {', '.join(installed())})")
    module, _, attribute = where.partition(":")
    target = import_module(module)
    for part in attribute.split("."):
        target = getattr(target, part)
    recipe = target() if isinstance(target, type) else target
    if not isinstance(recipe, Recipe):
        raise RecipeError(f"entry point {name!r} ({where}) is not an iml Recipe")
    recipe.check()
    if recipe.name != name:
        raise RecipeError(f"entry point {name!r} ({where}) names itself {recipe.name!r}")
    return recipe


def read_npz(recipe: Recipe, raw: bytes) -> UserData:
    """An .npz of `x`, `y` and optionally `x_eval`, `y_eval`, checked against the recipe: members, sizes (before
    anything is decompressed), dtypes, shapes, finite inputs within the recipe's range, labels within its
    classes, sample counts. InvalidUserData names the first problem."""
    if len(raw) > recipe.max_data_bytes:
        raise InvalidUserData(f"the data object holds {len(raw)} bytes, more than the recipe's "
                              f"{recipe.max_data_bytes}")
    try:
        archive = zipfile.ZipFile(io.BytesIO(raw))
        members = {info.filename: info for info in archive.infolist()}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError):
        raise InvalidUserData("the data object is not an .npz file (a zip of .npy arrays)") from None
    names = {f"{name}.npy" for name in DATA_MEMBERS}
    if set(members) - names or len(members) != len(archive.infolist()):
        raise InvalidUserData(f"the .npz holds an array other than {', '.join(DATA_MEMBERS)} (or one twice)")
    for name in ("x", "y"):
        if f"{name}.npy" not in members:
            raise InvalidUserData(f"the .npz holds no {name!r} array")
    if ("x_eval.npy" in members) != ("y_eval.npy" in members):
        raise InvalidUserData("the .npz must hold both x_eval and y_eval, or neither")
    arrays = {member.removesuffix(".npy"): _array(recipe, archive, members[member]) for member in sorted(members)}
    train = _checked(recipe, arrays["x"], arrays["y"], "x", "y")
    if len(train.y) < recipe.min_samples:
        raise InvalidUserData(f"x holds {len(train.y)} samples, fewer than the recipe's minimum {recipe.min_samples}")
    if "x_eval" in arrays:
        return UserData(train, _checked(recipe, arrays["x_eval"], arrays["y_eval"], "x_eval", "y_eval"))
    every = np.arange(len(train.y)) % recipe.held_out_every == recipe.held_out_every - 1
    return UserData(Split(train.x[~every], train.y[~every]), Split(train.x[every], train.y[every]))


def _array(recipe: Recipe, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    """One .npy member, its header checked before its data is read: a plain little- or big-endian number
    array of at most the recipe's max_samples rows of the recipe's sample size, whose data the member holds
    (so nothing is allocated for a size the member does not have)."""
    name = info.filename.removesuffix(".npy")
    limit = recipe.max_samples * math.prod(recipe.input_shape) * 8
    try:
        with archive.open(info) as member:
            version = np.lib.format.read_magic(member)
            if version not in ((1, 0), (2, 0), (3, 0)):
                raise ValueError
            read_header = {(1, 0): np.lib.format.read_array_header_1_0}.get(version, np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(member)
            if dtype.kind not in "fiu" or dtype.itemsize > 8 or dtype.hasobject or dtype.fields:
                raise InvalidUserData(f"array {name!r} is not a plain numeric array")
            size = math.prod(shape) * dtype.itemsize
            if size > limit or size > info.file_size:
                raise InvalidUserData(f"array {name!r} declares more data than the recipe takes or the file holds")
            data = member.read(size)
        if len(data) != size:
            raise ValueError
        array = np.frombuffer(data, dtype=dtype)
        return array.reshape(shape[::-1]).T if fortran else array.reshape(shape)
    except InvalidUserData:
        raise
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error, lzma.LZMAError,
            NotImplementedError, RuntimeError, OverflowError, MemoryError, TypeError):
        raise InvalidUserData(f"array {name!r} cannot be read (truncated, damaged, or not a plain .npy array)") \
            from None


def _checked(recipe: Recipe, x: np.ndarray, y: np.ndarray, x_name: str, y_name: str) -> Split:
    want = ", ".join(map(str, recipe.input_shape))
    if x.dtype not in (np.float32, np.float64, np.float16):
        raise InvalidUserData(f"{x_name} must hold float32 (or float16/float64) values, not {x.dtype.name}")
    if x.ndim != 1 + len(recipe.input_shape) or tuple(x.shape[1:]) != tuple(recipe.input_shape):
        raise InvalidUserData(f"{x_name} has shape ({', '.join(map(str, x.shape))}); recipe {recipe.name!r} needs "
                              f"(samples, {want})")
    if y.dtype.kind not in "iu":
        raise InvalidUserData(f"{y_name} must hold whole-number labels, not {y.dtype.name}")
    if y.shape != (x.shape[0],):
        raise InvalidUserData(f"{y_name} must hold one label per sample of {x_name} ({x.shape[0]}), it has shape "
                              f"({', '.join(map(str, y.shape))})")
    if not 1 <= x.shape[0] <= recipe.max_samples:
        raise InvalidUserData(f"{x_name} holds {x.shape[0]} samples; the recipe takes 1 to {recipe.max_samples}")
    if not np.all(np.isfinite(x)):
        raise InvalidUserData(f"{x_name} holds a value that is not finite")
    low, high = recipe.input_range
    if np.any(x < low) or np.any(x > high):
        raise InvalidUserData(f"{x_name} holds a value outside the recipe's input range {low:g} .. {high:g}")
    if np.any(y < 0) or np.any(y >= recipe.classes):
        raise InvalidUserData(f"{y_name} holds a label outside 0 .. {recipe.classes - 1}")
    return Split(x.astype(np.float32), y.astype(np.int64))
