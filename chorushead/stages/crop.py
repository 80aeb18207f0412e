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

Resume inside a long video: the range is cropped in chunks of ``chunk_seconds``, each from a clean
detector state (full pyramid on its first frame), so a chunk's result depends on its frames only.
Finished chunks are committed (fsynced, renamed) under ``<item>/.partial-crop/`` keyed on the
record's fingerprint; a rerun after a kill redoes only the unfinished chunk(s) and writes the same
bytes as an uninterrupted run. The frames still to do are decoded by one ffmpeg that seeks to the
first of them (:func:`chorushead.core.media.iter_frames_from`: the same frames as a decode from the
start), so chunking costs no decode restarts.
"""
from __future__ import annotations

import json
import os
import queue
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from chorushead.core.errors import BadInput
from chorushead.core.payloads import Detections
from chorushead.core.shapes import Metrics as MetricsShape, Outputs as OutputsShape
from chorushead.stages import ingest, vad
from chorushead.stages.base import EXEC, Context, Result, Stage


@dataclass
class Params:
    strips: int = 2                 # equal vertical strips per frame: one singer each
    min_face: float = 80.0          # smallest face side (px of the full frame) that must be found
    detect_scale: float = 0.0       # strip resize before the pyramid; 0 = auto (min_face lands at 20 px)
    keyframe_every: int = 30        # full MTCNN pyramid on a tracked face at least this often ...
    keyframe_max: int = 240         # ... spacing doubling up to this while tracking holds
    search_every: int = 5           # full pyramid on a strip without a face every k frames
    # strips per MTCNN call. Kept in the fingerprint: batching changes boxes in the last bits (measured:
    # up to 6e-5 px between batch 1, 4 and 16 on 24 strips), so it is not execution-only.
    batch_size: int = 16
    prob_threshold: float = 0.9     # a face counts from this MTCNN probability on
    # Execution only (base.EXEC, left out of the fingerprint): where and with how many threads the same
    # networks run. Float rounding may differ (threads 1 vs 2: up to 3e-5 px), but moving a build to a
    # GPU or giving it more threads must not redo it.
    device: str = field(default="auto", metadata=EXEC)       # auto | cpu | cuda | cuda:N
    torch_threads: int = field(default=1, metadata=EXEC)     # CPU only; 0 = torch's default. 1 leaves a core to ffmpeg's decoder
    jpeg_quality: int = 95
    crop_size: int = 224            # EMOCA's input size
    crop_scale: float = 1.25        # EMOCA's scaling_factor
    crop_shift: float = 0.12        # EMOCA's downward centre shift for detector boxes, × side
    chunk_seconds: float = 60.0     # progress kept per chunk of video (a kill redoes one); 0 = one chunk


@dataclass
class Outputs(OutputsShape):
    detections: str                 # detections.npz (see module doc)
    strips: list[str]               # strip{k} folders of {t:06d}.jpg crops, t = frame in the trimmed video
    n_strips: int
    frames: int                     # frames decoded (may fall short of vad's range for a truncated file)
    start_frame: int                # vad's start_frame: crop t is frame start_frame + t of the timeline
    crop_size: int

    def load(self, out: Path, fps: int | None = None) -> Detections:
        """The detections, checked against this record's frames and start frame and the build's ``fps``."""
        return Detections.load(Path(out) / self.detections, fps=fps, start=self.start_frame, frames=self.frames)


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


PARTIAL = ".partial-crop"      # <out>/items/<id>/.partial-crop/: finished chunks of an unfinished crop


def chunk_spans(n: int, fps: int, chunk_seconds: float) -> list[tuple[int, int]]:
    """[a, b) frame ranges (trimmed-video indices) of ``chunk_seconds`` each; <= 0: one chunk."""
    size = max(1, int(round(chunk_seconds * fps))) if chunk_seconds > 0 else max(1, n)
    return [(a, min(a + size, n)) for a in range(0, n, size)]


def process(ctx: Context, p: Params, detector) -> Result:
    """Crop the trimmed range chunk by chunk (``chunk_seconds``). Each chunk starts from a clean
    detector state (the full pyramid on its first frame), so its result depends on its frames only;
    a finished chunk is committed to ``<item>/.partial-crop/chunk_NNNNNN/`` (fsynced, renamed into
    place), keyed on ``ctx.fingerprint``. A rerun after a kill redoes only the chunks not committed,
    and the outputs are the same bytes an uninterrupted run writes. The chunks are then linked into
    ``ctx.tmp`` and the partial folder retired."""
    from chorushead.backends.mtcnn import TrackParams
    from chorushead.core.media import iter_frames_from, timeline_origin
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
    det_s0 = detector.seconds
    tp = TrackParams(keyframe_every=p.keyframe_every, keyframe_max=p.keyframe_max, search_every=p.search_every)
    spans = chunk_spans(n, ctx.fps, p.chunk_seconds)
    part = _open_partial(ctx.final.parent / PARTIAL, {
        "fingerprint": ctx.fingerprint, "start_frame": start, "frames": n, "fps": ctx.fps,
        "chunks": [list(s) for s in spans], "strips": S})
    done = {c: got for c in range(len(spans)) if (got := _load_chunk(part / _chunk_name(c))) is not None}

    # Small decode chunks (4 frames = 12 MB at 1024², 1 frame at 4K): chunks of ~64 MB were each a
    # fresh mmap whose pages the kernel zeroes and faults in (measured 1.5 ms of system time per 1024²
    # frame); under glibc's 32 MB mmap threshold they are reused from the heap. The prefetch queue
    # holds 3 chunks ahead.
    w, h = ing.width, ing.height
    dec_chunk = max(1, min(4, (24 << 20) // (w * h * 3))) if w and h else 4
    # One OpenCV thread while the stage runs (a process-wide setting with pip's pthreads build;
    # restored after): its parallel_for on our small images and the one colour conversion per frame
    # cost more in hand-offs than it gained on 2 shared cores.
    cv_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    bar = tqdm(total=n, desc=f"crop {ctx.item.id}", unit="frame", leave=False, disable=not sys.stderr.isatty())
    chunks: list[dict[str, np.ndarray]] = []
    wait_s = save_s = 0.0
    computed = 0
    try:
        origin = None
        c = 0
        while c < len(spans):
            if c in done:
                chunks.append(done[c])
                bar.update(int(done[c]["frames"]))
                if int(done[c]["frames"]) < spans[c][1] - spans[c][0]:
                    break                           # the video ended inside this chunk
                c += 1
                continue
            # The chunks still to do from here on, decoded by ONE ffmpeg (seeking to the first:
            # the same frames as a decode from the start, see iter_frames_from).
            e = c
            while e < len(spans) and e not in done:
                e += 1
            if origin is None:
                origin = timeline_origin(source, ctx.fps)
            # convert="opencv": ffmpeg's own YUV->RGB cost more CPU than OpenCV's (in the prefetch thread).
            frames = _Prefetch(iter_frames_from(source, fps=ctx.fps, start_frame=start + spans[c][0],
                                                n_frames=spans[e - 1][1] - spans[c][0], chunk=dec_chunk,
                                                convert="opencv", origin=origin), depth=3)
            cut = _Cut(iter(frames))
            short = False
            try:
                for j in range(c, e):
                    a, b = spans[j]
                    got, busy = _crop_chunk(cut.take(b - a), detector, p, tp, a, part, j, bar)
                    chunks.append(got)
                    computed += int(got["frames"])
                    save_s += busy
                    if int(got["frames"]) < b - a:
                        short = True
                        break
            finally:
                frames.close()
                wait_s += frames.wait_s
            if short:
                break
            c = e
    finally:
        bar.close()
        cv2.setNumThreads(cv_threads)

    T = sum(int(g["frames"]) for g in chunks)
    if T == 0:
        _retire(part)
        raise BadInput(f"{Path(source).name}: decoding frames {start}..{end} produced no frames")
    # A decoder that stops early (truncated file) leaves T < end - start: keep what we have.
    out_dir = Path(ctx.tmp)
    strip_dirs = [out_dir / f"strip{k}" for k in range(S)]
    for d in strip_dirs:
        d.mkdir(parents=True, exist_ok=True)
    for j in range(len(chunks)):
        for k in range(S):
            src = part / _chunk_name(j) / f"strip{k}"
            for f in sorted(src.iterdir()) if src.is_dir() else ():
                _link(f, strip_dirs[k] / f.name)
    cat = {key: np.concatenate([g[key] for g in chunks], axis=1)
           for key in ("boxes", "probs", "landmarks", "n_faces", "crop_boxes", "detected")}
    first = next(g for g in chunks if int(g["frames"]) > 0)
    Detections(**cat, strip_x0=first["strip_x0"], strip_width=first["strip_width"], fps=np.int32(ctx.fps),
               start_frame=np.int32(start), crop_size=np.int32(p.crop_size)).save(out_dir / "detections.npz")
    _retire(part)

    total = time.perf_counter() - t_start
    probs, n_faces, detected = cat["probs"], cat["n_faces"], cat["detected"]
    found = (probs > 0).sum(axis=1)
    metrics = Metrics(
        frames=T, frames_expected=n, faces_per_strip=[int(found[k]) for k in range(S)],
        multi_face_frames=int((n_faces >= 2).sum()),
        detected_fraction=round(float(detected.mean()), 3),
        decode_wait_s=round(wait_s, 2), detect_s=round(detector.seconds - det_s0, 2),
        save_s=round(save_s, 2), seconds=round(total, 2),
        frames_per_s=round(computed / max(total, 1e-9), 1),    # this run's frames (resumed chunks: none)
        detector_images=sum(int(g["detector_images"]) for g in chunks))
    outputs = Outputs(detections="detections.npz", strips=[f"strip{k}" for k in range(S)], n_strips=S,
                      frames=T, start_frame=start, crop_size=p.crop_size)
    return Result(outputs=outputs, metrics=metrics)


class _Cut:
    """Hands out consecutive frame ranges of one decode: ``take(m)`` yields the next m frames (fewer
    where the decode ends) in chunks, splitting a decode chunk that straddles the edge."""

    def __init__(self, it: Iterator[np.ndarray]):
        self.it = it
        self.rest: np.ndarray | None = None

    def take(self, m: int) -> Iterator[np.ndarray]:
        while m > 0:
            if self.rest is not None:
                x, self.rest = self.rest, None
            else:
                x = next(self.it, None)
                if x is None:
                    return
            if len(x) > m:
                x, self.rest = x[:m], x[m:]
            m -= len(x)
            yield x


def _crop_chunk(frames: Iterator[np.ndarray], detector, p: Params, tp, a: int, part: Path, c: int,
                bar) -> tuple[dict[str, np.ndarray], float]:
    """Track, measure and crop one chunk (trimmed-video frames a, a+1, ...) from a clean detector
    state, and commit it as ``part/chunk_{c}``. Returns its arrays and the writer's busy seconds."""
    from chorushead.backends.mtcnn import strip_bounds, track_strips
    S = p.strips
    work = part / f".tmp-{_chunk_name(c)}"
    strip_dirs = [work / f"strip{k}" for k in range(S)]
    for d in strip_dirs:
        d.mkdir(parents=True, exist_ok=True)
    m = 0
    boxes, crop_boxes, landmarks, probs, n_faces, detected = [], [], [], [], [], []
    bounds: list[tuple[int, int]] = []
    det_n0 = detector.images
    writer = _Writer(p, strip_dirs)
    try:
        for t, frame, faces in track_strips(frames, detector, S, tp):
            if not bounds:
                bounds = strip_bounds(frame.shape[1], S)
                if bounds[0][1] - bounds[0][0] < 16:
                    raise BadInput(f"frame width {frame.shape[1]} is too narrow for {S} strips")
            cb = emoca_crop_box(faces.boxes, p.crop_scale, p.crop_shift).astype(np.float32)   # NaN: no face
            boxes.append(faces.boxes)
            probs.append(faces.probs)
            landmarks.append(faces.landmarks)
            n_faces.append(faces.n_faces)
            detected.append(faces.detected)
            crop_boxes.append(cb)
            writer.put(a + t, [(k, frame[:, bounds[k][0]:bounds[k][1]], cb[k]) for k in range(S) if faces.found[k]])
            m = t + 1
            bar.update(1)
    finally:
        writer.close()          # raises the writer's error (disk full...)

    def stack(xs, dtype, shape):
        return np.stack(xs, axis=1).astype(dtype) if xs else np.zeros((S, 0) + shape, dtype)

    got = {"boxes": stack(boxes, np.float32, (4,)), "probs": stack(probs, np.float32, ()),
           "landmarks": stack(landmarks, np.float32, (5, 2)), "n_faces": stack(n_faces, np.int16, ()),
           "crop_boxes": stack(crop_boxes, np.float32, (4,)), "detected": stack(detected, bool, ()),
           "frames": np.int64(m), "detector_images": np.int64(detector.images - det_n0),
           "strip_x0": np.array([b[0] for b in bounds], np.int32),
           "strip_width": np.int32(bounds[0][1] - bounds[0][0] if bounds else 0)}
    np.savez(work / "chunk.npz", **got)
    _fsync_tree(work)
    os.replace(work, part / _chunk_name(c))
    _fsync_dir(part)
    return got, writer.busy_s


