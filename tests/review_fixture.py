"""A build output folder for review tests, written directly (the real build needs EMOCA for `fit`).

Two videos. ``duetA`` has a real (generated) source video with audio and three segments whose flags
are known by construction; ``duetB`` has one segment and a source file that no longer exists (the
page must still work from the crops). Coefficients carry known jaw motion:

    duetA:0  [0, 240)    both singers sing (jaw swings 0..0.24 rad)        -> no flags
    duetA:1  [250, 410)  singer 1's jaw barely moves                       -> still_mouth, short
    duetA:2  [420, 570)  raw coefficients tremble; MTCNN unsure (p=0.93)   -> jitter, low_detection, short
    duetB:0  [0, 180)    fine motion, but assign says low confidence       -> low_assign, short

Expected suspicion order: duetA:2, duetA:1, duetB:0, duetA:0.

Segment frames above are crop frames (the trimmed timeline); vad trims ``VAD_START`` frames off the
front (15 for duetA, 10 for duetB; deliberately not 0), so on the full timeline, where review decisions
record their frames, segment [a, b) is [VAD_START + a, VAD_START + b): ``ReviewBuild.timeline``.
"""
from __future__ import annotations

import pytest

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chorushead.core import media
from chorushead.core.decisions import timeline_ranges
from chorushead.sample import make_duet_frames, sing
from chorushead.core.manifest import Manifest, Record, fingerprint
from chorushead.runner import save_items
from chorushead.stages import get_stage
from chorushead.stages.base import Item

FPS = 30
SR = 16000
EXPECTED_ORDER = ["duetA:2", "duetA:1", "duetB:0", "duetA:0"]
EXPECTED_FLAGS = {"duetA:0": set(), "duetA:1": {"still_mouth", "short"},
                  "duetA:2": {"jitter", "low_detection", "short"}, "duetB:0": {"low_assign", "short"}}


VAD_START = {"duetA": 15, "duetB": 10}      # vad start_frame per video (crop frame 0 = this timeline frame)


@dataclass
class ReviewBuild:
    out: Path
    source: Path           # duetA's video
    segments: dict[str, tuple[int, int]]                       # key -> [start, end) in crop frames
    timeline: dict[str, list[tuple[int, int]]]                  # video -> segments on the full timeline

    def frames(self, key: str) -> tuple[int, int]:
        """``key``'s [start, end) on the full timeline: what a decision on it records."""
        video, _, i = key.rpartition(":")
        return self.timeline[video][int(i)]


def _record(out: Path, stage: str, item: str, outputs: dict) -> None:
    get_stage(stage).outputs.check(outputs, stage)     # what the runner would accept from the stage
    Manifest(out, stage).append(Record(item=item, stage=stage, status="done",
                                       fingerprint=fingerprint(stage, item), outputs=outputs))


def _coeffs(n: int, rng: np.random.Generator, still: tuple[int, ...] = (), noise: float = 0.001):
    """(smoothed, raw) coefficients (2, n, 56): jaw opening swings at a singing syllable rate."""
    t = np.arange(n) / FPS
    c = np.zeros((2, n, 56), np.float32)
    c[:, :, :10] = 0.3 * np.sin(2 * np.pi * 0.4 * t + np.arange(10)[:, None]).T[None]
    for k in range(2):
        c[k, :, 50] = 0.12 * (1 + np.sin(2 * np.pi * (1.3 + 0.4 * k) * t))
        c[k, :, 53] = 0.08 * np.sin(2 * np.pi * 0.3 * t + k)         # nodding
        c[k, :, 54] = 0.15 * np.sin(2 * np.pi * 0.2 * t + 2 * k)     # turning
        c[k, :, 55] = 0.04 * np.sin(2 * np.pi * 0.5 * t)
    for k in still:
        c[k, :, 50] = 0.02
    raw = c + rng.normal(0, noise, c.shape).astype(np.float32)
    return c, raw


