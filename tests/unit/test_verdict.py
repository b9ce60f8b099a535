"""A verdict that cannot be turned against an innocent: crafted files against a ledger of 1,003 issued models.

alice's issued model is the attacker's raw material: whatever is done to its weights, the verifier accuses
alice or nobody, or refuses with a clear error; never an innocent, never p = 0, never invalid JSON. The whole
path runs here but the parse's child process (read -> align -> score -> verdict -> JSON, the file read
in-process); tests/e2e/test_verify_cli.py runs crafted files through the command line and its sandbox.
"""
from __future__ import annotations

import math
import re
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infra.bootstrap import MovableClock, local_ports
from infra.settings import Settings
from tests.helpers import CROWD_SIZE, DIGITS_BASE, FACTS, SOURCE, mutations, strict_json
from watermark.errors import VerificationError
from watermark.reader import probe_activations, read_model
from watermark.research import attacks
from watermark.research.attacks import Mutation
from watermark.verify import verify_file

def assert_sound(verdict) -> None:
    """Only the source may be accused, and every number is one a court can read."""
    assert set(verdict.accused) <= {SOURCE}, f"innocents accused: {verdict.accused}"
    body = strict_json(verdict.to_json())
    assert body["identities_ranked"] == CROWD_SIZE + 3
    for candidate in body["candidates"]:
        assert math.isfinite(candidate["score"]) and abs(candidate["score"]) <= math.sqrt(12_608)
        assert math.isfinite(candidate["log10_p_value"]) and candidate["log10_p_value"] <= 0
        assert candidate.get("p_value", 1.0) > 0


