"""assign: values worked out by hand or by an independent formula (np.corrcoef, brute force over the
assignments), written to kill the mutants that survived ``scripts/mutation.sh assign``
(see docs/mutation-survivors.md)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from chorushead.core.errors import BadInput
from chorushead.core.media import write_wav
from chorushead.core.windows import JAW_OPEN
from chorushead.stages.assign import STAGE, Params, best_assignment, correlate, loudness_envelope, pearson
from chorushead.stages.base import Context
from test_assign import assign_context

SR, FPS = 300, 30          # 10 samples per video frame: every frame edge is a whole sample


def db(x):
    return 10 * np.log10(np.asarray(x, np.float64) + 1e-12)


# --- loudness_envelope -------------------------------------------------------------------------------

def test_envelope_values_in_db_with_the_floor():
    amps = [0.5, 0.25, 0.0, 0.125]                     # exact in float32
    audio = np.repeat(np.array(amps, np.float32), 10) * np.tile([1, -1], 20).astype(np.float32)
    env = loudness_envelope(audio, SR, FPS, 4, -60.0)
    # energy per frame = amp^2; 10*log10(0.25) = -6.0206 dB; the silent frame is floored 60 dB under the peak
    want = [10 * np.log10(0.25 + 1e-12), 10 * np.log10(0.0625 + 1e-12), 10 * np.log10(0.25 + 1e-12) - 60,
            10 * np.log10(0.015625 + 1e-12)]
    assert env.shape == (4,)
    np.testing.assert_allclose(env, want, rtol=1e-12)
    assert env[0] == pytest.approx(-6.020599913, abs=1e-8)


def test_envelope_of_a_quiet_track_keeps_its_level():
    env = loudness_envelope(np.full(20, 1e-3, np.float32), SR, FPS, 2, -60.0)
    np.testing.assert_allclose(env, [db(float(np.float32(1e-3)) ** 2)] * 2, rtol=1e-9)
    assert env[0] == pytest.approx(-60.0, abs=1e-4)


def test_envelope_of_stereo_is_the_mean_of_its_channels():
    left = np.repeat(np.array([0.125, 0.25], np.float32), 10)
    audio = np.stack([left, 3 * left], axis=1)          # (N, 2): mean = 2 * left
    env = loudness_envelope(audio, SR, FPS, 2, -60.0)
    np.testing.assert_allclose(env, db([0.0625, 0.25]), rtol=1e-12)


def test_envelope_pads_a_short_track_with_silence():
    audio = np.full(25, 0.5, np.float32)                # frames: 10, 10, 5 of 10 samples, then none
    env = loudness_envelope(audio, SR, FPS, 4, -60.0)
    np.testing.assert_allclose(env, db([0.25, 0.25, 0.125, 0.0]).clip(db(0.25) - 60), rtol=1e-12)


def test_envelope_with_one_sample_per_frame():
    env = loudness_envelope(np.array([0.5, 0.25, 0.5], np.float32), 30, 30, 3, -60.0)
    np.testing.assert_allclose(env, db([0.25, 0.0625, 0.25]), rtol=1e-12)


# --- pearson, best_assignment, correlate ---------------------------------------------------------------

def test_pearson_values():
    a, b = np.array([1.0, 2.0, 4.0]), np.array([3.0, 1.0, 7.0])
    assert pearson(a, b) == pytest.approx(np.corrcoef(a, b)[0, 1], abs=1e-12)
    assert pearson(a, b) == pytest.approx(11 / 14, abs=1e-12)   # 66/9 over sqrt(42/9 * 168/9) = 84/9
    assert pearson(np.array([0.0, 0.1]), np.array([0.0, 0.1])) == pytest.approx(1.0)   # den 0.01: kept
    assert pearson(np.ones(4), np.arange(4.0)) == 0.0          # a constant: no correlation, not NaN
    # den exactly 1e-12 is "no variance" (strict >): 0.0, where the division would give 1.0
    assert pearson(np.array([0.0, 2e-12]), np.array([0.0, 1.0])) == 0.0


def test_best_assignment_of_fewer_strips_than_tracks():
    corr = np.array([[0.9, 0.1, 0.3], [0.2, 0.8, 0.7]])
    a = best_assignment(corr)
    # pairs (0,1) = 1.7, (0,2) = 1.6, (2,1) = 1.1, (1,2) = 0.8, (2,0) = 0.5, (1,0) = 0.3
    assert a.order == [0, 1]
    assert a.best_score == pytest.approx(1.7) and a.second_score == pytest.approx(1.6)
    assert a.confidence == pytest.approx(0.05)
    assert a.corr is corr


def test_best_assignment_of_one_strip_and_one_track():
    a = best_assignment(np.array([[0.4]]))
    assert a.order == [0] and a.confidence == 1.0
    assert a.best_score == pytest.approx(0.4) and a.second_score == -np.inf
    assert isinstance(a.best_score, float) and isinstance(a.second_score, float)


def test_correlate_weights_segments_by_their_length():
    env = np.array([[0.0, 1.0, 5.0, 2.0, 0.0, 1.0, 3.0, 2.0, 8.0, 4.0]])
    jaws = [np.array([[1.0, 2.0]]), np.array([[1.0, 0.0, 2.0, 4.0, 3.0, 1.0]])]
    per_seg, total = correlate(env, jaws, [(0, 2), (4, 10)])
    c0 = np.corrcoef(jaws[0][0], env[0, 0:2])[0, 1]     # 1.0
    c1 = np.corrcoef(jaws[1][0], env[0, 4:10])[0, 1]
    np.testing.assert_allclose(per_seg[0], [[c0]], atol=1e-12)
    np.testing.assert_allclose(per_seg[1], [[c1]], atol=1e-12)
    np.testing.assert_allclose(total, [[(2 * c0 + 6 * c1) / 8]], atol=1e-12)


# --- process -----------------------------------------------------------------------------------------

def build(root: Path, segments, jaws, amps, n_frames=None) -> Context:
    """jaws[i] (strips, T_i) for segment i; amps[j] the per-frame amplitude of voice track j."""
    (root / "items/song/vad").mkdir(parents=True)
    (root / "items/song/smooth").mkdir(parents=True)
    tracks = []
    for j, a in enumerate(amps):
        write_wav(root / f"items/song/vad/singer{j}_16k.wav", np.repeat(np.asarray(a, np.float32), SR // FPS), SR)
        tracks.append(f"items/song/vad/singer{j}_16k.wav")
    files = []
    for i, jaw in enumerate(jaws):
        coeffs = np.zeros((*np.shape(jaw), 56), np.float32)
        coeffs[:, :, JAW_OPEN] = jaw
        np.savez(root / f"items/song/smooth/seg{i:03d}.npz", coeffs=coeffs)
        files.append(f"items/song/smooth/seg{i:03d}.npz")
    n_frames = n_frames or max(e for _, e in segments)
    return assign_context(root, tracks, files, segments, n_frames)


SEGS = [(2, 8), (10, 18)]   # lengths 6 and 8, not starting at 0
AMPS = [[0.5, 0.25, 0.5, 0.125, 0.5, 0.25, 0.0625, 0.5, 0.125, 0.25,
         0.5, 0.125, 0.25, 0.5, 0.0625, 0.25, 0.5, 0.125],
        [0.125, 0.5, 0.25, 0.0625, 0.25, 0.5, 0.125, 0.25, 0.0625, 0.5,
         0.25, 0.5, 0.125, 0.0625, 0.25, 0.125, 0.0625, 0.5]]
JAWS = [np.array([[0.1, 0.3, 0.2, 0.0, 0.25, 0.05], [0.2, 0.0, 0.15, 0.3, 0.1, 0.05]]),
        np.array([[0.3, 0.1, 0.2, 0.35, 0.0, 0.2, 0.3, 0.1], [0.0, 0.3, 0.1, 0.05, 0.25, 0.1, 0.0, 0.3]])]


def expected(segments, jaws, amps):
    """Correlations, the assignment and its margin, computed here with np.corrcoef and brute force."""
    envs = [db(np.asarray(a, np.float64) ** 2) for a in amps]
    per_seg = [np.array([[np.corrcoef(np.float32(jaw[k]), env[s:e])[0, 1] for env in envs]
                         for k in range(len(jaw))]) for (s, e), jaw in zip(segments, jaws)]
    w = np.array([e - s for s, e in segments], float)
    total = sum(wi * c for wi, c in zip(w, per_seg)) / w.sum()
    same, swap = total[0, 0] + total[1, 1], total[0, 1] + total[1, 0]
    order = [0, 1] if same > swap else [1, 0]
    return per_seg, total, order, abs(same - swap) / 2


def test_process_values(tmp_path):
    r = STAGE.process(build(tmp_path, SEGS, JAWS, AMPS), Params(), None)
    STAGE.check(r)
    per_seg, total, order, conf = expected(SEGS, JAWS, AMPS)
    chosen = np.mean([total[k, order[k]] for k in range(2)])
    for x in [conf, chosen, *total.ravel()]:      # 4 decimals differ from 5 and from 0 here
        assert round(x, 4) != round(x, 5) and round(x, 4) != round(x)
    o, m = r.outputs, r.metrics
    assert r.status == "done"
    assert o["order"] == order
    assert o["confidence"] == round(conf, 4) and m["confidence"] == round(conf, 4)
    assert m["chosen_corr"] == round(chosen, 4)
    assert o["correlation"] == np.round(total, 4).tolist()
    assert o["segment_correlations"] == [np.round(c, 4).tolist() for c in per_seg]
    low = bool(conf < 0.1 or chosen < 0.15)
    assert o["low_confidence"] is low and m["low_confidence"] is low


def test_process_one_strip_one_track_thresholds_are_strict(tmp_path):
    # a still jaw: correlation exactly 0.0; one assignment only: confidence exactly 1.0
    ctx = build(tmp_path, [(0, 8)], [np.full((1, 8), 0.25)], [[0.5, 0.25] * 4])
    r = STAGE.process(ctx, Params(min_confidence=1.0, min_correlation=0.0), None)
    assert r.outputs["order"] == [0] and r.outputs["confidence"] == 1.0 and r.outputs["correlation"] == [[0.0]]
    assert r.outputs["low_confidence"] is False and r.metrics["low_confidence"] is False
    assert r.metrics["chosen_corr"] == 0.0
    r = STAGE.process(ctx, Params(), None)       # 0.0 < 0.15: flagged, in the outputs and the metrics
    assert r.outputs["low_confidence"] is True and r.metrics["low_confidence"] is True


def test_process_allows_exactly_max_singers_and_refuses_more(tmp_path):
    ctx = build(tmp_path, SEGS, JAWS, AMPS)
    assert STAGE.process(ctx, Params(max_singers=2), None).outputs["order"] == expected(SEGS, JAWS, AMPS)[2]
    ctx.upstream["vad"].outputs["singers_16k"] = ctx.upstream["vad"].outputs["singers_16k"] * 2   # 4 tracks
    with pytest.raises(BadInput) as e:
        STAGE.process(ctx, Params(max_singers=3), None)
    assert str(e.value) == "4 voice tracks: assignment by permutations is limited to 3"


def test_process_skips_without_segments(tmp_path):
    ctx = build(tmp_path, SEGS, JAWS, AMPS)
    ctx.upstream["contiguity"].outputs["segments"] = []
    r = STAGE.process(ctx, Params(), None)
    assert r.status == "skipped" and r.reason == "no segment to compare voices with faces"
    assert r.outputs["order"] == [0, 1] and r.outputs["confidence"] == 0.0 and r.outputs["low_confidence"] is True


def test_process_refusals_say_why(tmp_path):
    ctx = build(tmp_path, SEGS, JAWS, AMPS)
    ctx.upstream["contiguity"].outputs["segments"] = [[2, 8]]
    with pytest.raises(BadInput) as e:
        STAGE.process(ctx, Params(), None)
    assert str(e.value) == "smooth has 2 segments but contiguity has 1; rerun smooth"
    ctx.upstream["contiguity"].outputs["segments"] = [[2, 8], [10, 19]]
    with pytest.raises(BadInput) as e:
        STAGE.process(ctx, Params(), None)
    assert str(e.value) == "segment [10, 19) has 8 fitted frames"
