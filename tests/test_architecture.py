"""The dependency rule of docs/architecture.md, checked on the source: core <- data <- method <- report
<- stages <- harness <- cli. Nothing imports a higher layer, no stage imports another stage, no cycles."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# layer of each package (the longest matching prefix wins)
LAYERS = {
    "unhans": 6,  # the package's entry points (audit, open_run), importing the API lazily
    "unhans._version": 0,
    "unhans.pipeline": 0,
    "unhans.pipeline.core": 0,
    "unhans.pipeline.data": 1,
    "unhans.pipeline.method": 2,
    "unhans.pipeline.report": 3,
    "unhans.stages": 4,
    "unhans.pipeline.harness": 5,
    "unhans.pipeline.cli": 6,
    "unhans.pipeline.api": 6,
    "unhans.pipeline.init": 6,
}
NAMES = {0: "core", 1: "data", 2: "method", 3: "report", 4: "stages", 5: "harness", 6: "cli"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    parts = parts[:-1] if parts[-1] == "__init__" else parts
    return ".".join(parts if parts[0] == "unhans" else ("unhans", *parts))


def modules() -> dict[str, Path]:
    files = [*(ROOT / "pipeline").rglob("*.py"), *(ROOT / "stages").rglob("*.py"), *(ROOT / "unhans").glob("*.py")]
    return {module_name(f): f for f in files}


def layer(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules `path` imports, at the top or inside functions (`from a import b` counts a.b
    when b is a module)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in out if m in known}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: imports(p, known) - {m} for m, p in known.items()}


def upward_imports(g: dict[str, set[str]]) -> list[str]:
    return [
        f"{m} ({NAMES[layer(m)]}) imports {d} ({NAMES[layer(d)]})"
        for m, deps in sorted(g.items())
        for d in sorted(deps)
        if layer(d) > layer(m)
    ]


def test_no_module_imports_a_higher_layer():
    assert upward_imports(graph()) == []


def test_no_stage_imports_another_stage():
    g = graph()
    stage_modules = {m for m in g if m.startswith("unhans.stages.") and m != "unhans.stages.config"}
    assert stage_modules >= {f"unhans.stages.{s}" for s in ("index", "attribute", "score", "report")}
    bad = [f"{m} imports {d}" for m in sorted(stage_modules) for d in sorted(g[m]) if d.startswith("unhans.stages")]
    assert bad == []


def test_no_import_cycles():
    g = graph()
    seen: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        seen[m] = 1
        for d in sorted(g[m]):
            if seen.get(d) == 1:
                cycles.append(" -> ".join(path[path.index(d) :] + [m, d]) if d in path else f"{m} -> {d}")
            elif d not in seen:
                visit(d, path + [m])
        seen[m] = 2

    for m in sorted(g):
        if m not in seen:
            visit(m, [])
    assert cycles == []


def test_the_rule_catches_an_upward_import():
    """A core module that imports a stage is reported (the check cannot pass vacuously)."""
    g = graph()
    g["unhans.pipeline.core.runner"] = g["unhans.pipeline.core.runner"] | {"unhans.stages.score"}
    assert upward_imports(g) == ["unhans.pipeline.core.runner (core) imports unhans.stages.score (stages)"]


@pytest.mark.parametrize("column", ["artifact", "original_label", "art_y"])
def test_no_production_module_reads_the_planted_truth(column):
    """The plan's columns (the truth of a planted shortcut) are written by the poisoned dataset and read by
    the harness only: a stage or method that mentions them could leak the truth into a score."""
    readers = [
        m
        for m, p in modules().items()
        if layer(m) in (2, 3, 4) and (f'"{column}"' in p.read_text() or f"'{column}'" in p.read_text())
    ]
    assert readers == []


def test_no_stage_or_method_reads_the_poison_settings():
    """A planted shortcut is the dataset's business (pipeline/data/poisoned.py): no method, report or stage
    module reads a `.poison` attribute, so the stages run a poisoned dataset like any other."""
    readers = [
        m
        for m, p in modules().items()
        if layer(m) in (2, 3, 4)
        and any(isinstance(n, ast.Attribute) and n.attr == "poison" for n in ast.walk(ast.parse(p.read_text())))
    ]
    assert readers == []
