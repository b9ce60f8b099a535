"""The one place that decides which adapters the ports get."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Callable

from infra.ledger import Ledger
from infra.local_bus import InProcessBus
from infra.local_kms import LocalKms
from infra.local_storage import LocalBlobStore
from infra.ports import Kms, Ports
from infra.settings import Settings


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


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


def build_ports(settings: Settings, clock: Callable[[], datetime] = utc_now) -> Ports:
    if settings.backend == "local":
        return local_ports(settings, clock)
    raise ValueError(f"no adapters for backend {settings.backend!r}")  # Settings validates the name first
