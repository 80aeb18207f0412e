import sys

import numpy as np
import pytest

from chorushead.core.decisions import record_decision
from chorushead.core.errors import StageError
from chorushead.core.manifest import Manifest
from chorushead.core.windows import POSE, WindowReader
from chorushead.runner import Pipeline, build, run_global_stage
from chorushead.stages import pack
from chorushead.stages.selection import assign_splits, kept_segments
from conftest import kill_when, validate_record
from packfixture import lmdb_content, make_upstream


def run_pack(out, items, params=None, fps=30, append=False):
    """Pack as the runner runs it (plan, fingerprints, process_all, records); ``append`` as the runner does."""
    latest = {s: Manifest(out, s).latest() for s in (*pack.NEEDS, "pack")}
    recs = run_global_stage(pack.STAGE, params or pack.Params(), items, out, latest, fps)
    for r in recs if append else ():
        Manifest(out, "pack").append(r)
    return recs


def read_meta(path):
    return WindowReader(path, None).meta


def test_windows_content_alignment_and_reader(tmp_path):
    out = tmp_path / "out"
    items = make_upstream(out, n_videos=1)
    recs = run_pack(out, items)
    assert len(recs) == 1
    validate_record(recs[0].to_dict(), "pack")
    # segments (0,200) and (220,360): starts 0,15,30,45 and none in the second (140 < 150 frames)
    assert recs[0].outputs["windows"] == 4
    r = WindowReader(out / "windows.lmdb", split="train")
    assert len(r) == 4 and r.n_host_samples() == 8
    w = r[1]
    assert w.start == 15 and w.coeffs.shape == (2, 150, 56)
    np.testing.assert_array_equal(w.coeffs[0, :, 0], np.arange(15, 165))      # frame-aligned coefficients
    np.testing.assert_allclose(w.pose0, w.coeffs[:, 0, POSE])
    assert w.vocals.shape == (2, 80000) and w.bgm.shape == (80000,)
    s0 = 15 * 16000 // 30                                                      # 8000 samples in
    expect = ((np.arange(s0, s0 + 80000) % 1000) / 1000.0 * 2) / 10            # singer 1 of video 0
    np.testing.assert_allclose(w.vocals[1], expect, atol=2e-3)                 # float16 storage
    hs = r.host_sample(3)                                                      # window 1, host = singer 1
    np.testing.assert_allclose(hs["partner"], w.vocals[0])
    assert hs["coeffs"][0, 1] == 1.0
    meta = read_meta(out / "windows.lmdb")
    assert (meta["fps"], meta["window"], meta["stride"]) == (30, 150, 15)
    assert meta["fit_backend"] == "emoca" and meta["coeff_groups"] == ["exp", "jaw", "pose"]  # older fit records
    assert not list(out.glob(".windows.lmdb.tmp"))


def test_fps_25_gives_125_frame_windows(tmp_path):
    out = tmp_path / "out"
    items = make_upstream(out, n_videos=1, fps=25, segments=((0, 200),))
    (rec,) = run_pack(out, items, fps=25)
    # 5 s = 125 frames, 0.5 s = 12.5 -> 13 frames: starts 0, 13, ..., 65 (the last that fits in 200)
    assert rec.outputs["windows"] == 6
    meta = read_meta(out / "windows.lmdb")
    assert (meta["fps"], meta["window"], meta["stride"]) == (25, 125, 13)
    w = WindowReader(out / "windows.lmdb", split="train")[1]
    assert w.start == 13 and w.coeffs.shape == (2, 125, 56) and w.vocals.shape == (2, 80000)
    np.testing.assert_array_equal(w.coeffs[0, :, 0], np.arange(13, 138))
    s0 = 13 * 16000 // 25                                                      # audio follows the same clock
    np.testing.assert_allclose(w.vocals[0], ((np.arange(s0, s0 + 80000) % 1000) / 1000.0) / 10, atol=2e-3)


