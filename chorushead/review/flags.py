"""Automatic flags for review: which segments a person should look at first, and why.

The paper's last filter (§3) is a person removing segments "with minimal mouth movement or evident
errors". A person's time is the scarce resource, so every segment gets a few cheap measurements from
the build outputs, a flag for each measurement past its threshold, and one suspicion score that
orders the review list (most suspicious first). All functions here are pure: arrays in, numbers out.

Measurements (``S`` strips = singers, ``T`` frames at the build's fps, coefficients ``[exp 50, jaw 3, pose 3]``):

- ``jaw_std``: standard deviation of the jaw opening (``coeffs[..., JAW_OPEN]``, radians) over the segment,
  the smallest over singers. Low = someone barely moves their mouth (not singing, or a failed fit).
- ``jitter``: mean |second difference| of the RAW (unsmoothed) jaw + pose coefficients, radians per
  frame², the largest over singers. High = the fit trembles; smoothing hides it in the plots, so the
  flag looks at what the fit produced.
- ``jump``: largest |first difference| of raw jaw + pose in one frame. A head does not turn 15° in
  33 ms: that is a fit that lost the face for a frame (an "evident error").
- ``det_doubt``: 1 - mean MTCNN probability over the segment, the largest over singers.
- ``assign_conf``: the assign stage's confidence that voice tracks go to the right faces.
- ``frames``: segment length; short segments give few 5 s windows for the same review effort.
- ``stems_warnings``: how many warnings ingest recorded about the user's stems (a stem longer or
  shorter than the video, or at another sample rate than the others): voices may be out of sync.

The thresholds are starting points, not truths: they are parameters, and the score is continuous so
the order stays useful even where a threshold is off.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import numpy as np

from chorushead.core.windows import JAW, JAW_OPEN, POSE
from chorushead.stages.base import DEFAULT_FPS

JAW_POSE = slice(JAW.start, POSE.stop)  # jaw (3) + global head pose (3)

FLAG_INFO = {        # flag -> what a person sees in the list
    "still_mouth": "little mouth movement (low jaw variance)",
    "jitter": "jittery fit (high acceleration of raw coefficients)",
    "jump": "sudden jump in jaw/pose (likely a fit error)",
    "low_detection": "low face detection confidence",
    "low_assign": "low voice-to-singer assignment confidence",
    "short": "short segment",
    "no_fit": "no fitted coefficients yet",
    "stems_mismatch": "supplied stems differ from the video (length or sample rate)",
}


@dataclass
class Thresholds:
    min_jaw_std: float = 0.02        # rad; singing opens the jaw by ~0.1-0.3 rad
    max_jitter: float = 0.01         # rad/frame²; smooth singing motion is well below
    max_jump: float = 0.25           # rad in one frame (~14°)
    max_det_doubt: float = 0.02      # 1 - mean MTCNN prob (contiguity already requires >= 0.9)
    min_assign_conf: float = 0.1     # as assign.min_confidence; used only when assign gives no low_confidence
    min_seconds: float = 7.0         # fewer than 5 windows of 5 s at 0.5 s stride
    fps: int = DEFAULT_FPS           # only for builds whose ingest records predate the fps field


# How much each flag weighs in the suspicion score. Mouth movement and fit errors are the paper's
# reasons to reject; the rest make a rejection likelier but are not reasons on their own.
WEIGHTS = {"still_mouth": 1.0, "jitter": 0.8, "jump": 0.8, "low_detection": 0.6, "low_assign": 0.6,
           "short": 0.2, "no_fit": 0.1, "stems_mismatch": 0.6}


@dataclass
class SegmentFlags:
    metrics: dict[str, Optional[float]] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    score: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------- measurements
def jaw_std(coeffs: np.ndarray) -> float:
    """Smallest per-singer std of jaw opening. ``coeffs`` (S, T, 56) or (T, 56)."""
    c = coeffs.reshape(-1, coeffs.shape[-2], coeffs.shape[-1])
    if c.shape[1] < 2:
        return 0.0
    return float(np.min(np.std(c[..., JAW_OPEN], axis=-1)))


def jitter(raw: np.ndarray) -> float:
    """Largest per-singer mean |Δ²| of raw jaw + pose coefficients."""
    c = raw.reshape(-1, raw.shape[-2], raw.shape[-1])
    if c.shape[1] < 3:
        return 0.0
    acc = np.abs(np.diff(c[..., JAW_POSE], n=2, axis=1))
    return float(np.max(acc.mean(axis=(1, 2))))


def max_jump(raw: np.ndarray) -> float:
    """Largest single-frame change of any raw jaw/pose coefficient, over singers."""
    c = raw.reshape(-1, raw.shape[-2], raw.shape[-1])
    if c.shape[1] < 2:
        return 0.0
    return float(np.max(np.abs(np.diff(c[..., JAW_POSE], axis=1))))


def det_doubt(probs: np.ndarray, start: int, end: int) -> float:
    """1 - mean detection probability in frames [start, end), worst singer. NaN probs count as 0."""
    p = np.nan_to_num(np.asarray(probs, dtype=np.float64)[:, start:end], nan=0.0)
    if p.shape[1] == 0:
        return 1.0
    return float(1.0 - np.min(p.mean(axis=1)))


def assign_confidence(outputs: Optional[dict[str, Any]], segment: int) -> tuple[Optional[float], Optional[bool]]:
    """(confidence, low flag) from the assign record's outputs; either may be missing.

    ``confidence`` may be one number per video or a list per segment; ``low_confidence`` likewise.
    """
    if not outputs:
        return None, None

    def pick(v):
        if isinstance(v, (list, tuple)):
            return v[segment] if segment < len(v) else None
        if isinstance(v, dict):
            return v.get(str(segment), v.get(segment))
        return v

    conf, low = pick(outputs.get("confidence")), pick(outputs.get("low_confidence"))
    return (float(conf) if conf is not None else None), (bool(low) if low is not None else None)


# ----------------------------------------------------------------------------- score
def _soft(ratio: float, sharp: float = 4.0) -> float:
    """0..1, exactly 0.5 when the metric sits on its threshold (ratio = metric / threshold for a
    high-is-bad metric, inverted by the caller for low-is-bad). Continuous so unflagged segments still
    sort by how close they come."""
    if not np.isfinite(ratio):
        return 1.0 if ratio > 0 else 0.0
    if ratio <= 0:
        return 0.0
    return float(1.0 / (1.0 + ratio ** -sharp))


def flag_segment(n_frames: int, coeffs: Optional[np.ndarray] = None, raw: Optional[np.ndarray] = None,
                 probs: Optional[np.ndarray] = None, seg_range: Optional[tuple[int, int]] = None,
                 assign: Optional[dict[str, Any]] = None, segment: int = 0,
                 th: Thresholds = Thresholds(), stems_warnings: Optional[list[str]] = None,
                 fps: Optional[float] = None) -> SegmentFlags:
    """Measure one segment and flag it. Missing inputs (no fit yet, no assign) just skip their flags.

    ``probs`` is the crop stage's (S, T) array over the trimmed timeline and ``seg_range`` the
    segment's [start, end) in it.
    """
    fps = fps or th.fps              # the build's frame rate (from its ingest record)
    m: dict[str, Optional[float]] = {"frames": float(n_frames), "seconds": n_frames / fps}
    parts: dict[str, float] = {}    # flag -> soft severity in 0..1

    parts["short"] = _soft(th.min_seconds * fps / max(n_frames, 1e-9))
    if coeffs is not None and coeffs.size:
        r = raw if raw is not None else coeffs
        if not (np.isfinite(coeffs).all() and np.isfinite(r).all()):
            parts["jump"] = 1.0          # NaN/inf from the fit is an evident error; measure the rest
            coeffs, r = np.nan_to_num(coeffs, posinf=0.0, neginf=0.0), np.nan_to_num(r, posinf=0.0, neginf=0.0)
        m["jaw_std"] = jaw_std(coeffs)
        parts["still_mouth"] = _soft(th.min_jaw_std / max(m["jaw_std"], 1e-12))
        m["jitter"], m["jump"] = jitter(r), max_jump(r)
        parts["jitter"] = _soft(m["jitter"] / th.max_jitter)
        parts["jump"] = max(parts.get("jump", 0.0), _soft(m["jump"] / th.max_jump))
    else:
        parts["no_fit"] = 1.0
    if probs is not None and seg_range is not None:
        m["det_doubt"] = det_doubt(probs, *seg_range)
        parts["low_detection"] = _soft(m["det_doubt"] / th.max_det_doubt)
    conf, low = assign_confidence(assign, segment)
    if conf is not None:
        m["assign_conf"] = conf
    if low is not None:
        parts["low_assign"] = 1.0 if low else 0.0    # the assign stage's own verdict wins
    elif conf is not None:
        parts["low_assign"] = _soft(th.min_assign_conf / max(conf, 1e-9))

    if stems_warnings:   # ingest's warnings about the user's stems (they hold for the whole video)
        m["stems_warnings"] = float(len(stems_warnings))
        parts["stems_mismatch"] = 1.0
    flags = [f for f, s in parts.items() if s >= 0.5]
    flags.sort(key=lambda f: -WEIGHTS[f])
    score = sum(WEIGHTS[f] * s for f, s in parts.items())
    return SegmentFlags(metrics={k: (round(v, 6) if v is not None else None) for k, v in m.items()},
                        flags=flags, score=round(score, 4))


def order_by_suspicion(keys_and_flags: list[tuple[str, SegmentFlags]]) -> list[str]:
    """Keys, most suspicious first (ties: in the given order, i.e. video then segment)."""
    ranked = sorted(enumerate(keys_and_flags), key=lambda p: (-p[1][1].score, p[0]))
    return [k for _, (k, _) in ranked]
