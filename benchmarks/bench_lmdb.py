"""Window reads/s: the packed LMDB (WindowReader) against one .npz file per window.

Both hold the same windows (2 singers × 150 frames × 56 coefficients, two 5 s vocals and the BGM at
16 kHz) and both reads return every array as numpy. Measured in random order, warm (pages cached)
and cold (pages dropped from the page cache with posix_fadvise DONTNEED before the pass).

Then what the trainer gets: host samples/s through the trainer's own loader (``pachorus.train.train_loader``,
epoch after epoch as ``pachorus train`` reads them: batches of --batch, the trainer's shuffled order)
and ``to_device`` onto the CPU "device" (float32 there), against a plain DataLoader reading one sample
at a time with default_collate (the baseline, same run). Arms: no read-ahead / a read-ahead thread / 2
DataLoader workers, audio made float32 while copied into the batch against float16 kept until the
device (one conversion per batch tensor there); and, with and without read-ahead, a stand-in
accelerator step (--step seconds of sleep per batch: the host idle, as while a GPU computes). Arms run
interleaved --repeats times, the median reported (other jobs' load moves single runs a lot); beside the
wall-clock rate, the rate the measured CPU time allows on 2 idle cores. Worker start-up is timed apart
from the steady rate. Figures go to benchmarks/results/bench_lmdb.json as well
(git-ignored; `python benchmarks/table.py --take bench_lmdb` records them for the README's table).

    python benchmarks/bench_lmdb.py --windows 600
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from itertools import count
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # this checkout, installed or not

from _results import Recorder  # noqa: E402
from chorushead.core.windows import (POSE, WindowReader, encode_arrays, open_env, rebuild_index,  # noqa: E402
                                     window_key, write_meta)


def make_windows(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for i in range(n):
        c = rng.standard_normal((2, 150, 56)).astype(np.float32)
        yield i, {"coeffs": c, "vocals": (rng.standard_normal((2, 80000)) * 0.1).astype(np.float16),
                  "bgm": (rng.standard_normal(80000) * 0.1).astype(np.float16), "pose0": c[:, 0, POSE].copy()}


def write_both(root: Path, n: int) -> tuple[Path, Path]:
    db, npz = root / "w.lmdb", root / "npz"
    npz.mkdir()
    env = open_env(db, write=True, map_size=64 << 30)
    with env.begin(write=True) as txn:
        write_meta(txn, fps=30, sr=16000, window=150, stride=15)
        for i, arrays in make_windows(n):
            txn.put(window_key("bench", 0, i * 15), encode_arrays(arrays, {"video": "bench", "segment": 0,
                                                                           "start": i * 15, "split": "train"}))
            np.savez(npz / f"{i:06d}.npz", **arrays)
        rebuild_index(txn)
    env.close()
    return db, npz


def drop_cache(paths: list[Path]) -> None:
    for p in paths:
        for f in ([p] if p.is_file() else sorted(p.rglob("*"))):
            if f.is_file():
                fd = os.open(f, os.O_RDONLY)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                os.close(fd)


def read_lmdb(db: Path, order: np.ndarray) -> float:
    r = WindowReader(db, "train")
    t = time.perf_counter()
    for i in order:
        w = r[int(i)]
        assert w.coeffs.shape == (2, 150, 56)
    return len(order) / (time.perf_counter() - t)


def read_lmdb_samples(db: Path, order: np.ndarray) -> tuple[float, float]:
    """What the trainer paid before batch reads: one host sample at a time, float32 audio (numpy),
    partner summed. (samples/s, CPU ms per sample)"""
    r = WindowReader(db, "train")
    t, c = time.perf_counter(), time.process_time()
    for i in order:
        s = r.host_sample(2 * int(i))
        assert s["partner"].dtype == np.float32
    return len(order) / (time.perf_counter() - t), 1e3 * (time.process_time() - c) / len(order)


def read_npz(npz: Path, order: np.ndarray) -> float:
    t = time.perf_counter()
    for i in order:
        with np.load(npz / f"{int(i):06d}.npz") as z:
            arrays = {k: z[k] for k in z.files}
        assert arrays["coeffs"].shape == (2, 150, 56)
    return len(order) / (time.perf_counter() - t)


@dataclass
class LoaderRun:
    rate: float        # samples/s after the first batch (wall clock: depends on the machine's load)
    start: float       # seconds to the first batch (worker start-up included)
    main_cpu: float    # CPU seconds of the main thread over the whole pass
    other_cpu: float   # CPU seconds of the loader's reader thread or of all its workers together
    samples: int

    def cpu_bound_rate(self, parallel: int, cores: int = 2) -> float:
        """Samples/s the measured CPU work allows on ``cores`` idle cores: limited by the busiest
        thread or process (the main thread; the reader thread or one of ``parallel`` workers) and by
        all the work shared over the cores. Independent of other jobs' load, unlike ``rate``."""
        per = self.other_cpu / parallel if parallel else 0.0
        return self.samples / max(self.main_cpu, per, (self.main_cpu + self.other_cpu) / cores)


