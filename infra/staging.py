"""The staging envelope: how an artefact rests between two steps without ever resting in plaintext.

A fresh AES-256-GCM data key per object; the data key wrapped by the KMS port. The object's name is the
associated data of both layers, so an envelope copied under another name does not open.

Layout: b"IMLSTG1\\n" | u16 wrapped-key length | wrapped key | 12-byte nonce | ciphertext+tag
"""
from __future__ import annotations

import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from infra.errors import StagedObjectInvalid
from infra.ports import BlobStore, Kms

MAGIC = b"IMLSTG1\n"


def put_staged(store: BlobStore, kms: Kms, name: str, plaintext: bytes) -> bool:
    """Stage `plaintext` under `name` unless an object has that name already (an earlier delivery of the same
    work staged it: that copy stands). True when this call staged it."""
    data_key = AESGCM.generate_key(bit_length=256)
    nonce = os.urandom(12)
    aad = name.encode()
    wrapped = kms.wrap(data_key, aad)
    ciphertext = AESGCM(data_key).encrypt(nonce, plaintext, aad)
    return store.put(name, MAGIC + struct.pack(">H", len(wrapped)) + wrapped + nonce + ciphertext, if_absent=True)


def get_staged(store: BlobStore, kms: Kms, name: str) -> bytes:
    blob = store.get(name)
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + 2:
        raise StagedObjectInvalid(f"staging object {name!r} is not a staging envelope")
    (wrapped_len,) = struct.unpack_from(">H", blob, len(MAGIC))
    start = len(MAGIC) + 2
    wrapped = blob[start : start + wrapped_len]
    nonce = blob[start + wrapped_len : start + wrapped_len + 12]
    ciphertext = blob[start + wrapped_len + 12 :]
    aad = name.encode()
    data_key = kms.unwrap(wrapped, aad)
    try:
        return AESGCM(data_key).decrypt(nonce, ciphertext, aad)
    except (InvalidTag, ValueError):
        raise StagedObjectInvalid(f"staging object {name!r} failed authentication") from None
