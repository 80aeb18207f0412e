"""Runs a pipeline's stages over items, resumably, on local processes or a Dask/Ray cluster.

For every item-stage the runner computes a fingerprint from the stage's name, version, the parameters
that can change its results, the identity of its model, the pipeline's fps and the fingerprints of the
upstream records it needs (ingest: of the input file). An item whose newest record is done with that
fingerprint is reused; failed or changed ones are (re)done; a stage whose upstream is not current (failed,
stale, not run) is blocked, its old outputs kept but never used downstream (see :class:`Plan`).

Item stages stream: each item walks the stages in order, and its next stage is queued the moment its
previous record is back, so a slow video never holds the others at a stage boundary. Work
runs through an executor (in this process, local processes, Dask or Ray: see the executors package); only this
process appends to the stage manifests, so records from workers that finish in any order are neither
lost nor duplicated. A worker that dies mid-item leaves no record: the item stays pending and the next
run does it again. Global stages (pack) get every ready item at once and return results the same way;
the runner checks every result against the stage's declared Outputs/Metrics before it becomes a record.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import sys
import time
import traceback
import unicodedata
import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from chorushead.core.errors import StageError
from chorushead.core.manifest import (Manifest, Record, file_fingerprint, fingerprint, iter_records,
                                      write_json_atomic)
from chorushead.core.origin import origins
from chorushead.core.shapes import ShapeError
from chorushead.stages import STAGE_MODULES, get_stage
from chorushead.stages.base import (DEFAULT_FPS, Context, GlobalContext, Item, Result, Stage, params_dict,
                                    result_params)

VIDEO_EXTS = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v"}
try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore


# ----------------------------------------------------------------------------- pipeline file
@dataclass
class Pipeline:
    stages: list[str]
    params: dict[str, dict[str, Any]]
    fps: int = DEFAULT_FPS          # the one frame rate of the build: every stage gets it as ctx.fps

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: Iterable[str] = ()) -> "Pipeline":
        path = Path(path) if path else default_pipeline_path()
        with open(path, "rb") as f:
            cfg = tomllib.load(f)
        unknown = sorted(set(cfg) - {"pipeline", "stages"})
        if unknown:
            raise ValueError(f"{path}: unknown table(s) {unknown}; a pipeline file has [pipeline] and [stages.<name>]")
        return cls.from_config(dict(cfg.get("pipeline", {})), cfg.get("stages", {}), overrides, str(path))

    @classmethod
    def from_config(cls, pipe: dict[str, Any], stage_params: dict[str, Any], overrides: Iterable[str] = (),
                    where: str = "pipeline") -> "Pipeline":
        """A pipeline from its ``[pipeline]`` table and per-stage parameters, with ``--set`` overrides."""
        pipe = dict(pipe)
        params = {k: dict(v) for k, v in stage_params.items()}
        for ov in overrides:
            key, _, raw = ov.partition("=")
            stage, _, name = key.partition(".")
            if not name or not _:
                raise ValueError(f"--set expects stage.param=value (or pipeline.fps=N), got {ov!r}")
            if stage == "pipeline":
                if name != "fps":
                    raise ValueError(f"--set {ov!r}: only pipeline.fps can be set; the stages are [pipeline] stages")
                pipe["fps"] = _parse_value(raw)
            else:
                params.setdefault(stage, {})[name] = _parse_value(raw)
        unknown = sorted(set(pipe) - {"stages", "fps"})
        if unknown:
            raise ValueError(f"{where}: unknown [pipeline] key(s) {unknown}; known: fps, stages")
        stages = list(pipe.get("stages", []))
        for s in stages:
            if s not in STAGE_MODULES:
                raise ValueError(f"{where}: unknown stage {s!r} in [pipeline] stages; known: {', '.join(STAGE_MODULES)}")
        for s in params:
            if s not in stages and s != "review":
                raise ValueError(f"{where}: parameters for unknown stage {s!r}")
            if s != "review":   # [stages.review] holds the review's thresholds, checked by the review
                get_stage(s).make_params(params[s])   # unknown parameter names are refused here, at load
        fps = pipe.get("fps", DEFAULT_FPS)
        if not isinstance(fps, int) or isinstance(fps, bool) or fps < 1:
            raise ValueError(f"{where}: [pipeline] fps must be a positive whole number, got {fps!r}")
        return cls(stages=stages, params=params, fps=fps)

    @classmethod
    def for_build(cls, out: Path, path: str | Path | None = None, overrides: Iterable[str] = ()) -> tuple["Pipeline", str]:
        """The pipeline a command on build folder ``out`` runs with, and where it came from: ``--pipeline``
        when given, else the one the folder's last build ran with (``pipeline.json``), else the default
        file; ``--set`` overrides apply on top. So a rerun or a new batch never falls back to defaults
        the build did not use (e.g. fit.backend)."""
        overrides = list(overrides)
        used = None if path else cls.used_by(out)
        if used is None:
            pl = cls.load(path, overrides)
            where = str(path) if path else f"the default pipeline ({default_pipeline_path()})"
        else:
            pl = cls.from_config({"stages": used.stages, "fps": used.fps}, used.params, overrides,
                                 str(Path(out) / USED_PIPELINE))
            where = f"this build's saved pipeline ({Path(out) / USED_PIPELINE})"
        return pl, where + (f" with {', '.join(overrides)}" if overrides else "")

    def save(self, out: Path) -> None:
        """``<out>/pipeline.json``: the pipeline the last build of this folder ran with (after --set), so
        `chorushead report`/`status` describe the build as it was run, not the file as it is now."""
        write_json_atomic(Path(out) / USED_PIPELINE, {"stages": self.stages, "params": self.params, "fps": self.fps})

    @classmethod
    def used_by(cls, out: Path) -> "Pipeline | None":
        p = Path(out) / USED_PIPELINE
        if not p.exists():
            return None
        d = json.loads(p.read_text())
        return cls(stages=list(d["stages"]), params={k: dict(v) for k, v in d["params"].items()}, fps=int(d["fps"]))


USED_PIPELINE = "pipeline.json"


def default_pipeline_path() -> Path:
    """The installed package's copy (a wheel ships the top-level pipelines/ as chorushead/pipelines/,
    see pyproject.toml), else the checkout's pipelines/chorushead.toml."""
    here = Path(__file__).resolve().parent
    for p in (here / "pipelines" / "chorushead.toml", here.parent / "pipelines" / "chorushead.toml"):
        if p.exists():
            return p
    raise FileNotFoundError("pipelines/chorushead.toml not found; pass --pipeline FILE")


