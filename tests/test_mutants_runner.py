"""The runner (chorushead.runner): cases mutation testing showed were not pinned
(docs/mutation-survivors.md, `scripts/mutation.sh runner`). The existing runner tests build whole
pipelines on real videos (seconds each); these drive it in-process with tiny stand-in stages registered
under made-up names (``STAGE_MODULES``), on a one-job local engine, so every call stays in this process
where mutmut can trace it. Values are stated by hand; comments name what each case guards."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pytest

from chorushead import runner as R
from chorushead.core.errors import StageError
from chorushead.core.manifest import Manifest, Record, file_fingerprint, fingerprint, iter_records
from chorushead.core.origin import FetchRecord, append as append_origin
from chorushead.core.shapes import Metrics, Outputs, ShapeError
from chorushead.stages import STAGE_MODULES
from chorushead.stages.base import EXEC, Context, GlobalContext, Item, Result, Stage


# ----------------------------------------------------------------------------- stand-in stages
@dataclass
class P:
    mode: str = "ok"          # what the stand-in does: ok | skip | stage_error | crash | empty | shape
    k: int = 1                # a result parameter
    device: str = field(default="cpu", metadata=EXEC)   # an execution-only one


@dataclass
class O(Outputs):
    file: Optional[str] = None
    files: Optional[list[str]] = None
    value: Optional[str] = None


@dataclass
class M(Metrics):
    n: int = 0


CALLS: list[tuple[str, str]] = []    # (stage, item) per process call, in order


def _process(name: str):
    def process(ctx: Context, params: P, model: Any) -> Result:
        CALLS.append((name, ctx.item.id))
        assert ctx.tmp.is_dir() and not any(ctx.tmp.iterdir())
        if params.mode == "stage_error":
            raise StageError("no faces found")
        if ctx.item.source.endswith("gone.mp4"):
            raise StageError("cannot read the video")
        if params.mode == "crash":
            raise KeyError("boom")
        if params.mode == "empty":
            raise StageError()
        if params.mode == "shape":
            return Result(outputs={"nope": 1}, metrics={"n": 1})
        if params.mode == "shape_rm":                  # a stage that removed its own folder, then a bad shape
            ctx.tmp.rmdir()
            return Result(outputs={"nope": 1})
        if params.mode == "skip":
            return Result(status="skipped", reason="too short")
        (ctx.tmp / "a.txt").write_text(f"{name}:{ctx.item.id}")
        (ctx.tmp / "sub").mkdir()
        (ctx.tmp / "sub" / "b.txt").write_text("b")
        return Result(outputs={"file": "a.txt", "files": ["sub/b.txt", "missing.txt"], "value": "v"},
                      metrics={"n": params.k})
    return process


def _stage(name: str, needs: tuple[str, ...] = (), **kw) -> Stage:
    if kw.get("kind") != "global":
        kw.setdefault("process", _process(name))
    return Stage(name=name, version="3", params=P, outputs=O, metrics=M, needs=needs, **kw)


def _gate_process(ctx: Context, params: P, model: Any) -> Result:
    CALLS.append(("tg", ctx.item.id))
    if params.mode == "skip" or ctx.item.id.startswith("rej"):
        return Result(status="skipped", reason="rejected")
    return Result()


SETUPS: list[Any] = []


class _Model:
    def __init__(self, params):
        self.tag = f"model-k{params.k}"

    def __call__(self, x, y=""):
        return f"{self.tag}({x},{y})"


def _setup(params: P) -> _Model:
    SETUPS.append(params)
    return _Model(params)


def _model_process(ctx: Context, params: P, model: Any) -> Result:
    if params.mode == "skip":
        return Result(status="skipped", reason="no need")   # never touches the model
    return Result(outputs={"value": model("a", y="b")}, metrics={"n": len(model.tag)})


GLOBAL_RUNS: list[list[str]] = []   # the ready items of each process_all call


PLAN_CTX: list[GlobalContext] = []


def _plan(ctx: GlobalContext, params: P) -> dict[str, Any]:
    PLAN_CTX.append(ctx)
    return {vid: {"split": "train" if i % 2 == 0 else "val", "n": len(ctx.upstream)}
            for i, vid in enumerate(ctx.upstream)}


GLOBAL_CTX: list[GlobalContext] = []


def _process_all(ctx: GlobalContext, params: P, plans: dict[str, Any]) -> dict[str, Result]:
    GLOBAL_RUNS.append(list(ctx.upstream))
    GLOBAL_CTX.append(ctx)
    out = {}
    for vid in ctx.upstream:
        prev = ctx.previous.get(vid)
        if prev is not None and prev.ok and prev.fingerprint == ctx.fingerprints[vid]:
            continue                                   # packed as it is now: left alone
        if vid.startswith("bad") or params.mode == "fail":
            out[vid] = Result(outputs={"junk": 1}, metrics={"n": 9}, status="failed", reason="cannot pack", seconds=0.5,
                              error_class="PackError" if params.mode == "fail" else None)
        elif vid.startswith("skip"):
            out[vid] = Result(status="skipped", reason="nothing to pack", seconds=0.25)
        elif params.mode == "shape":
            out[vid] = Result(outputs={"junk": 1})
        elif params.mode == "stranger":
            out["stranger"] = Result()
        else:
            plan = plans.get(vid, {"split": "-", "n": 0})
            out[vid] = Result(outputs={"value": plan["split"]}, metrics={"n": plan["n"]},
                              seconds=None if vid.endswith("0") else 0.0 if vid.endswith("9") else 2.5)
    return out


@pytest.fixture
def stages(monkeypatch):
    """Registers the stand-ins: ta (first), tg (a gate on ta), tb (needs ta and tg), tp (global, needs tb),
    tc (needs tp), tx (global without a plan); returns name -> Stage."""
    CALLS.clear()
    GLOBAL_RUNS.clear()
    SETUPS.clear()
    PLAN_CTX.clear()
    GLOBAL_CTX.clear()
    made = {
        "ta": _stage("ta"),
        "tg": _stage("tg", ("ta",), process=_gate_process, gate=True),
        "tb": _stage("tb", ("ta", "tg"), preload=("json",)),
        "tp": _stage("tp", ("tb",), kind="global", plan=_plan, process_all=_process_all, plan_reads=("ta",)),
        "tc": _stage("tc", ("tp",)),
        "tx": _stage("tx", ("ta",), kind="global", process_all=_process_all),
        "ty": _stage("ty", ("ta", "tb"), kind="global", process_all=_process_all),
        "tz": _stage("tz", kind="global", process_all=_process_all),
        "tm": _stage("tm", ("ta",), process=_model_process, setup=_setup),
        "ti": _stage("ti", identity=lambda p: {"weights": p.k}),
    }
    for name, st in made.items():
        mod = types.ModuleType(f"_runner_stand_in_{name}")
        mod.STAGE = st
        monkeypatch.setitem(sys.modules, mod.__name__, mod)
        monkeypatch.setitem(STAGE_MODULES, name, mod.__name__)
    R._MODELS.clear()
    yield made
    R._MODELS.clear()


def _pipe(stages_: list[str], params: dict | None = None, fps: int = 30) -> R.Pipeline:
    return R.Pipeline(stages=stages_, params=params or {}, fps=fps)


def _items(tmp_path: Path, *ids: str) -> list[Item]:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    res = []
    for vid in ids:
        f = src / f"{vid}.mp4"
        f.write_bytes(vid.encode())
        res.append(Item(id=vid, source=str(f)))
    return res


def _register(out: Path, items: list[Item]) -> None:
    R.save_items(out, items)


QUIET = dict(progress=False, log=lambda *_: None)


# ----------------------------------------------------------------------------- pipeline file
def test_from_config_defaults_and_overrides(stages):
    pl = R.Pipeline.from_config({"stages": ["ta", "tb"]}, {"ta": {"k": 2}}, ["tb.k=5", "ta.mode='skip'", "pipeline.fps=25",
                                                                           "tb.device=cuda:0"])
    assert pl.stages == ["ta", "tb"] and pl.fps == 25
    assert pl.params == {"ta": {"k": 2, "mode": "skip"}, "tb": {"k": 5, "device": "cuda:0"}}
    assert R.Pipeline.from_config({"stages": ["ta"]}, {}).fps == 30      # DEFAULT_FPS
    # an override's value may hold "=" and "." (split at the first of each only)
    assert R.Pipeline.from_config({"stages": ["ta"]}, {}, ['ta.mode="a=b.c"']).params == {"ta": {"mode": "a=b.c"}}
    # the caller's tables are not changed
    pipe, params = {"stages": ["ta"]}, {"ta": {"k": 2}}
    R.Pipeline.from_config(pipe, params, ["ta.k=3", "pipeline.fps=12"])
    assert pipe == {"stages": ["ta"]} and params == {"ta": {"k": 2}}
    # [stages.review] is allowed without a review stage and is not checked as a stage's parameters
    assert R.Pipeline.from_config({"stages": ["ta"]}, {"review": {"anything": 1}}).params == {"review": {"anything": 1}}


@pytest.mark.parametrize("ov", ["tbk=3", "tb=3", ".k=3", "tb.=3"])
def test_from_config_refuses_a_malformed_override(stages, ov):
    if ov == ".k=3":   # stage "" is no stage: refused as parameters for an unknown stage
        with pytest.raises(ValueError, match=r"^where: parameters for unknown stage ''$"):
            R.Pipeline.from_config({"stages": ["tb"]}, {}, [ov], "where")
        return
    with pytest.raises(ValueError) as e:
        R.Pipeline.from_config({"stages": ["tb"]}, {}, [ov])
    assert str(e.value) == f"--set expects stage.param=value (or pipeline.fps=N), got {ov!r}"


def test_from_config_messages(stages):
    with pytest.raises(ValueError) as e:
        R.Pipeline.from_config({"stages": ["ta"]}, {}, ["pipeline.stages=['ta']"])
    assert str(e.value) == ("--set \"pipeline.stages=['ta']\": only pipeline.fps can be set; "
                            "the stages are [pipeline] stages")
    with pytest.raises(ValueError) as e:
        R.Pipeline.from_config({"stages": ["ta"], "fsp": 3, "extra": 1}, {}, where="f.toml")
    assert str(e.value) == "f.toml: unknown [pipeline] key(s) ['extra', 'fsp']; known: fps, stages"
    with pytest.raises(ValueError) as e:
        R.Pipeline.from_config({"stages": ["ta", "nope"]}, {}, where="f.toml")
    assert str(e.value).startswith("f.toml: unknown stage 'nope' in [pipeline] stages; known: ingest, screen, ")
    assert str(e.value).endswith(", ".join(STAGE_MODULES))
    with pytest.raises(ValueError) as e:
        R.Pipeline.from_config({"stages": ["ta"]}, {"tb": {}}, where="f.toml")
    assert str(e.value) == "f.toml: parameters for unknown stage 'tb'"
    with pytest.raises(ValueError, match=r"^stage ta: unknown parameter\(s\) \['kk'\]"):
        R.Pipeline.from_config({"stages": ["ta"]}, {"ta": {"kk": 1}})
    with pytest.raises(ValueError, match=r"^stage tb: unknown parameter\(s\) \['x'\]"):
        R.Pipeline.from_config({"stages": ["ta", "tb"]}, {}, ["tb.x=1"])
    with pytest.raises(ValueError, match=r"^stage tb: unknown parameter\(s\) \['x.y'\]"):   # the stage ends at the first "."
        R.Pipeline.from_config({"stages": ["ta", "tb"]}, {}, ["tb.x.y=1"])
    # default "where"
    with pytest.raises(ValueError, match=r"^pipeline: unknown \[pipeline\] key"):
        R.Pipeline.from_config({"x": 1}, {})


@pytest.mark.parametrize("fps", [0, -1, True, 2.5, "30"])
def test_from_config_refuses_a_bad_fps(stages, fps):
    with pytest.raises(ValueError) as e:
        R.Pipeline.from_config({"stages": ["ta"], "fps": fps}, {}, where="f.toml")
    assert str(e.value) == f"f.toml: [pipeline] fps must be a positive whole number, got {fps!r}"


def test_fps_one_is_allowed(stages):
    assert R.Pipeline.from_config({"stages": ["ta"], "fps": 1}, {}).fps == 1


def test_parse_value():
    assert R._parse_value("3") == 3
    assert R._parse_value("2.5") == 2.5
    assert R._parse_value("true") is True
    assert R._parse_value("[1, 2]") == [1, 2]
    assert R._parse_value('"x y"') == "x y"
    assert R._parse_value("cuda:0") == "cuda:0"           # not TOML: the text itself
    assert R._parse_value("") == ""


def test_load_reads_the_file_and_names_it(stages, tmp_path):
    f = tmp_path / "p.toml"
    f.write_text('[pipeline]\nfps = 24\nstages = ["ta", "tb"]\n[stages.tb]\nk = 4\n')
    pl = R.Pipeline.load(f, ["ta.k=2"])
    assert (pl.stages, pl.params, pl.fps) == (["ta", "tb"], {"tb": {"k": 4}, "ta": {"k": 2}}, 24)
    assert R.Pipeline.load(str(f)).params == {"tb": {"k": 4}}
    f.write_text('[pipeline]\nstages = ["ta"]\n[stage.ta]\nk = 1\n[extra]\n')
    with pytest.raises(ValueError) as e:
        R.Pipeline.load(f)
    assert str(e.value) == (f"{f}: unknown table(s) ['extra', 'stage']; a pipeline file has [pipeline] "
                            "and [stages.<name>]")
    f.write_text('[pipeline]\nstages = ["ta"]\nfps = 0\n')
    with pytest.raises(ValueError, match=f"^{f}: \\[pipeline\\] fps"):   # the file is the "where"
        R.Pipeline.load(f)
    f.write_text('[stages.ta]\nk = 1\n')
    with pytest.raises(ValueError, match="parameters for unknown stage 'ta'"):   # no [pipeline]: no stages
        R.Pipeline.load(f)
    f.write_text('')
    assert (R.Pipeline.load(f).stages, R.Pipeline.load(f).params) == ([], {})


def test_load_without_a_path_reads_the_default_pipeline():
    pl = R.Pipeline.load()
    assert pl.stages[0] == "ingest" and pl.stages[-1] == "pack" and pl.fps == 30
    assert R.default_pipeline_path() == Path(R.__file__).resolve().parent.parent / "pipelines" / "chorushead.toml"


def test_default_pipeline_path_prefers_the_packaged_copy_and_says_when_none(tmp_path, monkeypatch):
    pkg = tmp_path / "site" / "chorushead"
    (pkg / "pipelines").mkdir(parents=True)
    monkeypatch.setattr(R, "__file__", str(pkg / "runner.py"))
    with pytest.raises(FileNotFoundError) as e:
        R.default_pipeline_path()
    assert str(e.value) == "pipelines/chorushead.toml not found; pass --pipeline FILE"
    (tmp_path / "site" / "pipelines").mkdir()
    (tmp_path / "site" / "pipelines" / "chorushead.toml").write_text("")
    assert R.default_pipeline_path() == tmp_path / "site" / "pipelines" / "chorushead.toml"
    (pkg / "pipelines" / "chorushead.toml").write_text("")
    assert R.default_pipeline_path() == pkg / "pipelines" / "chorushead.toml"


def test_save_used_by_and_for_build(stages, tmp_path):
    out = tmp_path / "b"
    assert R.Pipeline.used_by(out) is None
    out.mkdir()
    pl = R.Pipeline(stages=["ta", "tb"], params={"tb": {"k": 7}}, fps=12)
    pl.save(out)
    assert json.loads((out / "pipeline.json").read_text()) == {"stages": ["ta", "tb"], "params": {"tb": {"k": 7}},
                                                               "fps": 12}
    back = R.Pipeline.used_by(out)
    assert (back.stages, back.params, back.fps) == (["ta", "tb"], {"tb": {"k": 7}}, 12)
    # a rerun without --pipeline takes the saved one, with --set on top
    got, where = R.Pipeline.for_build(out, overrides=["ta.k=3"])
    assert (got.stages, got.params, got.fps) == (["ta", "tb"], {"tb": {"k": 7}, "ta": {"k": 3}}, 12)
    assert where == f"this build's saved pipeline ({out / 'pipeline.json'}) with ta.k=3"
    got, where = R.Pipeline.for_build(out, overrides=iter(["ta.k=3", "tb.k=1"]))   # an iterator, used twice
    assert got.params == {"tb": {"k": 1}, "ta": {"k": 3}}
    assert where.endswith(" with ta.k=3, tb.k=1")
    got, where = R.Pipeline.for_build(out)
    assert where == f"this build's saved pipeline ({out / 'pipeline.json'})"
    # a saved pipeline that no longer loads names the saved file
    (out / "pipeline.json").write_text(json.dumps({"stages": ["ta"], "params": {"ta": {"zz": 1}}, "fps": 3}))
    with pytest.raises(ValueError, match=r"^stage ta: unknown parameter"):
        R.Pipeline.for_build(out)
    (out / "pipeline.json").write_text(json.dumps({"stages": ["ta"], "params": {}, "fps": 0}))
    with pytest.raises(ValueError) as e:
        R.Pipeline.for_build(out)
    assert str(e.value).startswith(f"{out / 'pipeline.json'}: [pipeline] fps")
    # --pipeline wins over the saved one
    f = tmp_path / "p.toml"
    f.write_text('[pipeline]\nstages = ["ta"]\nfps = 5\n')
    got, where = R.Pipeline.for_build(out, f, ["ta.k=2"])
    assert (got.stages, got.fps, got.params) == (["ta"], 5, {"ta": {"k": 2}})
    assert where == f"{f} with ta.k=2"
    # no saved one, no --pipeline: the default file
    got, where = R.Pipeline.for_build(tmp_path / "new")
    assert got.stages[0] == "ingest"
    assert where == f"the default pipeline ({R.default_pipeline_path()})"


def test_used_by_copies_params_and_casts_fps(tmp_path):
    (tmp_path / "pipeline.json").write_text(json.dumps({"stages": ("a",), "params": {"a": {"k": 1}}, "fps": "24"}))
    pl = R.Pipeline.used_by(tmp_path)
    assert pl.fps == 24 and pl.stages == ["a"] and pl.params == {"a": {"k": 1}}


# ----------------------------------------------------------------------------- items
@pytest.mark.parametrize("name, want", [
    ("Ça chante", "Ca_chante"), ("a  b!!c", "a_b_c"), ("__.x-y_.", "x-y"), ("日本", "video"), ("", "video"),
    ("v1.2_-x", "v1.2_-x"), ("X-ray X", "X-ray_X"), ("x" * 70, "x" * 60), ("._-", "video"), ("a/b\\c", "a_b_c"),
])
def test_slug(name, want):
    assert R.slug(name) == want


def test_discover(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        R.discover(tmp_path / "none")
    assert str(e.value) == f"--videos {tmp_path / 'none'}: not a folder"
    v = tmp_path / "v"
    (v / "sub").mkdir(parents=True)
    for rel in ["b.MP4", "sub/a.mkv", "notes.txt", ".hidden.mp4", "c.webm", "d.mov", "e.avi", "f.m4v"]:
        (v / rel).write_bytes(b"x")
    (v / "folder.mp4").mkdir()                       # a folder named like a video
    os.symlink(v / "gone.mp4", v / "dangling.mp4")  # kept: fails in ingest
    stems = tmp_path / "stems"
    (stems / "c").mkdir(parents=True)
    (stems / "b.txt").mkdir()
    append_origin(v, FetchRecord(url="https://x/1", status="done", file="c.webm", title="T"))
    items = R.discover(v, stems)
    rels = ["b.MP4", "c.webm", "d.mov", "dangling.mp4", "e.avi", "f.m4v", "sub/a.mkv"]
    assert [it.source for it in items] == [str((v / r).absolute()) for r in rels]
    assert [it.id for it in items] == [f"{Path(r).stem}-{hashlib.sha1(r.encode()).hexdigest()[:6]}" for r in rels]
    by = {Path(it.source).name: it for it in items}
    assert by["c.webm"].stems == str((stems / "c").resolve())
    assert by["b.MP4"].stems is None                  # stems/b.txt is not stems/b
    assert by["c.webm"].origin == {"url": "https://x/1", "title": "T", "uploader": None, "license": None,
                                   "duration": None, "extractor": None, "yt_dlp": None}
    assert by["d.mov"].origin is None
    assert all(it.stems is None for it in R.discover(v))
    # a relative --videos folder: sources are absolute, origins still found
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        rel_items = R.discover(Path("v"))
    finally:
        os.chdir(cwd)
    assert [it.source for it in rel_items] == [it.source for it in items]
    assert [it.origin for it in rel_items] == [it.origin for it in items]


def test_save_load_and_remove_items(tmp_path):
    out = tmp_path
    assert R.load_items(out) == {}
    assert R.save_items(out, []) == []
    assert json.loads((out / "items.json").read_text()) == {}       # an empty registry is still written
    (out / "items.json").write_text('{"z": {"id": "z", "source": "/z"}}')
    assert R.save_items(out, []) == []
    assert json.loads((out / "items.json").read_text()) == {"z": {"id": "z", "source": "/z"}}   # not rewritten
    a = Item(id="a", source="/v1/a.mp4", origin={"url": "u"})
    b = Item(id="b", source="/v1/b.mp4", stems="/s/b")
    assert R.save_items(out, [b, a]) == []
    d = json.loads((out / "items.json").read_text())
    assert list(d) == ["a", "b", "z"]
    assert d["a"] == {"id": "a", "source": "/v1/a.mp4", "stems": None, "origin": {"url": "u"}}
    assert d["b"] == {"id": "b", "source": "/v1/b.mp4", "stems": "/s/b"}        # no origin key when none
    notes = R.save_items(out, [Item(id="a", source="/v2/a.mp4"), Item(id="b", source="/v1/b.mp4")])
    assert notes == ["a: now built from /v2/a.mp4 (was /v1/a.mp4: same path under --videos)"]
    got = R.load_items(out)
    assert got["a"] == Item(id="a", source="/v2/a.mp4") and set(got) == {"a", "b", "z"}
    assert got["b"] == Item(id="b", source="/v1/b.mp4")       # the newer entry, without stems now
    with pytest.raises(ValueError) as e:
        R.remove_items(out, ["a", "q", "r"])
    assert str(e.value) == f"not registered in {out}: q, r; registered: a, b, z"
    assert R.remove_items(out, ["z", "a"]) == [Item(id="z", source="/z"), Item(id="a", source="/v2/a.mp4")]
    assert json.loads((out / "items.json").read_text()) == {"b": {"id": "b", "source": "/v1/b.mp4", "stems": None}}
    assert R.remove_items(out, []) == []


# ----------------------------------------------------------------------------- lock
def test_build_lock(tmp_path):
    out = tmp_path / "new" / "b"
    lock = R.BuildLock(out)
    assert lock.path == out / ".build.lock" and lock.fd is None
    old = os.umask(0o022)
    try:
        with lock:
            assert lock.path.stat().st_mode & 0o777 == 0o644
            fd = lock.fd
    finally:
        os.umask(old)
    with pytest.raises(OSError):
        os.fstat(fd)                                           # closed on exit
    with lock as held:
        assert held is lock and lock.fd is not None
        text = lock.path.read_text()
        assert re.fullmatch(rf"pid {os.getpid()} since \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d", text), text
        with pytest.raises(RuntimeError) as e:
            with R.BuildLock(out):
                pass
        assert str(e.value) == (f"Another build is running on {out} ({text}). Wait for it to finish or stop it; "
                                "two builds on one folder would race.")
        assert lock.path.exists() and R._same_file(lock.fd, lock.path)
    assert not lock.path.exists() and lock.fd is None
    lock.__exit__(None, None, None)                        # a second exit does nothing
    # a lock file left by a killed build (no lock held, longer text) is reused and overwritten
    lock.path.write_text("pid 1 since long ago, and a much longer line than ours")
    with R.BuildLock(out) as again:
        assert again.path.read_text().startswith(f"pid {os.getpid()} since ")
        assert "longer" not in again.path.read_text()
    assert not again.path.exists()


@pytest.mark.parametrize("content, shown", [(b"", "another process"), (b" \n", "another process"),
                                            (b"\xffpid 7\n", "\ufffdpid 7"), (b"x" * 300, "x" * 200)])
def test_build_lock_held_by_another_names_it(tmp_path, content, shown):
    import fcntl
    path = tmp_path / ".build.lock"
    path.write_bytes(content)
    fd = os.open(path, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(RuntimeError) as e:
            with R.BuildLock(tmp_path):
                pass
        assert str(e.value).startswith(f"Another build is running on {tmp_path} ({shown}). Wait")
        assert path.read_bytes() == content                  # left as it was
    finally:
        os.close(fd)


def test_build_lock_exit_leaves_a_file_that_is_no_longer_its_own(tmp_path):
    lock = R.BuildLock(tmp_path)
    lock.__enter__()
    fd = lock.fd
    lock.path.unlink()
    lock.path.write_text("another build's")       # another build's file now at that path
    lock.__exit__(None, None, None)
    assert lock.path.read_text() == "another build's" and lock.fd is None
    with pytest.raises(OSError):
        os.fstat(fd)                               # closed


def test_build_lock_retries_on_a_file_removed_after_it_was_opened(tmp_path, monkeypatch):
    """The holder unlinks the file between our open and our flock: start over on a fresh file."""
    calls = []
    real = R._same_file

    def same(fd, path):
        calls.append(fd)
        return real(fd, path) if len(calls) > 1 else False
    monkeypatch.setattr(R, "_same_file", same)
    lock = R.BuildLock(tmp_path)
    with lock:
        assert len(calls) == 2 and lock.fd == calls[1]
        assert calls[0] == calls[1]                # POSIX gives the lowest free number: the first was closed
    assert not lock.path.exists()


def test_same_file(tmp_path):
    p = tmp_path / "f"
    p.write_text("x")
    fd = os.open(p, os.O_RDONLY)
    try:
        assert R._same_file(fd, p) is True
        p.unlink()
        assert R._same_file(fd, p) is False
        p.write_text("y")
        assert R._same_file(fd, p) is False
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- one item
def _task(stage: str, item: Item, out: Path, params: dict | None = None, upstream: dict | None = None,
          fp: str = "f" * 16, fps: int = 25) -> R.Task:
    return R.Task(stage, params or {}, item, str(out), upstream or {}, fp, fps)


class _Clock:
    """time.time() for the runner: 100.0, then +``step`` s per call."""
    def __init__(self, step: float = 1.23456):
        self.step = step
        self.t = 100.0 - step

    def time(self):
        self.t += self.step
        return self.t

    def strftime(self, *a):
        import time
        return time.strftime(*a)


def test_run_task_done(stages, tmp_path, monkeypatch):
    it = Item(id="v1", source="/x")
    d = it.dir(tmp_path)
    for junk in [".tmp-ta-999", ".old-ta-1", ".tmp-tb-5", ".old-tb-5"]:
        (d / junk / "deep").mkdir(parents=True)
    for junk in [".tmp-ta-file", ".old-ta-file"]:
        (d / junk).write_text("not a folder: removed as a file, never fails the item")
    keep = tmp_path / "not-ours"
    keep.mkdir()
    (keep / "k.txt").write_text("k")
    (d / ".tmp-ta-link").symlink_to(keep, target_is_directory=True)   # the link goes, not what it points at
    seen = {}
    real = stages["ta"].process

    def spy(ctx, params, model):
        seen.update(ctx=ctx, params=params, model=model)
        return real(ctx, params, model)
    object.__setattr__(stages["ta"], "process", spy)    # a frozen Stage, made anew for each test
    monkeypatch.setattr(R, "time", _Clock())
    rec = R.run_task(_task("ta", it, tmp_path, {"k": 4}, {"up": "rec"}, fp="abc"))
    assert rec == Record(item="v1", stage="ta", status="done", fingerprint="abc",
                         outputs={"file": "items/v1/ta/a.txt", "files": ["items/v1/ta/sub/b.txt", "missing.txt"],
                                  "value": "v"},
                         metrics={"n": 4}, reason=None, stage_version="3", started=100.0, seconds=1.235)
    ctx = seen["ctx"]
    assert ctx.item is it and ctx.out == tmp_path and ctx.final == d / "ta" and ctx.fps == 25
    assert ctx.tmp == d / f".tmp-ta-{os.getpid()}" and ctx.upstream == {"up": "rec"} and ctx.fingerprint == "abc"
    assert seen["params"] == P(k=4) and seen["model"] is None          # no setup: no model
    assert (d / "ta" / "a.txt").read_text() == "ta:v1" and (d / "ta" / "sub" / "b.txt").read_text() == "b"
    # the leftovers of this stage (any pid) are gone, another stage's are not
    assert sorted(p.name for p in d.iterdir()) == [".old-tb-5", ".tmp-tb-5", "ta"]
    assert (keep / "k.txt").read_text() == "k"


def test_run_task_replaces_the_old_outputs(stages, tmp_path):
    it = Item(id="v1", source="/x")
    final = it.dir(tmp_path) / "ta"
    final.mkdir(parents=True)
    (final / "old.txt").write_text("old")
    rec = R.run_task(_task("ta", it, tmp_path, {"mode": "skip"}))
    assert (rec.status, rec.reason, rec.outputs, rec.metrics) == ("skipped", "too short", {}, {})
    assert list(final.iterdir()) == [] and sorted(p.name for p in final.parent.iterdir()) == ["ta"]
    R.run_task(_task("ta", it, tmp_path))
    assert sorted(p.name for p in final.iterdir()) == ["a.txt", "sub"]
    assert sorted(p.name for p in final.parent.iterdir()) == ["ta"]       # no .old- left


def test_run_task_replaces_a_file_where_its_folder_goes(stages, tmp_path):
    """A file in the stage folder's place (not a build's own): moved aside, the item is still done."""
    it = Item(id="v1", source="/x")
    it.dir(tmp_path).mkdir(parents=True)
    (it.dir(tmp_path) / "ta").write_text("a stray file")
    rec = R.run_task(_task("ta", it, tmp_path))
    assert rec.status == "done" and (it.dir(tmp_path) / "ta" / "a.txt").read_text() == "ta:v1"


def test_run_task_failures_become_records(stages, tmp_path, monkeypatch):
    it = Item(id="v1", source="/x")
    monkeypatch.setattr(R, "time", _Clock())
    rec = R.run_task(_task("tb", it, tmp_path, {"mode": "stage_error"}, fp="f1"))
    assert rec == Record(item="v1", stage="tb", status="failed", fingerprint="f1", error_class="StageError",
                         message="no faces found", stage_version="3", started=100.0, seconds=1.235)
    assert sorted(p.name for p in it.dir(tmp_path).iterdir()) == []       # the temp folder is removed
    rec = R.run_task(_task("tb", it, tmp_path, {"mode": "empty"}))
    assert (rec.error_class, rec.message) == ("StageError", "StageError")    # an empty message: the class
    rec = R.run_task(_task("tb", it, tmp_path, {"mode": "crash"}))
    line = next(i for i, t in enumerate(Path(__file__).read_text().splitlines(), 1) if 'raise KeyError("boom")' in t)
    assert (rec.error_class, rec.message) == ("KeyError", f"'boom' (test_mutants_runner.py:{line})")
    assert rec.outputs == {} and rec.metrics == {} and rec.reason is None
    # a bad parameter fails the item before any folder exists
    rec = R.run_task(_task("tb", Item(id="v2", source="/x"), tmp_path, {"zz": 1}))
    assert rec.error_class == "ValueError" and rec.message.startswith("stage tb: unknown parameter(s) ['zz']")
    assert rec.message.endswith(" (base.py:" + rec.message.rsplit(":", 1)[1])
    assert not Item(id="v2", source="/x").dir(tmp_path).exists()


def test_run_task_raises_on_a_wrong_shape_and_cleans_up(stages, tmp_path):
    it = Item(id="v1", source="/x")
    with pytest.raises(ShapeError, match=r"^stage ta: outputs do not match"):
        R.run_task(_task("ta", it, tmp_path, {"mode": "shape"}))
    assert list(it.dir(tmp_path).iterdir()) == []
    with pytest.raises(ShapeError, match=r"^stage ta: outputs do not match"):   # still the shape error
        R.run_task(_task("ta", it, tmp_path, {"mode": "shape_rm"}))


def test_where():
    assert R._where(ValueError("x")) == "?"
    try:
        raise ValueError("x")
    except ValueError as e:
        line = e.__traceback__.tb_lineno
        assert R._where(e) == f"test_mutants_runner.py:{line}"


def test_relativise(tmp_path):
    (tmp_path / "items").mkdir()
    (tmp_path / "items" / "q").write_text("")
    (tmp_path / "f").write_text("")
    got = R._relativise({"a": "f", "b": "items/q", "c": "", "d": ["f", ["f", "g"], 3], "e": 2, "g": "g", "n": None},
                        tmp_path, Path("items/v/st"))
    assert got == {"a": "items/v/st/f", "b": "items/q", "c": "", "d": ["items/v/st/f", ["items/v/st/f", "g"], 3],
                   "e": 2, "g": "g", "n": None}


def test_swap_in(tmp_path):
    tmp, final = tmp_path / "t", tmp_path / "final"
    tmp.mkdir()
    (tmp / "x").write_text("new")
    R._swap_in(tmp, final)
    assert (final / "x").read_text() == "new" and not tmp.exists()
    tmp.mkdir()
    (tmp / "y").write_text("newer")
    R._swap_in(tmp, final)
    assert [p.name for p in final.iterdir()] == ["y"] and sorted(p.name for p in tmp_path.iterdir()) == ["final"]


def test_lazy_model_loads_once_per_process_and_params(stages, tmp_path):
    assert R._model_for(stages["ta"], P()) is None
    m = R._model_for(stages["tm"], P(k=2))
    assert SETUPS == []                                     # nothing loaded yet
    assert m.tag == "model-k2" and m("x", y="z") == "model-k2(x,z)" and m(1) == "model-k2(1,)"
    assert SETUPS == [P(k=2)]
    assert R._model_for(stages["tm"], P(k=2)).tag == "model-k2" and len(SETUPS) == 1   # cached per process
    assert R._model_for(stages["tm"], P(k=3)).tag == "model-k3" and len(SETUPS) == 2   # other params: other model
    assert set(R._MODELS) == {("tm", fingerprint(dataclasses.asdict(P(k=2)))),
                              ("tm", fingerprint(dataclasses.asdict(P(k=3))))}
    it = Item(id="v", source="/x")
    assert R.run_task(_task("tm", it, tmp_path, {"mode": "skip"})).status == "skipped"
    assert len(SETUPS) == 2
    rec = R.run_task(_task("tm", it, tmp_path, {"k": 5}))
    assert rec.outputs == {"value": "model-k5(a,b)"} and rec.metrics == {"n": 8}
    assert SETUPS[-1] == P(k=5)
    with pytest.raises(AttributeError):
        R._model_for(stages["tm"], P(k=2)).nothing


def test_stage_summary_count():
    s = R.StageSummary("st")
    assert (s.done, s.skipped, s.failed, s.reused, s.blocked, s.pending, s.seconds, s.failures) == (0,) * 6 + (0.0, [])
    s.count(None)
    s.count(Record(item="a", stage="st", status="done", fingerprint=""))
    s.count(Record(item="b", stage="st", status="skipped", fingerprint=""))
    s.count(Record(item="c", stage="st", status="failed", fingerprint="", error_class="E", message="m\nmore"))
    s.count(Record(item="d", stage="st", status="done", fingerprint=""))
    assert (s.pending, s.done, s.skipped, s.failed) == (1, 2, 1, 1)
    assert s.failures == [("c", "E: m")]
    s.count(None)
    s.count(Record(item="e", stage="st", status="skipped", fingerprint=""))
    s.count(Record(item="f", stage="st", status="failed", fingerprint=""))
    assert (s.pending, s.done, s.skipped, s.failed) == (2, 2, 2, 2)
    assert s.failures == [("c", "E: m"), ("f", "error: ")]
    assert R.StageSummary("x").failures is not R.StageSummary("y").failures


# ----------------------------------------------------------------------------- the plan
def _rec(item: str, stage: str, fp: str, status: str = "done", **kw) -> Record:
    return Record(item=item, stage=stage, status=status, fingerprint=fp, **kw)


FULL = ["ta", "tg", "tb", "tp", "tc"]


def test_plan_of(stages):
    plan = R.Plan.of(_pipe(["ta", "ti", "tb"], {"ti": {"k": 9}, "tb": {"mode": "skip"}}, fps=12))
    assert plan.order == ["ta", "ti", "tb"] and plan.fps == 12
    assert plan.params == {"ta": P(), "ti": P(k=9), "tb": P(mode="skip")}
    assert plan.identities == {"ti": {"weights": 9}}                  # only stages that have an identity
    assert R.Plan.of(_pipe(["ta"])).identities == {}
    with pytest.raises(ValueError, match=r"^stage ta: unknown parameter"):
        R.Plan.of(_pipe(["ta"], {"ta": {"q": 1}}))


def test_source_fingerprint(stages, tmp_path):
    (it,) = _items(tmp_path, "v1")
    plan = R.Plan.of(_pipe(["ta"]))
    fp = file_fingerprint(Path(it.source))
    assert plan.source_fingerprint(it) == [fp]
    Path(it.source).write_bytes(b"changed!")            # read once per build: the first value stays
    assert plan.source_fingerprint(it) == [fp]
    assert R.Plan.of(_pipe(["ta"])).source_fingerprint(it) == [file_fingerprint(Path(it.source))] != [fp]
    st = tmp_path / "stems"
    st.mkdir()
    for n in ["vocals.wav", "accompaniment.wav", "notes.txt"]:
        (st / n).write_bytes(n.encode())
    with_stems = Item(id="v2", source=it.source, stems=str(st))
    assert plan.source_fingerprint(with_stems) == [
        file_fingerprint(Path(it.source)),
        [("accompaniment.wav", file_fingerprint(st / "accompaniment.wav")), ("vocals.wav", file_fingerprint(st / "vocals.wav"))]]
    for bad in [str(tmp_path / "none.mp4"), str(st)]:       # missing, or a folder
        assert R.Plan.of(_pipe(["ta"])).source_fingerprint(Item(id="x", source=bad)) == [f"unreadable:{bad}"]


def test_fingerprint_parts(stages, tmp_path):
    (it,) = _items(tmp_path, "v1")
    plan = R.Plan.of(_pipe(["ta", "ti", "tg", "tb", "tp", "tc"], {"ta": {"device": "cuda", "k": 2}, "ti": {"k": 4}},
                           fps=24))
    src = file_fingerprint(Path(it.source))
    ta = {"mode": "ok", "k": 2}                           # result parameters only (device is EXEC)
    assert plan.fingerprint("ta", it, {}) == fingerprint("ta", "3", ta, 24, src, {})
    assert plan.fingerprint("ti", it, {}) == fingerprint("ti", "3", {"mode": "ok", "k": 4}, 24, {"model": {"weights": 4}},
                                                         src, {})
    ups = {"ta": _rec("v1", "ta", "A"), "tg": _rec("v1", "tg", "G")}
    dflt = {"mode": "ok", "k": 1}
    # the gate's fingerprint is left out; upstream fingerprints by stage name
    assert plan.fingerprint("tb", it, ups) == fingerprint("tb", "3", dflt, 24, {"ta": "A"})
    assert plan.fingerprint("tb", it, {"tg": ups["tg"], "ta": ups["ta"]}) == plan.fingerprint("tb", it, ups)
    assert plan.fingerprint("tc", it, {"tp": _rec("v1", "tp", "P")}, plan={"split": "val"}) == fingerprint(
        "tc", "3", dflt, 24, {"tp": "P"}, {"split": "val"})
    assert plan.fingerprint("tc", it, {"tp": _rec("v1", "tp", "P")}, plan=0) == fingerprint(
        "tc", "3", dflt, 24, {"tp": "P"}, 0)


def test_fingerprints_of_a_global_stage(stages, tmp_path):
    items = {it.id: it for it in _items(tmp_path, "v1", "v2", "v3")}
    plan = R.Plan.of(_pipe(FULL, fps=20))
    ups = {"v2": {"tb": _rec("v2", "tb", "B2")}, "v1": {"tb": _rec("v1", "tb", "B1")}}
    fps, plans = plan.fingerprints("tp", items, ups, tmp_path / "o")
    assert plans == {"v1": {"split": "train", "n": 2}, "v2": {"split": "val", "n": 2}}   # over the items sorted
    assert fps == {vid: fingerprint("tp", "3", {"mode": "ok", "k": 1}, 20, {"tb": f"B{vid[1]}"}, plans[vid])
                   for vid in ["v1", "v2"]}
    (ctx,) = PLAN_CTX
    assert ctx == GlobalContext(out=tmp_path / "o", fps=20, upstream=dict(sorted(ups.items())), previous={},
                                fingerprints={}, progress=False, items=["v1", "v2", "v3"])
    assert list(ctx.upstream) == ["v1", "v2"] and isinstance(ctx.out, Path)
    fps, plans = R.Plan.of(_pipe(["ta", "tx"])).fingerprints("tx", items, {"v3": {"ta": _rec("v3", "ta", "A")}}, str(tmp_path))
    assert plans == {} and fps == {"v3": fingerprint("tx", "3", {"mode": "ok", "k": 1}, 30, {"ta": "A"})}
    # a global stage that needs nothing fingerprints the item's input
    fps, _ = R.Plan.of(_pipe(["tz"])).fingerprints("tz", items, {"v1": {}}, tmp_path)
    assert fps == {"v1": fingerprint("tz", "3", {"mode": "ok", "k": 1}, 30, file_fingerprint(Path(items["v1"].source)), {})}


def test_needs(stages):
    assert R.Plan.of(_pipe(["ta", "tg", "tb"])).needs("tb") == ("ta", "tg")
    assert R.Plan.of(_pipe(["ta", "tb"])).needs("tb") == ("ta",)        # a gate the pipeline does not run
    assert R.Plan(order=["tc"], params={}, fps=30).needs("tc") == ("tp",)   # a stage that is not a gate stays


def _latest(it: Item, plan: R.Plan, upto: list[str], **status) -> dict[str, dict[str, Record]]:
    """Records current for ``it`` in the stages ``upto`` (status overrides by stage)."""
    latest: dict[str, dict[str, Record]] = {}
    for name in upto:
        ups = {need: latest[need][it.id] for need in plan.needs(name) if need in latest}
        fp = "P" if get_kind(name) == "global" else plan.fingerprint(name, it, ups)
        latest[name] = {it.id: _rec(it.id, name, fp, status.get(name, "done"))}
    return latest


def get_kind(name: str) -> str:
    from chorushead.stages import get_stage
    return get_stage(name).kind


def test_states(stages, tmp_path):
    (it,) = _items(tmp_path, "v1")
    plan = R.Plan.of(_pipe(FULL))
    fp = {}
    latest = _latest(it, plan, FULL)
    for name in FULL:
        fp[name] = latest[name]["v1"].fingerprint
    st = plan.states(it, latest)
    assert list(st) == FULL
    assert st == {"ta": ("current", fp["ta"]), "tg": ("current", fp["tg"]), "tb": ("current", fp["tb"]),
                  "tp": ("current", None), "tc": ("current", fp["tc"])}
    assert plan.states(it, {}) == {"ta": ("todo", fp["ta"]), "tg": ("blocked", None), "tb": ("blocked", None),
                                   "tp": ("blocked", None), "tc": ("blocked", None)}
    # a need the pipeline does not run (not a gate): blocked
    assert R.Plan.of(_pipe(["ta", "tc"])).states(it, latest) == {"ta": ("current", fp["ta"]), "tc": ("blocked", None)}
    # a failed record is redone (same fingerprint), what needs it is blocked
    s = plan.states(it, _latest(it, plan, FULL, ta="failed"))
    assert s["ta"] == ("todo", fp["ta"]) and {s[n] for n in FULL[1:]} == {("blocked", None)}
    # a skipped record is ok, except a gate's: it blocks the stages that need the gate
    s = plan.states(it, _latest(it, plan, FULL, ta="skipped"))
    assert s["ta"] == ("current", fp["ta"]) and s["tg"] == ("current", fp["tg"]) and s["tc"][0] == "current"
    s = plan.states(it, _latest(it, plan, FULL, tg="skipped"))
    assert s["tg"] == ("current", fp["tg"]) and {s[n] for n in ["tb", "tp", "tc"]} == {("blocked", None)}
    # a global stage: ready until its record is ok
    s = plan.states(it, _latest(it, plan, FULL[:3]))
    assert s["tp"] == ("ready", None) and s["tc"] == ("blocked", None)
    s = plan.states(it, _latest(it, plan, FULL, tp="failed"))
    assert s["tp"] == ("ready", None) and s["tc"] == ("blocked", None)
    s = plan.states(it, _latest(it, plan, FULL, tp="skipped"))
    assert s["tp"] == ("current", None) and s["tc"] == ("current", fp["tc"])
    # a stale record (other fingerprint) is todo, and blocks what follows
    stale = _latest(it, plan, FULL)
    stale["tb"]["v1"] = _rec("v1", "tb", "old")
    s = plan.states(it, stale)
    assert s["tb"] == ("todo", fp["tb"]) and s["tp"] == ("blocked", None) and s["tc"] == ("blocked", None)
    # in a pipeline without the gate, tb needs ta only
    s = R.Plan.of(_pipe(["ta", "tb"])).states(it, _latest(it, plan, ["ta"]))
    assert s["tb"][0] == "todo"


def test_ready(stages, tmp_path):
    items = _items(tmp_path, "v1", "v2", "v3")
    plan = R.Plan.of(_pipe(FULL))
    latest: dict[str, dict[str, Record]] = {}
    for it, status in zip(items, ["done", "failed", "skipped"]):
        for name, recs in _latest(it, plan, FULL[:3], tg=status).items():
            latest.setdefault(name, {}).update(recs)
    assert plan.ready("tp", items, latest) == {"v1": {"tb": latest["tb"]["v1"]}}
    assert plan.ready("tb", items, latest) == {"v1": {"ta": latest["ta"]["v1"], "tg": latest["tg"]["v1"]}}
    assert plan.ready("tg", items, latest) == {vid: {"ta": latest["ta"][vid]} for vid in ["v1", "v2", "v3"]}
    assert plan.ready("ta", items, {}) == {vid: {} for vid in ["v1", "v2", "v3"]}


def test_next_task(stages, tmp_path):
    (it,) = _items(tmp_path, "v1")
    plan = R.Plan.of(_pipe(["ta", "tg", "tb", "tm"], {"tb": {"k": 3}}, fps=24))
    names = ["ta", "tg", "tb", "tm"]
    latest = _latest(it, plan, ["ta", "tg"])
    summ = {n: R.StageSummary(n) for n in names}
    task = R.next_task(names, plan, it, tmp_path, latest, summ)
    assert task == R.Task("tb", {"mode": "ok", "k": 3, "device": "cpu"}, it, str(tmp_path),
                          {"ta": latest["ta"]["v1"], "tg": latest["tg"]["v1"]}, plan.states(it, latest)["tb"][1], 24)
    assert [(s.reused, s.blocked) for s in summ.values()] == [(1, 0), (1, 0), (0, 0), (0, 0)]
    summ = {n: R.StageSummary(n) for n in names}
    assert R.next_task(names, plan, it, tmp_path, latest, summ, start=1).stage == "tb"
    assert [(s.reused, s.blocked) for s in summ.values()] == [(0, 0), (1, 0), (0, 0), (0, 0)]
    # the gate rejected it: tb is blocked (counted), tm (needs ta only) is next
    rejected = _latest(it, plan, ["ta", "tg"], tg="skipped")
    summ = {n: R.StageSummary(n) for n in names}
    assert R.next_task(names, plan, it, tmp_path, rejected, summ).stage == "tm"
    assert [(s.reused, s.blocked) for s in summ.values()] == [(1, 0), (1, 0), (0, 1), (0, 0)]
    summ = {n: R.StageSummary(n) for n in names}
    assert R.next_task(names, plan, it, tmp_path, rejected, summ, start=3).stage == "tm"
    assert R.next_task(names, plan, it, tmp_path, rejected, summ, start=4) is None
    everything = _latest(it, plan, names)
    summ = {n: R.StageSummary(n) for n in names}
    assert R.next_task(names, plan, it, tmp_path, everything, summ) is None
    assert [s.reused for s in summ.values()] == [1, 1, 1, 1]


# ----------------------------------------------------------------------------- global stages
def test_run_global_stage_on_its_own(stages, tmp_path, monkeypatch):
    """Without a plan an item is ready when every record it needs is ok (done or skipped)."""
    items = _items(tmp_path, "v0", "v1", "v2", "v3", "v9")
    ok = lambda vid, st, status="done": _rec(vid, st, f"{st}-{vid}", status)   # noqa: E731
    latest = {"ta": {"v0": ok("v0", "ta"), "v1": ok("v1", "ta", "skipped"), "v2": ok("v2", "ta"),
                     "v3": ok("v3", "ta", "failed"), "v9": ok("v9", "ta")},
              "tb": {"v0": ok("v0", "tb"), "v1": ok("v1", "tb"), "v2": ok("v2", "tb", "failed"), "v9": ok("v9", "tb")},
              "ty": {"v9": _rec("v9", "ty", "older")}}
    monkeypatch.setattr(R, "time", _Clock())
    recs = R.run_global_stage(stages["ty"], P(k=2), list(reversed(items)), str(tmp_path), latest, 24, progress=True)
    (ctx,) = GLOBAL_CTX
    assert list(ctx.upstream) == ["v0", "v1", "v9"]                 # sorted; v2, v3 not ready
    assert ctx.upstream["v1"] == {"ta": latest["ta"]["v1"], "tb": latest["tb"]["v1"]}
    assert ctx.out == tmp_path and ctx.fps == 24 and ctx.progress is True
    assert ctx.previous == {"v9": latest["ty"]["v9"]} and ctx.items == ["v0", "v1", "v2", "v3", "v9"]
    want_fp = {vid: fingerprint("ty", "3", {"mode": "ok", "k": 2}, 24, {"ta": f"ta-{vid}", "tb": f"tb-{vid}"})
               for vid in ["v0", "v1", "v9"]}
    assert ctx.fingerprints == want_fp
    assert recs == [
        Record(item="v0", stage="ty", status="done", fingerprint=want_fp["v0"], outputs={"value": "-"},
               metrics={"n": 0}, stage_version="3", started=100.0, seconds=1.235),
        Record(item="v1", stage="ty", status="done", fingerprint=want_fp["v1"], outputs={"value": "-"},
               metrics={"n": 0}, stage_version="3", started=100.0, seconds=2.5),
        Record(item="v9", stage="ty", status="done", fingerprint=want_fp["v9"], outputs={"value": "-"},
               metrics={"n": 0}, stage_version="3", started=100.0, seconds=0.0)]
    assert Manifest(tmp_path, "ty").read_all() == []            # records are returned, not appended
    GLOBAL_CTX.clear()
    R.run_global_stage(stages["ty"], P(), items, tmp_path, {"ta": latest["ta"]}, 24)
    assert GLOBAL_CTX[0].upstream == {} and GLOBAL_CTX[0].previous == {} and GLOBAL_CTX[0].progress is False


def test_run_global_stage_failures_and_bad_results(stages, tmp_path, monkeypatch):
    items = _items(tmp_path, "bad1", "v2")
    latest = {"ta": {it.id: _rec(it.id, "ta", "A") for it in items + _items(tmp_path, "skip3")}}
    monkeypatch.setattr(R, "time", _Clock())
    recs = R.run_global_stage(stages["tx"], P(), items + _items(tmp_path, "skip3"), tmp_path, latest, 30)
    # a failure keeps no outputs or metrics, its reason becomes the message
    assert recs[0] == Record(item="bad1", stage="tx", status="failed", fingerprint=recs[0].fingerprint, outputs={},
                             metrics={}, reason=None, error_class="StageError", message="cannot pack",
                             stage_version="3", started=100.0, seconds=0.5)
    assert recs[1] == Record(item="skip3", stage="tx", status="skipped", fingerprint=recs[1].fingerprint,
                             reason="nothing to pack", error_class=None, message=None, stage_version="3",
                             started=100.0, seconds=0.25)
    recs = R.run_global_stage(stages["tx"], P(mode="fail"), items, tmp_path, latest, 30)
    assert [(r.error_class, r.message, r.reason) for r in recs] == [("PackError", "cannot pack", None)] * 2
    with pytest.raises(ShapeError) as e:
        R.run_global_stage(stages["tx"], P(mode="stranger"), items, tmp_path, latest, 30)
    assert str(e.value) == "stage tx: a result for 'stranger', which was not among its ready items"
    with pytest.raises(ShapeError, match=r"^stage tx: outputs do not match"):
        R.run_global_stage(stages["tx"], P(mode="shape"), [items[1]], tmp_path, latest, 30)


def test_run_global_stage_with_the_builds_plan(stages, tmp_path):
    items = _items(tmp_path, "v1", "v2", "v3")
    plan = R.Plan.of(_pipe(FULL, {"tp": {"k": 5}}, fps=20))
    latest: dict[str, dict[str, Record]] = {}
    for it, status in zip(items, ["done", "skipped", "done"]):
        for name, recs in _latest(it, plan, FULL[:3], tg=status).items():
            latest.setdefault(name, {}).update(recs)
    recs = R.run_global_stage(stages["tp"], plan.params["tp"], items, tmp_path, latest, 20, plan=plan)
    assert [r.item for r in recs] == ["v1", "v3"]            # v2: rejected by the gate, blocked
    assert [r.outputs for r in recs] == [{"value": "train"}, {"value": "val"}]
    fps, plans = plan.fingerprints("tp", {it.id: it for it in items}, plan.ready("tp", items, latest), tmp_path)
    assert [r.fingerprint for r in recs] == [fps["v1"], fps["v3"]]


def test_early_global_batch_and_when_it_runs(stages, tmp_path):
    plan = R.Plan.of(_pipe(FULL))
    mk = lambda n, **kw: R.EarlyGlobal(stages["tp"], plan, ["ta", "tg", "tb"], _items(tmp_path, *[f"v{i}" for i in range(n)]),  # noqa: E731
                                       tmp_path, {}, R.StageSummary("tp"), **kw)
    assert [mk(n).batch for n in (0, 1, 8, 9, 16, 17)] == [1, 1, 1, 2, 2, 3]
    assert mk(17, batch=5).batch == 5
    assert mk(1).settled_after == 0 and mk(1).records == {} and (mk(1).finished, mk(1).runs) == (0, 0)
    assert mk(1).records is not mk(1).records
    eg = R.EarlyGlobal(dataclasses.replace(stages["tp"], plan_reads=("tb", "ta", "zz")), plan, ["ta", "tg", "tb"], [],
                       tmp_path, {}, R.StageSummary("tp"))
    assert eg.settled_after == 2
    eg = R.EarlyGlobal(dataclasses.replace(stages["tp"], plan_reads=("tg",)), plan, ["tg", "ta", "tb"], [],
                       tmp_path, {}, R.StageSummary("tp"))
    assert eg.settled_after == 0
    eg = R.EarlyGlobal(dataclasses.replace(stages["tp"], plan_reads=("zz",)), plan, ["ta", "tb"], [],
                       tmp_path, {}, R.StageSummary("tp"))
    assert eg.settled_after == -1
    eg = mk(16)                                            # batch 2, settled after index 0 of 3 names
    runs = []
    eg.run = lambda: runs.append(eg.finished)
    eg.after(True, {"a": 1, "b": 3})
    assert eg.finished == 1 and runs == []                 # one finished: fewer than a batch
    eg.after(False, {"a": 1, "b": 3})
    assert eg.finished == 1 and runs == []                 # a record that leaves its item in the run
    eg.after(True, {"a": 0, "b": 3})
    assert eg.finished == 2 and runs == []                 # an item still in the stage the plan reads
    eg.after(False, {"a": 3, "b": 3})
    assert runs == []                                      # every item through: the final run comes next
    eg.after(False, {"a": 1, "b": 3})
    assert runs == [2]
    eg.after(False, {"a": 2, "b": 2})
    assert runs == [2, 2]
    eg = mk(1)                                             # batch 1
    eg.run = lambda: runs.append("one")
    eg.after(True, {"a": 1})
    assert runs[-1] == "one"


def test_early_global_run(stages, tmp_path, monkeypatch):
    items = _items(tmp_path, "v1", "v2")
    plan = R.Plan.of(_pipe(FULL, fps=20))
    latest: dict[str, dict[str, Record]] = {}
    for it in items:
        for name, recs in _latest(it, plan, FULL[:3]).items():
            latest.setdefault(name, {}).update(recs)
    summ = R.StageSummary("tp", seconds=1.0)
    eg = R.EarlyGlobal(stages["tp"], plan, ["ta", "tg", "tb"], items, tmp_path, latest, summ, finished=3)
    monkeypatch.setattr(R, "time", _Clock())
    eg.run()
    back = Manifest(tmp_path, "tp").read_all()
    assert [r.item for r in back] == ["v1", "v2"] and [r.outputs for r in back] == [{"value": "train"}, {"value": "val"}]
    assert eg.records == {r.item: r for r in back} == latest["tp"]
    assert (eg.finished, eg.runs) == (0, 1)
    assert GLOBAL_CTX[0].fps == 20 and GLOBAL_CTX[0].progress is False
    # clock: run t0, run_global_stage t0, run end (both results give their own seconds)
    assert summ.seconds == pytest.approx(1.0 + 2 * 1.23456)
    eg.run()                                              # nothing new: no record, the count goes on
    assert len(Manifest(tmp_path, "tp").read_all()) == 2 and eg.runs == 2 and GLOBAL_RUNS[-1] == ["v1", "v2"]
    # the build's plan says what is ready: an ok but stale upstream record is not
    latest["tb"]["v2"] = _rec("v2", "tb", "stale")
    eg.run()
    assert GLOBAL_RUNS[-1] == ["v1"]


def test_run_global_counts(stages, tmp_path, monkeypatch):
    items = _items(tmp_path, "a1", "bad2", "c3", "d4", "skip5", "skip6")
    plan = R.Plan.of(_pipe(FULL))
    latest: dict[str, dict[str, Record]] = {}
    for it, status in zip(items, ["done", "done", "done", "skipped", "done", "done"]):
        for name, recs in _latest(it, plan, FULL[:3], tg=status).items():
            latest.setdefault(name, {}).update(recs)
    early = R.run_global_stage(stages["tp"], plan.params["tp"], items, tmp_path, latest, 30, plan=plan)
    Manifest(tmp_path, "tp").append(early[0])
    latest["tp"] = {"a1": early[0], "c3": _rec("c3", "tp", "x", "skipped")}
    summ = R.StageSummary("tp", seconds=10.0)
    monkeypatch.setattr(R, "time", _Clock())
    R._run_global(stages["tp"], plan, items, tmp_path, latest, True, summ, earlier={"a1": early[0]})
    assert GLOBAL_RUNS[-1] == ["a1", "bad2", "c3", "skip5", "skip6"] and GLOBAL_CTX[-1].progress is True
    back = Manifest(tmp_path, "tp").read_all()
    assert [(r.item, r.status) for r in back] == [("a1", "done"), ("bad2", "failed"), ("c3", "done"),
                                                  ("skip5", "skipped"), ("skip6", "skipped")]
    # a1 counted from its early record, the others from this run's; d4 blocked by the gate
    assert (summ.done, summ.skipped, summ.failed, summ.reused, summ.blocked) == (2, 2, 1, 0, 1)
    assert summ.failures == [("bad2", "StageError: cannot pack")]
    assert summ.seconds == pytest.approx(10.0 + 2 * 1.23456)   # its t0 and end (c3 gives its own seconds)
    summ = R.StageSummary("tp")
    R._run_global(stages["tp"], plan, items, tmp_path, iter_records(tmp_path, FULL[:3] + ["tp"]) | {
        k: v for k, v in latest.items() if k != "tp"}, False, summ)
    assert (summ.done, summ.failed, summ.reused, summ.blocked) == (0, 1, 4, 1)   # bad2 again, the others reused


# ----------------------------------------------------------------------------- the build
class _Bar:
    """tqdm stand-in: what _stream asks of its bar."""
    made: list["_Bar"] = []

    def __init__(self, **kw):
        self.kw, self.n, self.updates, self.post, self.closed = kw, 0, [], [], False
        _Bar.made.append(self)

    def update(self, n):
        self.n += n
        self.updates.append(n)

    def set_postfix_str(self, s, refresh=True):
        self.post.append((s, refresh))

    def close(self):
        self.closed = True


class _Engine:
    """A one-job engine that loses the tasks of the items in ``lost`` (as a dead worker would)."""
    def __init__(self, lost=()):
        self.lost, self.gpu_asked = set(lost), []

    def map(self, fn, tasks, gpu=False, follow=None):
        from collections import deque
        todo = deque(tasks)
        while todo:
            task = todo.popleft()
            self.gpu_asked.append((task.stage, gpu(task)))
            if task.item.id in self.lost:
                continue
            rec = fn(task)
            yield rec
            todo.extendleft(reversed(list(follow(rec))))


@pytest.fixture
def engine(monkeypatch):
    """build()'s executor session, recorded: [(backend, jobs, address, preload)] and the engine."""
    import contextlib
    import tqdm.auto
    import chorushead.executors as ex
    got = {"sessions": [], "engine": _Engine()}

    @contextlib.contextmanager
    def session(backend, jobs=1, address=None, preload=()):
        got["sessions"].append((backend, jobs, address, list(preload)))
        yield got["engine"]
    monkeypatch.setattr(ex, "session", session)
    _Bar.made.clear()
    monkeypatch.setattr(tqdm.auto, "tqdm", _Bar)
    return got


