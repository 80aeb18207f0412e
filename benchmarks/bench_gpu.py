"""The GPU paths, each beside its CPU baseline measured in the same run: one short script for a lent
GPU machine (issue 12, part 6).

    python benchmarks/bench_gpu.py [--quick] [--sections crop,duet_split,fit,train] [--json FILE]

Without CUDA it measures the CPU side only and says so: the GPU figures need a machine with one.
Figures also go to benchmarks/results/bench_gpu.json (or --json) (git-ignored; `python benchmarks/table.py --take bench_gpu` records them for the README's table),
marked with the card's name.

- crop: the crop stage on bench_crop's generated duet clip (real faces), device cpu vs cuda, MTCNN
  batches of ``batch_size`` strips per call: frames/s and the share of strip-frames that ran the full
  pyramid.
- duet_split: bench_duet_split's random-weight MossFormer2 (the architecture's cost, not separation
  quality) on a synthetic song in overlapping chunks, batch 1 and 4 chunks per forward pass, per
  device: seconds and peak memory (CPU: RSS above the loaded model; CUDA: max allocated).
- fit: EMOCA's API through the stand-in package (tests/stand_ins: a trivial network, so this times
  our side: JPEG reads, batching, host-to-device copies, writing the segments) over the crop run's
  crops, batch 1 / 8 / 32 images, per device: images/s.
- train: ``pachorus train`` on a synthetic LMDB (``pachorus synth``), steps/s after warm-up: CPU,
  CUDA float32, CUDA with AMP, and CUDA with AMP under ``torchrun --nproc_per_node 1`` (the DDP path).

``--quick`` shrinks every size (a smoke run: the test suite runs it on CPU); its figures mean little.
The machine may be shared: the load average is printed before and after.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "benchmarks"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(HERE))

from _results import Recorder  # noqa: E402

SECTIONS = ("crop", "duet_split", "fit", "train")   # run in this order; fit fits the crop run's crops


@dataclass
class Sizes:
    crop_frames: int = 300          # 10 s at 30 fps
    crop_size: int = 1024
    song_s: float = 60.0
    chunk_s: float = 16.0
    overlap_s: float = 4.0
    m2_channels: int = 64
    m2_blocks: int = 2
    fit_batches: tuple[int, ...] = (1, 8, 32)
    train_steps: int = 200
    train_warmup: int = 20
    train_batch: int = 16
    synth_videos: int = 12


QUICK = Sizes(crop_frames=40, crop_size=256, song_s=6.0, chunk_s=4.0, overlap_s=1.0, m2_channels=16,
              m2_blocks=1, fit_batches=(1, 8), train_steps=12, train_warmup=4, train_batch=4, synth_videos=4)


def devices() -> list[str]:
    import torch
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def crop_section(work: Path, z: Sizes, rec: Recorder, state: dict) -> None:
    """Leaves the folder of the (last) crop run's strips in ``state["strips"]``, for the fit section."""
    from bench_crop import run_stage
    from synth_video import write_duet_video

    from chorushead.stages.crop import Params as CropParams
    video = work / "duet.mp4"
    write_duet_video(video, z.crop_frames, size=(z.crop_size, z.crop_size), seed=7)
    figures = []
    for dev in devices():
        for batch in ((16,) if dev == "cpu" else (16, 64)):
            run = work / f"crop-{dev}-{batch}"
            metrics, _, wall, cpu = run_stage(video, z.crop_frames, z.crop_size,
                                              CropParams(device=dev, batch_size=batch, torch_threads=1), run)
            fps = z.crop_frames / wall
            rec.say(f"crop {dev} batch {batch}: {fps:.1f} frames/s ({wall:.2f} s, {cpu:.2f} CPU-s), full pyramid on "
                f"{metrics['detected_fraction']:.1%} of strip-frames")
            figures.append({"device": dev, "batch": batch, "frames_per_s": round(fps, 1), "cpu_s": round(cpu, 2)})
            state["strips"] = next(run.rglob("crop.tmp"))
    base = figures[0]["frames_per_s"]
    rec.row(f"crop stage ({z.crop_frames} frames {z.crop_size}², real faces), frames/s by device and MTCNN batch",
            ", ".join(f"{f['device']} b={f['batch']} {f['frames_per_s']:.0f}/s ({f['frames_per_s'] / base:.2f}×)"
                      for f in figures), runs=figures, section="crop")


