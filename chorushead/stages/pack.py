"""pack: cut every kept segment into 5 s windows (0.5 s stride) and write them to one LMDB.

Global stage (it sees all videos, because the train/val/test split is by video so no song lands in two
splits): :func:`plan` says per video which split and segments it gets (the runner folds that into the
video's fingerprint), :func:`process_all` writes them and returns one result per video with news.

One writer, on local disk. Crash safety without a second copy of the data: each video is written as
(delete its old windows) → (its windows, one transaction per segment) → (a ``__done__`` marker holding
the fingerprint the runner gave it). A rerun trusts only videos whose marker fingerprint matches,
rewrites the others from scratch, and rebuilds the index last, so an interrupted pack resumes to
exactly the content of an uninterrupted one. A new LMDB is written under a temporary name and renamed
once its first video is complete, so ``windows.lmdb`` exists only once pack has put something in it.
Window and stride are given in seconds and turned into frames at the pipeline's fps.
The format is documented in :mod:`chorushead.core.windows`.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
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
from chorushead.core.windows import (DONE_PREFIX, META_KEY, POSE, WINDOW_PREFIX, bump_generation, encode_arrays,
                                     open_env, rebuild_index, window_key, write_meta)
from chorushead.stages import assign, contiguity, fit, smooth, vad
from chorushead.stages.base import GlobalContext, Result, Stage
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


@dataclass
class Outputs(OutputsShape):
    lmdb: str                      # relative to the build root
    split: str                     # train | val | test
    windows: int
    segments_packed: list[int]     # contiguity segment indices


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


def plan(ctx: GlobalContext, p: Params) -> dict[str, Any]:
    """Per video: its split and the segments the review lets through."""
    # Over every registered video, ready or not, so one video failing upstream moves no other's split.
    splits = assign_splits(sorted(set(ctx.items) | set(ctx.upstream)), p.split, p.seed)
    # A decision stands only for the frames it was made on (segments move when vad/crop/contiguity redo).
    ranges = {vid: timeline_ranges(vad.Outputs.of(recs["vad"]).start_frame,
                                   contiguity.Outputs.of(recs["contiguity"]).segments)
              for vid, recs in ctx.upstream.items()}
    decisions = review_decisions(ctx.out, ranges)
    return {vid: {"split": splits[vid],
                  "segments": kept_segments(decisions, vid, len(contiguity.Outputs.of(recs["contiguity"]).segments),
                                            p.include_unreviewed)}
            for vid, recs in ctx.upstream.items()}


def segment_identity(fit_npz: Path) -> np.ndarray | None:
    """Each singer's identity over one segment: the per-dimension median over frames of EMOCA's shape
    code (S, 100) float32 (the median, so a few badly fitted frames, a blink or a turned head, do not
    move it), or None when the fit wrote no ``shape`` (the landmarks backend)."""
    if not fit_npz.is_file():
        raise StageError(f"pack: the fit output {fit_npz} is missing; rerun fit")
    with np.load(fit_npz) as z:
        if "shape" not in z.files:
            return None
        shape = z["shape"]                                              # (S, T, 100)
    if shape.ndim != 3 or shape.shape[1] == 0:
        raise StageError(f"pack: {fit_npz} has a shape array of shape {shape.shape}, expected (S, T, 100); rerun fit")
    return np.median(shape, axis=1).astype(np.float32)


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
    fitted = fit.Outputs.of(recs["fit"]).segments          # the raw fits: smooth keeps only coefficients
    for i, ((a, b), rel) in enumerate(zip(segments, smooth.Outputs.of(recs["smooth"]).segments)):
        if i not in keep:
            continue
        coeffs = np.load(out / rel)["coeffs"].astype(np.float32)      # (S, b - a, 56)
        identity = segment_identity(out / fitted[i])                  # (S, 100) in strip order, like coeffs
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


def _delete_prefix(txn, prefix: bytes) -> int:
    cur, n = txn.cursor(), 0
    if cur.set_range(prefix):
        while bytes(cur.key()).startswith(prefix):
            if not cur.delete():
                break
            n += 1
    return n


def _markers(txn) -> dict[str, dict[str, Any]]:
    """Video -> its ``__done__`` marker: the fingerprint it was packed with, its windows and summary."""
    res, cur = {}, txn.cursor()
    if cur.set_range(DONE_PREFIX):
        for k, v in cur:
            k = bytes(k)
            if not k.startswith(DONE_PREFIX):
                break
            res[k[len(DONE_PREFIX):].decode()] = json.loads(bytes(v))
    return res


class _Lmdb:
    """The writable LMDB. A new one is built at a temporary name and renamed by :meth:`publish` (after
    its first complete video), so a half-born file never sits at the final path."""

    def __init__(self, final: Path, map_size: int):
        self.final, self.map_size = final, map_size
        self.tmp = final.with_name(f".{final.name}.tmp")
        self.pending = not final.exists()
        if self.pending:
            shutil.rmtree(self.tmp, ignore_errors=True)   # a first pack killed before its first video
        self.env = open_env(self.tmp if self.pending else final, write=True, map_size=map_size)

    def publish(self) -> None:
        if self.pending:
            self.env.sync(True)
            self.env.close()
            os.replace(self.tmp, self.final)
            self.env = open_env(self.final, write=True, map_size=self.map_size)
            self.pending = False


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
    Every write moves the meta's ``generation`` on, so a reader can tell it was repacked.
    """
    from tqdm.auto import tqdm
    import lmdb

    out = Path(ctx.out)
    g = Geometry.of(p, ctx.fps)
    path = out / p.lmdb
    results: dict[str, Result] = {}
    db = _Lmdb(path, p.map_size_gb << 30)
    try:
        with db.env.begin() as txn:
            markers = _markers(txn)
            raw = txn.get(META_KEY)
        old_meta = json.loads(bytes(raw)) if raw is not None else {}
        extra = (fit_meta([fit.Outputs.of(recs["fit"]) for recs in ctx.upstream.values()]) if ctx.upstream
                 else {k: old_meta[k] for k in ("fit_backend", "coeff_groups") if k in old_meta})
        shape = {"fps": g.fps, "sr": g.sr, "window": g.window, "stride": g.stride, **extra}
        same_shape = all(old_meta.get(k) == v for k, v in shape.items())
        registered = set(ctx.items) | set(ctx.upstream)
        drop = sorted(v for v in markers if v not in registered or (not same_shape and v not in ctx.upstream))
        todo = [v for v in ctx.upstream if markers.get(v, {}).get("fingerprint") != ctx.fingerprints[v]]
        kept = {v: m for v, m in markers.items() if v not in drop}
        summary_now = old_meta.get("summary", {}).get("videos")
        if not drop and not todo and old_meta and same_shape and \
                summary_now == {v: m["summary"] for v, m in sorted(kept.items())}:
            return _unchanged_results(ctx, p, plans, markers)     # nothing to write: the file stays as it is

        def meta_txn(txn) -> None:
            write_meta(txn, fps=g.fps, sr=g.sr, window=g.window, stride=g.stride, extra=extra)

        try:
            with db.env.begin(write=True) as txn:    # first: the generation moves on before any window does
                meta_txn(txn)
                for v in drop:
                    _delete_prefix(txn, WINDOW_PREFIX + f"{v}/".encode())
                    txn.delete(DONE_PREFIX + v.encode())
        except (lmdb.Error, OSError) as e:   # nothing changed: every video to pack gets the one-line failure
            return {vid: _write_failure(path, "the meta", e) for vid in todo}
        bar = tqdm(total=len(todo), desc="      pack", unit="video", disable=not ctx.progress or not todo)
        for vid in todo:
            recs, t0 = ctx.upstream[vid], time.time()
            fp, split, keep = ctx.fingerprints[vid], plans[vid]["split"], set(plans[vid]["segments"])
            try:
                entries = [e for _seg, es in video_windows(out, vid, recs, g, split, keep) for e in es]
            except (StageError, OSError, ValueError, KeyError) as e:
                # one bad video never stops the others; the windows it had stay until a good repack
                results[vid] = Result(status="failed", error_class=type(e).__name__, reason=" ".join(str(e).split()),
                                      seconds=round(time.time() - t0, 3))
                bar.update(1)
                continue
            marker = {"fingerprint": fp, "windows": len(entries),
                      "summary": video_summary(recs, split, sorted(keep), len(entries), fp)}
            try:
                with db.env.begin(write=True) as txn:    # one transaction: old windows out, new ones in
                    bump_generation(txn)                 # readers see this state as a generation of its own
                    _delete_prefix(txn, WINDOW_PREFIX + f"{vid}/".encode())
                    for k, v in entries:
                        txn.put(k, v)
                    txn.put(DONE_PREFIX + vid.encode(), json.dumps(marker, sort_keys=True).encode())
            except (lmdb.Error, OSError) as e:
                results[vid] = _write_failure(path, f"{vid}'s windows", e)
                bar.update(1)
                continue
            kept[vid] = marker
            db.publish()
            bar.update(1)
            results[vid] = _packed_result(p, recs, marker, keep, reused=False, seconds=round(time.time() - t0, 3))
        bar.close()
        if db.pending and not kept:   # a first pack with nothing packed (none ready, or all failed): no LMDB
            db.env.close()
            shutil.rmtree(db.tmp, ignore_errors=True)
            return results
        try:
            with db.env.begin(write=True) as txn:
                meta_txn(txn)
                rebuild_index(txn)
                add_summary(txn, {v: m["summary"] for v, m in kept.items()}, ctx.upstream, p)
            db.publish()
            db.env.sync(True)
        except (lmdb.Error, OSError) as e:
            # the windows are in but the index is the old one: this run's videos fail (one line each); the
            # next pack sees the summary disagree with the markers and writes the index again
            for vid, res in list(results.items()):
                if res.status != "failed":
                    results[vid] = _write_failure(path, "the index", e)
            return results
        for vid, res in _unchanged_results(ctx, p, plans, kept).items():
            results.setdefault(vid, res)
    finally:
        db.env.close()
    return results


