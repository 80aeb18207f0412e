"""Singers' heads side by side as an H.264 video (what `pachorus infer` and `pachorus export` render)."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from chorushead.core import media
from chorushead.core.render import Camera, draw_mesh

from .vertices import head_vertices


def render_video(coeffs: np.ndarray, flame, out_path: str | Path, audio: np.ndarray | None = None,
                 *, fps: int, sr: int, size: int = 256, shapes: np.ndarray | None = None) -> Path:
    """Render S singers side by side (coeffs (S, T, 56)) to an H.264 mp4, muxing ``audio`` when given,
    each on their own head when ``shapes`` (S, n) gives identity codes (else FLAME's mean head).
    One fixed camera from FLAME's template, so head motion shows as motion."""
    out_path = Path(out_path)
    s_count, t_count = coeffs.shape[:2]
    verts = [head_vertices(flame, c, None if shapes is None else shapes[i]) for i, c in enumerate(coeffs)]
    cam = Camera.fit(flame.v_template.cpu().numpy(), size, margin=0.15)
    faces = np.asarray(flame.faces)
    with tempfile.TemporaryDirectory() as tmp:
        wav = None
        if audio is not None:
            wav = Path(tmp) / "mix.wav"
            media.write_wav(wav, audio, sr)
        with media.VideoWriter(out_path, size * s_count, size, fps, audio=wav) as vw:
            for t in range(t_count):
                vw.write(np.concatenate([draw_mesh(v[t], faces, cam) for v in verts], 1))
    return out_path
