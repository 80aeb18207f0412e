"""Documented thresholds tried exactly at the threshold and one step either side (issue 23, part 4):
contiguity length, VAD padding, supplied stems' length tolerance, review flags, the 90 % accept
cover of review decisions. Each case names the value the documentation gives."""
from __future__ import annotations

import numpy as np
import pytest

from chorushead.core import media
from chorushead.core.errors import BadInput
from chorushead.runner import Pipeline
from chorushead.stages import contiguity, vad


def _get(outputs, key):
    """A stage result's output field, whether the stage returns a dict or a typed payload."""
    return outputs[key] if isinstance(outputs, dict) else getattr(outputs, key)


def up(x: float) -> float:
    return float(np.nextafter(x, np.inf))


def down(x: float) -> float:
    return float(np.nextafter(x, -np.inf))


# ----------------------------------------------------------------------------- contiguity: ≥ 5 s = 150 frames
def test_contiguity_minimum_is_the_pipelines_5_s_in_frames():
    pl = Pipeline.load()
    p = contiguity.Params(**pl.params["contiguity"])
    assert p.min_seconds == 5.0
    assert contiguity.min_frames(p, 30) == 150 and contiguity.min_frames(p, 25) == 125
    assert contiguity.min_frames(contiguity.Params(min_seconds=4.99), 30) == 150   # rounded to whole frames
    assert contiguity.min_frames(contiguity.Params(min_seconds=5.02), 30) == 151


@pytest.mark.parametrize("length, kept", [(149, False), (150, True), (151, True)])
def test_a_run_of_exactly_the_minimum_is_kept_one_less_is_dropped(length, kept):
    m = np.zeros(400, bool)
    m[7:7 + length] = True
    assert contiguity.runs(m, 150) == ([[7, 7 + length]] if kept else [])
    m[:] = False                                    # runs that touch either end of the array
    m[:length] = True
    m[400 - length:] = True
    got = contiguity.runs(m, 150)
    assert got == ([[0, length], [400 - length, 400]] if kept else [])


def _detections(tmp_path, probs, n_faces=None):
    p = tmp_path / "det.npz"
    s, t = probs.shape
    np.savez(p, probs=probs, boxes=np.zeros((s, t, 4)),
             n_faces=n_faces if n_faces is not None else (probs >= 0.9).astype(int))
    return {"crop": {"detections": str(p), "strips": [f"strip{k}" for k in range(s)], "n_strips": s, "frames": t,
                     "start_frame": 0, "crop_size": 224}}


def test_contiguity_stage_keeps_exactly_150_common_frames_and_drops_149(tmp_path, ctx_factory):
    """Through the stage: strip 0 has faces on [10, 160) and [200, 349) (150 and 149 frames), strip 1
    everywhere; a probability of exactly 0.9 (the threshold) counts as a face, one just under does not."""
    probs = np.full((2, 400), 0.99)
    probs[0] = 0.0
    probs[0, 10:160] = 0.99
    probs[0, 200:349] = 0.99
    probs[1, 10] = 0.9                      # exactly the threshold: still a face
    res = contiguity.process(ctx_factory("contiguity", _detections(tmp_path, probs)), contiguity.Params(), None)
    assert _get(res.outputs, "segments") == [[10, 160]]
    probs[1, 10] = down(0.9)                # a hair under: the common run is 149 frames, none left
    with pytest.raises(BadInput, match="no range of ≥150 consecutive frames"):
        contiguity.process(ctx_factory("contiguity", _detections(tmp_path, probs)), contiguity.Params(), None)


@pytest.mark.parametrize("multi, fails", [(75, False), (76, True)])
def test_contiguity_multi_face_fraction_half_is_allowed_more_fails(tmp_path, ctx_factory, multi, fails):
    probs = np.full((2, 150), 0.99)
    n_faces = np.ones((2, 150), int)
    n_faces[1, :multi] = 2                  # 75 of 150 = exactly max_multi_face_fraction (0.5)
    ctx = ctx_factory("contiguity", _detections(tmp_path, probs, n_faces))
    if fails:
        with pytest.raises(BadInput, match="two or more faces in 76 of its 150"):
            contiguity.process(ctx, contiguity.Params(), None)
    else:
        assert _get(contiguity.process(ctx, contiguity.Params(), None).outputs, "segments") == [[0, 150]]


