"""The floor plan holds: layers point down only (infra <- watermark <- functions <- iml), the sealed format is a
leaf library, the device client needs the format alone, and no two modules import each other, even lazily.

Every import statement of every module is read (ast), including those inside functions, and every
importlib.import_module or __import__ call whose name is a string (an f-string names every module its
constant beginning names): an arrow drawn late is an arrow all the same.
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
        targets = {target for target in _imported(path, name) if target.split(".")[0] in PACKAGES}
        graph[name] = {known for target in targets for known in _known(target, files)}
    return graph


def third_party(name: str) -> set[str]:
    """The top-level names outside the project that module `name` imports."""
    path = ROOT / (name.replace(".", "/") + ".py")
    if not path.exists():
        path = ROOT / name.replace(".", "/") / "__init__.py"
    return {target.split(".")[0] for target in _imported(path, name) if target.split(".")[0] not in PACKAGES}


def _imported(path, name: str) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and _call_name(node.func) in ("import_module", "__import__") and node.args:
            argument = node.args[0]
            if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
                found.add(argument.value)
            elif isinstance(argument, ast.JoinedStr) and argument.values \
                    and isinstance(argument.values[0], ast.Constant):
                found.add(argument.values[0].value + "*")  # every module whose name begins so
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found |= {f"{base}.{alias.name}" for alias in node.names} | {base}
    return found


def _call_name(function: ast.AST) -> str | None:
    return function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", None)


def _known(target: str, files: dict) -> set[str]:
    """The modules `target` names: the longest prefix that is a module (`from functions import model` names a
    module), or, for a name ending in *, every module it begins."""
    if target.endswith("*"):
        return {name for name in files if name.startswith(target[:-1])}
    parts = target.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in files:
            return {".".join(parts[:end])}
    return {target}


def layer(name: str) -> int:
    return PACKAGES.index(name.split(".")[0])


GRAPH = modules()


def test_every_arrow_points_down_or_stays_on_its_floor():
    upward = sorted(f"{source} -> {target}" for source, targets in GRAPH.items() for target in targets
                    if layer(target) > layer(source))
    assert upward == []


def test_the_sealed_format_is_a_leaf_needing_the_standard_library_and_cryptography_only():
    """Its modules, and the package above it that importing it runs first."""
    for name in [LEAF.rpartition(".")[0]] + [m for m in GRAPH if m == LEAF or m.startswith(LEAF + ".")]:
        assert {t for t in GRAPH[name] if not t.startswith(LEAF)} == set(), name
        assert third_party(name) <= set(sys.stdlib_module_names) | {"cryptography", "__future__"}, name


def test_the_device_client_needs_the_sealed_format_alone():
    assert {t for t in GRAPH["iml.device"] if not t.startswith(LEAF)} == set()


def test_the_dynamic_arrows_are_seen():
    """The chain loads a step's module by name; the graph knows it, and knows it points down."""
    assert {"functions.steps.encrypt", "functions.steps.generate"} <= GRAPH["functions.chain"]


@pytest.mark.parametrize("floor", PACKAGES)
def test_no_module_imports_itself_back_through_others(floor):
    """No cycle among the modules."""
    def reaches(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for target in GRAPH.get(todo.pop(), ()):
                if target not in seen:
                    seen.add(target)
                    todo.append(target)
        return seen

    cycles = sorted(name for name in GRAPH if name.split(".")[0] == floor and name in reaches(name))
    assert cycles == []
