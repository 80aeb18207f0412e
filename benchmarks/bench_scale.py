"""ChorusHead at scale, by simulation: what this 2-core machine cannot show (issue 21, part 5).

    python benchmarks/bench_scale.py [--videos 1000] [--workers 8,32,128] [--seed 0] [--gpu-json FILE]

Replays per-stage costs (seconds of one worker per second of video) for a corpus of ``--videos``
chorus videos (durations log-normal, median 4 min, the paper's sources are songs) on clusters of N
CPU workers and N/8 GPUs (a node = 8 CPU workers + 1 GPU), under two schedulers:

- **barrier**: stage s starts on any video only when stage s-1 is done on all of them; within a
  stage its pool takes the videos longest first;
- **pack-waits** (``chorushead build --pack-at-end``): the per-video stages stream, but pack, which
  splits the dataset by video, waits until every video is through assign;
- **early-8ths** (today's default, runner.EarlyGlobal): as pack-waits, but once every video is past
  the fingerprint stage, pack runs each time another eighth of the videos is through;
- **streaming**: each video moves to its next stage as soon as it is done, pack included (a video's
  split does not depend on the others'); each pool (CPU, GPU, and the one LMDB appender) takes
  ready work longest-remaining-chain first.

It prints, per cluster size and scheduler, the predicted wall hours per 1,000 hours of video, the time
until the first window is packed, and the efficiency against the critical-path bound
``max(CPU work / CPU workers, GPU work / GPUs, appender work, longest video's own chain)``: no schedule
can beat that bound.

Costs, and where each comes from (printed with the table):
- measured here (benchmarks/recorded/bench_stages.json, 30 s 1024² clip, one job on this 2-core VM):
  ingest, vad, crop (ffmpeg decode + MTCNN + JPEG: the CPU pool's big item), contiguity;
- measured here with the real MediaPipe face mesh: the landmark fit, 7.2 ms per crop (240 crops in
  1.73 s), 2 singers × 30 fps; the simulation's fit is EMOCA on the GPU pool, below;
- published: Spleeter separates "4 stems 100x faster than real-time when run on a GPU" (deezer/spleeter
  README); we take 2 stems at the same rate;
- **assumed** (no published figure; replace with `bench_gpu.py` results through ``--gpu-json``):
  MossFormer2 on a GPU 20× its measured 2-core CPU rate (bench_duet_split: 1.19× real time chunked);
  EMOCA v2 at 500 crops/s on one GPU (a ResNet-50 encoder plus FLAME decoding per crop);
- small: smooth and assign ~1 ms per video second on the CPU pool; pack through ONE appender at
  2 ms per video second (LMDB has one writer).
No transfer, start-up or failure costs are modelled: the figures are an upper bound on what a runner
can reach, and the ratio between the schedulers is the point.
"""
from __future__ import annotations

import argparse
import heapq
import math
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import Recorder  # noqa: E402

RECORDED = Path(__file__).resolve().parent / "recorded"
FPS = 30
SINGERS = 2


@dataclass(frozen=True)
class StageCost:
    name: str
    pool: str              # cpu | gpu | appender
    per_second: float      # worker-seconds per second of video
    source: str


def stage_costs(gpu_json: Path | None = None) -> list[StageCost]:
    """The pipeline's stages in order, with their costs (see the module doc)."""
    rec = json.loads((RECORDED / "bench_stages.json").read_text())
    n = rec["rows"][0]["numbers"]
    clip = 30.0                                          # bench_stages' clip length, seconds
    duet = json.loads((RECORDED / "bench_duet_split.json").read_text())
    cpu_rt = next(r for r in duet["rows"][1]["numbers"]["runs"] if r["mode"] == "chunked" and r["batch"] == 4)
    mossformer_gpu_speedup, emoca_crops_per_s = 20.0, 500.0
    src_moss = "assumed: 20x its 2-core CPU rate"
    src_emoca = "assumed: 500 crops/s on one GPU"
    if gpu_json is not None:                             # bench_gpu.py figures from a lent GPU replace assumptions
        g = json.loads(gpu_json.read_text())
        nums = {k: v for r in g.get("rows", []) for k, v in r.get("numbers", {}).items()}
        if nums.get("duet_split_cuda_x_realtime"):
            mossformer_gpu_speedup = nums["duet_split_cuda_x_realtime"] * cpu_rt["seconds"] / cpu_rt["song_s"]
            src_moss = f"bench_gpu: {nums['duet_split_cuda_x_realtime']:.1f}x real time"
        if nums.get("fit_cuda_images_per_s"):
            emoca_crops_per_s = nums["fit_cuda_images_per_s"]
            src_emoca = f"bench_gpu: {emoca_crops_per_s:.0f} crops/s"
    moss_cpu = cpu_rt["seconds"] / cpu_rt["song_s"]
    return [
        StageCost("ingest", "cpu", n["ingest_s"] / clip, "measured (bench_stages)"),
        StageCost("fingerprint", "cpu", 0.3 / 12, "measured (fpcalc + frame hashes, 0.24-0.33 s per 12 s video)"),
        StageCost("bgm_split", "gpu", 1 / 100, "published: Spleeter README, 100x real time on a GPU"),
        StageCost("duet_split", "gpu", moss_cpu / mossformer_gpu_speedup, src_moss),
        StageCost("vad", "cpu", n["vad_s"] / clip, "measured (bench_stages)"),
        StageCost("crop", "cpu", n["crop_s"] / clip, "measured (bench_stages)"),
        StageCost("contiguity", "cpu", n["contiguity_s"] / clip, "measured (bench_stages)"),
        StageCost("fit", "gpu", SINGERS * FPS / emoca_crops_per_s, src_emoca),
        StageCost("smooth", "cpu", 0.001, "small"),
        StageCost("assign", "cpu", 0.001, "small"),
        StageCost("pack", "appender", 0.002, "one LMDB writer"),
    ]


