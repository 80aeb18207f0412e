"""The trainer's batch reads (pachorus.data): the same values as one WindowReader.host_sample at a
time, float16 kept until the device or converted in the copy, with and without DataLoader workers."""
import numpy as np
import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader

from chorushead.core.windows import WindowReader
from pachorus.data import HostWindowDataset, to_device
from pachorus.synth import SynthConfig, write_synth_lmdb


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """Duets and trios in one split: a batch mixes float16 (one partner) and float32 (summed) partners."""
    p = tmp_path_factory.mktemp("batches") / "mix.lmdb"
    write_synth_lmdb(p, SynthConfig(videos=4, seconds=3, window=25, stride=25, fps=25, n_singers=[2, 3], seed=2))
    return p


def _reference(path, split: str, js: list[int]) -> dict[str, np.ndarray]:
    r = WindowReader(path, split)
    ss = [r.host_sample(j) for j in js]
    return {k: np.stack([s[k] for s in ss]) for k in ("host", "partner", "bgm", "coeffs", "pose0")}


@pytest.mark.parametrize("half", [False, True])
@pytest.mark.parametrize("workers", [0, 2])
def test_batches_equal_host_samples(mixed, half, workers):
    ds = HostWindowDataset(mixed, "train", half_audio=half)
    assert set(ds.reader.singers.tolist()) == {2, 3}
    order = list(np.random.default_rng(0).permutation(len(ds)))
    loader = DataLoader(ds, sampler=BatchSampler(order, 5, drop_last=False), batch_size=None, num_workers=workers)
    seen = 0
    for js, b in zip(BatchSampler(order, 5, drop_last=False), loader):
        if half:
            assert b["host"].dtype == b["bgm"].dtype == torch.float16
        duets_only = bool((ds.reader.singers[np.searchsorted(ds._ends, js, side="right")] == 2).all())
        assert b["partner"].dtype == (torch.float16 if half and duets_only else torch.float32)
        d = to_device(b, torch.device("cpu"))
        ref = _reference(mixed, "train", js)
        for k, v in ref.items():
            assert d[k].dtype == torch.float32
            np.testing.assert_array_equal(d[k].numpy(), v, err_msg=k)   # exact: f16 -> f32 loses nothing
        assert [int(h) for h in d["singer"]] == [ds[j]["singer"] for j in js]
        seen += len(js)
    assert seen == len(ds)


def test_single_sample_and_range(mixed):
    ds = HostWindowDataset(mixed, "train")
    s = ds[len(ds) - 1]
    assert isinstance(s["singer"], int) and s["host"].dtype == torch.float32 and s["host"].ndim == 1
    with pytest.raises(IndexError):
        ds[len(ds)]
    with pytest.raises(IndexError):
        ds[[0, -1]]


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and a["key"] == b["key"]
    for k in a:
        if torch.is_tensor(a[k]):
            assert a[k].dtype == b[k].dtype, k
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


@pytest.mark.parametrize("workers,read_ahead", [(0, 2), (2, 0)])
def test_train_loader_same_batches_any_way_read(mixed, workers, read_ahead):
    """The trainer's loader gives the same batches in the same order with a reader thread or worker
    processes as read one by one in the caller's thread, also from a mid-epoch resume (skip)."""
    from torch.utils.data import DistributedSampler

    from pachorus.train import TrainConfig, train_loader
    ds = HostWindowDataset(mixed, "train", half_audio=True)
    cpu = torch.device("cpu")
    for epoch, skip in ((0, 0), (1, 2)):
        cfg = TrainConfig(data=str(mixed), out="-", batch_size=4, num_workers=0, seed=3)
        sampler = DistributedSampler(ds, num_replicas=1, rank=0, shuffle=True, seed=cfg.seed, drop_last=True)
        ref = list(train_loader(ds, sampler, cfg, epoch, skip, cpu, read_ahead=0))
        assert len(ref) == len(ds) // 4 - skip
        cfg.num_workers = workers
        got = list(train_loader(ds, sampler, cfg, epoch, skip, cpu, read_ahead=read_ahead))
        assert len(got) == len(ref)
        for a, b in zip(ref, got):
            _same(a, b)


def test_read_ahead_stops_early_and_raises(mixed):
    """Breaking out of the loop ends the reader thread; a read error reaches the consumer."""
    import threading

    from pachorus.data import BatchLoader
    ds = HostWindowDataset(mixed, "train")
    batches = BatchSampler(list(range(len(ds))), 2, drop_last=True)
    for _ in BatchLoader(ds, batches, prefetch=1):
        break
    assert not [t for t in threading.enumerate() if t.name == "pachorus-batches"]
    with pytest.raises(IndexError):
        list(BatchLoader(ds, [[0, 1], [len(ds)]], prefetch=2))
    assert not [t for t in threading.enumerate() if t.name == "pachorus-batches"]


def test_buffer_pool_reuses_only_released_buffers(mixed):
    """A pooled batch buffer comes back only once no tensor of its batch is alive; batches kept by the
    consumer (list(...) above) are never overwritten."""
    from pachorus.data import BatchLoader, BufferPool
    pool = BufferPool(2)
    a = pool.get(1024)
    view = torch.empty(0, dtype=torch.float16).set_(a, 0, (512,))
    b = pool.get(1024)
    assert b.data_ptr() != a.data_ptr()             # a is still viewed
    del view
    assert pool.get(1024).data_ptr() == a.data_ptr()
    ds = HostWindowDataset(mixed, "train")
    batches = BatchSampler(list(range(len(ds))), 4, drop_last=True)
    kept = list(BatchLoader(ds, batches, prefetch=0))
    ptrs = {bt["host"].untyped_storage().data_ptr() for bt in kept}
    assert len(ptrs) == len(kept)
    seen = set()
    for bt in BatchLoader(ds, batches, prefetch=0):   # each batch dropped before the next: reuse
        seen.add(bt["host"].untyped_storage().data_ptr())
    assert len(seen) < len(kept)