def test_fit_backend_goes_to_the_meta_and_must_agree(tmp_path):
    out = tmp_path / "out"
    items = make_upstream(out, n_videos=2, fit_backend="landmarks")
    run_pack(out, items)
    assert read_meta(out / "windows.lmdb")["fit_backend"] == "landmarks"
    Manifest(out, "fit").append(Manifest(out, "fit").latest()[items[0].id].__class__(
        item=items[0].id, stage="fit", status="done", fingerprint="f" * 16,
        outputs={"segments": [], "n_strips": 2, "backend": "emoca", "coeff_groups": ["exp", "jaw", "pose"]}))
    with pytest.raises(StageError, match="disagree on the backend .emoca, landmarks."):
        run_pack(out, items)


def test_no_lmdb_before_pack_has_written_one(tmp_path):
    out = tmp_path / "out"
    items = make_upstream(out, n_videos=1)
    Manifest(out, "fit").append(Manifest(out, "fit").latest()[items[0].id].__class__(
        item=items[0].id, stage="fit", status="failed", fingerprint="f" * 16, error_class="X", message="x"))
    assert run_pack(out, items) == []                           # nothing ready, nothing packed before
    assert not (out / "windows.lmdb").exists() and not (out / ".windows.lmdb.tmp").exists()


def test_kept_segments():
    d = {("v", 0): "reject", ("v", 2): "accept"}
    assert kept_segments(d, "v", 4, include_unreviewed=True) == [1, 2, 3]
    assert kept_segments(d, "v", 4, include_unreviewed=False) == [2]


def test_split_is_by_video_and_deterministic():
    vids = [f"v{i}" for i in range(10)]
    a = assign_splits(vids, [0.6, 0.1, 0.3], seed=0)
    assert a == assign_splits(list(reversed(vids)), [0.6, 0.1, 0.3], seed=0)
    assert sorted(a.values()).count("train") == 6 and list(a.values()).count("val") == 1
    assert assign_splits(["only"], [0.6, 0.1, 0.3], 0) == {"only": "train"}
    assert a != assign_splits(vids, [0.6, 0.1, 0.3], seed=1)


def test_review_decisions_are_honoured_and_repack_is_exact(tmp_path):
    out = tmp_path / "out"
    items = make_upstream(out, n_videos=2, segments=((0, 200), (210, 400)))
    run_pack(out, items, append=True)
    before = lmdb_content(out / "windows.lmdb")
    record_decision(out, items[0].id, 1, "reject", "jaw frozen")
    recs = run_pack(out, items)
    after = lmdb_content(out / "windows.lmdb")
    gone = {k for k in before if k.startswith(f"w/{items[0].id}/0001/".encode())}
    assert gone and not (gone & set(after))
    assert {r.item for r in recs} == {items[0].id}      # the other video was reused untouched
    # unreviewed excluded by option: only accepted segments are packed
    record_decision(out, items[1].id, 0, "accept")
    for r in recs:
        Manifest(out, "pack").append(r)
    run_pack(out, items, pack.Params(include_unreviewed=False))
    keys = [k for k in lmdb_content(out / "windows.lmdb") if k.startswith(b"w/")]
    assert keys and all(k.startswith(f"w/{items[1].id}/0000/".encode()) for k in keys)


