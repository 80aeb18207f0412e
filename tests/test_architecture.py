"""The floors and which way imports go (docs/ARCHITECTURE.md), read from the source with ``ast``.

Every import counts, including ones inside functions: a lazy import still points the arrow upward.
"""
from __future__ import annotations

import ast
import re
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
             "chorushead.report", "chorushead.separate", "chorushead.schemas", "chorushead.sample",
             "chorushead.failures")
    assert violations(mods, lambda i: any(_within(i, a) for a in above)) == []


def test_stages_import_no_cli_runner_or_review():
    mods = {m: i for m, i in modules("chorushead").items() if _within(m, "chorushead.stages")}
    above = ("chorushead.runner", "chorushead.cli", "chorushead.review", "chorushead.executors",
             "chorushead.demo", "chorushead.status", "chorushead.doctor", "chorushead.report",
             "chorushead.separate", "chorushead.schemas", "chorushead.sample", "chorushead.failures")
    assert violations(mods, lambda i: any(_within(i, a) for a in above)) == []


def test_the_reader_sees_real_imports():
    """The checks above are only as good as the parser: it must see lazy and relative imports."""
    found = imports_of(ROOT / "pachorus" / "infer.py")
    assert "chorushead.core.media" in found and "pachorus.model.pachorus" in found


