"""pack: cut every kept segment into 5 s windows (0.5 s stride) and write them to one LMDB.

Global stage (it sees all videos, because the train/val/test split is by video so no song lands in two
splits): :func:`plan` says per video which split and segments it gets (the runner folds that into the
video's fingerprint), :func:`process_all` writes them and returns one result per video with news.

This module decides what goes in (which videos, which windows, what the meta's summary says);
:class:`chorushead.core.windows.WindowWriter` owns the file: one writer, on local disk, each video
written as (its old windows out, its new windows, a ``__done__`` marker holding the fingerprint the
runner gave it) in one transaction, the index last, a new file published under its name once its first
video is complete. A rerun trusts only videos whose marker fingerprint matches and rewrites the others,
so an interrupted pack resumes to exactly the content of an uninterrupted one. Window and stride are
given in seconds and turned into frames at the pipeline's fps. The format is documented in
:mod:`chorushead.core.windows`.
"""
from __future__ import annotations

import dataclasses
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from chorushead.core import media
from chorushead.core.decisions import decisions as review_decisions, timeline_ranges
from chorushead.core.errors import StageError
from chorushead.core.manifest import Record
from chorushead.core.shapes import Metrics as MetricsShape, Outputs as OutputsShape
from chorushead.core.payloads import FitSegment
from chorushead.core.windows import POSE, WindowWriter, encode_arrays, window_key
from chorushead.stages import assign, contiguity, fingerprint, fit, smooth, vad
from chorushead.stages.base import EXEC, GlobalContext, Result, Stage
from chorushead.stages.selection import assign_splits, kept_segments

VERSION = "3"   # 2: windows carry each singer's identity (``shape``); 3: markers carry their video's summary
NEEDS = ("vad", "contiguity", "fit", "smooth", "assign")


@dataclass
class Params:
    window_seconds: float = 5.0    # paper §5.1: 5 s windows ...
    stride_seconds: float = 0.5    # ... every 0.5 s
    split: list[float] = field(default_factory=lambda: [0.6, 0.1, 0.3])
    seed: int = 0
    sr: int = 16000
    include_unreviewed: bool = True
    lmdb: str = "windows.lmdb"
    map_size_gb: int = 1024        # sparse on Linux; only what is written takes disk
    # Duplicates (the fingerprint stage's records; see the pipeline file for the reasons of the values).
    # They act only through plan(): a video's split and group are in its plan, which the runner folds
    # into its fingerprint, so they are left out of the parameters' part (base.EXEC) and a build whose
    # groups do not change repacks nothing.
    dup_audio_max_ber: float = field(default=0.2, metadata=EXEC)
    dup_frames_max_hamming: float = field(default=8.0, metadata=EXEC)
    dup_min_overlap_s: float = field(default=5.0, metadata=EXEC)
    dup_max_offset_s: float = field(default=30.0, metadata=EXEC)

    def __post_init__(self):
        # Checked when the pipeline loads: fractions that do not sum to 1 would leave videos without a
        # split (or none in test), and percentages would put every video in train.
        s = self.split
        if (not isinstance(s, (list, tuple)) or len(s) != 3 or any(not isinstance(f, (int, float)) or f < 0 for f in s)
                or abs(sum(s) - 1) > 1e-6):
            raise ValueError(f"pack.split must be three fractions (train, val, test) ≥ 0 that sum to 1, "
                             f"e.g. [0.6, 0.1, 0.3]; got {s!r}")
        if self.window_seconds <= 0 or self.stride_seconds <= 0:
            raise ValueError(f"pack.window_seconds and pack.stride_seconds must be > 0, got "
                             f"{self.window_seconds} and {self.stride_seconds}")


@dataclass
class Outputs(OutputsShape):
    lmdb: str                      # relative to the build root
    split: str                     # train | val | test
    windows: int
    segments_packed: list[int]     # contiguity segment indices
    group: list[str] | None = None  # the duplicates this video shares its split with (itself included)


@dataclass
class Metrics(MetricsShape):
    windows: int
    segments_packed: int
    segments_rejected: int
    reused: bool                   # the LMDB already held this video's windows


