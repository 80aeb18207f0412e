"""Torch dataset over packed windows: one sample per (window, singer-as-host)."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from chorushead.core.windows import N_SHAPE, WindowReader, decode_arrays, open_env


class HostWindowDataset(Dataset):
    """Sample j of a split = one (window, singer-as-host) pair, every singer of every window in turn
    (``WindowReader.host_sample``; windows may have different singer counts).

    Returns float32 tensors: ``host``/``partner``/``bgm`` (N,) audio at the LMDB's sample rate,
    ``coeffs`` (W, 56), ``pose0`` (3,), the host's identity ``shape`` (100,) with ``has_shape`` (bool:
    False = no shape code in the window, ``shape`` is zeros); plus ``key`` (str) and ``singer`` (int).
    The partner is the sum of all other singers (paper Eq. 3), derived by the reader.

    ``half_audio=True`` (the trainer on an accelerator) keeps the audio float16 as stored, so workers copy
    and ship half the bytes; :func:`to_device` makes it float32 on the device, on the whole batch
    (exact: every float16 is a float32). Only a partner summed from several singers is float32.
    ``ds[list_of_indices]`` reads a whole batch (:meth:`batch`); the trainer's DataLoader takes a
    ``BatchSampler`` as its sampler with ``batch_size=None`` so each worker call builds one batch.
    """

    def __init__(self, path: str | Path, split: str = "train", half_audio: bool = False):
        self.reader = WindowReader(path, split)
        self.meta = self.reader.meta
        self.half_audio = half_audio
        self._ends = np.cumsum(self.reader.singers)   # host sample j is in window searchsorted(ends, j)

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

    def batch(self, js: list[int]) -> dict:
        """Read every window of the batch in one LMDB transaction and copy each array straight from
        the page into the batch tensors (float16 → float32 in that same copy when ``half_audio`` is
        off: torch converts at memcpy speed, numpy's astype ~25× slower). In a DataLoader worker the
        tensors live in shared memory from the start, so handing them over copies nothing."""
        n = len(self)
        if not js or not all(0 <= j < n for j in js):
            raise IndexError(f"host samples {js} out of range ({n})")
        wins = np.searchsorted(self._ends, js, side="right")
        multi = bool((self.reader.singers[wins] > 2).any())   # a partner summed from 2+ singers: float32
        audio = torch.float16 if self.half_audio else torch.float32
        out: dict = {}
        with open_env(self.reader.path).begin(buffers=True) as txn, warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)   # torch views of read-only pages: only read
            for r, (j, i) in enumerate(zip(js, wins)):
                key = self.reader.keys[i]
                blob = txn.get(key.encode())
                if blob is None:
                    raise KeyError(f"window {key} listed in the index but missing from {self.reader.path}")
                a, _ = decode_arrays(blob, copy=False)   # views of the page, valid inside this txn
                h = int(j - (self._ends[i - 1] if i else 0))
                if not out:
                    m = len(js)
                    out = {"host": _empty((m, *a["bgm"].shape), audio), "bgm": _empty((m, *a["bgm"].shape), audio),
                           "partner": _empty((m, *a["bgm"].shape), torch.float32 if multi else audio),
                           "coeffs": _empty((m, *a["coeffs"].shape[1:]), torch.float32),
                           "pose0": _empty((m, 3), torch.float32), "shape": _empty((m, N_SHAPE), torch.float32),
                           "has_shape": torch.zeros(m, dtype=torch.bool), "key": [], "singer": []}
                voc, s = a["vocals"], a["vocals"].shape[0]
                partner = voc[1 - h] if s == 2 else np.sum(voc[[k for k in range(s) if k != h]], axis=0,
                                                             dtype=np.float32)
                for name, v in (("host", voc[h]), ("partner", partner), ("bgm", a["bgm"]),
                                ("coeffs", a["coeffs"][h]), ("pose0", a["pose0"][h])):
                    out[name][r].copy_(torch.from_numpy(v))
                if "shape" in a:
                    out["shape"][r].copy_(torch.from_numpy(a["shape"][h]))
                    out["has_shape"][r] = True
                else:
                    out["shape"][r].zero_()   # FLAME's mean head
                out["key"].append(key)
                out["singer"].append(h)
        out["singer"] = torch.tensor(out["singer"])
        return out


def _empty(shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    """A batch tensor; in a DataLoader worker allocated in shared memory (as default_collate does),
    so sending it to the main process moves no bytes."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    numel = int(np.prod(shape))
    return torch.empty(0, dtype=dtype).new(torch.empty(0, dtype=dtype)._typed_storage()._new_shared(numel)).view(shape)


def to_device(batch: dict, device: torch.device) -> dict:
    """Move a batch to ``device``; float16 audio becomes float32 there (one op per batch tensor)."""
    out = {}
    for k, v in batch.items():
        if torch.is_tensor(v):
            v = v.to(device, non_blocking=True)
            v = v.float() if v.dtype == torch.float16 else v
        out[k] = v
    return out
