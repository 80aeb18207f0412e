"""Tests that kill the mutants of chorushead/stages/vad.py that survived the existing tests
(docs/mutation-survivors.md). webrtcvad is replaced by a recorder, so the PCM it is handed (gain,
scaling, frame boundaries) is checked sample by sample; the stage's outputs and metrics are worked
out by hand from flags chosen by the test."""
from __future__ import annotations

import re
import sys
import types

import numpy as np
import pytest

from chorushead.core import media
from chorushead.core.errors import BadInput
from chorushead.stages import vad

SR = 16000


def _get(x, key):
    return x[key] if isinstance(x, dict) else getattr(x, key)


@pytest.fixture
def fake_webrtcvad(monkeypatch):
    """A webrtcvad stand-in: records the mode, each frame's samples and rate; a frame is "speech"
    when its first sample is positive."""
    log = {"modes": [], "frames": [], "rates": []}

    class Vad:
        def __init__(self, mode=None):
            log["modes"].append(mode)

        def is_speech(self, buf, sr):
            x = np.frombuffer(buf, "<i2").copy()
            log["frames"].append(x)
            log["rates"].append(sr)
            return bool(x.size and x[0] > 0)

    monkeypatch.setitem(sys.modules, "webrtcvad", types.SimpleNamespace(Vad=Vad))
    return log


def test_voiced_flags_normalises_to_0_9_and_hands_whole_frames(fake_webrtcvad):
    """Peak 0.1 -> gain 9: 0.1 becomes 0.9 -> int(0.9 * 32767) = 29490; -0.05 -> -0.45 -> -14745.
    10 ms at 16 kHz = 160 samples; 320 samples are exactly 2 frames starting at 0 and 160."""
    audio = np.concatenate([np.full(160, 0.1), np.full(160, -0.05)])
    flags = vad.voiced_flags(audio, SR, "2", 10)
    assert fake_webrtcvad["modes"] == [2] and type(fake_webrtcvad["modes"][0]) is int
    assert fake_webrtcvad["rates"] == [SR, SR]
    f0, f1 = fake_webrtcvad["frames"]
    np.testing.assert_array_equal(f0, np.full(160, 29490, np.int16))
    np.testing.assert_array_equal(f1, np.full(160, -14745, np.int16))
    assert flags.dtype == bool and flags.tolist() == [True, False]


def test_voiced_flags_drops_a_partial_last_frame(fake_webrtcvad):
    """319 samples at 10 ms frames: one whole frame (160) and a partial one that is not sent."""
    flags = vad.voiced_flags(np.full(319, 0.5), SR, 2, 10)
    assert [len(f) for f in fake_webrtcvad["frames"]] == [160]
    assert flags.tolist() == [True]


def test_voiced_flags_20_ms_frames_and_amplitude_above_one_is_brought_down(fake_webrtcvad):
    """frame_ms 20 is allowed (320 samples); a stem peaking at 2.0 is scaled by 0.45, not clipped."""
    audio = np.concatenate([np.full(320, 2.0), np.full(320, 1.0)])
    flags = vad.voiced_flags(audio, SR, 3, 20)
    assert fake_webrtcvad["modes"] == [3]
    np.testing.assert_array_equal(fake_webrtcvad["frames"][0], np.full(320, 29490, np.int16))
    np.testing.assert_array_equal(fake_webrtcvad["frames"][1], np.full(320, 14745, np.int16))  # 0.45
    assert flags.tolist() == [True, True]


def test_voiced_flags_gain_threshold_is_strict_and_silence_is_not_amplified(fake_webrtcvad):
    """A peak of exactly 1e-4 is not normalised (gain 1): int(1e-4 * 32767) = 3; a peak of 5e-5 stays
    int(5e-5 * 32767) = 1 (gain 1, not 2)."""
    vad.voiced_flags(np.full(160, 1e-4), SR, 2, 10)
    vad.voiced_flags(np.full(160, 5e-5), SR, 2, 10)
    np.testing.assert_array_equal(fake_webrtcvad["frames"][0], np.full(160, 3, np.int16))
    np.testing.assert_array_equal(fake_webrtcvad["frames"][1], np.full(160, 1, np.int16))


def test_voiced_flags_of_empty_audio_is_an_empty_bool_array(fake_webrtcvad):
    flags = vad.voiced_flags(np.zeros(0), SR, 2, 30)
    assert flags.dtype == bool and flags.shape == (0,) and fake_webrtcvad["frames"] == []


