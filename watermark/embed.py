"""Embedding: add a small multiple of the codeword to the carrier kernels at the published positions.

The weight at carrier layer l's k-th position moves by strength * s_l * c_k, with s_l the spread (standard
deviation) of the *base* model's kernel l. The verifier knows s_l too (it holds the published base), so it
can weight its correlation the same way without the weights depending on the suspect or on any codeword.
"""
from __future__ import annotations

import numpy as np

from watermark.base import PublishedBase


def embed(carriers: list[np.ndarray], base: PublishedBase, codeword: np.ndarray, strength: float) -> list[np.ndarray]:
    """The carrier kernels (the base's carrier layers, in order, in its shapes) with the codeword added."""
    if codeword.size != base.codeword_length:
        raise ValueError(f"codeword has {codeword.size} signs, the base publishes {base.codeword_length} positions")
    marked, start = [], 0
    for kernel, layer, positions, spread in zip(carriers, base.carriers, base.segments, base.spreads, strict=True):
        if kernel.shape != layer.kernel.shape:
            raise ValueError(f"layer {layer.name!r} has shape {kernel.shape}, the base's {layer.kernel.shape}")
        flat = kernel.ravel().copy()
        flat[positions] += (strength * spread * codeword[start:start + positions.size]).astype(kernel.dtype)
        marked.append(flat.reshape(kernel.shape))
        start += positions.size
    return marked
