"""Torch dataset over packed windows: one sample per (window, singer-as-host)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from chorushead.core.windows import WindowReader


class HostWindowDataset(Dataset):
    """Sample j of a split = one (window, singer-as-host) pair, every singer of every window in turn
    (``WindowReader.host_sample``; windows may have different singer counts).

    Returns float32 tensors: ``host``/``partner``/``bgm`` (N,) audio at the LMDB's sample rate,
    ``coeffs`` (W, 56), ``pose0`` (3,), the host's identity ``shape`` (100,) with ``has_shape`` (bool:
    False = no shape code in the window, ``shape`` is zeros); plus ``key`` (str) and ``singer`` (int).
    The partner is the sum of all other singers (paper Eq. 3), derived by the reader.
    """

    def __init__(self, path: str | Path, split: str = "train"):
        self.reader = WindowReader(path, split)
        self.meta = self.reader.meta

    def __len__(self) -> int:
        return self.reader.n_host_samples()

    def __getitem__(self, j: int) -> dict:
        s = self.reader.host_sample(j)
        out = {k: torch.from_numpy(np.ascontiguousarray(s[k], dtype=np.float32))
               for k in ("host", "partner", "bgm", "coeffs", "pose0", "shape")}
        out["has_shape"] = bool(s["has_shape"])   # False: ``shape`` is zeros, FLAME's mean head
        out["key"], out["singer"] = s["key"], int(s["singer"])
        return out
