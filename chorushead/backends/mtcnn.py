"""Fast face detection for video strips: facenet-pytorch's MTCNN, batched, on keyframes.

Two pieces:

* :class:`MtcnnDetector` runs MTCNN on a batch of equal-sized images (strips) and keeps, per image,
  the most probable face plus the number of confident faces (a strip showing two people is then
  visible to later stages).
* :func:`track_strips` walks a video (chunks of frames), splits every frame into N vertical strips
  and decides WHERE the detector runs: on keyframes (every k-th frame), and on the frames between two
  keyframes only when those keyframes disagree (a face appears/vanishes, jumps, or the face count
  changes). Where they agree, boxes and landmarks are linearly interpolated.

Why it is fast: MTCNN's cost is its image pyramid (the naive loop, one ``detect()`` per half-frame at
full resolution, runs ~8-9 frames/s on 2 CPU cores; measured levers: ``min_face`` 40 -> 2x, strips
downscaled /2 -> 2x, keyframes every 3 frames -> 3x, up to 13-15x combined).
The pyramid starts at 12 / min_face_size, so asking only for faces >= ``min_face`` px cuts the
largest (most expensive) levels; detecting on a strip downscaled by ``detect_scale`` makes each level's
resampling cheaper; batching shares one network call per pyramid level across many strips; keyframes
skip most frames outright. Faces in sung video move smoothly, so the skipped frames cost little accuracy.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import cv2
import numpy as np

from chorushead.core.errors import MissingAsset

# Side in pixels of the smallest face, at detection resolution, that we ask MTCNN to find. MTCNN's
# first network sees 12 px windows; below ~40 px its boxes get coarse (measured: strips downscaled /4
# ran 3x faster but boxes shifted by a steady few pixels and accuracy dropped).
DETECT_FACE_PX = 40.0


@dataclass
class Faces:
    """Detections for a set of images, arrays share a leading shape (e.g. (N,) or (strips, T))."""
    boxes: np.ndarray       # (..., 4) float32 x1, y1, x2, y2 in the image's own pixels; NaN when no face
    probs: np.ndarray       # (...,) float32; 0 when no face
    landmarks: np.ndarray   # (..., 5, 2) float32: eyes, nose, mouth corners; NaN when no face
    n_faces: np.ndarray     # (...,) int16: faces with prob >= threshold in the image
    detected: np.ndarray    # (...,) bool: the detector ran on it (False = interpolated)

    @classmethod
    def empty(cls, shape: tuple[int, ...]) -> "Faces":
        return cls(boxes=np.full(shape + (4,), np.nan, np.float32), probs=np.zeros(shape, np.float32),
                   landmarks=np.full(shape + (5, 2), np.nan, np.float32), n_faces=np.zeros(shape, np.int16),
                   detected=np.zeros(shape, bool))

    @property
    def found(self) -> np.ndarray:
        return self.probs > 0

    def put(self, idx, other: "Faces", j) -> None:
        """self[idx] = other[j] for every field."""
        for name in ("boxes", "probs", "landmarks", "n_faces", "detected"):
            getattr(self, name)[idx] = getattr(other, name)[j]


def resolve_device(device: str) -> str:
    import torch
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class MtcnnDetector:
    """MTCNN over batches of equal-sized RGB uint8 images; one best face per image.

    min_face: smallest face side (pixels of the images you pass) that must be found.
    detect_scale: images are resized by this before detection; 0 = auto, so that ``min_face`` lands
        at DETECT_FACE_PX (never upscales). Boxes and landmarks come back in the original pixels.
    prob_threshold: a face counts (for the best face and for ``n_faces``) from this probability on.
    threads: torch CPU threads while detecting (0 = leave torch's setting). Set only around our calls
        and restored after, so other code in the worker process keeps its own setting.
    """

    def __init__(self, min_face: float = 80.0, detect_scale: float = 0.0, prob_threshold: float = 0.9,
                 device: str = "auto", batch_size: int = 16, threads: int = 0):
        try:
            import torch
            from facenet_pytorch import MTCNN
        except ImportError as e:
            raise MissingAsset("facenet-pytorch (MTCNN)", ["python environment"],
                               "pip install torch torchvision, then pip install --no-deps facenet-pytorch==2.6.0 "
                               "requests tqdm") from e
        self.torch = torch
        self.device = resolve_device(device)
        self.scale = float(detect_scale) if detect_scale > 0 else min(1.0, DETECT_FACE_PX / float(min_face))
        self.min_face = float(min_face)
        self.prob_threshold = float(prob_threshold)
        self.batch_size = max(1, int(batch_size))
        self.threads = int(threads) if self.device == "cpu" else 0
        # keep_all: we want every face, to count them; select_largest=False sorts faces by probability.
        self.mtcnn = MTCNN(min_face_size=max(12.0, self.min_face * self.scale), keep_all=True,
                           select_largest=False, post_process=False, device=self.device)
        self.mtcnn.eval()
        self.seconds = 0.0      # time spent inside detect(), for the stage's metrics
        self.images = 0         # images (strips) passed through the detector

    def detect(self, images: Sequence[np.ndarray]) -> Faces:
        """Detect in equal-sized (h, w, 3) uint8 RGB images (views into frames are fine)."""
        t0 = time.perf_counter()
        n = len(images)
        out = Faces.empty((n,))
        out.detected[:] = True
        if n == 0:
            return out
        prev_threads = self.torch.get_num_threads()
        if self.threads:
            self.torch.set_num_threads(self.threads)
        try:
            self._detect(images, out)
        finally:
            if self.threads:
                self.torch.set_num_threads(prev_threads)
        self.seconds += time.perf_counter() - t0
        self.images += n
        return out

    def _detect(self, images: Sequence[np.ndarray], out: Faces) -> None:
        n = len(images)
        h, w = images[0].shape[:2]
        dw, dh = max(1, round(w * self.scale)), max(1, round(h * self.scale))
        sx, sy = dw / w, dh / h
        for b0 in range(0, n, self.batch_size):
            part = images[b0:b0 + self.batch_size]
            if (dw, dh) == (w, h):
                batch = np.stack(part)
            else:   # INTER_AREA: proper low-pass for downscaling, and fast in OpenCV
                batch = np.stack([cv2.resize(im, (dw, dh), interpolation=cv2.INTER_AREA) for im in part])
            x = self.torch.from_numpy(batch).to(self.device)
            with self.torch.inference_mode():
                boxes, probs, points = self.mtcnn.detect(x, landmarks=True)
            for i in range(len(part)):
                if boxes[i] is None:
                    continue
                p = np.asarray(probs[i], np.float32)
                conf = p >= self.prob_threshold
                out.n_faces[b0 + i] = int(conf.sum())
                if not conf[0]:           # sorted by probability: the first is the best
                    continue
                bx = np.asarray(boxes[i][0], np.float32)
                out.boxes[b0 + i] = bx / np.array([sx, sy, sx, sy], np.float32)
                out.landmarks[b0 + i] = np.asarray(points[i][0], np.float32) / np.array([sx, sy], np.float32)
                out.probs[b0 + i] = p[0]


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return float(inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter))


def _agree(a: Faces, ia, b: Faces, ib, min_iou: float) -> bool:
    """May frames between keyframes a and b be interpolated? Same face count, and either no face in
    both or the best faces overlap enough (same person, moving smoothly)."""
    if a.n_faces[ia] != b.n_faces[ib] or a.found[ia] != b.found[ib]:
        return False
    return not a.found[ia] or box_iou(a.boxes[ia], b.boxes[ib]) >= min_iou


def strip_bounds(width: int, strips: int) -> list[tuple[int, int]]:
    """Equal strips of ``width // strips`` px (the last few columns are dropped when not divisible,
    so every strip has the same size and strips batch together)."""
    sw = width // strips
    return [(k * sw, (k + 1) * sw) for k in range(strips)]


def track_strips(chunks: Iterable[np.ndarray], detector: MtcnnDetector, strips: int = 2,
                 keyframe_every: int = 5, agree_iou: float = 0.5) -> Iterator[tuple[int, np.ndarray, Faces]]:
    """Yield ``(t, frame, faces)`` for every frame, in order; ``faces`` has shape (strips,).

    chunks: (k, H, W, 3) uint8 frame chunks, e.g. from :func:`chorushead.core.media.iter_frames`.
    Keyframes are t % keyframe_every == 0 and the last frame. Frames are held until the next keyframe
    is seen, so memory is about one decode chunk plus ``keyframe_every`` frames.
    """
    k = max(1, int(keyframe_every))
    pending: list[np.ndarray] = []     # frames after the last resolved keyframe
    t_next = 0                         # global index of pending[0]
    last: Faces | None = None          # faces (strips,) of the last resolved keyframe, at t_next - 1
    bounds: list[tuple[int, int]] = []

    def detect(items: list[tuple[int, int]]) -> Faces:
        """Detect strips given as (pending index, strip)."""
        return detector.detect([pending[i][:, bounds[s][0]:bounds[s][1]] for i, s in items])

    def resolve(final: bool) -> Iterator[tuple[int, np.ndarray, Faces]]:
        nonlocal pending, t_next, last
        n = len(pending)
        keys = [i for i in range(n) if (t_next + i) % k == 0]
        if final and n and (not keys or keys[-1] != n - 1):
            keys.append(n - 1)
        if not keys:
            return
        faces = Faces.empty((strips, keys[-1] + 1))
        items = [(i, s) for i in keys for s in range(strips)]
        found = detect(items)
        for j, (i, s) in enumerate(items):
            faces.put((s, i), found, j)
        # Frames between consecutive keyframes; the first span starts at the last resolved keyframe (-1).
        spans = [(-1, keys[0])] if last is not None else []
        spans += list(zip(keys[:-1], keys[1:]))
        redo: list[tuple[int, int]] = []
        for a, b in spans:
            if b - a < 2:
                continue
            for s in range(strips):
                src, si = (last, s) if a < 0 else (faces, (s, a))
                if _agree(src, si, faces, (s, b), agree_iou):
                    for i in range(a + 1, b):
                        w = (i - a) / (b - a)
                        faces.boxes[s, i] = src.boxes[si] + w * (faces.boxes[s, b] - src.boxes[si])
                        faces.landmarks[s, i] = src.landmarks[si] + w * (faces.landmarks[s, b] - src.landmarks[si])
                        faces.probs[s, i] = min(src.probs[si], faces.probs[s, b])
                        faces.n_faces[s, i] = faces.n_faces[s, b]
                else:
                    redo += [(i, s) for i in range(a + 1, b)]
        if redo:
            again = detect(redo)
            for j, (i, s) in enumerate(redo):
                faces.put((s, i), again, j)
        end = keys[-1] + 1
        for i in range(end):
            f = Faces.empty((strips,))
            f.put(slice(None), faces, (slice(None), i))
            yield t_next + i, pending[i], f
        last = Faces.empty((strips,))
        last.put(slice(None), faces, (slice(None), end - 1))
        pending = pending[end:]
        t_next += end

    for chunk in chunks:
        if not bounds:
            bounds = strip_bounds(chunk.shape[2], strips)
        pending.extend(chunk)
        yield from resolve(final=False)
    yield from resolve(final=True)