@dataclass(frozen=True)
class Geometry:
    """Windows in frames and samples at the build's fps."""
    fps: int
    sr: int
    window: int
    stride: int

    @classmethod
    def of(cls, p: Params, fps: int) -> "Geometry":
        # to the nearest frame, halves up (0.5 s at 25 fps: 13 frames)
        window, stride = math.floor(p.window_seconds * fps + 0.5), math.floor(p.stride_seconds * fps + 0.5)
        if window < 1 or stride < 1:
            raise StageError(f"pack: window_seconds={p.window_seconds}, stride_seconds={p.stride_seconds} "
                             f"give {window}/{stride} frames at {fps} fps; both must be at least one frame")
        return cls(fps=fps, sr=p.sr, window=window, stride=stride)

    @property
    def n_audio(self) -> int:
        return int(round(self.window * self.sr / self.fps))


def fit_meta(fits: list[fit.Outputs]) -> dict[str, Any]:
    """``fit_backend`` and ``coeff_groups`` for the LMDB meta; one backend per build."""
    backends = sorted({f.backend for f in fits})
    if len(backends) > 1:
        raise StageError(f"pack: fit records disagree on the backend ({', '.join(backends)}); "
                         f"rerun fit with one backend for every video")
    groups = sorted({tuple(f.coeff_groups) for f in fits})
    if len(groups) > 1:
        raise StageError(f"pack: fit records disagree on the coefficient groups ({groups}); rerun fit")
    return {"fit_backend": backends[0] if backends else "emoca",
            "coeff_groups": list(groups[0]) if groups else list(fit.COEFF_GROUPS)}


def duplicates(out: Path, videos: list[str], p: Params) -> list[dict[str, Any]]:
    """Groups of duplicate videos among ``videos`` (:func:`fingerprint.duplicate_groups`), from each
    one's newest fingerprint record that is ok and made from its current ingest record; a video without
    one is in no group (the build reports its fingerprint stage as failed or not run)."""
    from chorushead.core.manifest import iter_records
    latest = iter_records(Path(out), ["ingest", fingerprint.STAGE.name])
    prints = {}
    for v in videos:
        rec, ing = latest["fingerprint"].get(v), latest["ingest"].get(v)
        if rec is None or not rec.ok or ing is None or not ing.ok \
                or fingerprint.Outputs.of(rec).ingest_fingerprint != ing.fingerprint:
            continue
        prints[v] = fingerprint.load(out, rec)
    t = fingerprint.Thresholds(audio_max_ber=p.dup_audio_max_ber, frames_max_hamming=p.dup_frames_max_hamming,
                               min_overlap_s=p.dup_min_overlap_s, max_offset_s=p.dup_max_offset_s)
    return fingerprint.duplicate_groups(prints, t)


def plan(ctx: GlobalContext, p: Params) -> dict[str, Any]:
    """Per video: its split, the segments the review lets through, and its duplicate group if any (all
    of whose members share the split: no song in two splits)."""
    # Over every registered video, ready or not, so one video failing upstream moves no other's split.
    videos = sorted(set(ctx.items) | set(ctx.upstream))
    groups = duplicates(ctx.out, videos, p)
    splits = assign_splits(videos, p.split, p.seed, [g["members"] for g in groups])
    group_of = {v: g for g in groups for v in g["members"]}
    # A decision stands only for the frames it was made on (segments move when vad/crop/contiguity redo).
    ranges = {vid: timeline_ranges(vad.Outputs.of(recs["vad"]).start_frame,
                                   contiguity.Outputs.of(recs["contiguity"]).segments)
              for vid, recs in ctx.upstream.items()}
    decisions = review_decisions(ctx.out, ranges)
    plans = {vid: {"split": splits[vid],
                   "segments": kept_segments(decisions, vid, len(contiguity.Outputs.of(recs["contiguity"]).segments),
                                             p.include_unreviewed)}
             for vid, recs in ctx.upstream.items()}
    for vid, pl in plans.items():   # only duplicates get the key: every other video's fingerprint stays
        if vid in group_of:
            pl["group"] = group_of[vid]
    return plans


def plan_groups(plans: dict[str, Any]) -> list[dict[str, Any]]:
    """The duplicate groups the plans hold, once each, with each member's split (for the meta)."""
    seen: dict[str, dict[str, Any]] = {}
    for vid, pl in sorted(plans.items()):
        if "group" in pl:
            g = seen.setdefault(pl["group"]["members"][0], {**pl["group"], "splits": {}})
            g["splits"][vid] = pl["split"]
    return list(seen.values())


