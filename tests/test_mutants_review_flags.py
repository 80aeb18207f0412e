"""Review flags (chorushead.review.flags): cases mutation testing showed were not pinned
(docs/mutation-survivors.md). Values are worked out by hand from the definitions; comments name what
each case guards."""
from __future__ import annotations

import math

import numpy as np
import pytest

from chorushead.review import flags as F


def soft(r: float) -> float:
    return 1.0 / (1.0 + r ** -4)


def test_flag_texts_weights_and_thresholds():
    assert F.FLAG_INFO == {
        "still_mouth": "little mouth movement (low jaw variance)",
        "jitter": "jittery fit (high acceleration of raw coefficients)",
        "jump": "sudden jump in jaw/pose (likely a fit error)",
        "low_detection": "low face detection confidence",
        "low_assign": "low voice-to-singer assignment confidence",
        "short": "short segment",
        "no_fit": "no fitted coefficients yet",
        "stems_mismatch": "supplied stems differ from the video (length or sample rate)",
    }
    assert F.WEIGHTS == {"still_mouth": 1.0, "jitter": 0.8, "jump": 0.8, "low_detection": 0.6, "low_assign": 0.6,
                         "short": 0.2, "no_fit": 0.1, "stems_mismatch": 0.6}
    th = F.Thresholds()
    assert (th.min_jaw_std, th.max_jitter, th.max_jump, th.max_det_doubt, th.min_assign_conf, th.min_seconds,
            th.fps) == (0.02, 0.01, 0.25, 0.02, 0.1, 7.0, 30)
    assert F.JAW_POSE == slice(50, 56)
    s = F.SegmentFlags()
    assert s.to_dict() == {"metrics": {}, "flags": [], "score": 0.0}
    assert F.SegmentFlags(metrics={"a": 1.0}, flags=["x"], score=2.0).to_dict() == {
        "metrics": {"a": 1.0}, "flags": ["x"], "score": 2.0}


def test_measurements_at_their_shortest():
    c = np.zeros((1, 56))
    assert F.jaw_std(c) == 0.0 and F.jitter(c) == 0.0 and F.max_jump(c) == 0.0
    two = np.zeros((2, 56))
    two[1, 50] = 1.0
    assert F.jaw_std(two) == 0.5                       # two frames: std of (0, 1)
    assert F.max_jump(two) == 1.0
    assert F.jitter(two) == 0.0                        # a second difference needs three frames
    three = np.zeros((3, 56))
    three[1, 50] = 1.0
    assert F.jitter(three) == pytest.approx(2 / 6)     # |0 - 2 + 0| over the 6 jaw + pose columns


def test_measurements_read_only_jaw_and_pose():
    c = np.zeros((2, 4, 56))
    c[:, 1, 49] = 5.0                                  # the last expression coefficient: ignored
    assert F.jitter(c) == 0.0 and F.max_jump(c) == 0.0
    c[1, 1, 55] = 0.3                                  # the last pose coefficient, singer 1
    assert F.max_jump(c) == pytest.approx(0.3)
    # singer 1: column 55 is (0, .3, 0, 0): Δ² = (-.6, .3), mean over 2 frames x 6 columns = .9 / 12
    assert F.jitter(c) == pytest.approx(0.9 / 12)
    c[0, :, 50] = [0, 1, 0, 1]                          # jaw std: singer 0 is 0.5, singer 1 is 0: the smaller
    assert F.jaw_std(c) == 0.0
    c[1, :, 50] = [0, 0.5, 0, 0.5]
    assert F.jaw_std(c) == 0.25


def test_det_doubt():
    probs = np.array([[1.0, 0.5, 0.9], [np.nan, 1.0, 1.0]], np.float32)
    assert F.det_doubt(probs, 0, 2) == pytest.approx(0.5)           # singer 1: (0 + 1) / 2
    assert F.det_doubt(probs, 1, 3) == pytest.approx(1 - 0.7)       # singer 0: (.5 + .9) / 2
    assert F.det_doubt(probs, 2, 2) == 1.0                          # no frame: no detection
    assert F.det_doubt([[0.25, 0.75]], 0, 2) == 0.5                 # a plain list works
    assert isinstance(F.det_doubt(probs, 0, 3), float)


def test_assign_confidence_forms():
    assert F.assign_confidence({}, 0) == (None, None)
    assert F.assign_confidence({"confidence": [0.9, 0.1]}, 2) == (None, None)     # past the list
    assert F.assign_confidence({"confidence": (0.9, 0.2)}, 1) == (0.2, None)
    assert F.assign_confidence({"confidence": {1: 0.3}, "low_confidence": {"1": 1}}, 1) == (0.3, True)
    assert F.assign_confidence({"confidence": {"1": 0.3, 1: 0.7}}, 1) == (0.3, None)   # the text key first
    assert F.assign_confidence({"low_confidence": [0, 1]}, 0) == (None, False)
    conf, low = F.assign_confidence({"confidence": 1, "low_confidence": 0}, 5)
    assert (conf, low) == (1.0, False) and type(conf) is float and type(low) is bool


