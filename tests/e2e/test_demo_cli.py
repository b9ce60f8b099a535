"""The demo and the verifier as a user runs them: `iml demo --users 2 --models-per-user 2 --json`, then
`iml verify`."""
from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from PIL import Image

from infra.ledger import canonical_json
from tests.helpers import DIGITS_BASE, ROOT


def iml(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "iml", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def demo(tmp_path_factory, base_models_dir) -> tuple[dict, Path, subprocess.CompletedProcess]:
    """`iml demo` in a workdir that holds the run's base model already (the demo reuses a workdir's)."""
    workdir = tmp_path_factory.mktemp("demo")
    shutil.copytree(base_models_dir, workdir / "buckets" / "models")
    done = iml("demo", "--users", "2", "--models-per-user", "2", "--workdir", str(workdir), "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout), workdir, done  # stdout is the JSON object and nothing else


def test_every_user_runs_their_own_decrypted_model(demo):
    report, workdir, _ = demo
    assert [u["user_id"] for u in report["users"]] == ["user-001", "user-001", "user-002", "user-002"]
    assert len({u["model_id"] for u in report["users"]}) == 4 and report["models_per_user"] == 2
    for user in report["users"]:
        assert user["accuracy_on_device"] >= 0.85
        assert abs(user["accuracy_on_device"] - user["accuracy_watermarked"]) < 0.005  # TFLite == Keras
        assert abs(user["accuracy_unwatermarked"] - user["accuracy_watermarked"]) <= 0.02  # the fingerprint's cost
        assert user["accuracy_unwatermarked"] > user["accuracy_base_model"]  # the individual model is worth it
        folder = workdir / "devices" / user["user_id"]
        assert stat.S_IMODE((folder / "device.key").stat().st_mode) == 0o600
        serialization.load_pem_private_key((folder / "device.key").read_bytes(), password=None)
        assert (folder / "model.tflite").read_bytes()[4:8] == b"TFL3"
        assert (folder / "device.pub").is_file() and (folder / "model.iml").is_file()
    assert report["dead_letters"] == []
    assert set(report["timings"]) >= {"generate", "watermark", "encrypt", "publish", "expire"}


def test_the_leaked_model_names_its_user_and_a_model_never_issued_names_nobody(demo):
    report, _, _ = demo
    leak = report["leak"]
    assert leak["accused"] == [leak["leaked_user"]]
    theirs = {u["model_id"] for u in report["users"] if u["user_id"] == leak["leaked_user"]}
    assert leak["leaked_model"] in theirs and set(leak["accused_models"]) == theirs  # one identity, both models
    assert leak["log10_p_value"] <= leak["log10_p_threshold"] <= -9
    assert leak["log10_p_value"] == pytest.approx(-leak["score"] ** 2 / (2 * math.log(10)))
    assert leak.get("p_value", 1e-300) > 0  # given only where a double holds it: never 0
    assert report["never_issued"]["accused"] == []
    assert report["never_issued"]["best_p_value"] > 1e-3


def test_delivered_models_expire_and_the_ledger_records_it(demo):
    report, workdir, _ = demo
    assert report["expiry"] == {"delivered_before": 4, "remaining": 0, "ledger_expired_records": 4}
    assert not any((workdir / "buckets" / "delivery").rglob("*.iml"))


def test_iml_verify_exit_status_says_the_verdict(demo):
    report, workdir, _ = demo
    accused = iml("verify", report["leak"]["file"], "--workdir", str(workdir), "--json")
    assert accused.returncode == 0, accused.stderr
    verdict = json.loads(accused.stdout)
    assert verdict["accused"] == [report["leak"]["leaked_user"]]
    assert verdict["candidates"][0]["user_id"] == report["leak"]["leaked_user"]
    assert set(verdict["candidates"][0]) >= {"user_id", "model_ids", "score", "log10_p_value", "fingerprint_key_id",
                                             "fingerprint_scheme", "accused"}
    assert verdict["identities_ranked"] == 2 and verdict["records_read"] == 4

    nobody = iml("verify", report["never_issued"]["file"], "--workdir", str(workdir), "--json")
    assert nobody.returncode == 1 and json.loads(nobody.stdout)["accused"] == []

    human = iml("verify", report["leak"]["file"], "--workdir", str(workdir))
    assert human.returncode == 0 and "Accused: " + report["leak"]["leaked_user"] in human.stdout


def test_iml_verify_errors_exit_2_with_a_clear_message(demo, tmp_path):
    report, workdir, _ = demo
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"this is no model")
    not_a_model = iml("verify", str(junk), "--workdir", str(workdir))
    assert not_a_model.returncode == 2 and "not a TFLite model" in not_a_model.stderr
    truncated = tmp_path / "truncated.tflite"
    truncated.write_bytes(Path(report["leak"]["file"]).read_bytes()[:4000])
    assert iml("verify", str(truncated), "--workdir", str(workdir)).returncode == 2
    no_workdir = iml("verify", report["leak"]["file"], "--workdir", str(tmp_path / "empty"))
    assert no_workdir.returncode == 2 and "holds no pipeline keys" in no_workdir.stderr


def test_a_tampered_ledger_record_is_reported_and_never_used(demo, tmp_path):
    """The leaked user's identity stands on its records whose signatures verify: with one of two tampered, the
    other still accuses; with both tampered, nobody is."""
    report, workdir, _ = demo
    copy = tmp_path / "work"
    shutil.copytree(workdir, copy)
    first, second = [u["model_id"] for u in report["users"] if u["user_id"] == report["leak"]["leaked_user"]]
    excluded = []
    for tampered, exit_status in ((first, 0), (second, 1)):
        record_path = copy / "buckets" / "evidence" / "records" / tampered / "issued.json"
        body = json.loads(record_path.read_text())
        body["record"]["watermark_strength"] = 0.5
        record_path.write_text(json.dumps(body))
        done = iml("verify", report["leak"]["file"], "--workdir", str(copy), "--json")
        verdict = json.loads(done.stdout)
        excluded.append(f"records/{tampered}/issued.json: signature does not verify")
        assert done.returncode == exit_status and sorted(verdict["excluded_records"]) == sorted(excluded)
        accused = [c["model_ids"] for c in verdict["candidates"] if c["accused"]]
        assert accused == ([[second]] if tampered == first else [])


def test_no_secret_reaches_a_log_line(demo):
    _, workdir, done = demo
    log_lines = (workdir / "logs" / "pipeline.jsonl").read_text().splitlines()
    assert log_lines, "the pipeline logs what it does"
    for line in log_lines:
        entry = json.loads(line)
        assert {"severity", "message"} <= set(entry)
    ready = [json.loads(p.read_text()) for p in (workdir / "topics" / "iml-ready").glob("*.json")]
    secrets = [r["download_url"] for r in ready] + ["PRIVATE KEY", "expires="]
    secrets += [(workdir / "kms" / "local-keys.json").read_text().split('"wrap_key": "')[1][:20]]
    everything = "\n".join(log_lines) + done.stderr
    for secret in secrets:
        assert secret not in everything


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("CI") == "true":
        pytest.fail("chromium is missing under CI: .ci/run installs Debian's chromium")
    pytest.skip("chromium is not installed here (apt-get install chromium) to render the evidence report")


def test_the_evidence_report_renders_and_its_signed_twin_verifies(demo, tmp_path):
    report, workdir, _ = demo
    html_path = tmp_path / "evidence" / "report.html"
    done = iml("verify", report["leak"]["file"], "--workdir", str(workdir), "--report", str(html_path))
    assert done.returncode == 0, done.stderr
    page = html_path.read_text()
    leaked_sha = hashlib.sha256(Path(report["leak"]["file"]).read_bytes()).hexdigest()
    assert f"Accused: {report['leak']['leaked_user']}" in page and leaked_sha in page
    assert "Signature verified: <b>yes</b>" in page and "iml verify " in page

    twin = json.loads(html_path.with_suffix(".json").read_text())
    public_key = serialization.load_pem_public_key(twin["report"]["ledger_public_key_pem"].encode())
    signature = base64.b64decode(twin["signature"])
    public_key.verify(signature, canonical_json(twin["report"]), ec.ECDSA(hashes.SHA256()))
    twin["report"]["accused"] = ["someone-else"]
    with pytest.raises(InvalidSignature):
        public_key.verify(signature, canonical_json(twin["report"]), ec.ECDSA(hashes.SHA256()))

    shot = tmp_path / "shot.png"
    subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                    "--window-size=1000,1000", f"--screenshot={shot}", html_path.as_uri()],
                   capture_output=True, timeout=120, check=True)
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3).astype(int)

    def count(rgb: tuple[int, int, int]) -> int:
        return int(np.sum(np.abs(pixels - rgb).sum(axis=1) < 40))

    assert count((0xD6, 0x27, 0x28)) > 100, "the threshold line of the plot is not on screen"
    assert count((0x2C, 0xA0, 0x2C)) > 100, "the accused model's mark is not on screen"


