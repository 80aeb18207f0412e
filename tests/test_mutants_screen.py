"""Tests that kill the mutants of chorushead/stages/screen.py that survived the fast tests
(docs/mutation-survivors.md). decide() gets measurements written by hand, so every gate, reason,
time and metric below is worked out by hand; measure() runs on hand-made frames with a stand-in
detector; the picture measurements (cut score, face mask, motion, yaw) on synthetic frames whose
answer is known in closed form."""
from __future__ import annotations

import dataclasses
import math
import types

import cv2
import numpy as np
import pytest

from chorushead.core.manifest import Record
from chorushead.stages import screen as S


def _get(x, key):
    return x.get(key) if isinstance(x, dict) else getattr(x, key)


# ----------------------------------------------------------------------------- params
def test_params_defaults_and_checks():
    assert {f.name: getattr(S.Params(), f.name) for f in dataclasses.fields(S.Params)} == {
        "enabled": True, "min_width": 256, "min_height": 256, "min_fps": 23.5, "max_fps": 61.0,
        "sample_fps": 3, "face_every": 3, "analysis_width": 512, "cut_threshold": 0.3, "max_cuts": 0,
        "max_motion": 0.02, "max_moving_fraction": 0.25, "face_margin": 0.6, "n_singers": 2,
        "min_count_fraction": 0.6, "min_face": 80.0, "prob_threshold": 0.9, "max_yaw_deg": 25.0,
        "device": "auto", "torch_threads": 1}
    assert S.NOSE_DEPTH == 0.9
    S.Params(sample_fps=1, face_every=1, n_singers=1)          # 1 is allowed
    for name in ("sample_fps", "face_every", "n_singers"):
        with pytest.raises(ValueError) as e:
            S.Params(**{name: 0})
        assert str(e.value) == f"{name} must be >= 1, got 0"


def test_outputs_and_metrics_defaults():
    o = S.Outputs()
    assert (o.passed, o.failed_gates, o.cut_times, o.moving_times) == (True, [], [], [])
    m = S.Metrics()
    assert dataclasses.asdict(m) == {
        "enabled": True, "frames_sampled": 0, "width": 0, "height": 0, "source_fps": 0.0, "cuts": 0,
        "max_cut_score": 0.0, "median_motion": 0.0, "moving_fraction": 0.0, "face_counts": {},
        "count_fraction": 0.0, "median_abs_yaw": 0.0, "median_max_yaw": 0.0, "seconds_decode": 0.0,
        "seconds_faces": 0.0}


# ----------------------------------------------------------------------------- decide
M = {"frames": 5, "counts": [2, 2, 1, 3, 2], "yaws": [[10.0, 30.0], [5.0, 40.0], [20.0], [], [1.0, 2.0]],
     "scores": [0.1, 0.3, 0.29, 0.5], "motions": [0.0, 0.03, 0.02, 0.5],
     "seconds_decode": 1.23456, "seconds_faces": 0.98765}


def test_decide_measures_every_gate_by_hand():
    gates, reasons, out, met = S.decide(M, S.Params(sample_fps=2), 640, 360, 29.97063)
    # pairs 1 and 3 cut (>= 0.3) and move (> 0.02): midpoints (i + 0.5) / 2 fps
    assert out.cut_times == [0.75, 1.75] and out.moving_times == [0.75, 1.75]
    assert dataclasses.asdict(met) == {
        "enabled": True, "frames_sampled": 5, "width": 640, "height": 360, "source_fps": 29.971, "cuts": 2,
        "max_cut_score": 0.5, "median_motion": 0.025, "moving_fraction": 0.5,
        "face_counts": {"1": 1, "2": 3, "3": 1}, "count_fraction": 0.6,
        "median_abs_yaw": 10.0, "median_max_yaw": 25.0, "seconds_decode": 1.235, "seconds_faces": 0.988}
    assert gates == ["cuts", "motion"] and out.failed_gates == gates and out.passed is False
    assert reasons == ["2 shot cut(s) at 0.75, 1.75 s (histogram change >= 0.3; max_cuts=0)",
                       "camera moves: background motion > 0.02/s in 50% of sampled pairs (max 25%; median 0.025/s)"]
    assert type(met.face_counts["2"]) is int