def _parse_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


# ----------------------------------------------------------------------------- items
def slug(name: str) -> str:
    """ASCII, filesystem- and URL-safe version of a file stem (non-ASCII transliterated or dropped)."""
    s = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", s).strip("._-")
    return s[:60] or "video"


def discover(videos: Path, stems: Path | None = None) -> list[Item]:
    """Every video file under ``videos`` (recursively), with an id unique per relative path, and its
    origin when a fetch.jsonl beside it says where it was downloaded from (`chorushead fetch`)."""
    videos = Path(videos)
    if not videos.is_dir():
        raise FileNotFoundError(f"--videos {videos}: not a folder")
    fetched = origins(videos)
    items = []
    for p in sorted(videos.rglob("*")):
        if p.suffix.lower() not in VIDEO_EXTS or p.name.startswith("."):
            continue
        if p.is_dir():
            continue  # a folder named like a video; a dangling symlink is kept and fails in ingest
        rel = p.relative_to(videos).as_posix()
        vid = f"{slug(p.stem)}-{hashlib.sha1(rel.encode()).hexdigest()[:6]}"
        st = None
        if stems is not None and (Path(stems) / p.stem).is_dir():
            st = str((Path(stems) / p.stem).resolve())
        items.append(Item(id=vid, source=str(p.absolute()), stems=st, origin=fetched.get(Path(os.path.normpath(p)))))
    return items


