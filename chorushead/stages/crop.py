"""crop: one square face crop per strip and frame, ready for EMOCA (paper §3).

Each frame of the trimmed range (vad's start_frame..end_frame on the pipeline's timeline) is split into
``strips`` equal vertical strips, one singer each. MTCNN measures the most probable face per strip on
EVERY frame (full pyramid on keyframes, R-Net + O-Net around last frame's box elsewhere, see
:mod:`chorushead.backends.mtcnn`), and we save

  strip{k}/{t:06d}.jpg   224×224 crop, t = frame index in the trimmed video (no file: no face)
  detections.npz         boxes (S,T,4) NaN where missing, probs (S,T) 0 where missing,
                         landmarks (S,T,5,2), n_faces (S,T), crop_boxes (S,T,4), detected (S,T)
                         (True = the full pyramid ran; False = tracked by R-Net/O-Net, still a
                         measured box), strip_x0 (S,), fps, start_frame
All coordinates are in STRIP pixels of the full-resolution frame (add strip_x0 for frame pixels).

The crop follows EMOCA's own test-time crop for detector boxes, so the fit stage feeds these files
straight to EMOCA without decoding the video again: side = (w + h) / 2, centre moved down by
0.12·side, side × 1.25, warped to 224×224. Pixels outside the strip are black (EMOCA pads with black
too), never the neighbouring singer's half.
"""
from __future__ import annotations

import queue
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from chorushead.core.errors import BadInput
from chorushead.core.shapes import Metrics as MetricsShape, Outputs as OutputsShape
from chorushead.stages import ingest, vad
from chorushead.stages.base import Context, Result, Stage


@dataclass
class Params:
    strips: int = 2                 # equal vertical strips per frame: one singer each
    min_face: float = 80.0          # smallest face side (px of the full frame) that must be found
    detect_scale: float = 0.0       # strip resize before the pyramid; 0 = auto (min_face lands at 20 px)
    keyframe_every: int = 30        # full MTCNN pyramid on a tracked face at least this often ...
    keyframe_max: int = 240         # ... spacing doubling up to this while tracking holds
    search_every: int = 5           # full pyramid on a strip without a face every k frames
    batch_size: int = 16            # strips per MTCNN call
    prob_threshold: float = 0.9     # a face counts from this MTCNN probability on
    device: str = "auto"            # auto | cpu | cuda | cuda:N
    torch_threads: int = 1          # CPU only; 0 = torch's default. 1 leaves a core to ffmpeg's decoder
    jpeg_quality: int = 95
    crop_size: int = 224            # EMOCA's input size
    crop_scale: float = 1.25        # EMOCA's scaling_factor
    crop_shift: float = 0.12        # EMOCA's downward centre shift for detector boxes, × side


@dataclass
class Outputs(OutputsShape):
    detections: str                 # detections.npz (see module doc)
    strips: list[str]               # strip{k} folders of {t:06d}.jpg crops, t = frame in the trimmed video
    n_strips: int
    frames: int                     # frames decoded (may fall short of vad's range for a truncated file)
    start_frame: int                # vad's start_frame: crop t is frame start_frame + t of the timeline
    crop_size: int


@dataclass
class Metrics(MetricsShape):
    frames: int
    frames_expected: int
    faces_per_strip: list[int]      # frames with a face, per strip
    multi_face_frames: int
    detected_fraction: float        # strip-frames the full pyramid ran on (the rest: R-Net/O-Net tracking)
    decode_wait_s: float            # decoding not hidden behind MTCNN
    detect_s: float
    save_s: float                   # crop warps + JPEG writes (a writer thread, overlapping detection)
    seconds: float
    frames_per_s: float
    detector_images: int


def setup(p: Params):
    """One detector per worker process (loads MTCNN's three small networks)."""
    from chorushead.backends.mtcnn import MtcnnDetector
    # torch_threads: under load (ffmpeg decoding beside us, other workers) torch's 2 OpenMP threads
    # spin against each other: measured up to 8x slower per strip than one thread on a 2-core machine.
    return MtcnnDetector(min_face=p.min_face, detect_scale=p.detect_scale, prob_threshold=p.prob_threshold,
                         device=p.device, batch_size=p.batch_size, threads=p.torch_threads)


def emoca_crop_box(box: np.ndarray, scale: float = 1.25, shift: float = 0.12) -> np.ndarray:
    """EMOCA's square crop around a detector box (x1, y1, x2, y2); works on (..., 4) arrays."""
    box = np.asarray(box, np.float64)
    side = ((box[..., 2] - box[..., 0]) + (box[..., 3] - box[..., 1])) / 2
    cx = (box[..., 0] + box[..., 2]) / 2
    cy = (box[..., 1] + box[..., 3]) / 2 + shift * side
    half = np.floor(side * scale) / 2          # EMOCA: size = int(old_size * scale)
    return np.stack([cx - half, cy - half, cx + half, cy + half], axis=-1)


