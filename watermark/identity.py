"""Whose fingerprint a codeword is: an identity, and the bytes its codeword seed is derived from.

An identity is (user, base model version) under the scheme "identity-v2": every model a user receives from
one base version carries the same codeword, so comparing a user's own copies reveals nothing of it (they
differ only where their fine-tunes do). Models marked before it carry the scheme "model-v1", whose codeword
was derived from the model id. A record that names no scheme was written by an encrypt step older than
schemes, which may have sealed a model marked either way (the watermark step may be deployed first): both
identities are scored, and both counted in M. No NumPy here: the encrypt step records the scheme.
"""
from __future__ import annotations

from dataclasses import dataclass

from infra.ledger import IssuedModel

IDENTITY_SCHEME = "identity-v2"
MODEL_SCHEME = "model-v1"  # records written before identities: one codeword per model id
SCHEMES = (IDENTITY_SCHEME, MODEL_SCHEME)
_DOMAINS = {IDENTITY_SCHEME: b"iml-fingerprint-identity-v2\0", MODEL_SCHEME: b"iml-fingerprint-v1\0"}


@dataclass(frozen=True)
class Identity:
    """Whose mark a codeword is: the scheme, the fields it derives from, and the fingerprint key version."""

    scheme: str
    subject: tuple[str, ...]  # identity-v2: (user id, base model version); model-v1: (model id,)
    key_id: str

    @classmethod
    def of(cls, scheme: str, *, user_id: str, base_model_version: str, model_id: str, key_id: str) -> Identity:
        """ValueError for a scheme this version does not know, or a field that is not text (a lone surrogate
        read from a crafted record's JSON)."""
        if scheme == IDENTITY_SCHEME:
            identity = cls(scheme, (user_id, base_model_version), key_id)
        elif scheme == MODEL_SCHEME:
            identity = cls(scheme, (model_id,), key_id)
        else:
            raise ValueError(f"{scheme[:40]!r} is not a fingerprint scheme (known: {', '.join(SCHEMES)})")
        try:
            identity.message, key_id.encode()
        except UnicodeEncodeError:
            raise ValueError("the record's identity is not UTF-8 text") from None
        return identity

    @classmethod
    def of_record(cls, issued: IssuedModel) -> list[Identity]:
        """The identities whose codeword the recorded model may carry: the one its scheme names, or, for a record
        that names none, one of each scheme. ValueError as `of`."""
        schemes = [issued.fingerprint_scheme] if issued.fingerprint_scheme else list(SCHEMES)
        return [cls.of(scheme, user_id=issued.user_id, base_model_version=issued.base_model_version,
                       model_id=issued.model_id, key_id=issued.fingerprint_key_id) for scheme in schemes]

    @property
    def message(self) -> bytes:
        """What the key MACs: the scheme's domain, then each field length-prefixed (no two identities share
        one: a user id ending in a version's characters cannot collide with another split)."""
        parts = [field.encode() for field in self.subject]
        if self.scheme == MODEL_SCHEME:  # as written before identities, unprefixed
            return _DOMAINS[MODEL_SCHEME] + parts[0]
        return _DOMAINS[self.scheme] + b"".join(len(part).to_bytes(4, "big") + part for part in parts)
