"""Reading a model's weight layers (Dense and convolution kernels), whatever form it was handed over in.

- `.tflite` (float32, float16, dynamic-range int8, full-integer int8), through the LiteRT interpreter: the
  main graph folded by watermark.graph to the chain of FULLY_CONNECTED, CONV_2D and DEPTHWISE_CONV_2D layers it
  computes (identity layers, split layers, weights computed from constants folded back), each weight
  dequantized with its scales and zero points (per channel where it has them). A Keras Conv1D is a CONV_2D of
  height 1 there.
- `.keras` and SavedModel folders, through TensorFlow (imported only for them).

`probe_activations` runs the same file on the base's probe inputs and gives, per weight layer, the values it
reads there: what each hidden unit sends on, so watermark.align can tell the units that carry the model's
function from those that never fire, and fold copies by what they do rather than by what they hold.

Kernels come back input to output, in Keras orientation (dense (in, out), conv2d (kh, kw, in, out),
depthwise_conv2d (kh, kw, in, multiplier), conv1d (k, in, out)), as float64, each with its kind; their
shapes may differ from the base model's (dummy neurons, channels): alignment is watermark.align's job. A file handed in by a stranger is read
through watermark.sandbox, in a child process that holds nothing worth stealing.
"""
from __future__ import annotations

import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from watermark.errors import UnreadableModel
from watermark.graph import first_line, fold


@dataclass(frozen=True)
class ReadModel:
    format: str  # e.g. "tflite float32", "tflite float16", "tflite int8", "keras"
    kernels: list[np.ndarray]
    biases: list[np.ndarray]
    kinds: list[str] | None = None  # per kernel: watermark.base.LAYER_KINDS; None: all dense
    folded: tuple[str, ...] = ()  # the re-expressions of the file's graph folded back (watermark.graph)

    @property
    def layer_kinds(self) -> list[str]:
        return self.kinds if self.kinds is not None else ["dense"] * len(self.kernels)


def read_model(path: Path) -> ReadModel:
    path = Path(path)
    if path.is_dir():
        return _read_saved_model(path)
    data = path.read_bytes()
    if zipfile.is_zipfile(path):
        return _read_keras(path)
    return read_tflite(data)


def read_tflite(data: bytes) -> ReadModel:
    folded = _folded(data)[1]
    layers = folded.layers
    number_kinds = "+".join(sorted({layer.number for layer in layers}))
    return ReadModel(f"tflite {number_kinds}", [layer.kernel for layer in layers], [layer.bias for layer in layers],
                     [layer.kind for layer in layers], tuple(folded.notes))


def _folded(data: bytes):
    """A LiteRT interpreter of `data` that keeps every tensor, and the file's graph folded (watermark.graph)."""
    from ai_edge_litert.interpreter import Interpreter

    if len(data) < 8 or data[4:8] != b"TFL3":
        raise UnreadableModel("not a TFLite model (no TFL3 identifier), a Keras file or a SavedModel folder")
    try:
        with warnings.catch_warnings():  # LiteRT warns that keeping every tensor costs memory: it is meant to
            warnings.simplefilter("ignore")
            interpreter = Interpreter(model_content=data, experimental_preserve_all_tensors=True)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as error:
        raise UnreadableModel(f"not a readable TFLite model ({first_line(error)})") from None
    return interpreter, fold(interpreter, data)


MAX_ACTIVATION_ROWS = 1 << 16


def probe_activations(path: Path, probe: np.ndarray) -> list[np.ndarray]:
    """Per weight layer, in the reader's order, the tensor it reads on the probe inputs as float32 (rows,
    inputs): a row per probe input (a Dense layer) or per input and position (a convolution: its input
    channels), at most MAX_ACTIVATION_ROWS rows evenly spaced. UnreadableModel if the model does not run on the
    probe inputs; a SavedModel is not run (an empty list)."""
    path = Path(path)
    if path.is_dir():
        return []
    if zipfile.is_zipfile(path):
        return _keras_file_activations(path, probe)
    return tflite_activations(path.read_bytes(), probe)


def tflite_activations(data: bytes, probe: np.ndarray) -> list[np.ndarray]:
    interpreter, folded = _folded(data)
    inputs = interpreter.get_input_details()
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    if len(inputs) != 1 or tuple(inputs[0]["shape"][1:]) != probe.shape[1:]:
        raise UnreadableModel(f"the model's input is not one tensor of the base model's input shape "
                              f"{list(probe.shape[1:])}")
    entry = inputs[0]
    per_sample = []
    for sample in probe:
        try:
            interpreter.set_tensor(entry["index"], _quantized(sample[None], entry))
            interpreter.invoke()
            per_sample.append([_activation(interpreter, details.get(layer.reads)) for layer in folded.layers])
        except (ValueError, RuntimeError) as error:
            raise UnreadableModel(f"the model does not run on the probe inputs ({first_line(error)})") from None
    return [_rows(np.concatenate([seen[layer] for seen in per_sample])) for layer in range(len(folded.layers))]


