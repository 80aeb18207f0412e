"""Values of chorushead.stages.contiguity that mutation testing showed were not pinned
(docs/mutation-survivors.md, `scripts/mutation.sh contiguity`).

Each test states a value worked out by hand; the comments name what a bug would change.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

from chorushead.core.errors import BadInput
from chorushead.stages import contiguity


def _detections(tmp_path, probs, n_faces=None):
    """crop's outputs for ``probs`` (S, T); ``n_faces`` is left out of the file when None (older crops)."""
    p = tmp_path / "det.npz"
    s, t = probs.shape
    arrays = {"probs": probs.astype(np.float32), "boxes": np.zeros((s, t, 4), np.float32)}
    if n_faces is not None:
        arrays["n_faces"] = np.asarray(n_faces, np.int16)
    np.savez(p, **arrays)
    return {"crop": {"detections": str(p), "strips": [f"strip{k}" for k in range(s)], "n_strips": s,
                     "frames": t, "start_frame": 0, "crop_size": 224}}


def _run(tmp_path, ctx_factory, probs, n_faces=None, **params):
    ctx = ctx_factory("contiguity", _detections(tmp_path, probs, n_faces))
    return contiguity.process(ctx, contiguity.Params(**params), None)


# ----------------------------------------------------------------------------- runs
def test_runs_several_runs_with_exact_edges_and_python_ints():
    m = np.zeros(20, bool)
    m[0:3] = True          # touches the start, 3 long
    m[5:7] = True          # 2 long
    m[9:10] = True         # 1 long
    m[14:20] = True        # touches the end, 6 long
    assert contiguity.runs(m, 1) == [[0, 3], [5, 7], [9, 10], [14, 20]]
    assert contiguity.runs(m, 2) == [[0, 3], [5, 7], [14, 20]]
    assert contiguity.runs(m, 3) == [[0, 3], [14, 20]]      # exactly min_len is kept
    assert contiguity.runs(m, 4) == [[14, 20]]
    assert contiguity.runs(m, 7) == []
    assert all(type(x) is int for r in contiguity.runs(m, 1) for x in r)   # JSON-able, not np.int64
    assert contiguity.runs(np.zeros(5, bool), 1) == []
    assert contiguity.runs(np.ones(5, bool), 5) == [[0, 5]]


def test_runs_reads_any_truthy_mask_as_bool():
    # face counts (0, 1, 2, ...) as a mask: a 1 next to a 2 is one run, not an edge
    assert contiguity.runs([1, 2, 2, 0, 3, 1], 1) == [[0, 3], [4, 6]]


# ----------------------------------------------------------------------------- the stage
def test_stage_outputs_and_metrics_by_value(tmp_path, ctx_factory):
    probs = np.full((2, 600), 0.99)
    probs[0, :30] = 0.0           # strip 0 starts late
    probs[1, 200:220] = 0.5       # strip 1 below threshold for 20 frames
    probs[0, 400:450] = 0.0       # strip 0 gone for 50 frames
    res = _run(tmp_path, ctx_factory, probs)
    out, met = res.outputs, res.metrics
    get = (lambda o, k: o[k] if isinstance(o, dict) else getattr(o, k))
    # common runs: [30, 200) 170, [220, 400) 180, [450, 600) 150: all ≥ 150
    assert get(out, "segments") == [[30, 200], [220, 400], [450, 600]]
    assert get(out, "strip_runs") == [[[30, 400], [450, 600]], [[0, 200], [220, 600]]]
    assert get(out, "n_frames") == 600
    assert get(met, "segments") == 3
    assert get(met, "frames_kept") == 170 + 180 + 150
    assert get(met, "frames") == 600
    assert get(met, "kept_fraction") == 0.833          # 500 / 600 rounded to 3 places


def test_kept_fraction_is_rounded_to_three_places(tmp_path, ctx_factory):
    probs = np.full((1, 450), 0.99)
    probs[0, 300:] = 0.0
    res = _run(tmp_path, ctx_factory, probs)
    get = (lambda o, k: o[k] if isinstance(o, dict) else getattr(o, k))
    assert get(res.metrics, "kept_fraction") == 0.667  # 300 / 450 = 0.6666…


def test_params_are_used_threshold_min_seconds_fraction(tmp_path, ctx_factory):
    probs = np.full((1, 100), 0.6)
    probs[0, 50:] = 0.4
    get = (lambda o, k: o[k] if isinstance(o, dict) else getattr(o, k))
    # prob_threshold 0.5, 1 s at 30 fps = 30 frames
    res = _run(tmp_path, ctx_factory, probs, prob_threshold=0.5, min_seconds=1.0)
    assert get(res.outputs, "segments") == [[0, 50]]
    # exactly at prob_threshold counts as a face
    res = _run(tmp_path, ctx_factory, probs, prob_threshold=0.4, min_seconds=1.0)
    assert get(res.outputs, "segments") == [[0, 100]]
    # 50 frames is too short for 2 s (60 frames)
    with pytest.raises(BadInput, match="no range of ≥60 consecutive"):
        _run(tmp_path, ctx_factory, probs, prob_threshold=0.5, min_seconds=2.0)
    # max_multi_face_fraction: 10 multi-face frames of 50 = 0.2
    n_faces = np.ones((1, 100), int)
    n_faces[0, :10] = 2
    res = _run(tmp_path, ctx_factory, probs, n_faces, prob_threshold=0.5, min_seconds=1.0,
               max_multi_face_fraction=0.2)                                   # 0.2 is allowed
    assert get(res.outputs, "segments") == [[0, 50]]
    with pytest.raises(BadInput, match="two or more faces in 10 of its 50 face frames"):
        _run(tmp_path, ctx_factory, probs, n_faces, prob_threshold=0.5, min_seconds=1.0,
             max_multi_face_fraction=0.19)


