"""Readers during a pack (issue 18): readers use LMDB's lock table, adopt a map the writer grew, never
return a batch of two generations, and stop with DatasetChanged (one line) when the file is repacked."""
import multiprocessing as mp
import os
import time
import warnings

import numpy as np
import pytest
from torch.utils.data import BatchSampler

from chorushead.core import windows
from chorushead.core.windows import (POSE, DatasetChanged, WindowReader, encode_arrays, open_env, read_generation,
                                     rebuild_index, window_key, write_meta)

W, FPS, SR = 25, 25, 16000   # 1 s windows: ~107 kB each (2 singers)
N = SR * W // FPS


def _window(gen: int, i: int) -> bytes:
    """Every value of the window is its generation, so a batch says which packs it came from."""
    c = np.full((2, W, 56), gen, np.float32)
    return encode_arrays({"coeffs": c, "vocals": np.full((2, N), gen, np.float16),
                          "bgm": np.full(N, gen, np.float16), "pose0": c[:, 0, POSE].copy()},
                         {"video": "v", "segment": 0, "start": i, "split": "train" if i % 4 else "val"})


def repack(path, n: int, map_size: int, chunk: int = 10) -> int:
    """Rewrite the whole file as pack does, in several write transactions: the first increments the
    generation and deletes every window, then the windows in chunks, then the index."""
    env = open_env(path, write=True, map_size=map_size)
    try:
        with env.begin(write=True) as txn:
            gen = write_meta(txn, fps=FPS, sr=SR, window=W, stride=W)
            cur = txn.cursor()
            if cur.set_range(windows.WINDOW_PREFIX):
                while bytes(cur.key()).startswith(windows.WINDOW_PREFIX) and cur.delete():
                    pass
        for a in range(0, n, chunk):
            with env.begin(write=True) as txn:
                for i in range(a, min(n, a + chunk)):
                    txn.put(window_key("v", 0, i), _window(gen, i))
        with env.begin(write=True) as txn:
            rebuild_index(txn)
    finally:
        env.close()
    return gen


def test_write_meta_increments_generation(tmp_path):
    path = tmp_path / "g.lmdb"
    env = open_env(path, write=True, map_size=1 << 22)
    with env.begin(write=True) as txn:
        assert read_generation(txn) == 0
        assert write_meta(txn, fps=FPS, sr=SR, window=W, stride=W) == 1
        txn.put(window_key("v", 0, 1), _window(1, 1))
        rebuild_index(txn)                      # keeps the generation it finds in the meta
    with env.begin(write=True) as txn:
        assert write_meta(txn, fps=FPS, sr=SR, window=W, stride=W, extra={"generation": 99}) == 2
    with env.begin() as txn:
        import json
        assert json.loads(txn.get(windows.META_KEY))["generation"] == 2
    env.close()
    assert read_generation(path) == 2
    assert WindowReader(path, "train").generation == 2
    assert repack(path, 4, 1 << 22) == 3 and read_generation(path) == 3


def test_synth_writes_generation_one(tmp_path):
    from pachorus.synth import SynthConfig, write_synth_lmdb
    write_synth_lmdb(tmp_path / "s.lmdb", SynthConfig(videos=2, seconds=2, window=25, stride=25, fps=25, seed=0))
    assert read_generation(tmp_path / "s.lmdb") == 1


