"""The events between steps: validated at the edge against the JSON Schemas in functions/schemas/.

A failed validation is an InvalidEvent naming the field and the rule it broke, never the value (a value may
be anything, including something secret pasted into the wrong field).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, replace
from functools import lru_cache
from importlib import resources

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from infra.envelope import DevicePublicKey, load_device_public_key
from infra.errors import InvalidEvent, PermanentError

SCHEMA_VERSION = 1


@lru_cache(maxsize=None)
def _validator(name: str) -> Draft202012Validator:
    schema = json.loads(resources.files("functions.schemas").joinpath(f"{name}.v1.json").read_text())
    return Draft202012Validator(schema)


def validate(name: str, data: object) -> dict:
    """`data` when it satisfies schema `name`; otherwise InvalidEvent naming the first broken field."""
    if not isinstance(data, dict):
        raise InvalidEvent("(event)", "must be a JSON object")
    error = best_match(_validator(name).iter_errors(data))
    if error is None:
        return data
    if error.validator == "required":
        missing = [f for f in error.validator_value if f not in error.instance]
        raise InvalidEvent(missing[0], "is required")
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        raise InvalidEvent(extra[0], "is not a field of this event")
    where = ".".join(str(p) for p in error.absolute_path) or "(event)"
    rule = {
        "pattern": f"must match {error.validator_value}",
        "type": f"must be of type {error.validator_value}",
        "const": f"must be {error.validator_value!r}",
        "maxLength": f"must be at most {error.validator_value} characters",
        "minLength": f"must be at least {error.validator_value} characters",
    }.get(error.validator, f"breaks the schema rule '{error.validator}'")
    raise InvalidEvent(where, rule)


def decode_device_key(encoded: str) -> DevicePublicKey:
    """The device key an event carries in base64, decoded once at the edge (infra.envelope.InvalidDeviceKey
    when it is not a usable key)."""
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidEvent("device_public_key", "is not valid base64") from None
    return load_device_public_key(raw)


class _CarriesDeviceKey:
    """An event with `device_public_key` (base64, as on the wire) holds it decoded too, as `device_key`."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "device_key", decode_device_key(self.device_public_key))

    def _wire(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "device_key"}


def model_id_for(user_id: str, request_id: str) -> str:
    """Deterministic, so that a redelivered signup maps to the model it already made."""
    digest = hashlib.sha256(f"iml-model-v1\0{user_id}\0{request_id}".encode()).hexdigest()
    return "m-" + digest[:32]


@dataclass(frozen=True)
class Signup(_CarriesDeviceKey):
    request_id: str
    user_id: str
    device_public_key: str
    data_ref: str | None = None
    device_key: DevicePublicKey = field(init=False, repr=False, compare=False)

    @classmethod
    def parse(cls, data: object) -> "Signup":
        valid = validate("signup", data)
        return cls(valid["request_id"], valid["user_id"], valid["device_public_key"], valid.get("data_ref"))

    @property
    def model_id(self) -> str:
        return model_id_for(self.user_id, self.request_id)

    def to_dict(self) -> dict:
        out = {"schema_version": SCHEMA_VERSION, **self._wire()}
        if self.data_ref is None:
            del out["data_ref"]
        return out


@dataclass(frozen=True)
class ModelEvent(_CarriesDeviceKey):
    """A model on its way: which user and request it is for, the artefact the last step made, and the
    facts measured so far (encrypt writes them into the ledger's IssuedModel record)."""

    request_id: str
    user_id: str
    model_id: str
    device_public_key: str
    base_model_version: str
    recipe: str
    artifact: str
    facts: dict = field(default_factory=dict)
    device_key: DevicePublicKey = field(init=False, repr=False, compare=False)

    @classmethod
    def parse(cls, data: object) -> "ModelEvent":
        valid = validate("model-step", data)
        return cls(**{k: v for k, v in valid.items() if k != "schema_version"})

    def advanced(self, artifact: str, **facts) -> "ModelEvent":
        return replace(self, artifact=artifact, facts={**self.facts, **facts})

    def to_dict(self) -> dict:
        return {"schema_version": SCHEMA_VERSION, **self._wire()}


@dataclass(frozen=True)
class Ready:
    request_id: str
    user_id: str
    model_id: str
    download_url: str
    url_expires_at: str
    sealed_sha256: str
    sealed_size: int

    @property
    def notification_id(self) -> str:
        """One per model, the same in every copy (a retry may publish a second one): consumers deduplicate on it."""
        return f"ready-{self.model_id}"

    @classmethod
    def parse(cls, data: object) -> "Ready":
        valid = validate("ready", data)
        ready = cls(**{k: v for k, v in valid.items() if k not in ("schema_version", "notification_id")})
        if valid["notification_id"] != ready.notification_id:
            raise InvalidEvent("notification_id", "must be 'ready-' followed by the model_id")
        return ready

    def to_dict(self) -> dict:
        return {"schema_version": SCHEMA_VERSION, "notification_id": self.notification_id, **asdict(self)}


@dataclass(frozen=True)
class ExpireTick:
    """The hourly tick; or, naming a deleted user, the order to delete every model of theirs now."""

    reason: str | None = None
    deleted_user_id: str | None = None

    @classmethod
    def parse(cls, data: object) -> "ExpireTick":
        valid = validate("expire", data)
        return cls(valid.get("reason"), valid.get("deleted_user_id"))

    def to_dict(self) -> dict:
        out = {"schema_version": SCHEMA_VERSION}
        out |= {k: v for k, v in asdict(self).items() if v is not None}
        return out


@dataclass(frozen=True)
class Refusal:
    """A step's answer that its message cannot succeed: the message goes to the dead-letter topic with the
    error's text as the reason, after the step's other outputs are routed (publish hands a late model of a
    deleted user to expire, and refuses to announce it)."""

    error: PermanentError
