"""Fast face detection for video strips: MTCNN (facenet-pytorch's weights), full pyramid on keyframes
only, its refinement stages on every frame.

* :class:`MtcnnDetector` ``detect()`` runs the whole MTCNN (P-Net pyramid, R-Net, O-Net) on a batch of
  equal-sized images (strips) and keeps, per image, the most probable face plus the number of
  confident faces (a strip showing two people is then visible to later stages). ``refine()`` runs
  only R-Net and O-Net on the square around a given box: MTCNN's own second and third stages, fed
  last frame's box instead of P-Net's proposals.
* :func:`track_strips` walks a video (chunks of frames), splits every frame into N vertical strips and
  measures every strip on every frame: ``refine`` around the box carried from the previous frame, and
  the full pyramid only where needed (keyframes, spaced further apart while tracking holds; frames
  where tracking loses the face; a periodic search on strips without a face, tracked backwards when
  it finds one).

Why it is fast: MTCNN's cost is its image pyramid (the naive loop, one ``detect()`` per half-frame at
full resolution, runs ~1-2 frames/s with one torch thread). R-Net + O-Net on one 24² and one 48²
crop cost a few ms. For the pyramid, asking only for faces >= ``min_face`` px cuts its largest levels,
and detecting on a strip downscaled by ``detect_scale`` makes each level cheaper; boxes are then
measured at full resolution by ``refine``. The nets run as channels-last TorchScript (see
:func:`_load_nets`); the pyramid is facenet-pytorch's ``detect_face`` with OpenCV resizing and numpy NMS
(its boxes may differ from facenet-pytorch's by a few pixels; they only say where ``refine`` looks).
"""
from __future__ import annotations

import contextlib
import copy
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import cv2
import numpy as np

from chorushead.core.device import pick_device
from chorushead.core.errors import MissingAsset
from chorushead.core.manifest import file_fingerprint

