"""The build end to end on generated videos: bad inputs, resume after kill -9, status.

Real MTCNN and real webrtcvad; stems are supplied (``--stems``) so the Spleeter/MossFormer2 stages are
skipped here (they have their own tests). Fitting uses the EMOCA stand-in package (tests/stand_ins).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from chorushead.core import media
from chorushead.sample import face_images, write_sample
from chorushead.core.manifest import Manifest
from chorushead.runner import Pipeline, build
from chorushead.status import collect, format_status
from conftest import ROOT, kill_when, validate_record
from packfixture import lmdb_content

pytestmark = pytest.mark.slow
SIZE = (256, 512)
UPTO = ["ingest", "screen", "bgm_split", "duet_split", "vad", "crop", "contiguity"]
OFF = ["screen.enabled=false"]   # tiny, odd test videos: the screen (tests/test_screen.py) would reject them


def _ffmpeg(*args):
    subprocess.run([media.ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def _three_faces(path: Path, seconds: float, stems_dir: Path):
    """Two faces in the left half, one in the right: not one singer per strip."""
    h, w = 320, 768                        # wide enough for two full-size faces in the left half
    fs = 175
    faces = face_images(fs)
    n = int(seconds * 30)
    fr = np.full((n, h, w, 3), 60, np.uint8)
    for t in range(n):
        dy = int(6 * np.sin(t / 15))
        for x0, f in [(10, faces[0]), (200, faces[1]), (500, faces[0][:, ::-1])]:
            fr[t, 60 + dy:60 + dy + fs, x0:x0 + fs] = f
    # reuse the sample's audio and stems
    media.encode_video(path, fr, audio=stems_dir / "mix.wav")


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """A batch of good and bad videos, with stems for the ones that have songs."""
    d = tmp_path_factory.mktemp("raw")
    vids, stems = d / "videos", d / "stems"
    good, stems_good, _ = write_sample(d, seconds=7.0, size=SIZE, name="duet one", absent_s=None)
    # non-ASCII name, 25 fps source
    write_sample(d, seconds=7.0, size=SIZE, name="デュエット 25fps", absent_s=None, seed=1)
    src25 = vids / "デュエット 25fps.mp4"
    _ffmpeg("-i", str(src25), "-vf", "fps=25", "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "copy",
            str(vids / "tmp25.mp4"))
    os.replace(vids / "tmp25.mp4", src25)
    # variable frame rate: drop every 3rd frame in the first 3 s, keep the original timestamps
    write_sample(d, seconds=7.0, size=SIZE, name="vfr", absent_s=None, seed=2)
    _ffmpeg("-i", str(vids / "vfr.mp4"), "-vf", "select='gt(n\\,90)+not(eq(mod(n\\,3)\\,0))'", "-fps_mode", "vfr",
            "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "copy", str(vids / "vfr_tmp.mp4"))
    os.replace(vids / "vfr_tmp.mp4", vids / "vfr.mp4")
    # one face only: the second singer never shows up
    write_sample(d, seconds=7.0, size=SIZE, name="one face", absent_s=(0.0, 7.0), seed=3)
    # three faces in two strips
    shutil.copytree(stems / "duet one", stems / "three faces")
    _three_faces(vids / "three faces.mp4", 7.0, stems / "three faces")
    # broken ones
    data = good.read_bytes()
    (vids / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (vids / "notes.mp4").write_text("this is not a video\n")
    media.encode_video(vids / "silent.mp4", np.zeros((200, 64, 64, 3), np.uint8))
    media.encode_video(vids / "one_frame.mp4", np.zeros((1, 64, 64, 3), np.uint8), audio=stems / "duet one" / "mix.wav")
    os.symlink(d / "does-not-exist.mp4", vids / "gone.mp4")
    return d


def _by_source(out: Path) -> dict[str, dict[str, object]]:
    """source file name -> {stage: record} (newest)."""
    import json
    items = json.loads((out / "items.json").read_text())
    name = {iid: Path(v["source"]).name for iid, v in items.items()}
    res: dict[str, dict] = {n: {} for n in name.values()}
    for stage in UPTO:
        for iid, r in Manifest(out, stage).latest().items():
            res[name[iid]][stage] = r
    return res


def test_bad_inputs_fail_clearly_and_the_batch_finishes(raw, tmp_path):
    out = tmp_path / "out"
    build(raw / "videos", out, Pipeline.load(overrides=OFF), stages=UPTO, stems=raw / "stems", jobs=2, progress=False)
    res = _by_source(out)
    for good in ("duet one.mp4", "デュエット 25fps.mp4", "vfr.mp4"):
        assert res[good]["contiguity"].status == "done", (good, {s: r.message for s, r in res[good].items()})
        segs = res[good]["contiguity"].outputs["segments"]
        assert segs and segs[0][1] - segs[0][0] >= 150
    expect = {
        "truncated.mp4": ("ingest", "damaged|no video stream|cannot decode|decoding failed"),
        "notes.mp4": ("ingest", "no video stream"),
        "silent.mp4": ("ingest", "no audio stream"),
        "one_frame.mp4": ("ingest", "needs at least 5 s"),
        "gone.mp4": ("ingest", "does not exist"),
        "one face.mp4": ("contiguity", "strip 1: face in 0/"),
        "three faces.mp4": ("contiguity", "two or more faces"),
    }
    import re
    for name, (stage, pattern) in expect.items():
        r = res[name][stage]
        assert r.status == "failed", (name, r)
        assert re.search(pattern, r.message), (name, r.message)
        validate_record(r.to_dict())
    # the 25 fps and VFR sources land on the 30 fps timeline: 7 s -> about 210 frames before trimming
    assert res["vfr.mp4"]["ingest"].outputs["n_frames"] == 210
    assert res["デュエット 25fps.mp4"]["ingest"].outputs["n_frames"] == 210
    crop = res["デュエット 25fps.mp4"]["crop"]
    n = crop.metrics["frames"]
    vad = res["デュエット 25fps.mp4"]["vad"].outputs
    assert n == vad["end_frame"] - vad["start_frame"]
    for stage in UPTO:
        for rec in Manifest(out, stage).read_all():
            validate_record(rec.to_dict())
    text = format_status(collect(out, Pipeline.load(overrides=OFF)))
    assert "failures:" in text and "[ingest] notes-" in text and "no video stream" in text
    # a rerun redoes only the failed items (and finds them failing again), reusing the good ones
    summ = build(raw / "videos", out, Pipeline.load(overrides=OFF), stages=UPTO, stems=raw / "stems", jobs=1, progress=False)
    ingest = next(s for s in summ if s.stage == "ingest")
    assert ingest.reused == 5 and ingest.failed == 5


def test_the_build_streams_each_video_through_its_stages(tmp_path):
    """No stage barrier: with one job, a video goes through every stage before the next video starts
    (its next stage is queued first), so the first video is complete before the second is ingested."""
    for k in range(2):
        write_sample(tmp_path, seconds=6.0, size=(96, 192), name=f"clip{k}", seed=k)
    stages = ["ingest", "screen", "bgm_split", "duet_split", "vad"]
    out = tmp_path / "out"
    summ = build(tmp_path / "videos", out, Pipeline.load(overrides=OFF), stages=stages, stems=tmp_path / "stems", jobs=1,
                 progress=False)
    assert [(s.stage, s.done + s.skipped, s.pending) for s in summ] == [(s, 2, 0) for s in stages]
    recs = [r for stage in stages for r in Manifest(out, stage).read_all()]
    first, second = sorted({r.item for r in recs}, key=lambda i: min(r.started for r in recs if r.item == i))
    # (+ 5 ms: a record's seconds are rounded to the millisecond)
    assert max(r.started + r.seconds for r in recs if r.item == first) <= min(r.started for r in recs if r.item == second) + 0.005


def test_second_build_on_same_folder_is_refused(tmp_path):
    from chorushead.runner import BuildLock
    with BuildLock(tmp_path):
        with pytest.raises(RuntimeError, match="Another build is running"):
            with BuildLock(tmp_path):
                pass


def _fit_sets(tmp: Path) -> list[str]:
    """Point the fit stage at the EMOCA stand-in package (EMOCA's API, deterministic codes)."""
    models = tmp / "emoca-models" / "EMOCA_v2_lr_mse_20"
    models.mkdir(parents=True, exist_ok=True)
    (models / "cfg.yaml").write_text("model: {}\n")
    return [f"fit.models_dir={tmp / 'emoca-models'}", f"fit.emoca_path={ROOT / 'tests' / 'stand_ins'}"]


def _crop_in_progress(out: Path) -> bool:
    """JPEGs being written: in crop's chunk progress (.partial-crop) or its temp output folder."""
    return any(p.is_dir() and any(p.rglob("*.jpg"))
               for pattern in ("*/.tmp-crop-*", "*/.partial-crop") for p in (out / "items").glob(pattern))


def test_kill_during_crop_then_resume_gives_the_same_lmdb(tmp_path, monkeypatch):
    # fit runs EMOCA in-process here and puts the stand-in on sys.path; keep that to this test
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name in [m for m in sys.modules if m.split(".")[0] in ("gdl", "gdl_apps")]:
        monkeypatch.delitem(sys.modules, name)
    raw = tmp_path / "raw"
    for k in range(2):
        write_sample(raw, seconds=7.0, size=SIZE, name=f"song {k}", absent_s=None, seed=10 + k)
    sets = _fit_sets(tmp_path)
    ref, crash = tmp_path / "ref", tmp_path / "crash"
    pl = Pipeline.load(overrides=sets)
    build(raw / "videos", ref, pl, stems=raw / "stems", progress=False)
    assert Manifest(ref, "fit").latest() and all(r.ok for r in Manifest(ref, "pack").latest().values())

    cmd = [sys.executable, "-m", "chorushead.cli", "build", "--videos", str(raw / "videos"), "--out", str(crash),
           "--stems", str(raw / "stems"), "-q"] + [a for s in sets for a in ("--set", s)]
    killed = kill_when(cmd, lambda: (crash / "items").exists() and _crop_in_progress(crash), timeout=300, poll=0.05)
    assert killed, "the build finished before crop could be interrupted"
    assert not Manifest(crash, "pack").latest()
    build(raw / "videos", crash, pl, stems=raw / "stems", progress=False)
    a, b = lmdb_content(ref / "windows.lmdb"), lmdb_content(crash / "windows.lmdb")
    assert any(k.startswith(b"w/") for k in a)
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)
    assert not list((crash / "items").glob("*/.tmp-*"))   # the half-written crop folder was discarded
    for name in [m for m in sys.modules if m.split(".")[0] in ("gdl", "gdl_apps")]:
        del sys.modules[name]                             # the stand-in stays out of later tests


