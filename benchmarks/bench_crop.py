"""Benchmark the crop stage against the naive facenet-pytorch loop on a generated duet clip.

    python benchmarks/bench_crop.py [--seconds 12] [--size 1024] [--naive-frames 40] [--threads 1] [--json F]

Figures also go to benchmarks/results/bench_crop.json (or --json) (git-ignored; `python benchmarks/table.py --take bench_crop` records them for the README's table).

The clip is 30 fps, size×size, with two real faces (astronaut, Grace Hopper) at known positions, one
per half; the right one leaves for 1 s and returns. Printed:
  * naive loop: one ``MTCNN().detect()`` per half-frame at full resolution, default parameters, on
    --naive-frames frames spread over the clip (it is slow) including the frames where the singer
    leaves and returns; frames/s (its detect time plus its share of decoding) and accuracy vs the
    known positions (mean and 5th-percentile IoU, faces missed / invented); half of its frames run
    before the stage and half after, so both arms see about the same load;
  * the crop stage (decode + detect + crop + JPEG save), frames/s on the whole clip, its accuracy on
    every frame and on the naive loop's frames;
  * the speed ratio by wall time (the target: >= 30x, IoU mean and p5 >= naive's, none missed or
    invented) and by CPU time (ffmpeg's and the JPEG writer's CPU counted too: it runs beside MTCNN).
Both use the same torch thread count (--threads), so the ratio compares algorithms, not threading.
The machine may be shared: the load average before and after is printed; compare runs with care.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from synth_video import box_iou, write_duet_video  # noqa: E402
from _results import Recorder, cpu_seconds  # noqa: E402

from chorushead.core.manifest import Record  # noqa: E402
from chorushead.core.media import iter_frames  # noqa: E402
from chorushead.stages.base import Context, Item  # noqa: E402
from chorushead.stages.crop import STAGE, Params as CropParams  # noqa: E402


def accuracy(boxes: np.ndarray, truth: np.ndarray) -> dict:
    """Mean/5th-percentile/min IoU on frames where both have a face; faces missed and invented (by
    strip-frame)."""
    have, want = ~np.isnan(boxes[..., 0]), ~np.isnan(truth[..., 0])
    iou = box_iou(boxes, truth)[have & want]
    return {"mean_iou": float(iou.mean()) if iou.size else float("nan"),
            "p5_iou": float(np.percentile(iou, 5)) if iou.size else float("nan"),
            "min_iou": float(iou.min()) if iou.size else float("nan"),
            "iou_ge_0.8": float((iou >= 0.8).mean()) if iou.size else float("nan"),
            "missed": int((want & ~have).sum()), "invented": int((have & ~want).sum()),
            "faces": int(want.sum())}


def naive_loop(video: Path, frames: np.ndarray, strips: int = 2) -> tuple[np.ndarray, float, float]:
    """The obvious implementation: MTCNN with defaults, one detect() per half-frame, full resolution,
    on the frames numbered ``frames``. Returns boxes (strips, len(frames), 4) and the wall and CPU
    seconds spent in detect() (decoding is added by the caller, at the measured decode rate)."""
    from facenet_pytorch import MTCNN
    mtcnn = MTCNN(keep_all=True)
    boxes = np.full((strips, len(frames), 4), np.nan)
    want = {int(f): i for i, f in enumerate(frames)}
    t, spent, cpu = 0, 0.0, 0.0
    for chunk in iter_frames(video, fps=30, n_frames=int(frames.max()) + 1):
        sw = chunk.shape[2] // strips
        for frame in chunk:
            if t in want:
                t0, c0 = time.perf_counter(), time.process_time()
                for k in range(strips):
                    b, p = mtcnn.detect(frame[:, k * sw:(k + 1) * sw])
                    if b is not None:
                        p = np.asarray(p, float)
                        if p[0] >= 0.9:                      # same confidence bar as the stage
                            boxes[k, want[t]] = np.asarray(b[0], float)
                spent += time.perf_counter() - t0
                cpu += time.process_time() - c0
            t += 1
    return boxes, spent, cpu


def run_stage(video: Path, n_frames: int, size: int, params: CropParams, workdir: Path,
              ) -> tuple[dict, np.ndarray, float, float]:
    model = STAGE.setup(params)
    out = workdir / "out"
    item = Item(id="bench", source=str(video))
    tmp = item.dir(out) / "crop.tmp"
    tmp.mkdir(parents=True)
    rec = lambda stage, outputs: Record(item=item.id, stage=stage, status="done", fingerprint="x", outputs=outputs)
    ctx = Context(item=item, out=out, tmp=tmp, final=item.dir(out) / "crop",
                  upstream={"ingest": rec("ingest", {"source": str(video), "width": size, "height": size}),
                            "vad": rec("vad", {"start_frame": 0, "end_frame": n_frames})})
    t0, c0 = time.perf_counter(), cpu_seconds()
    res = STAGE.process(ctx, params, model)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    det = np.load(tmp / "detections.npz")
    return res.metrics, det["boxes"].astype(np.float64), wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--naive-frames", type=int, default=40, help="frames for the (slow) naive loop")
    ap.add_argument("--json", type=Path, help="write the figures here (default benchmarks/results/bench_crop.json)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads for both paths")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a CropParams override")
    args = ap.parse_args()

    import torch
    torch.set_num_threads(args.threads)
    overrides = {}
    for kv in args.set:
        name, value = kv.split("=", 1)
        overrides[name] = type(getattr(CropParams(), name))(value)
    params = CropParams(torch_threads=args.threads, **overrides)
    n = int(round(args.seconds * 30))
    absent = (int(n * 0.4), int(n * 0.4) + 30)
    rec = Recorder("bench_crop")
    say = rec.say

    say(f"load average before: {os.getloadavg()}  (cores: {os.cpu_count()})")
    say(f"params: {params}")

    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        video = work / "duet.mp4"
        t0 = time.perf_counter()
        truth = write_duet_video(video, n, size=(args.size, args.size), absent=absent, seed=7)
        say(f"clip: {n} frames ({n / 30:.1f} s) {args.size}x{args.size}, strip 1 absent {absent}, "
              f"generated in {time.perf_counter() - t0:.1f} s")

        t0, c0 = time.perf_counter(), cpu_seconds()
        m = sum(len(c) for c in iter_frames(video, fps=30))
        dec, dec_cpu = time.perf_counter() - t0, cpu_seconds() - c0
        say(f"decode only: {m / dec:.0f} frames/s")

        # Naive frames: spread over the clip, plus both sides of the singer leaving and returning.
        edges = [absent[0] - 1, absent[0], absent[1] - 1, absent[1]]
        picks = np.unique(np.r_[np.linspace(0, n - 1, max(2, args.naive_frames - 4)).round(), edges]
                          .clip(0, n - 1).astype(int))
        # Half the naive frames before the stage and half after, so both arms see about the same load.
        first, second = picks[0::2], picks[1::2]
        nb1, ns1, nc1 = naive_loop(video, first)
        metrics, boxes, wall, stage_cpu = run_stage(video, n, args.size, params, work)
        nb2, ns2, nc2 = naive_loop(video, second)
        naive_boxes = np.empty((2, len(picks), 4))
        naive_boxes[:, 0::2], naive_boxes[:, 1::2] = nb1, nb2
        naive_s = ns1 + ns2 + len(picks) / (m / dec)            # its detect time + its share of decoding
        naive_cpu = nc1 + nc2 + len(picks) * dec_cpu / m
        naive_fps = len(picks) / naive_s
        acc_naive = accuracy(naive_boxes, truth[:, picks])
        say(f"naive loop ({len(picks)} frames incl. {edges}, half before and half after the stage): "
            f"{naive_fps:.2f} frames/s; vs truth {fmt(acc_naive)}")
        stage_fps = n / wall
        say(f"crop stage ({n} frames): {stage_fps:.1f} frames/s (decode wait {metrics['decode_wait_s']} s, "
              f"detect {metrics['detect_s']} s, save {metrics['save_s']} s, total {wall:.1f} s; "
              f"full pyramid on {metrics['detected_fraction']:.1%} of strip-frames, R-Net/O-Net on the rest)")
        acc_all, acc_same = accuracy(boxes, truth), accuracy(boxes[:, picks], truth[:, picks])
        say(f"crop stage vs truth (all frames): {fmt(acc_all)}")
        say(f"crop stage vs truth (naive's {len(picks)} frames): {fmt(acc_same)}")
        both = ~np.isnan(boxes[:, picks, 0]) & ~np.isnan(naive_boxes[..., 0])
        iou_vn = box_iou(boxes[:, picks], naive_boxes)[both]
        say(f"crop stage vs naive boxes: mean IoU {iou_vn.mean():.3f}, min {iou_vn.min():.3f}")
        ratio = stage_fps / naive_fps
        ok = {"speed >= 30x": ratio >= 30,
              "mean IoU >= naive": min(acc_all["mean_iou"], acc_same["mean_iou"]) >= acc_naive["mean_iou"],
              "p5 IoU >= naive": min(acc_all["p5_iou"], acc_same["p5_iou"]) >= acc_naive["p5_iou"],
              "none missed or invented": acc_all["missed"] + acc_all["invented"] == 0}
        cpu_ratio = (naive_cpu / len(picks)) / (stage_cpu / n)
        say(f"speed-up vs naive: {ratio:.1f}x by wall time; {cpu_ratio:.1f}x by CPU time (naive "
            f"{naive_cpu / len(picks) * 1e3:.0f} ms/frame, stage {stage_cpu / n * 1e3:.1f} ms/frame incl. ffmpeg)")
        say(f"real-time factor (decode+detect+save time / clip duration): {wall / (n / 30):.2f} "
              f"({(n / 30) / wall:.2f}x real time)")
        say("targets: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in ok.items()))
    say(f"load average after: {os.getloadavg()}")
    clip = f"{args.size}×{args.size}, {n / 30:g} s, real faces, one leaving and returning; {args.threads} torch thread"
    rec.row(f"crop vs a naive per-frame MTCNN loop ({clip})",
            f"**{ratio:.1f}×** faster ({cpu_ratio:.1f}× by CPU time); IoU vs the known positions mean {acc_all['mean_iou']:.3f} / p5 "
            f"{acc_all['p5_iou']:.3f} (naive loop {acc_naive['mean_iou']:.3f} / {acc_naive['p5_iou']:.3f}); "
            f"missed {acc_all['missed']} / invented {acc_all['invented']} (naive {acc_naive['missed']} / "
            f"{acc_naive['invented']})", speedup=ratio, speedup_cpu=cpu_ratio, stage_fps=stage_fps, naive_fps=naive_fps,
            iou_mean=acc_all["mean_iou"], iou_p5=acc_all["p5_iou"], naive_iou_mean=acc_naive["mean_iou"],
            naive_iou_p5=acc_naive["p5_iou"], missed=acc_all["missed"], invented=acc_all["invented"],
            naive_missed=acc_naive["missed"], naive_invented=acc_naive["invented"])
    rec.row("crop stage alone (decode + MTCNN + JPEG crops)",
            f"{stage_fps:.1f} frames/s = {(n / 30) / wall:.2f}× real time (naive loop {naive_fps:.2f} frames/s); "
            f"full pyramid on {metrics['detected_fraction']:.1%} of strip-frames",
            decode_fps=m / dec, detected_fraction=metrics["detected_fraction"], detect_s=metrics["detect_s"],
            save_s=metrics["save_s"], decode_wait_s=metrics["decode_wait_s"])
    rec.write(path=args.json)


def fmt(a: dict) -> str:
    return (f"mean IoU {a['mean_iou']:.3f} (p5 {a['p5_iou']:.3f}, min {a['min_iou']:.3f}, {a['iou_ge_0.8']:.0%} >= 0.8), "
            f"missed {a['missed']}/{a['faces']}, invented {a['invented']}")


if __name__ == "__main__":
    main()
