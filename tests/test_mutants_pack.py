"""Tests that kill the mutants of chorushead/stages/pack.py that survived the existing tests
(docs/mutation-survivors.md, `scripts/mutation.sh pack`). Values are worked out by hand: the parameter
checks at their boundaries, the window geometry (halves rounded up), whole error lines, what the plan,
the change set (``changes``) and the records say, and each failed write as its one line.
"""
from __future__ import annotations

import re

import lmdb
import numpy as np
import pytest

from chorushead.core.errors import StageError
from chorushead.core.manifest import Manifest, Record
from chorushead.core.payloads import FitSegment
from chorushead.core.windows import WindowReader, WindowWriter, decode_arrays
from chorushead.runner import run_global_stage
from chorushead.stages import fingerprint, fit, pack
from chorushead.stages.base import GlobalContext
from chorushead.stages.selection import assign_splits
from packfixture import lmdb_content, make_upstream


def run_pack(out, items, params=None, fps=30, append=False, progress=False):
    latest = {s: Manifest(out, s).latest() for s in (*pack.NEEDS, "pack")}
    recs = run_global_stage(pack.STAGE, params or pack.Params(), items, out, latest, fps, progress=progress)
    for r in recs if append else ():
        Manifest(out, "pack").append(r)
    return {r.item: r for r in recs}


def full(msg: str) -> str:
    return "^" + re.escape(msg) + "$"


# ----------------------------------------------------------------------------------------- Params
SPLIT_MSG = ("pack.split must be three fractions (train, val, test) ≥ 0 that sum to 1, e.g. [0.6, 0.1, 0.3]; "
             "got {}")


@pytest.mark.parametrize("split", [[0.7, 0.3], [0.5, 0.2, 0.2, 0.1], [1.2, -0.2, 0.0], [0.6, 0.1, "0.3"],
                                   [0.6, 0.1, 0.3 + 2e-6], [60, 10, 30], "0.6,0.1,0.3", None])
def test_a_bad_split_is_refused_with_the_whole_line(split):
    with pytest.raises(ValueError, match=full(SPLIT_MSG.format(repr(split)))):
        pack.Params(split=split)


@pytest.mark.parametrize("split", [[1, 0, 0], (0.6, 0.1, 0.3), [0.6, 0.1, 0.3 + 5e-7], [0.0, 0.5, 0.5]])
def test_a_good_split_is_taken(split):
    assert pack.Params(split=split).split == split


@pytest.mark.parametrize("w, s", [(0, 0.5), (5.0, 0), (-1.0, 0.5), (5.0, -0.5)])
def test_window_and_stride_must_be_positive(w, s):
    msg = f"pack.window_seconds and pack.stride_seconds must be > 0, got {w} and {s}"
    with pytest.raises(ValueError, match=full(msg)):
        pack.Params(window_seconds=w, stride_seconds=s)


def test_defaults():
    p = pack.Params()
    assert (p.window_seconds, p.stride_seconds, p.split, p.seed, p.sr, p.include_unreviewed, p.lmdb,
            p.map_size_gb) == (5.0, 0.5, [0.6, 0.1, 0.3], 0, 16000, True, "windows.lmdb", 1024)
    assert (p.dup_audio_max_ber, p.dup_frames_max_hamming, p.dup_min_overlap_s, p.dup_max_offset_s) == \
        (0.2, 8.0, 5.0, 30.0)


# --------------------------------------------------------------------------------------- Geometry
def test_geometry_rounds_halves_up():
    g = pack.Geometry.of(pack.Params(), 25)
    assert (g.fps, g.sr, g.window, g.stride) == (25, 16000, 125, 13)        # 12.5 frames -> 13
    g = pack.Geometry.of(pack.Params(window_seconds=0.5, stride_seconds=0.5, sr=8000), 1)
    assert (g.window, g.stride, g.sr) == (1, 1, 8000)                       # 0.5 -> 1: just enough
    g = pack.Geometry.of(pack.Params(window_seconds=1.0, stride_seconds=0.7), 10)
    assert (g.window, g.stride) == (10, 7)                                  # 7.5 would be 8; 7.0 stays 7
    g = pack.Geometry.of(pack.Params(window_seconds=0.34, stride_seconds=0.26), 10)
    assert (g.window, g.stride) == (3, 3)                                   # 3.4 -> 3, 2.6 -> 3


@pytest.mark.parametrize("w, s, fps, got", [(0.4, 0.5, 1, "0/1"), (0.5, 0.4, 1, "1/0"), (0.01, 0.01, 30, "0/0")])
def test_geometry_under_one_frame_is_refused(w, s, fps, got):
    msg = (f"pack: window_seconds={w}, stride_seconds={s} give {got} frames at {fps} fps; "
           "both must be at least one frame")
    with pytest.raises(StageError, match=full(msg)):
        pack.Geometry.of(pack.Params(window_seconds=w, stride_seconds=s), fps)


