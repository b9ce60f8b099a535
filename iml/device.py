"""The device side: its key files, and a simulated phone that opens and runs its model. It needs the sealed
format (infra.envelope) and nothing else of the pipeline, as a phone would.

A device folder holds `device.key` (mode 0600: PKCS#8 PEM for P-256 and X25519, the 32-byte seed in a PEM
block for X-Wing), `device.pub` (the base64 public key it signs up with), and once it has downloaded and
opened its model, `model.iml` and `model.tflite`.
"""
from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519

from infra.envelope import (DevicePrivateKey, InvalidDeviceKey, XWingPrivateKey, open_sealed, public_key_bytes,
                            public_key_of)

SUITES = ("p256", "x25519", "xwing")
XWING_PEM = "XWING PRIVATE KEY SEED"


def generate_key(suite: str = "p256") -> DevicePrivateKey:
    return {"p256": lambda: ec.generate_private_key(ec.SECP256R1()), "x25519": x25519.X25519PrivateKey.generate,
            "xwing": XWingPrivateKey.generate}[suite]()


def public_key_b64(key: DevicePrivateKey) -> str:
    """The public key as a signup event carries it."""
    return base64.b64encode(public_key_bytes(public_key_of(key))).decode()


def write_key_files(folder: Path, key: DevicePrivateKey) -> None:
    """`device.key` (created 0600, replacing any old one) and `device.pub`."""
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(key, XWingPrivateKey):
        body = base64.encodebytes(key.seed).decode()
        pem = f"-----BEGIN {XWING_PEM}-----\n{body}-----END {XWING_PEM}-----\n".encode()
    else:
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    key_path = folder / "device.key"
    key_path.unlink(missing_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    (folder / "device.pub").write_text(public_key_b64(key) + "\n")


def load_private_key(path: Path) -> DevicePrivateKey:
    text = path.read_bytes()
    xwing = re.search(rf"-----BEGIN {XWING_PEM}-----(.+?)-----END {XWING_PEM}-----".encode(), text, re.DOTALL)
    if xwing:
        return XWingPrivateKey(base64.b64decode(b"".join(xwing.group(1).split())))
    try:
        key = serialization.load_pem_private_key(text, password=None)
    except (ValueError, TypeError):
        raise InvalidDeviceKey(f"{path} is not a PKCS#8 PEM private key or an X-Wing seed") from None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, x25519.X25519PrivateKey)):
        raise InvalidDeviceKey(f"{path} holds a {type(key).__name__}; devices use P-256, X25519 or X-Wing")
    return key


@dataclass
class Device:
    user_id: str
    folder: Path
    private_key: DevicePrivateKey

    @classmethod
    def create(cls, folder: Path, user_id: str, suite: str = "p256") -> "Device":
        key = generate_key(suite)
        write_key_files(folder, key)
        return cls(user_id, folder, key)

    @property
    def public_key_b64(self) -> str:
        return public_key_b64(self.private_key)

    def receive(self, sealed_bytes: bytes, model_id: str) -> bytes:
        """Keep the downloaded sealed model, open it (refusing another user's or another model); the decrypted
        TFLite bytes, kept beside it."""
        sealed = self.folder / "model.iml"
        sealed.write_bytes(sealed_bytes)
        opened = self.folder / "model.tflite"
        open_sealed(sealed, opened, self.private_key, expected_user_id=self.user_id, expected_model_id=model_id)
        return opened.read_bytes()


def predict(tflite: bytes, x):
    """Class probabilities from the LiteRT interpreter, as the phone computes them."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=tflite)
    source = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(source["index"], list(x.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(source["index"], x.astype(np.float32))
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def accuracy(tflite: bytes, x, y) -> float:
    import numpy as np

    return float(np.mean(np.argmax(predict(tflite, x), axis=1) == y))