def duet_split_section(work: Path, z: Sizes, rec: Recorder, state: dict) -> None:
    from chorushead.backends.mossformer2 import write_random_model
    model = write_random_model(work / "m2", num_blocks=z.m2_blocks, channels=z.m2_channels)
    figures = []
    for dev in devices():
        for batch in (1, 4):
            cmd = [sys.executable, str(HERE / "bench_duet_split.py"), "--child", "--mode", "chunked",
                   "--song", str(z.song_s), "--batch", str(batch), "--model", str(model), "--chunk", str(z.chunk_s),
                   "--overlap", str(z.overlap_s), "--device", dev, "--threads", str(os.cpu_count() or 1)]
            p = subprocess.run(cmd, capture_output=True, text=True)
            lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
            if not lines:
                raise RuntimeError(f"duet_split on {dev} failed: {p.stderr.strip()[-400:]}")
            r = json.loads(lines[-1])
            rec.say(f"duet_split {dev} batch {batch}: {r['seconds']:.2f} s for a {z.song_s:g} s song "
                f"({r['x_realtime']:.1f}× real time), peak {r['peak_mb']:.0f} MB")
            figures.append(r)
    base = figures[0]["seconds"]
    rec.row(f"duet_split, random-weight MossFormer2 ({z.m2_channels} ch, {z.m2_blocks} blocks), {z.song_s:g} s song "
            f"in {z.chunk_s:g} s chunks: seconds, peak memory",
            ", ".join(f"{r['device']} b={r['batch']} {r['seconds']:.1f} s ({base / r['seconds']:.2f}×) "
                      f"{r['peak_mb']:.0f} MB" for r in figures), runs=figures, section="duet_split")


def fit_section(work: Path, z: Sizes, rec: Recorder, state: dict) -> None:
    """EMOCA's runner in this process, on the stand-in package (its network is trivial)."""
    if "strips" not in state:          # fit alone: crop a small clip first
        crop_section(work, QUICK, Recorder("bench_gpu-crops-for-fit"), state)   # its figures: not this run's
    strips = state["strips"]
    sys.path.insert(0, str(ROOT / "tests" / "stand_ins"))
    os.environ.pop("CHORUSHEAD_EMOCA_PYTHON", None)    # the stand-in, in this process: not a real EMOCA env
    from chorushead.backends.emoca import EmocaBackend
    n = min(len(list((strips / f"strip{k}").glob("*.jpg"))) for k in range(2))
    if n == 0:
        raise RuntimeError(f"the crop run left no crops in {strips}: nothing to fit")
    models = work / "emoca-models"
    (models / "EMOCA_v2_lr_mse_20").mkdir(parents=True, exist_ok=True)
    (models / "EMOCA_v2_lr_mse_20" / "cfg.yaml").write_text("model: {}\n")
    figures = []
    for dev in devices():
        backend = EmocaBackend.open(models=str(models), device=dev)
        try:
            for batch in z.fit_batches:
                out = work / f"fit-{dev}-{batch}"
                out.mkdir()
                t0 = time.perf_counter()
                _, images = backend.fit([str(strips / "strip0"), str(strips / "strip1")], [(0, n)], out, batch)
                wall = time.perf_counter() - t0
                rec.say(f"fit (EMOCA stand-in) {dev} batch {batch}: {images / wall:.0f} images/s ({images} images)")
                figures.append({"device": dev, "batch": batch, "images_per_s": round(images / wall, 1)})
        finally:
            backend.close()
    base = figures[0]["images_per_s"]
    rec.row("fit through EMOCA's API (stand-in network: our reading, batching, copies), images/s",
            ", ".join(f"{f['device']} b={f['batch']} {f['images_per_s']:.0f}/s ({f['images_per_s'] / base:.2f}×)"
                      for f in figures), runs=figures, section="fit")


