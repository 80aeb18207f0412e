"""Peak memory and time of duet_split's separation: whole song vs overlapping chunks (batched).

Each configuration runs in a fresh subprocess (so peak RSS is its own), on a random-weight
MossFormer2 built through modelscope (the real architecture; weights don't change the cost) and a
synthetic two-voice mix at 8 kHz. Peak = the process's max RSS during separation minus its RSS
after the model is loaded (CPU), or torch.cuda.max_memory_allocated on a GPU. No downloaded model is
needed (none is used: random weights cost what trained ones do); modelscope must be installed
(`pip install -e ".[separation]"`). Figures also go to benchmarks/results/bench_duet_split.json
(git-ignored; `python benchmarks/table.py --take bench_duet_split` records them for the README's table).

    python benchmarks/bench_duet_split.py                               # 64 ch, 2 blocks: ~10 min on 2 cores
    python benchmarks/bench_duet_split.py --channels 512 --blocks 24 --seconds 4 8 --chunk 4 --overlap 1  # hub size

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
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # this checkout, installed or not

from _results import Recorder  # noqa: E402


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


def _figure(r: dict) -> str:
    name = r["mode"] if r["mode"] == "whole" else f"chunked b={r['batch']}"
    return f"{name} {r['peak_mb']:.0f} MB, {r['seconds']:.0f} s" if "peak_mb" in r else f"{name} failed ({r['failed']})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, nargs="+", default=[30.0, 120.0], help="song lengths")
    ap.add_argument("--chunk", type=float, default=16.0)
    ap.add_argument("--overlap", type=float, default=4.0)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--channels", type=int, default=64, help="model width (the hub model: 512)")
    ap.add_argument("--blocks", type=int, default=2, help="MossFormer2 blocks (the hub model: 24)")
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
    if importlib.util.find_spec("modelscope") is None:
        sys.exit("bench_duet_split: needs modelscope for MossFormer2's code: pip install -e \".[separation]\"")
    from chorushead.backends.mossformer2 import write_random_model
    rec = Recorder("bench_duet_split")
    note = (f"random-weight MossFormer2, {args.channels} ch, {args.blocks} blocks: the architecture's cost, "
            f"not separation quality; chunks {args.chunk:g} s, overlap {args.overlap:g} s")
    out: list[dict] = []
    with tempfile.TemporaryDirectory() as d:
        model = write_random_model(Path(d) / "m2", num_blocks=args.blocks, channels=args.channels)
        print(f"# {note}; {args.threads} threads", flush=True)
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
            out.append(json.loads(lines[-1]) if lines else {"mode": mode, "song_s": song, "batch": b,
                                                            "failed": p.returncode, "stderr": p.stderr[-300:]})
            print(json.dumps(out[-1]), flush=True)
    for song in args.seconds:
        got = [r for r in out if r["song_s"] == song]
        fig = "; ".join(_figure(r) for r in got)
        rec.row(f"separation of a {song:g} s song: peak memory above the loaded model, time", fig, runs=got)
    rec.write("\n".join(json.dumps(r) for r in out), note=note)


if __name__ == "__main__":
    main()
