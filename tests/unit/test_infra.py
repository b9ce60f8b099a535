"""The embedded adapters keep the promises the cloud ones will: create-once writes, expiring URLs, a key file
only its owner reads, a ledger that reports tampering, staging that never rests in plaintext."""
from __future__ import annotations

import json
import re
import stat
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from infra.errors import ObjectMissing, UnwrapFailed
from infra.ledger import Ledger
from infra.local_kms import LocalKms
from infra.local_storage import LocalBlobStore, UrlExpired, fetch_local_url
from infra.settings import Settings, SettingsError
from infra.staging import get_staged, put_staged
from tests.helpers import ROOT


def test_create_once_writes_have_one_winner(tmp_path):
    store = LocalBlobStore(tmp_path)
    assert store.put("a/b.bin", b"first", if_absent=True)
    assert not store.put("a/b.bin", b"second", if_absent=True)
    assert store.get("a/b.bin") == b"first"
    store.put("a/b.bin", b"third")
    assert store.get("a/b.bin") == b"third"
    assert [info.name for info in store.list()] == ["a/b.bin"]  # no temporary files left behind


@pytest.mark.parametrize("name", ["../escape", "/abs", "a/../../b", "", "a\\b", "./a"])
def test_unsafe_object_names_are_refused(tmp_path, name):
    with pytest.raises(ValueError, match="not a safe relative name"):
        LocalBlobStore(tmp_path).put(name, b"x")


def test_missing_objects_raise_a_typed_error(tmp_path):
    store = LocalBlobStore(tmp_path)
    with pytest.raises(ObjectMissing):
        store.get("nothing")
    assert store.delete("nothing") is False


def test_download_urls_expire(tmp_path, clock):
    store = LocalBlobStore(tmp_path, clock=clock)
    store.put("m.iml", b"sealed")
    url = store.download_url("m.iml", timedelta(minutes=15))
    assert fetch_local_url(url, clock() + timedelta(minutes=14)) == b"sealed"
    with pytest.raises(UrlExpired):
        fetch_local_url(url, clock() + timedelta(minutes=16))


def test_objects_are_aged_by_the_stores_clock(tmp_path, clock):
    store = LocalBlobStore(tmp_path, clock=clock)
    clock.advance(timedelta(days=3))
    store.put("x", b"1")
    (info,) = store.list()
    assert abs((info.created - clock()).total_seconds()) < 5


def test_key_file_is_private_and_stable(tmp_path):
    path = tmp_path / "kms" / "keys.json"
    first = LocalKms(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    second = LocalKms(path)
    assert second.signing_key_id == first.signing_key_id
    assert second.fingerprint_mac(b"m-1") == first.fingerprint_mac(b"m-1") != first.fingerprint_mac(b"m-2")
    assert second.unwrap(first.wrap(b"k" * 32, b"ctx"), b"ctx") == b"k" * 32
    public = serialization.load_pem_public_key(second.public_key_pem())
    public.verify(first.sign(b"record"), b"record", ec.ECDSA(hashes.SHA256()))


def test_a_wrapped_key_opens_only_in_its_context(tmp_path):
    kms = LocalKms(tmp_path / "keys.json")
    wrapped = kms.wrap(b"k" * 32, b"staging/a")
    with pytest.raises(UnwrapFailed):
        kms.unwrap(wrapped, b"staging/b")
    with pytest.raises(UnwrapFailed):
        LocalKms(tmp_path / "other.json").unwrap(wrapped, b"staging/a")


def test_staging_never_holds_plaintext_and_binds_the_name(tmp_path):
    store, kms = LocalBlobStore(tmp_path / "s"), LocalKms(tmp_path / "k.json")
    secret_model = b"TFL3" + b"weights" * 100
    put_staged(store, kms, "watermarked/m-1.tflite", secret_model)
    raw = store.get("watermarked/m-1.tflite")
    assert b"weights" not in raw
    assert get_staged(store, kms, "watermarked/m-1.tflite") == secret_model
    store.put("watermarked/m-2.tflite", raw)  # copied under another name
    with pytest.raises(UnwrapFailed):
        get_staged(store, kms, "watermarked/m-2.tflite")


def test_ledger_records_once_and_reports_tampering(tmp_path, clock):
    store = LocalBlobStore(tmp_path / "evidence")
    ledger = Ledger(store, LocalKms(tmp_path / "k.json"))
    assert ledger.append("issued", "m-1", {"user_id": "alice"}, clock())
    assert not ledger.append("issued", "m-1", {"user_id": "alice"}, clock())
    ledger.append("issued", "m-2", {"user_id": "bob"}, clock())
    ledger.append("expired", "m-1", {"object": "m-1.iml"}, clock())
    body = json.loads(store.get("records/m-2/issued.json"))
    body["record"]["user_id"] = "carol"
    store.put("records/m-2/issued.json", json.dumps(body).encode())
    store.put("records/m-3/issued.json", b"not json")
    entries = {e.name: e for e in ledger.entries("issued")}
    assert entries["records/m-1/issued.json"].valid
    assert entries["records/m-1/issued.json"].record["user_id"] == "alice"
    assert entries["records/m-2/issued.json"].problem == "signature does not verify"
    assert entries["records/m-3/issued.json"].problem == "not a ledger record"
    assert [e.record["kind"] for e in ledger.entries("expired")] == ["expired"]


@pytest.mark.parametrize(
    "env, message",
    [
        ({"IML_BACKEND": "aws"}, "IML_BACKEND must be one of local"),
        ({"IML_URL_TTL_MINUTES": "0"}, "IML_URL_TTL_MINUTES must be between 1 and 10080"),
        ({"IML_URL_TTL_MINUTES": "20000"}, "IML_URL_TTL_MINUTES must be between 1 and 10080"),
        ({"IML_MODEL_MAX_AGE_MINUTES": "soon"}, "IML_MODEL_MAX_AGE_MINUTES must be a whole number"),
        ({"IML_WATERMARK_STRENGTH": "0"}, "IML_WATERMARK_STRENGTH must be in"),
        ({"IML_USER_MODEL_LIMIT": "0"}, "IML_USER_MODEL_LIMIT must be between 1 and"),
        ({"IML_USER_LIMIT_PERIOD_HOURS": "a day"}, "IML_USER_LIMIT_PERIOD_HOURS must be a whole number"),
    ],
)
def test_bad_settings_name_the_variable(env, message):
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


def test_settings_from_environment():
    settings = Settings.from_env({"IML_URL_TTL_MINUTES": "5", "IML_TOPIC_PREFIX": "t-", "IML_WORKDIR": "/w"})
    assert settings.url_ttl == timedelta(minutes=5)
    assert settings.topics.signup == "t-signup" and settings.topics.dead_letter == "t-dead-letter"
    assert str(settings.workdir) == "/w"


def test_readme_has_one_row_for_every_setting_the_code_reads():
    """The README's table is the one list of settings: every IML_ variable the code reads is in it."""
    root = ROOT
    table = re.findall(r"^\| (.+?) \|", (root / "README.md").read_text(), flags=re.MULTILINE)
    documented = set(re.findall(r"`(IML_[A-Z_]+)`", " ".join(table)))
    read = set()
    for package in ("infra", "functions", "iml"):
        for source in (root / package).rglob("*.py"):
            read |= set(re.findall(r"\"(IML_[A-Z_]+)\"", source.read_text()))
    assert read - documented == set(), "settings read by the code but missing from README.md's table"
    assert documented - read == set(), "README.md documents settings the code does not read"