def test_decide_gates_at_their_boundaries():
    # every number exactly at its threshold passes
    p = S.Params(sample_fps=2, max_cuts=2, max_moving_fraction=0.5, min_count_fraction=0.6, max_yaw_deg=25.0)
    gates, reasons, out, _ = S.decide(M, p, 256, 256, 23.5)
    assert (gates, reasons, out.passed, out.failed_gates) == ([], [], True, [])
    assert S.decide(M, p, 256, 256, 61.0)[0] == []
    # one step past each
    p = S.Params(sample_fps=2, max_cuts=1, max_moving_fraction=0.49, min_count_fraction=0.61, max_yaw_deg=24.9,
                 n_singers=2)
    gates, reasons, out, _ = S.decide(M, p, 255, 256, 61.5)
    assert gates == ["resolution", "fps", "cuts", "motion", "singers", "yaw"] and out.passed is False
    assert reasons == ["resolution 255x256 is under 256x256",
                       "frame rate 61.5 fps is outside 23.5-61",
                       "2 shot cut(s) at 0.75, 1.75 s (histogram change >= 0.3; max_cuts=1)",
                       "camera moves: background motion > 0.02/s in 50% of sampled pairs (max 49%; median 0.025/s)",
                       "60% of sampled frames show exactly 2 face(s), need 61% (most often 2)",
                       "a singer faces away: median yaw 25 deg > 24.9"]
    assert S.decide(None, S.Params(), 256, 255, 23.4)[1] == ["resolution 256x255 is under 256x256",
                                                             "frame rate 23.4 fps is outside 23.5-61"]
    # the thresholds of the cut and the motion themselves
    _, _, out, met = S.decide(M, S.Params(sample_fps=2, cut_threshold=0.29, max_motion=0.0), 640, 360, 30)
    assert out.cut_times == [0.75, 1.25, 1.75] and met.cuts == 3
    assert out.moving_times == [0.75, 1.25, 1.75] and met.moving_fraction == 0.75


def test_decide_lists_five_cuts_rounds_and_names_the_common_count():
    m = {"frames": 8, "counts": [1, 3, 3, 0], "yaws": [[12.34], [17.0, 3.0]], "scores": [0.9] * 7,
         "motions": [0.0, 0.0, 0.3], "seconds_decode": 0.0, "seconds_faces": 0.0}
    gates, reasons, out, met = S.decide(m, S.Params(), 640, 360, 30)
    assert out.cut_times == [0.17, 0.5, 0.83, 1.17, 1.5, 1.83, 2.17]        # (i + 0.5) / 3, 2 decimals
    assert reasons[0] == "7 shot cut(s) at 0.17, 0.5, 0.83, 1.17, 1.5 s (histogram change >= 0.3; max_cuts=0)"
    assert met.moving_fraction == 0.333 and met.median_motion == 0.0 and out.moving_times == [0.83]
    assert met.face_counts == {"0": 1, "1": 1, "3": 2} and met.count_fraction == 0.0
    assert reasons[1:] == ["camera moves: background motion > 0.02/s in 33% of sampled pairs (max 25%; median 0/s)",
                           "0% of sampled frames show exactly 2 face(s), need 60% (most often 3)"]
    assert met.median_abs_yaw == 12.3 and met.median_max_yaw == 14.7        # 12.34; median of 12.34 and 17: 14.67
    assert gates == ["cuts", "motion", "singers"]
    m = {"frames": 3, "counts": [1, 2, 1], "yaws": [], "scores": [0.456, 0.1], "motions": [0.12345, 0.0],
         "seconds_decode": 0.0, "seconds_faces": 0.0}
    _, reasons, _, met = S.decide(m, S.Params(n_singers=3), 640, 360, 30)
    assert met.max_cut_score == 0.46 and met.median_motion == 0.0617 and met.count_fraction == 0.0
    assert reasons == ["1 shot cut(s) at 0.17 s (histogram change >= 0.3; max_cuts=0)",
                       "camera moves: background motion > 0.02/s in 50% of sampled pairs (max 25%; median 0.0617/s)",
                       "0% of sampled frames show exactly 3 face(s), need 60% (most often 1)"]
    _, _, _, met = S.decide({**m, "counts": [2, 2, 2]}, S.Params(n_singers=2), 640, 360, 30)
    assert met.count_fraction == 1.0
    _, _, _, met = S.decide({**m, "counts": [2, 1, 1]}, S.Params(), 640, 360, 30)
    assert met.count_fraction == 0.333