def test_decisions_follow_their_frames_across_a_renumbering(tmp_path):
    """Decisions belong to frames (core/decisions.py). The fixture's vad starts at 0, so segments are
    timeline frames. A reject made when frames 230..420 were segment 0 still rejects whatever segment
    covers any of them now (here segment 1, 210..400); one on frames no segment covers applies to nothing
    and is listed as unmatched; an accept must cover 90 % of a segment to accept it."""
    from chorushead.core.decisions import resolve
    out = tmp_path / "out"
    items = make_upstream(out, n_videos=1, segments=((0, 200), (210, 400)))
    vid = items[0].id
    ranges = {vid: [(0, 200), (210, 400)]}
    record_decision(out, vid, 0, "reject", frames=(230, 420))      # made before a re-segmentation
    record_decision(out, vid, 5, "accept", frames=(500, 600))      # frames no segment covers now
    res = resolve(out, ranges)
    assert {k: p.decision for k, p in res.segments.items()} == {(vid, 1): "reject"}
    assert [(p.start, p.end, p.decision) for p in res.unmatched] == [(500, 600, "accept")]
    run_pack(out, items, append=True)
    keys = lmdb_content(out / "windows.lmdb")
    assert not any(k.startswith(f"w/{vid}/0001/".encode()) for k in keys)
    assert any(k.startswith(f"w/{vid}/0000/".encode()) for k in keys)
    # a newer decision on the segment as it is now overrides the older one on those frames only
    record_decision(out, vid, 1, "accept", frames=(210, 400))
    res = resolve(out, ranges)
    assert res.segments[(vid, 1)].decision == "accept"
    assert [(p.start, p.end) for p in res.unmatched] == [(400, 420), (500, 600)]   # the reject's rest
    # 90 % cover: an accept of 180 of segment 0's 200 frames accepts it, 179 does not
    record_decision(out, vid, 0, "accept", frames=(0, 179))
    assert (vid, 0) not in resolve(out, ranges).segments
    record_decision(out, vid, 0, "accept", frames=(0, 180))
    assert resolve(out, ranges).segments[(vid, 0)].decision == "accept"
    # undo clears exactly its frames
    record_decision(out, vid, 1, "undo", frames=(210, 400))
    assert (vid, 1) not in resolve(out, ranges).segments


def test_a_rejected_segment_stays_rejected_after_renumbering(tmp_path):
    """The user's case: reject a segment, then rebuild so that a new short segment takes index 0 and
    the rejected frames become index 1; they are not packed again."""
    out = tmp_path / "out"
    items = make_upstream(out, n_videos=1, segments=((200, 400),))
    vid = items[0].id
    record_decision(out, vid, 0, "reject", frames=(200, 400))
    run_pack(out, items, append=True)
    assert not any(k.startswith(b"w/") for k in lmdb_content(out / "windows.lmdb"))
    # contiguity redone with another threshold: a new segment 0 before it, the rejected one is now 1
    c = Manifest(out, "contiguity").latest()[vid]
    c.outputs["segments"] = [[0, 180], [200, 400]]
    c.fingerprint = "other"
    Manifest(out, "contiguity").append(c)
    sm = Manifest(out, "smooth").latest()[vid]
    d = out / "items" / vid / "smooth"
    np.savez(d / "seg000.npz", coeffs=np.zeros((2, 180, 56), np.float32))
    np.savez(d / "seg001.npz", coeffs=np.zeros((2, 200, 56), np.float32))
    sm.outputs["segments"] = [f"items/{vid}/smooth/seg000.npz", f"items/{vid}/smooth/seg001.npz"]
    Manifest(out, "smooth").append(sm)
    f = Manifest(out, "fit").latest()[vid]
    f.outputs["segments"] = sm.outputs["segments"]
    Manifest(out, "fit").append(f)
    run_pack(out, items, append=True)
    keys = [k for k in lmdb_content(out / "windows.lmdb") if k.startswith(b"w/")]
    assert keys and all(k.startswith(f"w/{vid}/0000/".encode()) for k in keys)


