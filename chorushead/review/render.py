"""Optional mesh frames for review: FLAME vertices from the 56 coefficients, drawn to PNG on the server.

Only used when ``chorushead review --flame DIR`` is given and ``pachorus.flame`` imports. The browser
asks for one frame at a time (``/mesh/<video>/<segment>/<strip>/<frame>.png``) and drops frames it
cannot keep up with, so a slow CPU render costs smoothness, never sync.

Drawing is a flat-shaded orthographic front view with the painter's algorithm (faces sorted far to
near, each filled with OpenCV): no OpenGL, no GPU, nothing to install, and good enough to see a jaw
that does not open or a head that snaps. The camera is fixed per segment (from the first frame's
bounds), so head motion shows as motion.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

LIGHT = np.array([0.3, 0.4, 1.0]) / np.linalg.norm([0.3, 0.4, 1.0])


def load_flame_model(flame_dir: str | Path) -> Any:
    """The FLAME model through pachorus.flame (``load_flame`` if the module offers it, else
    ``FlameModel.load``). Raises ImportError / FileNotFoundError with the module's own message."""
    from pachorus import flame
    if hasattr(flame, "load_flame"):
        return flame.load_flame(flame_dir)
    return flame.FlameModel.load(flame_dir)


def _vertices_fn(model: Any) -> Callable[[np.ndarray], np.ndarray]:
    """(T, 56) -> (T, V, 3) numpy, whatever the model object offers."""
    if hasattr(model, "vertices_np"):
        return model.vertices_np

    def fn(coeffs: np.ndarray) -> np.ndarray:
        v = model.vertices(coeffs)
        return v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)
    return fn


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


class MeshRenderer:
    """Renders PNG frames of one singer's fitted mesh; keeps a few segments' vertices in memory."""

    def __init__(self, model: Any, size: int = 256, cache_segments: int = 4):
        self.model = model
        self.faces = np.asarray(model.faces, dtype=np.int64)
        self.size = size
        self._verts = _vertices_fn(model)
        self._cache: OrderedDict[tuple, tuple[np.ndarray, Camera]] = OrderedDict()
        self._cache_n = cache_segments
        self._lock = threading.Lock()

    @classmethod
    def from_dir(cls, flame_dir: str | Path, size: int = 256) -> "MeshRenderer":
        return cls(load_flame_model(flame_dir), size=size)

    def _segment(self, key: tuple, coeffs: Callable[[], np.ndarray]) -> tuple[np.ndarray, Camera]:
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        verts = self._verts(np.asarray(coeffs(), dtype=np.float32))   # (T, V, 3)
        cam = Camera.fit(verts[0], self.size)
        with self._lock:
            self._cache[key] = (verts, cam)
            while len(self._cache) > self._cache_n:
                self._cache.popitem(last=False)
        return verts, cam

    def frame_png(self, key: tuple, frame: int, coeffs: Callable[[], np.ndarray]) -> bytes:
        """PNG bytes of frame ``frame``; ``coeffs()`` gives the (T, 56) sequence when not cached."""
        import cv2
        verts, cam = self._segment(key, coeffs)
        frame = int(np.clip(frame, 0, len(verts) - 1))
        ok, buf = cv2.imencode(".png", draw_mesh(verts[frame], self.faces, cam))
        if not ok:  # pragma: no cover - cv2 failure
            raise RuntimeError("PNG encoding failed")
        return buf.tobytes()
