"""The function source archives Terraform uploads: one with TensorFlow (generate, watermark), one without it
(encrypt, publish, expire), each a zip with `main.py` at its root, our packages and a pinned
`requirements.txt` (from deploy/, every package of the closure pinned with ==).

The archives are byte-for-byte reproducible from the same commit: entries in name order, fixed timestamps and
permissions, the same compression. `iml package --lock` rewrites the pins from the installed environment.
"""
from __future__ import annotations

import hashlib
import re
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from functions.chain import STEPS

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
PACKAGES = ("functions", "infra", "watermark")  # what the steps import; the CLI (iml/) stays out
LEFT_OUT = ("watermark/research",)  # the attack suite and the baseline: tests and benchmarks only
FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest a zip can say


@dataclass(frozen=True)
class Archive:
    name: str
    entry_points: tuple[str, ...]
    requires: tuple[str, ...]  # top-level distributions; --lock pins their whole closure

    @property
    def lock_file(self) -> Path:
        return DEPLOY / f"requirements-{self.name}.txt"

    def main_py(self) -> str:
        names = ", ".join(self.entry_points)
        return (f'"""Cloud Functions entry points {names}: deploy with --entry-point NAME."""\n'
                f"from functions.main import {names}  # noqa: F401\n")


LIGHT = ("functions-framework", "cryptography", "numpy", "jsonschema", "google-cloud-storage",
         "google-cloud-pubsub", "google-cloud-kms", "google-crc32c", "requests")
REQUIRES = {
    # Keras loads matplotlib when it is installed: pinned, so the deployed set is the one tested here
    "tensorflow": LIGHT + ("tensorflow-cpu", "scikit-learn", "scipy", "matplotlib"),
    "light": LIGHT,
}
ARCHIVES = tuple(Archive(kind, tuple(name for name, step in STEPS.items() if step.archive == kind), requires)
                 for kind, requires in REQUIRES.items())


class PackagingError(RuntimeError):
    """An archive cannot be built; the message says why."""


def build(out: Path) -> dict[str, tuple[Path, str]]:
    """Write every archive into `out`; {name: (path, sha256)}."""
    out.mkdir(parents=True, exist_ok=True)
    built = {}
    for archive in ARCHIVES:
        if not archive.lock_file.is_file():
            raise PackagingError(f"{archive.lock_file} is missing: run `iml package --lock` and commit it")
        files = {"main.py": archive.main_py().encode(), "requirements.txt": archive.lock_file.read_bytes()}
        for package in PACKAGES:
            for path in sorted((ROOT / package).rglob("*")):
                name = path.relative_to(ROOT).as_posix()
                if path.is_file() and path.suffix in (".py", ".json") and "__pycache__" not in path.parts \
                        and not name.startswith(LEFT_OUT):
                    files[name] = path.read_bytes()
        target = out / f"iml-functions-{archive.name}.zip"
        with zipfile.ZipFile(target, "w") as zf:
            for name in sorted(files):
                info = zipfile.ZipInfo(name, FIXED_TIME)
                info.external_attr = 0o644 << 16
                info.create_system = 3  # unix, whatever machine builds it
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, files[name], compresslevel=9)
        built[archive.name] = (target, hashlib.sha256(target.read_bytes()).hexdigest())
    return built


def lock() -> list[Path]:
    """Pin every archive's requirements, with their whole dependency closure, to the installed versions."""
    written = []
    for archive in ARCHIVES:
        pins = sorted(_closure(archive.requires).items())
        lines = [f"# {archive.name} functions ({', '.join(archive.entry_points)}): written by `iml package --lock`",
                 *(f"{name}=={version}" for name, version in pins)]
        DEPLOY.mkdir(exist_ok=True)
        archive.lock_file.write_text("\n".join(lines) + "\n")
        written.append(archive.lock_file)
    return written


def _closure(roots: tuple[str, ...]) -> dict[str, str]:
    pinned: dict[str, str] = {}
    todo = [(name, frozenset()) for name in roots]
    while todo:
        name, extras = todo.pop()
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise PackagingError(f"{name} is not installed here: install the project first") from None
        key = _normalise(dist.metadata["Name"])
        if key in pinned and not extras:
            continue
        pinned[key] = dist.version
        for requirement in dist.requires or []:
            spec, _, marker = requirement.partition(";")
            if marker and not _marker_holds(marker, extras):
                continue
            match = re.match(r"\s*([A-Za-z0-9._-]+)(\[([^\]]*)\])?", spec)
            todo.append((match.group(1), frozenset(e.strip() for e in (match.group(3) or "").split(",") if e.strip())))
    return pinned


def _marker_holds(marker: str, extras: frozenset[str]) -> bool:
    from packaging.markers import Marker

    parsed = Marker(marker.strip())
    if "extra" not in marker:
        return parsed.evaluate()
    return any(parsed.evaluate({"extra": extra}) for extra in extras)


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()
