"""Window reads/s: the packed LMDB (WindowReader) against one .npz file per window.

Both hold the same windows (2 singers × 150 frames × 56 coefficients, two 5 s vocals and the BGM at
16 kHz) and both reads return every array as numpy. Measured in random order, warm (pages cached)
and cold (pages dropped from the page cache with posix_fadvise DONTNEED before the pass).

    python benchmarks/bench_lmdb.py --windows 600
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from chorushead.core.windows import WindowReader, encode_arrays, open_env, rebuild_index, window_key, write_meta


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


def read_lmdb_samples(db: Path, order: np.ndarray) -> float:
    """What the trainer pays: one host sample per window, float32 audio, partner summed."""
    r = WindowReader(db, "train")
    t = time.perf_counter()
    for i in order:
        s = r.host_sample(2 * int(i))
        assert s["partner"].dtype == np.float32
    return len(order) / (time.perf_counter() - t)


def read_npz(npz: Path, order: np.ndarray) -> float:
    t = time.perf_counter()
    for i in order:
        with np.load(npz / f"{int(i):06d}.npz") as z:
            arrays = {k: z[k] for k in z.files}
        assert arrays["coeffs"].shape == (2, 150, 56)
    return len(order) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", type=int, default=600)
    ap.add_argument("--dir", type=Path, default=None, help="where to write (local disk; default: a temp dir)")
    args = ap.parse_args()
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
        rows.append(("warm, as host samples (float32 + partner sum)", read_lmdb_samples(db, order), None))
        print(f"{args.windows} windows, {size / args.windows:.2f} MB each ({size:.0f} MB in all), random order")
        print(f"{'pass':<6}{'LMDB reads/s':>14}{'npz reads/s':>14}{'ratio':>8}")
        for label, lm, nz in rows:
            if nz is None:
                print(f"{label}: LMDB {lm:.0f}/s")
            else:
                print(f"{label:<6}{lm:>14.0f}{nz:>14.0f}{lm / nz:>7.1f}x")


if __name__ == "__main__":
    main()
