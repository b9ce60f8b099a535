"""Settings, read once from environment variables (the same names locally and in the cloud).

Every variable, its meaning and default is in the one table in README.md ("Entry points and settings");
tests/unit/test_infra.py keeps that table and this module in step.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Mapping

BACKENDS = ("local", "gcp")
BUCKETS = {"staging": "IML_STAGING_BUCKET", "delivery": "IML_DELIVERY_BUCKET", "models": "IML_MODELS_BUCKET",
           "evidence": "IML_EVIDENCE_BUCKET", "state": "IML_STATE_BUCKET",
           "user-data": "IML_USER_DATA_BUCKET"}  # each bucket's role -> the variable naming it
ROLES = tuple(BUCKETS)
KMS_KINDS = ("local", "cloud")
CLOUD_KMS_KEYS = ("IML_KMS_WRAP_KEY", "IML_KMS_SIGNING_KEY_VERSION", "IML_KMS_FINGERPRINT_KEY_VERSION")
MAX_URL_TTL = timedelta(days=7)  # the V4 signed URL's limit


class SettingsError(ValueError):
    """A setting is missing or out of range; the message names the variable."""


@dataclass(frozen=True)
class Topics:
    """Topic names: one input topic per step, the ready notifications, and the dead letters."""

    signup: str
    generated: str
    watermarked: str
    sealed: str
    ready: str
    expire: str
    dead_letter: str

    @classmethod
    def with_prefix(cls, prefix: str) -> "Topics":
        return cls(*(prefix + name for name in
                     ("signup", "generated", "watermarked", "sealed", "ready", "expire", "dead-letter")))


@dataclass(frozen=True)
class Settings:
    backend: str = "local"
    workdir: Path = Path("iml-work")
    url_ttl: timedelta = timedelta(minutes=15)
    model_max_age: timedelta = timedelta(minutes=60)
    staging_max_age: timedelta = timedelta(minutes=60)
    topic_prefix: str = "iml-"
    user_model_limit: int = 5
    user_limit_period: timedelta = timedelta(hours=24)
    watermark_strength: float = 0.08
    recipe: str = "digits-mlp"  # functions.recipes.DEFAULT
    claim_lease: timedelta = timedelta(seconds=600)  # no push request outlives Pub/Sub's 600 s ack deadline
    claim_wait: timedelta = timedelta(seconds=30)
    kms: str = "local"
    cloud_kms_keys: tuple[str, str, str] | None = None  # wrap key, signing key version, fingerprint key version
    kms_endpoint: str | None = None
    project: str | None = None
    buckets: dict[str, str] | None = None  # with gcp: role (ROLES) -> bucket name
    url_signing_key_file: Path | None = None

    @property
    def topics(self) -> Topics:
        return Topics.with_prefix(self.topic_prefix)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        backend = env.get("IML_BACKEND", "local")
        if backend not in BACKENDS:
            raise SettingsError(f"IML_BACKEND must be one of {', '.join(BACKENDS)}, got {backend!r}")
        project, buckets = None, None
        if backend == "gcp":
            project = env.get("IML_PROJECT") or env.get("GOOGLE_CLOUD_PROJECT")
            missing = [name for name in BUCKETS.values() if not env.get(name)] + ([] if project else ["IML_PROJECT"])
            if missing:
                raise SettingsError(f"IML_BACKEND=gcp needs {', '.join(missing)}")
            buckets = {role: env[name] for role, name in BUCKETS.items()}
        kms = env.get("IML_KMS", "local")
        if kms not in KMS_KINDS:
            raise SettingsError(f"IML_KMS must be one of {', '.join(KMS_KINDS)}, got {kms!r}")
        cloud_kms_keys = None
        if kms == "cloud":
            missing = [name for name in CLOUD_KMS_KEYS if not env.get(name)]
            if missing:
                raise SettingsError(f"IML_KMS=cloud needs {', '.join(missing)}")
            cloud_kms_keys = tuple(env[name] for name in CLOUD_KMS_KEYS)
        return cls(
            project=project,
            buckets=buckets,
            kms=kms,
            cloud_kms_keys=cloud_kms_keys,
            kms_endpoint=env.get("IML_KMS_ENDPOINT") or None,
            url_signing_key_file=Path(env["IML_URL_SIGNING_KEY_FILE"]) if env.get("IML_URL_SIGNING_KEY_FILE") else None,
            backend=backend,
            workdir=Path(env.get("IML_WORKDIR", "iml-work")),
            url_ttl=timedelta(minutes=_int(env, "IML_URL_TTL_MINUTES", 15, 1, MAX_URL_TTL // timedelta(minutes=1))),
            model_max_age=timedelta(minutes=_int(env, "IML_MODEL_MAX_AGE_MINUTES", 60, 1, 10**6)),
            staging_max_age=timedelta(minutes=_int(env, "IML_STAGING_MAX_AGE_MINUTES", 60, 1, 10**6)),
            topic_prefix=env.get("IML_TOPIC_PREFIX", "iml-"),
            user_model_limit=_int(env, "IML_USER_MODEL_LIMIT", 5, 1, 1000),
            user_limit_period=timedelta(hours=_int(env, "IML_USER_LIMIT_PERIOD_HOURS", 24, 1, 24 * 366)),
            recipe=env.get("IML_RECIPE", "digits-mlp"),
            watermark_strength=_float(env, "IML_WATERMARK_STRENGTH", 0.08, 0.0, 1.0),
            claim_lease=timedelta(seconds=_int(env, "IML_CLAIM_LEASE_SECONDS", 600, 10, 3600)),
            claim_wait=timedelta(seconds=_int(env, "IML_CLAIM_WAIT_SECONDS", 30, 0, 540)),
        )


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    value = _number(env, name, default, int, "a whole number")
    if not low <= value <= high:
        raise SettingsError(f"{name} must be between {low} and {high}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    value = _number(env, name, default, float, "a number")
    if not low < value <= high:
        raise SettingsError(f"{name} must be in ({low}, {high}], got {value}")
    return value


def _number(env: Mapping[str, str], name: str, default, parse, kind: str):
    raw = env.get(name)
    if raw is None:
        return default
    try:
        return parse(raw)
    except ValueError:
        raise SettingsError(f"{name} must be {kind}, got {raw!r}") from None