def _summ(summaries) -> dict[str, tuple]:
    return {s.stage: (s.done, s.skipped, s.failed, s.reused, s.blocked, s.pending) for s in summaries}


def test_build_checks_its_arguments_before_making_the_folder(stages, tmp_path):
    out = tmp_path / "b"
    with pytest.raises(ValueError) as e:
        R.build(None, out, _pipe(["ta", "tb"]), stages=["tb", "zz", "yy"], **QUIET)
    assert str(e.value) == "--stages: unknown stage(s) ['yy', 'zz']; pipeline has ['ta', 'tb']"
    with pytest.raises(FileNotFoundError) as e:
        R.build(tmp_path / "none", out, _pipe(["ta"]), **QUIET)
    assert str(e.value) == f"--videos {tmp_path / 'none'}: not a folder"
    with pytest.raises(FileNotFoundError) as e:
        R.build(tmp_path, out, _pipe(["ta"]), stems=tmp_path / "s", **QUIET)
    assert str(e.value) == f"--stems {tmp_path / 's'}: not a folder"
    with pytest.raises(ValueError, match=r"^stage ta: unknown parameter"):
        R.build(None, out, _pipe(["ta"], {"ta": {"zz": 1}}), **QUIET)
    assert not out.exists()


def test_build_with_no_videos(stages, tmp_path, engine):
    logs = []
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "x.txt").write_text("")
    out = tmp_path / "new" / "b"
    assert R.build(tmp_path / "v", out, _pipe(["ta"], fps=12), progress=False, log=logs.append) == []
    assert logs == [f"No videos found under {tmp_path / 'v'} (extensions: .avi, .m4v, .mkv, .mov, .mp4, .webm)."]
    assert json.loads((out / "items.json").read_text()) == {}
    assert json.loads((out / "pipeline.json").read_text())["fps"] == 12
    assert sorted(p.name for p in out.iterdir()) == ["items.json", "pipeline.json"]   # the lock is gone
    assert R.build(None, out, _pipe(["ta"]), progress=False, log=logs.append) == [] and len(logs) == 1
    assert engine["sessions"] == []


