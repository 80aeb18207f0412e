"""What the review shows (chorushead.review.view): cases mutation testing showed were not pinned
(docs/mutation-survivors.md). A small hand-written build (no video; tiny wavs at 100 Hz so waveform
envelopes can be worked out by hand); values are stated by hand."""
from __future__ import annotations

import os

import numpy as np
import pytest

from chorushead.core import media
from chorushead.core.decisions import Painted, record_decision
from chorushead.core.manifest import Manifest, Record, fingerprint
from chorushead.review import view as V
from chorushead.review.flags import Thresholds, flag_segment
from chorushead.runner import save_items
from chorushead.stages.base import Item


def put(out, stage, item, outputs, metrics=None, status="done"):
    Manifest(out, stage).append(Record(item=item, stage=stage, status=status, fingerprint=fingerprint(stage, item),
                                       outputs=outputs, metrics=metrics or {}))


def make_build(out):
    """Video ``a`` (25 fps, vad from frame 10, two singers' wavs at 100 Hz: 4 samples a frame, assign
    swaps them, crop probs, segment 0 of [0, 8) and [8, 20) smoothed); ``b`` (only contiguity: items.json's
    source, the threshold fps, 2 strips); ``c`` (contiguity failed: left out); ``d`` (contiguity only,
    not in items.json: no source)."""
    out.mkdir(parents=True, exist_ok=True)
    d = out / "items" / "a"
    (d / "vad").mkdir(parents=True)
    (d / "crop").mkdir()
    (d / "smooth").mkdir()
    s0 = np.arange(80, dtype=np.float32) / 100          # singer 0: a ramp
    s1 = -np.arange(80, dtype=np.float32) / 100
    media.write_wav(d / "vad" / "s0.wav", s0, 100)
    media.write_wav(d / "vad" / "s1.wav", np.stack([s1, s1 + 0.5], axis=1), 100)   # stereo: averaged
    put(out, "ingest", "a", {"source": "/nonexistent/a.mp4", "fps": 25, "width": 8, "height": 4, "n_frames": 40,
                             "duration": 1.6, "source_fps": 25.0},
        {"seconds_of_video": 1.6, "frames": 40, "resolution": "8x4", "source_fps": 25.0, "warnings": ["stem x"]})
    put(out, "vad", "a", {"start_frame": 10, "end_frame": 30, "start_s": 0.4, "end_s": 1.2, "sr": 100,
                          "vocals_16k": "items/a/vad/v.wav", "bgm_16k": "items/a/vad/b.wav",
                          "singers_16k": ["items/a/vad/s0.wav", "items/a/vad/s1.wav"]})
    probs = np.ones((3, 20), np.float32)
    probs[2, 8:] = 0.5
    np.savez(d / "crop" / "detections.npz", probs=probs)
    put(out, "crop", "a", {"detections": "items/a/crop/detections.npz", "strips": ["items/a/crop/strip0/",
                           "/items/a/crop/stripX"], "n_strips": 2, "frames": 20, "start_frame": 10, "crop_size": 224})
    put(out, "contiguity", "a", {"segments": [[0, 8], [8, 20]], "strip_runs": [], "n_frames": 20})
    c = np.zeros((2, 8, 56), np.float32)
    c[:, :, 50] = [0, 0.1, 0, 0.1, 0, 0.1, 0, 0.1]
    c[0, :, 53] = np.radians(10)
    c[1, 3, 50] = np.nan
    raw = c + 0.01
    raw[:, 4, 54] += 0.3                               # the raw fit jumps where the smoothed one does not
    np.savez(d / "smooth" / "seg000.npz", coeffs=c, raw=raw)
    put(out, "smooth", "a", {"segments": ["items/a/smooth/seg000.npz"]})
    put(out, "assign", "a", {"order": [1, 0], "confidence": 0.9, "low_confidence": False})
    put(out, "contiguity", "b", {"segments": [[0, 30]], "strip_runs": [], "n_frames": 30})
    put(out, "contiguity", "c", {}, status="failed")
    put(out, "contiguity", "d", {"segments": [[0, 108001]], "strip_runs": [], "n_frames": 108001})
    save_items(out, [Item(id="a", source="/other/a.mp4"), Item(id="b", source="/videos/b.mp4"),
                     Item(id="c", source="/videos/c.mp4")])
    return out


