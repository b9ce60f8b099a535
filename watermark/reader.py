"""Reading a model's weight layers (Dense and convolution kernels), whatever form it was handed over in.

- `.tflite` (float32, float16, dynamic-range int8, full-integer int8), through the LiteRT interpreter: the
  FULLY_CONNECTED, CONV_2D and DEPTHWISE_CONV_2D ops in execution order, each weight traced back through
  DEQUANTIZE ops to its constant, and dequantized with its scales and zero points (per channel where it has
  them). A Keras Conv1D is a CONV_2D of height 1 there.
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


@dataclass(frozen=True)
class ReadModel:
    format: str  # e.g. "tflite float32", "tflite float16", "tflite int8", "keras"
    kernels: list[np.ndarray]
    biases: list[np.ndarray]
    kinds: list[str] | None = None  # per kernel: watermark.base.LAYER_KINDS; None: all dense

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
    from ai_edge_litert.interpreter import Interpreter

    if len(data) < 8 or data[4:8] != b"TFL3":
        raise UnreadableModel("not a TFLite model (no TFL3 identifier), a Keras file or a SavedModel folder")
    try:
        interpreter = Interpreter(model_content=data)
        ops = interpreter._get_ops_details()  # LiteRT's op graph; no public accessor exists
    except (ValueError, RuntimeError) as error:
        raise UnreadableModel(f"not a readable TFLite model ({_first_line(error)})") from None
    except AttributeError:
        raise UnreadableModel("this LiteRT version does not expose the op graph the reader needs") from None
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    produced_by = {out: op for op in ops for out in op["outputs"]}

    def constant(index: int) -> tuple[np.ndarray, str]:
        for _ in range(len(ops)):  # a crafted graph may chain DEQUANTIZE ops in a circle
            if index not in produced_by or produced_by[index]["op_name"] != "DEQUANTIZE":
                break
            index = int(produced_by[index]["inputs"][0])
        if index not in details:
            raise UnreadableModel("a fully-connected op names a weight tensor the model does not have")
        return _dequantized(interpreter, details[index])

    kernels, biases, layer_kinds, kinds = [], [], [], set()
    for op in ops:
        kind = _OPS.get(op["op_name"])
        if kind is None:
            continue
        if len(op["inputs"]) < 2:
            raise UnreadableModel(f"a {op['op_name']} op has no weight input")
        weights, number_kind = constant(int(op["inputs"][1]))
        source = details.get(int(op["inputs"][0]), {})
        in_channels = int(source["shape"][-1]) if len(source.get("shape", ())) else 0
        kernels.append(_keras_orientation(kind, weights, in_channels))
        kinds.add(number_kind)
        layer_kinds.append(kind)
        out_channels = kernels[-1].shape[-1] * (kernels[-1].shape[2] if kind == "depthwise_conv2d" else 1)
        has_bias = len(op["inputs"]) > 2 and int(op["inputs"][2]) >= 0
        biases.append(constant(int(op["inputs"][2]))[0].ravel() if has_bias else np.zeros(out_channels))
    if not kernels:
        raise UnreadableModel("the TFLite model has no fully-connected or convolution layers")
    return ReadModel(f"tflite {'+'.join(sorted(kinds))}", kernels, biases, layer_kinds)


_OPS = {"FULLY_CONNECTED": "dense", "CONV_2D": "conv2d", "DEPTHWISE_CONV_2D": "depthwise_conv2d"}


def _keras_orientation(kind: str, weights: np.ndarray, in_channels: int) -> np.ndarray:
    """TFLite's weight layout to Keras's: FULLY_CONNECTED (out, in), CONV_2D (out, kh, kw, in),
    DEPTHWISE_CONV_2D (1, kh, kw, in x multiplier), its input's channels telling the multiplier."""
    want = {"dense": 2, "conv2d": 4, "depthwise_conv2d": 4}[kind]
    if weights.ndim != want or 0 in weights.shape:
        raise UnreadableModel(f"a {kind} weight tensor has {weights.ndim} dimensions, not {want}")
    if kind == "dense":
        return weights.T
    if kind == "conv2d":
        return weights.transpose(1, 2, 3, 0)
    if weights.shape[0] != 1 or in_channels <= 0 or weights.shape[3] % in_channels:
        raise UnreadableModel("a depthwise convolution's weights do not match its input's channels")
    return weights[0].reshape(weights.shape[1], weights.shape[2], in_channels, weights.shape[3] // in_channels)


def _dequantized(interpreter, detail: dict) -> tuple[np.ndarray, str]:
    try:
        raw = np.array(interpreter.get_tensor(detail["index"]))
    except ValueError:
        raise UnreadableModel("a weight tensor of the model holds no data (truncated or not constant)") from None
    if raw.dtype in (np.float32, np.float64):
        return raw.astype(np.float64), "float32"
    if raw.dtype == np.float16:
        return raw.astype(np.float64), "float16"
    if raw.dtype in (np.int8, np.uint8, np.int32):  # int32: the biases of a full-integer model
        q = detail["quantization_parameters"]
        scales, zero_points = np.asarray(q["scales"], np.float64), np.asarray(q["zero_points"], np.float64)
        if scales.size == 0:
            raise UnreadableModel("an integer weight tensor has no quantization scale")
        shape = [1] * raw.ndim
        if scales.size > 1:
            dimension = int(q["quantized_dimension"])
            if not (0 <= dimension < raw.ndim and raw.shape[dimension] == scales.size):
                raise UnreadableModel("an integer weight tensor's scales do not match its quantized dimension")
            shape[dimension] = scales.size
        if zero_points.size not in (1, scales.size):
            raise UnreadableModel("an integer weight tensor's zero points do not match its scales")
        offsets = zero_points.reshape(shape) if zero_points.size > 1 else zero_points[0]
        return (raw.astype(np.float64) - offsets) * scales.reshape(shape), "int8"
    raise UnreadableModel(f"weights of type {raw.dtype} are not supported")


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
    from ai_edge_litert.interpreter import Interpreter

    try:
        with warnings.catch_warnings():  # LiteRT warns that keeping every tensor costs memory: it is meant to
            warnings.simplefilter("ignore")
            interpreter = Interpreter(model_content=data, experimental_preserve_all_tensors=True)
        interpreter.allocate_tensors()
        ops = [op for op in interpreter._get_ops_details() if op["op_name"] in _OPS]
        inputs = interpreter.get_input_details()
        details = {d["index"]: d for d in interpreter.get_tensor_details()}
    except (ValueError, RuntimeError, AttributeError) as error:
        raise UnreadableModel(f"the model cannot run ({_first_line(error)})") from None
    if len(inputs) != 1 or tuple(inputs[0]["shape"][1:]) != probe.shape[1:]:
        raise UnreadableModel(f"the model's input is not one tensor of the base model's input shape "
                              f"{list(probe.shape[1:])}")
    entry = inputs[0]
    per_sample = []
    for sample in probe:
        try:
            interpreter.set_tensor(entry["index"], _quantized(sample[None], entry))
            interpreter.invoke()
            per_sample.append([_activation(interpreter, details.get(int(op["inputs"][0]))) for op in ops])
        except (ValueError, RuntimeError) as error:
            raise UnreadableModel(f"the model does not run on the probe inputs ({_first_line(error)})") from None
    return [_rows(np.concatenate([seen[layer] for seen in per_sample])) for layer in range(len(ops))]


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
        raise UnreadableModel(f"not a readable SavedModel ({_first_line(error)})") from None
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


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__