def test_build_registers_videos_and_streams_them(stages, tmp_path, engine):
    v = tmp_path / "v"
    v.mkdir()
    for n in ["x.mp4", "y.mp4"]:
        (v / n).write_bytes(n.encode())
    st = tmp_path / "stems"
    (st / "x").mkdir(parents=True)
    out = tmp_path / "b"
    old = Item(id=R.discover(v)[0].id, source="/elsewhere/x.mp4")
    R.save_items(out, [old, Item(id="z", source=str(tmp_path / "gone.mp4"))])
    logs = []
    summ = R.build(v, out, _pipe(["ta", "tm"], {"tm": {"k": 2}}), jobs=3, stems=st, progress=False, log=logs.append,
                   backend="dask", scheduler="tcp://h:1")
    assert logs == [f"{old.id}: now built from {v / 'x.mp4'} (was /elsewhere/x.mp4: same path under --videos)"]
    items = R.load_items(out)
    assert sorted(items) == sorted([old.id, R.discover(v)[1].id, "z"])
    assert items[old.id].stems == str((st / "x").resolve())
    assert engine["sessions"] == [("dask", 3, "tcp://h:1", ["chorushead.runner", STAGE_MODULES["ta"],
                                                              STAGE_MODULES["tm"]])]
    # z's source is gone: ta fails for it (an item's failure never stops the others)
    assert _summ(summ) == {"ta": (2, 0, 1, 0, 0, 0), "tm": (2, 0, 0, 0, 1, 0)}
    assert [f[0] for f in summ[0].failures] == ["z"]
    assert json.loads((out / "pipeline.json").read_text()) == {"stages": ["ta", "tm"], "params": {"tm": {"k": 2}},
                                                               "fps": 30}


