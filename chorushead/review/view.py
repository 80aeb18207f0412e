"""What the review shows: the build's videos and segments, their flags and standing decisions.

Read from ``<out>`` (items.json and the newest record of every stage's manifest) and re-read whenever
a manifest changes, since a build may be running next to the review. Knows nothing about HTTP or clips.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from chorushead.core import media
from chorushead.core.decisions import Painted, resolve, segment_key
from chorushead.core.manifest import Record, iter_records
from chorushead.core.payloads import Detections, SmoothSegment
from chorushead.core.windows import JAW_OPEN, POSE
from chorushead.review.flags import SegmentFlags, Thresholds, flag_segment, order_by_suspicion
from chorushead.runner import load_items
from chorushead.stages import assign, contiguity, crop, ingest, smooth, vad

# the stages whose records the review reads (review itself: the decisions)
STAGES = ("ingest", "vad", "crop", "contiguity", "smooth", "assign")


@dataclass
class Segment:
    key: str
    video: str
    index: int
    start: int                    # [start, end) in the trimmed timeline (the build's fps)
    end: int
    abs_start: int                # start in the full timeline (vad start_frame + start)
    n_strips: int
    coeffs: Optional[str]         # smooth npz, relative to out
    flags: SegmentFlags = field(default_factory=SegmentFlags)

    @property
    def n_frames(self) -> int:
        return self.end - self.start

    @property
    def frames(self) -> tuple[int, int]:
        """[start, end) on the full timeline: what a review decision is about (core/decisions.py)."""
        return self.abs_start, self.abs_start + self.n_frames


@dataclass
class Video:
    id: str
    source: Optional[str]
    fps: int
    records: dict[str, Record]    # stage -> newest ok record


class BuildView:
    """What the review needs from ``<out>``, re-read whenever a manifest changes (a build may be
    running next to the review)."""

    def __init__(self, out: Path, thresholds: Thresholds):
        self.out = Path(out).resolve()
        self.th = thresholds
        self._lock = threading.RLock()
        self._stamp: tuple = ()
        self.videos: dict[str, Video] = {}
        self.segments: dict[str, Segment] = {}
        self.order: list[str] = []
        self._npz: dict[tuple[str, int], Any] = {}   # (path, mtime) -> its payload
        self._wav: dict[tuple[str, int], tuple[np.ndarray, int]] = {}

    # -- refresh
    def _manifest_stamp(self) -> tuple:
        st = []
        for s in STAGES + ("items",):     # decisions are read per request, not part of the stamp
            p = self.out / ("items.json" if s == "items" else f"manifests/{s}.jsonl")
            try:
                m = p.stat()
                st.append((s, m.st_mtime_ns, m.st_size))
            except FileNotFoundError:
                st.append((s, 0, 0))
        return tuple(st)

    def refresh(self) -> None:
        with self._lock:
            stamp = self._manifest_stamp()
            if stamp == self._stamp:
                return
            self._load()
            self._stamp = stamp

    def _load(self) -> None:
        items = load_items(self.out)
        latest = iter_records(self.out, STAGES)
        videos, segments = {}, {}
        for vid in sorted(set(items) | set(latest["contiguity"])):
            recs = {s: r for s in latest if (r := latest[s].get(vid)) is not None and r.ok}
            if "contiguity" not in recs:
                continue
            ing = ingest.Outputs.of(recs["ingest"]) if "ingest" in recs else None
            source = (ing.source if ing else None) or (items[vid].source if vid in items else None)
            fps = ing.fps if ing else self.th.fps
            videos[vid] = Video(id=vid, source=source, fps=fps, records=recs)
            segments.update(self._video_segments(videos[vid]))
        order = order_by_suspicion([(k, s.flags) for k, s in segments.items()])
        self.videos, self.segments, self.order = videos, segments, order

    def _video_segments(self, v: Video) -> dict[str, Segment]:
        recs = v.records
        ranges = contiguity.Outputs.of(recs["contiguity"]).segments
        fits = smooth.Outputs.of(recs["smooth"]).segments if "smooth" in recs else []
        offset = vad.Outputs.of(recs["vad"]).start_frame if "vad" in recs else 0
        crops = crop.Outputs.of(recs["crop"]) if "crop" in recs else None
        det = self._payload(crops.detections, lambda p: Detections.load(p, start=crops.start_frame,
                                                                        frames=crops.frames)) if crops else None
        stems_warnings = ingest.Metrics.of(recs["ingest"]).warnings if "ingest" in recs else None
        probs = det.probs if det else None
        if probs is not None:
            n_strips = int(probs.shape[0])
        else:
            n_strips = len(crops.strips) if crops else 2
        out = {}
        for i, (a, b) in enumerate(ranges):
            rel = fits[i] if i < len(fits) else None
            seg = self.smoothed(rel)
            coeffs = seg.coeffs if seg else None
            if coeffs is not None:
                n_strips = coeffs.shape[0]
            fl = flag_segment(b - a, coeffs=coeffs, raw=seg.raw if seg else None, probs=probs,
                              seg_range=(a, b), assign=recs["assign"].outputs if "assign" in recs else None,
                              segment=i, th=self.th, stems_warnings=stems_warnings, fps=v.fps)
            key = segment_key(v.id, i)
            out[key] = Segment(key=key, video=v.id, index=i, start=int(a), end=int(b), abs_start=offset + int(a),
                               n_strips=n_strips, coeffs=rel if coeffs is not None else None, flags=fl)
        return out

    # -- cached file reads
    def _cached(self, cache: dict, limit: int, rel: str, load: Callable[[Path], Any]) -> Any:
        """``load(path)`` once per (path, mtime): a file a rerun replaced is read again; None if absent."""
        p = self.out / rel
        try:
            key = (str(p), p.stat().st_mtime_ns)
        except FileNotFoundError:
            return None
        if key not in cache:
            if len(cache) > limit:
                cache.clear()
            cache[key] = load(p)
        return cache[key]

    def _payload(self, rel: str, load: Callable[[Path], Any]) -> Any:
        return self._cached(self._npz, 256, rel, load)

    def smoothed(self, rel: str | None) -> Optional[SmoothSegment]:
        """A smooth segment's coefficients (typed, cached per file version); None when absent."""
        return self._payload(rel, SmoothSegment.load) if rel else None

    def wav(self, rel: str) -> Optional[tuple[np.ndarray, int]]:
        def load(p: Path) -> tuple[np.ndarray, int]:
            a, sr = media.read_wav(p)
            return (a if a.ndim == 1 else a.mean(axis=1)), sr
        return self._cached(self._wav, 16, rel, load)

    # -- queries
    def _ranges(self) -> dict[str, list[tuple[int, int]]]:
        # every video with a contiguity record, also one left with no segment (its decisions: unmatched)
        ranges: dict[str, list[tuple[int, int]]] = {v: [] for v in self.videos}
        for s in sorted(self.segments.values(), key=lambda s: (s.video, s.index)):
            ranges.setdefault(s.video, []).append(s.frames)
        return ranges

    def decisions(self) -> dict[str, dict[str, Any]]:
        """key -> {"decision", "reason", "time", "frames"} for segments a decision applies to now (decisions
        belong to frames: core/decisions.py; "frames" are the ones the decision was made on)."""
        res = resolve(self.out, self._ranges())
        return {segment_key(v, i): {"decision": p.decision, "reason": p.reason, "time": p.time,
                                    "frames": [p.start, p.end]}
                for (v, i), p in res.segments.items()}

    def segmentation(self, video: str) -> str | None:
        """The fingerprint of the contiguity record ``video``'s segments come from (stored with decisions)."""
        rec = self.videos[video].records.get("contiguity") if video in self.videos else None
        return rec.fingerprint if rec is not None else None

    def unmatched(self) -> list[dict[str, Any]]:
        """Decisions that stand on frames no segment covers now (listed on the page, applied to nothing)."""
        with self._lock:
            self.refresh()
            return [_painted_row(p) for p in resolve(self.out, self._ranges()).unmatched]

    def segment_list(self) -> list[dict[str, Any]]:
        with self._lock:   # one consistent load, even while a refresh swaps it
            self.refresh()
            dec = self.decisions()
            rows = []
            for rank, key in enumerate(self.order):
                s = self.segments[key]
                d = dec.get(key, {})
                rows.append({"key": key, "video": s.video, "index": s.index, "start": s.start, "end": s.end,
                             "frames": s.n_frames, "seconds": round(s.n_frames / self.videos[s.video].fps, 3),
                             "rank": rank, "score": s.flags.score, "flags": s.flags.flags,
                             "metrics": s.flags.metrics, "decision": d.get("decision"), "reason": d.get("reason")})
            return rows

    def summary(self) -> dict[str, Any]:
        with self._lock:   # one consistent load, even while a refresh swaps it
            self.refresh()
            dec = self.decisions()
            per: dict[str, dict[str, Any]] = {}
            zero = lambda: {"segments": 0, "reviewed": 0, "accepted": 0, "rejected": 0,  # noqa: E731
                            "hours": 0.0, "accepted_hours": 0.0, "rejected_hours": 0.0, "unreviewed_hours": 0.0}
            total = zero()
            for key, s in self.segments.items():
                h = s.n_frames / self.videos[s.video].fps / 3600
                d = dec.get(key, {}).get("decision")
                for row in (per.setdefault(s.video, zero()), total):
                    row["segments"] += 1
                    row["hours"] += h
                    if d:
                        row["reviewed"] += 1
                        row["accepted" if d == "accept" else "rejected"] += 1
                        row["accepted_hours" if d == "accept" else "rejected_hours"] += h
                    else:
                        row["unreviewed_hours"] += h
            rnd = lambda r: {k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}  # noqa: E731
            return {"total": rnd(total), "videos": {v: rnd(r) for v, r in sorted(per.items())}}

    def detail(self, key: str, mesh: bool) -> dict[str, Any]:
        """Everything the page draws for one segment: series per frame, waveform envelopes, URLs."""
        with self._lock:   # one consistent load, even while a refresh swaps it
            self.refresh()
            s = self.segments[key]
            v = self.videos[s.video]
            recs = v.records
            d = self.decisions().get(key, {})
            res: dict[str, Any] = {
                "key": key, "video": s.video, "index": s.index, "start": s.start, "end": s.end,
                "abs_start": s.abs_start, "frames": s.n_frames, "fps": v.fps, "n_strips": s.n_strips,
                "flags": s.flags.flags, "metrics": s.flags.metrics, "score": s.flags.score,
                "decision": d.get("decision"), "reason": d.get("reason"),
                "clip": None,             # filled in by the server, which owns the clips
                "strips": [], "jaw": None, "jaw_raw": None, "pose": None, "audio": [], "mesh": None,
            }
            if "crop" in recs:
                for k, rel in enumerate(crop.Outputs.of(recs["crop"]).strips):
                    res["strips"].append({"strip": k, "base": f"/files/{rel.strip('/')}/", "first": s.start,
                                          "version": recs["crop"].fingerprint})
            seg = self.smoothed(s.coeffs)
            if seg is not None:
                c = np.nan_to_num(seg.coeffs)
                raw = np.nan_to_num(seg.raw) if seg.raw is not None else c
                res["jaw"] = _rounded(c[..., JAW_OPEN])
                res["jaw_raw"] = _rounded(raw[..., JAW_OPEN])
                res["pose"] = _rounded(np.degrees(np.moveaxis(c[..., POSE], -1, 1)))   # (S, 3, T) degrees
                if mesh:
                    res["mesh"] = [f"/mesh/{s.video}/{s.index}/{k}/" for k in range(c.shape[0])]
            res["audio"] = self._waveforms(s, v)
            return res

    def _waveforms(self, s: Segment, v: Video) -> list[dict[str, Any]]:
        """Per strip: min/max envelope per video frame of that singer's voice track."""
        if "vad" not in v.records:
            return []
        tracks = vad.Outputs.of(v.records["vad"]).singers_16k
        order = list(assign.Outputs.of(v.records["assign"]).order) if "assign" in v.records else []
        assigned = len(order) == len(tracks) and len(tracks) > 0
        order = order if assigned else list(range(len(tracks)))
        res = []
        for k, j in enumerate(order):
            w = self.wav(tracks[j])
            if w is None:
                continue
            a, sr = w
            lo, hi = _envelope(a, sr, v.fps, s.start, s.end)
            res.append({"strip": k, "track": int(j), "assigned": assigned, "min": lo, "max": hi})
        return res

    def coeffs(self, key: str, strip: int) -> np.ndarray:
        s = self.segments[key]
        seg = self.smoothed(s.coeffs)
        if seg is None:
            raise KeyError(key)
        return seg.coeffs[strip]


def _rounded(a: np.ndarray, nd: int = 4) -> list:
    return np.round(np.asarray(a, dtype=np.float64), nd).tolist()


def _envelope(a: np.ndarray, sr: int, fps: int, start: int, end: int) -> tuple[list, list]:
    """(min, max) of the samples under each frame of [start, end)."""
    edges = np.round(np.arange(start, end + 1) * sr / fps).astype(np.int64)
    edges = np.clip(edges, 0, len(a))
    lo, hi = np.zeros(end - start), np.zeros(end - start)
    ok = edges[1:] > edges[:-1]
    if ok.any() and len(a):
        starts = edges[:-1][ok]
        a = a[: edges[-1]]            # reduceat's last run goes to the array's end: stop it at the last frame's
        hi[ok] = np.maximum.reduceat(a, starts)[: ok.sum()]
        lo[ok] = np.minimum.reduceat(a, starts)[: ok.sum()]
    return _rounded(lo, 3), _rounded(hi, 3)



def _painted_row(p: Painted) -> dict[str, Any]:
    return {"video": p.video, "frames": [p.start, p.end], "decision": p.decision, "reason": p.reason,
            "time": p.time, "made_on": p.key}
