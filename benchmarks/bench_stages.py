"""Time a build stage by stage on a generated clip, against ffmpeg's decode floor, and local vs Dask.

    python benchmarks/bench_stages.py [--seconds 60] [--size 1024] [--stems]
                                      [--copies 4] [--copy-seconds 8] [--scale local:1,dask:2]
                                      [--work DIR] [--json FILE]

Figures also go to benchmarks/results/bench_stages.json (or --json)
(git-ignored; `python benchmarks/table.py --take bench_stages` records them for the README's table).

1. A clip of ``--seconds`` at size×size, 30 fps (two real faces, singing, music; the built-in sample of
   :func:`chorushead.sample.write_sample`). ``--stems`` hands the build the clip's own stems, so
   bgm_split and duet_split are skipped (no Spleeter / MossFormer2 needed); without it they run and
   need their models. Where Spleeter's model is absent (a fresh machine), stems mode is used anyway,
   and the run says so.
2. The decode floor: ffmpeg decoding the whole clip to raw RGB frames through
   :func:`chorushead.core.media.iter_frames`, as every per-frame stage must at least.
3. The build run one stage at a time (ingest, bgm_split, duet_split, vad, crop, contiguity) in this
   process (local, jobs=1, as `chorushead build -j 1` does), printing per stage: seconds, items/s,
   frames/s, real-time factor (seconds of video per second of work; > 1 is faster than real time),
   and the stage's time over the decode floor. A stage's time includes loading its model.
4. Scaling: ``chorushead build`` of the same stages on ``--copies`` copies of a ``--copy-seconds``
   clip, once per ``--scale`` entry (backend:jobs), e.g. local jobs=1 vs a 2-worker Dask LocalCluster,
   each in a fresh interpreter so each pays its own start-up, imports and model loads. "cpu s" there
   is the CLI and every process under it (workers, their forkserver, ffmpeg, Ray's), sampled; "work
   s" is the first record's start to the last one's end (without the CLI's and the engine's start-up).
   "cpu bound" is the speed-up over the first run that this run would reach with its own CPU seconds
   spread over every core, none idle: a run whose engine spends CPU of its own (schedulers, event
   loops, per-worker imports) cannot beat it however well it schedules, and a run far below it lost
   time to idle cores (start-up, a last item alone) rather than to work.

The machine may be shared: the load average is printed before and after; compare runs with care.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from chorushead.core import media  # noqa: E402
from chorushead.sample import write_sample  # noqa: E402
from chorushead.core.manifest import Manifest  # noqa: E402
from chorushead.runner import Pipeline, build  # noqa: E402
from _results import Recorder, cpu_seconds  # noqa: E402

STAGES = ["ingest", "screen", "bgm_split", "duet_split", "vad", "crop", "contiguity"]
FPS = 30
# write_sample holds every frame in memory (1024×1024 RGB: ~94 MB per second of video), so longer
# clips are this many seconds generated once and then looped by ffmpeg without re-encoding.
GENERATE_SECONDS = 10.0


# ----------------------------------------------------------------------------- input
def make_clip(folder: Path, name: str, seconds: float, size: int) -> tuple[Path, Path]:
    """Write ``folder/videos/<name>.mp4`` and ``folder/stems/<name>/``; return (video, stems root)."""
    base = min(seconds, GENERATE_SECONDS)
    video, stems_root, _ = write_sample(folder, seconds=base, size=(size, size), fps=FPS, name=name)
    if seconds > base:
        looped = video.with_name(f".{video.name}")
        subprocess.run([media.ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-stream_loop", "-1",
                        "-i", str(video), "-t", f"{seconds:.3f}", "-c", "copy", str(looped)], check=True)
        os.replace(looped, video)
        # The stems must last as long as the video: loop them the same way.
        for wav in (stems_root / name).glob("*.wav"):
            audio, sr = media.read_wav(wav)
            n = int(round(seconds * sr))
            media.write_wav(wav, np.resize(audio, (n,) + audio.shape[1:]), sr)
    return video, stems_root


def copy_clips(src_video: Path, src_stems: Path, dest: Path, copies: int) -> tuple[Path, Path]:
    """``copies`` copies of one clip (distinct file names, so distinct items) with their stems."""
    for k in range(copies):
        name = f"copy{k:02d}"
        (dest / "videos").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src_video, dest / "videos" / f"{name}.mp4")
        shutil.copytree(src_stems, dest / "stems" / name)
    return dest / "videos", dest / "stems"


# ----------------------------------------------------------------------------- measurements
class TreeCPU:
    """CPU seconds (user + system) of a process and all its descendants, sampled every ``every`` s in a
    thread. getrusage cannot see them all: workers fork from a forkserver (local pool, Dask) or start
    under Ray's raylet, and nobody waits for those servers. A process that ends between two samples
    loses at most its last ``every`` seconds."""

    def __init__(self, pid: int, every: float = 0.1):
        import threading

        import psutil
        self.root, self.every = psutil.Process(pid), every
        self.seen: dict[tuple[int, float], float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        import psutil
        try:
            procs = [self.root] + self.root.children(recursive=True)
        except psutil.Error:
            return
        for proc in procs:
            try:
                t = proc.cpu_times()
                self.seen[(proc.pid, proc.create_time())] = t.user + t.system
            except psutil.Error:
                pass

    def _run(self) -> None:
        while not self.stop.wait(self.every):
            self._sample()

    def total(self) -> float:
        self.stop.set()
        self.thread.join()
        return sum(self.seen.values())


@dataclass
class Row:
    stage: str
    seconds: float
    cpu: float = 0.0
    done: int = 0
    skipped: int = 0
    failed: int = 0
    blocked: int = 0
    note: str = ""
    extra: dict = field(default_factory=dict)


def decode_floor(video: Path) -> Row:
    """ffmpeg decoding every frame of ``video`` to RGB into this process (extra["frames"]: the count)."""
    t0, c0 = time.perf_counter(), cpu_seconds()
    n = sum(len(chunk) for chunk in media.iter_frames(video, fps=FPS))
    return Row("decode only", time.perf_counter() - t0, cpu_seconds() - c0, done=1, extra={"frames": n})


def run_stage(videos: Path, out: Path, stage: str, stems: Path | None) -> Row:
    """Build one stage in this process (local, jobs=1), timed end to end, its model load included."""
    t0, c0 = time.perf_counter(), cpu_seconds()
    try:
        summaries = build(videos, out, Pipeline.load(), stages=[stage], jobs=1, stems=stems,
                          progress=False, log=lambda _: None)
    except Exception as e:  # a stage module that is missing or broken: report it, go on with the rest
        return Row(stage, time.perf_counter() - t0, cpu_seconds() - c0, note=f"{type(e).__name__}: {str(e)[:100]}")
    row = Row(stage, time.perf_counter() - t0, cpu_seconds() - c0)
    for s in summaries:
        row.done += s.done + s.reused
        row.skipped += s.skipped
        row.failed += s.failed
        row.blocked += s.blocked
        if s.failures and not row.note:
            row.note = f"{s.stage} failed: {s.failures[0][1][:100]}"
    if not row.note and row.blocked:
        row.note = "blocked: an upstream stage is not done"
    elif not row.note and row.skipped:
        row.note = "skipped (stems supplied)"
    return row


def run_cli(videos: Path, out: Path, stems: Path | None, backend: str, jobs: int) -> Row:
    """``chorushead build`` of STAGES in a fresh interpreter, timed end to end: every run pays its own
    imports and model loads (in this process they would be cached after the stage-by-stage run)."""
    cmd = [sys.executable, "-c", "from chorushead.cli import app; app()", "build", "--videos", str(videos),
           "--out", str(out), "--stages", ",".join(STAGES), "--jobs", str(jobs), "--backend", backend, "--quiet"]
    if stems is not None:
        cmd += ["--stems", str(stems)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    cpu = TreeCPU(proc.pid)       # the CLI, its workers, their servers, ffmpeg, Ray's processes
    _, err = proc.communicate()
    row = Row(f"{backend}:{jobs}", time.perf_counter() - t0, cpu.total())
    if proc.returncode not in (0, 1):   # 1: some items failed, which the counts below show
        row.note = f"exit {proc.returncode}: {err.strip()[-200:]}"
    spans = []
    for stage in STAGES:
        for rec in Manifest(out, stage).latest().values():
            spans.append((rec.started, rec.started + (rec.seconds or 0.0)))
            row.done += rec.status == "done"
            row.skipped += rec.status == "skipped"
            if rec.status == "failed":
                row.failed += 1
                row.note = row.note or f"{stage} failed: {(rec.message or '')[:100]}"
    # The work itself: first record's start to last record's end (the rest is the CLI's start-up and
    # the engine's start and stop).
    row.extra["work_s"] = max(e for _, e in spans) - min(b for b, _ in spans) if spans else float("nan")
    return row


def separation_problem() -> str | None:
    """Why bgm_split cannot run here (Spleeter's model absent or incomplete), or None. Cheap: looks
    at the model folder only, without starting Spleeter."""
    from chorushead.backends import spleeter
    p = Pipeline.load().params.get("bgm_split", {})
    where = spleeter.model_path(str(p.get("model_path", "")))
    problem = spleeter.model_problem(where, str(p.get("model", "2stems")))
    return None if problem is None else f"Spleeter model not at {where / str(p.get('model', '2stems'))} ({problem})"


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


# ----------------------------------------------------------------------------- report
def print_stage_table(rows: list[Row], decode: Row, video_s: float, frames: int) -> None:
    """One line per stage, the pipeline (their sum) and the decode floor. RTF = video s / stage s."""
    def line(name: str, sec: float, cpu: float, items: float, status: str) -> None:
        ran = items > 0
        nan = float("nan")
        print(f"{name:<12}{sec:>9.2f}{cpu:>8.2f}{(items / sec if ran else nan):>9.3f}"
              f"{(frames / sec if ran else nan):>10.1f}{(video_s / sec if ran else nan):>8.1f}"
              f"{sec / decode.seconds:>10.2f}  {status}")

    print(f"\n{'stage':<12}{'seconds':>9}{'cpu s':>8}{'items/s':>9}{'frames/s':>10}{'RTF':>8}{'x decode':>10}  status")
    for r in rows:
        line(r.stage, r.seconds, r.cpu, r.done + r.skipped,
             f"done {r.done} skipped {r.skipped} failed {r.failed} blocked {r.blocked} {r.note}".rstrip())
    line("pipeline", sum(r.seconds for r in rows), sum(r.cpu for r in rows), 1, "sum of the stages above")
    line("decode only", decode.seconds, decode.cpu, 1, "ffmpeg -> RGB frames in this process: the floor")
    total = sum(r.seconds for r in rows)
    print(f"\npipeline {' -> '.join(r.stage for r in rows)}: {video_s / total:.2f}x real time "
          f"({frames / total:.1f} frames/s); ffmpeg decode floor {video_s / decode.seconds:.2f}x real time "
          f"({frames / decode.seconds:.1f} frames/s); load average {load()}")


def print_slowest(rows: list[Row], out: Path) -> None:
    """The slowest stage and where its time went, from the timings it put in its record's metrics."""
    slow = max(rows, key=lambda r: r.seconds)
    rec = next(iter(Manifest(out, slow.stage).latest().values()), None)
    parts = {k: v for k, v in (rec.metrics if rec else {}).items() if k.endswith("_s") or k.endswith("_fraction")}
    print(f"slowest: {slow.stage} ({slow.seconds / sum(r.seconds for r in rows):.0%} of the pipeline)"
          + (f"; its record says {parts}" if parts else ""))


class _Tee:
    """stdout that also keeps what was printed (the JSON carries the text)."""

    def __init__(self, out):
        self.out, self.parts = out, []

    def write(self, text: str) -> int:
        self.parts.append(text)
        return self.out.write(text)

    def flush(self) -> None:
        self.out.flush()


def main(argv: list[str] | None = None) -> int:
    tee = _Tee(sys.stdout)
    sys.stdout = tee
    try:
        return _main(argv, tee)
    finally:
        sys.stdout = tee.out


def _main(argv: list[str] | None, tee: _Tee) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="length of the stage-by-stage clip")
    ap.add_argument("--size", type=int, default=1024, help="frame width and height")
    ap.add_argument("--stems", action="store_true", help="supply the clip's stems: skips bgm_split/duet_split")
    ap.add_argument("--copies", type=int, default=4, help="clips in the scaling run (0: no scaling run)")
    ap.add_argument("--copy-seconds", type=float, default=8.0, help="length of each scaling clip")
    ap.add_argument("--scale", default="local:1,dask:2", help="backend:jobs runs to compare, comma-separated")
    ap.add_argument("--work", type=Path, help="keep inputs and builds here (default: a temp folder)")
    ap.add_argument("--json", type=Path, help="write the figures here (default benchmarks/results/bench_stages.json)")
    args = ap.parse_args(argv)

    work = args.work or Path(tempfile.mkdtemp(prefix="bench_stages-"))
    work.mkdir(parents=True, exist_ok=True)
    # A --work folder kept from an earlier run starts afresh: its builds would be reused, not timed.
    for old in ("clip", "build", "small", "copies", *(p.name for p in work.glob("scale-*"))):
        shutil.rmtree(work / old, ignore_errors=True)
    rec = Recorder("bench_stages")
    results: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "load_before": load()}
    print(f"work folder {work}; load average {results['load_before']} on {os.cpu_count()} cores")

    t0 = time.perf_counter()
    video, stems_root = make_clip(work / "clip", "bench", args.seconds, args.size)
    info = media.probe(video)
    print(f"clip: {video.name} {info.width}x{info.height} {info.duration:.1f} s "
          f"({video.stat().st_size / 1e6:.1f} MB), generated in {time.perf_counter() - t0:.1f} s")

    decode = decode_floor(video)
    frames = decode.extra["frames"]

    stems_asked = args.stems
    if not args.stems and (why := separation_problem()):
        print(f"stems mode: {why}; the clip's own stems are supplied (bgm_split/duet_split skipped). "
              "Install the model (chorushead doctor says how) to time the separation stages.")
        args.stems = True
    results["stems"] = args.stems
    stems = stems_root if args.stems else None
    rows = [run_stage(video.parent, work / "build", s, stems) for s in STAGES]
    print_stage_table(rows, decode, info.duration, frames)
    print_slowest(rows, work / "build")
    results.update(video_seconds=info.duration, frames=frames, decode=asdict(decode), stages=[asdict(r) for r in rows],
                   pipeline_rtf=info.duration / sum(r.seconds for r in rows), decode_rtf=info.duration / decode.seconds,
                   load_stages=load())
    names = [r.stage for r in rows if r.done]
    crop_row = next((r for r in rows if r.stage == "crop"), None)
    total = sum(r.seconds for r in rows)
    rec.row(f"{' + '.join(names)} ({info.duration:.0f} s {info.width}×{info.height} clip"
            f"{', stems' if args.stems else ''}), local, 1 job",
            f"**pipeline {results['pipeline_rtf']:.2f}× real time** beside the ffmpeg-decode floor "
            f"{results['decode_rtf']:.2f}× ({frames / decode.seconds:.0f} frames/s into Python)"
            + (f"; crop {info.duration / crop_row.seconds:.2f}× RT ({crop_row.seconds / total:.0%} of the time)"
               if crop_row and crop_row.done else ""),
            pipeline_rtf=results["pipeline_rtf"], decode_rtf=results["decode_rtf"],
            **{f"{r.stage}_s": round(r.seconds, 2) for r in rows})

    if args.copies > 0:
        t0 = time.perf_counter()
        small, small_stems = make_clip(work / "small", "small", args.copy_seconds, args.size)
        videos, stems_dir = copy_clips(small, small_stems / "small", work / "copies", args.copies)
        print(f"\nscaling: {args.copies} copies of a {args.copy_seconds:g} s {args.size}x{args.size} clip "
              f"(made in {time.perf_counter() - t0:.1f} s), stages {', '.join(STAGES)}")
        cores = os.cpu_count() or 1
        print(f"{'run':<10}{'seconds':>9}{'cpu s':>8}{'videos/s':>10}{'RTF':>8}{'speed-up':>10}"
              f"{'work s':>8}{'speed-up':>10}{'cpu bound':>11}  status")
        scaling = []
        for spec in args.scale.split(","):
            backend, _, jobs = spec.strip().partition(":")
            r = run_cli(videos, work / f"scale-{backend}-{jobs}", stems_dir if args.stems else None,
                        backend, int(jobs or 1))
            base = scaling[0] if scaling else r
            busy = r.extra["work_s"]
            r.extra["cpu_bound"] = round(base.seconds / max(r.cpu / cores, 1e-9), 2)
            print(f"{r.stage:<10}{r.seconds:>9.2f}{r.cpu:>8.1f}{args.copies / r.seconds:>10.3f}"
                  f"{args.copies * args.copy_seconds / r.seconds:>8.2f}{base.seconds / r.seconds:>10.2f}"
                  f"{busy:>8.2f}{base.extra['work_s'] / busy:>10.2f}{r.extra['cpu_bound']:>11.2f}  "
                  f"item-stages done {r.done} skipped {r.skipped} failed {r.failed} {r.note}")
            scaling.append(r)
        results["scaling"] = [asdict(r) for r in scaling]
        rec.row(f"build of {args.copies} × {args.copy_seconds:g} s clips",
                ", ".join(f"{r.stage} {r.seconds:.1f} s ({scaling[0].seconds / r.seconds:.2f}×; work "
                          f"{r.extra['work_s']:.1f} s, {scaling[0].extra['work_s'] / r.extra['work_s']:.2f}×; "
                          f"{r.cpu:.1f} CPU-s, bound {r.extra['cpu_bound']:.2f}×)"
                          for r in scaling),
                **{r.stage: round(r.seconds, 2) for r in scaling},
                **{f"{r.stage} work": round(r.extra["work_s"], 2) for r in scaling},
                **{f"{r.stage} cpu": round(r.cpu, 1) for r in scaling},
                **{f"{r.stage} cpu bound": r.extra["cpu_bound"] for r in scaling})

    results["load_after"] = load()
    print(f"\nload average after: {results['load_after']}")
    note = "stems mode (no Spleeter model here)" if results.get("stems") and not stems_asked else ""
    rec.write("".join(tee.parts), note=note, path=args.json)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