def test_decide_on_nothing_measured():
    m = {"frames": 0, "counts": [], "yaws": [[], []], "scores": [], "motions": [],
         "seconds_decode": 0.5, "seconds_faces": 0.25}
    gates, reasons, out, met = S.decide(m, S.Params(), 640, 360, 30)
    assert (met.cuts, met.max_cut_score, met.median_motion, met.moving_fraction) == (0, 0.0, 0.0, 0.0)
    assert (met.face_counts, met.count_fraction, met.median_abs_yaw, met.median_max_yaw) == ({}, 0.0, 0.0, 0.0)
    assert gates == ["singers"]
    assert reasons == ["0% of sampled frames show exactly 2 face(s), need 60% (most often 0)"]
    assert (out.cut_times, out.moving_times) == ([], [])
    # not measured at all (the probe failed first): the probe's numbers only
    gates, reasons, out, met = S.decide(None, S.Params(), 100, 80, 10.0)
    assert gates == ["resolution", "fps"] and out.passed is False and out.failed_gates == gates
    assert dataclasses.asdict(met) == dataclasses.asdict(S.Metrics(width=100, height=80, source_fps=10.0))


# ----------------------------------------------------------------------------- measurements
def test_analysis_size():
    assert S.analysis_size(1024, 1024, 512) == (512, 512)
    assert S.analysis_size(256, 512, 512) == (256, 512)          # never upscaled
    assert S.analysis_size(1920, 1080, 512) == (512, 288)
    assert S.analysis_size(1000, 563, 512) == (512, 288)          # 288.26 -> even
    assert S.analysis_size(1000, 566, 512) == (512, 290)          # 289.79 -> 290
    assert S.analysis_size(101, 53, 512) == (100, 52)             # round(50.5) = 50, round(26.5) = 26
    assert S.analysis_size(103, 55, 512) == (104, 56)             # round(51.5) = 52, round(27.5) = 28
    assert S.analysis_size(1, 1, 512) == (2, 2) and S.analysis_size(0, 0, 512) == (2, 2)
    assert S.analysis_size(2000, 4, 512) == (512, 2)


def test_face_mask_by_hand():
    m = S.face_mask((20, 30), np.array([[10, 5, 14, 9]]), 0.5)   # side 4, grown by 2 (bottom by 4)
    want = np.ones((20, 30), bool)
    want[3:13, 8:16] = False
    assert (m == want).all()
    m = S.face_mask((20, 30), np.array([[10, 5, 14, 11]]), 0.5)  # 4 wide, 6 tall: grown by 3
    want = np.ones((20, 30), bool)
    want[2:17, 7:17] = False
    assert (m == want).all()
    m = S.face_mask((20, 30), [[10.5, 5.5, 14.2, 9.7]], 0.25)     # g = 1.05: floors in, ceils out
    want = np.ones((20, 30), bool)
    want[4:12, 9:16] = False
    assert (m == want).all()
    # clipped at the edges, two boxes
    m = S.face_mask((20, 30), np.array([[-5, -5, 3, 3], [25, 15, 29, 19]], float), 1.0)
    want = np.ones((20, 30), bool)
    want[0:19, 0:11] = False
    want[11:20, 21:30] = False
    assert (m == want).all()
    assert S.face_mask((4, 5), np.zeros((0, 4)), 0.6).all() and S.face_mask((4, 5), np.zeros((0, 4)), 0.6).shape == (4, 5)


def _solid(rgb, h=8, w=8):
    return np.tile(np.array(rgb, np.uint8), (h, w, 1))