def test_verify_reads_a_ledger_from_a_bucket(demo, tmp_path):
    """--ledger gs://BUCKET: the records in Cloud Storage (the emulator), the keys and base model from IML_*."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    from tests.helpers import gcs_emulator

    report, workdir, _ = demo
    with gcs_emulator() as (endpoint, _):
        client = storage.Client(project="iml-test", credentials=AnonymousCredentials(),
                                client_options={"api_endpoint": endpoint})
        bucket = client.create_bucket("iml-evidence")
        records = workdir / "buckets" / "evidence"
        for path in records.rglob("*.json"):
            bucket.blob(path.relative_to(records).as_posix()).upload_from_filename(path)
        env = {**os.environ, "STORAGE_EMULATOR_HOST": endpoint, "IML_WORKDIR": str(workdir),
               "GOOGLE_CLOUD_PROJECT": "iml-test"}
        done = subprocess.run([sys.executable, "-m", "iml", "verify", report["leak"]["file"], "--ledger",
                               "gs://iml-evidence", "--json"], cwd=ROOT, capture_output=True, text=True, env=env,
                              timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["accused"] == [report["leak"]["leaked_user"]]
    neither = iml("verify", report["leak"]["file"])
    assert neither.returncode == 2 and "either --workdir DIR or --ledger URI" in neither.stderr


def test_verify_refuses_another_architecture_and_an_empty_ledger(demo, tmp_path):
    from watermark.research import attacks
    from watermark.research.attacks import Weights

    report, workdir, _ = demo
    rng = np.random.default_rng(0)
    other = Weights([rng.normal(size=(64, 40)), rng.normal(size=(40, 10))], [np.zeros(40), np.zeros(10)])
    other_file = tmp_path / "other.tflite"
    other_file.write_bytes(attacks.to_tflite(other))
    shallow = iml("verify", str(other_file), "--workdir", str(workdir))
    assert shallow.returncode == 2 and "the model has 2 weight layers, the base model 3" in shallow.stderr

    empty = tmp_path / "empty-ledger"
    empty.mkdir()
    env_run = subprocess.run([sys.executable, "-m", "iml", "verify", report["leak"]["file"], "--ledger", str(empty)],
                             cwd=ROOT, capture_output=True, text=True, timeout=120,
                             env={**os.environ, "IML_WORKDIR": str(workdir)})
    assert env_run.returncode == 2 and "holds no record of an issued model" in env_run.stderr


def test_the_demo_trains_on_data_the_person_brings_and_each_model_beats_the_base(tmp_path, base_models_dir):
    """`iml demo --user-data DIR`: one DIR/<user_id>.npz per user, written as docs/recipes.md says."""
    from iml import simulated

    brought = tmp_path / "brought"
    brought.mkdir()
    for user in ("ana", "ben"):
        data = simulated.digits_user(f"writer-{user}")
        np.savez(brought / f"{user}.npz", x=data.train.x, y=data.train.y, x_eval=data.held_out.x,
                 y_eval=data.held_out.y)
    (brought / "notes.txt").write_text("not a user")  # ignored: only <user_id>.npz files are users
    workdir = tmp_path / "work"
    shutil.copytree(base_models_dir, workdir / "buckets" / "models")
    done = iml("demo", "--user-data", str(brought), "--workdir", str(workdir), "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert [u["user_id"] for u in report["users"]] == ["ana", "ben"]
    for user in report["users"]:
        assert user["accuracy_on_device"] > user["accuracy_base_model"] + 0.05
    assert (workdir / "buckets" / "user-data" / "ana" / "data.npz").exists()


def test_the_demo_refuses_a_brought_file_that_does_not_fit_the_recipe_naming_the_problem(tmp_path, base_models_dir):
    brought = tmp_path / "brought"
    brought.mkdir()
    np.savez(brought / "ana.npz", x=np.zeros((40, 8, 8), np.float32), y=np.zeros(40, np.int64))
    workdir = tmp_path / "work"
    shutil.copytree(base_models_dir, workdir / "buckets" / "models")
    done = iml("demo", "--user-data", str(brought), "--workdir", str(workdir))
    assert done.returncode == 2 and "recipe 'digits-mlp' needs (samples, 64)" in done.stderr
    assert "Traceback" not in done.stderr


def test_iml_recipes_lists_both_bundled_recipes_and_base_publish_publishes_once(tmp_path, base_models_dir):
    listed = iml("recipes")
    assert listed.returncode == 0
    assert "digits-mlp" in listed.stdout and "exercises-conv" in listed.stdout and DIGITS_BASE in listed.stdout
    model = base_models_dir / "base" / DIGITS_BASE / "model.keras"
    first = iml("base", "publish", "--recipe", "digits-mlp", "--model", str(model), "--workdir", str(tmp_path))
    assert first.returncode == 0, first.stderr[-2000:]
    assert "published in" in first.stdout and "12288 positions" in first.stdout
    assert (tmp_path / "buckets" / "models" / "base" / DIGITS_BASE / "manifest.json").exists()
    again = iml("base", "publish", "--recipe", "digits-mlp", "--model", str(model), "--workdir", str(tmp_path))
    assert again.returncode == 0 and "was published already" in again.stdout
    nowhere = iml("base", "publish", "--recipe", "nope", "--workdir", str(tmp_path))
    assert nowhere.returncode == 2 and "recipe 'nope' is not installed" in nowhere.stderr
    assert "oneDNN" not in first.stderr + again.stderr