def test_n_audio_is_the_window_in_samples_rounded():
    assert pack.Geometry(fps=30, sr=16000, window=150, stride=15).n_audio == 80000
    assert pack.Geometry(fps=30, sr=16000, window=2, stride=1).n_audio == 1067     # 1066.67
    assert pack.Geometry(fps=30, sr=16000, window=1, stride=1).n_audio == 533      # 533.33


# ---------------------------------------------------------------------------------------- fit_meta
def _fit(backend="emoca", groups=("exp", "jaw", "pose")):
    return fit.Outputs(segments=[], n_strips=2, backend=backend, coeff_groups=list(groups))


def test_fit_meta():
    assert pack.fit_meta([]) == {"fit_backend": "emoca", "coeff_groups": ["exp", "jaw", "pose"]}
    assert pack.fit_meta([_fit("landmarks", ["jaw"]), _fit("landmarks", ["jaw"])]) == \
        {"fit_backend": "landmarks", "coeff_groups": ["jaw"]}
    msg = "pack: fit records disagree on the backend (emoca, landmarks, x); rerun fit with one backend for every video"
    with pytest.raises(StageError, match=full(msg)):
        pack.fit_meta([_fit("x"), _fit("landmarks"), _fit("emoca"), _fit("x")])
    msg = "pack: fit records disagree on the coefficient groups ([('exp',), ('exp', 'jaw')]); rerun fit"
    with pytest.raises(StageError, match=full(msg)):
        pack.fit_meta([_fit(groups=["exp", "jaw"]), _fit(groups=["exp"])])


# ------------------------------------------------------------------------------------ duplicates
def _rec(item, stage, status="done", fp="f", outputs=None):
    kw = {"error_class": "X", "message": "x"} if status == "failed" else {}
    return Record(item=item, stage=stage, status=status, fingerprint=fp, outputs=outputs or {}, **kw)


@pytest.fixture
def fake_groups(monkeypatch):
    """fingerprint.load and duplicate_groups replaced by recorders; duplicate_groups returns ``seen["ret"]``."""
    seen = {"ret": []}
    monkeypatch.setattr(fingerprint, "load", lambda out, rec: {"from": rec.item, "out": str(out)})

    def groups(prints, t):
        seen["prints"], seen["t"] = prints, t
        return seen["ret"]
    monkeypatch.setattr(fingerprint, "duplicate_groups", groups)
    return seen


def test_duplicates_compares_only_current_ok_fingerprints(tmp_path, fake_groups):
    out = tmp_path / "out"
    for it, ing, fp in [("good", "done", "i1"), ("stale", "done", "old"), ("fp_failed", "done", "i1"),
                        ("ing_failed", "failed", "i1"), ("no_fp", "done", "i1")]:
        Manifest(out, "ingest").append(_rec(it, "ingest", ing, "i1"))
        if it != "no_fp":
            Manifest(out, "fingerprint").append(_rec(it, "fingerprint", "failed" if it == "fp_failed" else "done",
                                                     outputs={"ingest_fingerprint": fp}))
    Manifest(out, "fingerprint").append(_rec("no_ingest", "fingerprint", outputs={"ingest_fingerprint": "i1"}))
    Manifest(out, "fingerprint").append(_rec("skip", "fingerprint", "skipped", outputs={"ingest_fingerprint": "i1"}))
    Manifest(out, "ingest").append(_rec("skip", "ingest", "skipped", "i1"))
    fake_groups["ret"] = [{"members": ["a", "b"]}]
    p = pack.Params(dup_audio_max_ber=0.1, dup_frames_max_hamming=3.0, dup_min_overlap_s=7.0, dup_max_offset_s=9.0)
    got = pack.duplicates(out, ["good", "stale", "fp_failed", "ing_failed", "no_fp", "no_ingest", "skip", "x"], p)
    assert got == [{"members": ["a", "b"]}]
    assert fake_groups["prints"] == {"good": {"from": "good", "out": str(out)},
                                     "skip": {"from": "skip", "out": str(out)}}
    assert fake_groups["t"] == fingerprint.Thresholds(audio_max_ber=0.1, frames_max_hamming=3.0,
                                                      min_overlap_s=7.0, max_offset_s=9.0)


# ------------------------------------------------------------------------------------------ plan
def _gctx(out, items, upstream=None, fingerprints=None, previous=None, progress=False):
    if upstream is None:
        upstream = {it.id: {s: r for s in pack.NEEDS for r in [Manifest(out, s).latest()[it.id]]} for it in items}
    return GlobalContext(out=out, fps=30, upstream=upstream, previous=previous or {},
                         fingerprints=fingerprints or {v: "fp-" + v for v in upstream},
                         progress=progress, items=sorted(it.id for it in items))


