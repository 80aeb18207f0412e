"""Trainer: resumable, DDP-aware, honest logs.

Output folder (never deleted or emptied):
  config.json   the full training config (model + loss + run settings)
  last.pt       model + optimiser + GradScaler + RNG states + step/epoch/batch-in-epoch (temp file + os.replace)
  best.pt       weights with the best validation loss so far
  model.pt      the unwrapped model weights + config (what eval/infer load)
  log.jsonl     one line per training step and per validation; a resume truncates it to the checkpoint
  curves.png    loss curves (matplotlib Agg), redrawn every epoch

Resume is exact: the data order is a function of (seed, epoch) (DistributedSampler), a mid-epoch
resume skips the batches already seen, the DataLoader has its own generator (so creating one does
not consume the global RNG) and the global RNG states are restored; on CPU the next step's loss is
bit-identical to an uninterrupted run (tested).
"""
from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from .data import HostWindowDataset
from .losses import LossConfig, PaChorusLoss
from .model.pachorus import ModelConfig, PaChorus, build_model

# Settings a resumed run may change (run length and host); everything else comes from config.json.
RESUMABLE_OVERRIDES = ("epochs", "max_steps", "time_budget_s", "device", "num_workers", "threads", "ckpt_every")


@dataclass
class TrainConfig:
    data: str
    out: str
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    epochs: int = 100
    batch_size: int = 16
    lr: float = 1e-4
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "auto"
    amp: bool = True            # autocast + GradScaler, used only on CUDA
    num_workers: int = 0
    ckpt_every: int = 0         # also checkpoint every N steps (0: only at epoch ends)
    max_steps: int = 0          # stop after this many steps in total (0: no limit)
    time_budget_s: float = 0.0  # stop after this much training time in this process (0: no limit)
    threads: int = 0            # torch CPU threads (0: leave torch's default)
    flame: str | None = None    # FLAME folder, needed only for the vertex lip loss

    def to_dict(self) -> dict:
        d = asdict(self)
        d["model"], d["loss"] = self.model.to_dict(), self.loss.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        kw = {f.name: d[f.name] for f in fields(cls) if f.name in d}
        kw["model"] = ModelConfig.from_dict(d.get("model", {}))
        kw["loss"] = LossConfig.from_dict(d.get("loss", {}))
        return cls(**kw)


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def setup_distributed(device_flag: str) -> Dist:
    """torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; without them this is a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    d = Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    use_cuda = torch.cuda.is_available() and device_flag in ("auto", "cuda")
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if use_cuda else "gloo")
    return d


def pick_device(flag: str, d: Dist) -> torch.device:
    if flag == "auto":
        flag = "cuda" if torch.cuda.is_available() else "cpu"
    if flag.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda requested but CUDA is not available")
        return torch.device(f"cuda:{d.local_rank}") if flag == "cuda" else torch.device(flag)
    return torch.device(flag)


class SkipSampler(Sampler):
    """Drop the first ``skip`` indices of an epoch's order (mid-epoch resume without loading them)."""

    def __init__(self, base: Sampler, skip: int):
        self.base, self.skip = base, skip

    def __iter__(self):
        return islice(iter(self.base), self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self.base) - self.skip)


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_log(path: Path) -> list[dict]:
    """Parse log.jsonl; a torn last line (crash mid-write) is skipped, never fatal."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def truncate_log(path: Path, step: int, epoch: int) -> None:
    """Keep train lines up to the checkpoint's step and val lines of finished epochs (no gaps, no dupes)."""
    keep = [r for r in read_log(path)
            if (r.get("type") == "train" and r["step"] <= step) or (r.get("type") == "val" and r["epoch"] < epoch)]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
    os.replace(tmp, path)


