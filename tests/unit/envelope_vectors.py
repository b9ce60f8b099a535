"""The sealed-envelope test vectors under docs/test-vectors/: how they are made and how a mutation applies.

Regenerate (new random keys and seals; the negative cases' expectations are checked as they are written):

    python -m tests.unit.envelope_vectors
"""
from __future__ import annotations

import hashlib
import json
import struct
from datetime import datetime, timezone
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519

from infra import envelope

FOLDER = Path(__file__).resolve().parents[2] / "docs" / "test-vectors"
PLAINTEXT = bytes(i % 251 for i in range(10_000))
CHUNK_SIZE = 4096
CREATED_AT = datetime(2026, 11, 21, tzinfo=timezone.utc)


def private_key_to_text(key) -> str:
    if isinstance(key, envelope.XWingPrivateKey):
        return key.seed.hex()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def private_key_from_text(suite: str, text: str):
    if suite == "xwing":
        return envelope.XWingPrivateKey(bytes.fromhex(text))
    return serialization.load_pem_private_key(text.encode(), password=None)


def new_key(suite: str):
    return {"p256": lambda: ec.generate_private_key(ec.SECP256R1()),
            "x25519": x25519.X25519PrivateKey.generate,
            "xwing": envelope.XWingPrivateKey.generate}[suite]()


def apply(blob: bytes, mutations: list[dict]) -> bytes:
    """Apply the negative vectors' mutations, in order. Offsets count from the start of the envelope."""
    data = bytearray(blob)
    for m in mutations:
        op = m["op"]
        if op == "xor":  # data[offset] ^= mask
            data[m["offset"]] ^= m["mask"]
        elif op == "truncate":  # keep the first `length` bytes
            del data[m["length"]:]
        elif op == "append":
            data += bytes.fromhex(m["hex"])
        elif op == "swap":  # exchange two equal-length ranges
            a, b, n = m["a"], m["b"], m["length"]
            data[a:a + n], data[b:b + n] = data[b:b + n], data[a:a + n]
        elif op == "set_u32":
            data[m["offset"]:m["offset"] + 4] = struct.pack(">I", m["value"])
        elif op == "replace_header_members":  # change header members and re-encode header_length
            (length,) = struct.unpack_from(">I", data, 8)
            header = json.loads(data[12:12 + length])
            header.update(m["members"])
            encoded = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
            data[8:12 + length] = struct.pack(">I", len(encoded)) + encoded
        else:
            raise ValueError(f"unknown mutation {op!r}")
    return bytes(data)


def layout(blob: bytes) -> dict:
    (header_length,) = struct.unpack_from(">I", blob, 8)
    (key_block_length,) = struct.unpack_from(">H", blob, 12 + header_length)
    payload = 14 + header_length + key_block_length
    return {"header_length": header_length, "key_block_length": key_block_length, "payload_offset": payload}


