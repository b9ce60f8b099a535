"""Embedding: add a small multiple of the codeword to every Dense kernel.

Layer l moves by strength * s_l * c, with s_l the spread (standard deviation) of the *base* model's kernel
l. The verifier knows s_l too (it holds the base model), so it can weight its correlation the same way
without the weights depending on the suspect or on any codeword.
"""
from __future__ import annotations

import numpy as np


def layer_scales(base_kernels: list[np.ndarray]) -> list[float]:
    return [float(np.std(kernel)) for kernel in base_kernels]


def codeword_length(base_kernels: list[np.ndarray]) -> int:
    return sum(kernel.size for kernel in base_kernels)


def embed(
    kernels: list[np.ndarray], base_kernels: list[np.ndarray], codeword: np.ndarray, strength: float
) -> list[np.ndarray]:
    if codeword.size != codeword_length(base_kernels):
        raise ValueError(f"codeword has {codeword.size} signs, the kernels hold {codeword_length(base_kernels)}")
    marked, start = [], 0
    for kernel, scale in zip(kernels, layer_scales(base_kernels), strict=True):
        segment = codeword[start : start + kernel.size].reshape(kernel.shape)
        marked.append((kernel + strength * scale * segment).astype(kernel.dtype))
        start += kernel.size
    return marked