@pytest.mark.parametrize("ratio, want", [
    (1.0, 0.5), (2.0, 16 / 17), (0.5, 1 / 17), (0.0, 0.0), (-1.0, 0.0),
    (math.inf, 1.0), (-math.inf, 0.0), (math.nan, 0.0),
])
def test_soft(ratio, want):
    assert F._soft(ratio) == pytest.approx(want, abs=1e-15)


def test_soft_sharpness():
    assert F._soft(2.0, sharp=1.0) == pytest.approx(2 / 3)
    assert isinstance(F._soft(2.0), float)


def test_short_is_flagged_up_to_min_seconds():
    at = F.flag_segment(210)                            # exactly 7 s at 30 fps: on the threshold
    assert at.flags == ["short", "no_fit"] and at.metrics == {"frames": 210.0, "seconds": 7.0}
    assert at.score == round(0.2 * 0.5 + 0.1, 4)
    over = F.flag_segment(211)
    assert over.flags == ["no_fit"]
    assert over.score == round(0.2 * soft(210 / 211) + 0.1, 4)
    assert F.flag_segment(175, fps=25).flags == ["short", "no_fit"]       # 7 s at the build's 25 fps
    assert F.flag_segment(176, fps=25).metrics == {"frames": 176.0, "seconds": 7.04}
    th = F.Thresholds(min_seconds=1.0, fps=10)
    assert F.flag_segment(10, th=th).flags == ["short", "no_fit"] and F.flag_segment(11, th=th).flags == ["no_fit"]
    zero = F.flag_segment(0)
    assert zero.flags == ["short", "no_fit"] and zero.score == 0.3


def test_metrics_flags_and_score_by_hand():
    c = np.zeros((2, 300, 56))
    c[:, ::2, 50] = 0.1                                 # jaw std 0.05 for both singers
    raw = c.copy()
    # jitter: Δ² of the jaw column alternates ±0.2 -> |.| = 0.2 on 298 frames, mean over 6 columns = 0.2/6
    res = F.flag_segment(300, coeffs=c, raw=None, probs=np.full((2, 400), 0.99), seg_range=(0, 300),
                         assign={"confidence": 0.5, "low_confidence": False})
    m = res.metrics
    assert m == {"frames": 300.0, "seconds": 10.0, "jaw_std": 0.05, "jitter": round(0.2 / 6, 6), "jump": 0.1,
                 "det_doubt": 0.01, "assign_conf": 0.5}
    parts = {"short": soft(210 / 300), "still_mouth": soft(0.02 / 0.05), "jitter": soft((0.2 / 6) / 0.01),
             "jump": soft(0.1 / 0.25), "low_detection": soft(0.01 / 0.02), "low_assign": 0.0}
    assert res.flags == ["jitter"]
    assert res.score == round(sum(F.WEIGHTS[k] * v for k, v in parts.items()), 4)
    same = F.flag_segment(300, coeffs=c, raw=raw, probs=np.full((2, 400), 0.99), seg_range=(0, 300),
                          assign={"confidence": 0.5, "low_confidence": False})
    assert same == res                                   # raw=None measures the coefficients themselves


def test_raw_is_what_jitter_and_jump_read():
    c = np.zeros((1, 10, 56))
    c[0, :, 50] = np.arange(10) * 0.01                  # smooth: jaw std > 0, no acceleration
    raw = c.copy()
    raw[0, 5, 53] = 0.3                                 # one frame off by 0.3 rad
    res = F.flag_segment(300, coeffs=c, raw=raw)
    assert res.metrics["jump"] == 0.3 and res.metrics["jitter"] == round(1.2 / 48, 6)
    assert res.flags == ["jitter", "jump"]              # equal weights: in measurement order


def test_non_finite_fits_are_a_jump_and_measured_as_zero():
    c = np.zeros((1, 4, 56))
    c[0, :, 50] = [0.0, 0.2, 0.0, 0.2]                  # jump 0.2: below the threshold
    bad = c.copy()
    bad[0, 1, 54] = np.inf
    res = F.flag_segment(300, coeffs=c, raw=bad)
    assert "jump" in res.flags and res.metrics["jump"] == 0.2          # inf read as 0
    bad2 = c.copy()
    bad2[0, 1, 54] = -np.inf
    assert F.flag_segment(300, coeffs=c, raw=bad2).metrics["jump"] == 0.2
    bad3 = c.copy()
    bad3[0, 2, 50] = np.nan                              # in the coefficients themselves
    r3 = F.flag_segment(300, coeffs=bad3)
    assert r3.metrics["jaw_std"] == round(float(np.std([0, 0.2, 0, 0.2])), 6)
    assert "jump" in r3.flags
    # a finite fit whose jump is below the threshold is no jump
    assert "jump" not in F.flag_segment(300, coeffs=c).flags


def test_a_still_mouth_and_no_motion_at_all():
    c = np.zeros((2, 300, 56))
    res = F.flag_segment(300, coeffs=c)
    assert res.metrics["jaw_std"] == 0.0 and res.flags == ["still_mouth"]
    assert res.score == round(1.0 + 0.2 * soft(0.7) + 0.8 * 0 + 0.8 * 0, 4)
    empty = F.flag_segment(300, coeffs=np.zeros((2, 0, 56)))
    assert empty.flags == ["no_fit"]