def test_cut_score_by_hand():
    red, blue = _solid((255, 0, 0)), _solid((0, 0, 255))
    assert S.cut_score(red, red) == pytest.approx(0.0, abs=1e-9)
    # two one-bin histograms of 256 bins: correlation -1/255
    assert S.cut_score(red, blue) == pytest.approx(1 + 1 / 255, abs=1e-6)
    # hue 8 and 0 share a bin (11.25 wide), hue 12 does not; saturation 255 and 240 share one, 15/16 split
    assert S.cut_score(red, _solid((255, 64, 0))) == pytest.approx(0.0, abs=1e-9)
    assert S.cut_score(red, _solid((255, 100, 0))) == pytest.approx(1 + 1 / 255, abs=1e-6)
    assert S.cut_score(_solid((255, 240, 240)), _solid((255, 239, 239))) == pytest.approx(1 + 1 / 255, abs=1e-6)
    assert S.cut_score(_solid((132, 255, 0)), _solid((124, 255, 0))) == pytest.approx(1 + 1 / 255, abs=1e-6)  # hue 44 | 45
    # half red, half blue against red: Pearson correlation of the two 256-bin histograms
    mixed = np.concatenate([red[:4], blue[:4]])
    ha, hb = np.zeros(256), np.zeros(256)
    ha[0], ha[120 // 12 * 16 + 15] = 32, 32
    hb[0] = 64
    want = 1 - np.corrcoef(ha, hb)[0, 1]
    assert S.cut_score(mixed, red) == pytest.approx(want, abs=1e-6)
    assert S.cut_score(red, mixed) == pytest.approx(want, abs=1e-6)
    assert type(S.cut_score(red, blue)) is float


def _texture(h=240, w=320, seed=0):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 8, w // 8), np.uint8)
    g = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    return np.repeat(g[:, :, None], 3, axis=2)


def test_background_motion_pan_zoom_and_still():
    a = _texture()
    h, w = a.shape[:2]
    full = np.ones((h, w), bool)
    pan, zoom, n = S.background_motion(a, a, full)
    assert pan == pytest.approx(0, abs=1e-3) and zoom == pytest.approx(0, abs=1e-3) and n >= 100
    # 8 px right and 6 px down: the centre moves 10 px = 10/320 of the width
    b = cv2.warpAffine(a, np.float32([[1, 0, 8], [0, 1, 6]]), (w, h), borderMode=cv2.BORDER_REFLECT)
    pan, zoom, n = S.background_motion(a, b, full)
    assert pan == pytest.approx(10 / 320, abs=1e-3) and zoom == pytest.approx(0, abs=2e-3)
    # a 4 % zoom about the centre: no pan
    z = cv2.getRotationMatrix2D((w / 2, h / 2), 0, 1.04)
    b = cv2.warpAffine(a, z, (w, h), borderMode=cv2.BORDER_REFLECT)
    pan, zoom, _ = S.background_motion(a, b, full)
    assert pan == pytest.approx(0, abs=1e-3) and zoom == pytest.approx(0.04, abs=2e-3)
    # a zoom about a corner: the centre moves too (by 0.04 of the half diagonal)
    z = cv2.getRotationMatrix2D((0, 0), 0, 1.04)
    b = cv2.warpAffine(a, z, (w, h), borderMode=cv2.BORDER_REFLECT)
    pan, zoom, _ = S.background_motion(a, b, full)
    assert pan == pytest.approx(0.04 * math.hypot(160, 120) / 320, abs=1e-3) and zoom == pytest.approx(0.04, abs=2e-3)


def test_background_motion_when_ransac_finds_no_model(monkeypatch):
    """RANSAC gives no model only for degenerate point sets (all collinear or identical); OpenCV's own
    function is replaced for that case: no motion, and the points that tracked are still counted."""
    a = _texture()
    h, w = a.shape[:2]
    seen = {}

    def no_model(src, dst, **kw):
        seen["n"] = len(src)
        return None, None
    monkeypatch.setattr(cv2, "estimateAffinePartial2D", no_model)
    pan, zoom, n = S.background_motion(a, a, np.ones((h, w), bool))
    assert (pan, zoom) == (0.0, 0.0) and type(n) is int and n == seen["n"] >= 100


def test_background_motion_of_a_rotation_is_no_zoom():
    a = _texture()
    h, w = a.shape[:2]
    r = cv2.getRotationMatrix2D((w / 2, h / 2), 10, 1.0)
    b = cv2.warpAffine(a, r, (w, h), borderMode=cv2.BORDER_REFLECT)
    pan, zoom, _ = S.background_motion(a, b, np.ones((h, w), bool))
    assert pan == pytest.approx(0, abs=1e-3) and zoom == pytest.approx(0, abs=2e-3)   # 1 - cos 10 deg = 0.015


def test_background_motion_needs_eight_points_and_uses_the_mask():
    a = _texture()
    h, w = a.shape[:2]
    b = cv2.warpAffine(a, np.float32([[1, 0, 8], [0, 1, 0]]), (w, h), borderMode=cv2.BORDER_REFLECT)
    assert S.background_motion(a, b, np.zeros((h, w), bool)) == (0.0, 0.0, 0)   # everything masked
    flat = np.full((h, w, 3), 128, np.uint8)
    assert S.background_motion(flat, flat, np.ones((h, w), bool)) == (0.0, 0.0, 0)
    # corners only where the mask allows: the left half moves, the right is masked
    half = np.zeros((h, w), bool)
    half[:, : w // 2] = True
    pan, _, n = S.background_motion(a, b, half)
    assert pan == pytest.approx(8 / 320, abs=1e-3) and n >= 8
    # exactly 8 strong corners (white squares on black), and 7
    for k, want in ((8, True), (7, False)):
        img = np.zeros((h, w, 3), np.uint8)
        for i in range(k):
            x = 20 + (i % 4) * 70
            y = 40 + (i // 4) * 120
            img[y:y + 3, x:x + 3] = 255
        moved = np.roll(img, 4, axis=1)
        pan, zoom, n = S.background_motion(img, moved, np.ones((h, w), bool))
        if want:
            assert n >= 8 and pan == pytest.approx(4 / 320, abs=2e-3)
        else:
            assert (pan, zoom) == (0.0, 0.0) and 0 < n < 8
    # 8 corners found, but only 4 tracked into a white frame: no motion, 4 points
    assert S.background_motion(_corners8(h, w), np.full((h, w, 3), 255, np.uint8),
                               np.ones((h, w), bool)) == (0.0, 0.0, 4)


def _corners8(h, w):
    img = np.zeros((h, w, 3), np.uint8)
    for i in range(8):
        x = 20 + (i % 4) * 70
        y = 40 + (i // 4) * 120
        img[y:y + 3, x:x + 3] = 255
    return img


def test_yaw_by_hand():
    le, re_ = [30, 40], [70, 40]
    def yaw(nose, ml=(35, 80), mr=(65, 80), eyes=(le, re_)):
        return S.yaw_deg(np.array([eyes[0], eyes[1], nose, ml, mr], float))
    # half the inter-ocular distance is 20; a = offset / 20; yaw = atan(a / 0.9)
    assert yaw((60, 60)) == pytest.approx(math.degrees(math.atan(0.5 / 0.9)))
    assert yaw((40, 60)) == pytest.approx(-math.degrees(math.atan(0.5 / 0.9)))
    # the mouth 10 px right of the eyes: the midline at the nose's height (half way) is 55
    assert yaw((60, 60), (45, 80), (75, 80)) == pytest.approx(math.degrees(math.atan(5 / 20 / 0.9)))
    assert yaw((60, 70), (45, 80), (75, 80)) == pytest.approx(math.degrees(math.atan(2.5 / 20 / 0.9)))  # 3/4 down
    # above the eyes: the eyes' midpoint; below the mouth: the mouth's
    assert yaw((60, 30), (45, 80), (75, 80)) == pytest.approx(math.degrees(math.atan(10 / 20 / 0.9)))
    assert yaw((60, 100), (45, 80), (75, 80)) == pytest.approx(0.0, abs=1e-9)
    # the mouth at the eyes' height: half way; upside down: the fraction of a negative span
    assert yaw((60, 40), (45, 40), (75, 40)) == pytest.approx(math.degrees(math.atan(5 / 20 / 0.9)))
    assert yaw((60, 20), (45, 0), (75, 0)) == pytest.approx(math.degrees(math.atan(5 / 20 / 0.9)))
    assert yaw((60, 30), (45, 0), (75, 0)) == pytest.approx(math.degrees(math.atan(7.5 / 20 / 0.9)))
    # a span of exactly 1e-6 is used as it is (the nose at the eyes' height: the eyes' midpoint); half a
    # pixel too
    assert yaw((60, 0), (45, 1e-6), (75, 1e-6), eyes=([30, 0], [70, 0])) == pytest.approx(math.degrees(math.atan(10 / 20 / 0.9)))
    assert yaw((60, 40), (45, 40.5), (75, 40.5)) == pytest.approx(math.degrees(math.atan(10 / 20 / 0.9)))
    # eyes swapped: the same distance; eyes on one x: a huge ratio, ~90 degrees
    assert yaw((60, 60), eyes=(re_, le)) == pytest.approx(math.degrees(math.atan(0.5 / 0.9)))
    assert yaw((51, 60), (50, 80), (50, 80), eyes=([50, 40], [50, 40])) == pytest.approx(90.0, abs=1e-3)
    assert yaw((50, 60), (50, 80), (50, 80), eyes=([50, 40], [50, 40])) == 0.0
    assert yaw((60, 60), eyes=([30, 40], [30.0000001, 40])) == pytest.approx(90.0, abs=1e-3)


# ----------------------------------------------------------------------------- measure
class _FakeDetector:
    """Two faces on frame 0, one on frame 3 (the probed frames at face_every = 3), landmarks with
    known yaw."""

    def __init__(self):
        self.calls = []

    def detect_all(self, frames):
        self.calls.append([int(f[0, 0, 0]) for f in frames])
        lm0 = np.array([[30, 40], [70, 40], [60, 60], [35, 80], [65, 80]], float)   # +29.05 deg
        lm1 = np.array([[30, 40], [70, 40], [50, 60], [35, 80], [65, 80]], float)   # 0 deg
        out = []
        for f in frames:
            if int(f[0, 0, 0]) == 0:
                out.append((np.array([[0, 0, 2, 2, 0.99], [10, 10, 12, 12, 0.98]]), [lm0, lm1]))
            else:
                out.append((np.array([[20, 2, 22, 4, 0.99]]), [lm0 * [-1, 1]]))
        return out


class _Sized:
    """A worker's detector as measure() sees it: ``resized(min_face)`` records the size, gives ``det``."""

    def __init__(self, det):
        self.det, self.sizes = det, []

    def resized(self, min_face):
        self.sizes.append(min_face)
        return self.det


def test_measure_probes_faces_and_scores_every_pair(monkeypatch):
    seen = {}
    frames = [np.full((8, 16, 3), i, np.uint8) for i in range(5)]

    def fake_iter(path, **kw):
        seen["iter"] = (path, kw)
        yield np.stack(frames[:3])
        yield np.stack(frames[3:])

    det = _FakeDetector()
    sized = _Sized(det)
    monkeypatch.setattr(S.media, "iter_frames", fake_iter)
    monkeypatch.setattr(S, "cut_score", lambda a, b: float(b[0, 0, 0]) / 10 + float(a[0, 0, 0]) / 100)
    masks, pairs = [], []

    def fake_motion(a, b, mask):
        masks.append(mask)
        pairs.append((int(a[0, 0, 0]), int(b[0, 0, 0])))
        i = int(b[0, 0, 0])
        return 0.01 * i, 0.025 if i == 2 else 0.0, 50
    monkeypatch.setattr(S, "background_motion", fake_motion)
    p = S.Params(sample_fps=2, face_every=3, analysis_width=16, min_face=80.0, face_margin=0.0)
    got = S.measure("v.mp4", 64, 32, p, sized)
    assert seen["iter"] == ("v.mp4", {"fps": 2, "scale": (16, 8), "chunk": 64})
    assert sized.sizes == [20.0]                                       # 80 px * 16/64
    assert det.calls == [[0, 3]]
    assert got["frames"] == 5 and got["counts"] == [2, 1]
    assert got["yaws"] == [[pytest.approx(math.degrees(math.atan(0.5 / 0.9))), 0.0],
                           [pytest.approx(math.degrees(math.atan(0.5 / 0.9)))]]          # abs of -29
    assert got["scores"] == pytest.approx([0.1, 0.21, 0.32, 0.43]) and pairs == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert got["motions"] == pytest.approx([0.02, 0.05, 0.06, 0.08])   # max(pan, zoom) * 2 fps
    assert 0 <= got["seconds_decode"] < 60 and 0 <= got["seconds_faces"] < 60
    # the masks: frames 0, 1 use frame 0's boxes; frames 2, 3, 4 the nearest probed (3)'s
    box0 = S.face_mask((8, 16), np.array([[0, 0, 2, 2], [10, 10, 12, 12]]), 0.0)
    box3 = S.face_mask((8, 16), np.array([[20, 2, 22, 4]]), 0.0)
    assert [m.shape for m in masks] == [(8, 16)] * 4
    assert (masks[0] == box0).all() and (masks[1] == (box0 & box3)).all()
    assert (masks[2] == box3).all() and (masks[3] == box3).all()


def test_measure_floors_the_face_size_and_handles_no_frames(monkeypatch):
    monkeypatch.setattr(S.media, "iter_frames", lambda path, **kw: iter(()))
    sized = _Sized(types.SimpleNamespace(detect_all=lambda fr: pytest.fail("no frames to look at")))
    got = S.measure("v.mp4", 2048, 1024, S.Params(min_face=40.0), sized)    # 40 * 0.25 = 10 -> at least 12
    S.measure("v.mp4", 1, 1, S.Params(min_face=40.0), sized)               # decoded at 2x2: twice the size
    assert sized.sizes == [12.0, 80.0]
    assert {k: got[k] for k in ("frames", "counts", "yaws", "scores", "motions")} == \
        {"frames": 0, "counts": [], "yaws": [], "scores": [], "motions": []}


def test_the_detector_is_set_up_once_from_the_params(monkeypatch):
    import chorushead.backends.mtcnn as mt
    built = []

    class Fake:
        def __init__(self, **kw):
            built.append(kw)
    monkeypatch.setattr(mt, "MtcnnDetector", Fake)
    assert S.setup(S.Params(enabled=False)) is None and built == []
    assert isinstance(S.setup(S.Params(min_face=40.0, prob_threshold=0.8, device="cpu", torch_threads=2)), Fake)
    assert built == [dict(min_face=40.0, prob_threshold=0.8, device="cpu", batch_size=8, threads=2)]
    assert S.STAGE.setup is S.setup


# ----------------------------------------------------------------------------- process
def _ctx(width, height=512, fps=30.0):
    ing = Record(item="v", stage="ingest", status="done", fingerprint="f",
                 outputs={"source": "/src/v.mp4", "n_frames": 90, "fps": 30, "width": width, "height": height,
                          "duration": 3.0, "source_fps": fps})
    return types.SimpleNamespace(upstream={"ingest": ing})


def test_process_off_audio_only_probe_fail_and_pass(monkeypatch):
    calls = []
    good = {"frames": 3, "counts": [2, 2, 2], "yaws": [[1.0], [2.0], [3.0]], "scores": [0.0, 0.0],
            "motions": [0.0, 0.0], "seconds_decode": 0.0, "seconds_faces": 0.0}
    monkeypatch.setattr(S, "measure", lambda *a: calls.append(a) or good)
    r = S.process(_ctx(640, fps=29.97063), S.Params(enabled=False), None)
    assert r.status == "done" and calls == []
    assert (_get(r.metrics, "enabled"), _get(r.metrics, "width"), _get(r.metrics, "height"),
            _get(r.metrics, "source_fps"), _get(r.metrics, "frames_sampled")) == (False, 640, 512, 29.971, 0)
    assert _get(r.outputs, "passed") is True
    r = S.process(_ctx(0, 0, 0.0), S.Params(), None)              # audio only
    assert r.status == "done" and calls == [] and _get(r.metrics, "enabled") is True
    assert _get(r.metrics, "width") == 0 and _get(r.outputs, "passed") is True
    r = S.process(_ctx(0, 0, 12.3456), S.Params(), None)
    assert _get(r.metrics, "source_fps") == 12.346
    r = S.process(_ctx(200, 512, 30.0), S.Params(), None)        # the probe fails: nothing decoded
    assert r.status == "skipped" and calls == []
    assert r.reason == "screened out: resolution 200x512 is under 256x256"
    r = S.process(_ctx(200, 512, 10.0), S.Params(), None)
    assert r.reason == "screened out: resolution 200x512 is under 256x256; frame rate 10 fps is outside 23.5-61"
    p, worker_det = S.Params(), object()
    r = S.process(_ctx(640, 512, 30.0), p, worker_det)
    assert r.status == "done" and r.reason is None and calls == [("/src/v.mp4", 640, 512, p, worker_det)]
    assert _get(r.outputs, "passed") is True and _get(r.metrics, "frames_sampled") == 3
    monkeypatch.setattr(S, "measure", lambda *a: {**good, "scores": [0.5, 0.0]})
    r = S.process(_ctx(640, 512, 30.0), p, None)
    assert r.status == "skipped" and r.reason == "screened out: 1 shot cut(s) at 0.17 s (histogram change >= 0.3; max_cuts=0)"
    assert _get(r.outputs, "failed_gates") == ["cuts"] and _get(r.metrics, "cuts") == 1
