"""Reading a build for its dataset card: every number from the stage manifests (newest record per video,
through the stages' typed ``Outputs``/``Metrics`` and payloads), the runner's own fingerprints, and the
packed LMDB (its index, ``__meta__`` and per-video markers). Nothing here draws or writes."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from chorushead.core.decisions import decisions as review_decisions, timeline_ranges
from chorushead.core.manifest import Record, iter_records
from chorushead.core.windows import EXP, JAW_OPEN, POSE, SPLITS, WindowReader, packed_videos, parse_window_key
from chorushead.runner import Pipeline, Plan, load_items
from chorushead.stages import assign, contiguity, crop, get_stage, ingest, pack, smooth, vad
from chorushead.stages.base import DEFAULT_FPS
from chorushead.status import collect as collect_status, dataset_notes


@dataclass
class FunnelRow:
    """One stage of the yield funnel: videos usable after it and the hours they hold."""
    stage: str
    videos: int                  # done or skipped (downstream stages accept both)
    done: int
    skipped: int
    failed: int
    pending: int                 # registered videos with no record for this stage
    hours: float
    reasons: dict[str, int] = field(default_factory=dict)   # "skipped: ..." / "failed: ..." -> videos


@dataclass
class SplitRow:
    split: str
    videos: list[str]
    windows: int
    hours: float                 # frames of the packed segments of its videos


@dataclass
class Card:
    out: Path
    pipeline: Pipeline
    pipeline_file: str
    summary: list[tuple[str, str]]           # Table 1 style rows
    funnel: list[FunnelRow]
    splits: list[SplitRow]
    split_violations: list[str]              # "video: in train, test"; empty = the check passes
    versions: dict[str, dict[str, int]]      # stage -> version -> videos
    fingerprints: dict[str, dict[str, str]]  # video -> stage -> fingerprint
    same_params: dict[str, tuple[int, int]]  # stage -> (records these parameters reproduce, records)
    lmdb: Path | None                        # None: pack has not written one
    meta: dict[str, Any] | None
    dists: dict[str, Any]                    # arrays/counters the plots draw
    notes: list[str]                         # what is missing, honestly
    # pack's duplicate groups (LMDB meta): {"members", "links": [{"a", "b", "by", "score"}], "splits"}
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)   # video -> origin (chorushead fetch)


@dataclass
class Build:
    """What the card reads once: the registered videos, the newest records, the LMDB."""
    out: Path
    pipeline: Pipeline
    items: dict
    latest: dict[str, dict[str, Record]]
    lmdb: Path | None
    meta: dict[str, Any] | None
    index: dict[str, list[str]]
    packed: dict[str, dict[str, Any]]        # video -> its LMDB marker summary
    notes: list[str]

    def ok(self, stage: str) -> dict[str, Record]:
        """Video -> its newest record of ``stage`` that downstream stages may use (done or skipped)."""
        return {v: r for v, r in self.latest.get(stage, {}).items() if r.ok and v in self.items}

    def fps(self, video: str) -> int:
        rec = self.ok("ingest").get(video)
        return ingest.Outputs.of(rec).fps if rec is not None else (self.pipeline.fps or DEFAULT_FPS)


def read_build(out: Path, pipeline: Pipeline) -> Build:
    out = Path(out)
    items = load_items(out)
    notes: list[str] = []
    lmdb: Path | None = out / pipeline.params.get("pack", {}).get("lmdb", pack.Params().lmdb)
    meta, index = None, {}
    if (lmdb / "data.mdb").exists():
        try:
            meta = WindowReader(lmdb, split=None).meta
            index = {s: WindowReader(lmdb, split=s).keys for s in SPLITS}
        except ValueError as e:   # an unfinished or foreign file: say so, show the manifests
            notes.append(f"{e}")
            lmdb, meta, index = None, None, {}
    else:
        lmdb = None
        notes.append("pack has not written an LMDB yet: no windows, splits or packed hours; "
                     "the sections below show what the manifests hold so far.")
    # What is packed is what the LMDB holds (its markers), as `chorushead status` reads it
    packed = {v: s for v, s in packed_videos(lmdb).items() if v in items} if lmdb else {}
    return Build(out=out, pipeline=pipeline, items=items, latest=iter_records(out, pipeline.stages), lmdb=lmdb,
                 meta=meta, index=index, packed=packed, notes=notes)


def collect(out: Path, pipeline: Pipeline, pipeline_file: str = "") -> Card:
    b = read_build(out, pipeline)
    stages = list(pipeline.stages)
    notes = b.notes + dataset_notes(collect_status(b.out, pipeline))
    duplicates = list(((b.meta or {}).get("summary") or {}).get("duplicates", []))
    splits, violations = _splits(b.index, b.packed, b.fps, [g["members"] for g in duplicates])
    versions = {s: dict(Counter(r.stage_version or "?" for v, r in b.latest.get(s, {}).items() if v in b.items))
                for s in stages}
    prints = {v: {s: b.latest[s][v].fingerprint for s in stages if v in b.latest.get(s, {})} for v in sorted(b.items)}
    dists = _distributions(b, notes)
    same = _same_params(b)
    if any(n < total for n, total in same.values()):
        notes.append("Some records were made with other parameters than the pipeline file's (Provenance says "
                     "which stages): the card shows the file's; pass the build's --pipeline/--set to report.")
    return Card(out=b.out, pipeline=pipeline, pipeline_file=pipeline_file, summary=_summary(b),
                funnel=_funnel(b), splits=splits, split_violations=violations, versions=versions,
                fingerprints=prints, same_params=same, lmdb=b.lmdb, meta=b.meta, dists=dists, notes=notes,
                duplicates=duplicates,
                sources={v: it.origin for v, it in sorted(b.items.items()) if it.origin})


def _summary(b: Build) -> list[tuple[str, str]]:
    """Table 1 of the paper, for this build."""
    ing = {v: ingest.Outputs.of(r) for v, r in b.ok("ingest").items()}
    cont = {v: contiguity.Outputs.of(r) for v, r in b.ok("contiguity").items()}
    crops = {v: crop.Outputs.of(r) for v, r in b.ok("crop").items()}
    n_windows = sum(len(k) for k in b.index.values())
    kept_s = sum(_frames(o.segments) / b.fps(v) for v, o in cont.items())
    packed_s = sum(int(o["frames"]) / b.fps(v) for v, o in b.packed.items())
    source_fps = _counts(Counter(f"{o.source_fps:g} fps" for o in ing.values()), "video")
    rows = [
        ("Videos registered", str(len(b.items))),
        ("Videos ingested", str(len(ing))),
        ("Hours ingested", f"{sum(o.duration for o in ing.values()) / 3600:.4f}"),
        ("Hours kept (contiguous segments)", f"{kept_s / 3600:.4f}"),
        ("Hours packed", f"{packed_s / 3600:.4f}" if b.lmdb else "not packed yet"),
        ("Segments (kept / packed)", f"{sum(len(o.segments) for o in cont.values())} / "
                                     f"{sum(int(o['segments']) for o in b.packed.values())}"),
        ("Windows", f"{n_windows} (" + ", ".join(f"{s} {len(b.index.get(s, []))}" for s in SPLITS) + ")"
         if b.lmdb else "not packed yet"),
        ("Singers per video", _counts(Counter(o.n_strips for o in crops.values()), "video") or "no crops yet"),
        ("Frame rate (pipeline)", f"{b.pipeline.fps} fps" + (f"; sources: {source_fps}" if ing else "")),
        ("Resolutions", _counts(Counter(f"{o.width}x{o.height}" for o in ing.values()), "video") or "nothing ingested"),
    ]
    if b.meta:
        m = b.meta
        rows += [("Window / stride", f"{m['window']} / {m['stride']} frames at {m['fps']} fps"),
                 ("Audio", f"{m['sr']} Hz"),
                 ("Fit", f"{m.get('fit_backend', '?')} ({', '.join(m.get('coeff_groups', []))})"),
                 ("Singers per window", ", ".join(map(str, m.get("singer_counts", []))))]
    return rows


def _same_params(b: Build) -> dict[str, tuple[int, int]]:
    """Per stage: of its ok records, how many carry the fingerprint these parameters give now (the
    runner's own computation, :meth:`runner.Plan.fingerprints`, over the recorded upstream records). All
    of them: the parameters the card shows are exactly the ones the data came from."""
    res = {}
    plan = Plan.of(b.pipeline)
    for name in b.pipeline.stages:
        needs = plan.needs(name)
        mine = b.ok(name)
        ready = {vid: {need: b.latest[need][vid] for need in needs} for vid in mine
                 if all(b.latest.get(need, {}).get(vid) is not None for need in needs)}
        now, _plans = plan.fingerprints(name, b.items, ready, b.out)
        res[name] = (sum(1 for v, r in mine.items() if v in now and r.fingerprint == now[v]), len(mine))
    return res


def _frames(segments: list[list[int]]) -> int:
    return int(sum(b - a for a, b in segments))


def _counts(c: Counter, unit: str) -> str:
    return ", ".join(f"{k} ({n} {unit}{'s' if n != 1 else ''})" for k, n in sorted(c.items(), key=str))


# The stages that cut a video's footage, and the seconds it keeps after each; every other item stage
# carries its input's. A global stage (pack) keeps what the LMDB holds of the video.
KEPT_SECONDS: dict[str, Callable[[Record, int], float]] = {
    "ingest": lambda r, fps: ingest.Outputs.of(r).duration,
    "vad": lambda r, fps: vad.Outputs.of(r).end_s - vad.Outputs.of(r).start_s,           # the silence trimmed
    "crop": lambda r, fps: crop.Outputs.of(r).frames / fps,                              # a short decode
    "contiguity": lambda r, fps: _frames(contiguity.Outputs.of(r).segments) / fps,       # runs with every face
}


def _funnel(b: Build) -> list[FunnelRow]:
    """Videos and hours after every stage (see :data:`KEPT_SECONDS`)."""
    seconds: dict[str, float] = {}
    rows = []
    screened: set[str] = set()   # videos a gate (the screen) rejected: the stages after it are not pending
    for s in b.pipeline.stages:
        recs = {v: r for v, r in b.latest.get(s, {}).items() if v in b.items}
        good = [v for v, r in recs.items() if r.ok]
        if get_stage(s).kind == "global":   # what the LMDB holds (stale windows included: they are in the dataset)
            good = [v for v in b.items if v in b.packed]
            seconds = {v: int(b.packed[v]["frames"]) / b.fps(v) for v in good}
        elif s in KEPT_SECONDS:
            seconds = {v: KEPT_SECONDS[s](recs[v], b.fps(v)) for v in good}
        if get_stage(s).gate:   # a gate's skipped videos stop there (the screen rejected them): not usable after it
            screened |= {v for v, r in recs.items() if r.status == "skipped"}
            good = [v for v in good if v not in screened]
        st = Counter(r.status for r in recs.values())
        rows.append(FunnelRow(stage=s, videos=len(good), done=st["done"], skipped=st["skipped"], failed=st["failed"],
                              pending=len(set(b.items) - set(recs) - screened), hours=sum(seconds.get(v, 0.0) for v in good) / 3600,
                              reasons=_reasons(recs.values())))
    return rows


def _reasons(recs) -> dict[str, int]:
    """Why videos were skipped or failed: one line each, most common first."""
    reasons: Counter = Counter()
    for r in recs:
        if r.status == "skipped":
            reasons[f"skipped: {r.reason or 'no reason given'}"] += 1
        elif r.status == "failed":
            reasons[f"failed: {r.failure_line(limit=200)}"] += 1
    return dict(reasons.most_common())


def _splits(index: dict[str, list[str]], packed: dict, fps: Callable[[str], int],
            groups: list[list[str]] | None = None) -> tuple[list[SplitRow], list[str]]:
    """Per split from the LMDB index: its videos and windows; hours from the packed segments. A video
    whose windows sit in two splits would leak a song between training and test; so would a group of
    duplicates (``groups``: the same song in several videos, pack's meta) whose members sit in two."""
    where: dict[str, set[str]] = {}
    rows = []
    for s in SPLITS:
        keys = index.get(s, [])
        vids = sorted({parse_window_key(k)[0] for k in keys})
        for v in vids:
            where.setdefault(v, set()).add(s)
        hours = sum(int(packed[v]["frames"]) / fps(v) for v in vids if v in packed) / 3600
        rows.append(SplitRow(split=s, videos=vids, windows=len(keys), hours=hours))
    violations = [f"{v}: windows in {', '.join(s for s in SPLITS if s in ss)}" for v, ss in sorted(where.items())
                  if len(ss) > 1]
    violations += [f"{v}: its marker says {packed[v]['split']}, the LMDB index holds it in {next(iter(ss))}"
                   for v, ss in sorted(where.items()) if len(ss) == 1 and v in packed and packed[v]["split"] not in ss]
    for members in groups or []:
        held = {v: where[v] for v in members if v in where}
        if len(set().union(*held.values()) if held else set()) > 1:
            violations.append("duplicates " + ", ".join(members) + " (one song): "
                              + ", ".join(f"{v} in {'/'.join(s for s in SPLITS if s in ss)}" for v, ss in held.items()))
    return rows, violations


def _distributions(b: Build, notes: list[str]) -> dict[str, Any]:
    cont = {v: contiguity.Outputs.of(r) for v, r in b.ok("contiguity").items()}
    d: dict[str, Any] = {}
    d["segment_seconds"] = np.array([(e - a) / b.fps(v) for v, o in cont.items() for a, e in o.segments], float)
    d["kept_minutes"] = np.array([_frames(o.segments) / b.fps(v) / 60 for v, o in cont.items()], float)
    d["jaw"], d["pose"], d["expression"] = _motion(b)
    d["expression_names"] = _expression_names(b)
    if not d["jaw"]:
        notes.append("no smoothed segments yet: jaw and head-pose distributions are empty")
    d["detection"] = _detection(b)
    d["face_fraction"] = {v: [n / max(1, crop.Metrics.of(r).frames) for n in crop.Metrics.of(r).faces_per_strip]
                          for v, r in b.ok("crop").items() if r.status == "done"}
    d["assign"] = np.array([assign.Outputs.of(r).confidence for r in b.ok("assign").values()], float)
    d["assign_low"] = sum(assign.Outputs.of(r).low_confidence for r in b.ok("assign").values())
    # decisions belong to frames: applied to the segments as they are now (core/decisions.py)
    vads = b.ok("vad")
    decided = review_decisions(b.out, {v: timeline_ranges(vad.Outputs.of(vads[v]).start_frame, o.segments)
                                       for v, o in cont.items() if v in vads})
    review = Counter(decided.get((v, i), "unreviewed") for v, o in cont.items() for i in range(len(o.segments)))
    d["review"] = {k: review.get(k, 0) for k in ("accept", "reject", "unreviewed")}
    return d


def _motion(b: Build) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Jaw opening (degrees), head pitch/yaw/roll (degrees) and the expression coefficients (T, 50) per
    singer position (strip k, left to right) over every smoothed segment."""
    from scipy.spatial.transform import Rotation
    jaw: dict[int, list[np.ndarray]] = {}
    pose: dict[int, list[np.ndarray]] = {}
    exp: dict[int, list[np.ndarray]] = {}
    for r in b.ok("smooth").values():
        for seg in smooth.Outputs.of(r).load(b.out):
            c = seg.coeffs                                   # (S, T, 56)
            for k in range(c.shape[0]):
                jaw.setdefault(k, []).append(np.degrees(c[k, :, JAW_OPEN]))
                # FLAME's global pose is an axis-angle; as x/y/z Euler angles: pitch, yaw, roll
                pose.setdefault(k, []).append(Rotation.from_rotvec(c[k, :, POSE].astype(np.float64))
                                              .as_euler("xyz", degrees=True))
                exp.setdefault(k, []).append(c[k, :, EXP])
    join = lambda d: {k: np.concatenate(a) for k, a in sorted(d.items())}  # noqa: E731
    return join(jaw), join(pose), join(exp)


def _expression_names(b: Build) -> list[str]:
    """What the expression coefficients are: the open head's named actions when every fit is the
    landmark fit's, else FLAME's unnamed directions."""
    from chorushead.core.openhead import EXP_NAMES
    backends = {r.outputs.get("backend") for r in b.ok("fit").values()}
    return list(EXP_NAMES) if backends == {"landmarks"} else [f"FLAME exp {i}" for i in range(len(EXP_NAMES))]


def _detection(b: Build) -> dict[int, np.ndarray]:
    """MTCNN's probabilities per strip, on the frames its full pyramid ran on (its own outputs only)."""
    probs: dict[int, list[np.ndarray]] = {}
    for v, r in b.ok("crop").items():
        det = crop.Outputs.of(r).load(b.out)
        p, found = det.probs, det.detected if det.detected is not None else np.ones(det.probs.shape, bool)
        for k in range(p.shape[0]):
            probs.setdefault(k, []).append(p[k][found[k] & (p[k] > 0)])
    return {k: np.concatenate(a) for k, a in sorted(probs.items())}