def save_items(out: Path, items: list[Item]) -> list[str]:
    """items.json: every video registered in this build folder (a new batch is added beside the old ones;
    only `chorushead remove` takes one out). An id already registered from another file (the same
    relative path under another --videos folder) now names the new file: returns a note for each."""
    known = load_items(out)
    notes = [f"{it.id}: now built from {it.source} (was {known[it.id].source}: same path under --videos)"
             for it in items if it.id in known and known[it.id].source != it.source]
    for it in items:
        known[it.id] = it
    if items or not (Path(out) / "items.json").exists():
        write_json_atomic(Path(out) / "items.json", {k: _item_json(v) for k, v in sorted(known.items())})
    return notes


def _item_json(it: Item) -> dict[str, Any]:
    """An item as items.json holds it; no "origin" key for a video that was not fetched, so the registry
    of a build without `chorushead fetch` reads as it always did."""
    return {k: v for k, v in vars(it).items() if k != "origin" or v is not None}


def remove_items(out: Path, ids: list[str]) -> list[Item]:
    """Take videos out of the build's registry (their outputs stay on disk until the next pack drops
    their windows). Unknown ids raise ValueError naming the registered ones."""
    known = load_items(out)
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise ValueError(f"not registered in {out}: {', '.join(unknown)}; registered: {', '.join(sorted(known))}")
    removed = [known.pop(i) for i in ids]
    write_json_atomic(Path(out) / "items.json", {k: _item_json(v) for k, v in sorted(known.items())})
    return removed


def load_items(out: Path) -> dict[str, Item]:
    p = Path(out) / "items.json"
    if not p.exists():
        return {}
    return {k: Item(**v) for k, v in json.loads(p.read_text()).items()}


# ----------------------------------------------------------------------------- lock
class BuildLock:
    """One build per output folder at a time (flock: released by the OS if the process dies).

    The lock file is removed when the build ends. It is unlinked while still locked, so a process
    that opened it meanwhile and then gets the lock holds a file that is no longer in the folder; it
    notices (the path is gone or names another inode) and starts over on a fresh file. A file left by
    a build killed with -9 holds no lock (the OS dropped it with the process) and is simply reused.
    """

    def __init__(self, out: Path):
        self.path = Path(out) / ".build.lock"
        self.fd: int | None = None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                other = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise RuntimeError(f"Another build is running on {self.path.parent} ({other}). "
                                   "Wait for it to finish or stop it; two builds on one folder would race.")
            if _same_file(fd, self.path):
                break
            os.close(fd)   # its holder removed it after we opened it: lock a fresh one
        self.fd = fd
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode())
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            if _same_file(self.fd, self.path):
                self.path.unlink()   # before unlocking: see the class docstring
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


# ----------------------------------------------------------------------------- one item, in a worker
_MODELS: dict[tuple[str, str], Any] = {}  # per-process cache: models load once per worker


class _LazyModel:
    """Stands for a stage's model and loads it (once per worker process) on first use, so an item that
    never needs the model (e.g. separation skipped because stems were supplied) never needs its assets."""

    def __init__(self, stage: Stage, params: Any):
        self._key = (stage.name, fingerprint(params_dict(params)))
        self._setup = lambda: stage.setup(params)

    def _get(self) -> Any:
        if self._key not in _MODELS:
            _MODELS[self._key] = self._setup()
        return _MODELS[self._key]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._get(), name)

    def __call__(self, *args, **kwargs):
        return self._get()(*args, **kwargs)


def _model_for(stage: Stage, params: Any) -> Any:
    return None if stage.setup is None else _LazyModel(stage, params)


@dataclass
class Task:
    stage: str
    params: dict[str, Any]
    item: Item
    out: str
    upstream: dict[str, Record]
    fp: str
    fps: int