# Side in pixels of the smallest face, at detection resolution, that we ask the pyramid to find (20 =
# MTCNN's own default minimum). Small faces give coarse pyramid boxes, but the tracker only uses the
# pyramid to say WHERE a face is; refine() measures the box at full resolution. (Measured on the
# benchmark clip: 20 px vs 40 px, same IoU vs truth, the pyramid ~4x cheaper.)
DETECT_FACE_PX = 20.0
THRESHOLDS = (0.6, 0.7, 0.7)     # MTCNN's per-stage face probabilities (facenet-pytorch's defaults)
FACTOR = 0.709                   # MTCNN's pyramid step


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
        except ImportError as e:
            raise MissingAsset("torch", ["python environment"], "pip install torch") from e
        self.torch = torch
        self.device = pick_device(device)
        self.detect_scale = float(detect_scale)
        self._size_for(min_face)
        self.prob_threshold = float(prob_threshold)
        self.batch_size = max(1, int(batch_size))
        self.threads = int(threads) if self.device == "cpu" else 0
        self.pnet, self.rnet, self.onet = _load_nets(torch, self.device)
        self.seconds = 0.0      # time spent inside detect(), for the stage's metrics
        self.images = 0         # images (strips) passed through the full pyramid
        self.refined = 0        # boxes re-measured by refine() (R-Net + O-Net only)

    def _size_for(self, min_face: float) -> None:
        self.scale = self.detect_scale if self.detect_scale > 0 else min(1.0, DETECT_FACE_PX / float(min_face))
        self.min_face = float(min_face)
        self.min_size = max(12.0, self.min_face * self.scale)    # MTCNN's min_face_size, detection pixels

    def resized(self, min_face: float) -> "MtcnnDetector":
        """The same loaded nets, looking for faces of at least ``min_face`` px in the images given (a
        stage that sees videos of several sizes keeps one detector per worker, not one per size)."""
        other = copy.copy(self)
        other._size_for(min_face)
        return other

    @contextlib.contextmanager
    def _torch_threads(self):
        """torch's thread count set to ``self.threads`` (when given) for one call, then restored."""
        prev = self.torch.get_num_threads()
        if self.threads:
            self.torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            if self.threads:
                self.torch.set_num_threads(prev)

    def detect(self, images: Sequence[np.ndarray]) -> Faces:
        """Detect in equal-sized (h, w, 3) uint8 RGB images (views into frames are fine)."""
        t0 = time.perf_counter()
        n = len(images)
        out = Faces.empty((n,))
        out.detected[:] = True
        if n == 0:
            return out
        with self._torch_threads():
            self._detect(images, out)
        self.seconds += time.perf_counter() - t0
        self.images += n
        return out

    def detect_all(self, images: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Every confident face (probability >= ``prob_threshold``) in equal-sized RGB images, not only
        the best: per image, boxes (k, 5) x1 y1 x2 y2 prob and landmarks (k, 5, 2) (eyes, nose, mouth
        corners) in the images' own pixels, most probable first (the screen stage counts singers and
        measures every face's yaw)."""
        t0 = time.perf_counter()
        n = len(images)
        res: list[tuple[np.ndarray, np.ndarray]] = []
        if n == 0:
            return res
        h, w = images[0].shape[:2]
        dw, dh = max(1, round(w * self.scale)), max(1, round(h * self.scale))
        k = np.array([dw / w, dh / h], np.float32)
        with self._torch_threads():
            for b0 in range(0, n, self.batch_size):
                part = images[b0:b0 + self.batch_size]
                if (dw, dh) != (w, h):
                    part = [cv2.resize(im, (dw, dh), interpolation=cv2.INTER_AREA) for im in part]
                with self.torch.inference_mode():
                    found = self._pyramid(part)
                for boxes, points in found:
                    conf = boxes[:, 4] >= self.prob_threshold
                    b = boxes[conf].copy()
                    b[:, :4] /= np.concatenate([k, k])
                    res.append((b, points[conf] / k))
        self.seconds += time.perf_counter() - t0
        self.images += n
        return res

    def refine(self, images: Sequence[np.ndarray], boxes: np.ndarray) -> Faces:
        """MTCNN's second and third stages only: R-Net then O-Net on the square around ``boxes[i]``
        (x1, y1, x2, y2 in ``images[i]``'s pixels, e.g. last frame's face), at the images' full
        resolution. Returns O-Net's box, probability and landmarks; a face counts (``found``) when
        R-Net passes MTCNN's own threshold and O-Net reaches ``prob_threshold``. ``n_faces`` is 1
        where found (refine sees one face only). Images may differ in size.
        (O-Net alone on last frame's box was measured less accurate: it expects R-Net's boxes.)"""
        t0 = time.perf_counter()
        n = len(images)
        out = Faces.empty((n,))
        if n == 0:
            return out
        with self._torch_threads():
            self._refine(images, np.asarray(boxes, np.float32).reshape(n, 4), out)
        self.seconds += time.perf_counter() - t0
        self.refined += n
        return out

    def _net_input(self, images: Sequence[np.ndarray], sq: np.ndarray, size: int):
        """Crops of the square boxes ``sq`` resized to size² (INTER_AREA, as MTCNN's area resampling),
        as one (n, size, size, 3) uint8 tensor. Crop = pixels trunc(x1)-1 .. trunc(x2)-1 (as
        facenet-pytorch's pad()), zero-padded where the box leaves the image."""
        batch = np.zeros((len(images), size, size, 3), np.uint8)
        for i, (im, b) in enumerate(zip(images, sq)):
            h, w = im.shape[:2]
            x0, y0 = int(b[0]) - 1, int(b[1]) - 1
            x1, y1 = int(b[2]), int(b[3])
            if x1 - x0 < 2 or y1 - y0 < 2:
                continue
            if x0 >= 0 and y0 >= 0 and x1 <= w and y1 <= h:
                patch = im[y0:y1, x0:x1]
            else:
                patch = np.zeros((y1 - y0, x1 - x0, 3), np.uint8)
                cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
                if cx1 > cx0 and cy1 > cy0:
                    patch[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0] = im[cy0:cy1, cx0:cx1]
            cv2.resize(patch, (size, size), dst=batch[i], interpolation=cv2.INTER_AREA)
        return self.torch.from_numpy(batch).to(self.device)

    def _refine(self, images: Sequence[np.ndarray], boxes: np.ndarray, out: Faces) -> None:
        torch = self.torch
        with torch.inference_mode():
            sq = _square(boxes)
            reg, prob = self.rnet(self._net_input(images, sq, 24))
            r_ok = prob[:, 1].cpu().numpy() > THRESHOLDS[1]
            sq = _square(_regress(sq, reg.cpu().numpy()))
            reg, pts, prob = self.onet(self._net_input(images, sq, 48))
            reg, pts, p = reg.cpu().numpy(), pts.cpu().numpy(), prob[:, 1].cpu().numpy()
        # Landmarks relative to O-Net's input square, then its box regression (as detect_face does).
        wh = (sq[:, 2:4] - sq[:, 0:2] + 1)[:, None, :]
        lm = np.stack([pts[:, :5], pts[:, 5:]], axis=-1) * wh + sq[:, None, 0:2] - 1
        bx = _regress(sq, reg)
        ok = r_ok & (p >= self.prob_threshold) & np.isfinite(bx).all(axis=1)
        out.boxes[ok], out.landmarks[ok], out.probs[ok] = bx[ok], lm[ok], p[ok]
        out.n_faces[ok] = 1

    def _detect(self, images: Sequence[np.ndarray], out: Faces) -> None:
        n = len(images)
        h, w = images[0].shape[:2]
        dw, dh = max(1, round(w * self.scale)), max(1, round(h * self.scale))
        sx, sy = dw / w, dh / h
        for b0 in range(0, n, self.batch_size):
            part = images[b0:b0 + self.batch_size]
            if (dw, dh) != (w, h):   # INTER_AREA: proper low-pass for downscaling, and fast in OpenCV
                part = [cv2.resize(im, (dw, dh), interpolation=cv2.INTER_AREA) for im in part]
            with self.torch.inference_mode():
                found = self._pyramid(part)
            for i, (boxes, points) in enumerate(found):
                if not len(boxes):
                    continue
                conf = boxes[:, 4] >= self.prob_threshold
                out.n_faces[b0 + i] = int(conf.sum())
                if not conf[0]:           # sorted by probability: the first is the best
                    continue
                out.boxes[b0 + i] = boxes[0, :4] / np.array([sx, sy, sx, sy], np.float32)
                out.landmarks[b0 + i] = points[0] / np.array([sx, sy], np.float32)
                out.probs[b0 + i] = boxes[0, 4]

    def _pyramid(self, images: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """facenet-pytorch's detect_face (MTCNN's three stages) on equal-sized images, with OpenCV
        resizing and numpy NMS. Per image: boxes (k, 5) x1 y1 x2 y2 prob and landmarks (k, 5, 2), most
        probable first."""
        h, w = images[0].shape[:2]
        n = len(images)
        # Stage 1, P-Net on the image pyramid: one scale per factor 0.709, from min_size down to 12 px.
        scales, s, side = [], 12.0 / self.min_size, min(h, w) * 12.0 / self.min_size
        while side >= 12:
            scales.append(s)
            s, side = s * FACTOR, side * FACTOR
        cand: list[list[np.ndarray]] = [[] for _ in range(n)]
        for s in scales:
            size = (int(w * s + 1), int(h * s + 1))
            x = np.stack([cv2.resize(im, size, interpolation=cv2.INTER_AREA) for im in images])
            reg, prob = self.pnet(self.torch.from_numpy(x).to(self.device))
            reg, prob = reg.cpu().numpy(), prob[:, 1].cpu().numpy()
            for i in range(n):
                b = _proposals(reg[i], prob[i], s, THRESHOLDS[0])
                cand[i].append(b[_nms(b, 0.5)])
        boxes, idx = [], []
        for i in range(n):
            b = np.concatenate(cand[i]) if cand[i] else np.zeros((0, 9), np.float32)   # no scale: tiny image
            b = b[_nms(b, 0.7)]
            wh = np.concatenate([b[:, 2:4] - b[:, 0:2]] * 2, axis=1)     # P-Net's regression: no +1
            boxes.append(np.concatenate([_square(b[:, :4] + b[:, 5:9] * wh), b[:, 4:5]], axis=1))
            idx.append(np.full(len(b), i))
        boxes, idx = np.concatenate(boxes), np.concatenate(idx)
        # Stage 2, R-Net on the squares: keep > 0.7, NMS per image, regress, square.
        if len(boxes):
            reg, prob = self.rnet(self._net_input([images[i] for i in idx], boxes, 24))
            reg, p = reg.cpu().numpy(), prob[:, 1].cpu().numpy()
            ok = p > THRESHOLDS[1]
            boxes, idx, reg = np.concatenate([boxes[ok, :4], p[ok, None]], axis=1), idx[ok], reg[ok]
            keep = np.concatenate([np.flatnonzero(idx == i)[_nms(boxes[idx == i], 0.7)] for i in range(n)])
            boxes, idx, reg = boxes[keep], idx[keep], reg[keep]
            boxes[:, :4] = _square(_regress(boxes, reg))
        # Stage 3, O-Net: keep > 0.7, landmarks, regress, NMS by overlap over the smaller box.
        out = [(np.zeros((0, 5), np.float32), np.zeros((0, 5, 2), np.float32))] * n
        if len(boxes):
            reg, pts, prob = self.onet(self._net_input([images[i] for i in idx], boxes, 48))
            reg, pts, p = reg.cpu().numpy(), pts.cpu().numpy(), prob[:, 1].cpu().numpy()
            ok = p > THRESHOLDS[2]
            sq, idx, reg, pts, p = boxes[ok, :4], idx[ok], reg[ok], pts[ok], p[ok]
            wh = (sq[:, 2:4] - sq[:, 0:2] + 1)[:, None, :]
            lm = np.stack([pts[:, :5], pts[:, 5:]], axis=-1) * wh + sq[:, None, 0:2] - 1
            boxes = np.concatenate([_regress(sq, reg), p[:, None]], axis=1)
            for i in range(n):
                b, m = boxes[idx == i], lm[idx == i]
                keep = _nms(b, 0.7, smaller=True)
                keep = keep[np.argsort(-b[keep, 4], kind="stable")]
                out[i] = (b[keep].astype(np.float32), m[keep].astype(np.float32))
        return out


def _square(b: np.ndarray) -> np.ndarray:
    """MTCNN's rerec: the square with side max(w, h) around each box's centre."""
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    side = np.maximum(w, h)
    x0, y0 = b[:, 0] + (w - side) / 2, b[:, 1] + (h - side) / 2
    return np.stack([x0, y0, x0 + side, y0 + side], axis=1).astype(np.float32)


def _regress(b: np.ndarray, reg: np.ndarray) -> np.ndarray:
    """MTCNN's bbreg: move each edge by reg × (side + 1)."""
    wh = np.concatenate([b[:, 2:4] - b[:, 0:2] + 1] * 2, axis=1)
    return (b[:, :4] + reg[:, :4] * wh).astype(np.float32)


def _proposals(reg: np.ndarray, prob: np.ndarray, scale: float, thresh: float) -> np.ndarray:
    """P-Net's face cells (generateBoundingBox): 12 px windows at stride 2 of the scaled image, back in
    image pixels; rows x1 y1 x2 y2 prob reg(4)."""
    ys, xs = np.nonzero(prob >= thresh)
    q1 = np.floor((np.stack([xs, ys], 1) * 2 + 1) / scale)
    q2 = np.floor((np.stack([xs, ys], 1) * 2 + 12) / scale)
    return np.concatenate([q1, q2, prob[ys, xs, None], reg[:, ys, xs].T], axis=1).astype(np.float32)


def _nms(b: np.ndarray, thresh: float, smaller: bool = False) -> np.ndarray:
    """Greedy NMS over rows x1 y1 x2 y2 score: indices kept, best first. Overlap = IoU (torchvision's
    nms, as facenet-pytorch's first two stages); ``smaller``: intersection over the smaller box with
    +1 px sizes (its last stage, "Min")."""
    one = 1.0 if smaller else 0.0
    x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    area = (x2 - x1 + one) * (y2 - y1 + one)
    order, keep = np.argsort(-b[:, 4], kind="stable"), []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        iw = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + one)
        ih = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + one)
        inter = iw * ih
        over = inter / (np.minimum(area[i], area[rest]) if smaller else area[i] + area[rest] - inter)
        order = rest[over <= thresh]
    return np.array(keep, np.int64)