def test_plan_splits_over_every_registered_video_and_marks_only_duplicates(tmp_path, fake_groups):
    from chorushead.core.decisions import record_decision
    out = tmp_path / "out"
    items = make_upstream(out, n_videos=4, segments=((0, 200), (210, 400), (410, 600)), seconds=24.0)
    ids = [it.id for it in items]
    ready = {v: {s: Manifest(out, s).latest()[v] for s in pack.NEEDS} for v in ids[:3]}   # ids[3]: not ready
    group = {"members": [ids[0], ids[2]], "links": []}
    fake_groups["ret"] = [group]
    record_decision(out, ids[1], 1, "reject")
    p = pack.Params(seed=3, split=[0.5, 0.25, 0.25])
    plans = pack.plan(_gctx(out, items, upstream=ready), p)
    assert sorted(fake_groups["prints"]) == sorted(ids)  # every registered video's current fingerprint
    splits = assign_splits(sorted(ids), [0.5, 0.25, 0.25], 3, [[ids[0], ids[2]]])
    assert plans == {ids[0]: {"split": splits[ids[0]], "segments": [0, 1, 2], "group": group},
                     ids[1]: {"split": splits[ids[1]], "segments": [0, 2]},
                     ids[2]: {"split": splits[ids[2]], "segments": [0, 1, 2], "group": group}}
    assert splits[ids[0]] == splits[ids[2]]
    plans = pack.plan(_gctx(out, items, upstream=ready), pack.Params(seed=3, split=[0.5, 0.25, 0.25],
                                                                     include_unreviewed=False))
    assert [pl["segments"] for pl in plans.values()] == [[], [], []]


def test_plan_reads_decisions_on_the_timeline(tmp_path, fake_groups):
    """vad starts at frame 100: segment 1 (crop 210..400) is timeline 310..500; a reject on those frames hits it."""
    from chorushead.core.decisions import record_decision
    out = tmp_path / "out"
    items = make_upstream(out, n_videos=1, segments=((0, 200), (210, 400)), vad_start=100)
    record_decision(out, items[0].id, 0, "reject", frames=(310, 500))
    plans = pack.plan(_gctx(out, items), pack.Params())
    assert plans[items[0].id]["segments"] == [0]


def test_plan_groups():
    g = {"members": ["a", "b"], "links": [{"a": "a", "b": "b"}]}
    h = {"members": ["c", "d"], "links": []}
    plans = {"d": {"split": "test", "group": h}, "b": {"split": "val", "group": g}, "x": {"split": "train"},
             "a": {"split": "val", "group": g}, "c": {"split": "test", "group": h}}
    assert pack.plan_groups(plans) == [{**g, "splits": {"a": "val", "b": "val"}},
                                       {**h, "splits": {"c": "test", "d": "test"}}]
    assert g == {"members": ["a", "b"], "links": [{"a": "a", "b": "b"}]}        # not changed in place
    assert pack.plan_groups({"x": {"split": "train"}}) == []


def test_segment_identity_is_the_median_over_frames():
    coeffs = np.zeros((2, 3, 56), np.float32)
    assert pack.segment_identity(FitSegment(coeffs=coeffs)) is None
    shape = np.array([[[1, 10], [5, 20], [2, 90]], [[0, 0], [0, 1], [7, 1]]], np.float64)
    got = pack.segment_identity(FitSegment(coeffs=coeffs, shape=shape))
    assert got.dtype == np.float32 and got.tolist() == [[2, 20], [0, 1]]


# ---------------------------------------------------------------------------------- video_windows
def _recs(out, vid):
    return {s: Manifest(out, s).latest()[vid] for s in pack.NEEDS}


def test_windows_past_the_audio_end_are_padded_with_silence(tmp_path):
    """6 s of audio (96000 samples) but a 200-frame segment: the window at frame 45 starts at sample 24000
    and needs 80000, so its last 8000 samples are zeros."""
    out = tmp_path / "out"
    items = make_upstream(out, n_videos=1, seconds=6.0, segments=((0, 200),))
    vid = items[0].id
    g = pack.Geometry.of(pack.Params(), 30)
    (seg, entries), = list(pack.video_windows(out, vid, _recs(out, vid), g, "val", {0, 5}))
    assert seg == 0 and [k for k, _ in entries] == [f"w/{vid}/0000/{s:07d}".encode() for s in (0, 15, 30, 45)]
    arrays, head = decode_arrays(entries[3][1])
    assert head == {"video": vid, "segment": 0, "start": 45, "split": "val"}
    assert arrays["vocals"].shape == (2, 80000) and arrays["bgm"].shape == (80000,)
    assert arrays["vocals"].dtype == np.float16 and arrays["bgm"].dtype == np.float16
    assert arrays["coeffs"].dtype == np.float32 and arrays["coeffs"].shape == (2, 150, 56)
    expect = ((np.arange(24000, 96000) % 1000) / 1000.0 * 2) / 10
    np.testing.assert_allclose(arrays["vocals"][1, :72000], expect, atol=2e-3)
    assert not arrays["vocals"][:, 72000:].any() and not arrays["bgm"][72000:].any()
    assert arrays["bgm"][:72000].any()
    assert "shape" not in arrays
    np.testing.assert_array_equal(arrays["pose0"], arrays["coeffs"][:, 0, 53:56])


