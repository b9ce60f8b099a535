"""Settings, read once from environment variables (the same names locally and in the cloud).

| variable | meaning | default |
|---|---|---|
| IML_BACKEND | `local` (folders, in-process bus) or `gcp` (Cloud Storage, Pub/Sub) | local |
| IML_PROJECT | with `gcp`: the Google Cloud project of the topics | GOOGLE_CLOUD_PROJECT |
| IML_STAGING_BUCKET, IML_DELIVERY_BUCKET, IML_MODELS_BUCKET, IML_EVIDENCE_BUCKET, IML_STATE_BUCKET | with `gcp`: the five buckets (staging, sealed models, base models, the ledger, step markers) | |
| IML_WORKDIR | root folder of the local adapters | ./iml-work |
| IML_URL_TTL_MINUTES | lifetime of a download URL (1 to 10080) | 15 |
| IML_MODEL_MAX_AGE_MINUTES | age after which expire deletes a delivered model | 60 |
| IML_STAGING_MAX_AGE_MINUTES | age after which expire deletes a leftover staging object | 60 |
| IML_TOPIC_PREFIX | prefix of every topic name | iml- |
| IML_WATERMARK_STRENGTH | fingerprint amplitude, relative to each layer's weight spread | 0.04 |
| IML_KMS | `local` (a key file under the workdir) or `cloud` (Cloud KMS) | local |
| IML_KMS_WRAP_KEY | with `cloud`: the symmetric key that wraps staging data keys (…/cryptoKeys/NAME) | |
| IML_KMS_SIGNING_KEY_VERSION | with `cloud`: the EC_SIGN_P256_SHA256 key version signing the ledger | |
| IML_KMS_FINGERPRINT_KEY_VERSION | with `cloud`: the HMAC_SHA256 key version behind the fingerprints | |
| IML_KMS_ENDPOINT | with `cloud`: host:port of a local stand-in instead of Google's endpoint | |
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Mapping

BACKENDS = ("local", "gcp")
BUCKETS = ("IML_STAGING_BUCKET", "IML_DELIVERY_BUCKET", "IML_MODELS_BUCKET", "IML_EVIDENCE_BUCKET",
           "IML_STATE_BUCKET")
KMS_KINDS = ("local", "cloud")
CLOUD_KMS_KEYS = ("IML_KMS_WRAP_KEY", "IML_KMS_SIGNING_KEY_VERSION", "IML_KMS_FINGERPRINT_KEY_VERSION")
MAX_URL_TTL_MINUTES = 7 * 24 * 60  # the V4 signed URL limit


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
    watermark_strength: float = 0.04
    kms: str = "local"
    cloud_kms_keys: tuple[str, str, str] | None = None  # wrap key, signing key version, fingerprint key version
    kms_endpoint: str | None = None
    project: str | None = None
    buckets: dict[str, str] | None = None  # with gcp: staging, delivery, models, evidence, state

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
            missing = [name for name in BUCKETS if not env.get(name)] + ([] if project else ["IML_PROJECT"])
            if missing:
                raise SettingsError(f"IML_BACKEND=gcp needs {', '.join(missing)}")
            buckets = {name.split("_")[1].lower(): env[name] for name in BUCKETS}
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
            backend=backend,
            workdir=Path(env.get("IML_WORKDIR", "iml-work")),
            url_ttl=timedelta(minutes=_int(env, "IML_URL_TTL_MINUTES", 15, 1, MAX_URL_TTL_MINUTES)),
            model_max_age=timedelta(minutes=_int(env, "IML_MODEL_MAX_AGE_MINUTES", 60, 1, 10**6)),
            staging_max_age=timedelta(minutes=_int(env, "IML_STAGING_MAX_AGE_MINUTES", 60, 1, 10**6)),
            topic_prefix=env.get("IML_TOPIC_PREFIX", "iml-"),
            watermark_strength=_float(env, "IML_WATERMARK_STRENGTH", 0.04, 0.0, 1.0),
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