def warp_crop(image: np.ndarray, crop_box: np.ndarray, size: int = 224) -> np.ndarray:
    """Warp the square ``crop_box`` of ``image`` to size×size: its corners map to 0 and size-1, as in
    EMOCA's similarity transform (src square -> DST_PTS (0,0), (0,size-1), (size-1,0)). Black outside."""
    x1, y1, x2, _ = (float(v) for v in crop_box)
    a = (size - 1) / (x2 - x1)
    m = np.array([[a, 0, -a * x1], [0, a, -a * y1]], np.float64)
    return cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))


class _Prefetch:
    """Pull chunks from a generator in a thread, so ffmpeg decodes while MTCNN runs (reading a pipe
    releases the GIL). ``wait_s`` = time the consumer sat idle waiting for frames."""

    def __init__(self, it: Iterator[np.ndarray], depth: int = 2):
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.wait_s = 0.0
        self.thread = threading.Thread(target=self._run, args=(it,), daemon=True)
        self.thread.start()

    def _run(self, it):
        try:
            for x in it:
                self.q.put(("item", x))
                if self.stop.is_set():
                    break
            self.q.put(("end", None))
        except BaseException as e:    # re-raised in the consumer (e.g. BadInput from the decoder)
            self.q.put(("error", e))
        finally:
            it.close()                # stops ffmpeg when the consumer quit early

    def __iter__(self):
        while True:
            t0 = time.perf_counter()
            kind, x = self.q.get()
            self.wait_s += time.perf_counter() - t0
            if kind == "end":
                return
            if kind == "error":
                raise x
            yield x

    def close(self):
        """Let the producer finish (it may be blocked on a full queue) and wait for it."""
        self.stop.set()
        while self.thread.is_alive():
            try:
                self.q.get(timeout=0.1)
            except queue.Empty:
                pass
        self.thread.join()


class _Writer:
    """Warp + JPEG-encode + write the crops in a thread (OpenCV and file writes release the GIL), so
    saving overlaps MTCNN on the main thread. ``busy_s`` = time spent saving; the first error is
    re-raised by :meth:`close`. The queue bounds how many frames (views into decode chunks) wait."""

    def __init__(self, p: Params, dirs: list[Path], depth: int = 32):
        self.p, self.dirs = p, dirs
        self.jpeg = [int(cv2.IMWRITE_JPEG_QUALITY), int(p.jpeg_quality)]
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self.busy_s = 0.0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def put(self, t: int, strips: list[tuple[int, np.ndarray, np.ndarray]]) -> None:
        """Queue frame ``t``'s crops: (strip index, strip view, crop box) each."""
        if self.error is not None:
            raise self.error
        self.q.put((t, strips))

    def _run(self) -> None:
        while (job := self.q.get()) is not None:
            if self.error is not None:
                continue                    # drain after a failure; close() reports it
            t0 = time.perf_counter()
            try:
                t, strips = job
                for k, view, cb in strips:
                    crop = warp_crop(view, cb, self.p.crop_size)
                    ok = cv2.imwrite(str(self.dirs[k] / f"{t:06d}.jpg"), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR),
                                     self.jpeg)
                    if not ok:
                        raise OSError(f"could not write {self.dirs[k] / f'{t:06d}.jpg'} (disk full?)")
            except BaseException as e:
                self.error = e
            self.busy_s += time.perf_counter() - t0

    def close(self) -> None:
        self.q.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


