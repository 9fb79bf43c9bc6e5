"""The import rules of docs/architecture.md, checked on the source (every import statement, including
those inside functions and under ``TYPE_CHECKING``): floors only import downwards, the engine stands
alone, and no modules import each other in a circle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "picorl"

# Top floor first. A part (a package or a top-level module of picorl) may import only parts on
# floors below its own: never one on its own floor, never one above. Keep docs/architecture.md in step.
FLOORS = [
    ["cli"],
    ["cli_tools"],
    ["train"],
    ["eval", "export"],
    ["runtime", "report"],
    ["config", "rollout"],
    ["engine", "algos", "envs", "logging"],
    ["models", "options", "distributed"],
    ["units"],
]
FLOOR = {part: i for i, row in enumerate(FLOORS) for part in row}
# The engine stands alone: besides these, it imports nothing of picorl (torch, transformers, triton only).
ENGINE_MAY_IMPORT = {"engine", "models", "options", "units"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path, known: dict[str, Path]) -> set[str]:
    """The picorl modules ``path`` imports (``from picorl.x import y`` counts ``picorl.x.y`` when that
    is a module, else ``picorl.x``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("picorl")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("picorl"):
            assert node.level == 0, f"{path}: use absolute imports"
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
    return found


def part_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(path, known) for name, path in known.items()}


def test_every_part_has_a_floor(graph):
    parts = {part_of(m) for m in graph} - {"__init__"}
    assert parts <= set(FLOOR), f"parts without a floor (add them to FLOORS and docs/architecture.md): {parts - set(FLOOR)}"


def test_imports_only_run_down(graph):
    wrong = [
        f"{m} -> {target}"
        for m, targets in graph.items()
        for target in targets
        if part_of(m) != part_of(target)
        and part_of(m) != "__init__"
        and not FLOOR[part_of(m)] < FLOOR[part_of(target)]
    ]
    assert not wrong, "imports that run sideways or back up:\n" + "\n".join(sorted(wrong))


def test_engine_stands_alone(graph):
    wrong = [
        f"{m} -> {target}"
        for m, targets in graph.items()
        if part_of(m) == "engine"
        for target in targets
        if part_of(target) not in ENGINE_MAY_IMPORT
    ]
    assert not wrong, "the engine imports the rest of picorl:\n" + "\n".join(sorted(wrong))


def test_no_circles(graph):
    """No module reaches itself through imports (Tarjan's strongly connected components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(m: str) -> None:
        index[m] = low[m] = len(index)
        stack.append(m)
        for t in graph.get(m, ()):
            if t not in index:
                visit(t)
                low[m] = min(low[m], low[t])
            elif t in stack:
                low[m] = min(low[m], index[t])
        if low[m] == index[m]:
            component = []
            while True:
                t = stack.pop()
                component.append(t)
                if t == m:
                    break
            if len(component) > 1 or m in graph.get(m, ()):
                circles.append(sorted(component))

    for m in graph:
        if m not in index:
            visit(m)
    assert not circles, f"modules that import each other: {circles}"


def test_the_checks_catch_a_broken_rule():
    """An engine module and a trainer module importing each other break all three rules."""
    toy = {"picorl.engine.a": {"picorl.train.b"}, "picorl.train.b": {"picorl.engine.a"}}
    for check in (test_imports_only_run_down, test_engine_stands_alone, test_no_circles):
        with pytest.raises(AssertionError):
            check(toy)