def negative_cases(base: bytes) -> list[dict]:
    where = layout(base)
    header = base[12:12 + where["header_length"]]
    user_value = 12 + header.index(b'"user_id":"alice"') + len(b'"user_id":"')
    chunk = CHUNK_SIZE + envelope.TAG
    p = where["payload_offset"]
    return [
        {"name": "flipped header byte", "mutations": [{"op": "xor", "offset": user_value, "mask": 1}],
         "error": "WrongRecipient", "why": "the header (user_id alice -> `lice) no longer matches the HPKE info"},
        {"name": "flipped key block byte", "mutations": [{"op": "xor", "offset": p - 5, "mask": 0x80}],
         "error": "WrongRecipient", "why": "the sealed data key does not unseal"},
        {"name": "flipped chunk byte", "mutations": [{"op": "xor", "offset": p + chunk + 100, "mask": 1}],
         "error": "ChunkAuthenticationFailed", "why": "chunk 1's tag fails"},
        {"name": "chunks swapped", "mutations": [{"op": "swap", "a": p, "b": p + chunk, "length": chunk}],
         "error": "ChunkAuthenticationFailed", "why": "chunk 0 was sealed with index 1's nonce"},
        {"name": "truncated inside a chunk", "mutations": [{"op": "truncate", "length": len(base) - 100}],
         "error": "Truncated", "why": "shorter than the header declares"},
        {"name": "final chunk removed", "mutations": [{"op": "truncate", "length": p + 2 * chunk}],
         "error": "Truncated", "why": "ends at a chunk boundary, before the final chunk"},
        {"name": "trailing bytes", "mutations": [{"op": "append", "hex": "00"}],
         "error": "TrailingData", "why": "a byte after the final chunk"},
        {"name": "wrong user id", "mutations": [], "expected_user_id": "mallory",
         "error": "WrongUser", "why": "issued to alice, opened expecting mallory"},
        {"name": "wrong model id", "mutations": [], "expected_model_id": "m-other",
         "error": "WrongModel", "why": "opened expecting another model"},
        {"name": "wrong key", "mutations": [], "open_with": "other_p256",
         "error": "WrongRecipient", "why": "another device's P-256 key"},
        {"name": "key of another suite", "mutations": [], "open_with": "other_x25519",
         "error": "SuiteMismatch", "why": "an X25519 key for a P-256 envelope"},
        {"name": "unknown version", "mutations": [{"op": "xor", "offset": 7, "mask": 3}],
         "error": "UnsupportedVersion", "why": "version byte 2"},
        {"name": "bad magic", "mutations": [{"op": "xor", "offset": 0, "mask": 0x20}],
         "error": "BadMagic", "why": "not IMLSEAL"},
        {"name": "header longer than the file", "mutations": [{"op": "set_u32", "offset": 8, "value": 16000}],
         "error": "Truncated", "why": "header_length runs past the end"},
        {"name": "huge header length", "mutations": [{"op": "set_u32", "offset": 8, "value": 0xFFFFFFFF}],
         "error": "LimitExceeded", "why": "over 16384, refused before reading"},
        {"name": "zero chunk size", "mutations": [{"op": "replace_header_members", "members": {"chunk_size": 0}}],
         "error": "LimitExceeded", "why": "chunk_size must be a power of two from 4096"},
        {"name": "huge declared size",
         "mutations": [{"op": "replace_header_members", "members": {"plaintext_size": 1 << 40}}],
         "error": "Truncated", "why": "declares 1 TiB; refused by size before decrypting, nothing allocated"},
        {"name": "declared size over the limit",
         "mutations": [{"op": "replace_header_members", "members": {"plaintext_size": (1 << 40) + 1}}],
         "error": "LimitExceeded", "why": "over 2^40"},
        {"name": "unknown header member",
         "mutations": [{"op": "replace_header_members", "members": {"comment": "hi"}}],
         "error": "MalformedHeader", "why": "version 1 headers have exactly their members"},
    ]


def main() -> None:
    FOLDER.mkdir(parents=True, exist_ok=True)
    keys = {}
    for suite in ("p256", "x25519", "xwing"):
        key = keys[suite] = new_key(suite)
        public = envelope.public_key_bytes(envelope.public_key_of(key))
        sealed = envelope.seal_bytes(PLAINTEXT, envelope.public_key_of(key), user_id="alice",
                                     model_id=f"m-vector-{suite}", created_at=CREATED_AT, chunk_size=CHUNK_SIZE)
        header, opened = envelope.open_sealed_bytes(sealed, key)
        assert opened == PLAINTEXT
        vector = {
            "suite": envelope.suite_for(key).name,
            "kem_id": header.kem_id,
            "device_private_key": private_key_to_text(key),
            "device_private_key_format": "X-Wing seed, hex" if suite == "xwing" else "PKCS#8 PEM",
            "device_public_key_hex": public.hex(),
            "plaintext": {"size": len(PLAINTEXT), "byte_i": "i mod 251",
                          "sha256": hashlib.sha256(PLAINTEXT).hexdigest()},
            "layout": layout(sealed),
            "sealed_hex": sealed.hex(),
        }
        (FOLDER / f"{suite}.json").write_text(json.dumps(vector, indent=1) + "\n")
    others = {"other_p256": new_key("p256"), "other_x25519": new_key("x25519")}
    base = bytes.fromhex(json.loads((FOLDER / "p256.json").read_text())["sealed_hex"])
    cases = negative_cases(base)
    for case in cases:  # every expectation is checked as it is written
        assert raised_by(case, base, keys["p256"], others) == case["error"], case["name"]
    negative = {"base": "p256.json", "keys": {k: private_key_to_text(v) for k, v in others.items()},
                "cases": cases}
    (FOLDER / "negative.json").write_text(json.dumps(negative, indent=1) + "\n")
    print(f"wrote 3 vectors and {len(cases)} negative cases to {FOLDER}")


def raised_by(case: dict, base: bytes, device_key, others: dict) -> str | None:
    """The name of the envelope error opening the mutated envelope raises, or None when it opens."""
    key = others[case["open_with"]] if "open_with" in case else device_key
    try:
        envelope.open_sealed_bytes(apply(base, case["mutations"]), key,
                                   expected_user_id=case.get("expected_user_id"),
                                   expected_model_id=case.get("expected_model_id"))
    except envelope.EnvelopeError as error:
        return type(error).__name__
    return None


if __name__ == "__main__":
    main()
