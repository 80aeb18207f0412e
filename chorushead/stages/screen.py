"""screen: the paper's initial filtering (§3), automated. The authors picked by hand "chorus videos where
singers face forward with a fixed camera", with exactly two singers (MossFormer2 separates duets), at
1024² and 30 fps. This stage decides the same per video, cheaply, right after ingest, so a video that
does not fit costs nothing more: bgm_split, duet_split and crop need it (and vad, contiguity, fit...
follow them).

A rejected video gets a "skipped" record whose reason names every failing gate; the runner treats a
*gate* stage's skipped record (``Stage.gate``) as "this video stops here": the stages that need it
are not run for it (``runner.Plan.states``: blocked), nothing is an error, and the dataset card's funnel
shows the screen's reasons. A passing video gets a "done" record with what was measured. A gate hands
nothing downstream, so its record's fingerprint is left out of theirs: adding the screen to an existing
build, or changing a threshold, reruns the screen only (once per video) and keeps everything a passing
video had built.

The gates, each threshold a parameter (``[stages.screen]`` in the pipeline file says why each value):

1. **Resolution and frame rate**, from ingest's probe (``min_width``, ``min_height``, ``min_fps``, ``max_fps``).
2. **Shot cuts**: on frames decoded at ``sample_fps`` (ffmpeg's fps filter, downscaled to at most
   ``analysis_width``), the distance of consecutive sampled frames' hue-saturation histograms
   (1 - correlation, :func:`cut_score`); a cut is a score >= ``cut_threshold``. Why our own few lines
   and not the ``scenedetect`` package: (a) its wheel metadata pulls its own OpenCV variant
   (REFERENCES.md), which would replace the installed ``opencv-python-headless`` that crop and the
   sample generator use; (b) its ContentDetector's score (mean |Δ| of H, S, V between frames; default
   threshold 27) is made for consecutive native frames: between frames 1/3 s apart the demo's large,
   bobbing faces alone score 22-31 (a real cut 79), so it would cut the demo; its temporal logic
   (``min_scene_len``, AdaptiveDetector's rolling window) counts native frames too. A histogram ignores
   where things are: moving singers, a pan or a zoom score <= 0.03, a cut to another shot 1.06.
3. **Camera motion**: as a video stabiliser estimates it: Shi-Tomasi corners of the background (every
   face box, grown by ``face_margin``, masked out in both frames) tracked by pyramidal Lucas-Kanade to
   the next sampled frame, and a similarity transform fitted with RANSAC (:func:`background_motion`);
   the pair's motion per second is the larger of the pan (how far the frame's centre moves, in widths)
   and the zoom (|scale - 1|). Singers moving in front of a fixed camera leave the background still; a
   pan or zoom moves all of it. A pair moves when its motion exceeds ``max_motion``; the video fails
   when more than ``max_moving_fraction`` of its pairs move. (A featureless background shows no motion
   either way.)
4. **Singer count**: every confident MTCNN face (the project's backend, ``prob_threshold``, faces from
   ``min_face`` px of the full frame) per sampled frame; at least ``min_count_fraction`` of the frames
   must show exactly ``n_singers``.
5. **Frontality**: yaw from MTCNN's five landmarks: the nose's horizontal offset from the face's midline
   (between the eyes' and the mouth corners' midpoints, at the nose's height), in half inter-ocular
   distances ``a``; a head turned by θ puts it at ``a = (p/e)·tan θ`` (``p/e`` = nose depth over half the
   eye distance, :data:`NOSE_DEPTH`), so ``yaw = atan(a / NOSE_DEPTH)``. Per frame the most turned face
   counts; the video fails when the median over frames exceeds ``max_yaw_deg`` (a singer in profile).

``enabled = false`` records every video as passed without decoding anything (the screen off).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from chorushead.core import media
from chorushead.core.shapes import Metrics as MetricsShape, Outputs as OutputsShape
from chorushead.stages import ingest
from chorushead.stages.base import EXEC, Context, Result, Stage

VERSION = "1"
NOSE_DEPTH = 0.9   # nose tip depth in front of the eyes / half the inter-ocular distance (~28 mm / ~31.5 mm)


@dataclass
class Params:
    enabled: bool = True
    # 1. resolution and frame rate (ingest's probe)
    min_width: int = 256
    min_height: int = 256
    min_fps: float = 23.5
    max_fps: float = 61.0
    # decoding for the picture gates
    sample_fps: int = 3
    # faces (count, yaw, the motion gate's face boxes) on every face_every-th sampled frame: MTCNN's
    # full pyramid is most of the screen's time (3.3 of 6.0 s on a 30 s 1024² clip at every frame), and
    # counts and yaw are medians over the video, not per-frame events; other frames use the nearest boxes
    face_every: int = 3
    analysis_width: int = 512
    # 2. shot cuts
    cut_threshold: float = 0.3
    max_cuts: int = 0
    # 3. camera motion
    max_motion: float = 0.02
    max_moving_fraction: float = 0.25
    face_margin: float = 0.6
    # 4. singer count
    n_singers: int = 2
    min_count_fraction: float = 0.6
    min_face: float = 80.0
    prob_threshold: float = 0.9
    # 5. frontality
    max_yaw_deg: float = 25.0
    device: str = field(default="auto", metadata=EXEC)
    torch_threads: int = field(default=1, metadata=EXEC)

    def __post_init__(self):
        if self.sample_fps < 1:
            raise ValueError(f"sample_fps must be >= 1, got {self.sample_fps}")
        if self.face_every < 1:
            raise ValueError(f"face_every must be >= 1, got {self.face_every}")
        if self.n_singers < 1:
            raise ValueError(f"n_singers must be >= 1, got {self.n_singers}")


@dataclass
class Outputs(OutputsShape):
    passed: bool = True
    failed_gates: list[str] = field(default_factory=list)   # "resolution", "fps", "cuts", "motion", "singers", "yaw"
    cut_times: list[float] = field(default_factory=list)    # seconds of every detected cut (sampled-pair midpoints)
    moving_times: list[float] = field(default_factory=list)  # seconds of the sampled pairs whose background moved


@dataclass
class Metrics(MetricsShape):
    enabled: bool = True
    frames_sampled: int = 0
    width: int = 0
    height: int = 0
    source_fps: float = 0.0
    cuts: int = 0
    max_cut_score: float = 0.0            # largest cut score (1 - HS-histogram correlation, 0..2) between sampled frames
    median_motion: float = 0.0            # background motion per pair (max of pan, zoom) per second
    moving_fraction: float = 0.0          # pairs whose background moved more than max_motion
    face_counts: dict[str, int] = field(default_factory=dict)   # faces in a frame -> frames
    count_fraction: float = 0.0           # frames with exactly n_singers faces
    median_abs_yaw: float = 0.0           # degrees, over every face of every frame
    median_max_yaw: float = 0.0           # degrees, the most turned face per frame (the gate's number)
    seconds_decode: float = 0.0
    seconds_faces: float = 0.0


# ----------------------------------------------------------------------------- measurements
def cut_score(a: np.ndarray, b: np.ndarray) -> float:
    """How different two RGB uint8 frames' pictures are as a whole: 1 - the correlation of their
    hue-saturation histograms (16x16 bins, OpenCV's HISTCMP_CORREL), 0 (same colours) .. 2. Moving
    singers, a pan or a zoom keep a shot's colours; a cut to another shot changes them."""
    import cv2
    hists = []
    for x in (a, b):
        h = cv2.calcHist([cv2.cvtColor(x, cv2.COLOR_RGB2HSV)], [0, 1], None, [16, 16], [0, 180, 0, 256])
        hists.append(cv2.normalize(h, h))
    return float(1.0 - cv2.compareHist(hists[0], hists[1], cv2.HISTCMP_CORREL))


def face_mask(shape: tuple[int, int], boxes: np.ndarray, margin: float) -> np.ndarray:
    """True on the background: outside every face box grown by ``margin`` of its side on every side."""
    h, w = shape
    m = np.ones((h, w), bool)
    for x1, y1, x2, y2 in np.asarray(boxes, np.float64).reshape(-1, 4):
        g = margin * max(x2 - x1, y2 - y1)
        m[max(0, int(y1 - g)):min(h, int(math.ceil(y2 + 2 * g))), max(0, int(x1 - g)):min(w, int(math.ceil(x2 + g)))] = False
    return m


def background_motion(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> tuple[float, float, int]:
    """(pan, zoom, points) between two RGB frames, as video stabilisers estimate a camera's motion:
    corners of the background (``mask``; Shi-Tomasi) tracked by pyramidal Lucas-Kanade, and a
    similarity transform (shift, rotation, uniform scale) fitted with RANSAC, so what moves of the
    singers outside their masked boxes (hair, hands) is an outlier. pan = how far the frame's centre
    moves / width; zoom = |scale - 1|. (0, 0, n) when fewer than 8 points track (a featureless background
    shows no motion either way)."""
    import cv2
    ga, gb = (cv2.cvtColor(x, cv2.COLOR_RGB2GRAY) for x in (a, b))
    h, w = ga.shape
    pts = cv2.goodFeaturesToTrack(ga, maxCorners=300, qualityLevel=0.01, minDistance=max(3, w // 64),
                                  mask=mask.astype(np.uint8) * 255)
    if pts is None or len(pts) < 8:
        return 0.0, 0.0, 0 if pts is None else len(pts)
    nxt, st, _ = cv2.calcOpticalFlowPyrLK(ga, gb, pts, None, winSize=(21, 21), maxLevel=4)
    ok = st.ravel() == 1
    if ok.sum() < 8:
        return 0.0, 0.0, int(ok.sum())
    m, _inl = cv2.estimateAffinePartial2D(pts[ok], nxt[ok], method=cv2.RANSAC, ransacReprojThreshold=2.0)
    if m is None:
        return 0.0, 0.0, int(ok.sum())
    c = np.array([w / 2.0, h / 2.0])
    shift = m[:, :2] @ c + m[:, 2] - c
    scale = math.hypot(m[0, 0], m[1, 0])
    return float(np.hypot(*shift) / w), abs(scale - 1.0), int(ok.sum())


def yaw_deg(landmarks: np.ndarray) -> float:
    """Head yaw (degrees, signed: + = nose toward the image's right) from MTCNN's five landmarks (left
    eye, right eye, nose, left and right mouth corner, in image coordinates); see the module docstring."""
    le, re_, nose, ml, mr = np.asarray(landmarks, np.float64).reshape(5, 2)
    eyes, mouth = (le + re_) / 2, (ml + mr) / 2
    half_iod = max(abs(re_[0] - le[0]) / 2, 1e-6)
    span = mouth[1] - eyes[1]
    f = 0.5 if abs(span) < 1e-6 else float(np.clip((nose[1] - eyes[1]) / span, 0, 1))
    mid = eyes[0] + f * (mouth[0] - eyes[0])
    return math.degrees(math.atan((nose[0] - mid) / half_iod / NOSE_DEPTH))


def setup(p: Params):
    """MTCNN, once per worker (the runner holds it); None when the screen is off. Each video asks it
    for its own smallest face (:meth:`MtcnnDetector.resized`: the nets stay loaded)."""
    if not p.enabled:
        return None
    from chorushead.backends.mtcnn import MtcnnDetector
    return MtcnnDetector(min_face=p.min_face, prob_threshold=p.prob_threshold, device=p.device, batch_size=8,
                         threads=p.torch_threads)


def analysis_size(width: int, height: int, analysis_width: int) -> tuple[int, int]:
    """The decode size: at most ``analysis_width`` wide, aspect kept, even sides."""
    f = min(1.0, analysis_width / max(1, width))
    return max(2, int(round(width * f / 2)) * 2), max(2, int(round(height * f / 2)) * 2)


def measure(source: str, width: int, height: int, p: Params, det=None) -> dict:
    """Every picture gate's numbers for one video (frames at ``p.sample_fps``); ``det``: the worker's
    detector (:func:`setup`; made here when not given)."""
    import time
    aw, ah = analysis_size(width, height, p.analysis_width)
    f = aw / max(1, width)
    det = (det if det is not None else setup(p)).resized(max(12.0, p.min_face * f))
    t0 = time.perf_counter()
    frames = [fr for chunk in media.iter_frames(source, fps=p.sample_fps, scale=(aw, ah), chunk=64) for fr in chunk]
    t_decode = time.perf_counter() - t0
    t0 = time.perf_counter()
    probed = list(range(0, len(frames), p.face_every))
    found = det.detect_all([frames[i] for i in probed]) if frames else []
    t_faces = time.perf_counter() - t0
    counts = [len(b) for b, _ in found]
    yaws = [[abs(yaw_deg(lm)) for lm in lms] for _, lms in found]
    # every sampled frame's face boxes: its own where probed, else the nearest probed frame's
    faces = [found[min(range(len(probed)), key=lambda j: abs(probed[j] - i))] for i in range(len(frames))]
    scores, motions = [], []
    for i in range(1, len(frames)):
        scores.append(cut_score(frames[i - 1], frames[i]))
        mask = face_mask((ah, aw), np.concatenate([faces[i - 1][0][:, :4], faces[i][0][:, :4]]), p.face_margin)
        pan, zoom, _n = background_motion(frames[i - 1], frames[i], mask)
        motions.append(max(pan, zoom) * p.sample_fps)
    return {"frames": len(frames), "counts": counts, "yaws": yaws, "scores": scores, "motions": motions,
            "seconds_decode": t_decode, "seconds_faces": t_faces}


def decide(m: dict, p: Params, width: int, height: int, fps: float) -> tuple[list[str], list[str], Outputs, Metrics]:
    """(failed gate names, their reasons, outputs, metrics) from :func:`measure`'s numbers (``m`` None:
    the picture was not measured because the resolution or rate already failed)."""
    gates, reasons = [], []
    if width < p.min_width or height < p.min_height:
        gates.append("resolution")
        reasons.append(f"resolution {width}x{height} is under {p.min_width}x{p.min_height}")
    if not p.min_fps <= fps <= p.max_fps:
        gates.append("fps")
        reasons.append(f"frame rate {fps:g} fps is outside {p.min_fps:g}-{p.max_fps:g}")
    out = Outputs()
    met = Metrics(width=width, height=height, source_fps=round(float(fps), 3))
    if m is not None:
        dt = 1.0 / p.sample_fps
        scores, motions = np.asarray(m["scores"], float), np.asarray(m["motions"], float)
        cut_idx = np.flatnonzero(scores >= p.cut_threshold)
        out.cut_times = [round((i + 0.5) * dt, 2) for i in cut_idx]   # pair i: frames i, i+1
        moving = motions > p.max_motion
        out.moving_times = [round((i + 0.5) * dt, 2) for i in np.flatnonzero(moving)]
        counts = np.asarray(m["counts"], int)
        all_yaws = [y for ys in m["yaws"] for y in ys]
        max_yaws = [max(ys) for ys in m["yaws"] if ys]
        met.frames_sampled = m["frames"]
        met.cuts = len(cut_idx)
        met.max_cut_score = round(float(scores.max()), 2) if len(scores) else 0.0
        met.median_motion = round(float(np.median(motions)), 4) if len(motions) else 0.0
        met.moving_fraction = round(float(moving.mean()), 3) if len(motions) else 0.0
        met.face_counts = {str(k): int(n) for k, n in sorted(zip(*np.unique(counts, return_counts=True)))} \
            if len(counts) else {}
        met.count_fraction = round(float((counts == p.n_singers).mean()), 3) if len(counts) else 0.0
        met.median_abs_yaw = round(float(np.median(all_yaws)), 1) if all_yaws else 0.0
        met.median_max_yaw = round(float(np.median(max_yaws)), 1) if max_yaws else 0.0
        met.seconds_decode = round(m["seconds_decode"], 3)
        met.seconds_faces = round(m["seconds_faces"], 3)
        if met.cuts > p.max_cuts:
            gates.append("cuts")
            reasons.append(f"{met.cuts} shot cut(s) at {', '.join(f'{t:g}' for t in out.cut_times[:5])} s "
                           f"(histogram change >= {p.cut_threshold:g}; max_cuts={p.max_cuts})")
        if met.moving_fraction > p.max_moving_fraction:
            gates.append("motion")
            reasons.append(f"camera moves: background motion > {p.max_motion:g}/s in {met.moving_fraction:.0%} of "
                           f"sampled pairs (max {p.max_moving_fraction:.0%}; median {met.median_motion:g}/s)")
        if met.count_fraction < p.min_count_fraction:
            common = max(met.face_counts, key=lambda k: met.face_counts[k]) if met.face_counts else "0"
            gates.append("singers")
            reasons.append(f"{met.count_fraction:.0%} of sampled frames show exactly {p.n_singers} face(s), "
                           f"need {p.min_count_fraction:.0%} (most often {common})")
        if met.median_max_yaw > p.max_yaw_deg:
            gates.append("yaw")
            reasons.append(f"a singer faces away: median yaw {met.median_max_yaw:g} deg > {p.max_yaw_deg:g}")
    out.passed = not gates
    out.failed_gates = gates
    return gates, reasons, out, met


def process(ctx: Context, p: Params, model) -> Result:
    ing = ingest.Outputs.of(ctx.upstream["ingest"])
    if not p.enabled:
        return Result(outputs=Outputs(), metrics=Metrics(enabled=False, width=ing.width, height=ing.height,
                                                         source_fps=round(ing.source_fps, 3)))
    if ing.width == 0:   # an audio-only item (chorushead separate): nothing to screen
        return Result(outputs=Outputs(), metrics=Metrics(source_fps=round(ing.source_fps, 3)))
    gates, reasons, _, _ = decide(None, p, ing.width, ing.height, ing.source_fps)
    m = None if gates else measure(ing.source, ing.width, ing.height, p, model)
    gates, reasons, out, met = decide(m, p, ing.width, ing.height, ing.source_fps)
    if gates:
        return Result(status="skipped", reason="screened out: " + "; ".join(reasons), outputs=out, metrics=met)
    return Result(outputs=out, metrics=met)


STAGE = Stage(name="screen", version=VERSION, params=Params, outputs=Outputs, metrics=Metrics, process=process,
              setup=setup, needs=("ingest",), gate=True, preload=("torch",),
              description="the paper's initial filtering: resolution, fps, shot cuts, camera motion, "
                          "singer count, frontality (a failing video stops here)")
