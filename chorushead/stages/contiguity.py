"""contiguity: keep runs of ≥5 s (150 frames at 30 fps) with a face, in every strip (paper §3).

Per strip we record its own runs; the segments used downstream are the ranges where ALL strips
have a face (the paper's "range where faces are simultaneously present"), at least ``min_seconds``
long (converted to frames at the pipeline's fps). A strip that mostly shows more than one confident face is not one singer per strip; such a
video fails with a message that says how to fix it (another strip count) rather than producing
crops of whoever MTCNN ranked first.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from chorushead.core.errors import BadInput
from chorushead.core.shapes import Metrics as MetricsShape, Outputs as OutputsShape
from chorushead.stages import crop
from chorushead.stages.base import Context, Result, Stage


@dataclass
class Params:
    min_seconds: float = 5.0               # one pack window
    prob_threshold: float = 0.9
    max_multi_face_fraction: float = 0.5   # of a strip's face frames showing ≥2 confident faces


@dataclass
class Outputs(OutputsShape):
    segments: list[list[int]]              # [start, end) in crop frames where every strip has a face
    strip_runs: list[list[list[int]]]      # per strip, its own runs
    n_frames: int


@dataclass
class Metrics(MetricsShape):
    segments: int
    frames_kept: int
    frames: int
    kept_fraction: float


def min_frames(p: Params, fps: int) -> int:
    return int(round(p.min_seconds * fps))


def runs(mask: np.ndarray, min_len: int) -> list[list[int]]:
    """[start, end) of each run of True at least ``min_len`` long."""
    m = np.concatenate([[False], np.asarray(mask, bool), [False]])
    edges = np.flatnonzero(m[1:] != m[:-1])
    return [[int(a), int(b)] for a, b in zip(edges[::2], edges[1::2]) if b - a >= min_len]


def process(ctx: Context, p: Params, _model) -> Result:
    det = crop.Outputs.of(ctx.upstream["crop"]).load(ctx.out, ctx.fps)
    n_min = min_frames(p, ctx.fps)
    present = det.probs >= p.prob_threshold                       # (S, T)
    n_strips, n_frames = present.shape
    n_faces = det.n_faces if det.n_faces is not None else present.astype(int)
    for k in range(n_strips):
        face_frames = int(present[k].sum())
        multi = int((n_faces[k] >= 2).sum())
        if face_frames and multi / face_frames > p.max_multi_face_fraction:
            raise BadInput(f"strip {k} shows two or more faces in {multi} of its {face_frames} face frames: "
                           f"this is not one singer per strip. For {n_strips + 1} or more singers side by side, "
                           f"rebuild with --set crop.strips=N.")
    per_strip = [runs(present[k], n_min) for k in range(n_strips)]
    together = runs(present.all(axis=0), n_min)
    if not together:
        counts = ", ".join(f"strip {k}: face in {int(present[k].sum())}/{n_frames} frames, "
                           f"longest run {max((b - a for a, b in runs(present[k], 1)), default=0)}"
                           for k in range(n_strips))
        raise BadInput(f"no range of ≥{n_min} consecutive frames with a face in every strip ({counts}).")
    kept = sum(b - a for a, b in together)
    return Result(outputs=Outputs(segments=together, strip_runs=per_strip, n_frames=n_frames),
                  metrics=Metrics(segments=len(together), frames_kept=kept, frames=n_frames,
                                  kept_fraction=round(kept / max(1, n_frames), 3)))


STAGE = Stage(name="contiguity", version="1", params=Params, outputs=Outputs, metrics=Metrics, process=process,
              needs=("crop",), description="≥5 s runs with a face in every strip")
