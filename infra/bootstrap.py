"""The one place that decides which adapters the ports get."""
from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from typing import Callable

from infra.ledger import Ledger
from infra.local_bus import InProcessBus
from infra.local_kms import LocalKms
from infra.local_storage import LocalBlobStore
from infra.ports import Kms, Ports
from infra.settings import Settings


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
        ledger=Ledger(stores["evidence"], kms),
        kms=kms,
        bus=PubSubBus(pubsub_v1.PublisherClient(), settings.project),
        clock=clock,
    )


def build_ports(settings: Settings, clock: Callable[[], datetime] = utc_now) -> Ports:
    return gcp_ports(settings, clock) if settings.backend == "gcp" else local_ports(settings, clock)
