"""The Cloud Storage adapter through the real google-cloud-storage client against fake-gcs-server."""
from __future__ import annotations

import uuid
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.oauth2 import service_account

from infra.errors import ObjectMissing, TransientError
from infra.gcs_storage import GcsBlobStore
from tests.helpers import gcs_emulator, on_threads


@pytest.fixture(scope="module")
def emulator():
    with gcs_emulator() as (endpoint, process):
        yield endpoint, process


def signing_key() -> service_account.Credentials:
    """A service account key made here, so V4 URLs are really signed (the emulator does not check them)."""
    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    return service_account.Credentials.from_service_account_info({
        "type": "service_account", "project_id": "test", "private_key_id": "1", "private_key": pem,
        "client_email": "iml-publish@test.iam.gserviceaccount.com", "token_uri": "https://oauth2.example/token"})


@pytest.fixture
def store(emulator, monkeypatch) -> GcsBlobStore:
    endpoint, _ = emulator
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", endpoint)
    client = storage.Client(project="test", credentials=AnonymousCredentials())
    bucket = f"iml-delivery-{uuid.uuid4().hex[:8]}"
    client.create_bucket(bucket)
    return GcsBlobStore(client, bucket, signing_credentials=signing_key(), url_endpoint=endpoint, retry_seconds=2)


def test_objects_round_trip_and_are_listed_with_their_creation_time(store):
    assert store.put("watermarked/m-1.tflite", b"staged")
    assert store.put("m-1.iml", b"sealed")
    assert store.get("m-1.iml") == b"sealed" and store.exists("m-1.iml")
    listed = {info.name: info for info in store.list()}
    assert set(listed) == {"watermarked/m-1.tflite", "m-1.iml"}
    assert listed["m-1.iml"].size == 6 and listed["m-1.iml"].created is not None
    assert [info.name for info in store.list("watermarked/")] == ["watermarked/m-1.tflite"]
    assert store.delete("m-1.iml") and not store.delete("m-1.iml")
    with pytest.raises(ObjectMissing):
        store.get("m-1.iml")


def test_create_once_writes_have_one_winner(store):
    assert store.put("records/m-1/issued.json", b"first", if_absent=True)
    assert not store.put("records/m-1/issued.json", b"second", if_absent=True)
    assert store.get("records/m-1/issued.json") == b"first"


def test_of_eight_simultaneous_create_once_writes_exactly_one_wins(store):
    """The precondition decides, not a look before writing: what claims and request-limit slots rest on."""
    def create(number: int) -> bool:
        return store.put("claims/encrypt/m-1/000000000", f"writer {number}".encode(), if_absent=True)

    results = on_threads(create, [(n,) for n in range(8)])
    won = [n for n, result in enumerate(results) if result is True]
    assert len(won) == 1
    assert store.get("claims/encrypt/m-1/000000000") == f"writer {won[0]}".encode()


def test_a_signed_url_is_a_v4_get_that_downloads_the_object(store):
    store.put("m-2.iml", b"sealed model")
    url = store.download_url("m-2.iml", timedelta(minutes=15))
    query = parse_qs(urlsplit(url).query)
    assert query["X-Goog-Algorithm"] == ["GOOG4-RSA-SHA256"] and query["X-Goog-Expires"] == ["900"]
    assert "X-Goog-Signature" in query
    assert requests.get(url, timeout=10).content == b"sealed model"
    with pytest.raises(ValueError, match="at most 7 days"):
        store.download_url("m-2.iml", timedelta(days=8))


def test_an_unreachable_store_is_a_transient_error(store, emulator):
    endpoint, _ = emulator
    client = storage.Client(project="test", credentials=AnonymousCredentials(),
                            client_options={"api_endpoint": "http://127.0.0.1:9"})  # nothing listens there
    unreachable = GcsBlobStore(client, "iml-delivery", retry_seconds=1)
    with pytest.raises(TransientError, match="Cloud Storage is unavailable"):
        unreachable.get("m-1.iml")