@pytest.fixture
def view(tmp_path):
    v = V.BuildView(make_build(tmp_path / "out"), Thresholds())
    v.refresh()
    return v


def test_videos_and_segments(view, tmp_path):
    assert view.out == (tmp_path / "out").resolve()
    assert sorted(view.videos) == ["a", "b", "d"]
    a, b, d = view.videos["a"], view.videos["b"], view.videos["d"]
    assert (a.source, a.fps, sorted(a.records)) == ("/nonexistent/a.mp4", 25,
                                                   ["assign", "contiguity", "crop", "ingest", "smooth", "vad"])
    assert (b.source, b.fps, d.source, d.fps) == ("/videos/b.mp4", 30, None, 30)
    a0, a1, b0 = view.segments["a:0"], view.segments["a:1"], view.segments["b:0"]
    assert (a0.key, a0.video, a0.index, a0.start, a0.end, a0.abs_start, a0.coeffs) == (
        "a:0", "a", 0, 0, 8, 10, "items/a/smooth/seg000.npz")
    assert a0.n_strips == 2                           # from the coefficients (the probs have 3)
    assert (a1.start, a1.end, a1.abs_start, a1.coeffs) == (8, 20, 18, None)
    assert a1.frames == (18, 30) and a1.n_frames == 12
    assert (b0.abs_start, b0.n_strips, b0.frames) == (0, 2, (0, 30))
    assert type(a1.start) is int and type(a1.abs_start) is int
    # flags as flag_segment gives them for the same inputs
    det = np.ones((3, 20), np.float32)
    det[2, 8:] = 0.5
    assert a1.flags == flag_segment(12, probs=det, seg_range=(8, 20), segment=1, stems_warnings=["stem x"], fps=25,
                                    assign={"order": [1, 0], "confidence": 0.9, "low_confidence": False})
    assert b0.flags == flag_segment(30, fps=30)
    assert a0.flags.metrics["frames"] == 8 and "stems_warnings" in a0.flags.metrics
    assert list(view.segments) == ["a:0", "a:1", "b:0", "d:0"]
    assert view.order == sorted(view.segments, key=lambda k: -view.segments[k].flags.score)


def test_n_strips_from_the_detections_else_the_crop_strips(tmp_path):
    out = make_build(tmp_path / "out")
    put(out, "smooth", "a", {"segments": []})
    v = V.BuildView(out, Thresholds())
    v.refresh()
    assert v.segments["a:0"].n_strips == 3 and v.segments["a:0"].coeffs is None      # the probs' 3 strips
    (out / "items" / "a" / "crop" / "detections.npz").unlink()
    put(out, "crop", "a", {"detections": "items/a/crop/detections.npz", "strips": ["s0", "s1", "s2"], "n_strips": 3,
                           "frames": 20, "start_frame": 10, "crop_size": 224})
    v.refresh()
    assert v.segments["a:1"].n_strips == 3 and "det_doubt" not in v.segments["a:1"].flags.metrics


def test_refresh_reloads_only_when_a_manifest_changes(view, monkeypatch):
    loads = []
    real = view._load
    monkeypatch.setattr(view, "_load", lambda: (loads.append(1), real())[1])
    view.refresh()
    assert loads == []
    stamp = view._manifest_stamp()
    assert [s for s, *_ in stamp] == ["ingest", "vad", "crop", "contiguity", "smooth", "assign", "items"]
    assert all(n > 0 and t > 0 for _, t, n in stamp)
    put(view.out, "contiguity", "b", {"segments": [[0, 10], [10, 30]], "strip_runs": [], "n_frames": 30})
    view.refresh()
    assert loads == [1] and "b:1" in view.segments
    view.refresh()
    assert loads == [1]
    record_decision(view.out, "b", 0, "accept", frames=(0, 10))        # decisions are not in the stamp
    view.refresh()
    assert loads == [1]
    os.utime(view.out / "items.json", ns=(1, 1))
    view.refresh()
    assert loads == [1, 1]


def test_a_missing_manifest_stamps_zero(tmp_path):
    (tmp_path / "manifests").mkdir()
    v = V.BuildView(tmp_path, Thresholds())
    assert v._manifest_stamp() == tuple((s, 0, 0) for s in V.STAGES + ("items",))
    v.refresh()
    assert v.videos == {} and v.segments == {} and v.order == []
    assert v.segment_list() == [] and v.unmatched() == []


