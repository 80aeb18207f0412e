"""Which head turns coefficients into vertices, and the vertices of one singer's head: the one place
identity codes meet FLAME.

Used by eval (vertex metrics), the video renderer and the glTF/PLY exports. The head is FLAME 2020
(licensed: ``--flame DIR``) or the open head (``chorushead.core.openhead``: MediaPipe's face mesh with
FLAME's interface, shipped with the package), chosen by :func:`resolve_head`.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from chorushead.core import openhead

HEADS = ("auto", "flame", "open", "none")


def resolve_head(flame: str | Path | None, head: str = "auto", fit_backend: str | None = None,
                 shapes: bool = False) -> str | None:
    """A FLAME folder, ``"open"`` or None (coefficients only). ``auto``: FLAME when a folder is given
    (``flame``, else ``$FLAME_DIR``),
    else the open head for data it means (landmark fits, synthetic data), else None: an EMOCA fit's
    expression is in FLAME's basis, which the open head does not share. ``shapes``: the singers come
    with FLAME identity codes, which the open head (one face, no identity directions) cannot show:
    ``auto`` then renders nothing without FLAME, and ``open`` is refused."""
    if head not in HEADS:
        raise ValueError(f"--head {head!r}: use one of {', '.join(HEADS)}")
    flame = flame or os.environ.get("FLAME_DIR") or None     # README: --flame DIR, or $FLAME_DIR
    if head == "flame" and not flame:
        raise ValueError("--head flame needs --flame DIR (FLAME 2020: https://flame.is.tue.mpg.de, registration)")
    if head == "open" and shapes:
        raise ValueError("the singers have FLAME identity codes (--shape/--shapes-from) and the open head has no "
                         "identity directions: pass --flame DIR, or drop the shape codes")
    if head == "open":
        return openhead.NAME
    if head == "none":
        return None
    if flame:
        return str(flame)
    return openhead.NAME if fit_backend in openhead.FIT_BACKENDS and not shapes else None


def load_head(where: str | Path | None):
    """The FlameModel for :func:`resolve_head`'s answer (None stays None)."""
    return None if not where else openhead.load_head(where)


def describe_head(where: str | Path | None) -> str:
    """One line for tables and logs: which mesh the vertex metrics and renders use."""
    if not where:
        return "no head (coefficients only)"
    if str(where) == openhead.NAME:
        return (f"the open head (chorushead.core.openhead: MediaPipe's face mesh, 468 vertices, "
                f"eye corners {openhead.IOD_M * 1000:.0f} mm apart; mm of an average face, not FLAME's)")
    return f"FLAME 2020 ({where})"


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