@dataclass(frozen=True)
class Arm:
    label: str
    workers: int = 0
    read_ahead: int = 0
    half: bool = True
    collate: bool = False    # the baseline: a plain DataLoader, one sample at a time + default_collate
    step_s: float = 0.0      # a stand-in accelerator step per batch (the host idle: sleep)

    @property
    def parallel(self) -> int:
        return self.workers or (1 if self.read_ahead else 0)


def trainer_samples(db: Path, arm: Arm, samples: int, batch: int) -> LoaderRun:
    """Host samples through the trainer's loader (``pachorus.train.train_loader``: its sampler, batch
    reads, reader thread or workers, epoch after epoch as the trainer runs them) and its device
    conversion (``to_device``; the device here is the CPU), or through the baseline ``arm.collate``."""
    import torch
    from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

    from pachorus.data import HostWindowDataset, to_device
    from pachorus.train import TrainConfig, train_loader
    cpu = torch.device("cpu")
    ds = HostWindowDataset(db, "train", half_audio=arm.half)
    if arm.collate:
        loaders = iter([DataLoader(ds, batch_size=batch, sampler=RandomSampler(
            ds, num_samples=samples + batch, generator=torch.Generator().manual_seed(0)))])
    else:
        cfg = TrainConfig(data=str(db), out="-", batch_size=batch, num_workers=arm.workers)
        sampler = DistributedSampler(ds, num_replicas=1, rank=0, shuffle=True, seed=cfg.seed, drop_last=True)
        loaders = (train_loader(ds, sampler, cfg, epoch, 0, cpu, read_ahead=arm.read_ahead) for epoch in count())
    thread = resource.RUSAGE_THREAD
    c0, m0, k0 = time.process_time(), resource.getrusage(thread), resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    n, t1 = 0, None
    for loader in loaders:
        for b in loader:
            b = to_device(b, cpu)
            assert b["host"].dtype == torch.float32 and b["partner"].dtype == torch.float32
            if arm.step_s:
                time.sleep(arm.step_s)
            if t1 is None:
                t1 = time.perf_counter()
            else:
                n += b["host"].shape[0]
            if n >= samples:
                break
        if n >= samples:
            break
    t2 = time.perf_counter()
    del loader, loaders, b   # workers are joined once the pass ends: their CPU time is in RUSAGE_CHILDREN
    m1, k1 = resource.getrusage(thread), resource.getrusage(resource.RUSAGE_CHILDREN)
    main = (m1.ru_utime + m1.ru_stime) - (m0.ru_utime + m0.ru_stime)
    return LoaderRun(rate=n / (t2 - t1), start=t1 - t0, main_cpu=main,
                     other_cpu=(time.process_time() - c0 - main) + (k1.ru_utime + k1.ru_stime)
                     - (k0.ru_utime + k0.ru_stime), samples=n + batch)


