"""pachorus.data: the loader's thread protocol, device moves and error text, written to kill the
mutants that survived ``scripts/mutation.sh data`` (see docs/mutation-survivors.md). The reader thread
is driven by a fake dataset (its ``batch`` records how it was called), and every loader runs under a
watchdog, so a loader that hangs fails the test instead of stalling it."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from chorushead.core.windows import DatasetChanged, WindowReader
from pachorus.data import BatchLoader, BufferPool, HostWindowDataset, _plain_errors, to_device
from pachorus.synth import SynthConfig, write_synth_lmdb


class FakeDs:
    """Stands in for HostWindowDataset: batch(js) returns {'js': js} and records each call."""

    def __init__(self, fail_at=None):
        self.calls, self.fail_at = [], fail_at

    def batch(self, js, pin_memory=False, pool=None):
        t = threading.current_thread()
        self.calls.append({"js": list(js), "pin": pin_memory, "pool": pool, "thread": t.name, "daemon": t.daemon})
        if self.fail_at is not None and js == self.fail_at:
            raise KeyError("window gone")
        return {"js": list(js)}

    def __getitem__(self, js):        # what a DataLoader worker calls
        return {"js": list(js), "via": "worker"}


def watchdog(fn, seconds=20.0):
    """fn() in a daemon thread: its result, or a test failure when it does not end in time."""
    box = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as e:   # noqa: BLE001
            box["error"] = e
    th = threading.Thread(target=run, daemon=True)
    th.start()
    th.join(seconds)
    assert not th.is_alive(), "the loader hung"
    if "error" in box:
        raise box["error"]
    return box["value"]


BATCHES = [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [10, 11]]


@pytest.mark.parametrize("prefetch", [1, 2, 3])
def test_read_ahead_gives_every_batch_in_order(prefetch):
    ds = FakeDs()
    got = watchdog(lambda: [b["js"] for b in BatchLoader(ds, BATCHES, pin_memory=True, prefetch=prefetch)])
    assert got == BATCHES
    assert [c["js"] for c in ds.calls] == BATCHES
    pools = {id(c["pool"]) for c in ds.calls}
    assert len(pools) == 1 and isinstance(ds.calls[0]["pool"], BufferPool)    # one pool for the pass
    assert ds.calls[0]["pool"].cap == prefetch + 3
    assert all(c["pin"] is True for c in ds.calls)
    assert all(c["thread"] == "pachorus-batches" and c["daemon"] is True for c in ds.calls)


def test_without_read_ahead_batches_are_read_in_the_callers_thread():
    ds = FakeDs()
    got = watchdog(lambda: [b["js"] for b in BatchLoader(ds, BATCHES, prefetch=0)])
    assert got == BATCHES and {c["thread"] for c in ds.calls} != {"pachorus-batches"}
    assert ds.calls[0]["pool"].cap == 3 and ds.calls[0]["pin"] is False
    ds = FakeDs()
    assert watchdog(lambda: [b["js"] for b in BatchLoader(ds, BATCHES, prefetch=-1)]) == BATCHES
    assert ds.calls[0]["pool"].cap == 3                     # max(prefetch, 0) + 3


def test_read_ahead_stops_soon_after_the_consumer_stops():
    ds = FakeDs()

    def first_then_stop():
        it = iter(BatchLoader(ds, BATCHES, prefetch=1))
        b = next(it)
        time.sleep(0.3)            # the reader has filled the queue and waits to put the next batch
        it.close()
        return b["js"]
    assert watchdog(first_then_stop) == [0, 1]
    assert 2 <= len(ds.calls) <= 3          # it stopped: the rest of the epoch was never read
    assert not [t for t in threading.enumerate() if t.name == "pachorus-batches"]


def test_read_ahead_raises_the_readers_error():
    ds = FakeDs(fail_at=[4, 5])

    def read():
        got = []
        with pytest.raises(KeyError, match="window gone"):
            for b in BatchLoader(ds, BATCHES, prefetch=2):
                got.append(b["js"])
        return got
    assert watchdog(read) == [[0, 1], [2, 3]]


def test_len_and_defaults():
    bl = BatchLoader(FakeDs(), BATCHES)
    assert len(bl) == 6 and bl.num_workers == 0 and bl.prefetch == 2 and bl.pin_memory is False


def test_one_worker_is_a_dataloader():
    ds = FakeDs()
    got = watchdog(lambda: list(BatchLoader(ds, BATCHES[:2], num_workers=1)), 60)
    assert got == [{"js": [0, 1], "via": "worker"}, {"js": [2, 3], "via": "worker"}] and ds.calls == []


def test_buffer_pool_without_the_use_count_binding(monkeypatch):
    import pachorus.data as D
    monkeypatch.setattr(D, "_STORAGE_USE_COUNT", None)
    pool = BufferPool(2)
    a = pool.get(100)
    assert a.nbytes() == 100 and pool._bufs == [] and pool.get(100).data_ptr() != a.data_ptr()


def test_to_device_moves_tensors_and_widens_float16_only():
    b = {"host": torch.tensor([0.5, -1.0], dtype=torch.float16), "coeffs": torch.ones(2, 3),
         "singer": torch.tensor([1, 0]), "has_shape": torch.tensor([True, False]), "key": ["a", "b"]}
    meta = to_device(b, torch.device("meta"))
    assert all(meta[k].device.type == "meta" for k in ("host", "coeffs", "singer", "has_shape"))
    cpu = to_device(b, torch.device("cpu"))
    assert cpu["host"].dtype == torch.float32 and cpu["host"].tolist() == [0.5, -1.0]
    assert cpu["singer"].dtype == torch.int64 and cpu["has_shape"].dtype == torch.bool
    assert cpu["coeffs"].dtype == torch.float32 and cpu["key"] == ["a", "b"]


def _raising(message):
    yield {"n": 1}
    raise DatasetChanged(message)


@pytest.mark.parametrize("message,want", [
    ("Caught DatasetChanged in worker 0.\nTraceback...\nDatasetChanged: x.lmdb was repacked ", "x.lmdb was repacked"),
    ("w0: DatasetChanged: a DatasetChanged: b", "b"),          # the last one: the message itself
    ("plain message", "plain message"),                          # no worker text: kept whole
])
def test_plain_errors_keep_the_datasets_own_line(message, want):
    it = _plain_errors(_raising(message))
    assert next(it) == {"n": 1}
    with pytest.raises(DatasetChanged) as e:
        next(it)
    assert str(e.value) == want and e.value.__suppress_context__


# --- the real dataset ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    p = tmp_path_factory.mktemp("mutdata") / "trio.lmdb"
    write_synth_lmdb(p, SynthConfig(videos=2, seconds=2, window=20, stride=20, fps=20, n_singers=[2, 3], seed=4))
    return p


def test_items_and_batches_by_hand(trio):
    ds = HostWindowDataset(trio)                          # the train split by default
    r = WindowReader(trio, "train")
    assert len(ds) == int(r.singers.sum()) and ds.meta == r.meta and ds.half_audio is False
    js = list(range(len(ds)))
    b = ds[tuple(js)]                                     # a tuple reads a batch too
    assert b["key"] == [r.keys[w] for w in np.repeat(np.arange(len(r.singers)), r.singers)]
    assert b["singer"].tolist() == [h for s in r.singers for h in range(s)]
    for j in js:
        s, ref = ds[j], r.host_sample(j)
        assert type(s["singer"]) is int and s["singer"] == b["singer"][j]
        assert s["key"] == b["key"][j]
        for k in ("host", "partner", "bgm", "coeffs", "pose0", "shape"):
            np.testing.assert_array_equal(s[k].numpy(), ref[k], err_msg=k)
            assert s[k].dtype == torch.float32
        assert bool(s["has_shape"]) is ref["has_shape"]
    with pytest.raises(IndexError) as e:
        ds.batch([])
    assert str(e.value) == f"host samples [] out of range ({len(ds)})"
    with pytest.raises(IndexError, match=rf"host samples \[{len(ds)}\] out of range \({len(ds)}\)"):
        ds[len(ds)]
    with pytest.raises(IndexError):
        ds[-1]


def test_half_audio_batch_dtypes(trio):
    ds = HostWindowDataset(trio, "train", half_audio=True)
    duet = [j for j in range(len(ds)) if ds.reader.singers[np.searchsorted(ds._ends, j, side="right")] == 2]
    b = ds.batch(duet[:2])
    assert b["host"].dtype == b["partner"].dtype == b["bgm"].dtype == torch.float16
    assert b["coeffs"].dtype == b["pose0"].dtype == b["shape"].dtype == torch.float32
    assert b["has_shape"].dtype == torch.bool and b["singer"].dtype == torch.int64
    full = ds.batch(list(range(len(ds))))
    assert full["partner"].dtype == torch.float32 and full["host"].dtype == torch.float16


def test_batch_tensors_share_one_aligned_buffer(trio):
    ds = HostWindowDataset(trio, "train")
    b = ds.batch([0, 1, 2])
    base = b["host"].untyped_storage().data_ptr()
    names = ["host", "bgm", "partner", "coeffs", "pose0", "shape", "has_shape", "singer"]
    offsets = [b[k].data_ptr() - base for k in names]
    assert all(b[k].untyped_storage().data_ptr() == base for k in names)
    assert not b["host"].untyped_storage().is_shared()   # shared memory is for DataLoader workers only
    assert offsets[0] == 0 and offsets == sorted(offsets)
    want, total = [], 0
    for k in names:                                     # each tensor starts on a 64-byte boundary
        want.append(total)
        total += -(-b[k].numel() * b[k].element_size() // 64) * 64
    assert offsets == want and b["host"].untyped_storage().nbytes() == total
    pool = BufferPool(2)
    p = ds.batch([0, 1, 2], pool=pool)
    assert pool._bufs and p["host"].untyped_storage().data_ptr() == pool._bufs[0].data_ptr()


def test_buffer_pool_holds_at_most_cap_buffers():
    pool = BufferPool(2)
    view = lambda st: torch.empty(0, dtype=torch.uint8).set_(st, 0, (st.nbytes(),))  # noqa: E731 (holds it)
    a = view(pool.get(128))
    b = view(pool.get(128))
    assert a.numel() == b.numel() == 128 and len(pool._bufs) == 2 and a.data_ptr() != b.data_ptr()
    c = view(pool.get(128))                              # both in use: a third, not pooled
    assert c.data_ptr() not in (a.data_ptr(), b.data_ptr()) and len(pool._bufs) == 2
    del a
    d = view(pool.get(64))                               # a is free but the wrong size: replaced
    assert d.numel() == 64 and len(pool._bufs) == 2
    assert sorted(x.nbytes() for x in pool._bufs) == [64, 128]
    assert pool.get(64).data_ptr() != d.data_ptr()       # d still in use


# --- the last real survivors: another split, identity codes, the reader thread's daemon flag ------------

@pytest.fixture(scope="module")
def with_shapes(tmp_path_factory):
    """A synthetic LMDB whose windows carry identity codes, except every third window (none known)."""
    from chorushead.core.windows import N_SHAPE, decode_arrays, encode_arrays, open_env
    p = tmp_path_factory.mktemp("mutshape") / "shape.lmdb"
    write_synth_lmdb(p, SynthConfig(videos=6, seconds=2, window=20, stride=20, fps=20, n_singers=[2, 3], seed=5))
    rng = np.random.default_rng(9)
    env = open_env(p, write=True)
    with env.begin(write=True) as txn:
        keys = [bytes(k) for k, _ in txn.cursor() if bytes(k).startswith(b"w/")]
        assert keys
        for n, k in enumerate(keys):
            if n % 3 == 2:
                continue
            arrays, header = decode_arrays(txn.get(k))
            s = arrays["vocals"].shape[0]
            arrays["shape"] = rng.normal(0, 1, (s, N_SHAPE)).astype(np.float32)
            txn.put(k, encode_arrays(arrays, header))
    env.close()
    return p


def test_identity_codes_reach_the_batch_per_host(with_shapes):
    for split in ("train", "val", "test"):
        r = WindowReader(with_shapes, split)
        if not len(r):
            continue
        ds = HostWindowDataset(with_shapes, split)
        assert ds.reader.split == split and ds.reader.keys == r.keys       # the split asked for, not train
        b = ds.batch(list(range(len(ds))))
        known = [r.host_sample(j)["has_shape"] for j in range(len(ds))]
        assert b["has_shape"].tolist() == known
        for j in range(len(ds)):
            ref = r.host_sample(j)
            np.testing.assert_array_equal(b["shape"][j].numpy(), ref["shape"], err_msg=f"{split} {j}")
    r = WindowReader(with_shapes, "train")
    ds = HostWindowDataset(with_shapes)
    b = ds.batch(list(range(len(ds))))
    flags = b["has_shape"].tolist()
    assert any(flags) and not all(flags)                                  # both kinds in one batch
    for j, w in enumerate(np.repeat(np.arange(len(r.singers)), r.singers)):
        win, h = r[int(w)], int(b["singer"][j])
        if win.shape is None:
            assert not flags[j] and not b["shape"][j].any()
        else:
            assert flags[j] and torch.equal(b["shape"][j], torch.from_numpy(win.shape[h]))
            assert h == 0 or not torch.equal(b["shape"][j], torch.from_numpy(win.shape[0]))


def test_another_split_is_read_when_asked(trio):
    for split in ("val", "test"):
        r = WindowReader(trio, split)
        ds = HostWindowDataset(trio, split)
        assert len(ds) == int(r.singers.sum())
        if len(ds):
            assert ds.batch([0])["key"] == [r.keys[0]]


def test_the_reader_thread_is_a_daemon_even_from_a_plain_thread():
    """A loader iterated in a non-daemon thread (the trainer's main thread) still reads in a daemon
    thread: a consumer that dies without closing the iterator never keeps the process alive."""
    ds = FakeDs()
    box = {}

    def consume():
        box["got"] = [b["js"] for b in BatchLoader(ds, BATCHES[:3], prefetch=2)]
    th = threading.Thread(target=consume, daemon=False)
    th.start()
    th.join(20)
    assert not th.is_alive() and box["got"] == BATCHES[:3]
    assert ds.calls and all(c["daemon"] is True and c["thread"] == "pachorus-batches" for c in ds.calls)
