import sys

import numpy as np
import pytest

from chorushead.core.manifest import Manifest
from chorushead.core.decisions import record_decision
from chorushead.runner import Pipeline, build
from chorushead.stages.pack import PackParams, assign_splits, run_global
from chorushead.core.windows import WindowReader
from conftest import kill_when, validate_record
from packfixture import lmdb_content, make_upstream


def latest(out):
    return {s: Manifest(out, s).latest() for s in ("vad", "contiguity", "smooth", "assign", "pack")}


def test_windows_content_alignment_and_reader(tmp_path):
    out = tmp_path / "out"
    items = make_upstream(out, n_videos=1)
    recs = run_global(out=out, items=items, params=PackParams(), latest=latest(out), progress=False)
    assert len(recs) == 1
    validate_record(recs[0].to_dict(), "pack")
    # segments (0,200) and (220,360): starts 0,15,30,45 and none in the second (140 < 150 frames)
    assert recs[0].outputs["windows"] == 4
    r = WindowReader(out / "windows.lmdb", split="train")
    assert len(r) == 4 and r.n_host_samples() == 8
    w = r[1]
    assert w.start == 15 and w.coeffs.shape == (2, 150, 56)
    np.testing.assert_array_equal(w.coeffs[0, :, 0], np.arange(15, 165))      # frame-aligned coefficients
    np.testing.assert_allclose(w.pose0, w.coeffs[:, 0, 53:56])
    assert w.vocals.shape == (2, 80000) and w.bgm.shape == (80000,)
    s0 = 15 * 16000 // 30                                                      # 8000 samples in
    expect = ((np.arange(s0, s0 + 80000) % 1000) / 1000.0 * 2) / 10            # singer 1 of video 0
    np.testing.assert_allclose(w.vocals[1], expect, atol=2e-3)                 # float16 storage
    hs = r.host_sample(3)                                                      # window 1, host = singer 1
    np.testing.assert_allclose(hs["partner"], w.vocals[0])
    assert hs["coeffs"][0, 1] == 1.0


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
    for r in run_global(out=out, items=items, params=PackParams(), latest=latest(out), progress=False):
        Manifest(out, "pack").append(r)   # as the runner does
    before = lmdb_content(out / "windows.lmdb")
    record_decision(out, items[0].id, 1, "reject", "jaw frozen")
    recs = run_global(out=out, items=items, params=PackParams(), latest=latest(out), progress=False)
    after = lmdb_content(out / "windows.lmdb")
    gone = {k for k in before if k.startswith(f"w/{items[0].id}/0001/".encode())}
    assert gone and not (gone & set(after))
    assert {r.item for r in recs} == {items[0].id}      # the other video was reused untouched
    # unreviewed excluded by option: only accepted segments are packed
    record_decision(out, items[1].id, 0, "accept")
    for r in recs:
        Manifest(out, "pack").append(r)
    run_global(out=out, items=items, params=PackParams(include_unreviewed=False), latest=latest(out), progress=False)
    keys = [k for k in lmdb_content(out / "windows.lmdb") if k.startswith(b"w/")]
    assert keys and all(k.startswith(f"w/{items[1].id}/0000/".encode()) for k in keys)


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
