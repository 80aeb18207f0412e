"""smooth: Gaussian smoothing along time of the fitted coefficients (paper §3, against EMOCA jitter).

All 56 coefficients per frame ([exp 50, jaw 3, pose 3]) are filtered independently per segment
(never across a segment boundary: frames between segments have no face). ``mode="nearest"`` keeps
the first and last frames from being pulled toward zero.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter1d

from chorushead.core.errors import StageError
from chorushead.core.payloads import SmoothSegment
from chorushead.core.shapes import Metrics as MetricsShape, Outputs as OutputsShape
from chorushead.stages import fit
from chorushead.stages.base import Context, Result, Stage


@dataclass
class Params:
    sigma: float = 1.5   # frames


@dataclass
class Outputs(OutputsShape):
    segments: list[str]  # seg{i:03d}.npz per contiguity segment: coeffs (smoothed) and raw, (S, T, 56)

    def load_segment(self, out: Path, i: int, frames: int | None = None) -> SmoothSegment:
        """Segment ``i``'s coefficients, checked against its length in ``frames`` when given."""
        if not 0 <= i < len(self.segments):
            raise StageError(f"smooth has {len(self.segments)} segment(s), not a segment {i}; rerun smooth")
        return SmoothSegment.load(Path(out) / self.segments[i], frames)

    def load(self, out: Path) -> list[SmoothSegment]:
        return [self.load_segment(out, i) for i in range(len(self.segments))]


@dataclass
class Metrics(MetricsShape):
    segments: int
    accel_before: float  # mean |second difference| of the coefficients, raw
    accel_after: float   # and smoothed


def smooth_coeffs(coeffs: np.ndarray, sigma: float) -> np.ndarray:
    """(..., T, C) -> same shape, smoothed along T."""
    if sigma <= 0:
        return coeffs.astype(np.float32)
    return gaussian_filter1d(coeffs.astype(np.float64), sigma, axis=-2, mode="nearest").astype(np.float32)


def process(ctx: Context, p: Params, _model) -> Result:
    out, jitter_before, jitter_after = [], [], []
    fitted = fit.Outputs.of(ctx.upstream["fit"])
    for i in range(len(fitted.segments)):
        c = fitted.load_segment(ctx.out, i).coeffs
        s = smooth_coeffs(c, p.sigma)
        SmoothSegment(coeffs=s, raw=c).save(ctx.tmp / f"seg{i:03d}.npz")
        out.append(f"seg{i:03d}.npz")
        if c.shape[-2] > 2:
            jitter_before.append(float(np.abs(np.diff(c, 2, axis=-2)).mean()))
            jitter_after.append(float(np.abs(np.diff(s, 2, axis=-2)).mean()))
    return Result(outputs=Outputs(segments=out),
                  metrics=Metrics(segments=len(out), accel_before=round(float(np.mean(jitter_before or [0])), 5),
                                  accel_after=round(float(np.mean(jitter_after or [0])), 5)))


STAGE = Stage(name="smooth", version="1", params=Params, outputs=Outputs, metrics=Metrics, process=process,
              needs=("fit",),
              description="Gaussian smoothing of the 56 coefficients along time")