def test_cached_reads(view, monkeypatch):
    calls = []
    load = lambda p: calls.append(p.name) or len(calls)   # noqa: E731
    rel = "items/a/vad/s0.wav"
    assert view._cached({}, 2, "nope", load) is None and calls == []
    cache = {}
    assert view._cached(cache, 2, rel, load) == 1 and view._cached(cache, 2, rel, load) == 1
    p = view.out / rel
    os.utime(p, ns=(5, 5))                               # a replaced file is read again
    assert view._cached(cache, 2, rel, load) == 2 and len(cache) == 2
    os.utime(p, ns=(6, 6))
    assert view._cached(cache, 2, rel, load) == 3 and len(cache) == 3     # at the limit: kept
    os.utime(p, ns=(7, 7))
    assert view._cached(cache, 2, rel, load) == 4 and len(cache) == 1     # over it: cleared first
    assert view.smoothed(None) is None and view.smoothed("items/a/smooth/nope.npz") is None
    seg = view.smoothed("items/a/smooth/seg000.npz")
    assert seg.coeffs.shape == (2, 8, 56) and view.smoothed("items/a/smooth/seg000.npz") is seg
    a, sr = view.wav("items/a/vad/s1.wav")
    assert sr == 100 and a.shape == (80,) and a[0] == pytest.approx(0.25)      # stereo averaged
    assert view.wav("items/a/vad/s0.wav")[0].shape == (80,)


def test_cache_limits(view, monkeypatch):
    sizes = []
    real = V.BuildView._cached

    def spy(self, cache, limit, rel, load):
        sizes.append(limit)
        return real(self, cache, limit, rel, load)
    monkeypatch.setattr(V.BuildView, "_cached", spy)
    view.smoothed("items/a/smooth/seg000.npz")
    view.wav("items/a/vad/s0.wav")
    assert sizes == [256, 16]


def test_segment_list_rows(view):
    record_decision(view.out, "a", 1, "reject", reason="blur", frames=(18, 30))
    rows = {r["key"]: r for r in view.segment_list()}
    a1 = view.segments["a:1"]
    assert rows["a:1"] == {"key": "a:1", "video": "a", "index": 1, "start": 8, "end": 20, "frames": 12,
                           "seconds": 0.48, "rank": view.order.index("a:1"), "score": a1.flags.score,
                           "flags": a1.flags.flags, "metrics": a1.flags.metrics, "decision": "reject",
                           "reason": "blur"}
    assert rows["b:0"]["decision"] is None and rows["b:0"]["reason"] is None and rows["b:0"]["seconds"] == 1.0
    assert [r["rank"] for r in view.segment_list()] == [0, 1, 2, 3]
    assert rows["a:0"]["seconds"] == 0.32 and rows["d:0"]["seconds"] == 3600.033


def test_decisions_segmentation_and_unmatched(view):
    record_decision(view.out, "a", 0, "accept", frames=(10, 18))
    record_decision(view.out, "d", 0, "reject", reason="r", frames=(200000, 200020))   # no segment there
    dec = view.decisions()
    assert list(dec) == ["a:0"]
    assert dec["a:0"]["decision"] == "accept" and dec["a:0"]["reason"] is None and dec["a:0"]["frames"] == [10, 18]
    assert dec["a:0"]["time"] > 0
    assert view._ranges() == {"a": [(10, 18), (18, 30)], "b": [(0, 30)], "d": [(0, 108001)]}
    un = view.unmatched()
    assert len(un) == 1
    u = un[0]
    assert {k: u[k] for k in ("video", "frames", "decision", "reason", "made_on")} == {
        "video": "d", "frames": [200000, 200020], "decision": "reject", "reason": "r", "made_on": "d:0"}
    assert u["time"] > 0
    assert view.segmentation("a") == view.videos["a"].records["contiguity"].fingerprint
    assert view.segmentation("zz") is None
    view.videos["a"].records.pop("contiguity")
    assert view.segmentation("a") is None


def test_ranges_list_a_video_left_without_segments(view):
    put(view.out, "contiguity", "b", {"segments": [], "strip_runs": [], "n_frames": 30})
    view.refresh()
    assert view._ranges()["b"] == []
    record_decision(view.out, "b", 0, "accept", frames=(0, 30))
    assert [r["video"] for r in view.unmatched()] == ["b"]