def test_segments_not_kept_are_skipped_and_a_window_may_end_on_the_segment_end(tmp_path):
    out = tmp_path / "out"
    items = make_upstream(out, n_videos=1, segments=((0, 150), (160, 309), (320, 360)))
    vid = items[0].id
    g = pack.Geometry.of(pack.Params(), 30)
    got = {i: [k for k, _ in es] for i, es in pack.video_windows(out, vid, _recs(out, vid), g, "train", {0, 1})}
    assert got == {0: [f"w/{vid}/0000/0000000".encode()], 1: []}      # 149 frames: no window


def test_tracks_at_another_rate_are_one_line(tmp_path):
    out = tmp_path / "out"
    items = make_upstream(out, n_videos=1, sr=8000)
    vid = items[0].id
    g = pack.Geometry.of(pack.Params(), 30)
    msg = (f"pack: {vid}: vad's tracks are at [8000] Hz but pack.sr is 16000; set them equal (vad.sr / pack.sr) "
           "and rerun")
    with pytest.raises(StageError, match=full(msg)):
        list(pack.video_windows(out, vid, _recs(out, vid), g, "train", {0}))


def test_shape_codes_for_another_number_of_singers_are_refused(tmp_path):
    out = tmp_path / "out"
    items = make_upstream(out, n_videos=1, segments=((0, 200),))
    vid = items[0].id
    np.savez(out / "fit3.npz", coeffs=np.zeros((3, 200, 56), np.float32), shape=np.zeros((3, 200, 100), np.float32))
    recs = _recs(out, vid)
    recs["fit"].outputs["segments"] = ["fit3.npz"]          # a fit of 3 singers beside smooth's 2
    g = pack.Geometry.of(pack.Params(), 30)
    msg = (f"pack: {vid} segment 0: the fit has 3 singers' shape codes but smooth has 2; "
           "rerun fit and smooth")
    with pytest.raises(StageError, match=full(msg)):
        list(pack.video_windows(out, vid, recs, g, "train", {0}))


def test_take():
    x = np.arange(10, dtype=np.float32)
    assert pack._take(x, 7, 5).tolist() == [7, 8, 9, 0, 0]
    assert pack._take(x, 5, 5).tolist() == [5, 6, 7, 8, 9]
    assert pack._take(x, 2, 3).tolist() == [2, 3, 4]


# ------------------------------------------------------------------------------- failed writes
@pytest.mark.parametrize("e, full_", [(lmdb.MapFullError("m"), True), (lmdb.DiskError("d"), True),
                                      (OSError(28, "x"), True), (OSError(5, "I/O error"), False),
                                      (RuntimeError("No space left on device"), True),
                                      (RuntimeError("no space left"), False), (lmdb.Error("e"), False)])
def test_disk_full(tmp_path, e, full_):
    assert pack._disk_full(tmp_path, e) is full_


def test_disk_full_asks_the_free_space_of_the_file_or_its_folder(tmp_path, monkeypatch):
    asked = []

    def usage(path, free):
        asked.append(path)
        return type("U", (), {"free": free})()
    monkeypatch.setattr(pack.shutil, "disk_usage", lambda p: usage(p, (64 << 20) - 1))
    assert pack._disk_full(tmp_path / "windows.lmdb", RuntimeError("x")) is True
    assert asked == [tmp_path]                                     # the file is not there: its folder
    monkeypatch.setattr(pack.shutil, "disk_usage", lambda p: usage(p, 64 << 20))
    assert pack._disk_full(tmp_path, RuntimeError("x")) is False
    assert asked == [tmp_path, tmp_path]

    def broken(p):
        raise OSError("gone")
    monkeypatch.setattr(pack.shutil, "disk_usage", broken)
    assert pack._disk_full(tmp_path, RuntimeError("x")) is False


def test_write_failure_lines(tmp_path):
    res = pack._write_failure(tmp_path / "w.lmdb", "the meta", lmdb.MapFullError("full"))
    assert (res.status, res.error_class) == ("failed", "DiskFull")
    assert res.reason == (f"pack: could not write the meta to {tmp_path / 'w.lmdb'}: no space left on the device; "
                          "free disk space (or raise pack.map_size_gb) and rerun (the windows packed before stay)")
    res = pack._write_failure(tmp_path, "v's windows", ValueError("bad\n   thing  here"))
    assert (res.status, res.error_class) == ("failed", "ValueError")
    assert res.reason == f"pack: could not write v's windows to {tmp_path}: ValueError: bad thing here; rerun " \
                         "(the windows packed before stay)"