def run_task(task: Task) -> Record:
    """Process one item in this process. Failures become failed records; only a result that does not
    match the stage's declared shapes raises (a bug in the stage, the same for every item)."""
    stage = get_stage(task.stage)
    out = Path(task.out)
    final = task.item.dir(out) / stage.name
    tmp = final.parent / f".tmp-{stage.name}-{os.getpid()}"
    t0 = time.time()
    try:
        params = stage.make_params(task.params)
        # Leftovers of a killed run (any pid): garbage, since the build lock admits one build per folder.
        for pattern in (f".tmp-{stage.name}-*", f".old-{stage.name}-*"):
            for stale in final.parent.glob(pattern):
                _discard(stale)
        tmp.mkdir(parents=True)
        model = _model_for(stage, params)
        ctx = Context(item=task.item, out=out, tmp=tmp, final=final, upstream=task.upstream, fps=task.fps,
                      fingerprint=task.fp)
        res: Result = stage.process(ctx, params, model)
        stage.check(res)
        outputs = _relativise(res.outputs, tmp, final.relative_to(out))
        _swap_in(tmp, final)
        return Record(item=task.item.id, stage=stage.name, status=res.status, fingerprint=task.fp,
                      outputs=outputs, metrics=res.metrics, reason=res.reason, stage_version=stage.version,
                      started=t0, seconds=round(time.time() - t0, 3))
    except ShapeError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except Exception as e:  # one bad item never stops the batch
        shutil.rmtree(tmp, ignore_errors=True)
        msg = str(e) if isinstance(e, StageError) else f"{e} ({_where(e)})"
        return Record(item=task.item.id, stage=task.stage, status="failed", fingerprint=task.fp,
                      error_class=type(e).__name__, message=msg or type(e).__name__,
                      stage_version=stage.version, started=t0, seconds=round(time.time() - t0, 3))


def _discard(path: Path) -> None:
    """Remove a leftover folder or file; one that cannot be removed is left (nothing reads it)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except OSError:
            pass


def _where(e: BaseException) -> str:
    tb = traceback.extract_tb(e.__traceback__)
    return f"{Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else "?"


def _relativise(outputs: dict[str, Any], tmp: Path, rel_final: Path) -> dict[str, Any]:
    """Output paths a stage gives relative to its folder become relative to the build root."""
    def conv(v):
        if isinstance(v, str) and not v.startswith("items/") and v and (tmp / v).exists():
            return (rel_final / v).as_posix()
        if isinstance(v, list):
            return [conv(x) for x in v]
        return v
    return {k: conv(v) for k, v in outputs.items()}


def _swap_in(tmp: Path, final: Path) -> None:
    """Replace ``final`` by ``tmp`` (directories). A crash in between leaves no record -> redone."""
    if final.exists():
        old = final.parent / f".old-{final.name}-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


# ----------------------------------------------------------------------------- the build
@dataclass
class StageSummary:
    """Per-stage counts, for a build's closing table and for `chorushead status`."""
    stage: str
    done: int = 0
    skipped: int = 0
    failed: int = 0
    reused: int = 0
    blocked: int = 0
    pending: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)

    def count(self, r: Record | None) -> None:
        if r is None:
            self.pending += 1
        elif r.status == "done":
            self.done += 1
        elif r.status == "skipped":
            self.skipped += 1
        else:
            self.failed += 1
            self.failures.append((r.item, r.failure_line()))


