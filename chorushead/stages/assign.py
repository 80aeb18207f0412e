"""assign: which separated voice belongs to which face (the paper does not say; design step 7).

MossFormer2's output order is arbitrary, and so is the order of the strips. A singer's mouth opens
when she sings, so for every (strip k, track j) we correlate the strip's jaw opening (EMOCA jaw,
x rotation = mouth opening, smoothed) with the track's loudness envelope (log RMS per video frame, on
the same trimmed timeline) over the contiguous segments, and pick the one-to-one assignment with
the highest total correlation (all permutations: at most 4! = 24 for the singers we handle).

``confidence`` = (best total - second-best total) / number of strips: how much the winner beats
the runner-up, in correlation units per singer. Low confidence (a near tie, or a best assignment
whose correlations are themselves weak) is flagged for review rather than silently trusted.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from chorushead.core.media import read_wav
from chorushead.core.errors import BadInput
from chorushead.core.windows import JAW_OPEN
from chorushead.core.shapes import Metrics as MetricsShape, Outputs as OutputsShape
from chorushead.stages import contiguity, smooth, vad
from chorushead.stages.base import Context, Result, Stage



@dataclass
class Params:
    floor_db: float = -60.0          # envelope floor below the track's peak (silence is all alike)
    min_confidence: float = 0.1      # margin per singer below which the assignment is flagged
    min_correlation: float = 0.15    # mean correlation of the chosen pairs below which it is flagged
    max_singers: int = 4             # permutations grow as n!; refuse beyond this


@dataclass
class Outputs(OutputsShape):
    order: list[int]                 # order[k] = voice track (vad's singers_16k index) of strip k
    confidence: float                # margin per singer of the best over the second-best assignment
    low_confidence: bool             # flagged for review
    correlation: list[list[float]] = field(default_factory=list)      # (strips, tracks), frame-weighted
    segment_correlations: list[list[list[float]]] = field(default_factory=list)  # per segment


@dataclass
class Metrics(MetricsShape):
    confidence: float
    chosen_corr: float
    low_confidence: bool


def loudness_envelope(audio: np.ndarray, sr: int, fps: int, n_frames: int, floor_db: float) -> np.ndarray:
    """log RMS per video frame: frame f covers samples [f*sr/fps, (f+1)*sr/fps)."""
    audio = audio.mean(axis=1) if audio.ndim == 2 else audio
    edges = np.round(np.arange(n_frames + 1) * sr / fps).astype(np.int64)
    audio = np.pad(audio.astype(np.float64), (0, max(0, edges[-1] - len(audio))))
    csum = np.concatenate([[0.0], np.cumsum(audio ** 2)])
    energy = (csum[edges[1:]] - csum[edges[:-1]]) / np.maximum(1, np.diff(edges))
    db = 10 * np.log10(energy + 1e-12)
    return np.maximum(db, db.max() + floor_db)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 1e-12 else 0.0


@dataclass
class Assignment:
    order: list[int]                 # order[k] = track index for strip k
    confidence: float
    best_score: float
    second_score: float
    corr: np.ndarray                 # (strips, tracks), frame-weighted over segments


def best_assignment(corr: np.ndarray) -> Assignment:
    n_strips, n_tracks = corr.shape
    scored = sorted(((sum(corr[k, p[k]] for k in range(n_strips)), p)
                     for p in itertools.permutations(range(n_tracks), n_strips)), reverse=True)
    best, order = scored[0]
    second = scored[1][0] if len(scored) > 1 else -np.inf
    conf = (best - second) / n_strips if np.isfinite(second) else 1.0
    return Assignment(order=list(order), confidence=float(conf), best_score=float(best),
                      second_score=float(second), corr=corr)


def correlate(envelopes: np.ndarray, jaws: list[np.ndarray], segments: list[tuple[int, int]]):
    """envelopes (tracks, T_total); jaws[i] (strips, T_i) for segment i -> (per-segment corr, weighted corr)."""
    per_seg, weights = [], []
    for (start, end), jaw in zip(segments, jaws):
        env = envelopes[:, start:end]
        per_seg.append(np.array([[pearson(jaw[k], env[j]) for j in range(len(env))] for k in range(len(jaw))]))
        weights.append(end - start)
    total = np.tensordot(np.asarray(weights, float), np.asarray(per_seg), axes=1) / sum(weights)
    return per_seg, total


def process(ctx: Context, params: Params, _model) -> Result:
    segments = [(a, b) for a, b in contiguity.Outputs.of(ctx.upstream["contiguity"]).segments]
    smoothed = smooth.Outputs.of(ctx.upstream["smooth"])
    seg_files = smoothed.segments
    tracks = vad.Outputs.of(ctx.upstream["vad"]).singers_16k
    if not segments or not seg_files:
        return Result(status="skipped", reason="no segment to compare voices with faces",
                      outputs=Outputs(order=list(range(len(tracks))), confidence=0.0, low_confidence=True))
    if len(seg_files) != len(segments):
        raise BadInput(f"smooth has {len(seg_files)} segments but contiguity has {len(segments)}; rerun smooth")
    jaws = [seg.coeffs[:, :, JAW_OPEN].astype(np.float64) for seg in smoothed.load(ctx.out)]
    n_strips = jaws[0].shape[0]
    if len(tracks) < n_strips:
        raise BadInput(f"{len(tracks)} voice track(s) for {n_strips} faces")
    if len(tracks) > params.max_singers:
        raise BadInput(f"{len(tracks)} voice tracks: assignment by permutations is limited to {params.max_singers}")
    n_frames = max(end for _, end in segments)
    envs = []
    for rel in tracks:
        audio, sr = read_wav(ctx.path(rel))
        envs.append(loudness_envelope(audio, sr, ctx.fps, n_frames, params.floor_db))
    for (start, end), jaw in zip(segments, jaws):
        if jaw.shape[1] != end - start:
            raise BadInput(f"segment [{start}, {end}) has {jaw.shape[1]} fitted frames")
    per_seg, total = correlate(np.asarray(envs), jaws, segments)
    a = best_assignment(total)
    chosen = float(np.mean([total[k, a.order[k]] for k in range(n_strips)]))
    low = a.confidence < params.min_confidence or chosen < params.min_correlation
    return Result(outputs=Outputs(order=[int(j) for j in a.order], confidence=round(a.confidence, 4),
                                  low_confidence=bool(low), correlation=np.round(total, 4).tolist(),
                                  segment_correlations=[np.round(c, 4).tolist() for c in per_seg]),
                  metrics=Metrics(confidence=round(a.confidence, 4), chosen_corr=round(chosen, 4),
                                  low_confidence=bool(low)))


STAGE = Stage(name="assign", version="1", params=Params, outputs=Outputs, metrics=Metrics, process=process,
              needs=("vad", "smooth", "contiguity"),
              description="match voice tracks to faces: loudness vs jaw opening, best permutation")