# ----------------------------------------------------------------------------- VAD: 300 ms window, 90 % voiced
def test_vad_defaults_are_the_pipelines():
    p = vad.Params(**Pipeline.load().params["vad"])
    assert (p.aggressiveness, p.frame_ms, p.padding_ms, p.voiced_ratio) == (2, 30, 300, 0.9)


@pytest.mark.parametrize("voiced, expected", [(8, None), (9, (11, 12)), (10, (11, 13))])
def test_vad_triggers_at_exactly_90_percent_of_a_300_ms_window(voiced, expected):
    """A stretch of ``voiced`` 30 ms frames from frame 12: windows [i, i + 10) with ≥ 9 voiced frames
    are "on"; the first starts the singing, the last + 10 frames ends it. 8 of 10 is not enough."""
    flags = np.zeros(40, bool)
    flags[12:12 + voiced] = True
    got = vad.singing_range(flags, 30, 300, 0.9)
    if expected is None:
        assert got is None
    else:
        first, last = expected
        assert got == pytest.approx((first * 0.03, (last + 10) * 0.03), abs=1e-12)


def test_vad_range_by_value():
    flags = np.zeros(40, bool)
    flags[12:21] = True                     # 9 voiced frames: windows starting at 11 and 12 hold 9
    assert vad.singing_range(flags, 30, 300, 0.9) == pytest.approx((0.33, 0.66), abs=1e-12)
    assert vad.singing_range(np.ones(10, bool), 30, 300, 0.9) == pytest.approx((0.0, 0.3))   # one window exactly
    assert vad.singing_range(np.ones(9, bool), 30, 300, 0.9) is None                        # shorter than one window
    # another padding: 600 ms = 20 frames, 18 voiced needed
    flags = np.zeros(60, bool)
    flags[5:23] = True
    assert vad.singing_range(flags, 30, 600, 0.9) == pytest.approx((0.09, 0.75), abs=1e-12)   # windows 3..5 hold 18
    flags[22] = False
    assert vad.singing_range(flags, 30, 600, 0.9) is None


def _ingest(n_frames, fps=30):
    return {"source": "/x.mp4", "n_frames": n_frames, "fps": fps, "width": 512, "height": 256,
            "duration": n_frames / fps, "source_fps": float(fps)}


def test_vad_stage_snaps_the_range_outwards_to_whole_video_frames(tmp_path, ctx_factory, monkeypatch):
    """VAD frames 11..22 (0.33 s .. 0.66 s) on the 30 fps timeline: start floor(9.9) = 9, end ceil(19.8) = 20;
    every track is cut to exactly those frames' samples."""
    sr = 16000
    d = tmp_path / "in"
    d.mkdir()
    ramp = (np.arange(sr * 2) / (sr * 2)).astype(np.float32)
    for name in ("vocals", "acc", "s0", "s1"):
        media.write_wav(d / f"{name}.wav", ramp, sr)
    flags = np.zeros(66, bool)
    flags[12:21] = True
    monkeypatch.setattr(vad, "voiced_flags", lambda *a, **k: flags)
    ups = {"ingest": _ingest(60),
           "bgm_split": {"vocals": str(d / "vocals.wav"), "accompaniment": str(d / "acc.wav")},
           "duet_split": {"singers": [str(d / "s0.wav"), str(d / "s1.wav")], "singers_16k": []}}
    ctx = ctx_factory("vad", ups)
    res = vad.process(ctx, vad.Params(), None)
    assert (_get(res.outputs, "start_frame"), _get(res.outputs, "end_frame")) == (9, 20)
    x, got_sr = media.read_wav(ctx.tmp / _get(res.outputs, "singers_16k")[0])
    n, a = round(11 * sr / 30), round(9 * sr / 30)       # 11 frames of audio from frame 9's sample
    assert got_sr == sr and len(x) == n == 5867
    np.testing.assert_allclose(x, ramp[a:a + n], atol=1e-6)