WEIGHT_FILES = ("pnet.pt", "rnet.pt", "onet.pt")
HOW = ("pip install --no-deps facenet-pytorch==2.6.0 (after torch/torchvision; it also needs requests and tqdm): "
       "the weights ship inside its wheel, nothing is downloaded")


def weights_dir() -> Path | None:
    """facenet-pytorch's data/ folder (pnet.pt, rnet.pt, onet.pt ship in its wheel), found without
    importing the package (its __init__ imports torchvision); None when it is not installed."""
    import importlib.util
    try:
        spec = importlib.util.find_spec("facenet_pytorch")
    except (ImportError, ValueError):
        return None
    return Path(spec.origin).parent / "data" if spec and spec.origin else None


def identity() -> dict:
    """The MTCNN weights that will run (for the crop stage's fingerprint). Never raises."""
    def make() -> dict:
        data = weights_dir()
        if data is None:
            return {"missing": "facenet_pytorch"}
        return {"mtcnn": [[f, file_fingerprint(data / f) if (data / f).is_file() else "missing"]
                          for f in WEIGHT_FILES]}
    try:
        return make()
    except Exception as e:  # noqa: BLE001 - set-up reports the real problem
        return {"error": f"{type(e).__name__}: {e}"[:300]}


def _load_nets(torch, device: str):
    """MTCNN's P-Net, R-Net and O-Net (the layers of facenet-pytorch 2.6.0, whose weight files they
    load), traced and frozen as TorchScript. Not facenet-pytorch's own modules: importing them imports
    torchvision and with it torch._dynamo (~1.3 s of CPU per process). TorchScript: each net runs as
    one C++ call that releases the GIL once, instead of ~15 Python-level ops each taking it back
    (which stalled behind the decoder and JPEG threads). Channels-last weights make every conv output
    NHWC, and torch's NHWC max-pool is ~10x faster on CPU than its NCHW one (half the nets' time).
    Each net takes (n, h, w, 3) uint8 RGB and normalises it as MTCNN does."""
    nn = torch.nn
    data = weights_dir()
    if data is None or not all((data / f).exists() for f in WEIGHT_FILES):
        raise MissingAsset("facenet-pytorch MTCNN weights (pnet/rnet/onet.pt)",
                           [str(data) if data else "facenet_pytorch/data in this python's site-packages"], HOW)

    class Net(nn.Module):
        def __init__(self, trunk, dense, heads):
            super().__init__()
            for name, m in trunk + dense + heads:
                self.add_module(name, m)
            self.trunk, self.dense, self.heads = ([k for k, _ in x] for x in (trunk, dense, heads))

        def forward(self, x):
            x = (x.permute(0, 3, 1, 2).float() - 127.5) * 0.0078125
            for k in self.trunk:
                x = self._modules[k](x)
            if self.dense:       # R/O-Net flatten as the Caffe originals: (n, w, h, c)
                x = x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)
                for k in self.dense:
                    x = self._modules[k](x)
            out = [self._modules[k](x) for k in self.heads]
            out[0] = torch.softmax(out[0], dim=1)        # the face/not-face head, returned last
            return tuple(out[1:]) + (out[0],)

    def convs(spec):        # (in, out, kernel, pool) -> conv + PReLU, then a max-pool where given
        layers = []
        for i, (cin, cout, k, pool) in enumerate(spec, 1):
            layers += [(f"conv{i}", nn.Conv2d(cin, cout, k)), (f"prelu{i}", nn.PReLU(cout))]
            if pool:
                layers.append((f"pool{i}", nn.MaxPool2d(pool[0], pool[1], ceil_mode=True)))
        return layers

    nets = {
        "pnet": (Net(convs([(3, 10, 3, (2, 2)), (10, 16, 3, None), (16, 32, 3, None)]), [],
                     [("conv4_1", nn.Conv2d(32, 2, 1)), ("conv4_2", nn.Conv2d(32, 4, 1))]), 12),
        "rnet": (Net(convs([(3, 28, 3, (3, 2)), (28, 48, 3, (3, 2)), (48, 64, 2, None)]),
                     [("dense4", nn.Linear(576, 128)), ("prelu4", nn.PReLU(128))],
                     [("dense5_1", nn.Linear(128, 2)), ("dense5_2", nn.Linear(128, 4))]), 24),
        "onet": (Net(convs([(3, 32, 3, (3, 2)), (32, 64, 3, (3, 2)), (64, 64, 3, (2, 2)), (64, 128, 2, None)]),
                     [("dense5", nn.Linear(1152, 256)), ("prelu5", nn.PReLU(256))],
                     [("dense6_1", nn.Linear(256, 2)), ("dense6_2", nn.Linear(256, 4)),
                      ("dense6_3", nn.Linear(256, 10))]), 48),
    }
    out = []
    for name, (net, side) in nets.items():
        net.load_state_dict(torch.load(data / f"{name}.pt", map_location="cpu", weights_only=True))
        net = net.eval().to(device=device, memory_format=torch.channels_last)
        x = torch.zeros(2, side, side, 3, dtype=torch.uint8, device=device)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")         # TracerWarnings: no data-dependent control flow
            out.append(torch.jit.freeze(torch.jit.trace(net, x, check_trace=False)))
    return out


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return float(inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter))


