"""Values of chorushead.stages.smooth that mutation testing showed were not pinned
(docs/mutation-survivors.md, `scripts/mutation.sh smooth`).

Each test states a value worked out by hand (or from the metric's own definition); the comments name
what a bug would change.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

from chorushead.core.errors import StageError
from chorushead.core.payloads import BadPayload, SmoothSegment
from chorushead.stages import smooth


def _weights(sigma: float) -> np.ndarray:
    """The truncated Gaussian that gaussian_filter1d uses (radius round(4 σ)), worked out here."""
    r = int(4 * sigma + 0.5)
    k = np.arange(-r, r + 1)
    w = np.exp(-0.5 * (k / sigma) ** 2)
    return w / w.sum()


def _process(tmp_path, ctx_factory, segments: list[np.ndarray], sigma: float = 1.5):
    paths = []
    for i, c in enumerate(segments):
        p = tmp_path / f"fit{i}.npz"
        np.savez(p, coeffs=c)
        paths.append(str(p))
    ctx = ctx_factory("smooth", {"fit": {"segments": paths, "n_strips": segments[0].shape[0]}})
    res = smooth.process(ctx, smooth.Params(sigma=sigma), None)
    get = (lambda o, k: o[k] if isinstance(o, dict) else getattr(o, k))
    return ctx, res, get


# ----------------------------------------------------------------------------- smooth_coeffs
def test_edges_are_extended_with_the_nearest_value_not_reflected():
    """A ramp 0, 1, 2, ... along time: with mode="nearest" the first frame sees 0 for every tap before
    it, so it becomes Σ_{k>0} w_k·k; "reflect" (scipy's default) would read 0, 1, 2 ... backwards."""
    sigma = 1.5
    w = _weights(sigma)
    r = len(w) // 2
    t = np.arange(40, dtype=np.float64)
    c = np.zeros((2, 40, 56), np.float32)
    c[1, :, 53] = t                                  # one strip, one coefficient: the ramp
    s = smooth.smooth_coeffs(c, sigma)
    first = sum(w[r + k] * k for k in range(1, r + 1))
    last = 39 - first
    assert s[1, 0, 53] == pytest.approx(first, abs=1e-5)
    assert s[1, 39, 53] == pytest.approx(last, abs=1e-5)
    np.testing.assert_allclose(s[1, r:40 - r, 53], t[r:40 - r], atol=1e-5)   # a ramp is kept inside
    assert not s[0].any() and not np.delete(s[1], 53, axis=-1).any()         # no mixing across strips or coefficients
    assert s[1, 0, 53] > 0.3                                                  # "reflect" would give > first


def test_an_impulse_becomes_the_gaussian_along_time_only():
    sigma = 1.5
    w = _weights(sigma)
    c = np.zeros((1, 31, 56), np.float32)
    c[0, 15, 7] = 1.0
    s = smooth.smooth_coeffs(c, sigma)
    r = len(w) // 2
    np.testing.assert_allclose(s[0, 15 - r:15 + r + 1, 7], w, atol=1e-6)
    assert s[0, :, 7].sum() == pytest.approx(1.0, abs=1e-6)


def test_output_is_float32_for_float64_input_and_sigma_zero_is_the_identity():
    rng = np.random.default_rng(1)
    c = rng.normal(size=(2, 20, 56))                 # float64 in
    s = smooth.smooth_coeffs(c, 1.5)
    assert s.dtype == np.float32 and s.shape == c.shape
    s0 = smooth.smooth_coeffs(c, 0.0)
    assert s0.dtype == np.float32
    np.testing.assert_array_equal(s0, c.astype(np.float32))
    np.testing.assert_array_equal(smooth.smooth_coeffs(c, -1.0), c.astype(np.float32))


def test_a_sigma_below_one_frame_still_smooths():
    c = np.zeros((1, 21, 56), np.float32)
    c[0, 10, 0] = 1.0
    s = smooth.smooth_coeffs(c, 0.8)
    w = _weights(0.8)
    r = len(w) // 2
    np.testing.assert_allclose(s[0, 10 - r:10 + r + 1, 0], w, atol=1e-6)
    assert s[0, 10, 0] < 0.6


# ----------------------------------------------------------------------------- the stage
def test_stage_saves_smoothed_and_raw_and_its_metrics_by_value(tmp_path, ctx_factory):
    a = 0.0123456
    t = np.arange(50, dtype=np.float64)
    quad = np.repeat((0.5 * a * t ** 2)[None, :, None], 56, axis=-1)
    seg0 = np.repeat(quad, 2, axis=0).astype(np.float32)                  # (2, 50, 56), 2nd difference a
    rng = np.random.default_rng(0)
    seg1 = rng.normal(0, 0.05, (2, 30, 56)).astype(np.float32)
    ctx, res, get = _process(tmp_path, ctx_factory, [seg0, seg1])
    assert get(res.outputs, "segments") == ["seg000.npz", "seg001.npz"]
    assert get(res.metrics, "segments") == 2
    saved = [np.load(ctx.tmp / f"seg{i:03d}.npz") for i in range(2)]
    for seg, z in zip([seg0, seg1], saved):
        np.testing.assert_array_equal(z["raw"], seg)                       # the fit's, unsmoothed
        np.testing.assert_array_equal(z["coeffs"], smooth.smooth_coeffs(seg, 1.5))
    # accel: mean |second difference along time|, per segment, then averaged over segments
    before0 = float(np.abs(np.diff(seg0, 2, axis=1)).mean())
    assert before0 == pytest.approx(a, rel=1e-3)                          # the quadratic's a, by hand
    before = np.mean([before0, float(np.abs(np.diff(seg1, 2, axis=1)).mean())])
    after = np.mean([float(np.abs(np.diff(z["coeffs"], 2, axis=1)).mean()) for z in saved])
    assert get(res.metrics, "accel_before") == round(float(before), 5)
    assert get(res.metrics, "accel_after") == round(float(after), 5)
    assert round(float(before), 6) != round(float(before), 5)               # the rounding is seen
    assert round(float(after), 6) != round(float(after), 5)
    assert get(res.metrics, "accel_after") < get(res.metrics, "accel_before")


def test_segments_of_two_frames_or_fewer_have_no_acceleration(tmp_path, ctx_factory):
    seg = np.zeros((2, 2, 56), np.float32)
    seg[0, 1] = 1.0
    _, res, get = _process(tmp_path, ctx_factory, [seg])
    assert get(res.metrics, "segments") == 1
    assert get(res.metrics, "accel_before") == 0.0 and get(res.metrics, "accel_after") == 0.0


def test_a_three_frame_segment_counts(tmp_path, ctx_factory):
    seg = np.zeros((1, 3, 56), np.float32)
    seg[0, 1] = 1.0                                 # second difference −2 at the middle frame
    short = np.zeros((1, 2, 56), np.float32)        # and a 2-frame segment, left out of the mean
    _, res, get = _process(tmp_path, ctx_factory, [seg, short])
    assert get(res.metrics, "accel_before") == 2.0


# ----------------------------------------------------------------------------- Outputs.load_segment
def test_load_segment_checks_the_index_and_the_frame_count(tmp_path, ctx_factory):
    seg = np.zeros((2, 10, 56), np.float32)
    ctx, res, _ = _process(tmp_path, ctx_factory, [seg])
    import shutil
    shutil.copytree(ctx.tmp, tmp_path / "out" / "smooth")
    outs = smooth.Outputs(segments=["smooth/seg000.npz"])
    got = outs.load_segment(tmp_path / "out", 0, frames=10)
    assert isinstance(got, SmoothSegment) and got.coeffs.shape == (2, 10, 56)
    with pytest.raises(BadPayload, match="its frame count is 10, its record says 12"):
        outs.load_segment(tmp_path / "out", 0, frames=12)
    msg = "smooth has 1 segment(s), not a segment 1; rerun smooth"
    with pytest.raises(StageError, match="^" + re.escape(msg) + "$"):
        outs.load_segment(tmp_path / "out", 1)
    with pytest.raises(StageError, match="not a segment -1"):
        outs.load_segment(tmp_path / "out", -1)
    assert len(outs.load(tmp_path / "out")) == 1
