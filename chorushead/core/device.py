"""The one "auto" device rule: a GPU when torch sees one, else the CPU.

Every torch user of ours (the MTCNN and MossFormer2 backends, ``pachorus`` train/eval/infer) asks here.
torch is imported inside the function, so importing this module costs nothing and a build without
torch installed can still import the ground floor. (The EMOCA worker runs in its own interpreter,
which cannot import ours: it keeps its own copy of the same two lines.)
"""
from __future__ import annotations

from .errors import StageError


def pick_device(flag: str = "auto") -> str:
    """``auto`` -> ``cuda`` or ``cpu``; ``cpu``, ``cuda``, ``cuda:N``, ``mps``... are kept as given, but a
    CUDA device asked for on a machine without one is refused in one line (rather than by torch, later,
    in the middle of a model)."""
    import torch
    if flag == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if flag.startswith("cuda") and not torch.cuda.is_available():
        raise StageError(f"--device {flag} requested but CUDA is not available (torch sees no GPU); "
                         "use --device auto or cpu")
    return flag
