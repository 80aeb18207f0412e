"""Typed payloads (core/payloads.py): the files stages hand each other, read back typed and checked, in
the format the stages always wrote; and the pipeline's names refused where unknown."""
from __future__ import annotations

import json

import numpy as np
import pytest

from chorushead.core.manifest import Record
from chorushead.core.payloads import BadPayload, Detections, FitSegment, Separation, SmoothSegment
from chorushead.runner import Pipeline
from chorushead.stages import crop, fit, smooth

S, T = 2, 12


def detections(**change) -> Detections:
    rng = np.random.default_rng(0)
    d = dict(boxes=rng.random((S, T, 4), np.float32), probs=rng.random((S, T), np.float32),
             landmarks=rng.random((S, T, 5, 2), np.float32), n_faces=np.ones((S, T), np.int16),
             crop_boxes=rng.random((S, T, 4), np.float32), detected=np.ones((S, T), bool),
             strip_x0=np.array([0, 100], np.int32), strip_width=np.int32(100), fps=np.int32(30),
             start_frame=np.int32(7), crop_size=np.int32(224))
    d.update(change)
    return Detections(**d)


def test_detections_keep_crops_file_format(tmp_path):
    """Same keys, order and dtypes as crop v4 wrote with np.savez: builds made before stay current."""
    det = detections()
    p = det.save(tmp_path / "detections.npz")
    with np.load(p) as z:
        assert z.files == ["boxes", "probs", "landmarks", "n_faces", "crop_boxes", "detected", "strip_x0",
                           "strip_width", "fps", "start_frame", "crop_size"]
        assert [z[k].dtype.str for k in ("probs", "n_faces", "detected", "fps")] == ["<f4", "<i2", "|b1", "<i4"]
    back = Detections.load(p, fps=30, start=7, frames=T)
    assert np.array_equal(back.probs, det.probs) and back.n_strips == S and back.n_frames == T