@dataclass
class Plan:
    """What a build would record now: every stage of the pipeline with its parameters and the identity
    of the model it would run (Stage.identity, resolved once per build), at the pipeline's fps.

    :meth:`states` walks one item through the stages in order and says of each whether its newest
    record is *current* (ok, and made from today's inputs, settings, model and current upstream
    records), *todo* (its upstream is current but its own record is missing, failed or stale), or
    *blocked* (an upstream stage is not current: it failed, is stale or has not run). Only current
    records flow downstream; a blocked stage's old outputs stay where they are but count as stale."""
    order: list[str]
    params: dict[str, Any]
    fps: int
    identities: dict[str, Any] = field(default_factory=dict)
    _sources: dict[str, Any] = field(default_factory=dict, repr=False)   # item id -> input fingerprint

    @classmethod
    def of(cls, pipeline: "Pipeline") -> "Plan":
        params = {name: get_stage(name).make_params(pipeline.params.get(name)) for name in pipeline.stages}
        ids = {name: get_stage(name).identity(p) for name, p in params.items() if get_stage(name).identity}
        return cls(order=list(pipeline.stages), params=params, fps=pipeline.fps, identities=ids)

    def source_fingerprint(self, item: Item) -> Any:
        """The first stage's input: the video file (and the stems), read once per build."""
        if item.id not in self._sources:
            src = Path(item.source)
            fp: list[Any] = [file_fingerprint(src) if src.is_file() and os.access(src, os.R_OK)
                             else f"unreadable:{src}"]
            if item.stems:
                fp.append(sorted((p.name, file_fingerprint(p)) for p in Path(item.stems).glob("*.wav")))
            self._sources[item.id] = fp
        return self._sources[item.id]

    def fingerprint(self, name: str, item: Item, upstream: dict[str, Record], plan: Any = None) -> str:
        """The fingerprint stage ``name`` records for ``item`` from these upstream records; ``plan``: what
        a global stage says the item's result also depends on (see Stage.plan)."""
        stage = get_stage(name)
        base = [stage.name, stage.version, result_params(self.params[name]), self.fps]
        # a gate (the screen) hands nothing downstream: only whether it let the video through counts,
        # and that is in states(), so its fingerprint stays out of what follows it
        upstream = {k: r for k, r in upstream.items() if not get_stage(k).gate}
        if name in self.identities:
            base.append({"model": self.identities[name]})
        if not stage.needs:  # first stage: fingerprint the inputs themselves
            base.extend(self.source_fingerprint(item))
        base.append({k: r.fingerprint for k, r in sorted(upstream.items())})
        if plan is not None:
            base.append(plan)
        return fingerprint(*base)

    def fingerprints(self, name: str, items: dict[str, Item], upstream: dict[str, dict[str, Record]],
                     out: Path) -> tuple[dict[str, str], dict[str, Any]]:
        """What stage ``name`` records now for each item of ``upstream`` (item id -> the records it needs):
        its fingerprint and, for a global stage, its plan (Stage.plan, over every item at once: pack's
        split is by video). The build's own computation: the dataset card asks it too."""
        stage = get_stage(name)
        plans: dict[str, Any] = {}
        if stage.plan is not None:
            ctx = GlobalContext(out=Path(out), fps=self.fps, upstream=dict(sorted(upstream.items())), previous={},
                                fingerprints={}, progress=False, items=sorted(items))
            plans = stage.plan(ctx, self.params[name])
        return ({vid: self.fingerprint(name, items[vid], ups, plans.get(vid)) for vid, ups in upstream.items()},
                plans)

    def needs(self, name: str) -> tuple[str, ...]:
        """The stages ``name`` needs in this pipeline: a gate (Stage.gate) the pipeline does not run (an
        older build's saved pipeline, a pipeline without the screen) is no need."""
        return tuple(n for n in get_stage(name).needs if n in self.order or not get_stage(n).gate)

    def states(self, item: Item, latest: dict[str, dict[str, Record]]) -> dict[str, tuple[str, str | None]]:
        """Stage -> (state, fingerprint it would record now or None): see the class docstring. A global
        stage whose upstream is current is "ready" (its fingerprint needs its plan, over all items).
        A gate's current "skipped" record (the screen rejected the video) blocks the stages that need it."""
        res: dict[str, tuple[str, str | None]] = {}
        for name in self.order:
            stage = get_stage(name)
            needs = self.needs(name)
            if any(res.get(need, ("absent",))[0] != "current" for need in needs) or any(
                    get_stage(need).gate and latest[need][item.id].status == "skipped" for need in needs):
                res[name] = ("blocked", None)
                continue
            prev = latest.get(name, {}).get(item.id)
            if stage.kind == "global":   # item stages after a global one trust its ok record
                res[name] = ("current" if prev is not None and prev.ok else "ready", None)
                continue
            fp = self.fingerprint(name, item, {need: latest[need][item.id] for need in needs})
            res[name] = ("current" if prev is not None and prev.ok and prev.fingerprint == fp else "todo", fp)
        return res

    def ready(self, name: str, items: list[Item], latest: dict[str, dict[str, Record]]) -> dict[str, dict[str, Record]]:
        """Item id -> the records stage ``name`` needs, for the items whose upstream is all current."""
        return {it.id: {need: latest[need][it.id] for need in self.needs(name)}
                for it in items if self.states(it, latest)[name][0] != "blocked"}


