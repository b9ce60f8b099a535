"""`iml package`: the function source archives Terraform uploads."""
from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import pytest
from click.testing import CliRunner

from iml.cli import main as cli
from iml.package import ARCHIVES, build

# Imports main.py from the extracted archive (not the installed project) and reports what it loaded: every
# distribution behind a loaded module, and whether TensorFlow came with it.
PROBE = """
import json, re, sys
from importlib.metadata import packages_distributions
import main
import functions
tensorflow_at_import = "tensorflow" in sys.modules
for step_module in sys.argv[1:]:  # what a step loads once it makes a model
    __import__(step_module)
owners = packages_distributions()
# setuptools' _distutils_hack rides along with every interpreter, and a namespace package without a file is
# what a failed optional import leaves behind: neither is an import of ours
loaded = {re.sub(r"[-_.]+", "-", d).lower() for m, module in list(sys.modules.items())
          if not m.startswith("_") and getattr(sys.modules.get(m.split('.')[0]), "__file__", None)
          for d in owners.get(m.split('.')[0], [])}
print(json.dumps({"functions_from": functions.__file__, "tensorflow": tensorflow_at_import,
                  "entry_points": [n for n in ("generate", "watermark", "encrypt", "publish", "expire")
                                   if callable(getattr(main, n, None))],
                  "distributions": sorted(loaded)}))
"""


def test_archives_are_byte_for_byte_reproducible(tmp_path):
    first = build(tmp_path / "a")
    second = build(tmp_path / "b")
    assert set(first) == {"tensorflow", "light"}
    for name in first:
        assert first[name][0].read_bytes() == second[name][0].read_bytes()
        assert first[name][1] == second[name][1]


@pytest.mark.parametrize("archive", ARCHIVES, ids=lambda a: a.name)
def test_an_archive_holds_its_entry_points_and_pins_what_they_load(archive, tmp_path):
    path, _ = build(tmp_path / "dist")[archive.name]
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        assert names == sorted(names) and "main.py" in names and "functions/schemas/signup.v1.json" in names
        assert not any(name.startswith("iml/") or "__pycache__" in name for name in names)
        requirements = zf.read("requirements.txt").decode().splitlines()
        zf.extractall(tmp_path / "src")
    pins = dict(line.split("==") for line in requirements if line and not line.startswith("#"))
    assert ("tensorflow-cpu" in pins) == (archive.name == "tensorflow")

    step_modules = [f"functions.steps.{name}" for name in archive.entry_points]
    probe = subprocess.run([sys.executable, "-c", PROBE, *step_modules], cwd=tmp_path / "src", capture_output=True,
                           text=True,
                           env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path / "src")}, timeout=120)
    assert probe.returncode == 0, probe.stderr
    loaded = json.loads(probe.stdout)
    assert loaded["functions_from"].startswith(str(tmp_path / "src"))
    assert loaded["entry_points"] == list(archive.entry_points)
    assert loaded["tensorflow"] is False  # even the TensorFlow archive loads it only when a model is made
    unpinned = set(loaded["distributions"]) - set(pins) - {"iml-pipeline"}
    assert not unpinned, f"{archive.name} loads distributions its requirements.txt does not pin: {unpinned}"


def test_archives_hold_the_pipelines_code_and_no_research_code(tmp_path):
    """The attack suite and the baseline serve tests and benchmarks; a deployed function never carries them."""
    for path, _ in build(tmp_path).values():
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
        assert {name.split("/")[0] for name in names} == {"main.py", "requirements.txt", "functions", "infra",
                                                          "watermark"}
        assert not [name for name in names if name.startswith("watermark/research/")]
        assert {"functions/chain.py", "functions/steps/encrypt.py", "infra/envelope/__init__.py",
                "watermark/verify.py"} <= set(names)


def test_package_command_prints_each_archive_with_its_digest(tmp_path):
    result = CliRunner().invoke(cli, ["package", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line.split()[0] for line in lines] == [str(tmp_path / "iml-functions-tensorflow.zip"),
                                                   str(tmp_path / "iml-functions-light.zip")]
    assert all(len(line.split()[2]) == 64 for line in lines)