def test_detections_without_n_faces_pass(tmp_path, ctx_factory):
    """An older crop file has no n_faces: every face frame counts as one face, nothing fails."""
    probs = np.full((2, 200), 0.99)
    res = _run(tmp_path, ctx_factory, probs, None)
    get = (lambda o, k: o[k] if isinstance(o, dict) else getattr(o, k))
    assert get(res.outputs, "segments") == [[0, 200]]


def test_exactly_two_faces_count_as_multi_one_does_not(tmp_path, ctx_factory):
    probs = np.full((2, 200), 0.99)
    n_faces = np.ones((2, 200), int)
    n_faces[0, :101] = 2                       # 101 of 200 frames with exactly two faces
    with pytest.raises(BadInput, match="strip 0 shows two or more faces in 101 of its 200"):
        _run(tmp_path, ctx_factory, probs, n_faces)
    n_faces[0, :101] = 1
    n_faces[1, :] = 0                           # zero detected faces is not "multi" either
    get = (lambda o, k: o[k] if isinstance(o, dict) else getattr(o, k))
    assert get(_run(tmp_path, ctx_factory, probs, n_faces).outputs, "segments") == [[0, 200]]


def test_multi_face_message_in_full(tmp_path, ctx_factory):
    probs = np.full((3, 200), 0.99)
    probs[2, 150:] = 0.0                        # strip 2: 150 face frames
    n_faces = np.ones((3, 200), int)
    n_faces[2, :100] = 3                        # 100 of its 150 face frames show 3 faces
    msg = ("strip 2 shows two or more faces in 100 of its 150 face frames: this is not one singer per strip. "
           "For 4 or more singers side by side, rebuild with --set crop.strips=N.")
    with pytest.raises(BadInput, match="^" + re.escape(msg) + "$"):
        _run(tmp_path, ctx_factory, probs, n_faces)


def test_multi_face_frames_without_a_confident_face_are_not_counted_against_a_strip(tmp_path, ctx_factory):
    """Only frames the strip has a face in are the denominator; a strip with no face frame never
    divides by zero (it fails later, for having no common run)."""
    probs = np.full((2, 300), 0.99)
    probs[1] = 0.0
    n_faces = np.zeros((2, 300), int)
    n_faces[0] = 1
    with pytest.raises(BadInput, match="no range"):
        _run(tmp_path, ctx_factory, probs, n_faces)


def test_no_common_run_message_in_full(tmp_path, ctx_factory):
    probs = np.zeros((3, 300))
    probs[0, 10:110] = 0.99       # 100 face frames, longest run 60
    probs[0, 110:150] = 0.0
    probs[0, 200:240] = 0.99
    probs[0, 110:130] = 0.0
    probs[0, 10:70] = 0.99
    probs[0, 70:80] = 0.0         # runs: [10, 70) 60, [80, 110) 30, [200, 240) 40 -> 130 frames
    probs[1, 5] = 0.99            # one face frame: longest run 1
    # strip 2: no face at all: longest run 0
    msg = ("no range of ≥150 consecutive frames with a face in every strip (strip 0: face in 130/300 frames, "
           "longest run 60, strip 1: face in 1/300 frames, longest run 1, strip 2: face in 0/300 frames, "
           "longest run 0).")
    with pytest.raises(BadInput, match="^" + re.escape(msg) + "$"):
        _run(tmp_path, ctx_factory, probs)


def test_detections_made_at_another_fps_are_refused(tmp_path, ctx_factory):
    """crop's file records the build's fps; contiguity checks it against its own (30), so runs in
    frames of a 25 fps crop are never read as 30 fps frames."""
    from chorushead.core.payloads import BadPayload
    probs = np.full((1, 200), 0.99)
    up = _detections(tmp_path, probs)
    det = dict(np.load(up["crop"]["detections"]))
    np.savez(up["crop"]["detections"], **det, fps=np.int32(25))
    ctx = ctx_factory("contiguity", up)
    assert ctx.fps == 30
    with pytest.raises(BadPayload, match="its fps is 25, its record says 30"):
        contiguity.process(ctx, contiguity.Params(), None)
    np.savez(up["crop"]["detections"], **det, fps=np.int32(30))
    get = (lambda o, k: o[k] if isinstance(o, dict) else getattr(o, k))
    assert get(contiguity.process(ctx, contiguity.Params(), None).outputs, "segments") == [[0, 200]]


def test_a_one_frame_video_with_a_one_frame_minimum_keeps_all_of_it(tmp_path, ctx_factory):
    """The smallest case the fraction's max(1, frames) guard is for: 1 frame kept of 1 is 1.0."""
    probs = np.full((2, 1), 0.99)
    res = _run(tmp_path, ctx_factory, probs, min_seconds=0.02)           # round(0.6) = 1 frame
    get = (lambda o, k: o[k] if isinstance(o, dict) else getattr(o, k))
    assert get(res.outputs, "segments") == [[0, 1]]
    assert (get(res.metrics, "frames_kept"), get(res.metrics, "frames"), get(res.metrics, "kept_fraction")) == (1, 1, 1.0)
