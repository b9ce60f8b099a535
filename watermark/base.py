"""A published base model as the models store holds it: what the watermark step scales the fingerprint by
and the verifier subtracts, read without TensorFlow.

    base/<version>/model.keras     the model, for fine-tuning (the recipe's business)
    base/<version>/kernels.npz     its Dense kernels, input to output
"""
from __future__ import annotations

import io

import numpy as np

from infra.errors import ObjectMissing
from infra.ports import BlobStore


def model_key(version: str) -> str:
    return f"base/{version}/model.keras"


def kernels_key(version: str) -> str:
    return f"base/{version}/kernels.npz"


def kernels_to_bytes(kernels: list[np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, *kernels)
    return buffer.getvalue()


def load_kernels(models: BlobStore, version: str) -> list[np.ndarray]:
    try:
        raw = models.get(kernels_key(version))
    except ObjectMissing:
        raise ObjectMissing(f"base model {version!r} is unknown") from None
    with np.load(io.BytesIO(raw), allow_pickle=False) as arrays:
        return [arrays[f"arr_{i}"] for i in range(len(arrays.files))]