def _reader(path, ready, stop, progress, out):
    """A trainer-like reader in another process: the trainer's loader (a read-ahead thread half the
    time), reopening the dataset whenever it raises DatasetChanged."""
    from pachorus.data import BatchLoader, HostWindowDataset
    res = {"batches": 0, "changes": [], "errors": [], "mixed": 0}
    try:
        res["map0"] = None
        while not stop.is_set():
            ds = HostWindowDataset(path, "train")
            if res["map0"] is None:
                res["map0"] = open_env(path).info()["map_size"]
                ready.set()
            gen = ds.reader.generation
            try:
                while not stop.is_set():
                    batches = BatchSampler(list(range(len(ds))), 4, drop_last=False)
                    for b in BatchLoader(ds, batches, prefetch=len(res["changes"]) % 2):
                        got = set(np.unique(b["coeffs"].numpy())) | set(np.unique(b["host"].numpy()))
                        res["mixed"] += got != {gen}
                        res["batches"] += 1
                        progress.value = gen
                    time.sleep(0.001)
            except DatasetChanged as e:
                res["changes"].append(str(e))
        res["map1"] = open_env(path).info()["map_size"]
    except BaseException as e:   # MapResizedError, KeyError, TypeError...: what must not happen
        res["errors"].append(f"{type(e).__name__}: {e}")
    out.put(res)


def test_reader_process_survives_five_repacks(tmp_path):
    path = tmp_path / "w.lmdb"
    assert repack(path, 12, 1 << 22) == 1
    ctx = mp.get_context("spawn")
    ready, stop, progress, out = ctx.Event(), ctx.Event(), ctx.Value("i", 0), ctx.Queue()
    proc = ctx.Process(target=_reader, args=(str(path), ready, stop, progress, out), daemon=True)
    proc.start()
    try:
        assert ready.wait(120), "reader process did not start"
        # (windows, writer map size): the third repack writes ~13 MB, past the reader's 10 MB map
        for n, map_size in ((12, 1 << 22), (120, 64 << 20), (12, 64 << 20), (30, 64 << 20), (12, 64 << 20)):
            gen = repack(path, n, map_size)
            t0 = time.time()
            while progress.value != gen:   # the reader noticed, reopened, and read the new generation
                assert proc.is_alive() and time.time() - t0 < 60, f"reader never read generation {gen}"
                time.sleep(0.01)
        stop.set()
        res = out.get(timeout=60)
    finally:
        stop.set()
        proc.join(30)
        if proc.is_alive():
            proc.kill()
    assert gen == 6
    assert res["errors"] == []                       # no MapResizedError, KeyError, TypeError
    assert res["mixed"] == 0 and res["batches"] > 0  # every batch of one generation, the reader's
    assert (path / "data.mdb").stat().st_size > res["map0"]   # the file outgrew the reader's map...
    assert res["map1"] > res["map0"]                           # ...which adopted the new size
    repacked = [m for m in res["changes"] if " was repacked while in use (generation " in m]
    assert len(res["changes"]) >= 5 and repacked, res["changes"]
    assert all(" was repacked while in use " in m or " vanished while in use " in m for m in res["changes"])
    assert f"{path} was repacked while in use (generation 1 -> 2): the windows changed under this run; " \
           "restart training on the new dataset" in res["changes"]


@pytest.mark.parametrize("workers,prefetch", [(0, 0), (0, 2), (2, 0)])
def test_trainer_loader_stops_with_one_line(tmp_path, workers, prefetch):
    from pachorus.data import BatchLoader, HostWindowDataset
    path = tmp_path / "w.lmdb"
    repack(path, 16, 1 << 23)
    ds = HostWindowDataset(path, "train")
    batches = BatchSampler(list(range(len(ds))), 4, drop_last=False)
    assert len(list(BatchLoader(ds, batches, num_workers=workers, prefetch=prefetch))) == len(batches)
    repack(path, 16, 1 << 23)
    with pytest.raises(DatasetChanged) as e:
        list(BatchLoader(ds, batches, num_workers=workers, prefetch=prefetch))
    assert str(e.value) == (f"{path} was repacked while in use (generation 1 -> 2): the windows changed under "
                            "this run; restart training on the new dataset")
    with pytest.raises(DatasetChanged, match="generation 1 -> 2"):
        ds.reader[0]                                         # the old reader, one window at a time
    assert WindowReader(path, "train")[0].coeffs[0, 0, 0] == 2   # a new one reads the new pack


