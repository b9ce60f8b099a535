"""The floor plan holds: layers point down only (infra <- watermark <- functions <- iml), the sealed format is a
leaf library, the device client needs the format alone, and no two modules import each other, even lazily.

Every import statement of every module is read (ast), including those inside functions: an arrow drawn late
is an arrow all the same.
"""
from __future__ import annotations

import ast
import sys

import pytest

from tests.helpers import ROOT

PACKAGES = ("infra", "watermark", "functions", "iml")  # bottom to top
LEAF = "infra.envelope"


def modules() -> dict[str, set[str]]:
    """module -> the project modules it imports."""
    files = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph[name] = {target for target in _imported(ast.parse(path.read_text()), package)
                       if target.split(".")[0] in PACKAGES}
        graph[name] = {_known(target, files) for target in graph[name]}
    return graph


def third_party(name: str) -> set[str]:
    """The top-level names outside the project that `name` imports."""
    path = ROOT / (name.replace(".", "/") + ".py")
    if not path.exists():
        path = ROOT / name.replace(".", "/") / "__init__.py"
    return {target.split(".")[0] for target in _imported(ast.parse(path.read_text()), name.rpartition(".")[0])
            if target.split(".")[0] not in PACKAGES}


def _imported(tree: ast.AST, package: str) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found |= {f"{base}.{alias.name}" for alias in node.names} | {base}
    return found


def _known(target: str, files: dict) -> str:
    """The longest prefix of `target` that is a module (`from functions import model` names a module)."""
    parts = target.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in files:
            return ".".join(parts[:end])
    return target


def layer(name: str) -> int:
    return PACKAGES.index(name.split(".")[0])


GRAPH = modules()


def test_every_arrow_points_down_or_stays_on_its_floor():
    upward = sorted(f"{source} -> {target}" for source, targets in GRAPH.items() for target in targets
                    if layer(target) > layer(source))
    assert upward == []


def test_the_sealed_format_is_a_leaf_needing_the_standard_library_and_cryptography_only():
    for name in (m for m in GRAPH if m == LEAF or m.startswith(LEAF + ".")):
        assert {t for t in GRAPH[name] if not t.startswith(LEAF)} == set(), name
        assert third_party(name) <= set(sys.stdlib_module_names) | {"cryptography", "__future__"}, name


def test_the_device_client_needs_the_sealed_format_alone():
    assert {t for t in GRAPH["iml.device"] if not t.startswith(LEAF)} == set()


@pytest.mark.parametrize("floor", PACKAGES)
def test_no_module_imports_itself_back_through_others(floor):
    """No cycle among the modules (a package's __init__ re-exporting its own modules is not one)."""
    def reaches(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for target in GRAPH.get(todo.pop(), ()):
                if target not in seen and not start.startswith(target + "."):
                    seen.add(target)
                    todo.append(target)
        return seen

    cycles = sorted(name for name in GRAPH if name.split(".")[0] == floor and name in reaches(name))
    assert cycles == []
