"""Learnability benchmark: can PaChorus and its ablations learn the synthetic motion rules?

Trains full, mono, no_bgm, no_kl, no_prior on a `pachorus synth` LMDB for a fixed CPU time each
(several seeds), evaluates on the test split with a generated small FLAME-format model (LVE/FVE/FDD
are on that toy mesh, so only comparisons between rows mean anything), and prints mean ± std.

Every variant gets the same frame-0 pose (the prototype showed a host-only model WITHOUT pose0
loses mostly for lack of that input, not for lack of the prior).

    python benchmarks/bench_learnability.py                 # 600 steps x 5 variants x 2 seeds, ~15 min on 2 idle cores
    python benchmarks/bench_learnability.py --steps 100 --seeds 1 --videos 6   # a quick look

Measured (800 steps, 2 seeds, shared 2-core machine, 29 min): PPE full 0.0745 ± 0.0003 vs no_bgm
0.0889 ± 0.0016, no_kl 0.100 ± 0.005, no_prior 0.111, mono 0.107 (mean-motion 0.109): the prior's
partner/BGM inputs are what predict head motion. LVE differences between variants are ≤ 2 % and
within seed spread (full 4.68 ± 0.09 mm vs mono 4.72 ± 0.01 on the toy mesh).

Expected (the rules are built for it): full < mono on LVE (mono is causal and cannot see the
centred jaw/band features ahead), full < no_prior and full < no_bgm on PPE (partner-onset turns and
beat nods are only visible through the prior's partner/BGM inputs).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VARIANTS = ("full", "mono", "no_bgm", "no_kl", "no_prior")


def _run_one(job: dict) -> dict:
    """Train one (variant, seed) for a time budget on one thread, then evaluate it."""
    import torch
    torch.set_num_threads(1)
    from pachorus.evaluate import evaluate_model
    from chorushead.core.flame import FlameModel
    from pachorus.losses import LossConfig
    from pachorus.model.pachorus import ModelConfig, load_model
    from pachorus.train import TrainConfig, train
    cfg = TrainConfig(data=job["data"], out=job["out"], epochs=10_000, batch_size=job["batch_size"], lr=job["lr"],
                      seed=job["seed"], device="cpu", threads=1, time_budget_s=job["seconds"],
                      max_steps=job["steps"],
                      model=ModelConfig(variant=job["variant"], d_model=job["d_model"], n_layers=job["n_layers"],
                                        dropout=0.0),
                      loss=LossConfig(w_kl=job["w_kl"]))
    summary = train(cfg, progress=False)
    model, _ = load_model(Path(job["out"]) / "last.pt")
    res = evaluate_model(model, job["data"], "test", FlameModel.load(job["flame"]), batch_size=32,
                         mean_coeffs=np.asarray(job["mean_coeffs"], np.float32))
    return {**job, "train": summary, "metrics": res["model"], "baseline": res["mean_motion_baseline"]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="work folder (default: a temp dir)")
    ap.add_argument("--steps", type=int, default=600,
                    help="training steps per (variant, seed): equal steps, so the slower two-branch variants "
                         "are not starved (0 = use --run-seconds alone)")
    ap.add_argument("--run-seconds", type=float, default=0.0, help="time cap per (variant, seed) (0 = none)")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--jobs", type=int, default=2, help="parallel runs (one thread each)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--videos", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=20.0, help="song length of each synthetic video")
    ap.add_argument("--window", type=int, default=60, help="frames per window (60 = 2 s keeps CPU steps fast)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3, help="1e-3: 1e-4 (the paper's) learns too slowly in minutes")
    ap.add_argument("--w-kl", type=float, default=0.005, help="KL weight of the variants that keep it")
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--n-layers", type=int, default=2)
    args = ap.parse_args(argv)

    from pachorus.evaluate import format_table, train_mean_coeffs
    from chorushead.core.flame import make_synthetic_flame
    from pachorus.synth import SynthConfig, write_synth_lmdb
    work = Path(args.out or tempfile.mkdtemp(prefix="pachorus_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    data, flame = work / "synth.lmdb", work / "flame"
    t0 = time.time()
    if not (data / "data.mdb").exists():
        counts = write_synth_lmdb(data, SynthConfig(videos=args.videos, seconds=args.seconds, window=args.window,
                                                    stride=15, seed=123))
        print(f"synth data: {counts} windows ({time.time() - t0:.0f} s)", flush=True)
    make_synthetic_flame(flame)
    mean = train_mean_coeffs(data).tolist()
    variants = [v for v in args.variants.split(",") if v]
    jobs = [{"variant": v, "seed": s, "data": str(data), "flame": str(flame), "out": str(work / f"{v}_s{s}"),
             "seconds": args.run_seconds, "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
             "w_kl": 0.0 if v == "no_kl" else args.w_kl, "d_model": args.d_model, "n_layers": args.n_layers,
             "mean_coeffs": mean}
            for s in range(args.seeds) for v in variants]
    for j in jobs:  # a rerun in the same --out starts fresh runs (run folders are never deleted)
        for name in ("last.pt", "log.jsonl"):
            p = Path(j["out"]) / name
            if p.exists():
                p.rename(p.with_suffix(p.suffix + f".old{int(time.time())}"))
    print(f"{len(jobs)} runs x {args.steps or 'unlimited'} steps (time cap {args.run_seconds or 'none'} s) "
          f"on {args.jobs} processes", flush=True)
    with mp.get_context("spawn").Pool(args.jobs) as pool:
        results = []
        for r in pool.imap_unordered(_run_one, jobs):
            results.append(r)
            print(f"  {r['variant']:9s} seed {r['seed']}: {r['train']['step']} steps "
                  f"({r['train']['steps_per_s']:.2f}/s)  LVE_l2 {r['metrics']['LVE_l2']:.3f}  "
                  f"PPE {r['metrics']['PPE']:.4f}", flush=True)
    table, spread = {}, {}
    for v in variants:
        rs = [r["metrics"] for r in results if r["variant"] == v]
        table[v] = {k: float(np.mean([m[k] for m in rs])) for k in rs[0]}
        spread[v] = {k: float(np.std([m[k] for m in rs])) for k in rs[0]}
    table["mean motion"] = results[0]["baseline"]
    print(f"\nmean ± std over {args.seeds} seed(s); z = 0; toy FLAME mesh (mm); PPE in rad; "
          f"{args.steps} steps (cap {args.run_seconds or 'none'} s) per run, lr {args.lr}, batch {args.batch_size}\n")
    print(format_table(table, spread))
    checks = {}
    if {"full", "mono"} <= set(table):
        checks["full < mono on LVE_l2"] = table["full"]["LVE_l2"] < table["mono"]["LVE_l2"]
    for other in ("no_prior", "no_bgm"):
        if {"full", other} <= set(table):
            checks[f"full < {other} on PPE"] = table["full"]["PPE"] < table[other]["PPE"]
    print()
    for k, ok in checks.items():
        print(f"{'yes' if ok else 'NO '}  {k}")
    report = {"args": vars(args), "table": table, "spread": spread, "checks": checks,
              "runs": [{k: r[k] for k in ("variant", "seed", "train", "metrics")} for r in results],
              "wall_s": time.time() - t0}
    (work / "bench_learnability.json").write_text(json.dumps(report, indent=2))
    print(f"\n{work / 'bench_learnability.json'} ({time.time() - t0:.0f} s)")
    return report


if __name__ == "__main__":
    main()
