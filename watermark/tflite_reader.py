"""Reading a model's Dense kernels back out of a .tflite file, through the LiteRT interpreter.

TFLite stores a fully-connected layer's weights as [out, in], the transpose of Keras' [in, out] kernel; the
reader finds each base kernel's tensor by that shape and returns it in Keras orientation.
"""
from __future__ import annotations

import numpy as np


class UnreadableModel(ValueError):
    """The file is not a TFLite model, or not one of the base model's architecture."""


def read_kernels(tflite: bytes, kernel_shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter

    try:
        interpreter = Interpreter(model_content=tflite)
    except (ValueError, RuntimeError) as error:
        raise UnreadableModel(f"not a readable TFLite model ({_first_line(error)})") from None
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for detail in interpreter.get_tensor_details():
        if detail["dtype"] == np.float32 and len(detail["shape"]) == 2:
            by_shape.setdefault(tuple(int(d) for d in detail["shape"]), []).append(detail["index"])
    kernels = []
    for shape in kernel_shapes:
        candidates = by_shape.get((shape[1], shape[0]), [])
        if len(candidates) != 1:
            raise UnreadableModel(
                f"expected one float32 weight tensor of shape {shape[1]}x{shape[0]}, found {len(candidates)}: "
                "the model is not of the base model's architecture (or is quantized, not yet supported)"
            )
        kernels.append(np.array(interpreter.get_tensor(candidates[0])).T.copy())
    return kernels


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__
