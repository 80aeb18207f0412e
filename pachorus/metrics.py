"""Evaluation metrics on one sequence. No single public definition exists, so each says which it is.

Vertex arrays are (T, V, 3); index arrays select FLAME mask vertices. Lip/face metrics are fed
vertices computed with the global head rotation zeroed (paper §5.3: the paper's columns) and, as extra
``*_posed`` keys, with it applied; ``evaluate`` does both. Below the paper's metrics: the host's
silent-frame jaw opening, the diversity of K prior samples and the posterior's KL per latent dimension.
"""
from __future__ import annotations

import numpy as np
from chorushead.core.windows import EXP, JAW, POSE


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
    return {"exp_mse": float(e[..., EXP].mean()), "jaw_mse": float(e[..., JAW].mean()),
            "pose_mse": float(e[..., POSE].mean())}


# ------------------------------------------------------------------------- beyond the paper's table


def frame_energy_db(audio: np.ndarray, sr: int, fps: float, n_frames: int) -> np.ndarray:
    """RMS level per motion frame in dBFS (T,): frame t = samples [t·sr/fps, (t+1)·sr/fps); a frame with
    no samples (audio shorter than the motion) or exact silence is -inf."""
    a = np.asarray(audio, np.float64).reshape(-1)
    edges = np.round(np.arange(n_frames + 1) * sr / fps).astype(int).clip(0, len(a))
    energy = np.concatenate([[0.0], np.cumsum(a ** 2)])
    n = np.diff(edges)
    ms = (energy[edges[1:]] - energy[edges[:-1]]).clip(0) / np.maximum(n, 1)
    with np.errstate(divide="ignore"):
        return np.where((n > 0) & (ms > 0), 10 * np.log10(np.where(ms > 0, ms, 1.0)), -np.inf)


def silent_frames(audio: np.ndarray, sr: int, fps: float, n_frames: int, threshold_db: float = -40.0) -> np.ndarray:
    """(T,) bool: frames whose RMS level (dBFS) is below ``threshold_db``."""
    return frame_energy_db(audio, sr, fps, n_frames) < threshold_db


def jaw_opening(jaw: np.ndarray) -> np.ndarray:
    """Jaw opening per frame (rad): the rotation magnitude |axis-angle| of FLAME's jaw joint (coefficients 50..53)."""
    return np.linalg.norm(np.asarray(jaw, np.float64), axis=-1)


def silent_jaw(jaw: np.ndarray, silent: np.ndarray) -> tuple[float | None, int]:
    """Mean jaw opening (rad) over the ``silent`` frames and their count; (None, 0) when none is silent."""
    silent = np.asarray(silent, bool)
    n = int(silent.sum())
    return (float(jaw_opening(jaw)[silent].mean()), n) if n else (None, 0)


def pairwise_pose_distance(poses: np.ndarray) -> float:
    """Diversity of K samples (K, T, 3) of the head pose: mean over the K(K-1)/2 pairs of the mean over
    frames of the L2 distance between their axis-angle poses (rad). 0 when all samples are identical."""
    p = np.asarray(poses, np.float64)
    k = len(p)
    if k < 2:
        raise ValueError(f"diversity needs at least 2 samples, got {k}")
    i, j = np.triu_indices(k, 1)
    return float(np.linalg.norm(p[i] - p[j], axis=-1).mean())


def kl_per_dim(mu: np.ndarray, logvar: np.ndarray) -> np.ndarray:
    """KL(q(z|x) ‖ N(0, I)) per latent dimension, elementwise: ½(μ² + σ² − log σ² − 1) (nats)."""
    mu, logvar = np.asarray(mu, np.float64), np.asarray(logvar, np.float64)
    return 0.5 * (mu ** 2 + np.exp(logvar) - logvar - 1.0)


def active_units(kl_mean: np.ndarray, threshold: float = 0.01) -> int:
    """Latent dimensions whose KL, averaged over the data, exceeds ``threshold`` nats (the others collapsed)."""
    return int((np.asarray(kl_mean) > threshold).sum())
