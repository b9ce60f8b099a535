"""Whose fingerprint a codeword is: an identity, and the bytes its codeword seed is derived from.

An identity is (user, base model version) under the scheme "identity-v2": every model a user receives from
one base version carries the same codeword, so comparing a user's own copies reveals nothing of it (they
differ only where their fine-tunes do). Records written before it name the scheme "model-v1", whose codeword
was derived from the model id; the verifier reads both. No NumPy here: the encrypt step records the scheme.
"""
from __future__ import annotations

from dataclasses import dataclass

from infra.ledger import IssuedModel

IDENTITY_SCHEME = "identity-v2"
MODEL_SCHEME = "model-v1"  # records written before identities: one codeword per model id
SCHEMES = (IDENTITY_SCHEME, MODEL_SCHEME)
_DOMAINS = {IDENTITY_SCHEME: b"iml-fingerprint-identity-v2\0", MODEL_SCHEME: b"iml-fingerprint-v1\0"}


@dataclass(frozen=True, order=True)
class Identity:
    """Whose mark a codeword is: the scheme, the fields it derives from, and the fingerprint key version."""

    scheme: str
    subject: tuple[str, ...]  # identity-v2: (user id, base model version); model-v1: (model id,)
    key_id: str

    @classmethod
    def of(cls, scheme: str, *, user_id: str, base_model_version: str, model_id: str, key_id: str) -> Identity:
        if scheme == IDENTITY_SCHEME:
            return cls(scheme, (user_id, base_model_version), key_id)
        if scheme == MODEL_SCHEME:
            return cls(scheme, (model_id,), key_id)
        raise ValueError(f"{scheme!r} is not a fingerprint scheme (known: {', '.join(SCHEMES)})")

    @classmethod
    def of_record(cls, issued: IssuedModel) -> Identity:
        """The identity an issued-model record names; ValueError for a scheme this version does not know."""
        return cls.of(issued.fingerprint_scheme, user_id=issued.user_id, base_model_version=issued.base_model_version,
                      model_id=issued.model_id, key_id=issued.fingerprint_key_id)

    def describe(self) -> str:
        return "/".join(self.subject) + f" ({self.scheme})"

    @property
    def message(self) -> bytes:
        """What the key MACs: the scheme's domain, then each field length-prefixed (no two identities share
        one: a user id ending in a version's characters cannot collide with another split)."""
        parts = [field.encode() for field in self.subject]
        if self.scheme == MODEL_SCHEME:  # as written before identities, unprefixed
            return _DOMAINS[MODEL_SCHEME] + parts[0]
        return _DOMAINS[self.scheme] + b"".join(len(part).to_bytes(4, "big") + part for part in parts)
