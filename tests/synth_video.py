"""Synthetic duet videos with REAL faces at known positions, for face-detection tests and benchmarks.

Two real photographs ship with our dependencies: scikit-image's astronaut (Eileen Collins) and
matplotlib's sample portrait of Grace Hopper. Each strip of a frame (one per singer) shows one of them,
pasted with soft edges over a textured background, drifting and zooming smoothly.

"Known position" = where MTCNN puts the face on the untouched photo (measured once, constants below),
carried through the exact scale + shift used to paste it. That is the box a perfect run of the detector
would report, so IoU against it measures the detector pipeline, not MTCNN's own box convention.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np


@dataclass(frozen=True)
class FaceSource:
    """A photo region to paste and the MTCNN face box inside it (x1, y1, x2, y2, region coords)."""
    image: np.ndarray          # (h, w, 3) uint8 RGB region around the face
    box: np.ndarray            # (4,) float, MTCNN's box on the full photo, shifted into the region


# MTCNN (facenet-pytorch 2.6.0, default params) on the full photos:
#   astronaut    [181.05, 62.16, 267.75, 172.05]  prob 0.99999
#   grace_hopper [174.40, 119.56, 355.65, 340.46] prob 0.99982
_ASTRONAUT_BOX = (181.05, 62.16, 267.75, 172.05)
_HOPPER_BOX = (174.40, 119.56, 355.65, 340.46)


def _region(img: np.ndarray, region: tuple[int, int, int, int], box: tuple[float, ...]) -> FaceSource:
    x1, y1, x2, y2 = region
    b = np.asarray(box, dtype=np.float64) - np.array([x1, y1, x1, y1], dtype=np.float64)
    return FaceSource(image=np.ascontiguousarray(img[y1:y2, x1:x2, :3]), box=b)


@lru_cache(maxsize=1)
def face_sources() -> tuple[FaceSource, FaceSource]:
    """(astronaut, grace_hopper) regions: the demo's photos and regions (chorushead.sample)."""
    from chorushead.sample import FACE_REGIONS, face_photos
    photos = face_photos()
    return (_region(photos["astronaut"], FACE_REGIONS["astronaut"], _ASTRONAUT_BOX),
            _region(photos["grace_hopper"], FACE_REGIONS["grace_hopper"], _HOPPER_BOX))