def _video(out: Path, root: Path, vid: str, seconds: float, start: int, end: int,
           segments: list[tuple[int, int]], coeffs: list[tuple[np.ndarray, np.ndarray]],
           probs_low: list[tuple[int, int]], assign: dict, with_source: bool, seed: int) -> Path:
    n_total = int(seconds * FPS)
    frames = make_duet_frames(n_total, size=(192, 384), seed=seed)
    d = Item(id=vid, source="").dir(out)
    source = root / "videos" / f"{vid}.mp4"
    source.parent.mkdir(parents=True, exist_ok=True)
    # voices: singer 0 and 1 take turns, so the waveforms differ visibly
    voices = [sing(seconds, SR, [(0.5, seconds / 2), (seconds / 2 + 1, seconds - 0.3)], 220.0, seed + 1),
              sing(seconds, SR, [(1.5, seconds - 0.5)], 165.0, seed + 2)]
    pool = ThreadPoolExecutor(max_workers=2)      # ffmpeg and cv2 release the GIL: encode while cropping
    jobs = []
    if with_source:
        mix = root / f"{vid}_mix.wav"
        media.write_wav(mix, np.sum(voices, axis=0), SR)
        jobs.append(pool.submit(media.encode_video, source, frames.frames, fps=FPS, audio=mix))
    _record(out, "ingest", vid, {"source": str(source), "fps": FPS, "width": 384, "height": 192,
                                 "n_frames": n_total, "duration": seconds, "source_fps": float(FPS)})
    # vad: trimmed 16 kHz tracks
    (d / "vad").mkdir(parents=True, exist_ok=True)
    a, b = start * SR // FPS, end * SR // FPS
    singers = []
    for k, v in enumerate(voices):
        media.write_wav(d / "vad" / f"singer{k}_16k.wav", v[a:b], SR)
        singers.append(f"items/{vid}/vad/singer{k}_16k.wav")
    media.write_wav(d / "vad" / "vocals_16k.wav", np.sum(voices, axis=0)[a:b], SR)
    media.write_wav(d / "vad" / "bgm_16k.wav", np.zeros(b - a, np.float32), SR)
    _record(out, "vad", vid, {"start_frame": start, "end_frame": end, "start_s": start / FPS, "end_s": end / FPS,
                              "sr": SR, "vocals_16k": f"items/{vid}/vad/vocals_16k.wav",
                              "bgm_16k": f"items/{vid}/vad/bgm_16k.wav", "singers_16k": singers})
    # crop: detections over the trimmed timeline + 224x224 crops per strip
    import cv2
    T = end - start
    boxes = frames.boxes[:, start:end]
    probs = np.where(np.isnan(boxes[..., 0]), 0.0, 0.9995).astype(np.float32)
    for lo, hi in probs_low:
        probs[:, lo:hi] = np.minimum(probs[:, lo:hi], 0.93)
    (d / "crop").mkdir(parents=True, exist_ok=True)
    np.savez(d / "crop" / "detections.npz", boxes=boxes, probs=probs,
             landmarks=np.full((2, T, 5, 2), np.nan, np.float32), n_faces=(probs > 0).astype(np.int32),
             crop_boxes=boxes)
    strips = []
    sw = 384 // 2

    def write_crops(k: int, frame_ids: range) -> None:
        for f in frame_ids:
            x0, y0, x1, y1 = boxes[k, f].astype(int)
            crop = frames.frames[start + f, y0:y1, k * sw + x0:k * sw + x1]
            cv2.imwrite(str(d / "crop" / f"strip{k}" / f"{f:06d}.jpg"), cv2.resize(crop[..., ::-1], (224, 224)),
                        [cv2.IMWRITE_JPEG_QUALITY, 80])

    for k in range(2):
        (d / "crop" / f"strip{k}").mkdir(exist_ok=True)
        jobs += [pool.submit(write_crops, k, range(i, min(T, i + 100))) for i in range(0, T, 100)]
        strips.append(f"items/{vid}/crop/strip{k}")
    for j in jobs:
        j.result()
    pool.shutdown()
    _record(out, "crop", vid, {"detections": f"items/{vid}/crop/detections.npz", "strips": strips, "n_strips": 2,
                               "frames": T, "start_frame": start, "crop_size": 224})
    _record(out, "contiguity", vid, {"segments": [list(s) for s in segments], "strip_runs": [], "n_frames": T})
    (d / "smooth").mkdir(parents=True, exist_ok=True)
    rels = []
    for i, (c, raw) in enumerate(coeffs):
        np.savez(d / "smooth" / f"seg{i:03d}.npz", coeffs=c, raw=raw)
        rels.append(f"items/{vid}/smooth/seg{i:03d}.npz")
    _record(out, "smooth", vid, {"segments": rels})
    _record(out, "assign", vid, assign)
    return source


_BUILDS: dict[str, ReviewBuild] = {}


def shared_review_build(tmp_path_factory) -> ReviewBuild:
    """One build per test session (both review test modules read it; each clears decisions itself)."""
    key = str(tmp_path_factory.getbasetemp())
    if key not in _BUILDS:
        _BUILDS[key] = make_review_build(tmp_path_factory.mktemp("review"))
    (Path(_BUILDS[key].out) / "manifests" / "review.jsonl").unlink(missing_ok=True)
    return _BUILDS[key]


def make_review_build(root: Path) -> ReviewBuild:
    """Write the two-video build under ``root/out`` (about 3 s on two cores)."""
    root = Path(root)
    out = root / "out"
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    seg_a = [(0, 240), (250, 410), (420, 570)]
    coeffs_a = [_coeffs(240, rng), _coeffs(160, rng, still=(1,)), _coeffs(150, rng, noise=0.03)]
    source = _video(out, root, "duetA", 20.0, VAD_START["duetA"], 585, seg_a, coeffs_a, probs_low=[(420, 570)],
                    assign={"order": [0, 1], "confidence": 0.9, "low_confidence": False}, with_source=True, seed=0)
    seg_b = [(0, 180)]
    _video(out, root, "duetB", 7.0, VAD_START["duetB"], 200, seg_b, [_coeffs(180, rng)], probs_low=[],
           assign={"order": [1, 0], "confidence": 0.05, "low_confidence": True}, with_source=False, seed=3)
    save_items(out, [Item(id="duetA", source=str(source)),
                     Item(id="duetB", source=str(root / "videos" / "duetB.mp4"))])
    segs = {f"duetA:{i}": s for i, s in enumerate(seg_a)} | {"duetB:0": seg_b[0]}
    timeline = {"duetA": timeline_ranges(VAD_START["duetA"], seg_a),
                "duetB": timeline_ranges(VAD_START["duetB"], seg_b)}
    return ReviewBuild(out=out, source=source, segments=segs, timeline=timeline)


if __name__ == "__main__":   # python tests/review_fixture.py /tmp/rv  -> then: chorushead review --out /tmp/rv/out
    import sys
    b = make_review_build(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/review_demo"))
    print(b.out)


# Fixtures the review tests share (import them: `from review_fixture import build, out`).
@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """The shared review build (made once per session)."""
    return shared_review_build(tmp_path_factory)


@pytest.fixture
def out(build):
    """The shared build with no decisions yet (each test starts unreviewed)."""
    (build.out / "manifests" / "review.jsonl").unlink(missing_ok=True)
    return build.out