def test_jaw_std_on_the_still_mouth_threshold():
    c = np.zeros((1, 2, 56))
    c[0, :, 50] = [0.0, 0.04]                          # std 0.02: exactly on the threshold
    res = F.flag_segment(300, coeffs=c)
    assert res.metrics["jaw_std"] == 0.02 and "still_mouth" in res.flags


def test_detection_needs_both_probs_and_a_range():
    probs = np.full((2, 10), 0.5)
    assert "det_doubt" not in F.flag_segment(300, probs=probs).metrics
    assert "det_doubt" not in F.flag_segment(300, seg_range=(0, 10)).metrics
    r = F.flag_segment(300, probs=probs, seg_range=(2, 8))
    assert r.metrics["det_doubt"] == 0.5 and r.flags == ["low_detection", "no_fit"]


def test_assign_flags():
    r = F.flag_segment(300, assign={"confidence": 0.1})               # exactly on the threshold
    assert r.flags == ["low_assign", "no_fit"] and r.metrics["assign_conf"] == 0.1
    assert r.score == round(0.6 * 0.5 + 0.2 * soft(0.7) + 0.1, 4)
    assert F.flag_segment(300, assign={"confidence": 0.0}).flags == ["low_assign", "no_fit"]
    r = F.flag_segment(300, assign={"confidence": 0.05, "low_confidence": False})   # the stage's verdict wins
    assert r.flags == ["no_fit"] and r.metrics["assign_conf"] == 0.05
    r = F.flag_segment(300, assign={"low_confidence": True})
    assert r.flags == ["low_assign", "no_fit"] and "assign_conf" not in r.metrics
    assert r.score == round(0.6 + 0.2 * soft(0.7) + 0.1, 4)
    r = F.flag_segment(300, assign={"confidence": [0.9, 0.05]}, segment=1)
    assert r.metrics["assign_conf"] == 0.05 and "low_assign" in r.flags
    r = F.flag_segment(300, assign={"confidence": 0.2}, th=F.Thresholds(min_assign_conf=0.2))
    assert "low_assign" in r.flags


def test_stems_warnings():
    r = F.flag_segment(300, stems_warnings=["a", "b"])
    assert r.metrics["stems_warnings"] == 2.0 and r.flags == ["stems_mismatch", "no_fit"]
    assert r.score == round(0.6 + 0.2 * soft(0.7) + 0.1, 4)
    assert "stems_warnings" not in F.flag_segment(300, stems_warnings=[]).metrics


def test_flags_sort_by_weight():
    r = F.flag_segment(10, probs=np.zeros((1, 10)), seg_range=(0, 10), assign={"low_confidence": True},
                       stems_warnings=["x"])
    assert r.flags == ["low_detection", "low_assign", "stems_mismatch", "short", "no_fit"]


def test_metrics_are_rounded_to_six_places():
    r = F.flag_segment(1, fps=3)
    assert r.metrics["seconds"] == 0.333333
    assert F.flag_segment(3, fps=7.0).metrics["seconds"] == 0.428571


def test_order_by_suspicion_keeps_ties_in_the_given_order():
    a, b, c = F.SegmentFlags(score=1.0), F.SegmentFlags(score=2.0), F.SegmentFlags(score=1.0)
    assert F.order_by_suspicion([("a", a), ("b", b), ("c", c)]) == ["b", "a", "c"]
    assert F.order_by_suspicion([("c", c), ("a", a), ("b", b)]) == ["b", "c", "a"]
    assert F.order_by_suspicion([]) == []


def test_jumps_are_along_time_not_across_columns():
    c = np.zeros((2, 3, 56))
    c[:, :, 50] = 1.0                                  # still in time, but unlike the other columns
    assert F.max_jump(c) == 0.0 and F.jitter(c) == 0.0
    assert F.max_jump(c[0]) == 0.0


def test_the_segment_index_defaults_to_the_first():
    assert F.flag_segment(300, assign={"confidence": [0.9, 0.05]}).metrics["assign_conf"] == 0.9


def test_infinite_coefficients_are_read_as_zero():
    c = np.zeros((1, 4, 56))
    c[0, :, 50] = [0.0, 0.2, 0.0, 0.2]
    for bad in (np.inf, -np.inf):
        b = c.copy()
        b[0, 2, 50] = bad
        r = F.flag_segment(300, coeffs=b, raw=c)
        assert r.metrics["jaw_std"] == round(float(np.std([0, 0.2, 0, 0.2])), 6)
        # jump is 1.0 (the non-finite fit) and nothing else flagged is over its share:
        parts = {"short": soft(210 / 300), "still_mouth": soft(0.02 / 0.1), "jitter": soft((0.8 / 12) / 0.01),
                 "jump": 1.0}
        assert r.score == round(sum(F.WEIGHTS[k] * v for k, v in parts.items()), 4)