def test_voiced_flags_frame_length_is_checked_with_its_message(fake_webrtcvad):
    for ms in (10, 20, 30):
        vad.voiced_flags(np.full(SR // 10, 0.3), SR, 2, ms)
    with pytest.raises(ValueError, match=r"^webrtcvad frames must be 10, 20 or 30 ms$"):
        vad.voiced_flags(np.full(SR // 10, 0.3), SR, 2, 15)


def test_singing_range_window_of_one_frame():
    """padding 30 ms / frame 30 ms -> a window of 1 frame: the single voiced frame 1 is 0.03 .. 0.06 s."""
    assert vad.singing_range(np.array([False, True, False]), 30, 30, 0.9) == pytest.approx((0.03, 0.06))


def _process(tmp_path, ctx_factory, monkeypatch, n_frames, flags):
    d = tmp_path / "in"
    d.mkdir()
    t = np.arange(SR * 2, dtype=np.float32) / (SR * 2)
    tracks = {"vocals": t, "acc": -t, "s0": 0.5 * t, "s3": 0.25 * t}
    for name, x in tracks.items():
        media.write_wav(d / f"{name}.wav", x, SR)
    monkeypatch.setattr(vad, "voiced_flags", lambda *a, **k: flags)
    ups = {"ingest": {"source": "/x.mp4", "n_frames": n_frames, "fps": 30, "width": 512, "height": 256,
                      "duration": n_frames / 30, "source_fps": 30.0},
           "bgm_split": {"vocals": str(d / "vocals.wav"), "accompaniment": str(d / "acc.wav")},
           "duet_split": {"singers": [str(d / "s0.wav"), str(d / "s3.wav")], "singers_16k": []}}
    ctx = ctx_factory("vad", ups)
    return ctx, tracks, vad.process(ctx, vad.Params(), None)


def test_process_outputs_and_metrics_by_value(tmp_path, ctx_factory, monkeypatch):
    """66 flags, 12..20 voiced: singing 0.33 .. 0.66 s -> frames [9, 20) at 30 fps, 0.3 .. 0.6667 s.
    kept 11/30 = 0.367 s, trimmed 60/30 - 11/30 = 1.633 s, voiced 9/66 = 0.136."""
    flags = np.zeros(66, bool)
    flags[12:21] = True
    ctx, tracks, res = _process(tmp_path, ctx_factory, monkeypatch, 60, flags)
    o, m = res.outputs, res.metrics
    assert (_get(o, "start_frame"), _get(o, "end_frame")) == (9, 20)
    assert _get(o, "start_s") == pytest.approx(0.3, abs=1e-12)
    assert _get(o, "end_s") == pytest.approx(20 / 30, abs=1e-12)
    assert _get(o, "sr") == SR
    assert (_get(o, "vocals_16k"), _get(o, "bgm_16k")) == ("vocals_16k.wav", "bgm_16k.wav")
    assert _get(o, "singers_16k") == ["s0_16k.wav", "s3_16k.wav"]
    assert m is not None
    assert (_get(m, "kept_seconds"), _get(m, "trimmed_seconds"), _get(m, "voiced_fraction")) == (0.367, 1.633, 0.136)
    a, n = round(9 * SR / 30), round(11 * SR / 30)          # 4800, 5867
    for rel, src in (("vocals_16k.wav", "vocals"), ("bgm_16k.wav", "acc"), ("s0_16k.wav", "s0"), ("s3_16k.wav", "s3")):
        x, sr = media.read_wav(ctx.tmp / rel)
        assert sr == SR and len(x) == n
        np.testing.assert_allclose(x, tracks[src][a:a + n], atol=1e-6)


def test_process_keeps_a_single_frame(tmp_path, ctx_factory, monkeypatch):
    """The same singing on a 10-frame video: [9, 10), one frame = round(16000 / 30) = 533 samples."""
    flags = np.zeros(66, bool)
    flags[12:21] = True
    ctx, tracks, res = _process(tmp_path, ctx_factory, monkeypatch, 10, flags)
    assert (_get(res.outputs, "start_frame"), _get(res.outputs, "end_frame")) == (9, 10)
    x, _ = media.read_wav(ctx.tmp / "s0_16k.wav")
    np.testing.assert_allclose(x, tracks["s0"][4800:4800 + 533], atol=1e-6)


def test_process_singing_after_the_video_ends_is_refused(tmp_path, ctx_factory, monkeypatch):
    """Singing from frame 9 on a 5-frame video: nothing is left after snapping."""
    flags = np.zeros(66, bool)
    flags[12:21] = True
    msg = "the voiced range is empty after snapping to the video's frames"
    with pytest.raises(BadInput, match="^" + re.escape(msg) + "$"):
        _process(tmp_path, ctx_factory, monkeypatch, 5, flags)
