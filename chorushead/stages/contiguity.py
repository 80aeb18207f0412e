"""contiguity: keep runs of ≥150 consecutive frames with a face, in every strip (paper §3).

Per strip we record its own runs; the segments used downstream are the ranges where ALL strips
have a face (the paper's "range where faces are simultaneously present"), at least ``min_frames``
long. A strip that mostly shows more than one confident face is not one singer per strip; such a
video fails with a message that says how to fix it (another strip count) rather than producing
crops of whoever MTCNN ranked first.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from chorushead.core.errors import BadInput
from chorushead.stages.base import Context, Result, Stage


@dataclass
class ContiguityParams:
    min_frames: int = 150
    prob_threshold: float = 0.9
    max_multi_face_fraction: float = 0.5   # of a strip's face frames showing ≥2 confident faces


def runs(mask: np.ndarray, min_len: int) -> list[list[int]]:
    """[start, end) of each run of True at least ``min_len`` long."""
    m = np.concatenate([[False], np.asarray(mask, bool), [False]])
    edges = np.flatnonzero(m[1:] != m[:-1])
    return [[int(a), int(b)] for a, b in zip(edges[::2], edges[1::2]) if b - a >= min_len]


def process(ctx: Context, p: ContiguityParams, _model) -> Result:
    det = np.load(ctx.input("crop", "detections"))
    present = det["probs"] >= p.prob_threshold                    # (S, T)
    n_strips, n_frames = present.shape
    n_faces = det["n_faces"] if "n_faces" in det.files else present.astype(int)
    for k in range(n_strips):
        face_frames = int(present[k].sum())
        multi = int((n_faces[k] >= 2).sum())
        if face_frames and multi / face_frames > p.max_multi_face_fraction:
            raise BadInput(f"strip {k} shows two or more faces in {multi} of its {face_frames} face frames: "
                           f"this is not one singer per strip. For {n_strips + 1} or more singers side by side, "
                           f"rebuild with --set crop.strips=N.")
    per_strip = [runs(present[k], p.min_frames) for k in range(n_strips)]
    together = runs(present.all(axis=0), p.min_frames)
    if not together:
        counts = ", ".join(f"strip {k}: face in {int(present[k].sum())}/{n_frames} frames, "
                           f"longest run {max((b - a for a, b in runs(present[k], 1)), default=0)}"
                           for k in range(n_strips))
        raise BadInput(f"no range of ≥{p.min_frames} consecutive frames with a face in every strip ({counts}).")
    kept = sum(b - a for a, b in together)
    return Result(outputs={"segments": together, "strip_runs": per_strip, "n_frames": n_frames},
                  metrics={"segments": len(together), "frames_kept": kept, "frames": n_frames,
                           "kept_fraction": round(kept / max(1, n_frames), 3)})


STAGE = Stage(name="contiguity", version="1", params=ContiguityParams, process=process, needs=("crop",),
              description="≥150-frame runs with a face in every strip")
