"""Window reads/s: the packed LMDB (WindowReader) against one .npz file per window.

Both hold the same windows (2 singers × 150 frames × 56 coefficients, two 5 s vocals and the BGM at
16 kHz) and both reads return every array as numpy. Measured in random order, warm (pages cached)
and cold (pages dropped from the page cache with posix_fadvise DONTNEED before the pass).

Then what the trainer gets: host samples/s through pachorus' DataLoader (batches of --batch, random
order over --samples samples, each batch made float32 on the CPU "device" as the trainer does),
with 0 and 2 workers, audio made float32 while copied into the batch (in the worker) against float16
kept until the device (one conversion per batch tensor there). Worker start-up is timed apart from the steady rate.
Figures go to benchmarks/results/bench_lmdb.json as well.

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
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # this checkout, installed or not

from _results import Recorder  # noqa: E402
from chorushead.core.windows import (WindowReader, encode_arrays, open_env, rebuild_index,  # noqa: E402
                                     window_key, write_meta)


def make_windows(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for i in range(n):
        c = rng.standard_normal((2, 150, 56)).astype(np.float32)
        yield i, {"coeffs": c, "vocals": (rng.standard_normal((2, 80000)) * 0.1).astype(np.float16),
                  "bgm": (rng.standard_normal(80000) * 0.1).astype(np.float16), "pose0": c[:, 0, 53:56].copy()}


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
    main_cpu: float    # CPU seconds of the main process over the whole pass
    worker_cpu: float  # CPU seconds of all workers together
    samples: int

    def cpu_bound_rate(self, workers: int, cores: int = 2) -> float:
        """Samples/s the measured CPU work allows on ``cores`` idle cores: limited by the busiest
        process (the main one, or a worker) and by all the work shared over the cores. Independent
        of other jobs' load, unlike ``rate``."""
        per_worker = self.worker_cpu / workers if workers else 0.0
        return self.samples / max(self.main_cpu, per_worker, (self.main_cpu + self.worker_cpu) / cores)


def trainer_samples(db: Path, workers: int, half: bool, samples: int, batch: int) -> LoaderRun:
    """Host samples through the trainer's DataLoader (its dataset, batch reads and device conversion)."""
    import torch
    from torch.utils.data import BatchSampler, DataLoader, RandomSampler

    from pachorus.data import HostWindowDataset, to_device
    ds = HostWindowDataset(db, "train", half_audio=half)
    sampler = RandomSampler(ds, num_samples=samples, generator=torch.Generator().manual_seed(0))
    loader = DataLoader(ds, sampler=BatchSampler(sampler, batch, drop_last=True), batch_size=None,
                        num_workers=workers)
    c0, k0 = time.process_time(), resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    n, t1 = 0, None
    for b in loader:
        b = to_device(b, torch.device("cpu"))
        assert b["host"].dtype == torch.float32 and b["partner"].dtype == torch.float32
        if t1 is None:
            t1 = time.perf_counter()
        else:
            n += b["host"].shape[0]
    t2 = time.perf_counter()
    del loader   # workers are joined once the pass ends: their CPU time is in RUSAGE_CHILDREN
    k1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return LoaderRun(rate=n / (t2 - t1), start=t1 - t0, main_cpu=time.process_time() - c0,
                     worker_cpu=(k1.ru_utime + k1.ru_stime) - (k0.ru_utime + k0.ru_stime), samples=n + batch)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", type=int, default=600)
    ap.add_argument("--samples", type=int, default=12000, help="host samples per trainer-DataLoader arm")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--dir", type=Path, default=None, help="where to write (local disk; default: a temp dir)")
    args = ap.parse_args()
    import torch
    torch.set_num_threads(1)   # the main process converts batches; workers get one thread each anyway
    rec = Recorder("bench_lmdb")
    lines: list[str] = []

    def say(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

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
        say(f"trainer DataLoader, batch {args.batch}, {args.samples} samples, warm "
            f"(steady rate after the first batch; start = time to the first batch):")
        say(f"  {'arm':<42}{'samples/s':>10}{'start s':>9}{'CPU ms/sample main+workers':>28}{'idle cores':>14}")
        arms = []
        for workers in (0, 2):
            for half in (False, True):
                r = trainer_samples(db, workers, half, args.samples, args.batch)
                audio = "float16 until the device" if half else "float32 in the batch"
                cap = r.cpu_bound_rate(workers)
                say(f"  {f'{workers} workers, {audio}':<42}{r.rate:>10.0f}{r.start:>9.2f}"
                    f"{1e3 * r.main_cpu / r.samples:>16.3f} + {1e3 * r.worker_cpu / r.samples:<9.3f}{cap:>14.0f}")
                arms.append((workers, half, audio, r, cap))
        best = max(a[3].rate for a in arms)
        for workers, half, audio, r, cap in arms:
            bold = "**" if r.rate == best else ""
            rec.row(f"trainer DataLoader, host samples/s, {workers} workers, {audio}",
                    f"{bold}{r.rate:.0f}/s{bold} measured; CPU allows {cap:.0f}/s on "
                    f"{'one idle core (one process)' if workers == 0 else '2 idle cores'}",
                    samples_per_s=r.rate, cpu_bound=cap, start_s=r.start, main_cpu_s=r.main_cpu,
                    worker_cpu_s=r.worker_cpu, samples=r.samples, workers=workers, half_audio=half,
                    batch=args.batch)
        say("  (idle cores: the rate the measured CPU work allows, limited by the busiest process and, with"
            " workers, by all work over 2 cores)")
    rec.write("\n".join(lines))


if __name__ == "__main__":
    main()