def test_build_a_whole_pipeline_then_again(stages, tmp_path, engine):
    out = tmp_path / "b"
    R.save_items(out, _items(tmp_path, "a0", "bad1", "rej2"))
    pipe = _pipe(FULL, {"tb": {"k": 3}})
    summ = R.build(None, out, pipe, progress=True, log=lambda *_: None)
    assert [s.stage for s in summ] == FULL
    assert _summ(summ) == {"ta": (3, 0, 0, 0, 0, 0), "tg": (2, 1, 0, 0, 0, 0), "tb": (2, 0, 0, 0, 1, 0),
                           "tp": (1, 0, 1, 0, 1, 0), "tc": (1, 0, 0, 0, 2, 0)}
    assert summ[3].failures == [("bad1", "StageError: cannot pack")]
    # each item through its stages before the next starts; tc after the global stage
    assert CALLS == [("ta", "a0"), ("tg", "a0"), ("tb", "a0"), ("ta", "bad1"), ("tg", "bad1"), ("tb", "bad1"),
                     ("ta", "rej2"), ("tg", "rej2"), ("tc", "a0")]
    # the global stage ran early once rej2 had left ta (the stage its plan reads), then finally
    assert GLOBAL_RUNS == [["a0", "bad1"], ["a0", "bad1"]]
    tp = Manifest(out, "tp").read_all()
    assert [(r.item, r.status) for r in tp] == [("a0", "done"), ("bad1", "failed"), ("bad1", "failed")]
    latest = iter_records(out, FULL)
    assert latest["tb"]["a0"].metrics == {"n": 3} and "rej2" not in latest["tb"]
    assert latest["tc"]["a0"].fingerprint == R.Plan.of(pipe).fingerprint("tc", R.load_items(out)["a0"],
                                                                         {"tp": latest["tp"]["a0"]})
    assert all(s.seconds >= 0 for s in summ)
    assert [c.progress for c in GLOBAL_CTX] == [False, True]        # the final run shows the build's progress
    assert (out / "items" / "a0" / "ta" / "a.txt").read_text() == "ta:a0"
    assert (out / "items" / "a0" / "tc" / "a.txt").read_text() == "tc:a0"
    # two bars (one per run of item stages), each moved once per item and stage
    b1, b2 = _Bar.made
    assert b1.kw == dict(total=9, desc="build", unit="item-stage", disable=False, file=sys.stderr, dynamic_ncols=True)
    # per item: its first task (nothing passed), then 1 per record and what its follow-up passed over
    assert b1.updates == [0, 0, 0] + [1, 0, 1, 0, 1, 0] * 2 + [1, 0, 1, 1]   # rej2: tb blocked, passed over
    assert b1.n == 9 and b1.closed and b2.kw["total"] == 3 and b2.n == 3 and b2.closed
    assert b1.post[0] == ("ta a0 done", False) and len(b1.post) == 8 and b2.post == [("tc a0 done", False)]
    assert engine["engine"].gpu_asked == [(s, False) for s, _ in CALLS]
    assert engine["sessions"] == [("local", 1, None, ["chorushead.runner"] + [STAGE_MODULES[s] for s in FULL[:2]]
                                   + [STAGE_MODULES["tb"], "json"] + [STAGE_MODULES[s] for s in FULL[3:]])]

    CALLS.clear()
    GLOBAL_RUNS.clear()
    summ = R.build(None, out, pipe, **QUIET)
    assert _summ(summ) == {"ta": (0, 0, 0, 3, 0, 0), "tg": (0, 0, 0, 3, 0, 0), "tb": (0, 0, 0, 2, 1, 0),
                           "tp": (0, 0, 1, 1, 1, 0), "tc": (0, 0, 0, 1, 2, 0)}
    assert CALLS == [] and GLOBAL_RUNS == [["a0", "bad1"]]
    b1, b2 = _Bar.made[-2:]
    assert b1.kw["disable"] is True and b1.updates == [3, 3, 3] and b1.post == []   # all passed over at once
    assert b2.updates == [1, 1, 1] and b2.closed

    # only some stages; a changed parameter of tb redoes tb, the global stage and tc
    CALLS.clear()
    summ = R.build(None, out, _pipe(FULL, {"tb": {"k": 4}}), stages=["tb", "tp"], early=False, **QUIET)
    assert [s.stage for s in summ] == ["tb", "tp"]
    assert _summ(summ) == {"tb": (2, 0, 0, 0, 1, 0), "tp": (1, 0, 1, 0, 1, 0)}
    assert CALLS == [("tb", "a0"), ("tb", "bad1")]


