"""The one place that decides which adapters the ports get: for the functions, the command line (the
verifier included) and the dev stack alike."""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

from infra.ledger import Ledger
from infra.local_bus import InProcessBus
from infra.local_kms import LocalKms
from infra.local_storage import LocalBlobStore
from infra.ports import BlobStore, Bus, Kms
from infra.settings import Settings, SettingsError


@dataclass(frozen=True)
class Ports:
    """Everything a step handler may touch."""

    settings: Settings
    staging: BlobStore
    delivery: BlobStore
    models: BlobStore
    state: BlobStore
    user_data: BlobStore
    ledger: Ledger
    kms: Kms
    bus: Bus
    clock: Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class MovableClock:
    """Real time plus an offset the demo can push forward, to show expiry without waiting an hour."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(timezone.utc) + self.offset

    def advance(self, by: timedelta) -> None:
        self.offset += by


def local_ports(settings: Settings, clock: Callable[[], datetime] = utc_now) -> Ports:
    """The embedded defaults: every bucket a folder under the workdir, an in-process bus, a key file."""
    root = settings.workdir.resolve()
    kms = build_kms(settings)

    def store(name: str) -> LocalBlobStore:
        return LocalBlobStore(root / "buckets" / name, clock=clock)

    return Ports(
        settings=settings,
        staging=store("staging"),
        delivery=store("delivery"),
        models=store("models"),
        state=store("state"),
        user_data=store("user-data"),
        ledger=Ledger(store("evidence"), kms),
        kms=kms,
        bus=InProcessBus(root / "topics"),
        clock=clock,
    )


def build_kms(settings: Settings) -> Kms:
    if settings.kms == "cloud":
        from infra.cloud_kms import CloudKms, client_for  # the gRPC client loads only where it is used

        wrap_key, signing_key_version, fingerprint_key_version = settings.cloud_kms_keys
        return CloudKms(client_for(settings.kms_endpoint), wrap_key=wrap_key,
                        signing_key_version=signing_key_version, fingerprint_key_version=fingerprint_key_version)
    return LocalKms(settings.workdir.resolve() / "kms" / "local-keys.json")


def gcp_ports(settings: Settings, clock: Callable[[], datetime] = utc_now) -> Ports:
    """Cloud Storage buckets and Pub/Sub topics (the clients honour the emulators' *_EMULATOR_HOST)."""
    from google.cloud import pubsub_v1, storage  # the cloud clients load only where they are used

    from infra.gcs_storage import GcsBlobStore
    from infra.pubsub_bus import PubSubBus

    client = storage.Client(project=settings.project)
    signing = None
    if settings.url_signing_key_file:  # a key file signs URLs where the runtime's identity cannot (emulators)
        from google.oauth2 import service_account

        signing = service_account.Credentials.from_service_account_file(str(settings.url_signing_key_file))
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")  # signed URLs must point where the objects are
    stores = {role: GcsBlobStore(client, bucket, signing_credentials=signing, url_endpoint=emulator)
              for role, bucket in settings.buckets.items()}
    kms = build_kms(settings)
    return Ports(
        settings=settings,
        staging=stores["staging"],
        delivery=stores["delivery"],
        models=stores["models"],
        state=stores["state"],
        user_data=stores["user-data"],
        ledger=Ledger(stores["evidence"], kms),
        kms=kms,
        bus=PubSubBus(pubsub_v1.PublisherClient(), settings.project),
        clock=clock,
    )


def build_ports(settings: Settings, clock: Callable[[], datetime] = utc_now) -> Ports:
    return gcp_ports(settings, clock) if settings.backend == "gcp" else local_ports(settings, clock)


def verifier_ports(workdir: Path | None = None, ledger_uri: str | None = None,
                   env: dict[str, str] | None = None) -> Ports:
    """What the verifier reads: a local pipeline's workdir (its ledger, keys and base models), or a ledger at
    `ledger_uri` (gs://BUCKET or a folder) with the base models and keys the IML_* variables name, as the
    functions read them. SettingsError says what is missing."""
    if (workdir is None) == (ledger_uri is None):
        raise SettingsError("give either --workdir DIR or --ledger URI")
    if workdir is not None:
        if not (workdir / "kms" / "local-keys.json").is_file():
            raise SettingsError(f"{workdir} holds no pipeline keys: point --workdir at the folder `iml demo` used")
        return local_ports(Settings(workdir=workdir))
    try:
        ports = build_ports(Settings.from_env(env))
    except SettingsError as error:
        raise SettingsError(f"--ledger takes the base models and keys from the environment: {error}") from None
    if ledger_uri.startswith("gs://"):
        from google.cloud import storage

        from infra.gcs_storage import GcsBlobStore

        store = GcsBlobStore(storage.Client(project=ports.settings.project), ledger_uri[len("gs://"):].strip("/"))
    else:
        folder = Path(ledger_uri.removeprefix("file://"))
        if not folder.is_dir():
            raise SettingsError(f"--ledger {ledger_uri}: no such folder (use gs://BUCKET or a folder of ledger "
                                f"records)")
        store = LocalBlobStore(folder)
    return replace(ports, ledger=Ledger(store, ports.kms))