# ----------------------------------------------------------------------------- supplied stems' length
def _check_stems():
    from chorushead.stages import ingest
    return ingest._check_stems, ingest


@pytest.mark.parametrize("duration, refuse", [(40.0, 4.0), (100.0, 5.0), (5.0, 1.0)])
def test_stems_refused_just_beyond_the_tolerance_accepted_at_it(duration, refuse):
    """Refused beyond min(5 s, 10 % of the video) but never under 1 s; warned beyond 0.5 s."""
    check, ingest = _check_stems()
    assert (ingest.STEMS_WARN_S, ingest.STEMS_REFUSE_S, ingest.STEMS_REFUSE_FRAC, ingest.STEMS_REFUSE_MIN_S) == (
        0.5, 5.0, 0.10, 1.0)
    for sign in (1, -1):
        at = duration + sign * refuse
        warnings, worst = check("v.mp4", duration, {"vocals": (at, 44100), "singer1": (duration, 44100)})
        assert worst == pytest.approx(refuse) and len(warnings) == 1 and "stem vocals" in warnings[0]
        beyond = up(at) if sign > 0 else down(at)
        with pytest.raises(BadInput, match="another cut of the song"):
            check("v.mp4", duration, {"vocals": (beyond, 44100), "singer1": (duration, 44100)})


@pytest.mark.parametrize("sign", [1, -1])
def test_stems_warned_just_beyond_half_a_second_not_at_it(sign):
    check, _ = _check_stems()
    at = 40.0 + sign * 0.5
    assert check("v.mp4", 40.0, {"vocals": (at, 44100)}) == ([], pytest.approx(0.5))
    beyond = up(at) if sign > 0 else down(at)
    warnings, _ = check("v.mp4", 40.0, {"vocals": (beyond, 44100)})
    assert len(warnings) == 1 and ("+0.50 s" if sign > 0 else "-0.50 s") in warnings[0]


def test_stems_at_another_rate_than_the_others_are_warned():
    check, _ = _check_stems()
    warnings, _ = check("v.mp4", 40.0, {"vocals": (40.0, 44100), "singer1": (40.0, 44100), "singer2": (40.0, 48000)})
    assert len(warnings) == 1 and "singer2 is at 48000 Hz" in warnings[0]


# ----------------------------------------------------------------------------- review flags
from chorushead.review import flags as F   # noqa: E402


def test_flag_defaults_are_the_documented_ones():
    th = F.Thresholds()
    assert (th.min_jaw_std, th.max_jitter, th.max_jump, th.max_det_doubt, th.min_assign_conf, th.min_seconds) == (
        0.02, 0.01, 0.25, 0.02, 0.1, 7.0)


def _segment(jaw_amp=0.1, noise=0.0, t=300, seed=0):
    rng = np.random.default_rng(seed)
    c = np.zeros((2, t, 56))
    c[:, :, 50] = jaw_amp * np.sin(np.arange(t) / 5.0)[None] * np.array([[1.0], [0.5]])
    c[:, :, 53:56] = rng.normal(0, noise, (2, t, 3)) if noise else 0.0
    return c


def test_flag_measurements_by_value():
    c = _segment(jaw_amp=0.1, noise=0.01)
    assert F.jaw_std(c) == pytest.approx(np.std(c[1, :, 50]))                 # the smaller of the two singers
    acc = np.abs(np.diff(c[:, :, 50:56], n=2, axis=1)).mean(axis=(1, 2))
    assert F.jitter(c) == pytest.approx(acc.max())                            # the larger of the two
    assert F.max_jump(c) == pytest.approx(np.abs(np.diff(c[:, :, 50:56], axis=1)).max())
    probs = np.array([[0.99] * 10, [0.9] * 5 + [0.95] * 5])
    assert F.det_doubt(probs, 0, 10) == pytest.approx(1 - 0.925)
    assert F.det_doubt(probs, 5, 10) == pytest.approx(1 - 0.95)


def _flags(th, **kw):
    return F.flag_segment(th=th, **kw).flags


