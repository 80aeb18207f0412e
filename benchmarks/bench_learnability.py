"""Learnability benchmark: can PaChorus, its ablations and the baselines learn the synthetic rules?

A thin wrapper of ``pachorus bench`` (pachorus/bench.py): on a fresh ``pachorus synth`` LMDB (host
loudness -> jaw, host spectrum -> expression, the mouth opening 0.1 s BEFORE each host phrase onset,
partner onsets -> yaw turns, BGM beats -> nods) it trains full, no_prior, no_bgm, no_kl, mono and
faceformer for equal steps over 3 seeds, evaluates on the test split on a generated toy FLAME head
(vertex metrics compare rows only) and writes Table 2 / Table 3 (Markdown + CSV), metrics.png and
results.json into --out, with every ordering marked established (gap > 2 std) or not.

    python benchmarks/bench_learnability.py --out /tmp/bench            # the default: 6 variants x 3 seeds
    python benchmarks/bench_learnability.py --out /tmp/quick --steps 50 --seeds 2 --variants full,mono

Rerunning into the same --out reuses complete runs and resumes unfinished ones.

What the rules are built to show: full < mono and full < faceformer on LVE (the anticipation rule
needs the host audio AHEAD of frame t, which the causal baselines do not see), full < no_prior and
full < no_bgm on PPE (partner turns and beat nods reach the model only through the prior).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> dict:
    from pachorus.bench import VARIANTS, BenchConfig, run_bench
    d = BenchConfig(out="")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="bench folder (default: a new temp dir)")
    ap.add_argument("--data", default=None, help="packed LMDB (default: a synthetic one in --out)")
    ap.add_argument("--flame", default=None, help="FLAME folder (default: a generated toy head)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--seeds", type=int, default=d.seeds)
    ap.add_argument("--steps", type=int, default=d.steps, help="training steps of every run")
    ap.add_argument("--jobs", type=int, default=d.jobs, help="parallel runs (one thread each)")
    ap.add_argument("--videos", type=int, default=d.synth_videos)
    ap.add_argument("--seconds", type=float, default=d.synth_seconds)
    ap.add_argument("--window", type=int, default=d.synth_window)
    args = ap.parse_args(argv)
    out = args.out or tempfile.mkdtemp(prefix="pachorus_bench_")
    cfg = BenchConfig(out=out, data=args.data, flame=args.flame,
                      variants=tuple(v for v in args.variants.split(",") if v), seeds=args.seeds, steps=args.steps,
                      jobs=args.jobs, synth_videos=args.videos, synth_seconds=args.seconds,
                      synth_window=args.window)
    return run_bench(cfg, log=lambda m: print(m, flush=True))


if __name__ == "__main__":
    main()
