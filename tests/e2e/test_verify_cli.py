"""`iml verify` on crafted files: exit 0 with the source accused, 1 with nobody, 2 with a message and nothing
on stdout; never an innocent accused, never p = 0, never invalid JSON; the evidence report both or neither."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iml.cli import main
from tests.helpers import CROWD_SIZE, SOURCE, mutations, strict_json
from watermark.detect import format_p
from watermark.research import attacks
from watermark.research.attacks import Mutation


def verify_cli(crowd, path: Path, *extra: str):
    result = CliRunner().invoke(main, ["verify", str(path), "--workdir", str(crowd.workdir), "--json", *extra])
    return result.exit_code, result


@settings(max_examples=25, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(edits=st.lists(mutations(), min_size=1, max_size=3))
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
    from iml import simulated

    original = attacks.Weights(*_weights(crowd.source))
    framed = attacks.frame(original, **variant)
    held_out = simulated.digits_user(SOURCE).held_out
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


@pytest.mark.parametrize("layer", [1, 2])
def test_a_weight_of_1e30_is_left_out_and_the_leak_still_names_its_user(crowd, tmp_path, layer):
    """In a hidden layer, the neuron holding it is unmatched (its scale beyond 1/100 to 100) and dropped; the
    output layer carries nothing and enters no score (a carrier weight beyond 100 base spreads that alignment
    keeps is refused: tests/unit/test_detect.py). Nothing overflows, and the rest of the file still speaks, or,
    where the weight reads a unit that fires, the neuron holding it drives the outputs: the file's working path is
    not the base's and it cannot be analysed (exit 2)."""
    path = tmp_path / "far.tflite"
    path.write_bytes(attacks.mutate_tflite(crowd.source, [Mutation("set", layer, 7, 1e30)]))
    code, result = verify_cli(crowd, path)
    if code == 2:  # the weight reads a unit that fires: the model's outputs are that unit's, not the base's path
        assert layer == 1 and "reproduce" in result.stderr and "e+30" not in result.stderr and not result.stdout
        return
    assert code == 0 and strict_json(result.stdout)["accused"] == [SOURCE]


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
    assert body["log10_p_threshold"] == pytest.approx(math.log10(1e-9 / (CROWD_SIZE + 3)))
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


def test_truncated_and_garbage_files_exit_2(crowd, tmp_path):
    for name, data in [("empty.tflite", b""), ("truncated.tflite", crowd.source[:3000]),
                       ("garbage.tflite", os.urandom(5000)), ("header.tflite", crowd.source[:8] + os.urandom(4000))]:
        path = tmp_path / name
        path.write_bytes(data)
        code, result = verify_cli(crowd, path)
        assert code == 2 and result.stdout == "" and "error:" in result.stderr, name


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
