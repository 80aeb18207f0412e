"""Benchmark the crop stage against the naive facenet-pytorch loop on a generated duet clip.

    python benchmarks/bench_crop.py [--seconds 12] [--size 1024] [--naive-frames 60] [--threads 1]

The clip is 30 fps, size×size, with two real faces (astronaut, Grace Hopper) at known positions, one
per half; the right one leaves for 1 s. Printed:
  * naive loop: one ``MTCNN().detect()`` per half-frame at full resolution, default parameters,
    frames/s (on the first --naive-frames frames: it is slow) and accuracy vs the known positions;
  * the crop stage (decode + detect + crop + JPEG save), frames/s on the whole clip, and accuracy;
  * speed ratio, IoU of the stage's boxes vs the naive boxes, and the real-time factor.
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

from synth_video import box_iou, write_duet_video  # noqa: E402

from chorushead.core.manifest import Record  # noqa: E402
from chorushead.core.media import iter_frames  # noqa: E402
from chorushead.stages.base import Context, Item  # noqa: E402
from chorushead.stages.crop import STAGE, CropParams  # noqa: E402


def accuracy(boxes: np.ndarray, truth: np.ndarray) -> dict:
    """Mean/min IoU on frames where both have a face; faces missed and invented (by strip-frame)."""
    have, want = ~np.isnan(boxes[..., 0]), ~np.isnan(truth[..., 0])
    iou = box_iou(boxes, truth)[have & want]
    return {"mean_iou": float(iou.mean()) if iou.size else float("nan"),
            "min_iou": float(iou.min()) if iou.size else float("nan"),
            "iou_ge_0.8": float((iou >= 0.8).mean()) if iou.size else float("nan"),
            "missed": int((want & ~have).sum()), "invented": int((have & ~want).sum()),
            "faces": int(want.sum())}


def naive_loop(video: Path, n_frames: int, strips: int = 2) -> tuple[np.ndarray, float]:
    """The obvious implementation: MTCNN with defaults, one detect() per half-frame, full resolution."""
    from facenet_pytorch import MTCNN
    mtcnn = MTCNN(keep_all=True)
    boxes = np.full((strips, n_frames, 4), np.nan)
    t = 0
    t0 = time.perf_counter()
    for chunk in iter_frames(video, fps=30, n_frames=n_frames):
        sw = chunk.shape[2] // strips
        for frame in chunk:
            for k in range(strips):
                b, p = mtcnn.detect(frame[:, k * sw:(k + 1) * sw])
                if b is not None:
                    p = np.asarray(p, float)
                    if p[0] >= 0.9:                          # same confidence bar as the stage
                        boxes[k, t] = np.asarray(b[0], float)
            t += 1
    return boxes, time.perf_counter() - t0


def run_stage(video: Path, n_frames: int, size: int, params: CropParams, workdir: Path,
              ) -> tuple[dict, np.ndarray, float]:
    model = STAGE.setup(params)
    out = workdir / "out"
    item = Item(id="bench", source=str(video))
    tmp = item.dir(out) / "crop.tmp"
    tmp.mkdir(parents=True)
    rec = lambda stage, outputs: Record(item=item.id, stage=stage, status="done", fingerprint="x", outputs=outputs)
    ctx = Context(item=item, out=out, tmp=tmp, final=item.dir(out) / "crop",
                  upstream={"ingest": rec("ingest", {"source": str(video), "width": size, "height": size}),
                            "vad": rec("vad", {"start_frame": 0, "end_frame": n_frames})})
    t0 = time.perf_counter()
    res = STAGE.process(ctx, params, model)
    wall = time.perf_counter() - t0
    det = np.load(tmp / "detections.npz")
    return res.metrics, det["boxes"].astype(np.float64), wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--naive-frames", type=int, default=60, help="frames for the (slow) naive loop")
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
    print(f"load average before: {os.getloadavg()}  (cores: {os.cpu_count()})")
    print(f"params: {params}")

    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        video = work / "duet.mp4"
        t0 = time.perf_counter()
        truth = write_duet_video(video, n, size=(args.size, args.size), absent=absent, seed=7)
        print(f"clip: {n} frames ({n / 30:.1f} s) {args.size}x{args.size}, strip 1 absent {absent}, "
              f"generated in {time.perf_counter() - t0:.1f} s")

        t0 = time.perf_counter()
        m = sum(len(c) for c in iter_frames(video, fps=30))
        dec = time.perf_counter() - t0
        print(f"decode only: {m / dec:.0f} frames/s")

        nn = min(args.naive_frames, n)
        naive_boxes, naive_s = naive_loop(video, nn)
        naive_fps = nn / naive_s
        acc_naive = accuracy(naive_boxes, truth[:, :nn])
        print(f"naive loop ({nn} frames): {naive_fps:.2f} frames/s; vs truth {fmt(acc_naive)}")

        metrics, boxes, wall = run_stage(video, n, args.size, params, work)
        stage_fps = n / wall
        print(f"crop stage ({n} frames): {stage_fps:.1f} frames/s (decode wait {metrics['decode_wait_s']} s, "
              f"detect {metrics['detect_s']} s, save {metrics['save_s']} s, total {wall:.1f} s; "
              f"detector ran on {metrics['detected_fraction']:.0%} of strip-frames)")
        print(f"crop stage vs truth (all frames): {fmt(accuracy(boxes, truth))}")
        print(f"crop stage vs truth (first {nn}): {fmt(accuracy(boxes[:, :nn], truth[:, :nn]))}")
        both = ~np.isnan(boxes[:, :nn, 0]) & ~np.isnan(naive_boxes[..., 0])
        iou_vn = box_iou(boxes[:, :nn], naive_boxes)[both]
        print(f"crop stage vs naive boxes (first {nn}): mean IoU {iou_vn.mean():.3f}, min {iou_vn.min():.3f}")
        print(f"speed-up vs naive: {stage_fps / naive_fps:.1f}x")
        print(f"real-time factor (decode+detect+save time / clip duration): {wall / (n / 30):.2f} "
              f"({(n / 30) / wall:.2f}x real time)")
    print(f"load average after: {os.getloadavg()}")


def fmt(a: dict) -> str:
    return (f"mean IoU {a['mean_iou']:.3f} (min {a['min_iou']:.3f}, {a['iou_ge_0.8']:.0%} >= 0.8), "
            f"missed {a['missed']}/{a['faces']}, invented {a['invented']}")


if __name__ == "__main__":
    main()
