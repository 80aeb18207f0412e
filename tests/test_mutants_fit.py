"""fit stage (chorushead.stages.fit): cases mutation testing showed were not pinned
(docs/mutation-survivors.md). EMOCA and MediaPipe are replaced by stand-ins: ``setup`` is checked
through recording ``open`` stand-ins, ``identity`` through recording identity functions, and ``process``
runs in-process on a fake fitter that writes known coefficients (jaw openings chosen so that the mean
per strip is worked out by hand). Values are stated by hand; comments name what each case guards."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import chorushead.backends.emoca as emoca
import chorushead.backends.landmarks as landmarks
from chorushead.core.errors import BadInput, StageError
from chorushead.core.payloads import BadPayload, FitSegment
from chorushead.core.windows import JAW_OPEN
from chorushead.stages import fit
from chorushead.stages.base import result_params
from conftest import fit_upstream, make_ctx


# ----------------------------------------------------------------------------- params, setup, identity

def test_params_defaults_and_what_counts_for_the_fingerprint():
    p = fit.Params()
    assert (p.model_name, p.model_stage, p.models_dir, p.python, p.emoca_path, p.device, p.batch_size,
            p.backend, p.landmarks_python) == ("EMOCA_v2_lr_mse_20", "detail", "", "", "", "auto", 32, "emoca", "")
    assert result_params(p) == {"model_name": "EMOCA_v2_lr_mse_20", "model_stage": "detail", "backend": "emoca"}
    assert fit.COEFF_GROUPS == ["exp", "jaw", "pose"]
    o = fit.Outputs(segments=[], n_strips=0)           # records older than backend/coeff_groups: EMOCA, all three
    assert o.backend == "emoca" and o.coeff_groups == ["exp", "jaw", "pose"]
    o.coeff_groups.append("x")
    assert fit.Outputs(segments=[], n_strips=0).coeff_groups == ["exp", "jaw", "pose"]   # not shared
    assert fit.Metrics(images=0, segments=0, device="cpu", jaw_mean=[]).no_face == 0


@pytest.fixture
def opened(monkeypatch):
    calls = []
    monkeypatch.setattr(fit.EmocaBackend, "open", classmethod(lambda cls, **kw: calls.append(("emoca", kw)) or "E"))
    monkeypatch.setattr(fit.LandmarksBackend, "open",
                        classmethod(lambda cls, **kw: calls.append(("landmarks", kw)) or "L"))
    return calls


def test_setup_opens_the_chosen_backend_with_its_settings(opened):
    p = fit.Params(model_name="M", model_stage="coarse", models_dir="/m", python="/py", emoca_path="/code",
                   device="cuda:1", backend="emoca", landmarks_python="/lpy")
    assert fit.setup(p) == "E"
    assert opened == [("emoca", {"python": "/py", "emoca_path": "/code", "models": "/m", "model_name": "M",
                                 "stage": "coarse", "device": "cuda:1"})]
    opened.clear()
    assert fit.setup(fit.Params(backend="landmarks", python="/py", landmarks_python="/lpy")) == "L"
    assert opened == [("landmarks", {"python": "/lpy"})]


def test_setup_refuses_an_unknown_backend(opened):
    with pytest.raises(BadInput) as e:
        fit.setup(fit.Params(backend="deca"))
    assert str(e.value) == "fit.backend = 'deca': use 'emoca' or 'landmarks'"
    assert opened == []


def test_identity_of_each_backend(monkeypatch):
    seen = []
    monkeypatch.setattr(emoca, "identity", lambda *a: seen.append(("emoca", a)) or {"model": a[1], "files": {}})
    monkeypatch.setattr(landmarks, "identity", lambda *a: seen.append(("landmarks", a)) or {"mediapipe": "0.10"})
    p = fit.Params(model_name="M", model_stage="coarse", models_dir="/m", landmarks_python="/lpy")
    assert fit.identity(p) == {"backend": "emoca", "model": "M", "files": {}}
    assert seen == [("emoca", ("/m", "M", "coarse"))]
    seen.clear()
    assert fit.identity(fit.Params(backend="landmarks", landmarks_python="/lpy", models_dir="/m")) == \
        {"backend": "landmarks", "mediapipe": "0.10"}
    assert seen == [("landmarks", ("/lpy",))]


# ----------------------------------------------------------------------------- process

class FakeFitter:
    """Writes seg{i:03d}.npz with coeffs whose jaw opening is ``jaw[i][s]`` + 0.1 * t (frame t of the
    segment, strip s); ``found`` marks ``missing`` frames of strip 0 as no face."""

    def __init__(self, jaw, device="cuda:0", images=None, missing=None, frames_off=0):
        self.jaw, self.device, self.images, self.missing, self.frames_off = jaw, device, images, missing, frames_off
        self.calls = []

    def fit(self, strips, segments, out_dir, batch_size):
        self.calls.append((strips, segments, out_dir, batch_size))
        paths = []
        for i, (a, b) in enumerate(segments):
            c = np.zeros((len(strips), b - a, 56), np.float32)
            for s in range(len(strips)):
                c[s, :, JAW_OPEN] = self.jaw[i][s] + 0.1 * np.arange(b - a)
            found = None
            if self.missing is not None:
                found = np.ones((len(strips), b - a), bool)
                found[0, self.missing[i]] = False
            seg = FitSegment(coeffs=c, frames=np.array([a, b + self.frames_off]) if self.frames_off else
                             np.array([a, b]), found=found)
            if self.frames_off:
                seg.coeffs = np.zeros((len(strips), b - a + self.frames_off, 56), np.float32)
            paths.append(str(seg.save(Path(out_dir) / f"seg{i:03d}.npz")))
        return paths, (self.images if self.images is not None else sum(b - a for a, b in segments) * len(strips))


def build(tmp_path, segments, n_strips=2, make_dirs=True):
    ctx = make_ctx(tmp_path, "fit", fit_upstream(n_strips, segments, 40, "song"), item_id="song", out=tmp_path)
    if make_dirs:
        for s in range(n_strips):
            (tmp_path / "items/song/crop" / f"strip{s}").mkdir(parents=True)
    return ctx


def test_process_hands_the_fitter_strips_segments_and_batch_and_records_what_it_made(tmp_path):
    ctx = build(tmp_path, [[2, 6], [10, 13]])
    # segment 0: t = 0..3 -> mean offset 0.15; segment 1: t = 0..2 -> mean offset 0.1
    model = FakeFitter(jaw=[[0.1, 0.2], [0.3, 0.00004]], images=7.0)
    r = fit.STAGE.process(ctx, fit.Params(batch_size=5), model)
    fit.STAGE.check(r)
    assert model.calls == [([str(tmp_path / "items/song/crop/strip0"), str(tmp_path / "items/song/crop/strip1")],
                            [(2, 6), (10, 13)], Path(ctx.tmp), 5)]
    assert r.status == "done"
    assert r.outputs == {"segments": ["seg000.npz", "seg001.npz"], "n_strips": 2, "backend": "emoca",
                         "coeff_groups": ["exp", "jaw", "pose"]}
    # per strip, the mean over segments of each segment's mean jaw opening, to 4 decimals
    # strip 0: (0.25 + 0.4) / 2 = 0.325; strip 1: (0.35 + 0.10004) / 2 = 0.22502 -> 0.225
    assert r.metrics == {"images": 7, "segments": 2, "device": "cuda:0", "jaw_mean": [0.325, 0.225], "no_face": 0}
    assert isinstance(r.metrics["images"], int)


def test_process_counts_frames_without_a_face_and_names_the_landmarks_backend(tmp_path):
    ctx = build(tmp_path, [[0, 4], [5, 10]])
    model = FakeFitter(jaw=[[0, 0], [0, 0]], device="cpu", missing=[[1, 2], [4]])
    r = fit.STAGE.process(ctx, fit.Params(backend="landmarks"), model)
    assert r.outputs["backend"] == "landmarks" and r.outputs["coeff_groups"] == ["exp", "jaw", "pose"]
    assert r.metrics["no_face"] == 3 and r.metrics["images"] == 18 and r.metrics["device"] == "cpu"
    assert r.metrics["jaw_mean"] == [0.175, 0.175]     # (0.15 + 0.2) / 2 on both strips


def test_process_checks_each_file_against_its_segment(tmp_path):
    ctx = build(tmp_path, [[0, 4]])
    with pytest.raises(BadPayload, match=r"it covers frames \[0, 5\), the segment is \[0, 4\)"):
        fit.STAGE.process(ctx, fit.Params(), FakeFitter(jaw=[[0, 0]], frames_off=1))


def test_process_without_segments_skips_before_looking_at_crops(tmp_path):
    ctx = build(tmp_path, [], n_strips=3, make_dirs=False)
    r = fit.STAGE.process(ctx, fit.Params(), None)
    assert r.status == "skipped" and r.reason == "no segment with every singer's face"
    assert r.outputs == {"segments": [], "n_strips": 3, "backend": "emoca", "coeff_groups": ["exp", "jaw", "pose"]}


def test_process_names_the_first_missing_crop_folder(tmp_path):
    ctx = build(tmp_path, [[0, 4]], n_strips=3, make_dirs=False)
    (tmp_path / "items/song/crop/strip0").mkdir(parents=True)
    model = FakeFitter(jaw=[[0, 0, 0]])
    with pytest.raises(BadInput) as e:
        fit.STAGE.process(ctx, fit.Params(), model)
    assert str(e.value) == f"crop folder {tmp_path / 'items/song/crop/strip1'} is missing; rerun the crop stage"
    assert model.calls == []


# ----------------------------------------------------------------------------- Outputs.load_segment

def test_load_segment_bounds_and_span(tmp_path):
    folder = tmp_path / "items/song/fit"
    folder.mkdir(parents=True)
    for i, (a, b) in enumerate([(0, 3), (5, 7)]):
        FitSegment(coeffs=np.full((2, b - a, 56), i, np.float32), frames=np.array([a, b])).save(folder / f"seg{i:03d}.npz")
    o = fit.Outputs(segments=["items/song/fit/seg000.npz", "items/song/fit/seg001.npz"], n_strips=2)
    seg = o.load_segment(tmp_path, 1, (5, 7))
    assert seg.coeffs.shape == (2, 2, 56) and (seg.coeffs == 1).all()
    assert o.load_segment(str(tmp_path), 0).frames.tolist() == [0, 3]
    with pytest.raises(BadPayload, match=r"the segment is \[5, 8\)"):
        o.load_segment(tmp_path, 1, (5, 8))
    for i in (-1, 2):
        with pytest.raises(StageError) as e:
            o.load_segment(tmp_path, i)
        assert str(e.value) == f"fit has 2 segment(s), not a segment {i}; rerun fit"