def plot_curves(log_path: Path, png: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = read_log(log_path)
    tr = [r for r in rows if r.get("type") == "train"]
    va = [r for r in rows if r.get("type") == "val"]
    if not tr:
        return
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    steps = np.array([r["step"] for r in tr])
    for key in ("loss", "mse", "vel"):
        y = np.array([r[key] for r in tr])
        k = max(1, len(y) // 50)
        ax[0].plot(steps[k - 1:], np.convolve(y, np.ones(k) / k, mode="valid"), label=f"train {key}")
    if va:
        ax[0].plot([r["step"] for r in va], [r["val_loss"] for r in va], "o-", label="val loss")
        ax[1].plot([r["step"] for r in va], [r["val_pose_l2"] for r in va], "o-", label="val pose L2 (z=0)")
        ax[1].legend()
    ax[0].set_yscale("log")
    ax[0].set_xlabel("step")
    ax[0].legend(fontsize=7)
    ax[1].set_xlabel("step")
    fig.tight_layout()
    fig.savefig(png, dpi=80)
    plt.close(fig)


def _to(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


@torch.no_grad()
def validate(model: PaChorus, loader: DataLoader, loss_fn: PaChorusLoss, device: torch.device,
             n_frames: int) -> dict:
    """Loss with z = 0 (how the model is evaluated), plus the frame-mean pose L2 (a PPE proxy)."""
    model.eval()
    tot, n = {"val_loss": 0.0, "val_mse": 0.0, "val_pose_l2": 0.0}, 0
    for batch in loader:
        b = _to(batch, device)
        out = model(b["host"], b["partner"], b["bgm"], b["pose0"], n_frames, z_mode="mean")
        parts = loss_fn(out, b["coeffs"])
        k = b["coeffs"].shape[0]
        tot["val_loss"] += float(parts["mse"] + parts["vel"]) * k
        tot["val_mse"] += float(parts["mse"]) * k
        tot["val_pose_l2"] += float((out.coeffs[..., 53:56] - b["coeffs"][..., 53:56]).norm(dim=-1).mean()) * k
        n += k
    model.train()
    return {k: v / max(n, 1) for k, v in tot.items()}


def _resolve_resume(cfg: TrainConfig, out: Path) -> TrainConfig:
    saved = out / "config.json"
    if not saved.exists() or not (out / "last.pt").exists():
        raise FileNotFoundError(f"--resume: no last.pt/config.json in {out}; start without --resume")
    old = TrainConfig.from_dict(json.loads(saved.read_text()))
    for k in RESUMABLE_OVERRIDES:
        setattr(old, k, getattr(cfg, k))
    old.data, old.out = cfg.data, cfg.out
    return old


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True) -> dict:
    """Train (or resume) into ``cfg.out``. Returns a summary dict (steps, steps/s, best val...)."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if resume:
        cfg = _resolve_resume(cfg, out)
    elif (out / "last.pt").exists():
        raise FileExistsError(f"{out} already holds a run (last.pt): pass --resume to continue it, "
                              "or choose another --out (the folder is never deleted)")
    if cfg.model.variant == "no_kl":
        cfg.loss.w_kl = 0.0
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    d = setup_distributed(cfg.device)
    device = pick_device(cfg.device, d)
    use_amp = cfg.amp and device.type == "cuda"

    torch.manual_seed(cfg.seed)  # same init on every rank (DDP also broadcasts it)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    train_ds = HostWindowDataset(cfg.data, "train")
    if len(train_ds) < cfg.batch_size * d.world:
        raise ValueError(f"{cfg.data}: {len(train_ds)} training samples, fewer than one batch "
                         f"({cfg.batch_size} x {d.world} processes)")
    val_ds = HostWindowDataset(cfg.data, "val")
    n_frames = int(train_ds.meta["window"])
    flame = None
    if cfg.flame:
        from chorushead.core.flame import FlameModel
        flame = FlameModel.load(cfg.flame).to(device)
    loss_fn = PaChorusLoss(cfg.loss, flame)
    model = build_model(cfg.model).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)
    state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "best_val": math.inf}
    log_path = out / "log.jsonl"
    if resume:
        ck = torch.load(out / "last.pt", map_location=device, weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        scaler.load_state_dict(ck["scaler"])
        state = {k: ck[k] for k in state}
        set_rng_state(ck["rng"])
        if d.main:
            truncate_log(log_path, state["step"], state["epoch"])
    elif d.main:
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    if d.enabled:
        torch.distributed.barrier()
    ddp = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None) if d.enabled else model

    def checkpoint():
        if d.main:
            atomic_save({"model": model.state_dict(), "model_config": cfg.model.to_dict(), "window": n_frames, "optimizer": opt.state_dict(),
                         "scaler": scaler.state_dict(), "rng": rng_state(), "train_config": cfg.to_dict(), **state},
                        out / "last.pt")

    sampler = DistributedSampler(train_ds, num_replicas=d.world, rank=d.rank, shuffle=True, seed=cfg.seed,
                                 drop_last=True)
    steps_per_epoch = len(sampler) // cfg.batch_size
    val_loader = DataLoader(val_ds, batch_size=cfg.batch_size, num_workers=cfg.num_workers) if len(val_ds) else None
    log = open(log_path, "a") if d.main else None
    t0, steps_here, stop_reason = time.time(), 0, "epochs"
    model.train()
    while state["epoch"] < cfg.epochs:
        epoch = state["epoch"]
        sampler.set_epoch(epoch)
        skip = state["batch_in_epoch"]
        loader = DataLoader(train_ds, batch_size=cfg.batch_size, sampler=SkipSampler(sampler, skip * cfg.batch_size),
                            drop_last=True, num_workers=cfg.num_workers, pin_memory=device.type == "cuda",
                            generator=torch.Generator().manual_seed(cfg.seed + epoch))
        bar = None
        if progress and d.main:
            from tqdm import tqdm
            bar = tqdm(total=steps_per_epoch, initial=skip, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                       dynamic_ncols=True, leave=False, file=sys.stderr)
        stop = False
        for batch in loader:
            b = _to(batch, device)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                o = ddp(b["host"], b["partner"], b["bgm"], b["pose0"], n_frames, target=b["coeffs"])
            parts = loss_fn(o, b["coeffs"])
            opt.zero_grad(set_to_none=True)
            scaler.scale(parts["loss"]).backward()
            if cfg.grad_clip > 0:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            scaler.step(opt)
            scaler.update()
            state["step"] += 1
            state["batch_in_epoch"] += 1
            steps_here += 1
            if d.main:
                rec = {"type": "train", "step": state["step"], "epoch": epoch, "time": round(time.time() - t0, 3),
                       "lr": cfg.lr, **{k: float(v.detach()) for k, v in parts.items()}}
                log.write(json.dumps(rec) + "\n")
                log.flush()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{rec['loss']:.4f}")
            if cfg.ckpt_every and state["step"] % cfg.ckpt_every == 0:
                checkpoint()
            if cfg.max_steps and state["step"] >= cfg.max_steps:
                stop, stop_reason = True, "max_steps"
            elif cfg.time_budget_s and time.time() - t0 >= cfg.time_budget_s:
                stop, stop_reason = True, "time_budget"
            if d.enabled:  # every rank must stop at the same step
                flag = torch.tensor(float(stop), device=device)
                torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
                stop = bool(flag.item())
            if stop:
                break
        if bar is not None:
            bar.close()
        if stop:
            checkpoint()
            break
        # Epoch finished: validate, keep the best, save the unwrapped model, then checkpoint.
        state["epoch"], state["batch_in_epoch"] = epoch + 1, 0
        if d.main:
            if val_loader is not None:
                v = validate(model, val_loader, loss_fn, device, n_frames)
                log.write(json.dumps({"type": "val", "step": state["step"], "epoch": epoch, **v}) + "\n")
                log.flush()
                if v["val_loss"] < state["best_val"]:
                    state["best_val"] = v["val_loss"]
                    atomic_save({"model": model.state_dict(), "model_config": cfg.model.to_dict(), "window": n_frames,
                                 "step": state["step"], "epoch": epoch, "val": v}, out / "best.pt")
            atomic_save({"model": model.state_dict(), "model_config": cfg.model.to_dict(), "window": n_frames, "step": state["step"],
                         "train_config": cfg.to_dict()}, out / "model.pt")
            plot_curves(log_path, out / "curves.png")
        checkpoint()
        if d.enabled:
            torch.distributed.barrier()
    if d.main:
        atomic_save({"model": model.state_dict(), "model_config": cfg.model.to_dict(), "window": n_frames, "step": state["step"],
                     "train_config": cfg.to_dict()}, out / "model.pt")
        if not (out / "best.pt").exists():  # no validation split: the last weights are the best we know
            atomic_save({"model": model.state_dict(), "model_config": cfg.model.to_dict(), "window": n_frames, "step": state["step"]},
                        out / "best.pt")
        plot_curves(log_path, out / "curves.png")
        log.close()
    elapsed = time.time() - t0
    if d.enabled:
        torch.distributed.barrier()
    return {"step": state["step"], "epoch": state["epoch"], "steps_this_run": steps_here,
            "steps_per_s": steps_here / max(elapsed, 1e-9),
            "best_val": state["best_val"] if math.isfinite(state["best_val"]) and d.main else None, "stopped": stop_reason,
            "device": str(device), "world_size": d.world}
