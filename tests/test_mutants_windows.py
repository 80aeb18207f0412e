"""The packed-window LMDB (chorushead.core.windows): byte format, layout cache, keys, reader and writer
details, the map-growth and fork paths, written to kill the mutants that survived
``scripts/mutation.sh windows`` (see docs/mutation-survivors.md). Every LMDB here is a few small
windows built by hand, so the expected keys, indexes, metas and samples are stated exactly; the
writer that grows the map runs in a plain ``python -c`` (py-lmdb opens a file once per process)."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import threading
import warnings

import lmdb
import numpy as np
import pytest

from chorushead.core import windows as W
from chorushead.core.windows import (DONE_PREFIX, GENERATION_KEY, INDEX_KEY, META_KEY, N_SHAPE, DatasetChanged,
                                     WindowReader, WindowWriter, array_views, bump_generation, decode_arrays,
                                     decode_arrays_header, encode_arrays, merge_meta, open_env, packed_videos,
                                     parse_window_key, read_generation, rebuild_index, window_key, write_meta)

WIN, NS = 4, 8     # frames and audio samples per window


def arrays(s: int, seed: int, shape: bool = True) -> dict:
    rng = np.random.default_rng(seed)
    a = {"coeffs": rng.standard_normal((s, WIN, 56)).astype(np.float32),
         "vocals": rng.standard_normal((s, NS)).astype(np.float16),
         "bgm": rng.standard_normal(NS).astype(np.float16),
         "pose0": rng.standard_normal((s, 3)).astype(np.float32)}
    if shape:
        a["shape"] = rng.standard_normal((s, N_SHAPE)).astype(np.float32)
    return a


# (video, segment, start, S, has shape, split): keys sort as listed within each split
SPEC = [("a", 0, 0, 2, True, "train"), ("a", 0, 2, 3, False, "train"), ("b", 1, 0, 2, True, "train"),
        ("c", 0, 0, 2, False, "val")]


def build(path, spec=SPEC, extra=None):
    """A finished file (meta, windows, index), as synth writes one; returns {key: arrays}."""
    env = open_env(path, write=True, map_size=1 << 22)
    out = {}
    try:
        with env.begin(write=True) as txn:
            write_meta(txn, fps=30, sr=16000, window=WIN, stride=2, extra=extra)
            for n, (v, seg, st, s, sh, split) in enumerate(spec):
                a = arrays(s, n, sh)
                k = window_key(v, seg, st)
                txn.put(k, encode_arrays(a, {"video": v, "segment": seg, "start": st, "split": split}))
                out[k.decode()] = a
            rebuild_index(txn)
    finally:
        env.close()
    return out


def raw(path, key):
    with open_env(path).begin() as txn:
        v = txn.get(key)
        return None if v is None else bytes(v)


# ---- byte format ---------------------------------------------------------------------------------

def test_encode_arrays_exact_bytes():
    a = np.array([1, 2, 3], "<u2")
    b = np.arange(4, dtype="<f4").reshape(2, 2).T          # not C-contiguous: stored in C order
    blob = encode_arrays({"a": a, "b": b}, {"k": 1})
    head = json.dumps({"arrays": {"a": ["<u2", [3], 0, 6], "b": ["<f4", [2, 2], 6, 16]}, "header": {"k": 1}},
                      sort_keys=True).encode()
    assert blob == struct.pack("<I", len(head)) + head + a.tobytes() + np.ascontiguousarray(b).tobytes()
    assert encode_arrays({}, None)[4:] == b'{"arrays": {}, "header": {}}'


def test_decode_arrays_copies_unless_told_not_to():
    src = {"x": np.arange(6, dtype=np.int32).reshape(2, 3), "y": np.float16([1.5])}
    blob = encode_arrays(src, {"video": "v"})
    out, head = decode_arrays(blob)
    assert head == {"video": "v"} and list(out) == ["x", "y"]
    for k in src:
        assert out[k].dtype == src[k].dtype and out[k].shape == src[k].shape
        np.testing.assert_array_equal(out[k], src[k])
    assert out["x"].flags.writeable and out["x"].flags.owndata   # a copy, not a view of the bytes
    view, _ = decode_arrays(blob, copy=False)
    assert not view["x"].flags.writeable                    # a view of the (immutable) bytes
    assert decode_arrays_header(blob) == ({"x": ["<i4", [2, 3], 0, 24], "y": ["<f2", [1], 24, 2]}, {"video": "v"})


def test_window_keys_and_their_inverse():
    assert window_key("chan/vid", 3, 120) == b"w/chan/vid/0003/0000120"
    assert parse_window_key(b"w/chan/vid/0003/0000120") == ("chan/vid", 3, 120)   # a video id with a slash
    assert parse_window_key("w/v/0012/0000007") == ("v", 12, 7)
    assert parse_window_key(bytearray(b"w/x/0000/0000001")) == ("x", 0, 1)


# ---- the layout cache of array_views -------------------------------------------------------------

def spec_of(blob):
    return [(n, np.dtype(d), tuple(s), o, z) for n, (d, s, o, z) in decode_arrays_header(blob)[0].items()]


def test_array_views_caches_one_layout_under_its_array_spec():
    a = arrays(2, 0)
    b1 = encode_arrays(a, {"a": 1, "header": 2})          # a header with a key named "header" in it
    b2 = encode_arrays(a, {"a": 3, "header": 2})
    layouts = {}
    for blob in (b1, b2):
        v = array_views(blob, layouts)
        np.testing.assert_array_equal(v["coeffs"], a["coeffs"])
    n = struct.unpack_from("<I", b1)[0]
    head = b1[4:4 + n]
    key = head[:head.find(b', "header": ')]
    assert list(layouts) == [key] and key.startswith(b'{"arrays": {"bgm": ')
    assert layouts[key] == spec_of(b1)
    # the cache is what a later read uses: a (poisoned) entry under that key is believed
    layouts[key] = [("only", np.dtype("<u1"), (3,), 0, 3)]
    assert list(array_views(b2, layouts)) == ["only"]
    # without a cache: parsed each time
    v = array_views(b1, None)
    np.testing.assert_array_equal(v["shape"], a["shape"])


def odd_blob(arrs: dict, header: dict) -> bytes:
    """A value whose JSON puts the header first (another writer's key order): nothing to cache."""
    spec, chunks, off = {}, [], 0
    for k, x in arrs.items():
        spec[k] = [x.dtype.str, list(x.shape), off, x.nbytes]
        chunks.append(x.tobytes())
        off += x.nbytes
    head = b'{"header": ' + json.dumps(header).encode() + b', "arrays": ' + json.dumps(spec).encode() + b"}"
    return struct.pack("<I", len(head)) + head + b"".join(chunks)


def test_array_views_of_another_key_order_are_parsed_and_not_cached():
    x = {"p": np.arange(3, dtype=np.int16)}
    y = {"p": np.arange(6, dtype=np.float32).reshape(2, 3)}
    layouts = {}
    for src in (x, y, x):
        v = array_views(odd_blob(src, {"h": 1}), layouts)
        np.testing.assert_array_equal(v["p"], src["p"])
        assert v["p"].dtype == src["p"].dtype
    assert layouts == {}
    np.testing.assert_array_equal(array_views(odd_blob(y, {}), None)["p"], y["p"])


def test_the_layout_cache_stops_at_256_entries():
    blob = encode_arrays(arrays(2, 0), {})
    full = {bytes([i]) * 3: [] for i in range(256)}
    array_views(blob, full)
    assert len(full) == 256
    almost = {bytes([i]) * 3: [] for i in range(255)}
    array_views(blob, almost)
    assert len(almost) == 256


# ---- meta, generation, index ---------------------------------------------------------------------

def test_write_meta_exact_and_bump_generation(tmp_path):
    env = open_env(tmp_path / "m", write=True, map_size=1 << 20)
    with env.begin(write=True) as txn:
        assert bump_generation(txn) == 1                     # no meta yet: only the counter moves
        assert txn.get(META_KEY) is None and txn.get(GENERATION_KEY) == b"1"
        assert write_meta(txn, fps=25, sr=8000, window=50, stride=10, extra={"fps": 7, "x": 1}) == 2
        meta = json.loads(txn.get(META_KEY))
        assert meta == {"format": "chorushead-windows", "version": 2, "fps": 7, "sr": 8000, "window": 50,
                        "stride": 10, "coeff_layout": {"exp": [0, 50], "jaw": [50, 53], "pose": [53, 56]},
                        "x": 1, "generation": 2}
        assert txn.get(META_KEY) == json.dumps(meta, sort_keys=True).encode()
        assert bump_generation(txn) == 3
        assert txn.get(GENERATION_KEY) == b"3" and json.loads(txn.get(META_KEY)) == {**meta, "generation": 3}
        # a meta written before generations were counted: bumping adds the key, keys stay sorted
        txn.put(META_KEY, b'{"format": "chorushead-windows", "version": 2}')
        txn.delete(GENERATION_KEY)
        assert bump_generation(txn) == 1
        assert txn.get(META_KEY) == b'{"format": "chorushead-windows", "generation": 1, "version": 2}'
        merge_meta(txn, {"aa": {"z": 1, "b": 2}})
        assert txn.get(META_KEY) == (b'{"aa": {"b": 2, "z": 1}, "format": "chorushead-windows", '
                                     b'"generation": 1, "version": 2}')
    env.close()


def test_rebuild_index_exact(tmp_path):
    path = tmp_path / "w"
    build(path, extra={"n_singers": 2})
    env = open_env(path, write=True, map_size=1 << 22)
    with env.begin(write=True) as txn:
        txn.put(b"x/after", b"not a window")                 # after the windows: the scan stops there
        txn.put(b"v/before", b"not a window")
        index = rebuild_index(txn)
        meta = json.loads(txn.get(META_KEY))
        assert txn.get(INDEX_KEY) == json.dumps(index, sort_keys=True).encode()
    env.close()
    assert index == {"train": [["w/a/0000/0000000", 2], ["w/a/0000/0000002", 3], ["w/b/0001/0000000", 2]],
                     "val": [["w/c/0000/0000000", 2]], "test": []}
    assert meta["singer_counts"] == [2, 3] and "n_singers" not in meta
    assert (meta["windows"], meta["shape_windows"], meta["has_shape"]) == (4, 2, False)


def test_rebuild_index_of_an_empty_file_and_of_all_shapes(tmp_path):
    build(tmp_path / "e", spec=[])
    meta = json.loads(raw(tmp_path / "e", META_KEY))
    assert (meta["windows"], meta["shape_windows"], meta["has_shape"], meta["singer_counts"]) == (0, 0, False, [])
    build(tmp_path / "s", spec=[("a", 0, 0, 2, True, "test")])
    meta = json.loads(raw(tmp_path / "s", META_KEY))
    assert (meta["windows"], meta["shape_windows"], meta["has_shape"]) == (1, 1, True)


def test_read_generation_of_a_path_and_of_an_old_file(tmp_path):
    build(tmp_path / "w")
    assert read_generation(tmp_path / "w") == 1 and read_generation(str(tmp_path / "w")) == 1
    env = open_env(tmp_path / "old", write=True, map_size=1 << 20)
    with env.begin(write=True) as txn:
        txn.put(b"k", b"v")
    env.close()
    assert read_generation(tmp_path / "old") == 0


# ---- the reader -------------------------------------------------------------------------------------

def test_reader_refuses_what_it_cannot_read(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        WindowReader(tmp_path / "none")
    assert str(e.value) == (f"No packed LMDB at {tmp_path / 'none'} (looked for {tmp_path / 'none' / 'data.mdb'}). "
                            "Run `chorushead build ... --stages pack` or `pachorus synth` first.")
    env = open_env(tmp_path / "half", write=True, map_size=1 << 20)
    with env.begin(write=True) as txn:
        write_meta(txn, fps=30, sr=16000, window=4, stride=2)
    env.close()
    with pytest.raises(ValueError) as e:
        WindowReader(tmp_path / "half")
    assert str(e.value) == (f"{tmp_path / 'half'} is not a finished chorushead-windows LMDB (no __meta__/__index__): "
                            "the pack stage did not complete; rerun it.")
    build(tmp_path / "w")
    with pytest.raises(ValueError) as e:
        WindowReader(tmp_path / "w", "dev")
    assert str(e.value) == "split must be one of ('train', 'val', 'test'), got 'dev'"
    for meta in ({"format": "other", "version": 2}, {"format": "chorushead-windows", "version": 3}):
        env = open_env(tmp_path / "w", write=True, map_size=1 << 22)
        with env.begin(write=True) as txn:
            txn.put(META_KEY, json.dumps(meta).encode())
        env.close()
        with pytest.raises(ValueError) as e:
            WindowReader(tmp_path / "w")
        assert str(e.value) == f"{tmp_path / 'w'}: unsupported format {meta['format']} v{meta['version']}"


def test_reader_of_one_split_and_of_all(tmp_path):
    build(tmp_path / "w")
    r = WindowReader(tmp_path / "w")
    assert r.split == "train" and len(r) == 3
    assert r.keys == ["w/a/0000/0000000", "w/a/0000/0000002", "w/b/0001/0000000"]
    assert r.singers.tolist() == [2, 3, 2] and r.singers.dtype == np.int64
    assert r.singer_counts == [2, 3] and r.n_host_samples() == 7 and r.generation == 1
    a = WindowReader(tmp_path / "w", None)
    assert len(a) == 4 and a.keys[-1] == "w/c/0000/0000000" and a.n_host_samples() == 9
    assert len(WindowReader(tmp_path / "w", "test")) == 0 and WindowReader(tmp_path / "w", "test").n_host_samples() == 0


def test_a_version_1_file_has_bare_keys_and_one_singer_count(tmp_path):
    path = tmp_path / "v1"
    build(path, spec=[("a", 0, 0, 3, False, "train"), ("a", 0, 2, 3, False, "train")])
    env = open_env(path, write=True, map_size=1 << 22)
    with env.begin(write=True) as txn:
        meta = json.loads(txn.get(META_KEY))
        txn.put(META_KEY, json.dumps({**meta, "version": 1, "n_singers": 3}).encode())
        txn.put(INDEX_KEY, json.dumps({"train": ["w/a/0000/0000000", "w/a/0000/0000002"]}).encode())
    env.close()
    r = WindowReader(path)
    assert r.keys == ["w/a/0000/0000000", "w/a/0000/0000002"] and r.singers.tolist() == [3, 3]
    with env_writer(path) as txn:
        txn.put(META_KEY, json.dumps({**meta, "version": 1}).encode())    # no n_singers: a duet file
    assert WindowReader(path).singers.tolist() == [2, 2]


class env_writer:
    def __init__(self, path):
        self.env = open_env(path, write=True, map_size=1 << 22)

    def __enter__(self):
        self.txn = self.env.begin(write=True)
        return self.txn

    def __exit__(self, *exc):
        self.txn.commit()
        self.env.close()


def test_windows_read_back_exactly_and_as_copies(tmp_path):
    src = build(tmp_path / "w")
    r = WindowReader(tmp_path / "w", None)
    for i, w in enumerate(list(r)):
        spec = SPEC[i]
        a = src[r.keys[i]]
        assert (w.key, w.video, w.segment, w.start, w.split) == (r.keys[i], spec[0], spec[1], spec[2], spec[5])
        for k in ("coeffs", "vocals", "bgm", "pose0"):
            assert getattr(w, k).dtype == a[k].dtype
            np.testing.assert_array_equal(getattr(w, k), a[k])
        if spec[4]:
            np.testing.assert_array_equal(w.shape, a["shape"])
        else:
            assert w.shape is None
        assert w.coeffs.flags.writeable and w.vocals.flags.writeable     # copies: valid after the read
    got = r.read([3, 0])
    assert [w.key for w in got] == [r.keys[3], r.keys[0]]
    np.testing.assert_array_equal(got[0].bgm, src[r.keys[3]]["bgm"])
    layouts = {}
    with r.env().begin(buffers=True) as txn:
        v = r.views(txn, 1, layouts)
        np.testing.assert_array_equal(v["coeffs"], src[r.keys[1]]["coeffs"])
    assert len(layouts) == 1


def test_host_samples_and_shapes(tmp_path):
    src = build(tmp_path / "w")
    r = WindowReader(tmp_path / "w")        # train: a/0 (2 singers, shape), a/2 (3, none), b/0 (2, shape)
    a0, a2, b0 = (src[k] for k in r.keys)
    s = r.host_sample(3)                   # window 1, singer 1
    assert s["key"] == "w/a/0000/0000002" and s["singer"] == 1 and s["has_shape"] is False
    assert s["host"].dtype == np.float32 and s["bgm"].dtype == np.float32 and s["shape"].dtype == np.float32
    np.testing.assert_array_equal(s["host"], a2["vocals"][1].astype(np.float32))
    np.testing.assert_allclose(s["partner"], a2["vocals"][[0, 2]].astype(np.float32).sum(0))
    np.testing.assert_array_equal(s["bgm"], a2["bgm"].astype(np.float32))
    np.testing.assert_array_equal(s["coeffs"], a2["coeffs"][1])
    np.testing.assert_array_equal(s["pose0"], a2["pose0"][1])
    np.testing.assert_array_equal(s["shape"], np.zeros(N_SHAPE))
    s = r.host_sample(6)                   # the last one: window 2, singer 1, with a shape
    assert s["key"] == "w/b/0001/0000000" and s["singer"] == 1 and s["has_shape"] is True
    np.testing.assert_array_equal(s["shape"], b0["shape"][1])
    assert s["shape"].dtype == np.float32
    s = r.host_sample(0)
    assert s["key"] == "w/a/0000/0000000" and s["singer"] == 0
    for j in (7, -1):
        with pytest.raises(IndexError) as e:
            r.host_sample(j)
        assert str(e.value) == f"host sample {j} out of range (7)"
    shapes, known = r.host_shapes()
    assert shapes.dtype == np.float32 and known.dtype == bool and shapes.shape == (7, N_SHAPE)
    assert known.tolist() == [True, True, False, False, False, True, True]
    np.testing.assert_array_equal(shapes[0:2], a0["shape"])
    np.testing.assert_array_equal(shapes[2:5], 0)
    np.testing.assert_array_equal(shapes[5:7], b0["shape"])
    assert shapes.flags.writeable


def test_dataset_changed_messages(tmp_path):
    path = tmp_path / "w"
    build(path)
    r = WindowReader(path)
    with open_env(path).begin() as txn:
        r.check(txn)                                      # same generation: passes
        e = r.changed(txn, "w/a/0000/0000000")
    assert str(e) == (f"{path}: window w/a/0000/0000000 vanished while in use (still generation 1, whose index "
                      "lists it): the LMDB is being rewritten under this run; restart training once the pack "
                      "has finished")
    with env_writer(path) as txn:
        bump_generation(txn)
    with pytest.raises(DatasetChanged) as e:
        r.read([0])
    assert str(e.value) == (f"{path} was repacked while in use (generation 1 -> 2): the windows changed under this "
                            "run; restart training on the new dataset")


def test_a_pickled_reader_leaves_its_environment_behind(tmp_path):
    build(tmp_path / "w")
    r = WindowReader(tmp_path / "w")
    env = r.env()
    assert r.env() is env and env.forks == W._FORKS[0]
    state = r.__getstate__()
    assert "_env" not in state and "_env" in r.__dict__ and state["keys"] == r.keys
    back = pickle.loads(pickle.dumps(r))
    assert "_env" not in back.__dict__ and back[0].key == r.keys[0]
    open_env(tmp_path / "w", write=True, map_size=1 << 22).close()   # a writer closes the reader's environment
    assert env.closed and r.env() is not env and not r.env().closed


# ---- environments ------------------------------------------------------------------------------------

def test_reader_environment_flags(tmp_path):
    build(tmp_path / "w")
    env = open_env(tmp_path / "w")
    assert open_env(tmp_path / "w") is env and open_env(str(tmp_path / "w")) is env
    f = env.flags()
    assert (f["readonly"], f["readahead"], f["meminit"], f["subdir"], f["lock"]) == (True, True, False, True, True)
    assert env.max_readers() == 512 and env.forks == W._FORKS[0] and env.locked
    with pytest.raises(AttributeError, match="^env$"):
        W._ReadEnv.__new__(W._ReadEnv).env
    wenv = open_env(tmp_path / "w", write=True, map_size=1 << 23)     # a writer closes this process's reader
    assert env.closed and (os.getpid(), str((tmp_path / "w").resolve())) not in W._ENVS
    assert wenv.info()["map_size"] == 1 << 23 and wenv.max_readers() == 512
    assert not wenv.flags()["meminit"] and wenv.flags()["readahead"]
    wenv.close()


def test_a_reader_inherited_over_fork_is_closed_and_replaced(tmp_path):
    build(tmp_path / "w")
    env = open_env(tmp_path / "w")
    key = (os.getpid(), str((tmp_path / "w").resolve()))
    W._ENVS[(-5, key[1])] = W._ENVS.pop(key)                   # as if opened by the parent process
    new = open_env(tmp_path / "w")
    assert new is not env and env.closed and not new.closed and (-5, key[1]) not in W._ENVS
    assert W._ENVS[key] is new


def test_lock_table_writable_asks_about_the_lock_file_or_the_folder(tmp_path, monkeypatch):
    d = tmp_path / "db"
    d.mkdir()
    answers = {str(d): True, str(d / "lock.mdb"): False}

    def access(p, mode):
        assert mode == os.W_OK
        return answers[str(p)]
    monkeypatch.setattr(W.os, "access", access)
    assert W._lock_table_writable(d) is True                # no lock.mdb yet: the folder decides
    (d / "lock.mdb").write_bytes(b"")
    assert W._lock_table_writable(d) is False               # the lock file decides


def test_read_transactions_forward_and_guard_their_attributes(tmp_path):
    build(tmp_path / "w")
    env = open_env(tmp_path / "w")
    t = env.begin()
    assert t.get(GENERATION_KEY) == b"1" and env._active == 1
    t.commit()                                           # a read commit is an abort
    t.abort()                                            # twice: released once
    assert env._active == 0
    bare = W._ReadTxn.__new__(W._ReadTxn)
    with pytest.raises(AttributeError, match="^txn$"):
        bare.txn
    bare.txn, bare._env, bare._open = None, None, False


def test_close_inherited_refuses_while_a_read_is_open(tmp_path, monkeypatch):
    build(tmp_path / "w")
    env = W._ReadEnv(tmp_path / "w")
    t = env.begin()
    with pytest.raises(RuntimeError) as e:
        env.close_inherited()
    assert str(e.value) == (f"{tmp_path / 'w'}: this process was forked while its parent was reading the LMDB in "
                            "another thread; start worker processes while no read is open")
    assert env.closed is True
    t.abort()
    env.close_inherited()
    assert env.closed is True
    with pytest.raises(lmdb.Error):
        env.env.info()
    # without a lock table there are no slots to free: closing with a read open is allowed
    monkeypatch.setattr(W, "_lock_table_writable", lambda p: False)
    W._WARNED.add(str(tmp_path / "w"))
    un = W._ReadEnv(tmp_path / "w")
    t = un.begin()
    un.close_inherited()
    assert un.closed is True


def test_fork_hooks(tmp_path):
    build(tmp_path / "w")
    env = open_env(tmp_path / "w")
    with env.begin() as txn:                             # py-lmdb keeps the read transaction: a slot
        txn.get(META_KEY)
    me = str(os.getpid())
    assert me in env.readers()
    W._before_fork()
    try:
        assert env in W._FORK_HELD and env._lock.locked()
        assert me not in env.readers()                   # the cached transaction is dropped
    finally:
        W._after_fork()
    assert not env._lock.locked() and W._FORK_HELD == []
    # a read open across the fork is kept; an environment of another process is not held
    other = W._ReadEnv.__new__(W._ReadEnv)               # another process's environment (inherited)
    other.__dict__.update(pid=-1, closed=False, locked=True, _active=0, _lock=threading.Lock(), env=None)
    W._ENVS[(-1, "other")] = other
    t = env.begin()
    try:
        W._before_fork()
        try:
            assert other not in W._FORK_HELD
        finally:
            W._after_fork()
        assert t.get(GENERATION_KEY) == b"1"
    finally:
        t.abort()
        W._ENVS.pop((-1, "other"))
    n = W._FORKS[0]
    try:
        W._after_fork_in_child()
        assert W._FORKS == [n + 1]
    finally:
        W._FORKS[0] = n


GROW = ("import lmdb, sys\n"
        "e = lmdb.open(sys.argv[1], map_size=64 << 20, subdir=True)\n"
        "with e.begin(write=True) as t:\n"
        "    t.put(b'zz/big', b'x' * (20 << 20))\n"
        "e.close()\n")


def grow(path):
    subprocess.run([sys.executable, "-c", GROW, str(path)], check=True, timeout=60)


def test_a_reader_adopts_the_map_a_writer_grew(tmp_path):
    path = tmp_path / "w"
    build(path)
    env = W._ReadEnv(path)
    size0 = env.info()["map_size"]
    grow(path)
    with env.begin(buffers=True) as txn:                 # MapResizedError inside: the new size adopted
        big = txn.get(b"zz/big")
        assert isinstance(big, memoryview) and len(big) == 20 << 20
    assert env.info()["map_size"] > size0 and env._active == 0
    env.close()


def test_another_thread_waits_for_the_read_open_when_the_map_grew(tmp_path):
    path = tmp_path / "w"
    build(path)
    env = W._ReadEnv(path)
    t = env.begin()
    grow(path)
    # (this thread's own begin is refused: test_a_thread_that_holds_a_read_is_refused_not_blocked, which
    # cannot hang when the refusal is mutated away) another thread may not adopt the size while this
    # read is open: it waits for its end
    got = []

    def read():
        txn = env.begin()
        got.append(txn.get(b"zz/big") is not None)
        txn.abort()
    th = threading.Thread(target=read)
    th.start()
    th.join(0.3)
    assert th.is_alive() and got == []
    t.abort()
    th.join(10)
    assert got == [True]
    env.close()


# ---- the writer ------------------------------------------------------------------------------------

def test_writer_lifecycle(tmp_path):
    final = tmp_path / "data.lmdb"
    tmp = tmp_path / ".data.lmdb.tmp"
    tmp.mkdir()
    (tmp / "junk").write_bytes(b"left by a pack killed before its first video")
    w = WindowWriter(final, map_size=1 << 22)
    assert w.pending and w.tmp == tmp and not (tmp / "junk").exists() and w.meta == {} and w.markers == {}
    assert w.env.info()["map_size"] == 1 << 22
    w.begin_change(fps=30, sr=16000, window=WIN, stride=2, extra={"x": 1}, drop=[])
    blob = encode_arrays(arrays(2, 0), {"video": "v", "segment": 0, "start": 0, "split": "train"})
    w.put_video("v", [(window_key("v", 0, 0), blob)], {"z": 1, "a": {"y": 2, "b": 3}})
    assert not w.pending and final.exists() and not tmp.exists()
    assert w.env.info()["map_size"] == 1 << 22             # reopened at the final path with the same map
    blob2 = encode_arrays(arrays(3, 1), {"video": "u", "segment": 2, "start": 4, "split": "val"})
    w.put_video("u", [(window_key("u", 2, 4), blob2)], {"fingerprint": "f", "windows": 1})
    index = w.finish({"summary": {"u": 1}})
    w.close()
    assert index == {"train": [["w/v/0000/0000000", 2]], "val": [["w/u/0002/0000004", 3]], "test": []}
    assert raw(final, DONE_PREFIX + b"v") == b'{"a": {"b": 3, "y": 2}, "z": 1}'
    meta = json.loads(raw(final, META_KEY))
    assert (meta["sr"], meta["fps"], meta["window"], meta["stride"], meta["x"]) == (16000, 30, WIN, 2, 1)
    assert meta["summary"] == {"u": 1} and meta["generation"] == 4 and read_generation(final) == 4
    # packed_videos: a marker without a summary says what it can
    assert packed_videos(final) == {"u": {"windows": 1, "split": "?", "fingerprint": "f"},
                                    "v": {"windows": 0, "split": "?", "fingerprint": None}}
    assert packed_videos(tmp_path / "nothing") == {}
    # reopened: what the file holds; a change can drop a video (its windows and marker)
    w = WindowWriter(final, map_size=1 << 22)
    assert not w.pending and w.meta == meta and set(w.markers) == {"u", "v"}
    assert w.markers["u"] == {"fingerprint": "f", "windows": 1}
    w.put_video("v", [(window_key("v", 0, 0), blob)], {"summary": {"windows": 1, "split": "train"}})
    w.begin_change(fps=30, sr=16000, window=WIN, stride=2, extra=None, drop=["u"])
    with w.env.begin() as txn:
        assert txn.get(window_key("u", 2, 4)) is None and txn.get(DONE_PREFIX + b"u") is None
        assert txn.get(window_key("v", 0, 0)) is not None
    w.finish({})
    w.close()
    assert packed_videos(final) == {"v": {"windows": 1, "split": "train"}}
    assert WindowReader(final, None).keys == ["w/v/0000/0000000"]


def test_discard_removes_an_unpublished_file_even_if_half_gone(tmp_path):
    w = WindowWriter(tmp_path / "a.lmdb", map_size=1 << 20)
    w.discard()
    assert not (tmp_path / ".a.lmdb.tmp").exists() and not (tmp_path / "a.lmdb").exists()
    w = WindowWriter(tmp_path / "b.lmdb", map_size=1 << 20)
    shutil.rmtree(w.tmp)
    w.discard()                                          # nothing left to remove: no error
    assert not (tmp_path / ".b.lmdb.tmp").exists()


def test_delete_prefix_counts_what_it_deletes(tmp_path):
    env = open_env(tmp_path / "d", write=True, map_size=1 << 20)
    with env.begin(write=True) as txn:
        for k in (b"w/a/1", b"w/a/2", b"w/a/3", b"w/ab/1", b"w/b/1", b"__done__/a", b"__done__/ab"):
            txn.put(k, b"1")
        assert W._delete_prefix(txn, b"w/a/") == 3
        assert W._delete_prefix(txn, b"w/zz/") == 0
        W._delete_video(txn, "ab")
        assert [bytes(k) for k, _ in txn.cursor()] == [b"__done__/a", b"w/b/1"]
        assert W._delete_prefix(txn, b"w/") == 1                # the last keys of the file
        assert [bytes(k) for k, _ in txn.cursor()] == [b"__done__/a"]
    env.close()


# ---- gaps left by the first triage (docs/mutation/windows.md) -------------------------------------

def test_a_reader_without_the_lock_table_says_so_in_full_and_opens_without_one(tmp_path, monkeypatch):
    path = tmp_path / "ro"
    build(path)
    monkeypatch.setattr(W, "_lock_table_writable", lambda p: False)
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        env = open_env(path)
    assert [(w.category, str(w.message)) for w in got] == [
        (RuntimeWarning, f"{path}: cannot write its LMDB lock table (lock.mdb; a read-only copy?), reading without "
                         "it: safe only while nothing writes this copy")]
    # stacklevel 3 names open_env's caller (this file), not a line of windows.py (under mutmut: its
    # trampoline, which calls the functions, so the test says only "not windows.py")
    assert got[0].filename != W.__file__
    f = env.flags()
    assert (f["lock"], f["readonly"], f["readahead"], f["meminit"], f["subdir"]) == (False, True, True, False, True)
    assert env.locked is False and env.max_readers() == 512
    with env.begin() as txn:
        assert txn.get(GENERATION_KEY) == b"1"


def test_a_lock_table_refused_despite_access_falls_back_to_none(tmp_path, monkeypatch):
    """access() allows lock.mdb but opening it fails with EACCES (root squash on NFS): root cannot make
    that happen here, so py-lmdb's open raises its ReadonlyError for lock=True as the kernel would."""
    path = tmp_path / "squash"
    build(path)
    real = lmdb.open

    def squashed(p, **kw):
        if kw.get("lock") is not False:                    # py-lmdb: lock=None (or left out) means True
            raise lmdb.ReadonlyError("mdb_env_open: Permission denied")
        return real(p, **kw)
    monkeypatch.setattr(lmdb, "open", squashed)
    with pytest.warns(RuntimeWarning, match="cannot write its LMDB lock table"):
        env = open_env(path)
    assert env.locked is False and env.flags()["lock"] is False
    with env.begin() as txn:
        assert txn.get(GENERATION_KEY) == b"1"


def test_the_first_opener_sizes_the_lock_table_for_512_readers(tmp_path):
    w = open_env(tmp_path / "new", write=True, map_size=1 << 20)   # a new file: the writer makes lock.mdb
    assert w.max_readers() == 512
    with w.begin(write=True) as txn:
        txn.put(b"k", b"v")
    w.close()
    (tmp_path / "new" / "lock.mdb").unlink()                # copied without it: the reader makes lock.mdb
    env = open_env(tmp_path / "new")
    assert env.locked and env.max_readers() == 512


def test_nested_reads_count_per_thread_and_per_process(tmp_path):
    build(tmp_path / "w")
    env = W._ReadEnv(tmp_path / "w")
    with env.begin(buffers=True) as a:                     # buffers reach py-lmdb: views, not copies
        assert isinstance(a.get(GENERATION_KEY), memoryview)
        assert (env._active, env._mine.n) == (1, 1)
        b = env.begin()
        assert isinstance(b.get(GENERATION_KEY), bytes)
        assert (env._active, env._mine.n) == (2, 2)
        b.abort()
        assert (env._active, env._mine.n) == (1, 1)
    assert (env._active, env._mine.n) == (0, 0)
    # a read begun here and ended in another thread: that thread's count does not go below zero
    t = env.begin()
    seen = []

    def end():
        t.abort()
        seen.append((env._active, env._mine.n))
    th = threading.Thread(target=end)
    th.start()
    th.join(10)
    assert seen == [(0, 0)]
    env.close()


def test_reads_ended_before_the_map_grew_do_not_count(tmp_path):
    path = tmp_path / "w"
    build(path)
    env = W._ReadEnv(path)
    for _ in range(2):
        env.begin().abort()
    grow(path)
    with env.begin() as txn:                               # no read of this thread is open: adopts the map
        assert len(txn.get(b"zz/big")) == 20 << 20
    assert env.info()["map_size"] == 64 << 20              # the writer's map (set_mapsize(0)), not the used size
    env.close()


def test_a_thread_that_holds_a_read_is_refused_not_blocked(tmp_path):
    path = tmp_path / "w"
    build(path)
    env = W._ReadEnv(path)
    out, go = [], threading.Event()

    def hold_and_begin():
        t = env.begin()
        go.wait(30)
        try:
            env.begin()
            out.append("began")
        except RuntimeError as e:
            out.append(str(e))
            out.append(env._active)                        # the refused begin left no count behind
        finally:
            t.abort()
    th = threading.Thread(target=hold_and_begin, daemon=True)   # daemon: a mutant that waits forever
    th.start()
    grow(path)
    go.set()
    th.join(10)
    assert out == [f"{path}: the LMDB grew while this thread holds a read transaction; end it before "
                   "beginning another", 1]


def test_a_dropped_read_transaction_is_ended(tmp_path):
    import gc
    build(tmp_path / "w")
    env = W._ReadEnv(tmp_path / "w")
    t = env.begin()
    assert env._active == 1
    del t
    gc.collect()
    assert env._active == 0 and env._mine.n == 0
    env.close()


def test_the_fork_hook_keeps_the_map_size(tmp_path):
    build(tmp_path / "w")                                  # map 1 << 22 (4 MiB), a few KiB used
    env = open_env(tmp_path / "w")
    with env.begin() as txn:
        txn.get(META_KEY)
    W._before_fork()
    W._after_fork()
    assert env.info()["map_size"] == 1 << 22               # set_mapsize(0): the file's map, not its used size
    assert WindowReader(tmp_path / "w")[0].key == "w/a/0000/0000000"


def test_a_file_from_before_generations_reads(tmp_path):
    path = tmp_path / "g0"
    src = build(path)
    with env_writer(path) as txn:
        meta = json.loads(txn.get(META_KEY))
        del meta["generation"]
        txn.put(META_KEY, json.dumps(meta).encode())
        txn.delete(GENERATION_KEY)
    r = WindowReader(path)
    assert r.generation == 0 and r._generation_raw is None
    w = r[0]
    np.testing.assert_array_equal(w.coeffs, src[w.key]["coeffs"])
    assert [x.key for x in r.read([2, 1])] == [r.keys[2], r.keys[1]]


def test_a_reader_never_read_pickles(tmp_path):
    build(tmp_path / "w")
    r = WindowReader(tmp_path / "w")
    assert "_env" not in r.__dict__
    back = pickle.loads(pickle.dumps(r))
    assert back.keys == r.keys and back[1].key == "w/a/0000/0000002"


def test_a_reader_keeps_its_environment(tmp_path):
    build(tmp_path / "w")
    r = WindowReader(tmp_path / "w")
    env = r.env()
    key = (os.getpid(), str((tmp_path / "w").resolve()))
    assert W._ENVS.pop(key) is env                         # the path is not looked up again
    try:
        assert r.env() is env and r[0].key == "w/a/0000/0000000"
    finally:
        W._ENVS[key] = env


def test_an_index_without_every_split_and_an_empty_split(tmp_path):
    path = tmp_path / "w"
    build(path, spec=[("a", 0, 0, 3, False, "train")])
    with env_writer(path) as txn:
        txn.put(INDEX_KEY, json.dumps({"train": [["w/a/0000/0000000", 3]]}).encode())
    r = WindowReader(path, None)
    assert r.keys == ["w/a/0000/0000000"] and r.singers.tolist() == [3]
    e = WindowReader(path, "val")
    assert len(e) == 0 and e.singers.dtype == np.int64 and e.n_host_samples() == 0


def test_rebuild_index_writes_a_sorted_meta(tmp_path):
    build(tmp_path / "w")                                  # a fresh meta: the index fields are new keys
    stored = raw(tmp_path / "w", META_KEY)
    meta = json.loads(stored)
    assert {"singer_counts", "windows", "shape_windows", "has_shape"} <= set(meta)
    assert stored == json.dumps(meta, sort_keys=True).encode()
