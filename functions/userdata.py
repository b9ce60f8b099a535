"""Each simulated user's own data: scikit-learn's bundled handwritten digits, in that user's "handwriting".

The digits ship inside scikit-learn (no download). A user's handwriting is a deterministic function of the
user id: a small rotation, shear, scale and shift of every 8x8 image, a stroke weight and sensor noise. The
data set is split once: the base model learns from one part; users fine-tune on their variation of that
part and are evaluated on their variation of the other part, which no model ever trains on.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

FEATURES = 64
CLASSES = 10
USER_TRAIN_SAMPLES = 500


@dataclass(frozen=True)
class Split:
    x: np.ndarray  # float32, shape (n, 64), values in [0, 1]
    y: np.ndarray  # int64 labels 0..9


@dataclass(frozen=True)
class UserData:
    train: Split
    held_out: Split


@lru_cache(maxsize=1)
def _digits() -> tuple[Split, Split]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    x = (x[order] / 16.0).astype(np.float32)
    y = y[order].astype(np.int64)
    cut = int(0.6 * len(y))
    return Split(x[:cut], y[:cut]), Split(x[cut:], y[cut:])


def base_training_data() -> Split:
    return _digits()[0]


def user_seed(user_id: str, purpose: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{purpose}\0{user_id}".encode()).digest()[:8], "big")


def for_user(user_id: str) -> UserData:
    train_pool, test_pool = _digits()
    rng = np.random.default_rng(user_seed(user_id, "handwriting"))
    style = _Handwriting.draw(rng)
    pick = rng.choice(len(train_pool.y), size=USER_TRAIN_SAMPLES, replace=False)
    return UserData(
        train=Split(style.apply(train_pool.x[pick], rng), train_pool.y[pick]),
        held_out=Split(style.apply(test_pool.x, rng), test_pool.y),
    )


@dataclass(frozen=True)
class _Handwriting:
    matrix: np.ndarray
    offset: np.ndarray
    stroke: float
    noise: float

    @classmethod
    def draw(cls, rng: np.random.Generator) -> "_Handwriting":
        angle = np.deg2rad(rng.uniform(-15, 15))
        shear = rng.uniform(-0.25, 0.25)
        scale = rng.uniform(0.85, 1.15, size=2)
        rotate = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        matrix = rotate @ np.array([[1.0, shear], [0.0, 1.0]]) @ np.diag(1.0 / scale)
        centre = np.array([3.5, 3.5])
        shift = rng.uniform(-0.6, 0.6, size=2)
        return cls(matrix, centre - matrix @ centre + shift, float(rng.uniform(0.6, 1.6)), 0.04)

    def apply(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        from scipy.ndimage import affine_transform

        images = x.reshape(-1, 8, 8)
        warped = np.stack([affine_transform(img, self.matrix, self.offset, order=1, mode="constant") for img in images])
        styled = np.clip(warped, 0.0, 1.0) ** self.stroke
        styled = styled + rng.normal(0.0, self.noise, size=styled.shape)
        return np.clip(styled, 0.0, 1.0).reshape(-1, FEATURES).astype(np.float32)