def _steps_per_s(run: Path, warmup: int) -> float:
    steps = [json.loads(ln) for ln in (run / "log.jsonl").read_text().splitlines()]
    steps = [s for s in steps if s.get("type") == "train"]
    a, b = steps[min(warmup, len(steps) - 2)], steps[-1]
    return (b["step"] - a["step"]) / max(b["time"] - a["time"], 1e-9)


def train_section(work: Path, z: Sizes, rec: Recorder, state: dict) -> None:
    data = work / "synth.lmdb"
    subprocess.run([sys.executable, "-m", "pachorus.cli", "synth", "--out", str(data), "--videos", str(z.synth_videos),
                    "--seconds", "10", "--window", "60"], check=True, capture_output=True, text=True)
    common = ["train", "--data", str(data), "--max-steps", str(z.train_steps), "--batch-size", str(z.train_batch),
              "--no-progress", "--ckpt-every", "0"]
    runs = [("cpu", [], ["--device", "cpu"])]
    if "cuda" in devices():
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
                    "-m", "pachorus.cli"]
        runs += [("cuda float32", [], ["--device", "cuda", "--no-amp"]),
                 ("cuda AMP", [], ["--device", "cuda", "--amp"]),
                 ("cuda AMP, torchrun 1 GPU", torchrun, ["--device", "cuda", "--amp"])]
    figures = []
    for name, launcher, flags in runs:
        out = work / f"train-{name.replace(' ', '_').replace(',', '')}"
        cmd = (launcher or [sys.executable, "-m", "pachorus.cli"]) + common + ["--out", str(out)] + flags
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"pachorus train ({name}) failed: {p.stderr.strip()[-400:]}")
        sps = _steps_per_s(out, z.train_warmup)
        rec.say(f"train {name}: {sps:.1f} steps/s (batch {z.train_batch}, after {z.train_warmup} warm-up steps)")
        figures.append({"run": name, "steps_per_s": round(sps, 2)})
    base = figures[0]["steps_per_s"]
    rec.row(f"pachorus train steps/s (batch {z.train_batch}, synthetic LMDB, default model)",
            ", ".join(f"{f['run']} {f['steps_per_s']:.1f}/s ({f['steps_per_s'] / base:.2f}×)" for f in figures),
            runs=figures, section="train")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run, figures mean little")
    ap.add_argument("--sections", default=",".join(SECTIONS), help="comma list of " + ", ".join(SECTIONS))
    ap.add_argument("--json", type=Path, help="write the figures here (default benchmarks/results/bench_gpu.json)")
    args = ap.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        ap.error(f"unknown section(s) {unknown}; known: {', '.join(SECTIONS)}")
    z = QUICK if args.quick else Sizes()

    import torch
    rec = Recorder("bench_gpu")

    card = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    rec.say(f"load average before: {os.getloadavg()}  (cores: {os.cpu_count()}); GPU: {card or 'none'}")
    if card is None:
        rec.say("no CUDA device here: measuring the CPU side only (the GPU figures need a machine with CUDA)")
    run = {"crop": crop_section, "duet_split": duet_split_section, "fit": fit_section, "train": train_section}
    work = Path(tempfile.mkdtemp(prefix="bench_gpu-"))
    state: dict = {}
    try:
        for name in (s for s in SECTIONS if s in sections):
            t0 = time.perf_counter()
            run[name](work, z, rec, state)
            rec.say(f"[{name}: {time.perf_counter() - t0:.0f} s]")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rec.say(f"load average after: {os.getloadavg()}")
    note = ("" if card else "no CUDA device: CPU side only; ") + ("--quick sizes: a smoke run" if args.quick else "")
    rec.write(note=note.strip("; "), path=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