def _background(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth colour blotches plus fine texture: something for MTCNN's first stage to reject."""
    low = rng.uniform(40, 200, size=(max(2, h // 64), max(2, w // 64), 3)).astype(np.float32)
    bg = cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC)
    bg += rng.normal(0, 12, size=(h, w, 3)).astype(np.float32)
    return np.clip(bg, 0, 255).astype(np.uint8)


def _feather(h: int, w: int, margin: float = 0.12) -> np.ndarray:
    """(h, w, 1) alpha that ramps from 0 at the border to 1 inside, so no hard rectangle edge."""
    ry = np.clip(np.minimum(np.arange(h), np.arange(h)[::-1]) / max(1.0, margin * h), 0, 1)
    rx = np.clip(np.minimum(np.arange(w), np.arange(w)[::-1]) / max(1.0, margin * w), 0, 1)
    return (ry[:, None] * rx[None, :])[..., None].astype(np.float32)


@dataclass(frozen=True)
class _Path:
    """Smooth motion of one face inside its strip: face-box centre and width over time."""
    cx: float
    cy: float
    ax: float
    ay: float
    px: float        # periods in frames
    py: float
    phase: float
    face_w: float    # mean face-box width in pixels
    zoom: float      # relative zoom amplitude

    def at(self, t: int) -> tuple[float, float, float]:
        cx = self.cx + self.ax * np.sin(2 * np.pi * t / self.px + self.phase)
        cy = self.cy + self.ay * np.sin(2 * np.pi * t / self.py + 2 * self.phase)
        fw = self.face_w * (1 + self.zoom * np.sin(2 * np.pi * t / (1.7 * self.px)))
        return float(cx), float(cy), float(fw)


def _paths(size: tuple[int, int], strips: int, rng: np.random.Generator, face_frac: float) -> list[_Path]:
    h, w = size
    sw = w // strips
    out = []
    for _ in range(strips):
        face_w = face_frac * min(sw, h) * rng.uniform(0.9, 1.1)
        out.append(_Path(cx=sw / 2, cy=h * 0.45, ax=sw * 0.12, ay=h * 0.06,
                         px=rng.uniform(90, 150), py=rng.uniform(110, 170), phase=rng.uniform(0, 2 * np.pi),
                         face_w=face_w, zoom=0.08))
    return out


def _paste(dst: np.ndarray, src: FaceSource, cx: float, cy: float, face_w: float,
           alpha_cache: dict) -> np.ndarray:
    """Paste ``src`` scaled so its face box is ``face_w`` wide, face-box centre at (cx, cy).

    Positions are rounded to whole pixels and the scale is taken from the rounded patch size, so the
    returned box is exactly where the face went. The patch is kept inside ``dst``."""
    h, w = dst.shape[:2]
    s = face_w / (src.box[2] - src.box[0])
    s = min(s, h / src.image.shape[0], w / src.image.shape[1])     # the patch must fit the strip
    ph, pw = max(8, round(src.image.shape[0] * s)), max(8, round(src.image.shape[1] * s))
    sy, sx = ph / src.image.shape[0], pw / src.image.shape[1]
    bcx = (src.box[0] + src.box[2]) / 2 * sx
    bcy = (src.box[1] + src.box[3]) / 2 * sy
    x0 = int(np.clip(round(cx - bcx), 0, max(0, w - pw)))
    y0 = int(np.clip(round(cy - bcy), 0, max(0, h - ph)))
    patch = cv2.resize(src.image, (pw, ph), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    key = (ph, pw)
    if key not in alpha_cache:
        alpha_cache[key] = _feather(ph, pw)
    a = alpha_cache[key]
    roi = dst[y0:y0 + ph, x0:x0 + pw].astype(np.float32)
    dst[y0:y0 + ph, x0:x0 + pw] = (a * patch + (1 - a) * roi).astype(np.uint8)
    return np.array([x0 + src.box[0] * sx, y0 + src.box[1] * sy, x0 + src.box[2] * sx, y0 + src.box[3] * sy])


def iter_duet_frames(n_frames: int, size: tuple[int, int] = (256, 512), absent: tuple[int, int] | None = None,
                     seed: int = 0, strips: int = 2, face_frac: float = 0.3, chunk: int = 32,
                     ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Stream (frames (k, H, W, 3) uint8, boxes (strips, k, 4)) chunks; see :func:`make_duet_frames`."""
    h, w = size
    sw = w // strips
    rng = np.random.default_rng(seed)
    bg = _background(h, w, rng)
    grain = [rng.normal(0, 3, size=(h, w, 3)).astype(np.int16) for _ in range(3)]   # per-frame sensor noise
    paths = _paths(size, strips, rng, face_frac)
    sources = face_sources()
    alpha_cache: dict = {}
    for c0 in range(0, n_frames, chunk):
        k = min(chunk, n_frames - c0)
        frames = np.empty((k, h, w, 3), np.uint8)
        boxes = np.full((strips, k, 4), np.nan)
        for i in range(k):
            t = c0 + i
            frame = bg.copy()
            for s in range(strips):
                if s == 1 and absent is not None and absent[0] <= t < absent[1]:
                    continue                                    # the singer has stepped out
                cx, cy, fw = paths[s].at(t)
                view = frame[:, s * sw:(s + 1) * sw]
                boxes[s, i] = _paste(view, sources[s % len(sources)], cx, cy, fw, alpha_cache)
            frames[i] = np.clip(frame.astype(np.int16) + grain[t % len(grain)], 0, 255).astype(np.uint8)
        yield frames, boxes


def make_duet_frames(n_frames: int, size: tuple[int, int] = (256, 512), absent: tuple[int, int] | None = None,
                     seed: int = 0, strips: int = 2, face_frac: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """A duet clip: strip 0 shows the astronaut, strip 1 Grace Hopper (alternating for more strips).

    size: (H, W); strips are ``W // strips`` wide, as in the crop stage. absent: half-open frame range
    [a, b) in which strip 1's face is not shown. face_frac: mean face-box width / min(strip W, H).
    Returns frames (T, H, W, 3) uint8 RGB and the true boxes (strips, T, 4) as x1, y1, x2, y2 in STRIP
    coordinates (add ``s * (W // strips)`` for frame coordinates), NaN where no face is shown.
    """
    parts = list(iter_duet_frames(n_frames, size, absent, seed, strips, face_frac, chunk=max(1, n_frames)))
    return parts[0][0], parts[0][1]


def write_duet_video(path: str | Path, n_frames: int, size: tuple[int, int] = (256, 512),
                     absent: tuple[int, int] | None = None, seed: int = 0, strips: int = 2,
                     face_frac: float = 0.3, fps: int = 30, crf: int = 20,
                     audio: str | Path | None = None) -> np.ndarray:
    """Stream a duet clip into :class:`chorushead.core.media.VideoWriter` (no whole clip in memory);
    returns the true boxes. ``audio``: a file to mux in, cut to the video's length."""
    from chorushead.core.media import VideoWriter
    h, w = size
    all_boxes = []
    with VideoWriter(path, w, h, fps, audio=audio, crf=crf) as vw:
        for frames, boxes in iter_duet_frames(n_frames, size, absent, seed, strips, face_frac):
            vw.write(frames)
            all_boxes.append(boxes)
    return np.concatenate(all_boxes, axis=1)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes ``a`` and ``b`` (..., 4), elementwise; NaN where either is NaN."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])
    return inter / (area(a) + area(b) - inter)
