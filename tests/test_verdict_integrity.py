"""A verdict that cannot be turned against an innocent: crafted files against a ledger of 1,003 issued models.

alice's issued model is the attacker's raw material: whatever is done to its weights, the verifier accuses
alice or nobody, or refuses with a clear error (exit 2); never an innocent, never p = 0, never invalid JSON.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infra.bootstrap import MovableClock, local_ports
from infra.ports import Ports
from infra.settings import Settings
from iml.cli import main
from watermark import attacks
from watermark.attacks import LARGE_FACTORS, MUTATION_KINDS, SPECIAL_VALUES, Mutation
from watermark.detect import format_p
from watermark.errors import UnreadableModel, VerificationError
from watermark.reader import read_model
from watermark.sandbox import ReadLimits, read_model_isolated
from watermark.verify import verify_file

CROWD = 1000
SOURCE = "alice"


@dataclass
class Crowd:
    workdir: Path
    ports: Ports
    source: bytes  # alice's issued TFLite file


@pytest.fixture(scope="module")
def crowd(issued, tmp_path_factory) -> Crowd:
    """alice, bob and carol's issued models plus 1,000 more issued records, each with its own codeword."""
    workdir = tmp_path_factory.mktemp("crowd") / "work"
    shutil.copytree(issued.workdir, workdir)
    ports = local_ports(Settings(workdir=workdir), MovableClock())
    for i in range(CROWD):
        ports.ledger.append("issued", f"m-crowd-{i:04d}", {
            "user_id": f"crowd-{i:04d}", "request_id": f"r-{i}", "base_model_version": "digits-mlp-v1",
            "fingerprint_key_id": ports.kms.fingerprint_key_id}, ports.clock())
    return Crowd(workdir, ports, issued.tflite[SOURCE])


def strict_json(text: str) -> dict:
    def refuse(constant: str):
        raise AssertionError(f"{constant} in the JSON output")

    return json.loads(text, parse_constant=refuse)


def assert_sound(verdict) -> None:
    """Only the source may be accused, and every number is one a court can read."""
    assert set(verdict.accused) <= {SOURCE}, f"innocents accused: {verdict.accused}"
    body = strict_json(verdict.to_json())
    assert body["models_ranked"] == CROWD + 3
    for candidate in body["candidates"]:
        assert math.isfinite(candidate["score"]) and abs(candidate["score"]) <= math.sqrt(12_608)
        assert math.isfinite(candidate["log10_p_value"]) and candidate["log10_p_value"] <= 0
        assert candidate.get("p_value", 1.0) > 0


mutations = st.builds(
    Mutation,
    kind=st.sampled_from(MUTATION_KINDS),
    layer=st.integers(0, 2),
    index=st.integers(0, 20_000),
    value=st.one_of(st.sampled_from(SPECIAL_VALUES + LARGE_FACTORS), st.floats(width=32)),
    count=st.integers(1, 40),
)