def next_task(names: list[str], plan: Plan, item: Item, out: Path, latest: dict[str, dict[str, Record]],
              summaries: dict[str, "StageSummary"], start: int = 0) -> Task | None:
    """The item's first stage from ``names[start:]`` that has work to do, as a Task; the stages passed
    on the way are counted as reused (current) or blocked (an upstream stage is not current). None when
    the item has nothing left to do in ``names``."""
    states = plan.states(item, latest)
    for name in names[start:]:
        state, fp = states[name]
        if state == "blocked":
            summaries[name].blocked += 1
        elif state == "current":
            summaries[name].reused += 1
        else:
            ups = {need: latest[need][item.id] for need in plan.needs(name)}
            return Task(name, params_dict(plan.params[name]), item, str(out), ups, fp, plan.fps)
    return None


def build(videos: Path | None, out: Path, pipeline: Pipeline, stages: list[str] | None = None,
          jobs: int = 1, stems: Path | None = None, progress: bool = True,
          log: Callable[[str], None] = print, backend: str = "local",
          scheduler: str | None = None, early: bool = True) -> list[StageSummary]:
    """Run ``stages`` (default: all) of ``pipeline`` over every video registered in ``out`` (with the
    ones under ``videos`` added to them); returns one summary per stage, in pipeline order. Item stages
    stream: an item moves to its next stage as soon as its previous one is back, while other items are
    anywhere in the pipeline. A global stage (pack) runs once more after every item stage before it in
    the order, and item stages after it wait for that; with ``early`` it also runs while they stream,
    on the items already through (:class:`EarlyGlobal`), so the first windows are packed while other
    videos are still being cropped. Its final run then finds them packed and writes only the rest."""
    out = Path(out)
    # Arguments are checked before the output folder exists, so a typo leaves nothing behind.
    if stages:
        unknown = set(stages) - set(pipeline.stages)
        if unknown:
            raise ValueError(f"--stages: unknown stage(s) {sorted(unknown)}; pipeline has {pipeline.stages}")
    order = [s for s in pipeline.stages if stages is None or s in stages]
    plan = Plan.of(pipeline)
    for flag, folder in (("--videos", videos), ("--stems", stems)):
        if folder is not None and not Path(folder).is_dir():
            raise FileNotFoundError(f"{flag} {folder}: not a folder")
    out.mkdir(parents=True, exist_ok=True)
    with BuildLock(out):
        items = discover(videos, stems) if videos is not None else []
        if videos is not None and not items:
            log(f"No videos found under {videos} (extensions: {', '.join(sorted(VIDEO_EXTS))}).")
        for note in save_items(out, items):
            log(note)
        pipeline.save(out)
        # Batches add up: every registered video is built and packed, not only the new batch.
        all_items = list(load_items(out).values())
        if not all_items:
            return []
        summaries = {name: StageSummary(name) for name in order}
        from chorushead.executors import session
        # One engine for the whole build: a Dask cluster / Ray instance starts (or connects) at most
        # once, and its workers keep the models they loaded (_MODELS) for every later stage and item.
        # Worker processes started here fork ready: the run's stage modules and heavy imports loaded once.
        preload = ["chorushead.runner"] + [m for name in order
                                           for m in (STAGE_MODULES[name], *get_stage(name).preload)]
        with session(backend, jobs, scheduler, preload=preload) as engine:
            for names, global_name in _runs(order):
                ahead = None
                if names:
                    latest = iter_records(out, pipeline.stages)
                    if global_name and early:
                        ahead = EarlyGlobal(get_stage(global_name), plan, names, all_items, out, latest,
                                            summaries[global_name])
                    _stream(names, plan, all_items, out, latest, summaries, engine, progress, ahead)
                if global_name:
                    _run_global(get_stage(global_name), plan, all_items, out, iter_records(out, pipeline.stages),
                                progress, summaries[global_name], earlier=ahead.records if ahead else {})
        return [summaries[name] for name in order]