@pytest.mark.slow
def test_kill_during_pack_then_resume_equals_uninterrupted(tmp_path):
    ref, crash = tmp_path / "ref", tmp_path / "crash"
    for out in (ref, crash):
        make_upstream(out, n_videos=8, seconds=40, segments=((0, 1100),))
    pl = Pipeline.load()
    build(None, ref, pl, stages=["pack"], progress=False)
    cmd = [sys.executable, "-m", "chorushead.cli", "build", "--out", str(crash), "--stages", "pack", "-q"]

    def some_videos_packed() -> bool:
        import lmdb
        if not (crash / "windows.lmdb" / "data.mdb").exists():
            return False
        env = lmdb.open(str(crash / "windows.lmdb"), readonly=True, lock=False)
        with env.begin() as txn:
            n_done = sum(1 for k in txn.cursor().iternext(values=False) if bytes(k).startswith(b"__done__/"))
        env.close()
        return 1 <= n_done < 8

    killed = kill_when(cmd, some_videos_packed, timeout=60)
    assert killed, "pack finished before it could be killed; make the fixture larger"
    build(None, crash, pl, stages=["pack"], progress=False)
    a, b = lmdb_content(ref / "windows.lmdb"), lmdb_content(crash / "windows.lmdb")
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)
    assert len(WindowReader(crash / "windows.lmdb", None)) == 8 * ((1100 - 150) // 15 + 1)


def test_one_bad_video_fails_alone_and_the_others_are_packed(tmp_path):
    """A video whose smoothed output is gone gets a failed pack record; the other videos are packed."""
    out = tmp_path / "out"
    items = make_upstream(out, n_videos=3)
    bad = items[0].id
    from chorushead.stages import smooth
    for rel in smooth.Outputs.of(Manifest(out, "smooth").latest()[bad]).segments:
        (out / rel).unlink()
    recs = {r.item: r for r in run_pack(out, items)}
    assert recs[bad].status == "failed" and recs[bad].error_class and recs[bad].message, recs[bad]
    assert all(recs[it.id].status == "done" and recs[it.id].outputs["windows"] > 0 for it in items[1:])
    r = WindowReader(out / "windows.lmdb", None)
    assert {k.split("/")[1] for k in r.keys} == {it.id for it in items[1:]}


def test_decisions_apply_on_the_timeline_after_vads_offset(tmp_path):
    """A segment's frames on the timeline are vad's start + its crop frames. With vad starting at frame
    400, segment 0 (crop frames 0..200) is timeline 400..600: a reject made there removes it; one made on
    0..200 (the crop frames read as timeline frames: the wrong timeline) applies to nothing and is listed."""
    from chorushead.core.decisions import resolve
    out = tmp_path / "out"
    items = make_upstream(out, n_videos=1, segments=((0, 200), (220, 400)), vad_start=400)
    vid = items[0].id
    record_decision(out, vid, 0, "reject", frames=(0, 200))
    run_pack(out, items, append=True)
    keys = lmdb_content(out / "windows.lmdb")
    assert any(k.startswith(f"w/{vid}/0000/".encode()) for k in keys)
    res = resolve(out, {vid: [(400, 600), (620, 800)]})
    assert not res.segments and [(p.start, p.end) for p in res.unmatched] == [(0, 200)]
    record_decision(out, vid, 0, "reject", frames=(400, 600))
    run_pack(out, items, append=True)
    keys = lmdb_content(out / "windows.lmdb")
    assert not any(k.startswith(f"w/{vid}/0000/".encode()) for k in keys)
    assert any(k.startswith(f"w/{vid}/0001/".encode()) for k in keys)


def test_every_segment_of_a_video_lands_in_its_split(tmp_path):
    """Split by video: no song in two splits, whatever its number of segments (three windows-long
    segments per video here, over ten videos, so every split has videos)."""
    from chorushead.core.windows import decode_arrays_header, packed_videos
    out = tmp_path / "out"
    items = make_upstream(out, n_videos=10, seconds=24.0, segments=((0, 200), (210, 420), (430, 640)))
    recs = run_pack(out, items, append=True)
    content = lmdb_content(out / "windows.lmdb")
    seen: dict[str, set] = {}
    for k, v in content.items():
        if k.startswith(b"w/"):
            head = decode_arrays_header(v)[1]
            seen.setdefault(head["video"], set()).add((head["split"], head["segment"]))
    assert {v: {s for s, _ in segs} for v, segs in seen.items()} == \
        {r.item: {r.outputs["split"]} for r in recs}
    assert all({i for _, i in segs} == {0, 1, 2} for segs in seen.values())
    assert {s for r in recs for s in [r.outputs["split"]]} == {"train", "val", "test"}
    markers = packed_videos(out / "windows.lmdb")
    assert {v: m["split"] for v, m in markers.items()} == {r.item: r.outputs["split"] for r in recs}
