"""Where the shared base model lives in the models store, and reading its kernels without TensorFlow."""
from __future__ import annotations

import io

import numpy as np

from infra.errors import ObjectMissing
from infra.ports import BlobStore

BASE_MODEL_VERSION = "digits-mlp-v1"


def model_key(version: str = BASE_MODEL_VERSION) -> str:
    return f"base/{version}/model.keras"


def kernels_key(version: str = BASE_MODEL_VERSION) -> str:
    """The base model's Dense kernels as .npz: what the watermark is scaled by and the verifier subtracts."""
    return f"base/{version}/kernels.npz"


def kernels_to_bytes(kernels: list[np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, *kernels)
    return buffer.getvalue()


def load_kernels(models: BlobStore, version: str = BASE_MODEL_VERSION) -> list[np.ndarray]:
    try:
        raw = models.get(kernels_key(version))
    except ObjectMissing:
        raise ObjectMissing(f"base model {version!r} is unknown") from None
    with np.load(io.BytesIO(raw)) as arrays:
        return [arrays[f"arr_{i}"] for i in range(len(arrays.files))]
