"""Trainer: resumable, DDP-aware, honest logs.

Output folder (never deleted or emptied):
  config.json   the full training config (model + loss + run settings + the LMDB's data facts)
  last.pt       model + optimiser + GradScaler + RNG states + step/epoch/batch-in-epoch
  best.pt       weights with the best validation loss so far
  model.pt      the unwrapped model weights + config (what eval/infer load)
All three are written and read by :mod:`pachorus.checkpoint` (atomic saves, ``weights_only`` loads).
  log.jsonl     one line per training step and per validation; a resume truncates it to the checkpoint
  curves.png    loss curves (matplotlib Agg), redrawn every epoch

``init`` (``pachorus train --init CKPT``) starts a NEW run from another run's weights (the paper's
"pretrained on talking data, then fine-tuned" protocol): same ModelConfig (dropout aside) or a one-line
refusal, then a fresh optimiser at step 0; config.json records where the weights came from.

Resume is exact: the data order is a function of (seed, epoch) (DistributedSampler), a mid-epoch
resume skips the batches already seen, the DataLoader has its own generator (so creating one does
not consume the global RNG) and the global RNG states are restored; on CPU the next step's loss is
bit-identical to an uninterrupted run (tested).

Under torchrun (DDP; gloo between CPU processes, NCCL between GPUs) each rank trains on its own shard
of every epoch (:func:`train_sampler`); rank 0 alone validates, writes the run folder and prints the
summary. Every rank seeds the same global RNG and nothing draws from it on one rank only, so all ranks
hold the same RNG state (the same dropout masks and posterior noise, on different samples): last.pt
keeps rank 0's, and a resume gives it to every rank, exactly (tests/test_ddp.py).

The data decides the rates: fps, sample rate and window length come from the LMDB meta and are
stored in ``config.json`` and every checkpoint (``data_info``), which is what ``pachorus infer`` uses.
So are ``fit_backend`` and ``coeff_groups``: groups the fit did not estimate are masked out of the
loss, and resuming (or evaluating) against an LMDB with different data facts is refused.

Mixed singer counts: one LMDB may hold duets and trios. A training sample is one (window, host)
pair whose tensors (host vocal, partner = sum of the others, BGM, host coefficients, pose0) have
the same shapes whatever the window's S, so batches mix duets and trios freely (no padding, no
grouping); an epoch visits every singer of every window once as host (sum of S over windows).
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
from typing import IO

import numpy as np
import torch
from torch.utils.data import BatchSampler, DistributedSampler, Sampler, SequentialSampler

from chorushead.core.manifest import write_json_atomic
from chorushead.core.windows import POSE, open_env

from .checkpoint import check_same_data, data_info, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .data import BatchLoader, HostWindowDataset, to_device
from .device import Dist, pick_device, setup_distributed
from .losses import LossConfig, PaChorusLoss
from .model.audio import ENCODER_SR
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
    flame: str | None = None    # FLAME folder or 'open' (the open head), needed only for the vertex lip loss
    data_info: dict | None = None  # fps/sr/window/fit_backend/coeff_groups of the LMDB (set by train)
    init: str | None = None     # checkpoint whose weights start a NEW run (fine-tuning; fresh optimiser, step 0)

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


class SkipSampler(Sampler):
    """Drop the first ``skip`` indices of an epoch's order (mid-epoch resume without loading them)."""

    def __init__(self, base: Sampler, skip: int):
        self.base, self.skip = base, skip

    def __iter__(self):
        return islice(iter(self.base), self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self.base) - self.skip)


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
        if "val_pose_l2" in va[0]:
            ax[1].plot([r["step"] for r in va], [r["val_pose_l2"] for r in va], "o-", label="val pose L2 (z=0)")
            ax[1].legend()
    ax[0].set_yscale("log")
    ax[0].set_xlabel("step")
    ax[0].legend(fontsize=7)
    ax[1].set_xlabel("step")
    fig.tight_layout()
    fig.savefig(png, dpi=80)
    plt.close(fig)


