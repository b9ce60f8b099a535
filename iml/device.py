"""A simulated phone: its own P-256 key pair, the download of its sealed model, opening it, running it.

Its folder holds `device.key` (PKCS#8 PEM, mode 0600), `device.pub` (the base64 SEC1 point it signs up
with), the sealed download `model.iml` and the decrypted `model.tflite`.
"""
from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from functions.events import Ready
from infra.envelope import open_sealed
from infra.local_storage import fetch_local_url


@dataclass
class Device:
    user_id: str
    folder: Path
    private_key: ec.EllipticCurvePrivateKey

    @classmethod
    def create(cls, folder: Path, user_id: str) -> "Device":
        folder.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        key_path = folder / "device.key"
        key_path.unlink(missing_ok=True)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        device = cls(user_id, folder, key)
        (folder / "device.pub").write_text(device.public_key_b64 + "\n")
        return device

    @property
    def public_key_b64(self) -> str:
        raw = self.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return base64.b64encode(raw).decode()

    def receive(self, ready: Ready, now: datetime) -> bytes:
        """Download the sealed model through its URL, open it, keep both; the decrypted TFLite bytes."""
        sealed = self.folder / "model.iml"
        sealed.write_bytes(fetch_local_url(ready.download_url, now))
        opened = self.folder / "model.tflite"
        open_sealed(sealed, opened, self.private_key, expected_user_id=self.user_id,
                    expected_model_id=ready.model_id)
        return opened.read_bytes()


def predict(tflite: bytes, x: np.ndarray) -> np.ndarray:
    """Class probabilities from the LiteRT interpreter, as the phone computes them."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=tflite)
    source = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(source["index"], list(x.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(source["index"], x.astype(np.float32))
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def accuracy(tflite: bytes, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(predict(tflite, x), axis=1) == y))