def test_summary(view):
    record_decision(view.out, "a", 0, "accept", frames=(10, 18))
    record_decision(view.out, "b", 0, "accept", frames=(0, 30))
    s = view.summary()
    ha0, ha1, hb, hd = 8 / 25 / 3600, 12 / 25 / 3600, 30 / 30 / 3600, 108001 / 30 / 3600
    r = lambda x: round(x, 4)   # noqa: E731
    assert s["videos"]["a"] == {"segments": 2, "reviewed": 1, "accepted": 1, "rejected": 0, "hours": r(ha0 + ha1),
                                "accepted_hours": r(ha0), "rejected_hours": 0.0, "unreviewed_hours": r(ha1)}
    assert s["videos"]["b"] == {"segments": 1, "reviewed": 1, "accepted": 1, "rejected": 0, "hours": r(hb),
                                "accepted_hours": r(hb), "rejected_hours": 0.0, "unreviewed_hours": 0.0}
    assert s["total"] == {"segments": 4, "reviewed": 2, "accepted": 2, "rejected": 0,
                          "hours": r(ha0 + ha1 + hb + hd), "accepted_hours": 0.0004, "rejected_hours": 0.0,
                          "unreviewed_hours": 1.0001}
    assert s["videos"]["d"]["hours"] == 1.0 and list(s["videos"]) == ["a", "b", "d"]
    assert type(s["total"]["segments"]) is int
    record_decision(view.out, "a", 0, "reject", frames=(10, 18))
    record_decision(view.out, "d", 0, "reject", frames=(0, 108001))
    t = view.summary()["total"]
    assert (t["rejected"], t["accepted"], t["rejected_hours"], t["unreviewed_hours"]) == (2, 1, r(ha0 + hd), r(ha1))


def test_summary_counts_an_undo_as_unreviewed(view):
    record_decision(view.out, "b", 0, "reject", frames=(0, 30))
    record_decision(view.out, "b", 0, "undo", frames=(0, 30))
    assert view.summary()["videos"]["b"]["reviewed"] == 0


def test_detail_of_a_smoothed_segment(view):
    record_decision(view.out, "a", 0, "reject", reason="x", frames=(10, 18))
    d = view.detail("a:0", mesh=True)
    a0 = view.segments["a:0"]
    fp = view.videos["a"].records["crop"].fingerprint
    assert {k: d[k] for k in ("key", "video", "index", "start", "end", "abs_start", "frames", "fps", "n_strips",
                              "flags", "metrics", "score", "decision", "reason", "clip")} == {
        "key": "a:0", "video": "a", "index": 0, "start": 0, "end": 8, "abs_start": 10, "frames": 8, "fps": 25,
        "n_strips": 2, "flags": a0.flags.flags, "metrics": a0.flags.metrics, "score": a0.flags.score,
        "decision": "reject", "reason": "x", "clip": None}
    assert d["strips"] == [{"strip": 0, "base": "/files/items/a/crop/strip0/", "first": 0, "version": fp},
                           {"strip": 1, "base": "/files/items/a/crop/stripX/", "first": 0, "version": fp}]
    assert d["jaw"] == [[0, 0.1, 0, 0.1, 0, 0.1, 0, 0.1], [0, 0.1, 0, 0.0, 0, 0.1, 0, 0.1]]   # NaN drawn as 0
    assert d["jaw_raw"][0] == [0.01, 0.11, 0.01, 0.11, 0.01, 0.11, 0.01, 0.11] and d["jaw_raw"][1][3] == 0.0
    assert np.array(d["pose"]).shape == (2, 3, 8)
    assert d["pose"][0][0] == [10.0] * 8 and d["pose"][0][1] == [0.0] * 8 and d["pose"][1][0] == [0.0] * 8
    assert d["mesh"] == ["/mesh/a/0/0/", "/mesh/a/0/1/"]
    assert d["audio"] == view._waveforms(a0, view.videos["a"]) and len(d["audio"]) == 2
    assert set(d) == {"key", "video", "index", "start", "end", "abs_start", "frames", "fps", "n_strips", "flags",
                      "metrics", "score", "decision", "reason", "clip", "strips", "jaw", "jaw_raw", "pose", "audio",
                      "mesh"}
    assert view.detail("a:0", mesh=False)["mesh"] is None