@torch.no_grad()
def validate(model: PaChorus, loader: BatchLoader, loss_fn: PaChorusLoss, device: torch.device,
             n_frames: int) -> dict:
    """Loss with z = 0 (how the model is evaluated): the training objective without its KL term (the
    prior is not sampled), with the run's own weights, so best.pt follows what the run optimises; plus
    the frame-mean pose L2 (a PPE proxy) when the data has poses."""
    model.eval()
    with_pose = "pose" in loss_fn.groups
    tot, n = {"val_loss": 0.0, "val_mse": 0.0, **({"val_pose_l2": 0.0} if with_pose else {})}, 0
    for batch in loader:
        b = to_device(batch, device)
        out = model(b["host"], b["partner"], b["bgm"], b["pose0"], n_frames, z_mode="mean")
        parts = loss_fn(out, b["coeffs"])
        k = b["coeffs"].shape[0]
        c = loss_fn.cfg
        objective = c.w_mse * parts["mse"] + c.w_vel * parts["vel"]
        if "lip_vertex" in parts:
            objective = objective + c.w_lip_vertex * parts["lip_vertex"]
        tot["val_loss"] += float(objective) * k
        tot["val_mse"] += float(parts["mse"]) * k
        if with_pose:
            tot["val_pose_l2"] += float((out.coeffs[..., POSE] - b["coeffs"][..., POSE]).norm(dim=-1).mean()) * k
        n += k
    model.train()
    return {k: v / max(n, 1) for k, v in tot.items()}



# ModelConfig fields that do not shape the weights or what they compute: --init may change them.
INIT_MAY_DIFFER = ("dropout", "faceformer_dropout")


def load_init(model: PaChorus, cfg: TrainConfig, device: torch.device) -> None:
    """Copy the weights of ``cfg.init`` (any checkpoint pachorus writes) into ``model``; refuse (one line)
    a checkpoint of another architecture (ModelConfig other than dropout) or with other tensors."""
    from .checkpoint import CheckpointError
    ck = load_checkpoint(cfg.init, map_location=device)
    theirs, ours = ModelConfig.from_dict(ck["model_config"]).to_dict(), cfg.model.to_dict()
    diff = [f"{k}: {theirs.get(k)!r} there, {v!r} here" for k, v in ours.items()
            if k not in INIT_MAY_DIFFER and theirs.get(k) != v]
    if diff:
        raise CheckpointError(f"--init {cfg.init}: another model architecture ({'; '.join(diff)}); "
                              "give the same model options as the run that wrote it")
    own = model.state_dict()
    bad = sorted(set(own) ^ set(ck["model"])) + [k for k in own if k in ck["model"]
                                                  and tuple(own[k].shape) != tuple(ck["model"][k].shape)]
    if bad:
        raise CheckpointError(f"--init {cfg.init}: its weights do not fit this model ({len(bad)} tensors differ, "
                              f"e.g. {bad[0]})")
    model.load_state_dict(ck["model"])


def _resolve_resume(cfg: TrainConfig, out: Path) -> TrainConfig:
    saved = out / "config.json"
    if not saved.exists() or not (out / "last.pt").exists():
        raise FileNotFoundError(f"--resume: no last.pt/config.json in {out}; start without --resume")
    old = TrainConfig.from_dict(json.loads(saved.read_text()))
    for k in RESUMABLE_OVERRIDES:
        setattr(old, k, getattr(cfg, k))
    old.data, old.out = cfg.data, cfg.out
    return old


def _open_data(cfg: TrainConfig, resume: bool,
               half_audio: bool) -> tuple[HostWindowDataset, HostWindowDataset, dict]:
    """The train/val datasets and the LMDB's data facts, checked before anything is written."""
    train_ds = HostWindowDataset(cfg.data, "train", half_audio=half_audio)
    val_ds = HostWindowDataset(cfg.data, "val", half_audio=half_audio)
    if val_ds.reader.generation != train_ds.reader.generation:   # a pack committed between the two opens
        with open_env(cfg.data).begin() as txn:
            raise train_ds.reader.changed(txn)
    info = data_info(train_ds.meta)
    if info["sr"] != ENCODER_SR:
        raise ValueError(f"{cfg.data}: audio at {info['sr']} Hz, but the audio encoders take {ENCODER_SR} Hz; "
                         f"repack the LMDB at {ENCODER_SR} Hz")
    if resume and cfg.data_info is not None:
        check_same_data(cfg.data_info, info, Path(cfg.out) / "last.pt", cfg.data)
    return train_ds, val_ds, info


