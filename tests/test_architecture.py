"""The floors and which way imports go (docs/ARCHITECTURE.md), read from the source with ``ast``.

Every import counts, including ones inside functions: a lazy import still points the arrow upward.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORE = "chorushead.core"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Absolute names of every project module ``path`` imports (relative imports resolved)."""
    mod = module_name(path)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.add(name)
            out.update(f"{name}.{a.name}" for a in node.names)   # `from pkg import module`
    return {n for n in out if n.split(".")[0] in ("chorushead", "pachorus")}


def modules(package: str) -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in (ROOT / package.replace(".", "/")).rglob("*.py")}


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(mods: dict[str, set[str]], forbidden) -> list[str]:
    return sorted(f"{m} imports {i}" for m, imps in mods.items() for i in imps if forbidden(i))


def test_the_ground_floor_imports_nothing_above_it():
    assert violations(modules(CORE), lambda i: not _within(i, CORE)) == []


def test_chorushead_never_imports_the_trainer():
    assert violations(modules("chorushead"), lambda i: _within(i, "pachorus")) == []


def test_the_trainer_stands_only_on_the_ground_floor():
    bad = violations(modules("pachorus"), lambda i: _within(i, "chorushead") and not _within(i, CORE))
    assert bad == []


def test_backends_and_media_import_no_stage():
    mods = {m: i for m, i in modules("chorushead").items()
            if _within(m, "chorushead.backends") or m == f"{CORE}.media"}
    above = ("chorushead.stages", "chorushead.runner", "chorushead.cli", "chorushead.review",
             "chorushead.executors", "chorushead.demo", "chorushead.status", "chorushead.doctor",
             "chorushead.report", "chorushead.separate", "chorushead.schemas")
    assert violations(mods, lambda i: any(_within(i, a) for a in above)) == []


def test_stages_import_no_cli_runner_or_review():
    mods = {m: i for m, i in modules("chorushead").items() if _within(m, "chorushead.stages")}
    above = ("chorushead.runner", "chorushead.cli", "chorushead.review", "chorushead.executors",
             "chorushead.demo", "chorushead.status", "chorushead.doctor", "chorushead.report",
             "chorushead.separate", "chorushead.schemas")
    assert violations(mods, lambda i: any(_within(i, a) for a in above)) == []


def test_the_reader_sees_real_imports():
    """The checks above are only as good as the parser: it must see lazy and relative imports."""
    found = imports_of(ROOT / "pachorus" / "infer.py")
    assert "chorushead.core.media" in found and "pachorus.model.pachorus" in found
