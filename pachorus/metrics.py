"""Evaluation metrics on one sequence. No single public definition exists, so each says which it is.

Vertex arrays are (T, V, 3); index arrays select FLAME mask vertices. Lip/face metrics are meant to
be fed vertices computed with the global head rotation zeroed (paper §5.3); ``evaluate`` does that.
"""
from __future__ import annotations

import numpy as np


def _sq_dist(pred: np.ndarray, gt: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Squared per-vertex distance (T, |idx|)."""
    return ((pred[:, idx] - gt[:, idx]) ** 2).sum(-1)


def lve_squared(pred: np.ndarray, gt: np.ndarray, lips: np.ndarray) -> float:
    """LVE as CodeTalker's main/cal_metric.py: per frame max over lip vertices of the SQUARED distance; mean over frames."""
    return float(_sq_dist(pred, gt, lips).max(1).mean())


def lve_l2(pred: np.ndarray, gt: np.ndarray, lips: np.ndarray) -> float:
    """LVE as SingingHead's metrics: per frame max over lip vertices of the L2 distance; mean over frames."""
    return float(np.sqrt(_sq_dist(pred, gt, lips)).max(1).mean())


def fve_max_l2(pred: np.ndarray, gt: np.ndarray, face: np.ndarray) -> float:
    """FVE as the paper words it: per frame max over face vertices of the L2 distance; mean over frames."""
    return float(np.sqrt(_sq_dist(pred, gt, face)).max(1).mean())


def fve_mean_l2(pred: np.ndarray, gt: np.ndarray, face: np.ndarray) -> float:
    """FVE as SingingHead computes it: L2 distance averaged over face vertices and frames."""
    return float(np.sqrt(_sq_dist(pred, gt, face)).mean())


def fdd(pred: np.ndarray, gt: np.ndarray, template: np.ndarray, upper: np.ndarray) -> float:
    """FDD as CodeTalker: motion = vertices - template; per upper-face vertex the std over time of the
    squared motion norm; mean over vertices; GT minus prediction (signed: > 0 means too little motion)."""
    def dyn(v):
        return (((v[:, upper] - template[upper]) ** 2).sum(-1)).std(0).mean()
    return float(dyn(gt) - dyn(pred))


def ppe(pred_pose: np.ndarray, gt_pose: np.ndarray) -> float:
    """PPE: L2 distance between predicted and GT global head rotation (axis-angle, 3), mean over frames."""
    return float(np.linalg.norm(pred_pose - gt_pose, axis=-1).mean())


def coeff_mse(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """Mean squared error per coefficient group of f = [exp(50), jaw(3), pose(3)]."""
    e = (pred - gt) ** 2
    return {"exp_mse": float(e[..., :50].mean()), "jaw_mse": float(e[..., 50:53].mean()),
            "pose_mse": float(e[..., 53:56].mean())}