def _chunk_name(c: int) -> str:
    return f"chunk_{c:06d}"


def _open_partial(part: Path, key: dict) -> Path:
    """The partial folder for ``key`` (this run's fingerprint and chunk layout): kept when it was made
    for the same key, else (another fingerprint, no fingerprint, unreadable) deleted and made afresh.
    Half-written chunks (``.tmp-chunk_*``) are always deleted."""
    from chorushead.core.manifest import write_json_atomic
    try:
        same = bool(key["fingerprint"]) and json.loads((part / "key.json").read_text()) == key
    except (OSError, ValueError):
        same = False
    if same:
        for stale in part.glob(".tmp-chunk_*"):
            shutil.rmtree(stale, ignore_errors=True)
        return part
    if part.exists():
        shutil.rmtree(part)
    part.mkdir(parents=True)
    write_json_atomic(part / "key.json", key)
    _fsync_dir(part.parent)
    return part


def _load_chunk(d: Path) -> dict[str, np.ndarray] | None:
    """A committed chunk's arrays, or None (not there; unreadable: deleted, to be redone)."""
    if not d.is_dir():
        return None
    try:
        with np.load(d / "chunk.npz") as z:
            return {k: z[k] for k in z.files}
    except Exception:   # noqa: BLE001 - a torn or foreign folder (BadZipFile, EOFError...): redo it
        shutil.rmtree(d, ignore_errors=True)
        return None