def test_detail_without_a_raw_fit_draws_the_smoothed_one(view):
    c = np.zeros((1, 8, 56), np.float32)
    c[0, :, 50] = 0.2
    np.savez(view.out / "items" / "a" / "smooth" / "seg000.npz", coeffs=c)
    os.utime(view.out / "items" / "a" / "smooth" / "seg000.npz", ns=(9, 9))
    d = view.detail("a:0", mesh=False)
    assert d["jaw"] == d["jaw_raw"] == [[0.2] * 8]


def test_detail_of_a_bare_segment(view):
    d = view.detail("b:0", mesh=True)
    assert d["strips"] == [] and d["jaw"] is None and d["jaw_raw"] is None and d["pose"] is None
    assert d["audio"] == [] and d["mesh"] is None and d["decision"] is None and d["fps"] == 30
    assert view.detail("a:1", mesh=True)["mesh"] is None                      # no fit


def test_waveforms_follow_assign(view):
    a0 = view.segments["a:0"]
    w = view._waveforms(a0, view.videos["a"])
    # strip 0 hears track 1 (assign order [1, 0]); 4 samples a frame
    assert [(x["strip"], x["track"], x["assigned"]) for x in w] == [(0, 1, True), (1, 0, True)]
    s1 = (-np.arange(80) / 100 + (-np.arange(80) / 100 + 0.5)) / 2
    assert w[0]["min"] == [round(float(s1[4 * f + 3]), 3) for f in range(8)]
    assert w[0]["max"] == [round(float(s1[4 * f]), 3) for f in range(8)]
    assert w[1]["min"] == [round(f * 0.04, 3) for f in range(8)]
    assert w[1]["max"] == [round(f * 0.04 + 0.03, 3) for f in range(8)]
    assert type(w[0]["track"]) is int
    a1 = view.segments["a:1"]
    assert view._waveforms(a1, view.videos["a"])[1]["min"][0] == 0.32       # frame 8: samples 32..35


def test_waveforms_without_a_matching_assign(view):
    v = view.videos["a"]
    s = view.segments["a:0"]
    v.records.pop("assign")
    w = view._waveforms(s, v)
    assert [(x["strip"], x["track"], x["assigned"]) for x in w] == [(0, 0, False), (1, 1, False)]
    v.records["assign"] = Record(item="a", stage="assign", status="done", fingerprint="0" * 16,
                                 outputs={"order": [1], "confidence": 0.9, "low_confidence": False})
    assert [x["track"] for x in view._waveforms(s, v)] == [0, 1] and not view._waveforms(s, v)[0]["assigned"]
    (view.out / "items" / "a" / "vad" / "s0.wav").unlink()                   # a missing track is left out
    assert [x["track"] for x in view._waveforms(s, v)] == [1]
    v.records.pop("vad")
    assert view._waveforms(s, v) == []


def test_waveforms_with_no_tracks(view):
    v = view.videos["a"]
    v.records["vad"] = Record(item="a", stage="vad", status="done", fingerprint="0" * 16,
                              outputs={**v.records["vad"].outputs, "singers_16k": []})
    v.records["assign"] = Record(item="a", stage="assign", status="done", fingerprint="0" * 16,
                                 outputs={"order": [], "confidence": 0.9, "low_confidence": False})
    assert view._waveforms(view.segments["a:0"], v) == []


def test_coeffs(view):
    c = view.coeffs("a:0", 1)
    assert c.shape == (8, 56) and c[1, 50] == pytest.approx(0.1)
    with pytest.raises(KeyError) as e:
        view.coeffs("a:1", 0)
    assert e.value.args == ("a:1",)


def test_envelope_by_hand():
    a = np.array([1.0, -1.0, 2.0, 0.5, 3.0, -2.0])
    assert V._envelope(a, 2, 1, 0, 3) == ([-1.0, 0.5, -2.0], [1.0, 2.0, 3.0])
    assert V._envelope(a, 2, 1, 1, 2) == ([0.5], [2.0])
    assert V._envelope(a, 2, 1, 2, 5) == ([-2.0, 0.0, 0.0], [3.0, 0.0, 0.0])     # past the end: zeros
    # edges round(0, .5, 1, 1.5, 2) = 0, 0, 1, 2, 2: frames 0 and 3 have no sample (0)
    assert V._envelope(a, 1, 2, 0, 4) == ([0.0, 1.0, -1.0, 0.0], [0.0, 1.0, -1.0, 0.0])
    assert V._envelope(np.zeros(0), 2, 1, 0, 2) == ([0.0, 0.0], [0.0, 0.0])
    assert V._envelope(np.array([0.12345]), 1, 1, 0, 1) == ([0.123], [0.123])