def process(ctx: Context, p: Params, detector) -> Result:
    from chorushead.backends.mtcnn import TrackParams, strip_bounds, track_strips
    from chorushead.core.media import iter_frames
    from tqdm import tqdm

    ing = ingest.Outputs.of(ctx.upstream["ingest"])
    trim = vad.Outputs.of(ctx.upstream["vad"])
    source, start, end = ing.source, trim.start_frame, trim.end_frame
    if end <= start:
        raise BadInput(f"empty trimmed range [{start}, {end}) from vad: nothing to crop")
    if p.strips < 1:
        raise BadInput(f"crop.strips must be >= 1, got {p.strips}")
    n = end - start
    S = p.strips
    t_start = time.perf_counter()
    det_s0, det_n0 = detector.seconds, detector.images
    tp = TrackParams(keyframe_every=p.keyframe_every, keyframe_max=p.keyframe_max, search_every=p.search_every)

    out_dir = Path(ctx.tmp)
    strip_dirs = [out_dir / f"strip{k}" for k in range(S)]
    for d in strip_dirs:
        d.mkdir(parents=True, exist_ok=True)

    boxes = np.full((S, n, 4), np.nan, np.float32)
    crop_boxes = np.full((S, n, 4), np.nan, np.float32)
    landmarks = np.full((S, n, 5, 2), np.nan, np.float32)
    probs = np.zeros((S, n), np.float32)
    n_faces = np.zeros((S, n), np.int16)
    detected = np.zeros((S, n), bool)
    bounds: list[tuple[int, int]] = []

    # Small decode chunks (4 frames = 12 MB at 1024², 1 frame at 4K): chunks of ~64 MB were each a
    # fresh mmap whose pages the kernel zeroes and faults in (measured 1.5 ms of system time per 1024²
    # frame); under glibc's 32 MB mmap threshold they are reused from the heap. The prefetch queue
    # holds 3 chunks ahead.
    w, h = ing.width, ing.height
    chunk = max(1, min(4, (24 << 20) // (w * h * 3))) if w and h else 4
    # One OpenCV thread while the stage runs (a process-wide setting with pip's pthreads build;
    # restored after): its parallel_for on our small images and the one colour conversion per frame
    # cost more in hand-offs than it gained on 2 shared cores.
    cv_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    # convert="opencv": ffmpeg's own YUV->RGB cost more CPU than OpenCV's (in the prefetch thread).
    frames = _Prefetch(iter_frames(source, fps=ctx.fps, start_frame=start, n_frames=n, chunk=chunk,
                                   convert="opencv"), depth=3)
    bar = tqdm(total=n, desc=f"crop {ctx.item.id}", unit="frame", leave=False, disable=not sys.stderr.isatty())
    writer = _Writer(p, strip_dirs)
    count = 0
    try:
        for t, frame, faces in track_strips(frames, detector, S, tp):
            if t >= n:      # the decoder gave more than asked for (should not happen with trim)
                break
            if not bounds:
                bounds = strip_bounds(frame.shape[1], S)
                if bounds[0][1] - bounds[0][0] < 16:
                    raise BadInput(f"frame width {frame.shape[1]} is too narrow for {S} strips")
            boxes[:, t], probs[:, t], landmarks[:, t] = faces.boxes, faces.probs, faces.landmarks
            n_faces[:, t], detected[:, t] = faces.n_faces, faces.detected
            crop_boxes[:, t] = emoca_crop_box(faces.boxes, p.crop_scale, p.crop_shift)    # NaN: no face
            writer.put(t, [(k, frame[:, bounds[k][0]:bounds[k][1]], crop_boxes[k, t])
                           for k in range(S) if faces.found[k]])
            count = t + 1
            bar.update(1)
    finally:
        frames.close()
        bar.close()
        try:
            writer.close()          # raises the writer's error (disk full...)
        finally:
            cv2.setNumThreads(cv_threads)
    if count == 0:
        raise BadInput(f"{Path(source).name}: decoding frames {start}..{end} produced no frames")

    # A decoder that stops early (truncated file) leaves T < end - start: keep what we have.
    T = count
    np.savez(out_dir / "detections.npz", boxes=boxes[:, :T], probs=probs[:, :T], landmarks=landmarks[:, :T],
             n_faces=n_faces[:, :T], crop_boxes=crop_boxes[:, :T], detected=detected[:, :T],
             strip_x0=np.array([b[0] for b in bounds], np.int32), strip_width=np.int32(bounds[0][1] - bounds[0][0]),
             fps=np.int32(ctx.fps), start_frame=np.int32(start), crop_size=np.int32(p.crop_size))

    total = time.perf_counter() - t_start
    found = (probs[:, :T] > 0).sum(axis=1)
    metrics = Metrics(
        frames=T, frames_expected=n, faces_per_strip=[int(found[k]) for k in range(S)],
        multi_face_frames=int((n_faces[:, :T] >= 2).sum()),
        detected_fraction=round(float(detected[:, :T].mean()), 3),
        decode_wait_s=round(frames.wait_s, 2), detect_s=round(detector.seconds - det_s0, 2),
        save_s=round(writer.busy_s, 2), seconds=round(total, 2), frames_per_s=round(T / max(total, 1e-9), 1),
        detector_images=int(detector.images - det_n0))
    outputs = Outputs(detections="detections.npz", strips=[f"strip{k}" for k in range(S)], n_strips=S,
                      frames=T, start_frame=start, crop_size=p.crop_size)
    return Result(outputs=outputs, metrics=metrics)


STAGE = Stage(name="crop", version="3", params=Params, outputs=Outputs, metrics=Metrics, setup=setup, process=process,
              needs=("ingest", "vad"), gpu=True, preload=("torch",),
              description="MTCNN per strip and frame (pyramid on keyframes, R/O-Net tracking between); "
                          "EMOCA-style 224×224 face crops + detections.npz")