@dataclass
class Run:
    """Everything the training loop works on (built by :func:`setup`)."""
    cfg: TrainConfig
    out: Path
    d: Dist
    device: torch.device
    use_amp: bool
    train_ds: HostWindowDataset
    val_loader: BatchLoader | None
    n_frames: int
    loss_fn: PaChorusLoss
    model: PaChorus
    ddp: torch.nn.Module
    params: list
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    sampler: DistributedSampler
    state: dict
    log: IO[str] | None

    @property
    def log_path(self) -> Path:
        return self.out / "log.jsonl"

    def payload(self, kind: str, **extra) -> dict:
        """What each checkpoint holds: ``model`` (model.pt), ``best`` (best.pt), ``last`` (last.pt:
        everything an exact resume needs). Only tensors and plain types (see pachorus.checkpoint)."""
        p = {"model": self.model.state_dict(), "model_config": self.cfg.model.to_dict(),
             "data_info": self.cfg.data_info, "step": self.state["step"], **extra}
        if kind in ("model", "last"):
            p["train_config"] = self.cfg.to_dict()
        if kind == "last":
            p.update(optimizer=self.opt.state_dict(), scaler=self.scaler.state_dict(), rng=rng_state(), **self.state)
        return p

    def write_log(self, rec: dict) -> None:
        """One line of log.jsonl (main process only), flushed: a crash loses at most the line being written."""
        self.log.write(json.dumps(rec) + "\n")
        self.log.flush()

    def save(self, kind: str, **extra) -> None:
        if self.d.main:
            save_checkpoint(self.payload(kind, **extra), self.out / f"{kind}.pt")


def setup(cfg: TrainConfig, resume: bool) -> Run:
    """Data, model, optimiser and (with ``resume``) the saved state. Every argument is checked before
    the run folder is created, so a mistyped command leaves nothing behind."""
    out = Path(cfg.out)
    if resume and cfg.init:
        raise ValueError("--init starts a new run from a checkpoint's weights, --resume continues one: give one")
    if cfg.init and not Path(cfg.init).is_file():
        raise FileNotFoundError(f"--init {cfg.init}: no such checkpoint")
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
    torch.manual_seed(cfg.seed)  # same init on every rank (DDP also broadcasts it)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    # audio float16 until an accelerator (half the bytes to copy, share and upload); on the CPU the
    # float32 conversion rides along the copy out of the LMDB page (bench_lmdb.py: cheaper there)
    train_ds, val_ds, cfg.data_info = _open_data(cfg, resume, half_audio=device.type != "cpu")
    if len(train_ds) < cfg.batch_size * d.world:
        raise ValueError(f"{cfg.data}: {len(train_ds)} training samples, fewer than one batch "
                         f"({cfg.batch_size} x {d.world} processes)")
    flame = None
    if cfg.flame:
        from .vertices import load_head
        flame = load_head(cfg.flame).to(device)
    loss_fn = PaChorusLoss(cfg.loss, flame, cfg.data_info["coeff_groups"])
    model = build_model(cfg.model).to(device)
    if cfg.init and not resume:   # fine-tuning: the weights from there, everything else fresh (optimiser, step 0)
        load_init(model, cfg, device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)
    state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "best_val": math.inf}
    if resume:
        ck = load_checkpoint(out / "last.pt", map_location=device)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        scaler.load_state_dict(ck["scaler"])
        state = {k: ck[k] for k in state}
        set_rng_state(ck["rng"])
    out.mkdir(parents=True, exist_ok=True)   # all checks passed
    if d.main:
        if resume:
            truncate_log(out / "log.jsonl", state["step"], state["epoch"])
        else:
            write_json_atomic(out / "config.json", cfg.to_dict())
    if d.enabled:
        torch.distributed.barrier()
    ddp = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None) if d.enabled else model
    sampler = train_sampler(train_ds, cfg, d)
    # the datasets read whole batches (one LMDB transaction, no per-sample collate): pachorus.data.BatchLoader
    val_loader = BatchLoader(val_ds, BatchSampler(SequentialSampler(val_ds), cfg.batch_size, False),
                             num_workers=cfg.num_workers, pin_memory=device.type == "cuda",
                             prefetch=default_read_ahead(device)) if len(val_ds) else None
    return Run(cfg=cfg, out=out, d=d, device=device, use_amp=use_amp, train_ds=train_ds, val_loader=val_loader,
               n_frames=int(cfg.data_info["window"]), loss_fn=loss_fn, model=model, ddp=ddp, params=params, opt=opt,
               scaler=scaler, sampler=sampler, state=state, log=open(out / "log.jsonl", "a") if d.main else None)