def segment_identity(fitted: FitSegment) -> np.ndarray | None:
    """Each singer's identity over one segment: the per-dimension median over frames of EMOCA's shape
    code (S, 100) float32 (the median, so a few badly fitted frames, a blink or a turned head, do not
    move it), or None when the fit gave no ``shape`` (the landmarks backend)."""
    if fitted.shape is None:
        return None
    return np.median(fitted.shape, axis=1).astype(np.float32)


def video_windows(out: Path, video: str, recs: dict[str, Record], g: Geometry, split: str,
                  keep: set[int]) -> Iterator[tuple[int, list[tuple[bytes, bytes]]]]:
    """Yield (segment index, [(key, value bytes), ...]) for one video."""
    trim = vad.Outputs.of(recs["vad"])
    order = assign.Outputs.of(recs["assign"]).order
    tracks = [media.read_wav(out / trim.singers_16k[j]) for j in order] + [media.read_wav(out / trim.bgm_16k)]
    if any(sr != g.sr for _, sr in tracks):
        raise StageError(f"pack: {video}: vad's tracks are at {sorted({sr for _, sr in tracks})} Hz but pack.sr is "
                         f"{g.sr}; set them equal (vad.sr / pack.sr) and rerun")
    singers, bgm = [a for a, _ in tracks[:-1]], tracks[-1][0]
    segments = contiguity.Outputs.of(recs["contiguity"]).segments
    fitted = fit.Outputs.of(recs["fit"])                   # the raw fits: smooth keeps only coefficients
    smoothed = smooth.Outputs.of(recs["smooth"])
    for i, (a, b) in enumerate(segments[:len(smoothed.segments)]):
        if i not in keep:
            continue
        coeffs = smoothed.load_segment(out, i, b - a).coeffs.astype(np.float32)   # (S, b - a, 56)
        identity = segment_identity(fitted.load_segment(out, i))      # (S, 100) in strip order, like coeffs
        if identity is not None and identity.shape[0] != coeffs.shape[0]:
            raise StageError(f"pack: {video} segment {i}: the fit has {identity.shape[0]} singers' shape codes "
                             f"but smooth has {coeffs.shape[0]}; rerun fit and smooth")
        entries = []
        for s in range(a, b - g.window + 1, g.stride):
            c = coeffs[:, s - a:s - a + g.window]
            s0 = int(round(s * g.sr / g.fps))
            vox = np.stack([_take(x, s0, g.n_audio) for x in singers])
            arrays = {"coeffs": c, "vocals": vox.astype(np.float16),
                      "bgm": _take(bgm, s0, g.n_audio).astype(np.float16), "pose0": c[:, 0, POSE].copy()}
            if identity is not None:
                arrays["shape"] = identity
            header = {"video": video, "segment": i, "start": s, "split": split}
            entries.append((window_key(video, i, s), encode_arrays(arrays, header)))
        yield i, entries


def _take(x: np.ndarray, start: int, n: int) -> np.ndarray:
    seg = x[start:start + n]
    return np.pad(seg, (0, n - len(seg))) if len(seg) < n else seg


def _disk_full(path: Path, e: BaseException) -> bool:
    """Whether a failed LMDB write means "no space": LMDB reports a full map as MapFullError, but a full
    disk at commit often as a plain I/O error, so the free space is asked too."""
    import lmdb
    if isinstance(e, (lmdb.MapFullError, lmdb.DiskError)) or getattr(e, "errno", None) == 28 \
            or "No space left" in str(e):
        return True
    try:
        return shutil.disk_usage(path if path.exists() else path.parent).free < (64 << 20)
    except OSError:
        return False


def _write_failure(path: Path, what: str, e: BaseException) -> Result:
    """A failed LMDB write (disk full, map full, I/O error) as one line: what, where, what to do."""
    full = _disk_full(path, e)
    why = "no space left on the device" if full else f"{type(e).__name__}: {' '.join(str(e).split())}"
    todo = "free disk space (or raise pack.map_size_gb) and rerun" if full else "rerun"
    return Result(status="failed", error_class="DiskFull" if full else type(e).__name__,
                  reason=f"pack: could not write {what} to {path}: {why}; {todo} (the windows packed before stay)")