def _default_arms(arms: list[Arm]) -> tuple[Arm, Arm]:
    """The arms that read as ``pachorus train`` does by default (num_workers=0): on the CPU (no
    read-ahead, float32 made in the copy) and on an accelerator (read-ahead thread, float16 until the
    device, here with the stand-in device step)."""
    from pachorus.train import READ_AHEAD, TrainConfig
    w = TrainConfig.num_workers
    cpu = next(a for a in arms if not a.collate and not a.step_s and a.workers == w and not a.read_ahead
               and not a.half)
    acc = next(a for a in arms if a.step_s and a.workers == w and a.read_ahead == READ_AHEAD and a.half)
    return cpu, acc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", type=int, default=600)
    ap.add_argument("--samples", type=int, default=12000, help="host samples per trainer-DataLoader arm")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="runs per trainer-loader arm (median reported)")
    ap.add_argument("--step", type=float, default=0.004, help="stand-in accelerator step per batch, seconds")
    ap.add_argument("--dir", type=Path, default=None, help="where to write (local disk; default: a temp dir)")
    args = ap.parse_args()
    import torch
    torch.set_num_threads(1)   # the main process converts batches; workers get one thread each anyway
    rec = Recorder("bench_lmdb")
    say = rec.say

    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        db, npz = write_both(Path(d), args.windows)
        size = sum(f.stat().st_size for f in npz.iterdir()) / 1e6
        order = np.random.default_rng(1).permutation(args.windows)
        rows = []
        drop_cache([db, npz])
        cold_lm = read_lmdb(db, order)
        drop_cache([db, npz])
        cold_nz = read_npz(npz, order)
        rows.append(("cold", cold_lm, cold_nz))
        read_lmdb(db, order), read_npz(npz, order)          # warm both caches fully
        rows.append(("warm", read_lmdb(db, order), read_npz(npz, order)))
        host, host_ms = read_lmdb_samples(db, order)
        say(f"{args.windows} windows, {size / args.windows:.2f} MB each ({size:.0f} MB in all), random order")
        say(f"{'pass':<6}{'LMDB reads/s':>14}{'npz reads/s':>14}{'ratio':>8}")
        for label, lm, nz in rows:
            say(f"{label:<6}{lm:>14.0f}{nz:>14.0f}{lm / nz:>7.1f}x")
            rec.row(f"LMDB window reads/s vs one .npz per window, {label} (random order)",
                    f"{lm:.0f}/s vs {nz:.0f}/s = **{lm / nz:.1f}×**", lmdb_per_s=lm, npz_per_s=nz)
        say(f"warm, WindowReader.host_sample one by one (float32 + partner sum): {host:.0f} samples/s, "
            f"CPU {host_ms:.3f} ms/sample (one core allows {1e3 / host_ms:.0f}/s)")
        rec.row("host samples/s, one process, WindowReader.host_sample one at a time (numpy float32)",
                f"{host:.0f}/s measured; CPU allows {1e3 / host_ms:.0f}/s on one idle core", samples_per_s=host,
                cpu_ms_per_sample=host_ms)
        step_ms = 1e3 * args.step
        arms = [Arm("baseline: DataLoader, one sample at a time + collate", collate=True, half=False),
                Arm("no read-ahead, float32 in the batch", half=False),
                Arm("no read-ahead, float16 until the device"),
                Arm("read-ahead thread, float32 in the batch", read_ahead=2, half=False),
                Arm("read-ahead thread, float16 until the device", read_ahead=2),
                Arm("2 workers, float32 in the batch", workers=2, half=False),
                Arm("2 workers, float16 until the device", workers=2),
                Arm(f"no read-ahead, f16, + {step_ms:.0f} ms device step", step_s=args.step),
                Arm(f"read-ahead thread, f16, + {step_ms:.0f} ms device step", read_ahead=2, step_s=args.step)]
        runs: dict[Arm, list[LoaderRun]] = {a: [] for a in arms}
        for _ in range(args.repeats):   # arms interleaved, so a burst of other jobs' load hits them all
            for arm in arms:
                runs[arm].append(trainer_samples(db, arm, args.samples, args.batch))
        say(f"trainer loader (pachorus.train.train_loader + to_device), batch {args.batch}, {args.samples} samples "
            f"per arm, warm, median of {args.repeats} interleaved runs (steady rate after the first batch; start = "
            f"time to the first batch); pachorus train's default: on the CPU '{_default_arms(arms)[0].label}', "
            f"on an accelerator '{_default_arms(arms)[1].label}'")
        say(f"  {'arm':<48}{'samples/s':>10}{'start s':>9}{'CPU ms/sample main+other':>26}{'idle cores':>12}")
        med = {}
        for arm in arms:
            r = sorted(runs[arm], key=lambda x: x.rate)[len(runs[arm]) // 2]
            med[arm] = r, r.cpu_bound_rate(arm.parallel)
            say(f"  {arm.label:<48}{r.rate:>10.0f}{r.start:>9.2f}{1e3 * r.main_cpu / r.samples:>14.3f} + "
                f"{1e3 * r.other_cpu / r.samples:<9.3f}{med[arm][1] if not arm.step_s else float('nan'):>12.0f}")
        base = med[arms[0]][0].rate
        best = max(r.rate for a, (r, _) in med.items() if not a.step_s and not a.collate)
        for arm in arms:
            r, cap = med[arm]
            bold = "**" if r.rate == best else ""
            where = ("one idle core" if not arm.parallel else "2 idle cores")
            fig = f"{bold}{r.rate:.0f}/s{bold} measured ({r.rate / base:.1f}× the baseline)"
            if arm.collate:
                fig = f"{r.rate:.0f}/s measured; CPU allows {cap:.0f}/s on {where}"
            elif arm.step_s:
                fig = f"{r.rate:.0f}/s measured; the step alone allows {args.batch / args.step:.0f}/s"
            else:
                fig += f"; CPU allows {cap:.0f}/s on {where}"
            rec.row(f"trainer loader, host samples/s, {arm.label}", fig, samples_per_s=r.rate, cpu_bound=cap,
                    start_s=r.start, main_cpu_s=r.main_cpu, other_cpu_s=r.other_cpu, samples=r.samples,
                    workers=arm.workers, read_ahead=arm.read_ahead, half_audio=arm.half, step_s=arm.step_s,
                    batch=args.batch, repeats=args.repeats, all_rates=[round(x.rate) for x in runs[arm]])
        say("  (main+other: the main thread + the reader thread or all workers; idle cores: the rate that CPU work"
            " allows, limited by the busiest thread or process and by all work over 2 cores; device step: a"
            f" {step_ms:.0f} ms sleep per batch after to_device, the host idle as while an accelerator computes)")
    rec.write()


if __name__ == "__main__":
    main()