def test_a_payload_that_does_not_match_is_one_line_naming_file_and_stage(tmp_path):
    p = detections().save(tmp_path / "detections.npz")
    for kw, what in ((dict(fps=25), "its fps is 30, its record says 25"),
                     (dict(start=0), "its start frame is 7"), (dict(frames=T + 1), "its frame count is 12")):
        with pytest.raises(BadPayload, match=rf"detections.npz: {what}.*rerun stage crop") as e:
            Detections.load(p, **kw)
        assert "\n" not in str(e.value)
    np.savez(tmp_path / "bad.npz", probs=np.ones((S, T), np.int8))
    with pytest.raises(BadPayload, match="probs is int8, expected kind 'f'"):
        Detections.load(tmp_path / "bad.npz")
    np.savez(tmp_path / "bad.npz", probs=np.ones((S, T), np.float32), detected=np.ones((S, T + 1), bool))
    with pytest.raises(BadPayload, match="detected has shape .*its T is 13, expected 12"):
        Detections.load(tmp_path / "bad.npz")
    np.savez(tmp_path / "bad.npz", boxes=np.ones((S, T, 4), np.float32))
    with pytest.raises(BadPayload, match="no array 'probs'"):
        Detections.load(tmp_path / "bad.npz")
    with pytest.raises(BadPayload, match="file missing; rerun stage crop"):
        Detections.load(tmp_path / "absent.npz")
    (tmp_path / "torn.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(BadPayload, match="unreadable"):
        Detections.load(tmp_path / "torn.npz")


def test_fit_and_smooth_segments_check_their_frames(tmp_path):
    c = np.zeros((S, T, 56), np.float32)
    p = FitSegment(coeffs=c, frames=np.array([100, 100 + T], np.int64), found=np.ones((S, T), bool)).save(tmp_path / "f.npz")
    with np.load(p) as z:
        assert z.files == ["coeffs", "frames", "found"]          # as the landmarks backend writes it
    assert FitSegment.load(p, (100, 100 + T)).shape is None
    with pytest.raises(BadPayload, match=r"covers frames \[100, 112\), the segment is \[0, 12\).*rerun stage fit"):
        FitSegment.load(p, (0, T))
    np.savez(tmp_path / "f.npz", coeffs=np.zeros((S, T, 55), np.float32))
    with pytest.raises(BadPayload, match="its 56 is 55"):
        FitSegment.load(tmp_path / "f.npz")
    p = SmoothSegment(coeffs=c, raw=c).save(tmp_path / "s.npz")
    assert SmoothSegment.load(p, T).raw is not None
    with pytest.raises(BadPayload, match="its frame count is 12, its record says 13; rerun stage smooth"):
        SmoothSegment.load(p, T + 1)


def test_payloads_are_reached_from_records(tmp_path):
    out = tmp_path
    (out / "items/v/crop").mkdir(parents=True)
    detections().save(out / "items/v/crop/detections.npz")
    rec = Record(item="v", stage="crop", status="done", fingerprint="x",
                 outputs={"detections": "items/v/crop/detections.npz", "strips": [], "n_strips": S, "frames": T,
                          "start_frame": 7, "crop_size": 224})
    assert crop.Outputs.of(rec).load(out, fps=30).n_frames == T
    with pytest.raises(BadPayload, match="its fps is 30, its record says 25"):
        crop.Outputs.of(rec).load(out, fps=25)
    rec.outputs["start_frame"] = 8                       # a record and a file from different runs
    with pytest.raises(BadPayload, match="start frame is 7, its record says 8"):
        crop.Outputs.of(rec).load(out)
    c = np.arange(S * T * 56, dtype=np.float32).reshape(S, T, 56)
    SmoothSegment(coeffs=c, raw=c).save(out / "s.npz")
    FitSegment(coeffs=c, frames=np.array([0, T])).save(out / "f.npz")
    sm = smooth.Outputs.of(Record(item="v", stage="smooth", status="done", fingerprint="x", outputs={"segments": ["s.npz"]}))
    assert np.array_equal(sm.load(out)[0].coeffs, c) and np.array_equal(sm.load_segment(out, 0, T).coeffs, c)
    fr = fit.Outputs.of(Record(item="v", stage="fit", status="done", fingerprint="x",
                               outputs={"segments": ["f.npz"], "n_strips": S}))
    assert np.array_equal(fr.load_segment(out, 0, (0, T)).coeffs, c)
    with pytest.raises(Exception, match="fit has 1 segment"):
        fr.load_segment(out, 1)


def test_separation_round_trip_and_checks(tmp_path):
    for name in ("vocals.wav", "accompaniment.wav", "singer1.wav", "singer2.wav"):
        (tmp_path / name).write_bytes(b"")
    sep = Separation(song="/s.wav", video=None, vocals="vocals.wav", accompaniment="accompaniment.wav",
                     singers=["singer1.wav", "singer2.wav"], order_source="separator", order=[0, 1], note="n")
    sep.save(tmp_path)
    assert Separation.load(tmp_path) == sep
    assert Separation.load(tmp_path).paths(tmp_path) == ([tmp_path / "singer1.wav", tmp_path / "singer2.wav"],
                                                         tmp_path / "accompaniment.wav")
    d = json.loads((tmp_path / "separation.json").read_text())
    (tmp_path / "separation.json").write_text(json.dumps({**d, "extra": 1}))
    with pytest.raises(BadPayload, match="expected the fields of Separation"):
        Separation.load(tmp_path)
    (tmp_path / "separation.json").write_text(json.dumps(d))
    (tmp_path / "singer2.wav").unlink()
    with pytest.raises(BadPayload, match="names singer2.wav, not in"):
        Separation.load(tmp_path)


# ----------------------------------------------------------------------------- unknown names are refused
def test_unknown_names_in_a_pipeline_are_refused_at_load(tmp_path):
    base = '[pipeline]\nfps = 30\nstages = ["ingest", "vad"]\n'
    for extra, match in (("[stage.vad]\nsr = 16000\n", r"unknown table\(s\) \['stage'\]"),
                         ("", None)):
        f = tmp_path / "p.toml"
        f.write_text(base + extra)
        if match:
            with pytest.raises(ValueError, match=match):
                Pipeline.load(f)
        else:
            assert Pipeline.load(f).stages == ["ingest", "vad"]
    f.write_text(base.replace("fps = 30", "fsp = 30"))
    with pytest.raises(ValueError, match=r"unknown \[pipeline\] key\(s\) \['fsp'\]"):
        Pipeline.load(f)
    f.write_text(base.replace('"vad"]', '"vda"]'))
    with pytest.raises(ValueError, match="unknown stage 'vda'"):
        Pipeline.load(f)
    f.write_text(base + "[stages.vad]\nsr_typo = 1\n")
    with pytest.raises(ValueError, match=r"stage vad: unknown parameter\(s\) \['sr_typo'\]"):
        Pipeline.load(f)
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['nope'\]"):
        Pipeline.load(None, ["crop.nope=1"])


def test_review_thresholds_come_from_the_builds_own_pipeline(tmp_path):
    from chorushead.review.flags import Thresholds
    from chorushead.review.server import pipeline_thresholds
    pl = Pipeline.load(None, ["review.min_seconds=3.5"])
    pl.save(tmp_path)                                    # what `chorushead build` saves: <out>/pipeline.json
    assert pipeline_thresholds(tmp_path) == Thresholds(min_seconds=3.5)
    assert pipeline_thresholds(tmp_path / "no-build-here") == pipeline_thresholds()   # else the default file
    Pipeline.load(None, ["review.min_secnds=3.5"]).save(tmp_path)
    with pytest.raises(ValueError, match=r"pipeline.json.*unknown \[stages.review\] threshold\(s\) \['min_secnds'\]"):
        pipeline_thresholds(tmp_path)