def test_vanished_window_is_dataset_changed(tmp_path):
    from pachorus.data import HostWindowDataset
    path = tmp_path / "w.lmdb"
    repack(path, 8, 1 << 23)
    ds = HostWindowDataset(path, "train")
    env = open_env(path, write=True, map_size=1 << 23)
    with env.begin(write=True) as txn:   # a writer that deletes without a new generation (yet)
        txn.delete(window_key("v", 0, 1))
    env.close()
    with pytest.raises(DatasetChanged, match=r"window w/v/0000/0000001 vanished while in use \(still generation 1"):
        ds.batch(list(range(len(ds))))
    with pytest.raises(DatasetChanged, match="vanished"):
        ds.reader.host_shapes()


def test_cli_prints_one_line(capsys):
    import typer

    from pachorus.cli import clean_errors

    @clean_errors
    def run():
        raise DatasetChanged("/d/w.lmdb was repacked while in use (generation 3 -> 4): the windows changed")
    with pytest.raises(typer.Exit) as e:
        run()
    assert e.value.exit_code == 2
    assert capsys.readouterr().err == ("pachorus: error: /d/w.lmdb was repacked while in use (generation 3 -> 4): "
                                       "the windows changed\n")


def test_readers_use_the_lock_table_or_say_why_not(tmp_path, monkeypatch):
    path = tmp_path / "w.lmdb"
    repack(path, 4, 1 << 22)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert WindowReader(path, "train")[0].coeffs[0, 0, 0] == 1
    env = open_env(path)
    with env.begin():                             # an open read holds a slot in the lock table
        assert env.locked and str(os.getpid()) in env.readers()
    ro = tmp_path / "ro.lmdb"                     # a read-only copy (root may write anyway: pretend)
    repack(ro, 4, 1 << 22)
    monkeypatch.setattr(windows, "_lock_table_writable", lambda p: False)
    with pytest.warns(RuntimeWarning, match=f"{ro}: cannot write its LMDB lock table"):
        assert WindowReader(ro, "train")[0].coeffs[0, 0, 0] == 1
    assert not open_env(ro).locked
    windows._ENVS.pop((os.getpid(), str(ro.resolve()))).close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")            # said once per path
        assert WindowReader(ro, "train")[0].coeffs[0, 0, 0] == 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_forked_readers_keep_each_others_slots(tmp_path):
    """A forked child closes the environment it inherited; that must not free a reader slot another
    process reads under (py-lmdb's cached transaction of the parent, dropped before each fork)."""
    path = tmp_path / "w.lmdb"
    repack(path, 4, 1 << 22)
    WindowReader(path, "train")[0]
    with open_env(path).begin() as txn:          # the parent read: py-lmdb keeps its transaction (a slot)
        txn.get(windows.META_KEY)
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    a = os.fork()
    if a == 0:                                   # A: holds a read open while B starts and ends
        code = 4
        try:
            env = open_env(path)
            with env.begin() as txn:
                txn.get(windows.META_KEY)
                os.write(ready_w, b"1")
                os.read(go_r, 1)
                mine = [ln.split() for ln in env.readers().splitlines()[1:]]
                code = 0 if any(f[0] == str(os.getpid()) and f[2] != "-" for f in mine if len(f) == 3) else 3
        finally:
            os._exit(code)
    os.read(ready_r, 1)
    b = os.fork()
    if b == 0:
        code = 5
        try:
            WindowReader(path, "train")[0]
            code = 0
        finally:
            os._exit(code)
    assert os.waitstatus_to_exitcode(os.waitpid(b, 0)[1]) == 0
    os.write(go_w, b"1")
    assert os.waitstatus_to_exitcode(os.waitpid(a, 0)[1]) == 0, "B's close freed A's reader slot"
    assert WindowReader(path, "train")[0].coeffs[0, 0, 0] == 1