# Batches read ahead by the loader's thread (num_workers=0) when training on an accelerator: the host
# reads the next batches while the device computes. On the CPU the step itself keeps both cores busy
# and the thread measured slower than reading in the step's thread (benchmarks/bench_lmdb.py).
READ_AHEAD = 2


def default_read_ahead(device: torch.device) -> int:
    """Batches the loader's thread reads ahead unless told otherwise: on an accelerator only."""
    return READ_AHEAD if device.type != "cpu" else 0


def train_sampler(ds: HostWindowDataset, cfg: TrainConfig, d: Dist) -> DistributedSampler:
    """This process's share of every epoch. Epoch e's order is one permutation of the whole training
    split, drawn from (seed, e) alone; rank r of W takes its positions r, r + W, r + 2W, ... (an epoch of
    n samples drops its last n mod W, so every rank has as many). With :func:`train_loader`'s batches
    of b, step k of rank r is positions kWb + r, kWb + r + W, ... < (k+1)Wb: over the W ranks, exactly
    the batch k that one process with batch W·b takes from the same permutation. DDP averages the
    gradients of the W batch means, which is the gradient of that W·b batch's mean, so W processes of
    batch b train as one of batch W·b (tests/test_ddp.py: same weights to float rounding, on CPU/gloo)
    when nothing is random: dropout and the prior's posterior sample draw from the RNG state that every
    rank shares (module doc), so there the two agree in distribution, not draw for draw."""
    return DistributedSampler(ds, num_replicas=d.world, rank=d.rank, shuffle=True, seed=cfg.seed, drop_last=True)


def train_loader(ds: HostWindowDataset, sampler: DistributedSampler, cfg: TrainConfig, epoch: int, skip: int,
                 device: torch.device, read_ahead: int | None = None) -> BatchLoader:
    """The training batches of ``epoch`` from batch ``skip`` on, read as the trainer reads them (what
    benchmarks/bench_lmdb.py measures): the order is (seed, epoch)'s alone, whatever ``num_workers``
    or ``read_ahead`` (default: :data:`READ_AHEAD` on an accelerator, none on the CPU); batches in
    pinned memory for CUDA."""
    sampler.set_epoch(epoch)
    batches = BatchSampler(SkipSampler(sampler, skip * cfg.batch_size), cfg.batch_size, drop_last=True)
    return BatchLoader(ds, batches, num_workers=cfg.num_workers, pin_memory=device.type == "cuda",
                       generator=torch.Generator().manual_seed(cfg.seed + epoch),
                       prefetch=default_read_ahead(device) if read_ahead is None else read_ahead)


def _progress_bar(run: Run, epoch: int, skip: int):
    """A tqdm bar on stderr for the main process (None without ``progress`` or on other ranks)."""
    from tqdm import tqdm
    return tqdm(total=len(run.sampler) // run.cfg.batch_size, initial=skip, desc=f"epoch {epoch + 1}/{run.cfg.epochs}",
                dynamic_ncols=True, leave=False, file=sys.stderr)