@settings(max_examples=500, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(edits=st.lists(mutations(), min_size=1, max_size=4))
def test_no_crafted_weights_accuse_an_innocent(crowd, edits):
    """read -> align -> score -> verdict -> JSON, on alice's file with its weights rewritten."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "crafted.tflite"
        path.write_bytes(attacks.mutate_tflite(crowd.source, edits))
        try:
            verdict = verify_file(path, crowd.ports.ledger, crowd.ports.kms, crowd.ports.models, read=read_model, run=probe_activations)
        except VerificationError as error:
            assert str(error) and error.kind in {"implausible", "incompatible", "unreadable"}
            return
    assert_sound(verdict)


def verify_crowd(crowd, path: Path, ledger_workdir: Path | None = None):
    ports = local_ports(Settings(workdir=ledger_workdir), MovableClock()) if ledger_workdir else crowd.ports
    return verify_file(path, ports.ledger, ports.kms, ports.models, read=read_model, run=probe_activations)


def test_each_codeword_comes_from_the_key_version_its_record_names(crowd, tmp_path):
    """A record naming a fingerprint key version this KMS does not hold is excluded, listed, and still counted."""
    from infra.ledger import IssuedModel

    workdir = tmp_path / "work"
    shutil.copytree(crowd.workdir, workdir)
    ports = local_ports(Settings(workdir=workdir), MovableClock())
    ports.ledger.issue(IssuedModel(
        model_id="m-retired", user_id="dave", request_id="r-dave", base_model_version=DIGITS_BASE, recipe="digits-mlp",
        **{**FACTS, "fingerprint_key_id": "local-fingerprint-retired"}, plaintext_sha256="0" * 64,
        device_key_sha256="0" * 64, sealed_sha256="0" * 64, delivery_object="m-retired.iml"), ports.clock())
    path = tmp_path / "leak.tflite"
    path.write_bytes(crowd.source)
    body = strict_json(verify_crowd(crowd, path, workdir).to_json())
    assert body["accused"] == [SOURCE]
    assert body["identities_ranked"] == CROWD_SIZE + 4 and body["identities_scored"] == CROWD_SIZE + 3
    assert body["log10_p_threshold"] == pytest.approx(math.log10(1e-9 / (CROWD_SIZE + 4)))
    (excluded,) = body["excluded_records"]
    assert excluded.startswith("records/m-retired/issued.json: fingerprint key version "
                               "'local-fingerprint-retired' is unavailable")
    assert {c["fingerprint_key_id"] for c in body["candidates"]} == {ports.kms.fingerprint_key_id}


def test_junk_in_the_ledger_is_excluded_and_the_rest_still_scored(crowd, tmp_path):
    workdir = tmp_path / "work"
    shutil.copytree(crowd.workdir, workdir)
    records = workdir / "buckets" / "evidence" / "records"
    (records / "zzz").mkdir()
    (records / "zzz" / "issued.json").write_text('{"record": {"model_id": "zzz"}, "signature": ""}')
    (records / "yyy").mkdir()
    (records / "yyy" / "issued.json").write_text(
        '{"record": {"model_id": "yyy", "base_model_version": "../../etc"}, "signature": ""}')
    path = tmp_path / "leak.tflite"
    path.write_bytes(crowd.source)
    body = strict_json(verify_crowd(crowd, path, workdir).to_json())
    assert body["accused"] == [SOURCE] and body["identities_ranked"] == CROWD_SIZE + 5
    assert sorted(body["excluded_records"]) == ["records/yyy/issued.json: not an issued-model record",
                                                "records/zzz/issued.json: not an issued-model record"]


def test_a_disguised_copy_is_traced(crowd, tmp_path):
    """Pixel 0 of every digit is 0: scaling its weights leaves the model's function alone. Scaled 20 or a million
    times, alice is accused: the input is 0 on every probe input, so alignment leaves its weights out (before
    alignment ran the file, the million-fold copy named nobody and was only flagged for review)."""
    path = tmp_path / "disguised.tflite"
    for factor in (20.0, 1e6):
        path.write_bytes(attacks.mutate_tflite(crowd.source, [Mutation("scale-row", 0, 0, factor)]))
        verdict = verify_crowd(crowd, path)
        assert verdict.accused == [SOURCE] and not verdict.needs_review
        assert any("inputs 0 on every probe input left out" in line for line in verdict.alignment)


def test_decoys_carrying_another_users_weights_accuse_the_working_models_user(crowd, issued, tmp_path):
    """Beside every hidden neuron of alice's model, bob's same neuron, never firing, with outgoing weights that
    add up to bob's: the model works as alice's did, and a verifier going by weights alone accuses bob. Run on
    the probe, the decoys are idle and set aside: alice alone is accused."""
    path = tmp_path / "decoys.tflite"
    path.write_bytes(attacks.to_tflite(attacks.decoys(issued.models[SOURCE], issued.models["bob"])))
    verdict = verify_crowd(crowd, path)
    assert verdict.accused == [SOURCE] and not verdict.needs_review
    assert all("units idle on the probe" in line for line in verdict.alignment)
    by_weights = verify_file(path, crowd.ports.ledger, crowd.ports.kms, crowd.ports.models, read=read_model,
                             run=lambda copy, probe: [])
    assert "bob" in by_weights.accused  # the attack is real: weights alone name the planted user


def test_a_file_whose_working_path_alignment_cannot_match_cannot_be_analysed(crowd, tmp_path):
    """Every first-layer neuron's incoming weights negated (a crafted file: the function changes): hardly a
    neuron matches a base neuron, and the ones that fire are not the base's. Run on the probe, the file cannot
    be analysed (exit 2), never "nobody". By weights alone (a form that is not run) it names nobody and the
    verdict says to look before anyone reads it as "not a leak"."""
    path = tmp_path / "negated.tflite"
    path.write_bytes(attacks.mutate_tflite(crowd.source, [Mutation("scale-column", 0, i, -1.0) for i in range(128)]))
    with pytest.raises(VerificationError, match=r"hidden layer 1: the units matched to the base model reproduce "
                                                r"\d+% of what its units send on") as refused:
        verify_crowd(crowd, path)
    assert refused.value.kind == "incompatible"
    verdict = verify_file(path, crowd.ports.ledger, crowd.ports.kms, crowd.ports.models, read=read_model,
                          run=lambda copy, probe: [])
    assert verdict.accused == [] and verdict.needs_review
    assert any(re.search(rf"alignment to {DIGITS_BASE} matched \d+ of 128 base neurons of hidden layer 1", reason)
               for reason in verdict.review_reasons)
