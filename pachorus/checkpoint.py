"""The one way pachorus saves and loads checkpoints (last.pt, best.pt, model.pt).

Loads use ``torch.load(weights_only=True)``: a checkpoint is data (tensors, dicts, lists, numbers,
strings), never code, so a downloaded ``model.pt`` cannot run anything when opened. Everything we
save is therefore kept to those plain types: configs as dicts, RNG states as tensors and int lists.
Saves go through a temp file + fsync + ``os.replace``, so a crash mid-write never leaves a torn file.
"""
from __future__ import annotations

import os
import pickle
import random
import re
from pathlib import Path

import numpy as np
import torch


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or not made of plain data."""


# Data facts of the training LMDB a checkpoint is bound to. Evaluating or resuming on an LMDB that
# differs in any of them would compare or train on different quantities, so it is refused.
DATA_KEYS = ("fps", "sr", "fit_backend", "coeff_groups")
ALL_GROUPS = ("exp", "jaw", "pose")


def data_info(meta: dict) -> dict:
    """The data facts the trainer records from an LMDB's meta (absent ``coeff_groups`` = all three)."""
    groups = meta.get("coeff_groups") or list(ALL_GROUPS)
    bad = [g for g in groups if g not in ALL_GROUPS]
    if bad:
        raise ValueError(f"LMDB meta lists unknown coefficient groups {bad}; known: {list(ALL_GROUPS)}")
    return {"fps": int(meta["fps"]), "sr": int(meta["sr"]), "window": int(meta["window"]),
            "fit_backend": meta.get("fit_backend"), "coeff_groups": [g for g in ALL_GROUPS if g in groups]}


def check_same_data(trained: dict, data: dict, ckpt: str | Path, lmdb: str | Path) -> None:
    """Refuse (one line) when an LMDB's data facts differ from those a checkpoint was trained on."""
    diff = [f"{k}: trained on {trained.get(k)!r}, this LMDB has {data.get(k)!r}"
            for k in DATA_KEYS if trained.get(k) != data.get(k)]
    if diff:
        raise ValueError(f"{ckpt} does not match {lmdb} ({'; '.join(diff)}); use an LMDB built the same way "
                         "or train a new model on this one")


def save_checkpoint(obj: dict, path: str | Path) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a checkpoint as plain data; refuse files that hold code objects (one-line error)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path} (a run folder holds model.pt, best.pt and last.pt)")
    try:
        ck = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL:?\s+([\w.]+)", str(e), re.IGNORECASE)   # torch names the first offender
        raise CheckpointError(f"{path} contains non-data objects ({found.group(1) if found else 'code'}); refusing "
                              "to load it: a pachorus checkpoint holds only tensors and plain types") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable torch checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else 'empty'})") from None
    if not isinstance(ck, dict) or "model" not in ck or "model_config" not in ck:
        raise CheckpointError(f"{path} is not a pachorus checkpoint (no 'model'/'model_config' entries)")
    return ck


def rng_state() -> dict:
    """Global RNG states as tensors and int lists (what ``weights_only`` loading accepts)."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "python": {"version": int(version), "state": [int(x) for x in mt], "gauss_next": gauss},
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    n = s["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = s["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
