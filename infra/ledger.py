"""The append-only, signed ledger of what was issued to whom, and what was deleted when.

One object per (model id, kind), written create-once, so a step that runs twice leaves one record.
Each record is signed through the KMS port (ECDSA P-256 / SHA-256) over its canonical JSON; a reader
verifies every signature and reports a record that fails instead of using it.
"""
from __future__ import annotations

import base64
import json
import re
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from typing import Iterator

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from infra.errors import ObjectMissing
from infra.ports import BlobStore, Kms

_KIND = re.compile(r"^[a-z][a-z0-9-]{0,40}$")


def record_name(model_id: str, kind: str) -> str:
    """Where the record of `kind` about `model_id` is kept: one object per pair, so a record is created once."""
    return f"records/{model_id}/{kind}.json"


def canonical_json(value: dict) -> bytes:
    """The bytes a signature covers; NaN and infinity are refused (they are not JSON)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


@dataclass(frozen=True)
class IssuedModel:
    """The record of an issued model: who it was made for, from which base and fingerprint key version, what was
    measured, and what was delivered. Encrypt writes it; the verifier, the demo and people read it back."""

    KIND = "issued"

    model_id: str
    user_id: str
    request_id: str
    base_model_version: str
    recipe: str  # the recipe the model was made by (the verifier reads the published base, never the recipe)
    fingerprint_key_id: str  # the fingerprint key version its codeword was derived under
    fingerprint_scheme: str  # what the codeword derives from (watermark.identity.SCHEMES; "" not recorded)
    watermark_strength: float
    accuracy_unwatermarked: float
    accuracy_watermarked: float
    plaintext_sha256: str  # the model as issued, before sealing
    device_key_sha256: str
    sealed_sha256: str
    delivery_object: str
    generated_at: str

    def __post_init__(self) -> None:
        for name, kind in _ISSUED_FIELDS.items():
            value = getattr(self, name)
            if kind == "float":
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ValueError(f"{name} is not a number")
            elif not isinstance(value, str):
                raise ValueError(f"{name} is not a string")

    def fields(self) -> dict:
        """What Ledger.append records (the model id names the record)."""
        return {name: value for name, value in asdict(self).items() if name != "model_id"}

    @classmethod
    def from_record(cls, record: dict) -> "IssuedModel":
        """The record read back; ValueError when it is not one (a field missing, extra, or of the wrong type)."""
        if record.get("kind") != cls.KIND or record.keys() not in _EARLIER_RECORD_KEYS:
            raise ValueError("not an issued-model record")
        return cls(**{name: record.get(name, _EARLIER_DEFAULTS.get(name)) for name in _ISSUED_FIELDS})


_ISSUED_FIELDS = {f.name: f.type for f in fields(IssuedModel)}  # name -> "str" or "float"
_ISSUED_RECORD_KEYS = _ISSUED_FIELDS.keys() | {"kind", "recorded_at"}
# Records written before a field existed read it as "": no recipe; no fingerprint scheme recorded (the verifier
# then scores both schemes a model of that time may carry: watermark.identity).
_EARLIER_DEFAULTS = {"recipe": "", "fingerprint_scheme": ""}
_BEFORE_IDENTITIES = _ISSUED_RECORD_KEYS - {"fingerprint_scheme"}
_EARLIER_RECORD_KEYS = (_ISSUED_RECORD_KEYS, _BEFORE_IDENTITIES, _BEFORE_IDENTITIES - {"recipe"})


@dataclass(frozen=True)
class LedgerEntry:
    name: str
    record: dict
    valid: bool | None  # None: read without checking its signature (check it with Ledger.check)
    problem: str | None = None
    signature: str | None = None  # base64 DER ECDSA, as stored: evidence for a report
    signing_key_id: str | None = None


class Ledger:
    def __init__(self, store: BlobStore, kms: Kms):
        self._store = store
        self._kms = kms

    def append(self, kind: str, model_id: str, facts: dict, at: datetime) -> bool:
        """Record `facts` about `model_id`; False (and nothing written) when that record exists already."""
        if not _KIND.match(kind):
            raise ValueError(f"ledger record kind {kind!r} is not a lowercase identifier")
        record = {**facts, "kind": kind, "model_id": model_id, "recorded_at": at.isoformat()}
        body = {
            "record": record,
            "signature": base64.b64encode(self._kms.sign(canonical_json(record))).decode(),
            "signing_key_id": self._kms.signing_key_id,
        }
        return self._store.put(record_name(model_id, kind), canonical_json(body), if_absent=True)

    def has(self, model_id: str, kind: str) -> bool:
        """Whether a record of `kind` about `model_id` was written."""
        return self._store.exists(record_name(model_id, kind))

    def issue(self, issued: IssuedModel, at: datetime) -> bool:
        """Record an issued model; False (and nothing written) when it was recorded already."""
        return self.append(IssuedModel.KIND, issued.model_id, issued.fields(), at)

    def entries(self, kind: str | None = None, *, checked: bool = True) -> Iterator[LedgerEntry]:
        """Every record (of one kind), each with its signature checked unless `checked` is False (then
        `valid` is None: fast for ranking a million records, and Ledger.check settles the ones that matter)."""
        public_key = serialization.load_pem_public_key(self._kms.public_key_pem()) if checked else None
        suffix = f"/{kind}.json" if kind else ".json"
        for info in self._store.list("records/"):
            if info.name.endswith(suffix):
                yield self._read(info.name, public_key)

    def check(self, entry: LedgerEntry) -> LedgerEntry:
        """The entry, re-read with its signature checked."""
        return self._read(entry.name, serialization.load_pem_public_key(self._kms.public_key_pem()))

    def _read(self, name: str, public_key: ec.EllipticCurvePublicKey | None) -> LedgerEntry:
        """An object that cannot be read (gone since it was listed, or a name no store accepts) is a record
        that fails, never a failure of the reader."""
        try:
            raw = self._store.get(name)
        except (ObjectMissing, ValueError):
            return LedgerEntry(name, {}, False, "the record cannot be read")
        return _verified(name, raw, public_key)


def _verified(name: str, raw: bytes, public_key: ec.EllipticCurvePublicKey | None) -> LedgerEntry:
    try:
        body = json.loads(raw, parse_constant=_not_json)
        record = body["record"]
        signature = base64.b64decode(body["signature"], validate=True)
        if not isinstance(record, dict) or not isinstance(record.get("model_id"), str):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        return LedgerEntry(name, {}, False, "not a ledger record")
    evidence = {"signature": body["signature"], "signing_key_id": body.get("signing_key_id")}
    if public_key is None:
        return LedgerEntry(name, record, None, **evidence)
    try:
        public_key.verify(signature, canonical_json(record), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return LedgerEntry(name, record, False, "signature does not verify", **evidence)
    return LedgerEntry(name, record, True, **evidence)


def _not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")
