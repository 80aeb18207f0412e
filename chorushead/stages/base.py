"""What a stage is: ``Params``, ``Outputs`` and ``Metrics`` dataclasses, an optional per-worker
``setup``, and ``process`` over one item (or, for a global stage, ``process_all`` over every ready item).

Both kinds only compute: they return :class:`Result` s, and the runner alone checks their shape, computes
fingerprints, builds the records and appends them. A stage never appends to a manifest and never writes outside its temp folder: the runner gives it
``ctx.tmp`` (a fresh folder), renames it to ``<out>/items/<id>/<stage>/`` once ``process`` returns,
and only then appends the record. So a crash leaves either the old outputs + old record or a
half-written temp folder that the next run discards.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from chorushead.core.manifest import Record
from chorushead.core.shapes import Metrics, Outputs, Shape

DEFAULT_FPS = 30   # the pipeline's frame rate when its file names none ([pipeline] fps)


@dataclass
class Item:
    """One input video. ``id`` is a filesystem-safe slug that is unique within a build."""
    id: str
    source: str                      # absolute path of the raw video
    stems: Optional[str] = None      # folder with vocals/accompaniment/singerN.wav, when supplied
    # Where the video came from when `chorushead fetch` downloaded it (URL, title, uploader, license,
    # duration, extractor, yt_dlp: core.origin). Metadata only: no fingerprint includes it, so it never
    # redoes work; the dataset card lists it.
    origin: Optional[dict[str, Any]] = None

    def dir(self, out: Path) -> Path:
        return Path(out) / "items" / self.id


@dataclass
class Result:
    """What ``process`` returns. ``outputs``/``metrics`` are given as the stage's ``Outputs``/``Metrics``
    dataclasses and kept as JSON dicts (the manifest line); the runner checks them against the shapes."""
    outputs: dict[str, Any] | Shape = field(default_factory=dict)  # paths relative to the stage folder, or values
    metrics: dict[str, Any] | Shape = field(default_factory=dict)
    status: str = "done"
    reason: Optional[str] = None
    seconds: Optional[float] = None   # global stages: time spent on this item (item stages are timed by the runner)
    error_class: Optional[str] = None  # global stages: a failed item (status "failed", ``reason`` = the message)

    def __post_init__(self):
        if isinstance(self.outputs, Shape):
            self.outputs = self.outputs.to_dict()
        if isinstance(self.metrics, Shape):
            self.metrics = self.metrics.to_dict()


@dataclass
class Context:
    """Everything ``process`` may look at for one item."""
    item: Item
    out: Path                         # build output root
    tmp: Path                         # where this stage writes; renamed to ``final`` on success
    final: Path                       # <out>/items/<id>/<stage>
    upstream: dict[str, Record]       # newest ok record of each stage this one needs
    fps: int = DEFAULT_FPS            # the pipeline's frame rate: every frame index is on this timeline
    fingerprint: str = ""             # what the runner will record: names this run's inputs + settings
                                      # (a stage that keeps progress across kills keys it on this)

    def path(self, rel: str) -> Path:
        """Absolute path of an upstream output file (outputs hold paths relative to the build root)."""
        return self.out / rel


@dataclass
class GlobalContext:
    """Everything ``process_all`` may look at: every item whose upstream records are all ok."""
    out: Path
    fps: int
    upstream: dict[str, dict[str, Record]]   # item id -> stage -> newest ok record, sorted by item id
    previous: dict[str, Record]              # this stage's newest record per item
    fingerprints: dict[str, str]             # item id -> fingerprint the runner will record for it
    progress: bool = True
    items: list[str] = field(default_factory=list)   # every video registered in the build, ready or not


@dataclass(frozen=True)
class Stage:
    name: str
    version: str
    params: type                                            # the module's ``Params``: a dataclass with defaults
    outputs: type[Outputs]                                  # the module's ``Outputs``
    metrics: type[Metrics]                                  # the module's ``Metrics``
    process: Callable[[Context, Any, Any], Result] | None = None   # (ctx, params, model) -> Result
    setup: Callable[[Any], Any] | None = None               # params -> model, once per worker
    needs: tuple[str, ...] = ()
    kind: str = "item"                                      # "item" or "global"
    # Global stages (they see all items at once, e.g. pack's split by video):
    # plan(ctx, params) -> {item id: JSON} = what an item's result depends on beyond its upstream records
    # and the params (pack: its split and kept segments); the runner folds it into the fingerprint.
    plan: Callable[[GlobalContext, Any], dict[str, Any]] | None = None
    # process_all(ctx, params, plans) -> {item id: Result} for the items that have something new to record.
    process_all: Callable[[GlobalContext, Any, dict[str, Any]], dict[str, Result]] | None = None
    # Item stages whose records of EVERY item the plan reads (pack: fingerprint, for duplicate groups).
    # While the item stages before a global stage stream, the runner may run the global stage early on
    # the items already through (pack: the first windows are written while other videos still crop),
    # once no item still has work in these stages, so what the plan says no longer moves.
    plan_reads: tuple[str, ...] = ()
    gpu: bool = False                                       # batches on a GPU when there is one
    # Heavy modules ``setup`` imports (torch...): a build's local worker processes fork from a server
    # that imported them once, instead of each importing them (seconds of CPU per worker).
    preload: tuple[str, ...] = ()
    # identity(params) -> JSON: the model that will actually run (file hashes / ids + versions of its
    # weights), computed once per build in the runner and folded into every item's fingerprint, so
    # swapping a weights file redoes this stage (and what follows) only. Cheap; never raises: a missing
    # asset gives e.g. "missing:<path>" and the stage itself then fails with MissingAsset.
    identity: Callable[[Any], Any] | None = None
    # A gate (the screen) only decides whether a video goes on: its "skipped" record rejects the video,
    # so the stages that need it are not run for it (runner.Plan.states: blocked), and since it hands
    # nothing downstream its fingerprint is left out of theirs (adding the gate or changing its
    # thresholds reruns the gate only). A pipeline without the gate in its stages ignores it.
    gate: bool = False
    description: str = ""

    def check(self, res: Result) -> None:
        """Raise ShapeError (naming this stage) unless ``res`` matches the declared shapes. Metrics are
        required of done items; skipped ones may leave them empty."""
        self.outputs.check(res.outputs, self.name)
        if res.status == "done" or res.metrics:
            self.metrics.check(res.metrics, self.name)

    def make_params(self, values: dict[str, Any] | None) -> Any:
        values = dict(values or {})
        names = {f.name for f in dataclasses.fields(self.params)}
        unknown = set(values) - names
        if unknown:
            raise ValueError(f"stage {self.name}: unknown parameter(s) {sorted(unknown)}; known: {sorted(names)}")
        try:
            return self.params(**values)
        except (TypeError, ValueError) as e:   # a Params' own check (__post_init__): say which stage
            raise ValueError(f"stage {self.name}: {e}") from e


def params_dict(params: Any) -> dict[str, Any]:
    return dataclasses.asdict(params)


EXEC = {"exec": True}   # field(metadata=EXEC): an execution-only setting (device, batch size, timeout, ...)


def result_params(params: Any) -> dict[str, Any]:
    """The parameters that can change a stage's results: all but those marked ``metadata=EXEC`` (where
    or how fast it runs), so moving a build to a GPU or another batch size does not redo finished work."""
    values = dataclasses.asdict(params)
    return {f.name: values[f.name] for f in dataclasses.fields(params) if not f.metadata.get("exec")}


def check_chunking(chunk_seconds: float, overlap_seconds: float) -> None:
    """For the stages that separate long songs in overlapping chunks: an overlap as long as the chunk
    would step one sample at a time (thousands of chunks, minutes, gigabytes), so refuse it at once."""
    if not 0 <= overlap_seconds < chunk_seconds:
        raise ValueError(f"overlap_seconds ({overlap_seconds}) must be >= 0 and less than "
                         f"chunk_seconds ({chunk_seconds})")