def _stop_reason(run: Run, t0: float) -> str | None:
    """Why to stop after this step (``max_steps``, ``time_budget``), or None; under torchrun every rank
    stops at the same step (``another_rank``: one of the others ran out)."""
    cfg, step = run.cfg, run.state["step"]
    reason = None
    if cfg.max_steps and step >= cfg.max_steps:
        reason = "max_steps"
    elif cfg.time_budget_s and time.time() - t0 >= cfg.time_budget_s:
        reason = "time_budget"
    if run.d.enabled:
        flag = torch.tensor(float(reason is not None), device=run.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        reason = reason or ("another_rank" if flag.item() else None)
    return reason


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True) -> dict:
    """Train (or resume) into ``cfg.out``. Returns a summary dict (steps, steps/s, best val...).

    The whole loop is here, top to bottom: per epoch, its batches (from where a resume left off) ->
    forward -> loss -> backward -> optimiser step -> log line (and a checkpoint every ``ckpt_every``
    steps) until a stop; at an epoch's end validation, best.pt, model.pt, the curves and last.pt."""
    run = setup(cfg, resume)   # data, model, optimiser and the saved state: everything checked first
    cfg, state, d, device = run.cfg, run.state, run.d, run.device
    t0, steps_here, stop_reason = time.time(), 0, "epochs"
    run.model.train()
    while state["epoch"] < cfg.epochs:
        epoch, skip = state["epoch"], state["batch_in_epoch"]
        loader = train_loader(run.train_ds, run.sampler, cfg, epoch, skip, device)
        bar = _progress_bar(run, epoch, skip) if progress and d.main else None
        reason = None
        try:
            for batch in loader:   # each batch checks the LMDB's generation: a repack raises DatasetChanged
                b = to_device(batch, device)
                with torch.autocast(device.type, dtype=torch.float16, enabled=run.use_amp):
                    out = run.ddp(b["host"], b["partner"], b["bgm"], b["pose0"], run.n_frames, target=b["coeffs"])
                parts = run.loss_fn(out, b["coeffs"])   # loss, mse, kl, vel (+ lip vertices with FLAME)
                run.opt.zero_grad(set_to_none=True)
                run.scaler.scale(parts["loss"]).backward()
                if cfg.grad_clip > 0:
                    run.scaler.unscale_(run.opt)
                    torch.nn.utils.clip_grad_norm_(run.params, cfg.grad_clip)
                run.scaler.step(run.opt)
                run.scaler.update()
                state["step"] += 1
                state["batch_in_epoch"] += 1
                steps_here += 1
                if d.main:
                    rec = {"type": "train", "step": state["step"], "epoch": epoch, "time": round(time.time() - t0, 3),
                           "lr": cfg.lr, **{k: float(v.detach()) for k, v in parts.items()}}
                    run.write_log(rec)
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{rec['loss']:.4f}")
                if cfg.ckpt_every and state["step"] % cfg.ckpt_every == 0:
                    run.save("last")
                reason = _stop_reason(run, t0)
                if reason:
                    break
        finally:   # also on an error (a repack: DatasetChanged), which is then the only line on stderr
            if bar is not None:
                bar.close()
        if reason:
            stop_reason = reason
            run.save("last")
            break
        # the epoch ran to its end: validate (z = 0), keep the best, save the unwrapped model and last.pt
        state["epoch"], state["batch_in_epoch"] = epoch + 1, 0
        if d.main:
            if run.val_loader is not None:
                v = validate(run.model, run.val_loader, run.loss_fn, device, run.n_frames)
                run.write_log({"type": "val", "step": state["step"], "epoch": epoch, **v})
                if v["val_loss"] < state["best_val"]:
                    state["best_val"] = v["val_loss"]
                    run.save("best", epoch=epoch, val=v)
            run.save("model")
            plot_curves(run.log_path, run.out / "curves.png")
        run.save("last")
        if d.enabled:
            torch.distributed.barrier()
    if d.main:
        run.save("model")
        if not (run.out / "best.pt").exists():  # no validation split: the last weights are the best we know
            run.save("best")
        plot_curves(run.log_path, run.out / "curves.png")
        run.log.close()
    elapsed = time.time() - t0
    if d.enabled:
        torch.distributed.barrier()
    best = state["best_val"]
    return {"step": state["step"], "epoch": state["epoch"], "steps_this_run": steps_here,
            "steps_per_s": steps_here / max(elapsed, 1e-9),
            "best_val": best if math.isfinite(best) and d.main else None, "stopped": stop_reason,
            "device": str(device), "world_size": d.world}
