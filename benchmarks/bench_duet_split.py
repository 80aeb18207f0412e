"""Peak memory and time of duet_split's separation: whole song vs overlapping chunks (batched).

Each configuration runs in a fresh subprocess (so peak RSS is its own), on a random-weight
MossFormer2 built through modelscope (the real architecture; weights don't change the cost) and a
synthetic two-voice mix at 8 kHz. Peak = the process's max RSS during separation minus its RSS
after the model is loaded (CPU), or torch.cuda.max_memory_allocated on a GPU.

    python benchmarks/bench_duet_split.py                               # hub size: 512 ch, 24 blocks
    python benchmarks/bench_duet_split.py --channels 256 --blocks 6 --seconds 30 60 120

Measured 2026-11-25 on the 2-core CPU dev machine, shared and heavily loaded (load average 6-12),
so the times are only rough; the memory is what counts. Chunks 16 s, overlap 4 s unless noted.
  64 ch, 2 blocks:  song   whole           chunked b=1      chunked b=4
                     30 s   633 MB  46 s    403 MB   78 s    904 MB 131 s
                    120 s  1706 MB 253 s    393 MB  130 s   1113 MB 101 s
                    240 s  3417 MB 168 s    435 MB  210 s   1359 MB 184 s
  512 ch, 24 blocks (the hub model's size), chunks 4 s / overlap 1 s:
                      4 s   174 MB 131 s    144 MB  110 s
                      8 s   420 MB 261 s    144 MB  248 s
Whole-song memory grows linearly with the song (~14 MB/s of audio for the small model, ~60 MB/s
for the hub-size one, i.e. ~15 GB for a 4-minute song); chunked memory is set by batch x chunk.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(args) -> None:
    import numpy as np
    import torch
    from chorushead.backends.mossformer2 import MossFormer2Separator
    from chorushead.stages.duet_split import MODEL_SR, separate_long
    torch.set_num_threads(args.threads)
    sep = MossFormer2Separator.load(args.model, args.device, args.batch)
    rng = np.random.default_rng(0)
    n = int(args.song * MODEL_SR)
    mix = (rng.standard_normal(n) * 0.1).astype(np.float32)
    sep(mix[None, :MODEL_SR])                              # warm-up outside the measurement
    base = rss_mb()
    if sep.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    chunk = n if args.mode == "whole" else int(args.chunk * MODEL_SR)
    t0 = time.perf_counter()
    separate_long(mix, sep, chunk, int(args.overlap * MODEL_SR))
    dt = time.perf_counter() - t0
    if sep.device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    print(json.dumps({"mode": args.mode, "song_s": args.song, "batch": args.batch, "seconds": round(dt, 2),
                      "x_realtime": round(args.song / dt, 2), "peak_mb": round(peak, 1), "device": sep.device}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, nargs="+", default=[60.0, 180.0], help="song lengths")
    ap.add_argument("--chunk", type=float, default=16.0)
    ap.add_argument("--overlap", type=float, default=4.0)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--channels", type=int, default=512)
    ap.add_argument("--blocks", type=int, default=24)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--skip-whole-above", type=float, default=1e9, help="don't run whole-song past this length")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="chunked", help=argparse.SUPPRESS)
    ap.add_argument("--song", type=float, default=60.0, help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--model", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    from chorushead.backends.mossformer2 import write_random_model
    with tempfile.TemporaryDirectory() as d:
        model = write_random_model(Path(d) / "m2", num_blocks=args.blocks, channels=args.channels)
        print(f"# MossFormer2 random weights: {args.channels} channels, {args.blocks} blocks; "
              f"chunks {args.chunk} s, overlap {args.overlap} s; {args.threads} threads", flush=True)
        runs = []
        for song in args.seconds:
            if song <= args.skip_whole_above:
                runs.append(("whole", song, 1))
            runs += [("chunked", song, b) for b in args.batches]
        for mode, song, b in runs:
            cmd = [sys.executable, __file__, "--child", "--mode", mode, "--song", str(song), "--batch", str(b),
                   "--model", str(model), "--chunk", str(args.chunk), "--overlap", str(args.overlap),
                   "--device", args.device, "--threads", str(args.threads)]
            p = subprocess.run(cmd, capture_output=True, text=True)
            lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
            print(lines[-1] if lines else json.dumps({"mode": mode, "song_s": song, "batch": b,
                                                      "failed": p.returncode, "stderr": p.stderr[-300:]}), flush=True)


if __name__ == "__main__":
    main()
