"""One fingerprint identity per (user, base model version): a user's copies carry one codeword, so pooling them
strips nothing, and the verdict names every issued model of the accused identity."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from infra.bootstrap import MovableClock, local_ports
from infra.ledger import IssuedModel
from infra.settings import Settings
from tests.helpers import DIGITS_BASE, FACTS, issue_models, strict_json
from watermark.identity import IDENTITY_SCHEME, MODEL_SCHEME, Identity
from watermark.reader import probe_activations, read_model, read_tflite
from watermark.research import attacks
from watermark.verify import verify_file


def test_a_users_copies_carry_one_mark_that_pooling_them_keeps(issued, tmp_path):
    """alice asks for a second model: both name her in one identity (M stays 3 for 4 records), and the midpoint
    or mean of her two copies (the attack that stripped per-model codewords) still accuses her, nobody else."""
    workdir = tmp_path / "work"
    shutil.copytree(issued.workdir, workdir)
    ports = local_ports(Settings(workdir=workdir), MovableClock())
    second = issue_models(ports, ["alice"], request_id="req-2")["alice"]
    assert second != issued.tflite["alice"]  # another fine-tune, another file

    copies = [attacks.Weights(read.kernels, read.biases)
              for read in (read_tflite(data) for data in (issued.tflite["alice"], second))]
    for how in ("midpoint", "mean"):
        path = tmp_path / f"{how}.tflite"
        path.write_bytes(attacks.to_tflite(attacks.collude(copies, how, np.random.default_rng(0))))
        verdict = verify_file(path, ports.ledger, ports.kms, ports.models, read=read_model, run=probe_activations)
        body = strict_json(verdict.to_json())
        assert body["accused"] == ["alice"], how
        assert body["identities_ranked"] == 3 and body["records_read"] == 4
        (accused,) = [c for c in body["candidates"] if c["accused"]]
        assert len(accused["model_ids"]) == 2 and accused["fingerprint_scheme"] == IDENTITY_SCHEME
        assert accused["score"] > 20  # as strong as one copy's: nothing of the mark cancelled
        assert {r.record["model_id"] for r in verdict.accused_records} == set(accused["model_ids"])


def test_a_record_without_a_scheme_may_carry_either_codeword():
    """Records without `fingerprint_scheme` were written by an encrypt step older than schemes: its model was
    marked with the model id's codeword (derived from the very bytes the earlier watermark step MACed) or, where
    the new watermark step was deployed first, the identity's. Both are scored."""
    record = {**{k: v for k, v in FACTS.items() if k != "fingerprint_scheme"}, "kind": "issued",
              "model_id": "m-" + "a" * 32, "user_id": "alice", "request_id": "r", "base_model_version": DIGITS_BASE,
              "recipe": "digits-mlp", "plaintext_sha256": "0" * 64, "device_key_sha256": "0" * 64,
              "sealed_sha256": "0" * 64, "delivery_object": "x.iml", "recorded_at": FACTS["generated_at"]}
    issued = IssuedModel.from_record(record)
    assert issued.fingerprint_scheme == ""
    either = Identity.of_record(issued)
    assert [identity.scheme for identity in either] == [IDENTITY_SCHEME, MODEL_SCHEME]
    assert either[1].message == b"iml-fingerprint-v1\0" + b"m-" + b"a" * 32
    (named,) = Identity.of_record(IssuedModel.from_record({**record, "fingerprint_scheme": MODEL_SCHEME}))
    assert named == either[1]
    with pytest.raises(ValueError, match="not UTF-8"):
        Identity.of_record(IssuedModel.from_record({**record, "user_id": "\ud800"}))


def test_a_leak_recorded_by_an_encrypt_step_older_than_schemes_still_names_its_user(issued, tmp_path):
    """The watermark step deployed before encrypt: alice's model carries her identity's codeword, her record no
    scheme. She is accused; the record counts as two identities in M (alice's and her model's)."""
    workdir = tmp_path / "work"
    shutil.copytree(issued.workdir, workdir)
    ports = local_ports(Settings(workdir=workdir), MovableClock())
    (entry,) = [e for e in ports.ledger.entries("issued") if e.record["user_id"] == "alice"]
    fields = {k: v for k, v in entry.record.items() if k not in ("kind", "model_id", "recorded_at", "fingerprint_scheme")}
    (workdir / "buckets" / "evidence" / entry.name).unlink()
    assert ports.ledger.append("issued", entry.record["model_id"], fields, ports.clock())
    path = tmp_path / "leak.tflite"
    path.write_bytes(issued.tflite["alice"])
    body = strict_json(verify_file(path, ports.ledger, ports.kms, ports.models, read=read_model, run=probe_activations).to_json())
    assert body["accused"] == ["alice"] and body["identities_ranked"] == 4 and body["records_read"] == 3
    assert [c["fingerprint_scheme"] for c in body["candidates"] if c["accused"]] == [IDENTITY_SCHEME]
    assert body["excluded_records"] == []


def test_identities_are_unambiguous_and_a_scheme_must_be_known():
    def message(user: str, version: str) -> bytes:
        return Identity.of(IDENTITY_SCHEME, user_id=user, base_model_version=version, model_id="m", key_id="k").message

    assert message("ab", "c") != message("a", "bc")
    assert message("alice", "v1") != message("alice", "v2")  # a new base version is a new identity
    with pytest.raises(ValueError, match="'identity-v3' is not a fingerprint scheme"):
        Identity.of("identity-v3", user_id="a", base_model_version="v", model_id="m", key_id="k")