def _runs(order: list[str]) -> list[tuple[list[str], str | None]]:
    """The order cut at its global stages: [(the item stages before one, that global stage or None)]."""
    runs, names = [], []
    for name in order:
        if get_stage(name).kind == "global":
            runs.append((names, name))
            names = []
        else:
            names.append(name)
    if names:
        runs.append((names, None))
    return runs


@dataclass
class EarlyGlobal:
    """A global stage (pack) run on the items already through the item stages ``names`` while the
    others still stream. It waits until no item has work left in the stages its plan reads of every
    item (Stage.plan_reads: pack's duplicate groups read every video's fingerprint), so a split it
    writes early is the split the final run computes; then it runs each time another ``batch`` items
    have finished (an eighth of them by default: a handful of write transactions in all). Each run is
    the stage's ordinary call over whatever is ready (a video already packed as it is now is left
    alone), in this one process, the only one that writes the LMDB."""
    stage: Stage
    plan: Plan
    names: list[str]
    items: list[Item]
    out: Path
    latest: dict[str, dict[str, Record]]
    summary: StageSummary
    batch: int = 0
    records: dict[str, Record] = field(default_factory=dict)   # item -> its newest early record
    finished: int = 0
    runs: int = 0

    def __post_init__(self):
        self.batch = self.batch or max(1, math.ceil(len(self.items) / 8))
        reads = [self.names.index(s) for s in self.stage.plan_reads if s in self.names]
        self.settled_after = max(reads, default=-1)   # every item past this index: the plan's reads are final

    def after(self, item_done: bool, position: dict[str, int]) -> None:
        """Called after each record is appended; ``position``: item -> index in ``names`` of its pending
        task (len(names): nothing left to do in this run)."""
        self.finished += item_done
        lagging = min(position.values())
        # not when every item is through: the final run comes next anyway
        if self.finished >= self.batch and self.settled_after < lagging < len(self.names):
            self.run()

    def run(self) -> None:
        t0 = time.time()
        manifest = Manifest(self.out, self.stage.name)
        for rec in run_global_stage(self.stage, self.plan.params[self.stage.name], self.items, self.out,
                                    self.latest, self.plan.fps, plan=self.plan):
            manifest.append(rec)
            self.latest.setdefault(self.stage.name, {})[rec.item] = rec
            self.records[rec.item] = rec
        self.summary.seconds += time.time() - t0
        self.finished = 0
        self.runs += 1


def _stream(names: list[str], plan: Plan, items: list[Item], out: Path, latest: dict[str, dict[str, Record]],
            summaries: dict[str, StageSummary], engine: Any, progress: bool, ahead: EarlyGlobal | None = None) -> None:
    """Every item through the item stages ``names``, streaming (see :func:`build`). Records are appended
    here, in this one process, as tasks finish in any order; ``latest`` is kept up to date with them.
    ``ahead``: the global stage after ``names``, run early on what is through (EarlyGlobal)."""
    from tqdm.auto import tqdm
    manifests = {name: Manifest(out, name) for name in names}
    by_id = {it.id: it for it in items}
    # One unit per item and stage: run, reused or blocked, each moves the bar on.
    bar = tqdm(total=len(items) * len(names), desc="build", unit="item-stage", disable=not progress,
               file=sys.stderr, dynamic_ncols=True)

    position: dict[str, int] = {}   # item -> index in names of its pending task; len(names) = through

    def next_of(it: Item, start: int = 0) -> list[Task]:
        task = next_task(names, plan, it, out, latest, summaries, start)
        position[it.id] = len(names) if task is None else names.index(task.stage)
        bar.update(position[it.id] - start)   # passed over
        return [] if task is None else [task]

    def follow(rec: Record) -> list[Task]:   # called once rec is appended (see executors.parallel_map)
        tasks = next_of(by_id[rec.item], names.index(rec.stage) + 1)
        if ahead is not None:
            ahead.after(position[rec.item] == len(names), position)
        return tasks

    try:
        tasks = [t for it in items for t in next_of(it)]
        gpu = lambda task: get_stage(task.stage).gpu   # noqa: E731 - on Ray, a GPU stage's task gets a GPU
        for rec in engine.map(run_task, tasks, gpu=gpu, follow=follow):
            manifests[rec.stage].append(rec)
            latest.setdefault(rec.stage, {})[rec.item] = rec
            summaries[rec.stage].count(rec)
            summaries[rec.stage].seconds += rec.seconds or 0.0
            bar.set_postfix_str(f"{rec.stage} {rec.item} {rec.status}", refresh=False)
            bar.update(1)
    finally:
        bar.close()
    # A task lost with its worker (executors.WorkerLost) leaves its item without a record: pending.
    for name in names:
        s = summaries[name]
        s.pending = len(items) - s.done - s.skipped - s.failed - s.reused - s.blocked