def strip_bounds(width: int, strips: int) -> list[tuple[int, int]]:
    """Equal strips of ``width // strips`` px (the last few columns are dropped when not divisible,
    so every strip has the same size and strips batch together)."""
    sw = width // strips
    return [(k * sw, (k + 1) * sw) for k in range(strips)]


@dataclass
class TrackParams:
    """When the full pyramid runs (see :func:`track_strips`)."""
    keyframe_every: int = 30        # shortest spacing of full detections on a tracked strip
    keyframe_max: int = 240         # longest spacing, reached while tracking holds
    search_every: int = 5           # full detection on a strip without a face every this many frames
    steady_prob: float = 0.99       # tracking "holds" from this O-Net probability on ...
    steady_drift: float = 0.1       # ... with the box centre moving less than this × side per frame
    steady_iou: float = 0.7         # ... and the keyframe's detection overlapping the tracked box this much


@dataclass
class _Strip:
    box: np.ndarray | None = None   # last measured box (strip pixels); None: no face being tracked
    n_faces: int = 0                # confident faces at the last full detection
    since_key: int = 0              # frames since the last full detection
    interval: int = 1               # current keyframe spacing
    steady: bool = True             # every tracked frame since the last keyframe held


def track_strips(chunks: Iterable[np.ndarray], detector: MtcnnDetector, strips: int = 2,
                 tp: TrackParams | None = None) -> Iterator[tuple[int, np.ndarray, Faces]]:
    """Yield ``(t, frame, faces)`` for every frame, in order; ``faces`` has shape (strips,), each
    strip's box, probability and landmarks MEASURED on that frame.

    chunks: (k, H, W, 3) uint8 frame chunks, e.g. from :func:`chorushead.core.media.iter_frames`.
    Per strip, the full MTCNN pyramid (``detector.detect``) runs only on keyframes; on every other
    frame R-Net and O-Net re-measure the face around the box carried from the previous frame
    (``detector.refine``). A full detection happens when:
      * the strip has no face: every ``search_every`` frames; when a face turns up, the frames held
        since the last search are tracked BACKWARDS from it, so its first frame is exact;
      * tracking loses the face (O-Net below the threshold): right on that frame;
      * the keyframe interval is due: it doubles (up to ``keyframe_max``) while tracking holds
        (high O-Net probability, small drift, keyframe detection agrees) and drops back to
        ``keyframe_every`` when it does not.
    Every box comes from ``refine`` at full resolution, the pyramid only says where to look, so
    keyframes and tracked frames share one box convention. ``detected`` marks frames where the
    pyramid ran. ``n_faces`` is counted by the pyramid and carried between keyframes.
    Output lags the input by ``search_every`` frames (the backtracking window).
    """
    tp = tp or TrackParams()
    lag = max(1, int(tp.search_every))
    state = [_Strip() for _ in range(strips)]
    held: list[tuple[int, np.ndarray, Faces]] = []     # frames not yet yielded, oldest first
    bounds: list[tuple[int, int]] = []
    t = 0

    def view(frame: np.ndarray, s: int) -> np.ndarray:
        return frame[:, bounds[s][0]:bounds[s][1]]

    def backtrack(s: int, box: np.ndarray) -> None:
        """Track strip ``s``'s new face back through the held frames where it had none."""
        for _, frame, faces in reversed(held[:-1]):
            if faces.found[s]:
                return
            got = detector.refine([view(frame, s)], box[None])
            if not got.found[0]:
                return
            faces.put(s, got, 0)
            faces.n_faces[s] = max(1, int(faces.n_faces[s]))
            box = got.boxes[0]

    def step(frame: np.ndarray) -> Faces:
        faces = Faces.empty((strips,))
        tracked = [s for s in range(strips) if state[s].box is not None]
        if tracked:
            got = detector.refine([view(frame, s) for s in tracked], np.stack([state[s].box for s in tracked]))
            for j, s in enumerate(tracked):
                st = state[s]
                if got.found[j]:
                    side = float(st.box[2] - st.box[0] + st.box[3] - st.box[1]) / 2
                    drift = float(np.abs((got.boxes[j, :2] + got.boxes[j, 2:]) / 2
                                         - (st.box[:2] + st.box[2:]) / 2).max()) / max(side, 1.0)
                    st.steady &= bool(got.probs[j] >= tp.steady_prob and drift <= tp.steady_drift)
                    faces.put(s, got, j)
                    faces.n_faces[s] = max(1, st.n_faces)
                    st.box = got.boxes[j]
                else:
                    st.box = None                       # lost: the pyramid looks on this very frame
                    st.steady = False
        due = []
        for s, st in enumerate(state):
            st.since_key += 1
            lost = s in tracked and st.box is None
            if lost or st.since_key >= st.interval:
                due.append(s)
        if not due:
            return faces
        found = detector.detect([view(frame, s) for s in due])
        hit = [j for j, s in enumerate(due) if found.found[j]]
        # The pyramid says where; R-Net/O-Net at full resolution measure (as on every other frame).
        fine = detector.refine([view(frame, due[j]) for j in hit], found.boxes[hit]) if hit else None
        for j, s in enumerate(due):
            st = state[s]
            was_tracking = s in tracked and faces.found[s]
            appeared = not (s in tracked)
            if j in hit:
                # Normally refine's measurement; the pyramid's own box where refine disagrees (rare).
                src, i = (fine, hit.index(j)) if fine.found[hit.index(j)] else (found, j)
                if was_tracking:
                    st.steady &= box_iou(faces.boxes[s], src.boxes[i]) >= tp.steady_iou
                faces.put(s, src, i)
                faces.n_faces[s] = max(1, int(found.n_faces[j]))
                st.box, st.n_faces = src.boxes[i], int(faces.n_faces[s])
            elif was_tracking:              # the pyramid (at detection scale) missed a face O-Net holds
                st.steady = False
                faces.n_faces[s] = max(1, int(found.n_faces[j]))
            else:
                faces.n_faces[s] = found.n_faces[j]
                st.box, st.n_faces = None, int(found.n_faces[j])
            faces.detected[s] = True            # after put(): the pyramid ran here either way
            # Spacing: a tracked face that held since the last keyframe earns a longer one.
            if st.box is None:
                st.interval = lag
            elif appeared or not st.steady:
                st.interval = max(1, int(tp.keyframe_every))
            else:
                st.interval = min(max(1, int(tp.keyframe_max)), st.interval * 2)
            st.since_key, st.steady = 0, True
        return faces

    for chunk in chunks:
        if not bounds:
            bounds = strip_bounds(chunk.shape[2], strips)
        for frame in chunk:
            had = [st.box is not None for st in state]
            faces = step(frame)
            held.append((t, frame, faces))
            for s in range(strips):
                if not had[s] and faces.found[s]:
                    backtrack(s, faces.boxes[s])
            t += 1
            while len(held) > lag:
                yield held.pop(0)
    yield from held