# ----------------------------------------------------------------------------------- the records
def test_records_say_what_was_packed_and_the_summary_too(tmp_path):
    out = tmp_path / "out"
    items = make_upstream(out, n_videos=1, segments=((0, 200), (210, 400), (410, 500)))
    vid = items[0].id
    recs = run_pack(out, items)
    r = recs[vid]
    assert r.outputs == {"lmdb": "windows.lmdb", "split": "train", "windows": 4 + 3, "segments_packed": [0, 1, 2]}
    assert r.metrics == {"windows": 7, "segments_packed": 3, "segments_rejected": 0, "reused": False}
    meta = WindowReader(out / "windows.lmdb", None).meta
    s = meta["summary"]
    assert s["videos"] == {vid: {"split": "train", "windows": 7, "segments": 3, "frames": 200 + 190 + 90,
                                 "fingerprint": r.fingerprint}}
    assert s["pack_version"] == pack.VERSION == "3" and "duplicates" not in s
    assert s["pack_params"] == {k: v for k, v in pack.Params().__dict__.items() if k != "map_size_gb"}
    assert s["stage_versions"] == {st: [""] for st in sorted(pack.NEEDS)}
    # a reject: one segment fewer, counted as rejected
    from chorushead.core.decisions import record_decision
    record_decision(out, vid, 1, "reject")
    r = run_pack(out, items)[vid]
    assert r.outputs["segments_packed"] == [0, 2] and r.outputs["windows"] == 4
    assert r.metrics == {"windows": 4, "segments_packed": 2, "segments_rejected": 1, "reused": False}
    assert WindowReader(out / "windows.lmdb", None).meta["summary"]["videos"][vid]["frames"] == 290


def test_pack_summary_versions_and_duplicates():
    def recs(**versions):
        return {s: Record(item="v", stage=s, status="done", fingerprint="f", stage_version=v) for s, v in versions.items()}
    up = {"a": recs(vad="2", fit="1"), "b": recs(vad="1", fit="1"), "c": recs(vad="2")}
    groups = [{"members": ["a", "b"]}]
    s = pack.pack_summary({"b": {"x": 1}, "a": {"x": 2}}, up, pack.Params(map_size_gb=7), groups)
    assert list(s["videos"]) == ["a", "b"]
    assert s["stage_versions"] == {"fit": ["1"], "vad": ["1", "2"]} and list(s["stage_versions"]) == ["fit", "vad"]
    assert s["duplicates"] == groups and "map_size_gb" not in s["pack_params"] and s["pack_params"]["seed"] == 0
    assert "duplicates" not in pack.pack_summary({}, {}, pack.Params(), [])


def test_a_group_reaches_the_records_and_the_summary(tmp_path, fake_groups):
    out = tmp_path / "out"
    items = make_upstream(out, n_videos=3)
    ids = [it.id for it in items]
    group = {"members": [ids[0], ids[2]], "links": [{"a": ids[0], "b": ids[2], "by": "audio", "score": 0.1}]}
    fake_groups["ret"] = [group]
    recs = run_pack(out, items)
    assert recs[ids[0]].outputs["group"] == recs[ids[2]].outputs["group"] == [ids[0], ids[2]]
    again = run_pack(out, items, append=True)          # the manifest did not say so: reused, group and all
    assert again[ids[0]].outputs["group"] == again[ids[2]].outputs["group"] == [ids[0], ids[2]]
    assert again[ids[0]].metrics["reused"] is True and "group" not in again[ids[1]].outputs
    assert "group" not in recs[ids[1]].outputs                       # None is left out of the record
    split = recs[ids[0]].outputs["split"]
    dups = WindowReader(out / "windows.lmdb", None).meta["summary"]["duplicates"]
    assert dups == [{**group, "splits": {ids[0]: split, ids[2]: split}}]
    before = (out / "windows.lmdb" / "data.mdb").read_bytes()
    assert run_pack(out, items) == {}                                # nothing changed: nothing written
    assert (out / "windows.lmdb" / "data.mdb").read_bytes() == before
    fake_groups["ret"] = []                                          # the group is gone: the summary says so
    recs = run_pack(out, items, append=True)
    assert "duplicates" not in WindowReader(out / "windows.lmdb", None).meta["summary"]
    assert not any("group" in r.outputs for r in recs.values())


def test_unchanged_videos_get_a_reused_record_only_when_the_manifest_does_not_say_so(tmp_path):
    out = tmp_path / "out"
    items = make_upstream(out, n_videos=2, segments=((0, 200), (210, 400)))
    ids = [it.id for it in items]
    first = run_pack(out, items)                                      # not appended: the manifest says nothing
    again = run_pack(out, items)
    assert set(again) == set(ids)
    for v in ids:
        r = again[v]
        assert r.status == "done" and r.seconds == 0.0 and r.fingerprint == first[v].fingerprint
        assert r.outputs == first[v].outputs and r.metrics == {**first[v].metrics, "reused": True}
    Manifest(out, "pack").append(again[ids[0]])                        # now the manifest knows ids[0]
    assert set(run_pack(out, items)) == {ids[1]}
    failed = Record(item=ids[1], stage="pack", status="failed", fingerprint=first[ids[1]].fingerprint,
                    error_class="X", message="x")
    Manifest(out, "pack").append(failed)                                # its last record failed: say it again
    assert set(run_pack(out, items)) == {ids[1]}
    Manifest(out, "pack").append(Record(item=ids[1], stage="pack", status="done", fingerprint="other"))
    assert set(run_pack(out, items)) == {ids[1]}                        # a record of another fingerprint
    Manifest(out, "pack").append(again[ids[1]])
    assert run_pack(out, items) == {}


