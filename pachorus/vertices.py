"""FLAME vertices of coefficients on one singer's head: the one place identity codes meet FLAME.

Used by eval (vertex metrics), the video renderer and the glTF/PLY exports.
"""
from __future__ import annotations

import numpy as np
import torch


def head_vertices(flame, coeffs: np.ndarray, shape: np.ndarray | None = None, zero_pose: bool = False,
                  chunk: int = 512) -> np.ndarray:
    """Vertices (..., V, 3) of coefficients (..., 56) on one head: FLAME's mean head when ``shape`` is
    None, else the head of identity code ``shape`` (EMOCA's first 100 of FLAME's shape directions; the
    rest are zero)."""
    if shape is None:
        return flame.vertices_np(coeffs, zero_pose=zero_pose, chunk=chunk)
    code = np.asarray(shape, np.float32).reshape(-1)
    if len(code) > flame.n_shape:
        raise ValueError(f"a shape code of {len(code)} values, but this FLAME has {flame.n_shape} shape directions")
    betas = np.zeros(flame.n_shape, np.float32)
    betas[:len(code)] = code
    flat = np.asarray(coeffs, np.float32).reshape(-1, coeffs.shape[-1])
    with torch.no_grad():
        parts = [flame.vertices(flat[i:i + chunk], shape=torch.from_numpy(betas), zero_pose=zero_pose).cpu().numpy()
                 for i in range(0, len(flat), chunk)]
    return np.concatenate(parts).reshape(*coeffs.shape[:-1], flame.n_vertices, 3)