def _rows(values: np.ndarray) -> np.ndarray:
    """(rows, inputs) float32, at most MAX_ACTIVATION_ROWS rows evenly spaced: a Dense layer's input is a row
    per sample, a convolution's a row per sample and position."""
    values = np.asarray(values)
    values = values.reshape(len(values), -1) if values.ndim <= 2 else values.reshape(-1, values.shape[-1])
    if len(values) > MAX_ACTIVATION_ROWS:
        values = values[np.linspace(0, len(values) - 1, MAX_ACTIVATION_ROWS).astype(np.int64)]
    with np.errstate(over="ignore"):
        values = values.astype(np.float32)
    if not np.all(np.isfinite(values)):
        raise UnreadableModel("the model computes values that are not finite (float32) on the probe inputs")
    return values


def _quantized(values: np.ndarray, detail: dict) -> np.ndarray:
    """Probe inputs in the input tensor's type (an integer model's input is quantized with its scale)."""
    dtype = detail["dtype"]
    if np.issubdtype(dtype, np.floating):
        return values.astype(dtype)
    scale, zero_point = detail["quantization"]
    if not scale:
        raise UnreadableModel("an integer input tensor has no quantization scale")
    limits = np.iinfo(dtype)
    return np.clip(np.rint(values / scale + zero_point), limits.min, limits.max).astype(dtype)


def _activation(interpreter, detail: dict | None) -> np.ndarray:
    """A tensor as float64, dequantized with its scale and zero point."""
    if detail is None:
        raise UnreadableModel("a weight layer reads a tensor the model does not have")
    raw = np.array(interpreter.get_tensor(detail["index"]))
    if raw.ndim == 0 or raw.shape[-1] == 0:
        raise UnreadableModel("a weight layer reads a tensor without channels")
    if np.issubdtype(raw.dtype, np.floating):
        return raw.astype(np.float64)
    scale, zero_point = detail["quantization"]
    return (raw.astype(np.float64) - zero_point) * scale


def _keras_file_activations(path: Path, probe: np.ndarray) -> list[np.ndarray]:
    import keras

    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as error:  # keras raises many types for a zip that is not a model
        raise UnreadableModel(f"not a readable Keras model ({type(error).__name__})") from None
    return keras_activations(model, probe)


def keras_activations(model, probe: np.ndarray) -> list[np.ndarray]:
    """probe_activations of a Keras model in memory."""
    import keras

    try:
        layers = [layer for layer in model.layers if type(layer) in _keras_kinds()]
        reading = keras.Model(model.inputs, [layer.input for layer in layers])
        seen = reading.predict(probe.astype(np.float32), batch_size=256, verbose=0)
    except Exception as error:  # keras raises many types for a model it cannot run
        raise UnreadableModel(f"the model does not run on the probe inputs ({type(error).__name__})") from None
    return [_rows(x) for x in (seen if isinstance(seen, (list, tuple)) else [seen])]


def _read_keras(path: Path) -> ReadModel:
    import keras

    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as error:  # keras raises many types for a zip that is not a model
        raise UnreadableModel(f"not a readable Keras model ({type(error).__name__})") from None
    kinds = _keras_kinds()
    layers = [(layer, kinds[type(layer)]) for layer in model.layers if type(layer) in kinds]
    if not layers:
        raise UnreadableModel("the Keras model has no Dense or convolution layers")
    kernels = [layer.kernel.numpy().astype(np.float64) for layer, _ in layers]
    biases = [layer.bias.numpy().astype(np.float64) if layer.use_bias else np.zeros(kernel.shape[-1])
              for (layer, _), kernel in zip(layers, kernels)]
    return ReadModel("keras", kernels, biases, [kind for _, kind in layers])


def _keras_kinds() -> dict:
    """Keras layer class -> kind (Keras is imported only for Keras files)."""
    import keras

    return {keras.layers.Dense: "dense", keras.layers.Conv1D: "conv1d", keras.layers.Conv2D: "conv2d",
            keras.layers.DepthwiseConv2D: "depthwise_conv2d"}


def _read_saved_model(path: Path) -> ReadModel:
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(path))
    except (OSError, ValueError) as error:
        raise UnreadableModel(f"not a readable SavedModel ({first_line(error)})") from None
    # kernels are the variables of 2 (dense), 3 (conv1d) or 4 (conv2d) dimensions; their names sort in layer
    # order (dense, dense_1, ...)
    ordered = sorted(loaded.variables, key=lambda v: _layer_order(v.name))
    kernels = [v.numpy().astype(np.float64) for v in ordered if len(v.shape) >= 2]
    biases = [v.numpy().astype(np.float64) for v in ordered if len(v.shape) == 1]
    if not kernels:
        raise UnreadableModel("the SavedModel has no kernels")
    kinds = [{2: "dense", 3: "conv1d"}.get(kernel.ndim, "conv2d") for kernel in kernels]
    return ReadModel("savedmodel", kernels, biases, kinds)


def _layer_order(name: str) -> tuple[int, str]:
    import re

    numbers = re.findall(r"_(\d+)/", name)
    return (int(numbers[-1]) if numbers else 0, name)
