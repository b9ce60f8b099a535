"""The demo's users and their data, for the bundled recipes: what an app backend would write to the
user-data bucket before a signup. The pipeline never simulates: it reads what `data_ref` names.

digits-mlp: scikit-learn's digits in each user's "handwriting", a deterministic function of the user id (a
small rotation, shear, scale and shift of every 8x8 image, a stroke weight and sensor noise). Users fine-tune
on their variation of the base model's training pool and are measured on their variation of the other pool,
which no model ever trains on.
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np

from functions.recipes import Split, UserData
from functions.recipes.digits import pools

USER_TRAIN_SAMPLES = 500


def to_npz(data: UserData) -> bytes:
    """The data object format recipes read (docs/recipes.md): x, y, x_eval, y_eval."""
    buffer = io.BytesIO()
    np.savez(buffer, x=data.train.x, y=data.train.y, x_eval=data.held_out.x, y_eval=data.held_out.y)
    return buffer.getvalue()


def user_data(recipe: str, user_id: str) -> UserData:
    """A simulated user's data for a bundled recipe; KeyError for a recipe the demo cannot simulate."""
    return SIMULATIONS[recipe](user_id)


def user_seed(user_id: str, purpose: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{purpose}\0{user_id}".encode()).digest()[:8], "big")


def digits_user(user_id: str) -> UserData:
    train_pool, test_pool = pools()
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
        return np.clip(styled, 0.0, 1.0).reshape(-1, 64).astype(np.float32)


def exercises_user(user_id: str) -> UserData:
    """The demo's users of exercises-conv are real people: user-001 is person 7 of the data set, ... user-004
    person 10 (the people the base model never saw), then round again."""
    from functions.recipes import exercises

    people = list(exercises.DEMO_PEOPLE)
    return exercises.person(people[(int(user_id.rsplit("-", 1)[-1]) - 1) % len(people)])


SIMULATIONS = {"digits-mlp": digits_user, "exercises-conv": exercises_user}


def put_user_data(store, recipe: str, user_id: str) -> str:
    """Write a simulated user's data where the app backend would (<user_id>/data.npz in a user-data store);
    the signup's data_ref."""
    data_ref = f"{user_id}/data.npz"
    store.put(data_ref, to_npz(user_data(recipe, user_id)))
    return data_ref