def process_all(ctx: GlobalContext, p: Params, plans: dict[str, Any]) -> dict[str, Result]:
    """Bring the LMDB in line with the ready videos, changing only what must change:

    - a ready video whose marker has another fingerprint is repacked, its old windows replaced in the
      same transaction as the new ones are written (a failure keeps the old ones);
    - a video no longer registered in the build (``chorushead remove``) leaves the LMDB;
    - a registered video that is not ready (an upstream stage failed, is stale or was not run) keeps
      its windows: status and the dataset card show it as stale. Only when the file's geometry or fit
      meta changes (its old windows would not fit beside the new ones) are they removed;
    - when nothing changes, nothing is written (``data.mdb`` stays byte-identical).
    Every write moves the meta's ``generation`` on, so a reader can tell it was repacked
    (:class:`chorushead.core.windows.WindowWriter` does the writing).
    """
    g = Geometry.of(p, ctx.fps)
    db = WindowWriter(Path(ctx.out) / p.lmdb, p.map_size_gb << 30)
    try:
        return _update(ctx, p, plans, g, db)
    finally:
        db.close()


@dataclass
class Changes:
    """What a pack must do to the file: ``todo`` videos to (re)pack, ``drop`` videos to remove; ``kept``
    the markers of the videos that stay as they are; ``extra`` the fit meta the file will carry."""
    todo: list[str]
    drop: list[str]
    kept: dict[str, dict[str, Any]]
    extra: dict[str, Any]
    needed: bool                   # False: the file already says exactly this


def changes(ctx: GlobalContext, g: Geometry, markers: dict[str, dict[str, Any]], old_meta: dict[str, Any],
            groups: list[dict[str, Any]] | None = None) -> Changes:
    extra = (fit_meta([fit.Outputs.of(recs["fit"]) for recs in ctx.upstream.values()]) if ctx.upstream
             else {k: old_meta[k] for k in ("fit_backend", "coeff_groups") if k in old_meta})
    shape = {"fps": g.fps, "sr": g.sr, "window": g.window, "stride": g.stride, **extra}
    same_shape = all(old_meta.get(k) == v for k, v in shape.items())
    registered = set(ctx.items) | set(ctx.upstream)
    drop = sorted(v for v in markers if v not in registered or (not same_shape and v not in ctx.upstream))
    todo = [v for v in ctx.upstream if markers.get(v, {}).get("fingerprint") != ctx.fingerprints[v]]
    kept = {v: m for v, m in markers.items() if v not in drop}
    summary_now = old_meta.get("summary", {}).get("videos")
    needed = bool(drop or todo or not old_meta or not same_shape
                  or summary_now != {v: m["summary"] for v, m in sorted(kept.items())}
                  or old_meta.get("summary", {}).get("duplicates", []) != (groups or []))
    return Changes(todo=todo, drop=drop, kept=kept, extra=extra, needed=needed)


def _update(ctx: GlobalContext, p: Params, plans: dict[str, Any], g: Geometry, db: WindowWriter) -> dict[str, Result]:
    from tqdm.auto import tqdm
    import lmdb

    groups = plan_groups(plans)
    ch = changes(ctx, g, db.markers, db.meta, groups)
    if not ch.needed:
        return _unchanged_results(ctx, p, plans, db.markers)     # nothing to write: the file stays as it is
    try:   # first: the generation moves on before any window does
        db.begin_change(fps=g.fps, sr=g.sr, window=g.window, stride=g.stride, extra=ch.extra, drop=ch.drop)
    except (lmdb.Error, OSError) as e:   # nothing changed: every video to pack gets the one-line failure
        return {vid: _write_failure(db.final, "the meta", e) for vid in ch.todo}
    results: dict[str, Result] = {}
    bar = tqdm(total=len(ch.todo), desc="      pack", unit="video", disable=not ctx.progress or not ch.todo)
    for vid in ch.todo:
        results[vid] = _pack_video(ctx, p, plans[vid], g, db, vid, ch.kept)
        bar.update(1)
    bar.close()
    if db.pending and not ch.kept:   # a first pack with nothing packed (none ready, or all failed): no LMDB
        db.discard()
        return results
    try:
        db.finish({"summary": pack_summary({v: m["summary"] for v, m in ch.kept.items()}, ctx.upstream, p, groups)})
    except (lmdb.Error, OSError) as e:
        # the windows are in but the index is the old one: this run's videos fail (one line each); the
        # next pack sees the summary disagree with the markers and writes the index again
        for vid, res in list(results.items()):
            if res.status != "failed":
                results[vid] = _write_failure(db.final, "the index", e)
        return results
    for vid, res in _unchanged_results(ctx, p, plans, ch.kept).items():
        results.setdefault(vid, res)
    return results