def test_build_counts_finished_items_for_the_early_run(stages, tmp_path, engine):
    out = tmp_path / "b"
    R.save_items(out, _items(tmp_path, "a0", "b1", "c2"))
    R.build(None, out, _pipe(FULL), **QUIET)
    # early once c2 has left ta (a0, b1 finished); c2's tg and tb records finish no item before the final run
    assert GLOBAL_RUNS == [["a0", "b1"], ["a0", "b1", "c2"]]


def test_build_without_early_runs_the_global_stage_once(stages, tmp_path, engine):
    out = tmp_path / "b"
    R.save_items(out, _items(tmp_path, "a0", "b1", "c2"))
    summ = R.build(None, out, _pipe(["ta", "tp", "tc"]), early=False, **QUIET)   # tp needs tb: blocked for all
    assert _summ(summ) == {"ta": (3, 0, 0, 0, 0, 0), "tp": (0, 0, 0, 0, 3, 0), "tc": (0, 0, 0, 0, 3, 0)}
    assert GLOBAL_RUNS == [[]]
    out2 = tmp_path / "b2"
    R.save_items(out2, _items(tmp_path, "a0", "b1", "c2"))
    summ = R.build(None, out2, _pipe(["ta", "tg", "tb", "tp"]), early=False, **QUIET)
    assert GLOBAL_RUNS[1:] == [["a0", "b1", "c2"]]
    assert _summ(summ)["tp"] == (3, 0, 0, 0, 0, 0)


