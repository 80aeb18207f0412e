"""Where pachorus computes: the device choice and the distributed (torchrun) set-up.

Used by train, eval and infer. The "auto" rule itself is the ground floor's
(:func:`chorushead.core.device.pick_device`); here it is mapped to this process's GPU under torchrun.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from chorushead.core import device as core_device


@dataclass
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @classmethod
    def from_env(cls) -> "Dist":
        """This process's place as torchrun's RANK/WORLD_SIZE/LOCAL_RANK give it; without them, a single
        process (rank 0 of 1). Starts nothing: :func:`setup_distributed` joins the process group."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        return cls(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def setup_distributed(device_flag: str) -> Dist:
    """torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; without them this is a single process."""
    d = Dist.from_env()
    if not d.enabled:
        return d
    if not torch.distributed.is_initialized():   # NCCL between GPUs, gloo between CPU processes
        on_gpu = core_device.pick_device(device_flag).startswith("cuda")
        torch.distributed.init_process_group(backend="nccl" if on_gpu else "gloo")
    return d


def pick_device(flag: str, d: Dist | None = None) -> torch.device:
    """``--device`` as a torch device; a bare ``cuda`` (or ``auto`` on a GPU machine) is this process's
    GPU (its torchrun local rank)."""
    name = core_device.pick_device(flag)
    if name == "cuda":
        return torch.device(f"cuda:{(d or Dist()).local_rank}")
    return torch.device(name)