def _retire(part: Path) -> None:
    """Delete the partial folder: renamed first (to a name the runner sweeps at its next task), so a
    kill mid-delete never leaves a keyed folder with chunks half gone."""
    if part.exists():
        gone = part.parent / f".old-crop-partial-{os.getpid()}"
        os.replace(part, gone)
        shutil.rmtree(gone, ignore_errors=True)


def _link(src: Path, dst: Path) -> None:
    """Hard link (the partial folder keeps its copy until it is retired); a copy where links fail."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _fsync_tree(root: Path) -> None:
    """Make every file and folder under ``root`` durable before the commit's rename (what
    core.manifest.write_atomic does for one file). On Linux one ``syncfs`` of root's filesystem: one
    journal commit for the whole chunk (an fsync per file measured 4 ms each on ext4: 15 s per 60 s
    chunk of 2 strips, as long as cropping it); elsewhere an fsync per file and folder."""
    if _syncfs(root):
        return
    for d, _, files in os.walk(root):
        for f in files:
            fd = os.open(os.path.join(d, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(d))


def _syncfs(path: Path) -> bool:
    """syncfs(2) of the filesystem holding ``path``; False where there is none (not Linux) or it failed."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        return getattr(libc, "syncfs", None) is not None and libc.syncfs(fd) == 0
    finally:
        os.close(fd)


def _fsync_dir(d: Path) -> None:
    """Make a rename or a new entry in folder ``d`` durable (best effort where folders cannot be opened)."""
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


STAGE = Stage(name="crop", version="4", params=Params, outputs=Outputs, metrics=Metrics, setup=setup, process=process,
              needs=("ingest", "screen", "vad"), gpu=True, preload=("torch",),
              # the MTCNN weight files that will run (facenet-pytorch's data/), found without importing torch
              identity=lambda p: __import__("chorushead.backends.mtcnn", fromlist=["identity"]).identity(),
              description="MTCNN per strip and frame (pyramid on keyframes, R/O-Net tracking between); "
                          "EMOCA-style 224×224 face crops + detections.npz")