@pytest.mark.parametrize("eps, flagged", [(0.0, True), (1e-9, False)])
def test_short_segment_at_exactly_min_seconds_is_flagged(eps, flagged):
    """7 s = 210 frames at 30 fps is on the threshold (severity exactly 0.5, flagged); a hair longer is not."""
    th = F.Thresholds(min_seconds=7.0 * (1 - eps))
    assert ("short" in _flags(th, n_frames=210, fps=30)) == flagged
    assert "short" in _flags(F.Thresholds(), n_frames=209, fps=30)
    assert "short" not in _flags(F.Thresholds(), n_frames=211, fps=30)


@pytest.mark.parametrize("flag, field, metric, low_is_bad", [
    ("still_mouth", "min_jaw_std", "jaw_std", True),
    ("jitter", "max_jitter", "jitter", False),
    ("jump", "max_jump", "jump", False),
    ("low_detection", "max_det_doubt", "det_doubt", False),
    ("low_assign", "min_assign_conf", "assign_conf", True)])
def test_each_flag_at_its_threshold_and_either_side(flag, field, metric, low_is_bad):
    """The threshold set to the measured value: flagged (on the threshold, severity 0.5); moved by
    1e-9 relative to the safe side: not flagged; to the bad side: flagged."""
    c = _segment(jaw_amp=0.05, noise=0.02)
    probs = np.full((2, 300), 0.97)
    kw = dict(n_frames=300, coeffs=c, raw=c, probs=probs, seg_range=(0, 300), assign={"confidence": 0.3}, fps=30)
    measured = {"jaw_std": F.jaw_std(c), "jitter": F.jitter(c), "jump": F.max_jump(c),
                "det_doubt": F.det_doubt(probs, 0, 300), "assign_conf": 0.3}[metric]
    assert F.flag_segment(**kw).metrics[metric] == pytest.approx(measured, abs=1e-6)
    safe = measured * (1 - 1e-9) if low_is_bad else measured * (1 + 1e-9)
    bad = measured * (1 + 1e-9) if low_is_bad else measured * (1 - 1e-9)
    assert flag in _flags(F.Thresholds(**{field: measured}), **kw)
    assert flag not in _flags(F.Thresholds(**{field: safe}), **kw)
    assert flag in _flags(F.Thresholds(**{field: bad}), **kw)


def test_flags_of_a_clean_segment_and_the_assign_verdict():
    c = _segment(jaw_amp=0.2)               # jaw std 0.07 and 0.035 > 0.02; smooth; no jump
    probs = np.full((2, 300), 0.99)
    kw = dict(n_frames=300, coeffs=c, raw=c, probs=probs, seg_range=(0, 300), fps=30)
    assert F.flag_segment(**kw, assign={"confidence": 0.5}).flags == []
    # the assign stage's own low_confidence verdict wins over the threshold, either way
    assert F.flag_segment(**kw, assign={"confidence": 0.5, "low_confidence": True}).flags == ["low_assign"]
    assert F.flag_segment(**kw, assign={"confidence": 0.01, "low_confidence": False}).flags == []
    assert F.flag_segment(**kw, assign={"confidence": 0.01}).flags == ["low_assign"]
    # a NaN in the fit is an evident error: jump
    bad = c.copy()
    bad[0, 7, 54] = np.nan
    assert "jump" in F.flag_segment(**{**kw, "coeffs": bad, "raw": bad}).flags


def test_suspicion_score_on_the_threshold_is_half_the_weight():
    """Each flag's severity is exactly 0.5 on its threshold: the score is then 0.5 * its weight
    plus the (tiny) severities of the others."""
    assert F._soft(1.0) == 0.5
    assert F._soft(2.0) == pytest.approx(1 / (1 + 2 ** -4)) and F._soft(0.5) == pytest.approx(1 / (1 + 2 ** 4))
    s = F.flag_segment(n_frames=210, fps=30)      # no fit: no_fit (1.0 * 0.1) + short on its threshold
    assert s.flags == ["short", "no_fit"]
    assert s.score == pytest.approx(F.WEIGHTS["short"] * 0.5 + F.WEIGHTS["no_fit"] * 1.0, abs=1e-4)


# ----------------------------------------------------------------------------- decisions: 90 % accept cover
from chorushead.core import decisions as D   # noqa: E402