def test_the_progress_bar(tmp_path, capsys, monkeypatch):
    from tqdm import std
    # no monitor thread: a process forked while it holds tqdm's lock (mutmut forks one per mutant) would hang
    monkeypatch.setattr(std.tqdm, "monitor_interval", 0)
    out = tmp_path / "out"
    items = make_upstream(out, n_videos=2)
    run_pack(out, items, progress=True)
    err = capsys.readouterr().err
    assert "      pack: 100%" in err and "2/2" in err and re.search(r"(video/s|s/video)\]", err), err
    import shutil
    shutil.rmtree(out / "windows.lmdb")
    run_pack(out, items, progress=False)
    assert "pack" not in capsys.readouterr().err
    run_pack(out, items, progress=True)                                 # nothing to pack: no bar
    assert "pack" not in capsys.readouterr().err


# ----------------------------------------------------------------------------------- changes
def _meta(**kw):
    return {"fps": 30, "sr": 16000, "window": 150, "stride": 15, "fit_backend": "emoca",
            "coeff_groups": ["exp", "jaw", "pose"], **kw}


G = pack.Geometry(fps=30, sr=16000, window=150, stride=15)


def _ctx(upstream=(), items=(), fingerprints=None):
    up = {v: {"fit": Record(item=v, stage="fit", status="done", fingerprint="f",
                            outputs={"segments": [], "n_strips": 2, "backend": "landmarks",
                                     "coeff_groups": ["jaw"]})} for v in upstream}
    return GlobalContext(out=None, fps=30, upstream=up, previous={}, fingerprints=fingerprints or {},
                         items=list(items))


def test_changes_without_ready_videos_keep_the_files_fit_meta():
    markers = {"a": {"fingerprint": "fa", "summary": {"n": 1}}, "gone": {"fingerprint": "fg", "summary": {"n": 2}}}
    old = _meta(summary={"videos": {"a": {"n": 1}}})
    ch = pack.changes(_ctx(items=["a", "b"]), G, markers, old)
    assert (ch.todo, ch.drop, ch.kept, ch.needed) == ([], ["gone"], {"a": markers["a"]}, True)
    assert ch.extra == {"fit_backend": "emoca", "coeff_groups": ["exp", "jaw", "pose"]}
    ch = pack.changes(_ctx(items=["a", "b"]), G, {"a": markers["a"]}, old)
    assert (ch.drop, ch.needed) == ([], False)                       # the file says exactly this already
    ch = pack.changes(_ctx(items=["a"]), G, {}, {"fps": 30})
    assert ch.extra == {} and ch.needed is True
    ch = pack.changes(_ctx(items=["a"]), G, {}, {})
    assert ch.extra == {} and ch.needed is True                      # a new file


@pytest.mark.parametrize("field, value", [("fps", 25), ("sr", 8000), ("window", 149), ("stride", 16)])
def test_another_geometry_drops_the_videos_not_ready(field, value):
    markers = {"a": {"fingerprint": "fa", "summary": {}}, "b": {"fingerprint": "fb", "summary": {}}}
    old = _meta(**{field: value}, summary={"videos": {"a": {}, "b": {}}})
    ch = pack.changes(_ctx(items=["a", "b"]), G, markers, old)        # b not ready (nothing ready)
    assert ch.drop == ["a", "b"] and ch.kept == {} and ch.needed is True


def test_changes_with_ready_videos():
    markers = {"a": {"fingerprint": "fa", "summary": {"s": "a"}}, "b": {"fingerprint": "old", "summary": {"s": "b"}},
               "c": {"fingerprint": "fc", "summary": {"s": "c"}}}
    old = _meta(fit_backend="landmarks", coeff_groups=["jaw"],
                summary={"videos": {"a": {"s": "a"}, "b": {"s": "b"}, "c": {"s": "c"}}})
    ctx = _ctx(upstream=["a", "b", "d"], items=["a", "b", "c", "d"], fingerprints={"a": "fa", "b": "fb", "d": "fd"})
    ch = pack.changes(ctx, G, markers, old)
    assert ch.extra == {"fit_backend": "landmarks", "coeff_groups": ["jaw"]}
    assert (ch.todo, ch.drop, sorted(ch.kept), ch.needed) == (["b", "d"], [], ["a", "b", "c"], True)
    # the fit meta changes: c (not ready) is dropped, a and b stay (they are repacked or current)
    ch = pack.changes(ctx, G, markers, _meta(summary=old["summary"]))
    assert ch.extra == {"fit_backend": "landmarks", "coeff_groups": ["jaw"]}
    assert (ch.drop, sorted(ch.kept)) == (["c"], ["a", "b"])
    # all current: needed only when the summary or the duplicates disagree
    ctx = _ctx(upstream=["a"], items=["a"], fingerprints={"a": "fa"})
    one = {"a": markers["a"]}
    assert pack.changes(ctx, G, one, {**old, "summary": {"videos": {"a": {"s": "a"}}}}).needed is False
    assert pack.changes(ctx, G, one, {**old, "summary": {"videos": {"a": {"s": "x"}}}}).needed is True
    assert pack.changes(ctx, G, one, {**old, "summary": {}}).needed is True
    groups = [{"members": ["a", "z"]}]
    dup = {**old, "summary": {"videos": {"a": {"s": "a"}}, "duplicates": groups}}
    assert pack.changes(ctx, G, one, dup, groups).needed is False
    assert pack.changes(ctx, G, one, dup).needed is True
    assert pack.changes(ctx, G, one, {**old, "summary": {"videos": {"a": {"s": "a"}}}}, groups).needed is True
    assert pack.changes(ctx, G, one, {**old, "summary": {"videos": {"a": {"s": "a"}}, "duplicates": []}}).needed is False


