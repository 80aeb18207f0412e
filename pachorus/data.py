"""Torch dataset over packed windows: one sample per (window, singer-as-host), read a batch at a time,
and :class:`BatchLoader`, the trainer's input pipeline over it."""
from __future__ import annotations

import queue
import threading
import warnings
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from chorushead.core.windows import N_SHAPE, DatasetChanged, WindowReader


class HostWindowDataset(Dataset):
    """Sample j of a split = one (window, singer-as-host) pair, every singer of every window in turn
    (``WindowReader.host_sample``; windows may have different singer counts).

    Returns float32 tensors: ``host``/``partner``/``bgm`` (N,) audio at the LMDB's sample rate,
    ``coeffs`` (W, 56), ``pose0`` (3,), the host's identity ``shape`` (100,) with ``has_shape`` (bool:
    False = no shape code in the window, ``shape`` is zeros); plus ``key`` (str) and ``singer`` (int).
    The partner is the sum of all other singers (paper Eq. 3), derived by the reader.

    ``half_audio=True`` (the trainer on an accelerator) keeps the audio float16 as stored, so the batch
    is half the bytes to copy, share and upload; :func:`to_device` makes it float32 on the device, on
    the whole batch (exact: every float16 is a float32). Only a partner summed from several singers is
    float32. ``ds[list_of_indices]`` reads a whole batch (:meth:`batch`); :class:`BatchLoader` is how
    the trainer iterates batches.
    """

    def __init__(self, path: str | Path, split: str = "train", half_audio: bool = False):
        self.reader = WindowReader(path, split)
        self.meta = self.reader.meta
        self.half_audio = half_audio
        self._ends = np.cumsum(self.reader.singers)   # host sample j is in window searchsorted(ends, j)
        self._starts = self._ends - self.reader.singers
        self._layouts: dict = {}                      # array layouts by header text (array_views)

    def __len__(self) -> int:
        return self.reader.n_host_samples()

    def __getitem__(self, j: int | list[int]) -> dict:
        """One sample (``j`` an int), or a whole batch (``j`` a list, as a ``BatchSampler`` with
        ``batch_size=None`` yields it): tensors with a leading batch axis, ``key``/``singer`` lists."""
        if isinstance(j, (list, tuple)):
            return self.batch(list(j))
        s = {k: v[0] for k, v in self.batch([j]).items()}
        s["singer"] = int(s["singer"])
        return s

    def batch(self, js: list[int], pin_memory: bool = False, pool: BufferPool | None = None) -> dict:
        """Read every window of the batch in one LMDB transaction (a window with several of its hosts
        in the batch once) and copy each array straight from the page into the batch tensors: float16
        audio with a plain copy, float16 → float32 (``half_audio`` off) in that same copy by torch (at
        memcpy speed; numpy's astype is ~25× slower). The batch tensors are views of one buffer: in a
        DataLoader worker one shared-memory block (one handle to send), with ``pin_memory`` page-locked
        (an accelerator uploads it asynchronously, no extra pinning copy), else from ``pool`` when given
        (a buffer no earlier batch's tensors use any more: no fresh pages to fault in per batch). The same
        transaction checks the LMDB's generation against the one the index came from: a repack during
        the run raises :class:`DatasetChanged` (also for a window the repack deleted), never a mixed batch."""
        n = len(self)
        js = [int(j) for j in js]
        if not js or min(js) < 0 or max(js) >= n:
            raise IndexError(f"host samples {js} out of range ({n})")
        wins = np.searchsorted(self._ends, js, side="right")
        hosts = (np.asarray(js) - self._starts[wins]).tolist()
        wins = wins.tolist()
        multi = bool((self.reader.singers[wins] > 2).any())   # a partner summed from 2+ singers: float32
        audio = torch.float16 if self.half_audio else torch.float32
        convert = not self.half_audio   # float16 pages into float32 tensors: torch's copy converts
        m = len(js)
        with self.reader.env().begin(buffers=True) as txn, warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)   # torch views of read-only pages: only read
            self.reader.check(txn)   # the index's generation, in the batch's own snapshot: never a mix
            seen: dict[int, dict] = {}
            out = t = None
            for r, (i, h) in enumerate(zip(wins, hosts)):
                a = seen.get(i)
                if a is None:   # views of the page, valid inside txn
                    a = seen[i] = self.reader.views(txn, i, self._layouts)
                if out is None:
                    n_audio, n_coef = a["bgm"].shape[0], a["coeffs"].shape[1:]
                    t = _batch_tensors({"host": ((m, n_audio), audio), "bgm": ((m, n_audio), audio),
                                        "partner": ((m, n_audio), torch.float32 if multi else audio),
                                        "coeffs": ((m, *n_coef), torch.float32), "pose0": ((m, 3), torch.float32),
                                        "shape": ((m, N_SHAPE), torch.float32), "has_shape": ((m,), torch.bool),
                                        "singer": ((m,), torch.int64)}, pin_memory, pool)
                    out = {k: v.numpy() for k, v in t.items()}   # numpy views: cheap same-dtype copies
                voc = a["vocals"]
                s = voc.shape[0]
                partner = voc[1 - h] if s == 2 else np.sum(voc[[k for k in range(s) if k != h]], axis=0,
                                                             dtype=np.float32)
                for name, v in (("host", voc[h]), ("partner", partner), ("bgm", a["bgm"])):
                    if convert and v.dtype != np.float32:
                        t[name][r].copy_(torch.from_numpy(v))
                    else:
                        out[name][r] = v
                out["coeffs"][r] = a["coeffs"][h]
                out["pose0"][r] = a["pose0"][h]
                known = "shape" in a
                out["shape"][r] = a["shape"][h] if known else 0.0   # zeros: FLAME's mean head
                out["has_shape"][r] = known
                out["singer"][r] = h
        t["key"] = [self.reader.keys[i] for i in wins]
        return t