def corpus(n: int, seed: int) -> np.ndarray:
    """Video lengths in seconds: log-normal, median 4 min, clipped to 1-20 min."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(np.log(240.0), 0.5, n), 60.0, 1200.0)


def pools(workers: int) -> dict[str, int]:
    return {"cpu": workers, "gpu": max(1, workers // 8), "appender": 1}


def bound(durations: np.ndarray, stages: list[StageCost], workers: int) -> float:
    """No schedule finishes sooner: each pool's total work over its size, and the longest chain."""
    size = pools(workers)
    work = {p: sum(s.per_second for s in stages if s.pool == p) * durations.sum() for p in size}
    chain = max(durations) * sum(s.per_second for s in stages)
    return max([work[p] / size[p] for p in size] + [chain])


def run_barrier(durations: np.ndarray, stages: list[StageCost], workers: int, t: float = 0.0) -> tuple[float, float]:
    """(makespan, first pack done) with a barrier between stages; longest video first in each."""
    size = pools(workers)
    first_pack = None
    for s in stages:
        free = [t] * size[s.pool]
        ends = []
        for d in sorted(durations, reverse=True):
            start = heapq.heappop(free)
            end = start + d * s.per_second
            heapq.heappush(free, end)
            ends.append(end)
        if s.pool == "appender":
            first_pack = min(ends)
        t = max(ends)
    return t, first_pack


def run_streaming(durations: np.ndarray, stages: list[StageCost], workers: int, batch: int = 1,
                  gate: str | None = None) -> tuple[float, float]:
    """(makespan, first pack done) when each video moves on as soon as a stage is done: an event loop
    over the pools; ready work is taken longest remaining chain first. ``batch`` > 1: pack work is held
    until that many videos wait for it (or nothing else is left to run), and not before every video is
    past stage ``gate`` (the runner's early pack: runner.EarlyGlobal)."""
    size = pools(workers)
    gate_k = next((k for k, s in enumerate(stages) if s.name == gate), -1)
    held: list[int] = []
    past_gate = 0
    chain_left = [[d * sum(s.per_second for s in stages[k:]) for k in range(len(stages))] for d in durations]
    ready = {p: [] for p in size}               # heaps of (-remaining chain, video, stage index)
    idle = dict(size)
    events: list[tuple[float, int, int]] = []   # (finish time, video, stage index)
    for v in range(len(durations)):
        heapq.heappush(ready[stages[0].pool], (-chain_left[v][0], v, 0))
    now, done, first_pack = 0.0, 0, None

    def dispatch():
        for p in size:
            while idle[p] and ready[p]:
                _, v, k = heapq.heappop(ready[p])
                idle[p] -= 1
                heapq.heappush(events, (now + durations[v] * stages[k].per_second, v, k))

    def release():
        for v in held:
            k = len(stages) - 1
            heapq.heappush(ready[stages[k].pool], (-chain_left[v][k], v, k))
        held.clear()

    dispatch()
    while events or held:
        if not events:                       # nothing else is left to run: pack what waits
            release()
            dispatch()
            continue
        now, v, k = heapq.heappop(events)
        idle[stages[k].pool] += 1
        past_gate += k == gate_k
        if stages[k].pool == "appender" and first_pack is None:
            first_pack = now
        if k + 1 < len(stages) and batch > 1 and stages[k + 1].pool == "appender":
            held.append(v)
            if len(held) >= batch and past_gate >= len(durations) * (gate_k >= 0):
                release()
        elif k + 1 < len(stages):
            heapq.heappush(ready[stages[k + 1].pool], (-chain_left[v][k + 1], v, k + 1))
        else:
            done += 1
        dispatch()
    assert done == len(durations)
    return now, first_pack