def _resolve(tmp_path, made, segments=((100, 200),)):
    out = tmp_path / "out"
    for i, (decision, frames) in enumerate(made):
        D.record_decision(out, "v", 0, decision, frames=frames)
    return D.decisions(out, {"v": list(segments)}), D.resolve(out, {"v": list(segments)})


def test_accept_cover_is_90_percent():
    assert D.ACCEPT_COVER == 0.9


@pytest.mark.parametrize("frames, state", [((100, 190), "accept"), ((100, 189), None), ((110, 200), "accept"),
                                           ((111, 200), None), ((91, 181), None), ((95, 200), "accept")])
def test_exactly_90_percent_accepted_is_accepted_just_under_is_unreviewed(tmp_path, frames, state):
    got, _ = _resolve(tmp_path, [("accept", frames)])
    assert got.get(("v", 0)) == state


def test_accepted_pieces_add_up_but_overlaps_count_once(tmp_path):
    got, _ = _resolve(tmp_path / "a", [("accept", (100, 150)), ("accept", (160, 200))])   # 50 + 40 = 90
    assert got == {("v", 0): "accept"}
    got, _ = _resolve(tmp_path / "b", [("accept", (100, 150)), ("accept", (100, 189))])   # union 89
    assert got == {}


def test_one_rejected_frame_rejects_the_segment(tmp_path):
    got, _ = _resolve(tmp_path / "a", [("accept", (100, 200)), ("reject", (199, 200))])   # its last frame
    assert got == {("v", 0): "reject"}
    got, _ = _resolve(tmp_path / "b", [("accept", (100, 200)), ("reject", (200, 201))])   # the frame after it
    assert got == {("v", 0): "accept"}
    got, _ = _resolve(tmp_path / "c", [("accept", (100, 200)), ("reject", (99, 100))])    # the frame before it
    assert got == {("v", 0): "accept"}
    # a newer accept paints over the rejected frame (the newer decision wins on its own frames)
    got, _ = _resolve(tmp_path / "d", [("reject", (150, 151)), ("accept", (100, 200))])
    assert got == {("v", 0): "accept"}
    # undo clears: back to unreviewed
    got, _ = _resolve(tmp_path / "e", [("reject", (150, 151)), ("undo", (100, 200))])
    assert got == {}


def test_a_decision_touching_no_segment_is_unmatched(tmp_path):
    _, res = _resolve(tmp_path / "a", [("reject", (200, 210))])
    assert [(p.start, p.end) for p in res.unmatched] == [(200, 210)] and res.segments == {}
    _, res = _resolve(tmp_path / "b", [("reject", (199, 210))])
    assert res.unmatched == [] and res.segments[("v", 0)].decision == "reject"


@pytest.mark.parametrize("length, need", [(151, 136), (7, 7), (157, 142), (1000, 900)])
def test_accept_cover_rounds_up_to_whole_frames(tmp_path, length, need):
    """At least 90 % of the frames: ceil(0.9 * length) accepted frames and no fewer."""
    seg = ((1000, 1000 + length),)
    got, _ = _resolve(tmp_path / "a", [("accept", (1000, 1000 + need))], segments=seg)
    assert got == {("v", 0): "accept"}
    got, _ = _resolve(tmp_path / "b", [("accept", (1000, 1000 + need - 1))], segments=seg)
    assert got == {}


@pytest.mark.parametrize("ratio, padding_ms, frame_ms", [(0.28, 250, 10), (0.56, 250, 10), (0.9, 300, 30)])
def test_vad_triggers_at_exactly_its_share_whatever_the_float_rounding(ratio, padding_ms, frame_ms):
    """ratio x window voiced frames trigger even when the product is 7.000000000000001 in floats; one
    fewer does not."""
    import math
    from chorushead.stages.vad import singing_range
    win = padding_ms // frame_ms
    need = round(ratio * win)
    assert math.isclose(need, ratio * win)
    f = np.zeros(4 * win, bool)
    f[win:win + need] = True
    assert singing_range(f, frame_ms, padding_ms, ratio) is not None
    f[win + need - 1] = False
    assert singing_range(f, frame_ms, padding_ms, ratio) is None