# ------------------------------------------------------------------------------- write failures
def test_a_failed_meta_write_fails_every_video_to_pack(tmp_path, monkeypatch):
    out = tmp_path / "out"
    items = make_upstream(out, n_videos=2)

    def boom(self, **kw):
        raise lmdb.Error("cannot\nwrite")
    monkeypatch.setattr(WindowWriter, "begin_change", boom)
    recs = run_pack(out, items)
    assert set(recs) == {it.id for it in items}
    for r in recs.values():
        assert (r.status, r.error_class) == ("failed", "Error")
        assert r.message == (f"pack: could not write the meta to {out / 'windows.lmdb'}: Error: cannot write; "
                             "rerun (the windows packed before stay)")


def test_a_failed_video_write_fails_that_video_only(tmp_path, monkeypatch):
    out = tmp_path / "out"
    items = make_upstream(out, n_videos=2)
    bad = items[0].id
    put = WindowWriter.put_video

    def put_video(self, video, entries, marker):
        if video == bad:
            raise OSError(5, "Input/output error")
        return put(self, video, entries, marker)
    monkeypatch.setattr(WindowWriter, "put_video", put_video)
    recs = run_pack(out, items)
    assert recs[bad].status == "failed" and recs[bad].error_class == "OSError"
    assert recs[bad].message == (f"pack: could not write {bad}'s windows to {out / 'windows.lmdb'}: "
                                 "OSError: [Errno 5] Input/output error; rerun (the windows packed before stay)")
    assert recs[items[1].id].status == "done"
    assert set(WindowReader(out / "windows.lmdb", None).meta["summary"]["videos"]) == {items[1].id}


def test_a_failed_index_write_fails_the_packed_videos_and_keeps_the_failed_ones(tmp_path, monkeypatch):
    out = tmp_path / "out"
    items = make_upstream(out, n_videos=3)
    ids = [it.id for it in items]
    from chorushead.stages import smooth
    for rel in smooth.Outputs.of(Manifest(out, "smooth").latest()[ids[0]]).segments:
        (out / rel).unlink()

    def boom(self, meta):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(WindowWriter, "finish", boom)
    recs = run_pack(out, items)
    assert set(recs) == set(ids)
    assert recs[ids[0]].status == "failed" and recs[ids[0]].error_class != "DiskFull"
    assert "could not write" not in recs[ids[0]].message
    for v in ids[1:]:
        assert (recs[v].status, recs[v].error_class) == ("failed", "DiskFull")
        assert recs[v].message == (f"pack: could not write the index to {out / 'windows.lmdb'}: no space left on "
                                   "the device; free disk space (or raise pack.map_size_gb) and rerun "
                                   "(the windows packed before stay)")


def test_a_failed_cut_is_one_line_with_its_time(tmp_path, monkeypatch):
    out = tmp_path / "out"
    items = make_upstream(out, n_videos=2)

    def broken(out_, video, *a):
        raise ValueError(f"no\n  such   {video}")
        yield
    monkeypatch.setattr(pack, "video_windows", broken)
    recs = run_pack(out, items)
    for v, r in recs.items():
        assert (r.status, r.error_class, r.message) == ("failed", "ValueError", f"no such {v}")
        assert isinstance(r.seconds, float) and 0 <= r.seconds < 5
    assert not (out / "windows.lmdb").exists() and not (out / ".windows.lmdb.tmp").exists()


def test_a_video_no_longer_registered_leaves_the_file(tmp_path):
    out = tmp_path / "out"
    items = make_upstream(out, n_videos=2)
    run_pack(out, items, append=True)
    run_pack(out, items[1:], append=True)
    keys = lmdb_content(out / "windows.lmdb")
    assert not any(k.startswith(f"w/{items[0].id}/".encode()) for k in keys)
    assert any(k.startswith(f"w/{items[1].id}/".encode()) for k in keys)
    assert list(WindowReader(out / "windows.lmdb", None).meta["summary"]["videos"]) == [items[1].id]