def _packed_result(p: Params, recs: dict[str, Record], marker: dict[str, Any], keep: set[int], reused: bool,
                   seconds: float) -> Result:
    n_seg = len(contiguity.Outputs.of(recs["contiguity"]).segments)
    return Result(outputs=Outputs(lmdb=p.lmdb, split=marker["summary"]["split"], windows=marker["windows"],
                                  segments_packed=sorted(keep)),
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
        res[vid] = _packed_result(p, recs, m, set(plans[vid]["segments"]), reused=True, seconds=0.0)
    return res


def video_summary(recs: dict[str, Record], split: str, keep: list[int], n_windows: int, fp: str) -> dict[str, Any]:
    """What the meta's summary says of one packed video: its split, windows, kept segments and frames."""
    segments = contiguity.Outputs.of(recs["contiguity"]).segments
    return {"split": split, "windows": n_windows, "segments": len(keep),
            "frames": int(sum(segments[i][1] - segments[i][0] for i in keep)), "fingerprint": fp}


def add_summary(txn, packed: dict[str, dict[str, Any]], upstream: dict[str, dict[str, Record]], p: Params) -> None:
    """``__meta__["summary"]``: per video what was packed, the upstream stage versions and pack's
    parameters, so a copied LMDB still says what it holds and where it came from (the dataset card
    reads it)."""
    raw = txn.get(META_KEY)
    meta = json.loads(bytes(raw))
    versions: dict[str, list[str]] = {}
    for recs in upstream.values():
        for stage, r in recs.items():
            versions.setdefault(stage, [])
            if r.stage_version not in versions[stage]:
                versions[stage].append(r.stage_version)
    meta["summary"] = {"videos": dict(sorted(packed.items())), "pack_version": VERSION,
                       "stage_versions": {k: sorted(v) for k, v in sorted(versions.items())},
                       "pack_params": {k: v for k, v in dataclasses.asdict(p).items() if k != "map_size_gb"}}
    txn.put(META_KEY, json.dumps(meta, sort_keys=True).encode())


STAGE = Stage(name="pack", version=VERSION, params=Params, outputs=Outputs, metrics=Metrics, kind="global",
              plan=plan, process_all=process_all, needs=NEEDS,
              description="5 s windows, 0.5 s stride, split by video, one LMDB writer")
