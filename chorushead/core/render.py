"""The one software mesh renderer: a flat-shaded orthographic front view, painter's algorithm.

Faces are sorted far to near and each is filled with OpenCV: no OpenGL, no GPU, nothing to install,
and good enough to see a jaw that does not open or a head that snaps. Used by the review app (one PNG
per frame) and by ``pachorus infer`` (an mp4 through :class:`chorushead.core.media.VideoWriter`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LIGHT = np.array([0.3, 0.4, 1.0]) / np.linalg.norm([0.3, 0.4, 1.0])


@dataclass
class Camera:
    center: np.ndarray   # (2,) x, y in model units
    scale: float         # pixels per model unit
    size: int

    @classmethod
    def fit(cls, verts: np.ndarray, size: int, margin: float = 0.15) -> "Camera":
        lo, hi = verts[:, :2].min(0), verts[:, :2].max(0)
        span = float(max(hi - lo)) or 1.0
        return cls(center=(lo + hi) / 2, scale=size * (1 - 2 * margin) / span, size=size)

    def project(self, verts: np.ndarray) -> np.ndarray:
        xy = (verts[:, :2] - self.center) * self.scale
        # image y goes down; model y goes up
        return np.stack([xy[:, 0] + self.size / 2, self.size / 2 - xy[:, 1]], axis=1)


def draw_mesh(verts: np.ndarray, faces: np.ndarray, cam: Camera) -> np.ndarray:
    """One grey-shaded frame (size, size, 3) uint8 of a mesh seen from +z."""
    import cv2
    img = np.full((cam.size, cam.size, 3), 24, np.uint8)
    tri = verts[faces]                                           # (F, 3, 3)
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    norm = np.linalg.norm(normals, axis=1)
    ok = norm > 0
    normals[ok] /= norm[ok, None]
    facing = normals[:, 2] > 0                                   # back-face culling
    shade = np.clip(normals @ LIGHT, 0, 1)
    depth = tri[:, :, 2].mean(1)
    px = cam.project(verts)
    pts = np.round(px[faces] * 4).astype(np.int32)               # 2 bits of sub-pixel precision
    for f in np.argsort(depth):                                  # far (small z) first
        if not facing[f]:
            continue
        g = int(60 + 180 * shade[f])
        cv2.fillConvexPoly(img, pts[f], (g, g, g), lineType=cv2.LINE_AA, shift=2)
    return img