def run_pack_waits(durations: np.ndarray, stages: list[StageCost], workers: int) -> tuple[float, float]:
    """``--pack-at-end``: the per-video stages stream, pack waits for every video, then packs them."""
    before, _ = run_streaming(durations, stages[:-1], workers)
    return run_barrier(durations, stages[-1:], workers, t=before)


def run_early_batches(durations: np.ndarray, stages: list[StageCost], workers: int) -> tuple[float, float]:
    """Today's runner: streams, and packs an eighth of the videos at a time once all are fingerprinted."""
    return run_streaming(durations, stages, workers, batch=max(1, math.ceil(len(durations) / 8)),
                         gate="fingerprint")


SCHEDULERS = (("barrier", run_barrier), ("pack-waits", run_pack_waits), ("early-8ths", run_early_batches),
              ("streaming", run_streaming))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", type=int, default=1000)
    ap.add_argument("--workers", default="8,32,128", help="CPU workers per cluster (GPUs = workers / 8)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gpu-json", type=Path, default=None, help="bench_gpu.py results to replace the assumptions")
    ap.add_argument("--json", type=Path, default=None, help="where the figures go (default benchmarks/results/)")
    args = ap.parse_args(argv)
    rec = Recorder("bench_scale")
    stages = stage_costs(args.gpu_json)
    durations = corpus(args.videos, args.seed)
    hours = durations.sum() / 3600
    rec.say(f"corpus: {args.videos} videos, {hours:.1f} h (median {np.median(durations) / 60:.1f} min, "
            f"longest {durations.max() / 60:.1f} min)")
    rec.say("stage costs (worker-seconds per video second):")
    for s in stages:
        rec.say(f"  {s.name:<11} {s.pool:<8} {s.per_second:8.4f}   {s.source}")
    rec.say("")
    rec.say(f"{'workers':>7} {'GPUs':>4}  {'scheduler':<10} {'wall h':>7} {'h per 1000 h':>12} "
            f"{'first window':>12} {'bound h/1000h':>13} {'efficiency':>10}")
    out = {}
    for w in [int(x) for x in args.workers.split(",")]:
        b = bound(durations, stages, w)
        for name, run in SCHEDULERS:
            span, first = run(durations, stages, w)
            per_1000 = span / 3600 / hours * 1000
            eff = b / span
            out[f"{name}:{w}"] = {"hours_per_1000h": per_1000, "first_pack_h": first / 3600, "efficiency": eff,
                                  "bound_hours_per_1000h": b / 3600 / hours * 1000}
            rec.say(f"{w:>7} {pools(w)['gpu']:>4}  {name:<10} {span / 3600:7.2f} {per_1000:12.2f} "
                    f"{first / 3600:11.2f}h {b / 3600 / hours * 1000:13.2f} {eff:10.3f}")
    for w in [int(x) for x in args.workers.split(",")]:
        s, b_, t_, e_ = (out[f"{k}:{w}"] for k in ("streaming", "barrier", "pack-waits", "early-8ths"))
        rec.row(f"{args.videos} simulated videos, {w} CPU workers + {pools(w)['gpu']} GPUs: full streaming / "
                f"today's early packs / --pack-at-end / stage barrier",
                f"{s['hours_per_1000h']:.1f} / {e_['hours_per_1000h']:.1f} / {t_['hours_per_1000h']:.1f} / "
                f"{b_['hours_per_1000h']:.1f} h per 1000 h of video; efficiency {s['efficiency']:.3f} / "
                f"{e_['efficiency']:.3f} / {t_['efficiency']:.3f} / {b_['efficiency']:.3f} of the critical-path bound; "
                f"first window after {s['first_pack_h'] * 60:.0f} / {e_['first_pack_h'] * 60:.0f} / "
                f"{t_['first_pack_h'] * 60:.0f} / {b_['first_pack_h'] * 60:.0f} min",
                streaming_h=s["hours_per_1000h"], barrier_h=b_["hours_per_1000h"], streaming_eff=s["efficiency"],
                barrier_eff=b_["efficiency"], pack_waits_h=t_["hours_per_1000h"], pack_waits_eff=t_["efficiency"],
                early_h=e_["hours_per_1000h"], early_eff=e_["efficiency"], first_pack_early_min=e_["first_pack_h"] * 60,
                first_pack_streaming_min=s["first_pack_h"] * 60, first_pack_pack_waits_min=t_["first_pack_h"] * 60,
                first_pack_barrier_min=b_["first_pack_h"] * 60)
    rec.write(path=args.json, note="simulation: replayed per-stage costs (measured here, published, and two "
                                   "assumed GPU rates; see the text), no transfer or start-up costs")
    return out


if __name__ == "__main__":
    main()