@pytest.mark.slow   # three 6 s videos through every stage twice (~1 min on 2 cores)
def test_first_windows_are_packed_before_the_last_video_is_cropped(tmp_path, monkeypatch):
    """Pack runs early on the videos already through (runner.EarlyGlobal): with one job, videos go
    through one after another, so the first ones are in the LMDB while the last one still crops; the
    final LMDB is the one a build that packs only at the end writes."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    raw = tmp_path / "raw"
    for k in range(3):
        write_sample(raw, seconds=6.0, size=SIZE, name=f"clip {k}", absent_s=None, seed=30 + k)
    pl = Pipeline.load(overrides=_fit_sets(tmp_path))
    early, late = tmp_path / "early", tmp_path / "late"
    summ = {s.stage: s for s in build(raw / "videos", early, pl, stems=raw / "stems", progress=False)}
    assert (summ["pack"].done, summ["pack"].reused, summ["pack"].failed) == (3, 0, 0)
    packs = Manifest(early, "pack").read_all()
    crops = Manifest(early, "crop").read_all()
    last_crop = max(crops, key=lambda r: r.started)
    first_pack = min(packs, key=lambda r: r.started)
    assert first_pack.item != last_crop.item and first_pack.started < last_crop.started
    assert len({r.item for r in packs}) == 3 and len(packs) == 3            # each video packed once
    build(raw / "videos", late, pl, stems=raw / "stems", progress=False, early=False)
    assert len({r.started for r in Manifest(late, "pack").read_all()}) == 1   # one run, at the end
    a, b = lmdb_content(early / "windows.lmdb"), lmdb_content(late / "windows.lmdb")
    assert any(k.startswith(b"w/") for k in a)
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)
    # a rerun has nothing to do: every video reused, the file untouched
    before = (early / "windows.lmdb" / "data.mdb").read_bytes()
    summ = {s.stage: s for s in build(None, early, pl, progress=False)}
    assert summ["pack"].reused == 3 and (early / "windows.lmdb" / "data.mdb").read_bytes() == before
    for name in [m for m in sys.modules if m.split(".")[0] in ("gdl", "gdl_apps")]:
        del sys.modules[name]


@pytest.mark.parametrize("backend", ["dask", "ray"])
def test_same_lmdb_on_local_and_distributed_backends(tmp_path, monkeypatch, backend):
    """The whole build (real MTCNN, EMOCA stand-in) gives byte-identical windows on every executor."""
    pytest.importorskip({"dask": "dask.distributed", "ray": "ray"}[backend])
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setattr(sys, "path", list(sys.path))
    raw = tmp_path / "raw"
    for k in range(2):
        write_sample(raw, seconds=6.0, size=SIZE, name=f"clip {k}", absent_s=None, seed=20 + k)
    pl = Pipeline.load(overrides=_fit_sets(tmp_path))
    local, dist = tmp_path / "local", tmp_path / backend
    build(raw / "videos", local, pl, stems=raw / "stems", progress=False)
    build(raw / "videos", dist, pl, stems=raw / "stems", progress=False, backend=backend, jobs=2)
    a, b = lmdb_content(local / "windows.lmdb"), lmdb_content(dist / "windows.lmdb")
    assert any(k.startswith(b"w/") for k in a)
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)
    for name in [m for m in sys.modules if m.split(".")[0] in ("gdl", "gdl_apps")]:
        del sys.modules[name]


def test_build_at_25_fps_packs_5_s_windows_of_125_frames(tmp_path, monkeypatch):
    """``pipeline.fps`` reaches every stage: frames, crops, the vad trim and the windows share one clock."""
    from chorushead.core.windows import WindowReader
    monkeypatch.setattr(sys, "path", list(sys.path))
    raw = tmp_path / "raw"
    write_sample(raw, seconds=7.0, size=SIZE, name="clip", absent_s=None, seed=30)
    out = tmp_path / "out"
    build(raw / "videos", out, Pipeline.load(overrides=_fit_sets(tmp_path) + ["pipeline.fps=25"]),
          stems=raw / "stems", progress=False)
    latest = {s: Manifest(out, s).latest() for s in Pipeline.load().stages}
    (iid,) = latest["ingest"]
    assert {s: r[iid].status for s, r in latest.items()}["pack"] == "done"
    ing, vad, crop = latest["ingest"][iid].outputs, latest["vad"][iid].outputs, latest["crop"][iid].outputs
    assert ing["fps"] == 25 and ing["n_frames"] == 175
    assert vad["start_s"] == vad["start_frame"] / 25
    det = np.load(out / crop["detections"])
    assert int(det["fps"]) == 25 and int(det["start_frame"]) == vad["start_frame"] == crop["start_frame"]
    assert crop["frames"] == vad["end_frame"] - vad["start_frame"]
    reader = WindowReader(out / "windows.lmdb", None)
    assert (reader.meta["fps"], reader.meta["window"], reader.meta["stride"]) == (25, 125, 13)
    assert reader.meta["fit_backend"] == "emoca"
    segs = latest["contiguity"][iid].outputs["segments"]
    smoothed = latest["smooth"][iid].outputs["segments"]
    assert len(reader) > 0
    for i in range(len(reader)):
        w = reader[i]
        a, _ = segs[w.segment]
        c = np.load(out / smoothed[w.segment])["coeffs"]
        np.testing.assert_array_equal(w.coeffs, c[:, w.start - a:w.start - a + 125])
        assert w.vocals.shape[1] == 5 * 16000
        for strip in crop["strips"]:        # window frames t are crop frames t = vad start_frame + t
            assert all((out / strip / f"{t:06d}.jpg").exists() for t in range(w.start, w.start + 125))
    for stage, recs in latest.items():
        for rec in recs.values():
            validate_record(rec.to_dict())
    for name in [m for m in sys.modules if m.split(".")[0] in ("gdl", "gdl_apps")]:
        del sys.modules[name]