def test_build_a_lost_task_leaves_its_item_pending(stages, tmp_path, engine):
    out = tmp_path / "b"
    R.save_items(out, _items(tmp_path, "a0", "b1", "c2"))
    engine["engine"].lost = {"b1"}
    summ = R.build(None, out, _pipe(["ta", "tb", "tm"]), **QUIET)
    assert _summ(summ) == {"ta": (2, 0, 0, 0, 0, 1), "tb": (2, 0, 0, 0, 0, 1), "tm": (2, 0, 0, 0, 0, 1)}
    assert "b1" not in iter_records(out, ["ta"])["ta"]


def test_runs_cuts_the_order_at_global_stages(stages):
    assert R._runs(["ta", "tg", "tb", "tp", "tc"]) == [(["ta", "tg", "tb"], "tp"), (["tc"], None)]
    assert R._runs(["tp", "tx"]) == [([], "tp"), ([], "tx")]
    assert R._runs(["ta", "tx", "tb", "tc", "tp"]) == [(["ta"], "tx"), (["tb", "tc"], "tp")]
    assert R._runs([]) == []


def test_build_defaults(stages, tmp_path, engine, capsys):
    (tmp_path / "v").mkdir()
    assert R.build(tmp_path / "v", tmp_path / "b", _pipe(["ta"])) == []
    assert capsys.readouterr().out.startswith(f"No videos found under {tmp_path / 'v'} (extensions: ")   # print
    R.save_items(tmp_path / "b", _items(tmp_path, "a0"))
    R.build(None, tmp_path / "b", _pipe(["ta"]))
    assert _Bar.made[-1].kw["disable"] is False                    # progress by default
    assert engine["sessions"] == [("local", 1, None, ["chorushead.runner", STAGE_MODULES["ta"]])]


@pytest.mark.parametrize("step", [0.0, 1.23456])
def test_build_times_every_stage(stages, tmp_path, engine, monkeypatch, step):
    out = tmp_path / "b"
    R.save_items(out, _items(tmp_path, "a0", "bad1", "rej2"))
    monkeypatch.setattr(R, "time", _Clock(step))
    summ = {s.stage: s.seconds for s in R.build(None, out, _pipe(FULL), **QUIET)}
    one = round(step, 3)                                  # an item stage: its t0 and end, rounded
    # tp: the early run (its t0, run_global_stage's t0, a0's record, its end) and the final one (t0s, end):
    # bad1's failures give their own 0.5 s, a0 is left alone the second time
    assert summ == pytest.approx({"ta": 3 * one, "tg": 3 * one, "tb": 2 * one, "tp": 5 * step, "tc": one})
    assert [r.seconds for r in Manifest(out, "tp").read_all()] == [one, 0.5, 0.5]