@settings(max_examples=500, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(edits=st.lists(mutations, min_size=1, max_size=4))
def test_no_crafted_weights_accuse_an_innocent(crowd, edits):
    """read -> align -> score -> verdict -> JSON, on alice's file with its weights rewritten."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "crafted.tflite"
        path.write_bytes(attacks.mutate_tflite(crowd.source, edits))
        try:
            verdict = verify_file(path, crowd.ports.ledger, crowd.ports.kms, crowd.ports.models, read=read_model)
        except VerificationError as error:
            assert str(error) and error.kind in {"implausible", "incompatible", "unreadable"}
            return
    assert_sound(verdict)


def verify_cli(crowd: Crowd, path: Path, *extra: str):
    result = CliRunner().invoke(main, ["verify", str(path), "--workdir", str(crowd.workdir), "--json", *extra])
    return result.exit_code, result


@settings(max_examples=25, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(edits=st.lists(mutations, min_size=1, max_size=3))
def test_the_command_line_answers_every_crafted_file_with_a_verdict_or_exit_2(crowd, tmp_path, edits):
    """Through `iml verify --json` (the file read in the sandbox): exit 0 with the source accused, 1 with
    nobody, or 2 with a message and nothing on stdout."""
    path = tmp_path / "crafted.tflite"
    path.write_bytes(attacks.mutate_tflite(crowd.source, edits))
    code, result = verify_cli(crowd, path)
    if code == 2:
        assert result.stdout == "" and "error:" in result.stderr
        return
    body = strict_json(result.stdout)
    assert code == (0 if body["accused"] else 1)
    assert set(body["accused"]) <= {SOURCE}


@pytest.mark.parametrize("variant", [
    {"negative": 1}, {"negative": 5}, {"negative": 20}, {"negative": 1, "incoming_scale": 1.0},
    {"negative": 3, "neuron": 17},
])
def test_the_reviewers_frame_accuses_no_innocent(crowd, tmp_path, variant):
    """A silenced neuron with 1e6 incoming and +-1e36 outgoing weights once accused innocents with z = inf."""
    from functions import userdata

    original = attacks.Weights(*_weights(crowd.source))
    framed = attacks.frame(original, **variant)
    held_out = userdata.for_user(SOURCE).held_out
    assert abs(framed.accuracy(held_out.x, held_out.y) - original.accuracy(held_out.x, held_out.y)) < 0.01
    path = tmp_path / "framed.tflite"
    path.write_bytes(attacks.to_tflite(framed))
    code, result = verify_cli(crowd, path)
    assert code in (0, 1, 2), result.output
    if code != 2:
        body = strict_json(result.stdout)
        assert set(body["accused"]) <= {SOURCE}
        assert body["accused"] == [SOURCE]  # the neuron is set aside and the rest of the file still names alice


def _weights(tflite: bytes):
    from watermark.reader import read_tflite

    read = read_tflite(tflite)
    return read.kernels, read.biases


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_file_with_non_finite_weights_exits_2_naming_the_layer(crowd, tmp_path, value):
    path = tmp_path / "broken.tflite"
    path.write_bytes(attacks.mutate_tflite(crowd.source, [Mutation("set", 1, 40, value)]))
    code, result = verify_cli(crowd, path)
    assert code == 2 and result.stdout == ""
    assert "dense layer 2: the kernel holds a weight that is not finite" in result.stderr


def test_a_weight_far_beyond_any_descendant_exits_2(crowd, tmp_path):
    path = tmp_path / "far.tflite"
    path.write_bytes(attacks.mutate_tflite(crowd.source, [Mutation("set", 2, 7, 1e30)]))
    code, result = verify_cli(crowd, path)
    assert code == 2 and "dense layer 3: a weight lies" in result.stderr and "base spreads" in result.stderr


def test_a_genuine_leak_reports_log10_p_and_never_p_zero(crowd, tmp_path):
    path = tmp_path / "leak.tflite"
    path.write_bytes(crowd.source)
    code, result = verify_cli(crowd, path)
    body = strict_json(result.stdout)
    best = body["candidates"][0]
    assert code == 0 and body["accused"] == [SOURCE] and best["user_id"] == SOURCE
    assert best["score"] > 38.6  # beyond where exp(-z^2/2) underflows a double
    assert best["log10_p_value"] == pytest.approx(-best["score"] ** 2 / (2 * math.log(10)))
    assert "p_value" not in best  # not representable: only its log10 is given
    assert body["log10_p_threshold"] == pytest.approx(math.log10(1e-9 / (CROWD + 3)))
    human = CliRunner().invoke(main, ["verify", str(path), "--workdir", str(crowd.workdir)])
    assert human.exit_code == 0 and "Accused: alice" in human.stdout
    assert f"{best['log10_p_value']:.2f}" in human.stdout
    assert format_p(best["log10_p_value"]) in human.stdout and "e-" in format_p(best["log10_p_value"])


def test_unusually_many_accused_is_flagged_for_review(crowd, issued, tmp_path):
    """Colluders averaging their models are all accused; more than --max-accused marks the verdict."""
    pooled = attacks.collude([issued.models["alice"], issued.models["bob"]], "mean", np.random.default_rng(0))
    path = tmp_path / "pooled.tflite"
    path.write_bytes(attacks.to_tflite(pooled))
    report = tmp_path / "report.html"
    code, result = verify_cli(crowd, path, "--max-accused", "1", "--report", str(report))
    body = strict_json(result.stdout)
    assert code == 0 and body["accused"] == ["alice", "bob"]
    assert body["needs_review"] is True
    assert body["review_reasons"][0].startswith("needs review: unusually many accused (2 users")
    assert "needs review: unusually many accused" in report.read_text()
    assert strict_json(report.with_suffix(".json").read_text())["report"]["needs_review"] is True
    human = CliRunner().invoke(main, ["verify", str(path), "--workdir", str(crowd.workdir), "--max-accused", "1"])
    assert "needs review: unusually many accused" in human.stdout


def test_a_failure_while_rendering_the_report_leaves_no_file_and_exits_2(crowd, tmp_path, monkeypatch):
    import watermark.report

    def broken_plot(verdict):
        raise RuntimeError("the plot failed")

    monkeypatch.setattr(watermark.report, "_plot", broken_plot)
    path = tmp_path / "leak.tflite"
    path.write_bytes(crowd.source)
    folder = tmp_path / "evidence"
    folder.mkdir()
    code, result = verify_cli(crowd, path, "--report", str(folder / "report.html"))
    assert code == 2 and result.stdout == ""
    assert "internal error (RuntimeError)" in result.stderr
    assert list(folder.iterdir()) == []


def test_an_unexpected_failure_anywhere_is_exit_2_not_a_verdict(crowd, tmp_path, monkeypatch):
    import watermark.detect

    monkeypatch.setattr(watermark.detect.Scorer, "z", lambda self, seeds: np.full(len(seeds), np.inf))
    path = tmp_path / "leak.tflite"
    path.write_bytes(crowd.source)
    code, result = verify_cli(crowd, path)
    assert code == 2 and result.stdout == ""
    assert "a score is not finite or exceeds" in result.stderr


def test_each_codeword_comes_from_the_key_version_its_record_names(crowd, tmp_path):
    """A record naming a fingerprint key version this KMS does not hold is excluded, listed, and still counted."""
    workdir = tmp_path / "work"
    shutil.copytree(crowd.workdir, workdir)
    ports = local_ports(Settings(workdir=workdir), MovableClock())
    ports.ledger.append("issued", "m-retired", {
        "user_id": "dave", "request_id": "r-dave", "base_model_version": "digits-mlp-v1",
        "fingerprint_key_id": "local-fingerprint-retired"}, ports.clock())
    path = tmp_path / "leak.tflite"
    path.write_bytes(crowd.source)
    result = CliRunner().invoke(main, ["verify", str(path), "--workdir", str(workdir), "--json"])
    body = strict_json(result.stdout)
    assert result.exit_code == 0 and body["accused"] == [SOURCE]
    assert body["models_ranked"] == CROWD + 4 and body["models_scored"] == CROWD + 3
    assert body["log10_p_threshold"] == pytest.approx(math.log10(1e-9 / (CROWD + 4)))
    (excluded,) = body["excluded_records"]
    assert excluded.startswith("records/m-retired/issued.json: fingerprint key version "
                               "'local-fingerprint-retired' is unavailable")
    assert {c["fingerprint_key_id"] for c in body["candidates"]} == {ports.kms.fingerprint_key_id}


# --- the sandbox the file is read in

def test_the_sandbox_reads_what_the_process_itself_reads(crowd, tmp_path):
    path = tmp_path / "leak.tflite"
    path.write_bytes(crowd.source)
    apart, here = read_model_isolated(path), read_model(path)
    assert apart.format == here.format == "tflite float32"
    for got, want in zip(apart.kernels + apart.biases, here.kernels + here.biases, strict=True):
        assert np.array_equal(got, want)


def test_a_parser_that_crashes_leaves_no_verdict_and_holds_no_credentials(tmp_path, issued, monkeypatch):
    """The child is killed mid-parse (as a parser that crashes is): unreadable. While it runs, its environment
    holds none of the parent's credentials or settings."""
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/secret/sa.json")
    monkeypatch.setenv("IML_KMS_SIGNING_KEY_VERSION", "projects/p/locations/l/keyRings/r/cryptoKeys/k/cryptoKeyVersions/1")
    keras_file = tmp_path / "model.keras"
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        attacks.to_keras(issued.models["alice"]).save(keras_file)  # TensorFlow's import keeps the parser busy
    outcome: list[BaseException] = []
    reader = threading.Thread(target=lambda: _capture(outcome, read_model_isolated, keras_file))
    reader.start()
    child = _wait_for_child(str(keras_file))
    environment = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
    names = {entry.split(b"=", 1)[0].decode() for entry in environment if entry}
    assert not {name for name in names if name.startswith(("GOOGLE", "IML_", "STORAGE_", "PUBSUB_"))}
    assert names <= {"PATH", "HOME", "TMPDIR", "LANG", "TF_CPP_MIN_LOG_LEVEL", "CUDA_VISIBLE_DEVICES"}
    os.kill(child, signal.SIGSEGV)
    reader.join(60)
    (error,) = outcome
    assert isinstance(error, UnreadableModel) and "killed by SIGSEGV" in str(error)


def _capture(outcome: list, function, *args) -> None:
    try:
        function(*args)
    except BaseException as error:  # the thread hands any outcome to the test
        outcome.append(error)


def _wait_for_child(argument: str) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    command = (entry / "cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if argument.encode() in command and b"-I" in command:
                    return int(entry.name)
        time.sleep(0.05)
    raise AssertionError("the parser's child process never appeared")


def test_a_parser_out_of_time_or_memory_is_unreadable(crowd, tmp_path):
    path = tmp_path / "leak.tflite"
    path.write_bytes(crowd.source)
    with pytest.raises(UnreadableModel, match="did not finish within 0.01 s"):
        read_model_isolated(path, ReadLimits(seconds=0.01))
    with pytest.raises(UnreadableModel, match="ran out of its 64 MiB of memory|parser failed"):
        read_model_isolated(path, ReadLimits(memory_bytes=64 << 20))


def test_truncated_and_garbage_files_exit_2(crowd, tmp_path):
    for name, data in [("empty.tflite", b""), ("truncated.tflite", crowd.source[:3000]),
                       ("garbage.tflite", os.urandom(5000)), ("header.tflite", crowd.source[:8] + os.urandom(4000))]:
        path = tmp_path / name
        path.write_bytes(data)
        code, result = verify_cli(crowd, path)
        assert code == 2 and result.stdout == "" and "error:" in result.stderr, name


def test_a_handed_back_format_outside_the_readers_list_or_compressed_arrays_are_refused():
    """A parser exploited by its file could smuggle text out through the format, or inflate in the verifier."""
    import io

    from watermark.reader import ReadModel
    from watermark.sandbox import from_npz, to_npz

    model = ReadModel("tflite float32", [np.ones((2, 3))], [np.zeros(3)])
    assert from_npz(to_npz(model)).format == "tflite float32"
    with pytest.raises(UnreadableModel, match="no known format"):
        from_npz(to_npz(ReadModel("tflite float32 GOOGLE_APPLICATION_CREDENTIALS=/x", model.kernels, model.biases)))
    squeezed = io.BytesIO()
    np.savez_compressed(squeezed, format=np.array("keras"), kernel_000=np.zeros((2, 3)), bias_000=np.zeros(3))
    with pytest.raises(UnreadableModel, match="compressed"):
        from_npz(squeezed.getvalue())


def test_a_folder_is_taken_in_with_files_only_and_its_digest_is_sha256sum_of_its_manifest(tmp_path):
    import subprocess

    from watermark.sandbox import file_sha256, snapshot

    folder = tmp_path / "saved"
    (folder / "variables").mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"graph")
    (folder / "variables" / "variables.index").write_bytes(b"index")
    copy = snapshot(folder, tmp_path)
    manifest = subprocess.run("find . -type f | sed 's|^./||' | LC_ALL=C sort | xargs sha256sum | sha256sum",
                              shell=True, cwd=folder, capture_output=True, text=True, check=True).stdout.split()[0]
    assert file_sha256(copy) == manifest
    (folder / "variables" / "elsewhere").symlink_to("/etc/hostname")
    (tmp_path / "again").mkdir()
    with pytest.raises(UnreadableModel, match="a link, a pipe or a device"):
        snapshot(folder, tmp_path / "again")


def test_a_disguised_copy_that_names_nobody_is_flagged_for_review(crowd, tmp_path):
    """Pixel 0 of every digit is 0: scaling its weights leaves the model's function alone but scrambles the
    cosine matching. Nobody is accused (a missed accusation, never a false one), and the verdict says to look."""
    path = tmp_path / "disguised.tflite"
    path.write_bytes(attacks.mutate_tflite(crowd.source, [Mutation("scale-row", 0, 0, 1e6)]))
    code, result = verify_cli(crowd, path)
    body = strict_json(result.stdout)
    assert code == 1 and body["accused"] == [] and body["needs_review"] is True
    assert any("alignment to digits-mlp-v1 matched" in reason for reason in body["review_reasons"])


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
    result = CliRunner().invoke(main, ["verify", str(path), "--workdir", str(workdir), "--json"])
    body = strict_json(result.stdout)
    assert result.exit_code == 0 and body["accused"] == [SOURCE] and body["models_ranked"] == CROWD + 5
    assert sorted(body["excluded_records"]) == [
        "records/yyy/issued.json: the record names no valid base model version",
        "records/zzz/issued.json: the record names no valid base model version"]


def test_a_report_never_overwrites_a_file(crowd, tmp_path):
    path = tmp_path / "leak.tflite"
    path.write_bytes(crowd.source)
    code, result = verify_cli(crowd, path, "--report", str(path))  # would replace the evidence itself
    assert code == 2 and "exists already" in result.stderr and path.read_bytes() == crowd.source
    (tmp_path / "r.json").write_text("earlier twin")
    code, result = verify_cli(crowd, path, "--report", str(tmp_path / "r.html"))
    assert code == 2 and not (tmp_path / "r.html").exists()
    assert (tmp_path / "r.json").read_text() == "earlier twin"


def test_a_closed_pipe_is_exit_2_and_takes_the_report_back(crowd, tmp_path):
    """`iml verify ... | head -c 0`: the verdict never reached anyone, so it is no verdict, and no report stays."""
    import subprocess
    import sys

    path = tmp_path / "leak.tflite"
    path.write_bytes(crowd.source)
    report = tmp_path / "r.html"
    iml = f"{sys.executable} -m iml verify {path} --workdir {crowd.workdir}"
    for extra in ("--json", f"--json --report {report}", ""):
        done = subprocess.run(["bash", "-c", f"{iml} {extra} | (exec 0<&-; sleep 0); exit ${{PIPESTATUS[0]}}"],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, (extra, done.stderr)
        assert not report.exists() and not report.with_suffix(".json").exists()
