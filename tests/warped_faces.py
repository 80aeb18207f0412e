"""Real face photos warped by KNOWN motion, written as crop folders, to validate the landmark fit.

The photos are the demo's (chorushead.sample.face_images, 224×224 around each face). Three warps:

- roll: in-plane rotation by ``deg`` about the image centre (cv2: positive = counter-clockwise as
  seen, i.e. a positive rotation about FLAME's +z, which points from the face to the camera);
- yaw: a horizontal remap x_src = cx + R(u + a·u²), u = (x - cx)/R, about the nose: a > 0 squeezes
  the image-right half of the face and widens the left, as when the head turns towards image right,
  i.e. a positive rotation about FLAME's +y (up);
- mouth: the demo's own mouth warp (chorushead.demo_faces.open_mouth, which the sample videos drive
  with each singer's loudness): below the lip line the lower face is pushed down by ``gap`` pixels
  and the uncovered band is painted as a dark mouth interior: the lips part by ``gap`` pixels;
- smile: chorushead.demo_faces.smile, both mouth corners pulled outwards and up by ``smile_px``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from chorushead.demo_faces import MOUTHS, REF_SIZE as SIZE, Mouth, open_mouth, smile   # noqa: F401  (re-exported)


def photos() -> list[np.ndarray]:
    from chorushead.sample import face_images
    return face_images(SIZE)


def roll(img: np.ndarray, deg: float) -> np.ndarray:
    m = cv2.getRotationMatrix2D((SIZE / 2, SIZE / 2), deg, 1.0)
    return cv2.warpAffine(img, m, (SIZE, SIZE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def yaw_squeeze(img: np.ndarray, a: float, cx: float, radius: float = 70.0) -> np.ndarray:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    u = (xx - cx) / radius
    map_x = (cx + radius * (u + a * u * u)).astype(np.float32)
    return cv2.remap(img, map_x, yy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


@dataclass
class Clip:
    """Per-frame truth for a warped clip: which warp is active and its value (0 elsewhere)."""
    phase: np.ndarray      # (T,) 0 = roll, 1 = yaw, 2 = mouth, 3 = smile
    roll_deg: np.ndarray
    yaw_a: np.ndarray
    gap_px: np.ndarray
    smile_px: np.ndarray


def known_motion(n: int = 30) -> Clip:
    """Four phases of ``n`` frames: roll ±20°, yaw squeeze ±0.3, mouth gap 0..14 px, smile 0..8 px."""
    t = np.arange(n)
    wave = np.sin(2 * np.pi * t / n)
    bump = 1 - np.cos(2 * np.pi * t / n)
    z = np.zeros(n)
    return Clip(phase=np.repeat([0, 1, 2, 3], n), roll_deg=np.concatenate([20 * wave, z, z, z]),
                yaw_a=np.concatenate([z, 0.3 * wave, z, z]), gap_px=np.concatenate([z, z, 7 * bump, z]),
                smile_px=np.concatenate([z, z, z, 4 * bump]))


def render(photo: np.ndarray, mouth: Mouth, clip: Clip, k: int) -> np.ndarray:
    img = open_mouth(photo, mouth, clip.gap_px[k]) if clip.gap_px[k] > 0 else photo
    img = smile(img, mouth, clip.smile_px[k]) if clip.smile_px[k] > 0 else img
    if clip.yaw_a[k] != 0:
        img = yaw_squeeze(img, clip.yaw_a[k], mouth.nose_x)
    return roll(img, clip.roll_deg[k]) if clip.roll_deg[k] != 0 else img


def write_strips(root: Path, clip: Clip, blank: tuple[int, ...] = ()) -> list[Path]:
    """strip{k}/{t:06d}.jpg for each photo (as the crop stage writes them); frames in ``blank`` get a
    flat grey image (no face) to exercise the no-face path."""
    out = []
    for k, (photo, mouth) in enumerate(zip(photos(), MOUTHS)):
        d = root / f"strip{k}"
        d.mkdir(parents=True, exist_ok=True)
        for t in range(len(clip.phase)):
            img = np.full_like(photo, 128) if t in blank else render(photo, mouth, clip, t)
            cv2.imwrite(str(d / f"{t:06d}.jpg"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
        out.append(d)
    return out