class BufferPool:
    """Batch buffers of one loader pass, each reused once no tensor views it any more (its storage's
    use count is back to the pool's own reference), so a batch does not fault in fresh pages: ~15% less
    CPU per sample measured on the 2-core machine (A/B of the loader with and without the pool). Holds
    at most ``cap`` buffers; one still in use is never handed out again. The count is read through a
    private torch binding; a torch without it gets a fresh buffer per batch (no reuse, still correct).
    In-process only: a worker's batches are used in another process (whose references the count
    cannot see), and a pinned buffer may still be uploading (CUDA's host allocator caches those
    itself)."""

    def __init__(self, cap: int):
        self.cap, self._bufs, self._lock = cap, [], threading.Lock()

    def get(self, nbytes: int) -> torch.UntypedStorage:
        if _STORAGE_USE_COUNT is None:
            return torch.empty(nbytes, dtype=torch.uint8).untyped_storage()
        with self._lock:
            free = [b for b in self._bufs if _use_count(b) == 1]
            for b in free:
                if b.nbytes() == nbytes:
                    return b
            if free and len(self._bufs) >= self.cap:   # free but the wrong size (a last, shorter batch)
                self._bufs.remove(free[0])
            b = torch.empty(nbytes, dtype=torch.uint8).untyped_storage()
            if len(self._bufs) < self.cap:
                self._bufs.append(b)
            return b


_STORAGE_USE_COUNT = getattr(torch._C, "_storage_Use_Count", None)


def _use_count(storage: torch.UntypedStorage) -> int:
    return _STORAGE_USE_COUNT(storage._cdata)