def test_rounded_and_painted_row():
    assert V._rounded(np.array([0.123456, 1.0], np.float32)) == [0.1235, 1.0]
    assert V._rounded(np.array([0.123456]), 2) == [0.12]
    p = Painted("v", 3, 9, "reject", "why", 12.5, "v:1")
    assert V._painted_row(p) == {"video": "v", "frames": [3, 9], "decision": "reject", "reason": "why",
                                 "time": 12.5, "made_on": "v:1"}


def test_a_fresh_view_is_empty_until_refreshed(tmp_path):
    v = V.BuildView(make_build(tmp_path / "out"), Thresholds(min_seconds=1.0))
    assert (v.videos, v.segments, v.order, v._stamp) == ({}, {}, [], ())
    v.refresh()
    c = np.load(v.out / "items/a/smooth/seg000.npz")
    det = np.ones((3, 20), np.float32)
    det[2, 8:] = 0.5
    assert v.segments["a:0"].flags == flag_segment(
        8, coeffs=c["coeffs"], raw=c["raw"], probs=det, seg_range=(0, 8), segment=0, th=Thresholds(min_seconds=1.0),
        stems_warnings=["stem x"], fps=25, assign={"order": [1, 0], "confidence": 0.9, "low_confidence": False})


def test_assign_confidence_per_segment(tmp_path):
    out = make_build(tmp_path / "out")
    put(out, "assign", "a", {"order": [1, 0], "confidence": [0.9, 0.05], "low_confidence": False})
    v = V.BuildView(out, Thresholds())
    v.refresh()
    assert v.segments["a:0"].flags.metrics["assign_conf"] == 0.9
    assert v.segments["a:1"].flags.metrics["assign_conf"] == 0.05


def test_a_listed_fit_that_is_missing_is_no_fit(tmp_path):
    out = make_build(tmp_path / "out")
    put(out, "smooth", "a", {"segments": ["items/a/smooth/seg000.npz", "items/a/smooth/gone.npz"]})
    v = V.BuildView(out, Thresholds())
    v.refresh()
    assert v.segments["a:1"].coeffs is None and "no_fit" in v.segments["a:1"].flags.flags


@pytest.mark.parametrize("change", [{"frames": 21}, {"start_frame": 11}])
def test_detections_are_checked_against_the_crop_record(tmp_path, change):
    out = make_build(tmp_path / "out")
    np.savez(out / "items" / "a" / "crop" / "detections.npz", probs=np.ones((2, 20), np.float32),
             start_frame=np.int32(10))
    put(out, "crop", "a", {"detections": "items/a/crop/detections.npz", "strips": ["s0", "s1"], "n_strips": 2,
                           "frames": 20, "start_frame": 10, "crop_size": 224, **change})
    with pytest.raises(Exception):
        V.BuildView(out, Thresholds()).refresh()


def test_cache_keys_on_the_path(view):
    for name in ("one", "two"):
        (view.out / name).write_text(name)
        os.utime(view.out / name, ns=(3, 3))
    cache = {}
    assert view._cached(cache, 4, "one", lambda p: p.read_text()) == "one"
    assert view._cached(cache, 4, "two", lambda p: p.read_text()) == "two"


def test_one_assigned_track(view):
    v = view.videos["a"]
    v.records["vad"] = Record(item="a", stage="vad", status="done", fingerprint="0" * 16,
                              outputs={**v.records["vad"].outputs, "singers_16k": ["items/a/vad/s0.wav"]})
    v.records["assign"] = Record(item="a", stage="assign", status="done", fingerprint="0" * 16,
                                 outputs={"order": [0], "confidence": 0.9, "low_confidence": False})
    w = view._waveforms(view.segments["a:0"], v)
    assert [(x["strip"], x["track"], x["assigned"]) for x in w] == [(0, 0, True)]


def test_envelope_of_frames_without_samples():
    assert V._envelope(np.array([1.0, 2.0]), 1, 2, 0, 1) == ([0.0], [0.0])
