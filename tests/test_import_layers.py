"""Packages import only downward, and no module imports itself back through others.

Layers, lowest first (``docs/internals.md``): ``utils`` (and ``diffvision.errors``) ←
``diffusion``, ``config`` ← ``modeling`` ← ``data`` ← ``engine`` ← ``evaluation`` ← tasks
(``diffvision.generation``, ``projects.*``) ← tools (``projects/__init__.py``, which registers
every task, and the experiment scripts). Every ``import`` of every module under ``diffvision/`` and
``projects/`` counts, the ones inside functions included.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

LAYERS = {
    "diffvision.errors": 0,
    "diffvision.utils": 0,
    "diffvision.diffusion": 1,
    "diffvision.config": 1,
    "diffvision.modeling": 2,
    "diffvision.data": 3,
    "diffvision.engine": 4,
    "diffvision.evaluation": 5,
    "diffvision.generation": 6,
    "projects": 6,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, module: str) -> list[list[str]]:
    """Every import of ``path`` as its candidate module names, most specific first (relative
    imports resolved): ``from a.b import c`` is ``["a.b.c", "a.b"]`` (the submodule ``c`` when it
    is one, else ``a.b``)."""
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [[alias.name] for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module
            found += [[f"{prefix}.{alias.name}", prefix] for alias in node.names]
    return found


def _graph() -> dict[str, set[str]]:
    """``module -> modules of diffvision/projects it imports`` (``from a import b`` counts as
    importing ``a.b`` when that is a module, else ``a``)."""
    files = {
        _module_name(p): p
        for root in ("diffvision", "projects")
        for p in sorted((REPO / root).rglob("*.py"))
    }
    graph = {}
    for module, path in files.items():
        targets = set()
        for candidates in _imports(path, module):
            name = next((c for c in candidates if c in files), candidates[-1])
            while name and name not in files:
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
        graph[module] = targets
    return graph


def _layer(module: str) -> tuple[str, int]:
    if module == "diffvision":  # the package's __init__: its version only
        return module, 0
    if module == "projects" or ".experiments." in module:  # registers / runs every task
        return "tools", 7
    for prefix in sorted(LAYERS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return prefix, LAYERS[prefix]
    raise AssertionError(f"{module} is in no layer: add its package to LAYERS")


def _package(module: str) -> str:
    """The unit whose imports must stay acyclic: a library package or a project."""
    if _layer(module)[0] == "tools":
        return "tools"
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_every_import_points_down_or_sideways():
    upward = []
    for module, targets in _graph().items():
        here, level = _layer(module)
        for target in targets:
            there, target_level = _layer(target)
            if target_level > level:
                upward.append(f"{module} ({here}, layer {level}) imports {target} (layer "
                              f"{target_level})")  # fmt: skip
    assert not upward, "upward imports:\n" + "\n".join(sorted(upward))


def test_no_import_cycle_between_modules():
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_import_cycle_between_packages():
    packages: dict[str, set[str]] = {}
    for module, targets in _graph().items():
        here = _package(module)
        packages.setdefault(here, set()).update(_package(t) for t in targets if _package(t) != here)
    cycle = _cycle(packages)
    assert cycle is None, "import cycle between packages: " + " -> ".join(cycle)


@pytest.mark.parametrize(
    ("graph", "has_cycle"),
    [({"a": {"b"}, "b": {"c"}, "c": set()}, False), ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True)],
)
def test_the_cycle_finder_finds_cycles(graph, has_cycle):
    assert (_cycle(graph) is not None) == has_cycle