def _run_global(stage: Stage, plan: Plan, items: list[Item], out: Path, latest: dict[str, dict[str, Record]],
                progress: bool, summ: StageSummary, earlier: dict[str, Record] | None = None) -> None:
    """The global stage's (final) run; ``earlier``: the records its early runs in this build appended
    (EarlyGlobal), counted with this run's, the newest per item."""
    t0 = time.time()
    manifest = Manifest(out, stage.name)
    records = run_global_stage(stage, plan.params[stage.name], items, out, latest, plan.fps, progress, plan=plan)
    for rec in records:
        manifest.append(rec)
    newest = {**(earlier or {}), **{r.item: r for r in records}}
    for rec in newest.values():
        summ.count(rec)
    ready = set(newest) | {it.id for it in items if plan.states(it, latest)[stage.name][0] != "blocked"}
    summ.reused = len(ready) - summ.done - summ.skipped - summ.failed
    summ.blocked = len(items) - len(ready)
    summ.seconds += time.time() - t0


def run_global_stage(stage: Stage, params: Any, items: list[Item], out: Path,
                     latest: dict[str, dict[str, Record]], fps: int, progress: bool = False,
                     plan: Plan | None = None) -> list[Record]:
    """One call of a global stage over every ready item; its results become records (not appended).
    With the build's ``plan`` an item is ready when its upstream records are current (Plan.states);
    without one (a stage run on its own), when they are ok."""
    if plan is None:
        plan = Plan(order=[stage.name], params={stage.name: params}, fps=fps)
        ready = {it.id: ups for it in items
                 for ups in [{need: latest.get(need, {}).get(it.id) for need in stage.needs}]
                 if all(r is not None and r.ok for r in ups.values())}
    else:
        ready = plan.ready(stage.name, items, latest)
    ready = dict(sorted(ready.items()))
    by_id = {it.id: it for it in items}
    fingerprints, plans = plan.fingerprints(stage.name, by_id, ready, out)
    ctx = GlobalContext(out=Path(out), fps=fps, upstream=ready, previous=latest.get(stage.name, {}),
                        fingerprints=fingerprints, progress=progress, items=sorted(by_id))
    t0 = time.time()
    results = stage.process_all(ctx, params, plans)
    records = []
    for vid, res in results.items():
        if vid not in ready:
            raise ShapeError(f"stage {stage.name}: a result for {vid!r}, which was not among its ready items")
        failed = res.status == "failed"
        if not failed:
            stage.check(res)
        records.append(Record(item=vid, stage=stage.name, status=res.status, fingerprint=ctx.fingerprints[vid],
                              outputs={} if failed else res.outputs, metrics={} if failed else res.metrics,
                              reason=None if failed else res.reason,
                              error_class=(res.error_class or "StageError") if failed else None,
                              message=res.reason if failed else None, stage_version=stage.version, started=t0,
                              seconds=res.seconds if res.seconds is not None else round(time.time() - t0, 3)))
    return records
