"""The Cloud KMS adapter, through the real google-cloud-kms client over a real gRPC channel to an in-process
server that speaks the KMS protocol with real cryptography (tests/integration/kms_server.py)."""
from __future__ import annotations

import hashlib
import hmac
import json
from datetime import datetime, timezone

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from functions.chain import STEPS
from functions.runner import Outcome, run_step
from infra.bootstrap import build_ports
from infra.cloud_kms import CloudKms, KmsIntegrityError, KmsKeyUnusable, client_for
from infra.errors import KeyUnavailable, TransientError, UnwrapFailed
from infra.ledger import Ledger
from infra.local_storage import LocalBlobStore
from infra.settings import Settings, SettingsError
from infra.staging import get_staged, put_staged
from tests.helpers import make_signup, watermarked_event
from tests.integration.kms_server import (FINGERPRINT_KEY_VERSION, ROTATED_FINGERPRINT_KEY_VERSION,
                                          SIGNING_KEY_VERSION, WRAP_KEY, FakeCloudKms)


@pytest.fixture
def server():
    fake = FakeCloudKms()
    fake.endpoint = fake.start()
    yield fake
    fake.stop()


def adapter(endpoint: str, **names) -> CloudKms:
    keys = dict(wrap_key=WRAP_KEY, signing_key_version=SIGNING_KEY_VERSION,
                fingerprint_key_version=FINGERPRINT_KEY_VERSION)
    return CloudKms(client_for(endpoint), **{**keys, **names}, timeout=2.0)


def test_data_keys_wrap_and_unwrap_only_in_their_context(server):
    kms = adapter(server.endpoint)
    wrapped = kms.wrap(b"k" * 32, b"staging/generated/m-1.keras")
    assert kms.unwrap(wrapped, b"staging/generated/m-1.keras") == b"k" * 32
    with pytest.raises(UnwrapFailed):
        kms.unwrap(wrapped, b"staging/generated/m-2.keras")


def test_signatures_verify_with_the_published_key(server):
    kms = adapter(server.endpoint)
    public = serialization.load_pem_public_key(kms.public_key_pem())
    public.verify(kms.sign(b"ledger record"), b"ledger record", ec.ECDSA(hashes.SHA256()))
    assert kms.signing_key_id == SIGNING_KEY_VERSION


def test_the_fingerprint_mac_is_hmac_sha256_under_the_kms_key(server):
    kms = adapter(server.endpoint)
    assert kms.fingerprint_mac(b"m-1") == hmac.new(server.mac_key, b"m-1", hashlib.sha256).digest()


def test_a_records_key_version_gives_its_mac_after_a_rotation(server):
    """The verifier derives each codeword under the version its ledger record names, not the current one."""
    kms = adapter(server.endpoint, fingerprint_key_version=ROTATED_FINGERPRINT_KEY_VERSION)
    assert kms.fingerprint_mac(b"m-1", FINGERPRINT_KEY_VERSION) == hmac.new(server.mac_key, b"m-1",
                                                                             hashlib.sha256).digest()
    assert kms.fingerprint_mac(b"m-1") == kms.fingerprint_mac(b"m-1", ROTATED_FINGERPRINT_KEY_VERSION) \
        != kms.fingerprint_mac(b"m-1", FINGERPRINT_KEY_VERSION)
    calls = len(server.calls)
    with pytest.raises(KeyUnavailable, match="not a version of the configured fingerprint key"):
        kms.fingerprint_mac(b"m-1", SIGNING_KEY_VERSION)  # another key's version: refused before any call
    assert len(server.calls) == calls
    with pytest.raises(KeyUnavailable):
        kms.fingerprint_mac(b"m-1", FINGERPRINT_KEY_VERSION[:-1] + "9")  # destroyed or never made


def test_the_ledger_and_the_staging_envelope_run_on_cloud_kms(server, tmp_path):
    kms = adapter(server.endpoint)
    store = LocalBlobStore(tmp_path)
    put_staged(store, kms, "watermarked/m-1.tflite", b"model bytes")
    assert get_staged(store, kms, "watermarked/m-1.tflite") == b"model bytes"
    ledger = Ledger(store, kms)
    ledger.append("issued", "m-1", {"user_id": "alice"}, datetime.now(timezone.utc))
    (entry,) = ledger.entries("issued")
    assert entry.valid and entry.record["user_id"] == "alice"


@pytest.mark.parametrize("call, field", [
    ("wrap", "ciphertext_crc32c"),
    ("wrap", "verified_plaintext_crc32c"),
    ("wrap", "verified_additional_authenticated_data_crc32c"),
    ("wrap", "name"),
    ("unwrap", "plaintext_crc32c"),
    ("sign", "signature_crc32c"),
    ("sign", "verified_digest_crc32c"),
    ("sign", "name"),
    ("public_key_pem", "pem_crc32c"),
    ("public_key_pem", "name"),
    ("fingerprint_mac", "mac_crc32c"),
    ("fingerprint_mac", "verified_data_crc32c"),
    ("fingerprint_mac", "name"),
])
def test_an_answer_that_fails_its_integrity_check_is_refused(server, call, field):
    kms = adapter(server.endpoint)
    wrapped = kms.wrap(b"k" * 32, b"ctx")
    server.corrupt = {field}
    arguments = {"wrap": (b"k" * 32, b"ctx"), "unwrap": (wrapped, b"ctx"), "sign": (b"m",),
                 "public_key_pem": (), "fingerprint_mac": (b"m",)}[call]
    with pytest.raises(KmsIntegrityError):
        getattr(kms, call)(*arguments)


def test_an_unknown_key_is_a_permanent_error(server):
    with pytest.raises(KmsKeyUnusable, match="cryptoKeys/nope"):
        adapter(server.endpoint, wrap_key=f"{WRAP_KEY[:-len('staging')]}nope").wrap(b"k" * 32, b"ctx")


def test_an_unreachable_kms_is_a_transient_error(server):
    kms = adapter(server.endpoint)
    server.stop()
    with pytest.raises(TransientError):
        kms.sign(b"m")


def test_the_pipeline_runs_its_steps_on_cloud_kms_when_configured(server, tmp_path):
    settings = Settings.from_env({
        "IML_WORKDIR": str(tmp_path), "IML_KMS": "cloud", "IML_KMS_ENDPOINT": server.endpoint,
        "IML_KMS_WRAP_KEY": WRAP_KEY, "IML_KMS_SIGNING_KEY_VERSION": SIGNING_KEY_VERSION,
        "IML_KMS_FINGERPRINT_KEY_VERSION": FINGERPRINT_KEY_VERSION,
    })
    ports = build_ports(settings)
    assert isinstance(ports.kms, CloudKms) and not (tmp_path / "kms").exists()
    signup = make_signup("alice")
    event = watermarked_event(signup, ports, b"model")
    result = run_step(STEPS["encrypt"], json.dumps(event).encode(), ports)
    assert result.outcome is Outcome.DONE
    (record,) = ports.ledger.entries("issued")
    assert record.valid
    assert {WRAP_KEY, SIGNING_KEY_VERSION} <= set(server.calls)


def test_cloud_kms_settings_name_what_is_missing():
    with pytest.raises(SettingsError, match="IML_KMS=cloud needs IML_KMS_SIGNING_KEY_VERSION, IML_KMS_FINGERPRINT"):
        Settings.from_env({"IML_KMS": "cloud", "IML_KMS_WRAP_KEY": WRAP_KEY})
