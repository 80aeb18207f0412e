"""The demo's singing mouths: a known-motion mouth warp on the demo's face photos, driven by each
singer's own loudness.

- :func:`open_mouth`: below the lip line the lower face is pushed down by ``gap`` pixels (a
  lens-shaped window across the mouth width, tapering back to zero below the chin) and the uncovered
  band is painted as a dark mouth interior: the lips part by ``gap`` pixels. ``gap = 0`` returns the
  photo untouched.
- :func:`smile`: both mouth corners pulled outwards and up by ``amount`` pixels (a Gaussian
  displacement about each corner, σ = 0.35 × the mouth width): a known smile for the landmark fit's
  expression test, and the demo's listening smile.
- :func:`listening`: how much each singer smiles while listening: the loudest partner's loudness,
  smoothed over half a second (a smile does not flicker with every syllable).
- :func:`loudness_envelope`: a voice's RMS per video frame, 0..1 (1 = its loud singing), 0 where the
  singer is silent: the demo opens each singer's mouth by this much times its largest gap.

The same warp validates the landmark fit (tests/warped_faces.py, tests/test_landmarks.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

REF_SIZE = 224   # the face-image size the mouth positions below are measured at


@dataclass(frozen=True)
class Mouth:
    """Where the mouth is in a face image of ``REF_SIZE``² (``chorushead.sample.face_images``): corners'
    x, lip line y, chin y (measured once by eye and with the landmark model on the untouched photos);
    nose_x is the centre of tests/warped_faces.py's yaw warp."""
    x0: float
    x1: float
    y: float
    chin: float
    nose_x: float

    def scaled(self, size: int) -> "Mouth":
        """The same mouth in a face image of ``size``² pixels."""
        f = size / REF_SIZE
        return Mouth(self.x0 * f, self.x1 * f, self.y * f, self.chin * f, self.nose_x * f)

    def region(self, size: int, pad: float = 0.1) -> tuple[int, int, int, int]:
        """x1, y1, x2, y2 of the pixels the warp can change in a ``size``² image (plus ``pad`` × the
        mouth width): across the mouth, from the lip line to below the chin."""
        m = self.scaled(size)
        half = (m.x1 - m.x0) / 2 * 1.1
        cx, span = (m.x0 + m.x1) / 2, m.chin - m.y + 8 * size / REF_SIZE
        p = pad * (m.x1 - m.x0)
        return (max(0, int(cx - half - p)), max(0, int(m.y - p)), min(size, int(np.ceil(cx + half + p))),
                min(size, int(np.ceil(m.y + 2 * span + p))))


MOUTHS = (Mouth(84, 137, 151, 187, 110), Mouth(90, 138, 142.5, 178, 114.6))   # astronaut, grace_hopper
MOUTH_INTERIOR = (45, 20, 25)   # RGB of the band uncovered between the parted lips


def open_mouth(img: np.ndarray, m: Mouth, gap: float) -> np.ndarray:
    """``img`` (a square face image, RGB) with its lips parted by ``gap`` pixels; ``m`` is the mouth in
    REF_SIZE² coordinates (scaled here to the image's size)."""
    import cv2
    if gap <= 0:
        return img
    size = img.shape[0]
    m = m.scaled(size)
    yy, xx = np.mgrid[0:size, 0:img.shape[1]].astype(np.float32)
    cx, half = (m.x0 + m.x1) / 2, (m.x1 - m.x0) / 2 * 1.1
    wx = np.clip(1 - ((xx - cx) / half) ** 2, 0, 1)                       # lens-shaped opening
    span = m.chin - m.y + 8 * size / REF_SIZE
    wy = np.where(yy < m.y, 0.0, np.clip(2 - (yy - m.y) / span, 0, 1))    # 1 down to the chin, then taper
    map_y = (yy - gap * wx * wy).astype(np.float32)
    out = cv2.remap(img, xx, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    inside = (yy >= m.y) & (map_y < m.y)                                  # band uncovered between the lips
    out[inside] = MOUTH_INTERIOR
    return out


def smile(img: np.ndarray, m: Mouth, amount: float) -> np.ndarray:
    """``img`` with both mouth corners moved by ``amount`` pixels, outwards and up at 37° above the
    horizontal (``m`` in REF_SIZE² coordinates, scaled to the image). ``amount = 0`` returns it untouched."""
    import cv2
    if amount <= 0:
        return img
    size = img.shape[0]
    m = m.scaled(size)
    yy, xx = np.mgrid[0:size, 0:img.shape[1]].astype(np.float32)
    sigma = 0.35 * (m.x1 - m.x0)
    dx = np.zeros_like(xx)
    dy = np.zeros_like(yy)
    for x, out in ((m.x0, -1.0), (m.x1, 1.0)):          # image-left corner moves left, the other right
        g = amount * np.exp(-((xx - x) ** 2 + (yy - m.y) ** 2) / (2 * sigma ** 2))
        dx += 0.8 * out * g
        dy -= 0.6 * g                                    # up = towards smaller y
    # backward map: the pixel at p comes from p - d(p) (d is smooth and small against sigma)
    return cv2.remap(img, xx - dx, yy - dy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def loudness_envelope(voice: np.ndarray, sr: int, fps: float, n_frames: int, gate: float = 0.08) -> np.ndarray:
    """(n_frames,) float32 in 0..1: the RMS of ``voice`` over each video frame's span ``[t, t+1)/fps``,
    divided by its 98th percentile over the sung frames and clipped; frames below ``gate`` (silence,
    breath noise, a phrase's last fade) are 0."""
    v = np.asarray(voice, np.float64)
    if v.ndim > 1:
        v = v.mean(axis=1)
    edges = np.round(np.arange(n_frames + 1) * sr / fps).astype(int).clip(0, len(v))
    sq = np.concatenate([[0.0], np.cumsum(v * v)])
    counts = np.maximum(np.diff(edges), 1)
    rms = np.sqrt(np.maximum(sq[edges[1:]] - sq[edges[:-1]], 0) / counts)
    peak = rms.max()
    if peak <= 0:
        return np.zeros(n_frames, np.float32)
    loud = rms[rms > 0.1 * peak]
    env = np.clip(rms / np.percentile(loud, 98), 0, 1)
    env[env < gate] = 0.0
    return env.astype(np.float32)


def listening(loudness: np.ndarray, fps: float, seconds: float = 0.5) -> np.ndarray:
    """(S, T) in 0..1 from (S, T) loudness envelopes: for each singer the largest of the OTHER singers'
    loudness per frame, averaged over a centred ``seconds`` window."""
    loud = np.asarray(loudness, np.float64)
    out = np.zeros_like(loud)
    width = max(1, int(round(seconds * fps)))
    kernel = np.ones(width) / width
    for k in range(len(loud)):
        others = np.delete(loud, k, axis=0)
        if len(others):
            out[k] = np.convolve(others.max(axis=0), kernel, mode="same")
    return np.clip(out, 0.0, 1.0).astype(np.float32)