def test_a_video_that_fails_does_not_hide_the_reused_ones_after_it(tmp_path, monkeypatch):
    """The first video's fingerprint changes (a reject) and its repack fails: the second, unchanged and not
    in the manifest, still gets its reused record."""
    from chorushead.core.decisions import record_decision
    out = tmp_path / "out"
    items = make_upstream(out, n_videos=2, segments=((0, 200), (210, 400)))
    ids = [it.id for it in items]
    run_pack(out, items)
    record_decision(out, ids[0], 1, "reject")
    cut = pack.video_windows

    def video_windows(out_, video, *a):
        if video == ids[0]:
            raise StageError("cannot cut")
        return cut(out_, video, *a)
    monkeypatch.setattr(pack, "video_windows", video_windows)
    recs = run_pack(out, items)
    assert recs[ids[0]].status == "failed" and recs[ids[0]].message == "cannot cut"
    assert recs[ids[1]].status == "done" and recs[ids[1]].metrics["reused"] is True


def test_a_failed_cut_says_how_long_it_took(tmp_path, monkeypatch):
    """_pack_video times the video itself (seconds from its own clock), not left to the runner."""
    out = tmp_path / "out"
    items = make_upstream(out, n_videos=1)
    vid = items[0].id
    clock = iter([100.0, 100.12345])
    monkeypatch.setattr(pack, "time", type("T", (), {"time": staticmethod(lambda: next(clock))}))

    def broken(*a):
        raise OSError("gone")
        yield
    monkeypatch.setattr(pack, "video_windows", broken)
    ctx = _gctx(out, items)
    res = pack._pack_video(ctx, pack.Params(), {"split": "train", "segments": [0]}, G, None, vid, {})
    assert (res.status, res.error_class, res.reason, res.seconds) == ("failed", "OSError", "gone", 0.123)


def test_a_packed_video_says_how_long_it_took(tmp_path, monkeypatch):
    out = tmp_path / "out"
    items = make_upstream(out, n_videos=1, segments=((0, 200),))
    vid = items[0].id
    clock = iter([100.0, 100.12345])
    monkeypatch.setattr(pack, "time", type("T", (), {"time": staticmethod(lambda: next(clock))}))
    db = WindowWriter(out / "w.lmdb", 1 << 30)
    kept = {}
    try:
        res = pack._pack_video(_gctx(out, items), pack.Params(), {"split": "val", "segments": [0]}, G, db, vid, kept)
    finally:
        db.close()
    assert res.seconds == 0.123 and res.status == "done"
    assert res.outputs == {"lmdb": "windows.lmdb", "split": "val", "windows": 4, "segments_packed": [0]}
    assert kept == {vid: {"fingerprint": "fp-" + vid, "windows": 4,
                          "summary": {"split": "val", "windows": 4, "segments": 1, "frames": 200,
                                      "fingerprint": "fp-" + vid}}}


def test_smooth_of_another_length_than_the_segment_is_refused(tmp_path):
    from chorushead.core.payloads import BadPayload
    out = tmp_path / "out"
    items = make_upstream(out, n_videos=1, segments=((0, 200),))
    vid = items[0].id
    rel = Manifest(out, "smooth").latest()[vid].outputs["segments"][0]
    np.savez(out / rel, coeffs=np.zeros((2, 210, 56), np.float32))      # 210 frames for a 200-frame segment
    with pytest.raises(BadPayload, match="its frame count"):
        list(pack.video_windows(out, vid, _recs(out, vid), G, "train", {0}))


def test_the_lmdb_map_is_map_size_gb_gibibytes(tmp_path, monkeypatch):
    seen = []

    class Spy(WindowWriter):
        def __init__(self, final, map_size):
            seen.append((final, map_size))
            super().__init__(final, map_size)
    monkeypatch.setattr(pack, "WindowWriter", Spy)
    out = tmp_path / "out"
    items = make_upstream(out, n_videos=1)
    run_pack(out, items, pack.Params(map_size_gb=3, lmdb="w3.lmdb"))
    assert seen == [(out / "w3.lmdb", 3 << 30)]


def test_an_empty_file_of_another_geometry_is_rewritten():
    ch = pack.changes(_ctx(items=[]), G, {}, _meta(window=149, summary={"videos": {}}))
    assert (ch.todo, ch.drop, ch.kept, ch.needed) == ([], [], {}, True)
    assert pack.changes(_ctx(items=[]), G, {}, _meta(summary={"videos": {}})).needed is False


def test_removing_every_video_leaves_an_empty_index(tmp_path):
    import json
    out = tmp_path / "out"
    items = make_upstream(out, n_videos=1)
    run_pack(out, items, append=True)
    assert run_pack(out, []) == {}
    content = lmdb_content(out / "windows.lmdb")
    assert not any(k.startswith(b"w/") or k.startswith(b"__done__/") for k in content)
    assert json.loads(content[b"__meta__"])["summary"]["videos"] == {}