def _pack_video(ctx: GlobalContext, p: Params, plan: dict[str, Any], g: Geometry, db: WindowWriter, vid: str,
                kept: dict[str, dict[str, Any]]) -> Result:
    """Cut and write one video's windows; on success its marker joins ``kept``. One bad video never
    stops the others: a failure keeps the windows it had until a good repack."""
    import lmdb
    recs, t0 = ctx.upstream[vid], time.time()
    fp, split, keep = ctx.fingerprints[vid], plan["split"], set(plan["segments"])
    try:
        entries = [e for _seg, es in video_windows(Path(ctx.out), vid, recs, g, split, keep) for e in es]
    except (StageError, OSError, ValueError, KeyError) as e:
        return Result(status="failed", error_class=type(e).__name__, reason=" ".join(str(e).split()),
                      seconds=round(time.time() - t0, 3))
    marker = {"fingerprint": fp, "windows": len(entries),
              "summary": video_summary(recs, split, sorted(keep), len(entries), fp)}
    try:
        db.put_video(vid, entries, marker)
    except (lmdb.Error, OSError) as e:
        return _write_failure(db.final, f"{vid}'s windows", e)
    kept[vid] = marker
    return _packed_result(p, recs, marker, keep, reused=False, seconds=round(time.time() - t0, 3),
                          group=plan.get("group"))


def _packed_result(p: Params, recs: dict[str, Record], marker: dict[str, Any], keep: set[int], reused: bool,
                   seconds: float, group: dict[str, Any] | None = None) -> Result:
    n_seg = len(contiguity.Outputs.of(recs["contiguity"]).segments)
    return Result(outputs=Outputs(lmdb=p.lmdb, split=marker["summary"]["split"], windows=marker["windows"],
                                  segments_packed=sorted(keep), group=group["members"] if group else None),
                  metrics=Metrics(windows=marker["windows"], segments_packed=len(keep),
                                  segments_rejected=n_seg - len(keep), reused=reused), seconds=seconds)


def _unchanged_results(ctx: GlobalContext, p: Params, plans: dict[str, Any], markers: dict[str, dict[str, Any]]) -> dict[str, Result]:
    """Results for ready videos the LMDB already holds as they are now, where the manifest does not say
    so yet (e.g. its last record is a failure, or from another fingerprint)."""
    res = {}
    for vid, recs in ctx.upstream.items():
        m, prev = markers.get(vid), ctx.previous.get(vid)
        if m is None or m["fingerprint"] != ctx.fingerprints[vid]:
            continue
        if prev is not None and prev.ok and prev.fingerprint == ctx.fingerprints[vid]:
            continue    # nothing new to say about this video
        res[vid] = _packed_result(p, recs, m, set(plans[vid]["segments"]), reused=True, seconds=0.0,
                                  group=plans[vid].get("group"))
    return res


def video_summary(recs: dict[str, Record], split: str, keep: list[int], n_windows: int, fp: str) -> dict[str, Any]:
    """What the meta's summary says of one packed video: its split, windows, kept segments and frames."""
    segments = contiguity.Outputs.of(recs["contiguity"]).segments
    return {"split": split, "windows": n_windows, "segments": len(keep),
            "frames": int(sum(segments[i][1] - segments[i][0] for i in keep)), "fingerprint": fp}


def pack_summary(packed: dict[str, dict[str, Any]], upstream: dict[str, dict[str, Record]], p: Params,
                 groups: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """``__meta__["summary"]``: per video what was packed, the upstream stage versions and pack's
    parameters, so a copied LMDB still says what it holds and where it came from (the dataset card
    reads it); ``duplicates`` (only when there are some): the groups of :func:`plan_groups`."""
    versions: dict[str, list[str]] = {}
    for recs in upstream.values():
        for stage, r in recs.items():
            versions.setdefault(stage, [])
            if r.stage_version not in versions[stage]:
                versions[stage].append(r.stage_version)
    return {"videos": dict(sorted(packed.items())), "pack_version": VERSION,
            "stage_versions": {k: sorted(v) for k, v in sorted(versions.items())},
            "pack_params": {k: v for k, v in dataclasses.asdict(p).items() if k != "map_size_gb"},
            **({"duplicates": groups} if groups else {})}


STAGE = Stage(name="pack", version=VERSION, params=Params, outputs=Outputs, metrics=Metrics, kind="global",
              plan=plan, process_all=process_all, needs=NEEDS, plan_reads=(fingerprint.STAGE.name,),
              description="5 s windows, 0.5 s stride, split by video, one LMDB writer")
