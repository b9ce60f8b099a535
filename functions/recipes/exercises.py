"""Shoulder exercises from a wrist-worn smartwatch, per real person: a Conv1D network over 2.56 s windows
of accelerometer and gyroscope readings.

The data is the smartwatch study that ships inside the `seglearn` package (BSD-3-Clause; D. M. Burns et al.,
"Shoulder physiotherapy exercise recognition: machine learning the inertial signals from a smartwatch",
Physiological Measurement 39(7), 2018): 10 people, each doing 7 exercises (pendulum, abduction, forward
elevation, internal and external rotation, trapezius extension, upright row) with each arm, 6 channels at
50 Hz. Read from the package's data file without importing seglearn (which needs pandas).

The base model learns from people 1 to 6; people 7 to 10 are the demo's users, each their own data: the first
60% of every recording to fine-tune on, the rest held out (cut before windowing, so no window is in both).
"""
from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np

from functions.recipes import Recipe, Split, UserData

WINDOW, HOP = 128, 64  # 2.56 s at 50 Hz, half overlapping
SCALE = np.array([8.0, 8.0, 8.0, 32.0, 32.0, 32.0], dtype=np.float32)  # accelerometer g, gyroscope rad/s -> [-1, 1]
BASE_PEOPLE = range(1, 7)
DEMO_PEOPLE = range(7, 11)
TRAIN_SHARE = 0.6


@lru_cache(maxsize=1)
def _recordings() -> list[tuple[int, int, np.ndarray]]:
    """(person, exercise, readings scaled to [-1, 1]) for each of the 140 recordings."""
    spec = importlib.util.find_spec("seglearn")  # located, not imported
    if spec is None or spec.origin is None:
        raise RuntimeError("the seglearn package (which ships the smartwatch data) is not installed")
    path = Path(spec.origin).parent / "data" / "watch_dataset.npy"
    data = np.load(path, allow_pickle=True).item()  # a dict, as the installed package ships it
    return [(int(person), int(exercise), np.clip(np.asarray(x, np.float32) / SCALE, -1.0, 1.0))
            for x, exercise, person in zip(data["X"], data["y"], data["subject"])]


def _windows(readings: np.ndarray) -> np.ndarray:
    starts = range(0, len(readings) - WINDOW + 1, HOP)
    return np.stack([readings[s:s + WINDOW] for s in starts]) if len(readings) >= WINDOW else np.zeros((0, WINDOW, 6))


def _split(parts: list[tuple[np.ndarray, int]]) -> Split:
    x = np.concatenate([_windows(r) for r, _ in parts]).astype(np.float32)
    y = np.concatenate([np.full(len(_windows(r)), label) for r, label in parts]).astype(np.int64)
    return Split(x, y)


def person(number: int) -> UserData:
    """One person's data: the first 60% of each of their recordings to train on, the rest held out."""
    mine = [(readings, exercise) for who, exercise, readings in _recordings() if who == number]
    if not mine:
        raise KeyError(f"the data set has no person {number}")
    cut = [int(TRAIN_SHARE * len(readings)) for readings, _ in mine]
    return UserData(_split([(r[:c], e) for (r, e), c in zip(mine, cut)]),
                    _split([(r[c:], e) for (r, e), c in zip(mine, cut)]))


class ExercisesConv(Recipe):
    name = "exercises-conv"
    base_version = "exercises-conv-v2"  # v1: the probe inputs were the first 256 windows, all of person 1
    summary = "smartwatch shoulder exercises of real people (seglearn), Conv1D 16-32 + Dense 64-7"
    input_shape = (WINDOW, 6)
    classes = 7
    input_range = (-1.0, 1.0)
    min_samples = 50
    epochs = 20
    learning_rate = 5e-4
    base_epochs = 30
    # the Dense layer after the convolutions: marking conv_2 too at the default strength cost up to 4.4 accuracy
    # points on these users' held-out data, the classes layer up to 2.2, this layer alone none (docs/recipes.md)
    fingerprint_layers = ("hidden",)

    def build(self):
        import keras

        return keras.Sequential([
            keras.Input(self.input_shape),
            keras.layers.Conv1D(16, 5, padding="same", activation="relu", name="conv_1"),
            keras.layers.MaxPooling1D(2),
            keras.layers.Conv1D(32, 5, padding="same", activation="relu", name="conv_2"),
            keras.layers.MaxPooling1D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu", name="hidden"),
            keras.layers.Dense(self.classes, activation="softmax", name="classes"),
        ])

    def probe_inputs(self) -> np.ndarray:
        """Windows of every base person, evenly spaced: the watermark step keeps layer means on these."""
        x = self.base_training_data().x
        return x[np.linspace(0, len(x) - 1, self.probe_samples).astype(np.int64)]

    def base_training_data(self) -> Split:
        people = [person(number) for number in BASE_PEOPLE]
        return Split(np.concatenate([p.train.x for p in people] + [p.held_out.x for p in people]),
                     np.concatenate([p.train.y for p in people] + [p.held_out.y for p in people]))