def _batch_tensors(spec: dict[str, tuple[tuple, torch.dtype]], pin_memory: bool,
                   pool: BufferPool | None = None) -> dict[str, torch.Tensor]:
    """Empty batch tensors, all views of one buffer (64-byte aligned). In a DataLoader worker the
    buffer is shared memory from the start, so sending the batch to the main process copies nothing
    and passes one handle; with ``pin_memory`` it is page-locked; else it comes from ``pool``."""
    offsets, total = {}, 0
    for name, (shape, dtype) in spec.items():
        offsets[name] = total
        total += -(-int(np.prod(shape)) * dtype.itemsize // 64) * 64
    if get_worker_info() is not None:
        storage = torch.UntypedStorage._new_shared(total)
    elif pool is not None and not pin_memory:
        storage = pool.get(total)
    else:
        storage = torch.empty(total, dtype=torch.uint8, pin_memory=pin_memory).untyped_storage()
    return {name: torch.empty(0, dtype=dtype).set_(storage, offsets[name] // dtype.itemsize, shape)
            for name, (shape, dtype) in spec.items()}


def to_device(batch: dict, device: torch.device) -> dict:
    """Move a batch to ``device``; float16 audio becomes float32 there (one op per batch tensor)."""
    out = {}
    for k, v in batch.items():
        if torch.is_tensor(v):
            v = v.to(device, non_blocking=True)
            v = v.float() if v.dtype == torch.float16 else v
        out[k] = v
    return out


class BatchLoader:
    """The trainer's input pipeline: ``ds.batch(js)`` for every ``js`` of ``batches`` (a batch sampler
    over ``ds``), in that order. The order is the sampler's alone, so resume and determinism do not
    depend on how batches are read.

    ``num_workers=0``: in this process, with one reader thread ``prefetch`` batches ahead (``prefetch=0``:
    no thread, each batch read when asked for). The thread spends most of its time in LMDB reads and
    torch/numpy copies, which release the GIL, so reading overlaps a step that leaves the host idle (an
    accelerator's), and a batch crosses no process boundary. ``num_workers>0``: a torch ``DataLoader``
    with that many worker processes, each building whole batches (``batch_size=None``) in shared
    memory; the batch order is the same. Measured on 2 cores (benchmarks/bench_lmdb.py): workers are the
    slowest there (a fresh shared-memory block per batch costs more than reading the batch: the kernel
    allocates tmpfs pages slowly), and without a step to overlap the thread costs more than it gains.
    ``pin_memory`` (an accelerator): batches in page-locked memory. ``generator`` seeds the workers'
    base seed (the datasets draw no random numbers; it keeps creating a loader off the global RNG).
    """

    def __init__(self, ds: HostWindowDataset, batches: Iterable[list[int]], num_workers: int = 0,
                 pin_memory: bool = False, generator: torch.Generator | None = None, prefetch: int = 2):
        self.ds, self.batches, self.num_workers = ds, batches, num_workers
        self.pin_memory, self.generator, self.prefetch = pin_memory, generator, prefetch

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[dict]:
        if self.num_workers > 0:
            return _plain_errors(iter(DataLoader(self.ds, sampler=self.batches, batch_size=None,
                                                 num_workers=self.num_workers, pin_memory=self.pin_memory,
                                                 generator=self.generator)))
        pool = BufferPool(max(self.prefetch, 0) + 3)
        if self.prefetch <= 0:
            return (self.ds.batch(js, self.pin_memory, pool) for js in self.batches)
        return self._read_ahead(pool)

    def _read_ahead(self, pool: BufferPool | None) -> Iterator[dict]:
        order = [list(js) for js in self.batches]   # the sampler runs here, in the caller's thread
        q: queue.Queue = queue.Queue(self.prefetch)
        stop = threading.Event()

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.05)
                    return True
                except queue.Full:
                    pass
            return False

        def read() -> None:
            try:
                for js in order:
                    if not put(self.ds.batch(js, self.pin_memory, pool)):
                        return
                put(_END)
            except BaseException as e:   # raised again in the consumer, with its traceback
                put(_Failed(e))

        thread = threading.Thread(target=read, name="pachorus-batches", daemon=True)
        thread.start()
        try:
            while True:
                item = q.get()
                if item is _END:
                    return
                if isinstance(item, _Failed):
                    raise item.error
                yield item
        finally:   # the consumer stopped early (max_steps, an error) or finished: end the thread
            stop.set()
            thread.join()


def _plain_errors(batches: Iterator[dict]) -> Iterator[dict]:
    """A worker's :class:`DatasetChanged` arrives with torch's worker traceback in its text: keep its own
    one-line message (what ``pachorus`` prints)."""
    try:
        yield from batches
    except DatasetChanged as e:
        raise DatasetChanged(str(e).rsplit("DatasetChanged: ", 1)[-1].strip()) from None


_END = object()


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error