# ----------------------------------------------------------------------------- no import circle
def _package_of(name: str, known: set[str]) -> str:
    """The module ``name`` names, or the package it is an attribute of (``from pkg import Class``)."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name


def import_graph() -> dict[str, set[str]]:
    mods = {**modules("chorushead"), **modules("pachorus")}
    known = set(mods)
    return {m: {t for i in imps if (t := _package_of(i, known)) and t != m} for m, imps in mods.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted. A package's
    ``__init__`` counts as the package (a submodule importing its own package is not a circle with it,
    since Python runs the ``__init__`` first anyway)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if _within(v, w):          # a package imported by its own submodule
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_no_import_circle_among_our_modules():
    assert circles(import_graph()) == []


def test_the_circle_finder_finds_circles():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"p": set(), "p.x": {"p"}, "p.y": {"p.x"}}) == []


# ----------------------------------------------------------------------------- formats have one home
def _sources(*packages: str, outside: str = CORE) -> dict[str, str]:
    """Path (relative to the checkout) -> source, for every module of ``packages`` not under ``outside``."""
    res = {}
    for package in packages:
        for p in (ROOT / package).rglob("*.py"):
            if not _within(module_name(p), outside):
                res[p.relative_to(ROOT).as_posix()] = p.read_text()
    return res


# The .npz files read outside the ground floor are no stage's payload: each is named here with why.
NPZ_READERS = {
    "chorushead/stages/crop.py": "its own resume chunks (.partial-crop/chunk_*/chunk.npz), read back in place",
    "chorushead/backends/spleeter.py": "the Spleeter worker's reply (its stems, a temp file)",
    "chorushead/backends/spleeter_worker.py": "the mix the adapter hands the worker (a temp file)",
    "chorushead/backends/landmarks.py": "the MediaPipe worker's reply (landmarks, a temp file) and its canonical face",
    "pachorus/export.py": "pachorus infer's own per-singer .npy outputs",
    "pachorus/infer.py": "shape codes the user gives as .npy files",
}


def test_stage_payloads_are_read_only_through_the_ground_floor():
    """Arrays crossing from one stage to the next are read by core.payloads (typed, checked): no other
    module opens an .npz by key (docs/ARCHITECTURE.md, "Payloads")."""
    found = sorted(path for path, src in _sources("chorushead", "pachorus").items()
                   if re.search(r"\b(np|numpy)\.load\(", src) and path not in NPZ_READERS)
    assert found == []
    stale = sorted(p for p in NPZ_READERS if not re.search(r"\b(np|numpy)\.load\(", (ROOT / p).read_text()))
    assert stale == [], "no longer reads an .npz: drop it from NPZ_READERS"


LMDB_KEYS = ("META_KEY", "GENERATION_KEY", "INDEX_KEY", "DONE_PREFIX", "WINDOW_PREFIX")
KEY_TEXT = re.compile(r"^(w/|__(meta|generation|index|done)__)\S*$")


def _key_uses(path: str, src: str) -> list[str]:
    tree = ast.parse(src, path)
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    uses = []
    for n in ast.walk(tree):
        if isinstance(n, (ast.Name, ast.Attribute)) and (n.id if isinstance(n, ast.Name) else n.attr) in LMDB_KEYS:
            uses.append(f"{path}:{n.lineno} {n.id if isinstance(n, ast.Name) else n.attr}")
        elif isinstance(n, ast.alias) and n.name in LMDB_KEYS:
            uses.append(f"{path} imports {n.name}")
        elif isinstance(n, ast.Constant) and id(n) not in docstrings and isinstance(n.value, (str, bytes)):
            text = n.value.decode(errors="replace") if isinstance(n.value, bytes) else n.value
            if KEY_TEXT.match(text):
                uses.append(f"{path}:{n.lineno} {text!r}")
    return uses


def test_lmdb_keys_live_only_in_core_windows():
    """Keys, done markers, deletion, meta merge and the generation are core.windows' (WindowWriter,
    WindowReader, packed_videos, parse_window_key): no other module names a key or builds one."""
    found = [u for path, src in _sources("chorushead", "pachorus", "benchmarks").items() for u in _key_uses(path, src)]
    assert found == []
    assert _key_uses("x.py", 'k = b"__done__/" + v\nt = "w/o BGM"\nf"w/{v}"') == ["x.py:1 '__done__/'", "x.py:3 'w/'"]


# The coefficient layout (expression 0-50, jaw 50-53, pose 53-56) is named once, in core.windows.
COEFF_LITERAL = re.compile(r"\[[^\]\n]*?\b(50|53|56)\s*:|:\s*(50|53|56)\s*[\],]|[\[,]\s*(50|53)\s*\]"
                           r"|slice\(\s*(50|53)\b|\b(JAW_OPEN|JAW|N_EXP)\s*=\s*50\b")


def test_no_coefficient_slice_literal_outside_the_ground_floor():
    found = [f"{path}:{i}: {line.strip()}" for path, src in _sources("chorushead", "pachorus", "benchmarks").items()
             for i, line in enumerate(src.splitlines(), 1) if COEFF_LITERAL.search(line.split("#")[0])]
    assert found == []
    for bad in ("c[:, :50]", "x[..., 50:53]", "c[53:56]", "c[:, 50]", "JAW = 50", "slice(50, 56)", "c[..., 53:]"):
        assert COEFF_LITERAL.search(bad), bad
    for fine in ("c[:, EXP]", "n = 50", "bins=50", "x[:, :5]", "range(50)"):
        assert not COEFF_LITERAL.search(fine), fine


# ----------------------------------------------------------------------------- who writes records
def test_only_the_runner_and_the_review_decisions_append_records():
    """Stage manifests are appended by the runner alone; ``review.jsonl`` by core.decisions.record_decision,
    which only the review server calls (docs/ARCHITECTURE.md)."""
    src = _sources("chorushead", "pachorus", outside="chorushead.core")
    assert sorted(p for p, s in src.items() if re.search(r"\bManifest\(", s) and ".append(" in s) == ["chorushead/runner.py"]
    assert sorted(p for p, s in src.items() if re.search(r"\brecord_decision\(", s)) == ["chorushead/review/server.py"]


def test_stages_open_no_lmdb_for_writing_but_through_core():
    src = _sources("chorushead/stages")
    assert sorted(p for p, s in src.items() if "open_env(" in s or "lmdb.open(" in s) == []


# ----------------------------------------------------------------------------- the CLIs say what they have
def test_each_cli_docstring_names_every_command():
    import typer
    import chorushead.cli
    import pachorus.cli
    for mod in (chorushead.cli, pachorus.cli):
        first = mod.__doc__.splitlines()[0]
        missing = [c for c in typer.main.get_command(mod.app).commands if not re.search(rf"\b{c}\b", first)]
        assert missing == [], f"{mod.__name__}'s opening line does not name {missing}"


# ----------------------------------------------------------------------------- one home for ffmpeg, isolated workers
def test_every_ffmpeg_command_line_is_in_core_media():
    found = sorted(p for p, s in _sources("chorushead", "pachorus", outside="chorushead.core.media").items()
                   if re.search(r"""["'](ffmpeg|ffprobe)["']|ffmpeg_exe\(|imageio_ffmpeg""", s))
    assert found == []


def test_worker_scripts_import_nothing_of_ours_but_the_protocol():
    """``*_worker.py`` run under other interpreters (docs/ARCHITECTURE.md, "Adding a backend")."""
    scripts = sorted((ROOT / "chorushead" / "backends").glob("*_worker.py"))
    assert scripts
    for p in scripts:
        assert imports_of(p) == set(), f"{p.name} imports {sorted(imports_of(p))}"


# ----------------------------------------------------------------------------- one copy of each rule
def test_one_auto_device_rule_and_one_cross_fade():
    """docs/ARCHITECTURE.md: ``core.device.pick_device`` is the one "auto" rule (the EMOCA worker, in its
    own interpreter, keeps a two-line copy); ``backends/crossfade.py`` is the one chunk cross-fade."""
    src = _sources("chorushead", "pachorus", outside="chorushead.core.device")
    auto = sorted(p for p, s in src.items()
                  if re.search(r"""["']cuda["']\s+if\s+torch\.cuda\.is_available\(\)""", s))
    assert auto == ["chorushead/backends/emoca_worker.py"]
    fades = sorted(p for p, s in src.items() if re.search(r"^def (chunk_starts|crossfade\w*)\(", s, re.M))
    assert fades == ["chorushead/backends/crossfade.py"]
    users = sorted(p for p, s in src.items() if re.search(r"\bcrossfade_into\b", s) and p != "chorushead/backends/crossfade.py")
    assert users == ["chorushead/backends/spleeter_worker.py", "chorushead/stages/duet_split.py"]


def test_one_wording_of_a_failure():
    """``Record.failure_line`` words a failed record; no module formats ``error_class: message`` itself."""
    src = _sources("chorushead", "pachorus", outside="chorushead.core.manifest")
    found = sorted(p for p, s in src.items() if re.search(r"\{\w+\.error_class[^}]*\}:\s*\{\w+\.message", s))
    assert found == []
