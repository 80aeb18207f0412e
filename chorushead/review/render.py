"""Optional mesh frames for review: head vertices from the 56 coefficients, drawn to PNG on the server.

Used with ``chorushead review --flame DIR`` (FLAME), or on the open head (``--flame open``, and by
default for a build the landmark fit made: chorushead.core.openhead). The browser
asks for one frame at a time (``/mesh/<video>/<segment>/<strip>/<frame>.png``) and drops frames it
cannot keep up with, so a slow CPU render costs smoothness, never sync.

Drawing is :mod:`chorushead.core.render`'s (the one renderer both tools use). The camera is fixed per segment (from the first frame's
bounds), so head motion shows as motion.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import numpy as np

from chorushead.core.openhead import load_head
from chorushead.core.render import Camera, draw_mesh


class MeshRenderer:
    """Renders PNG frames of one singer's fitted mesh; keeps a few segments' vertices in memory."""

    def __init__(self, model: Any, size: int = 256, cache_segments: int = 4):
        self.model = model
        self.faces = np.asarray(model.faces, dtype=np.int64)
        self.size = size
        self._verts = model.vertices_np
        self._cache: OrderedDict[tuple, tuple[np.ndarray, Camera]] = OrderedDict()
        self._cache_n = cache_segments
        self._lock = threading.Lock()

    @classmethod
    def from_dir(cls, flame_dir: str | Path, size: int = 256) -> "MeshRenderer":
        """A FLAME folder, or "open" for the open head."""
        return cls(load_head(flame_dir), size=size)

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
