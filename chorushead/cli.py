"""The `chorushead` command line: fetch, build, remove, status, report, demo, separate, doctor, review."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Build the ChorusHead 3D singing-head dataset from duet/chorus videos.")


def _pipeline(pipeline: Optional[Path], sets: List[str]):
    from chorushead.runner import Pipeline
    return Pipeline.load(pipeline, sets)


def _build_pipeline(out: Path, pipeline: Optional[Path], sets: List[str]):
    """The pipeline a command on an existing build runs with: --pipeline, else the build's saved one,
    else the default file; --set on top (runner.Pipeline.for_build). Returns (pipeline, where from)."""
    from chorushead.runner import Pipeline
    return Pipeline.for_build(out, pipeline, sets)


# Exit codes of `chorushead build` / `remove` (the README's "Exit codes"): 0 every selected item-stage is
# done, reused or skipped; 1 some item-stage failed, was blocked by a failed or stale upstream stage, or
# was lost with its worker (the rest of the batch was still built: one video never stops the others);
# 2 a usage error (bad option, missing folder, another build running), nothing built.
EXIT_OK, EXIT_ITEMS_FAILED, EXIT_USAGE = 0, 1, 2


@app.command()
def build(
    videos: Optional[Path] = typer.Option(None, "--videos", help="Folder of raw videos (searched recursively), or a "
                                          "text file of links, fetched into OUT/raw/ first (as `chorushead fetch`). "
                                          "Omit to rerun on the videos already registered in --out."),
    out: Path = typer.Option(..., "--out", help="Output folder (manifests, per-item outputs, LMDB)."),
    stems: Optional[Path] = typer.Option(None, "--stems", help="Folder with <video stem>/vocals.wav, "
                                         "accompaniment.wav, singer1.wav, singer2.wav...: skips the separation stages."),
    stages: Optional[str] = typer.Option(None, "--stages", help="Comma-separated subset of stages to run."),
    jobs: int = typer.Option(1, "--jobs", "-j", help="Parallel worker processes."),
    pipeline: Optional[Path] = typer.Option(None, "--pipeline", help="Pipeline TOML (default: pipelines/chorushead.toml)."),
    sets: List[str] = typer.Option([], "--set", help="Override a parameter: stage.param=value (repeatable)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    backend: str = typer.Option("local", "--backend", help="Where items run: local (worker processes), dask, ray."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", "--address",
                                            help="Dask scheduler / Ray cluster address (default: start a local one)."),
    pack_at_end: bool = typer.Option(False, "--pack-at-end", help="Pack only once every video is through (default: "
                                     "videos already through are packed while the others are still processed)."),
):
    """Run (or resume) the staged build. Rerun the same command after a crash: done work is kept."""
    from chorushead.core.errors import StageError
    from chorushead.executors import BACKENDS
    from chorushead.runner import build as run_build
    chosen = [s.strip() for s in stages.split(",") if s.strip()] if stages else None
    try:
        # Every argument is checked before anything is written (run_build checks the rest before
        # it creates --out), so a typo leaves no output folder behind.
        if backend not in BACKENDS:
            raise ValueError(f"--backend {backend!r}: unknown; available: {', '.join(BACKENDS)}")
        if videos is None and not (out / "items.json").exists():
            raise FileNotFoundError(f"{out} has no build to rerun; give the raw videos with --videos DIR")
        pl, where = _build_pipeline(out, pipeline, sets)
        if not quiet:
            typer.echo(f"pipeline: {where}", err=True)
        fetched = None
        if videos is not None and videos.is_file():   # a list of links: download them, then build that folder
            fetched = _fetch(videos, out / "raw", quiet)
            videos = out / "raw"
        summaries = run_build(videos, out, pl, stages=chosen, jobs=jobs, stems=stems, progress=not quiet,
                              backend=backend, scheduler=scheduler, early=not pack_at_end)
    except (RuntimeError, FileNotFoundError, ValueError, StageError) as e:
        typer.secho(" ".join(str(e).split()), fg="red", err=True)
        raise typer.Exit(EXIT_USAGE)
    _print_summary(summaries)
    _print_card_hint(out, pl)
    raise typer.Exit(max(_exit_code(summaries), EXIT_ITEMS_FAILED if fetched and fetched.failed else EXIT_OK))


def _exit_code(summaries) -> int:
    return EXIT_ITEMS_FAILED if any(s.failed or s.blocked or s.pending for s in summaries) else EXIT_OK


@app.command()
def remove(
    videos: List[str] = typer.Argument(..., help="Video id(s) to take out of the build (`chorushead status` lists them)."),
    out: Path = typer.Option(..., "--out", help="Build output folder."),
    delete_files: bool = typer.Option(False, "--delete-files", help="Also delete their per-stage outputs "
                                      "(OUT/items/<id>/); by default they stay on disk."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
):
    """Take videos out of a build: they leave the registry and their windows leave the LMDB (pack runs).
    The only command that removes packed windows on purpose; a failed rerun never does."""
    import shutil
    from chorushead.runner import build as run_build, remove_items
    try:
        if not (out / "items.json").exists():
            raise FileNotFoundError(f"{out} has no build (no items.json)")
        pl, _ = _build_pipeline(out, None, [])
        removed = remove_items(out, videos)
        summaries = run_build(None, out, pl, stages=["pack"], progress=not quiet) if "pack" in pl.stages else []
    except (RuntimeError, FileNotFoundError, ValueError) as e:
        typer.secho(" ".join(str(e).split()), fg="red", err=True)
        raise typer.Exit(EXIT_USAGE)
    for it in removed:
        if delete_files:
            shutil.rmtree(it.dir(out), ignore_errors=True)
        typer.echo(f"removed {it.id} ({it.source})" + ("" if delete_files else f"; its outputs stay in {it.dir(out)}"))
    _print_summary(summaries)
    raise typer.Exit(_exit_code(summaries))


def _print_card_hint(out: Path, pl) -> None:
    from chorushead.report import card_hint
    hint = card_hint(out, pl)
    if hint:
        typer.echo(hint)


def _print_summary(summaries) -> None:
    if not summaries:
        return
    typer.echo(f"\n{'stage':<12}{'done':>6}{'reused':>8}{'skipped':>9}{'failed':>8}{'blocked':>9}{'seconds':>9}")
    for s in summaries:
        typer.echo(f"{s.stage:<12}{s.done:>6}{s.reused:>8}{s.skipped:>9}{s.failed:>8}{s.blocked:>9}{s.seconds:>9.1f}")
    from chorushead.failures import failure_lines
    for line in failure_lines(summaries):
        typer.secho(line, fg="yellow")
    n_failed = sum(len(s.failures) for s in summaries)
    if n_failed:
        typer.echo(f"{n_failed} item-stage(s) failed; fix and rerun the same command (done work is kept). "
                   "`chorushead status --out ...` lists them again.")


def _fetch(urls: Path, folder: Path, quiet: bool):
    """Download every link of ``urls`` into ``folder`` (chorushead.fetch), one progress line per URL unless
    quiet, then the summary; returns it (its failures make the exit code 1)."""
    from chorushead.fetch import fetch_list
    summary = fetch_list(urls, folder, log=(lambda _: None) if quiet else typer.echo)
    for i, line in enumerate(summary.lines()):
        typer.secho(line, fg="yellow" if i else None)
    return summary


@app.command()
def fetch(
    urls: Path = typer.Option(..., "--list", help="Text file: one video URL per line (blank lines and # comments "
                              "ignored, duplicates fetched once)."),
    out: Path = typer.Option(..., "--out", help="Folder for the videos and fetch.jsonl (what each URL gave); "
                             "then `chorushead build --videos OUT`."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress line per URL (the summary stays)."),
):
    """Download the listed videos with yt-dlp into one folder, resumably: a rerun skips what is there,
    continues partial downloads and retries failures. Exit 0 all done, 1 some failed, 2 usage error."""
    from chorushead.core.errors import StageError
    try:
        summary = _fetch(urls, out, quiet)
    except (RuntimeError, FileNotFoundError, ValueError, StageError) as e:
        typer.secho(" ".join(str(e).split()), fg="red", err=True)
        raise typer.Exit(EXIT_USAGE)
    raise typer.Exit(EXIT_ITEMS_FAILED if summary.failed else EXIT_OK)


@app.command()
def status(out: Path = typer.Option(..., "--out"), pipeline: Optional[Path] = typer.Option(None, "--pipeline")):
    """Per stage: done / failed / pending; hours, frames and segments; the failures and their messages."""
    from chorushead.status import collect, format_status
    if not (out / "items.json").exists():
        typer.secho(f"{out} has no build yet (no items.json). Run `chorushead build --videos DIR --out {out}`.",
                    fg="red", err=True)
        raise typer.Exit(2)
    pl, _ = _build_pipeline(out, pipeline, [])
    typer.echo(format_status(collect(out, pl)))
    _print_card_hint(out, pl)


@app.command()
def report(out: Path = typer.Option(..., "--out", help="Build output folder; the card goes to OUT/report/."),
           pipeline: Optional[Path] = typer.Option(None, "--pipeline", help="Pipeline TOML the build used "
                                                   "(default: the one the last build ran with, OUT/pipeline.json)."),
           sets: List[str] = typer.Option([], "--set", help="The --set overrides the build used (shown as its parameters).")):
    """Write the dataset card: OUT/report/index.html, report.md and its plots, from the manifests and the LMDB."""
    from chorushead.report import report as write_report
    if not (out / "items.json").exists():
        typer.secho(f"{out} has no build yet (no items.json). Run `chorushead build --videos DIR --out {out}`.",
                    fg="red", err=True)
        raise typer.Exit(2)
    try:
        from chorushead.runner import Pipeline, USED_PIPELINE
        used = None if pipeline or sets else Pipeline.used_by(out)   # default: what the last build ran
        index = (write_report(out, used, str(out / USED_PIPELINE)) if used is not None
                 else write_report(out, _pipeline(pipeline, sets), str(pipeline or "")))
    except (FileNotFoundError, ValueError) as e:
        typer.secho(str(e), fg="red", err=True)
        raise typer.Exit(2)
    typer.echo(f"Dataset card: {index} (report.md and the plots beside it)")


@app.command()
def demo(
    out: Path = typer.Option(Path("demo-out"), "--out", help="Where the sample video and the build go."),
    seconds: float = typer.Option(12.0, "--seconds", help="Length of each generated duet."),
    videos: int = typer.Option(4, "--videos", help="How many duets (split by video: 4 give train, val and test)."),
    fit: str = typer.Option("landmarks", "--fit", help="Fit backend: landmarks (open: jaw + head pose) or emoca "
                            "(the paper's; needs EMOCA's licensed assets)."),
    jobs: int = typer.Option(1, "--jobs", "-j"),
):
    """Generate short two-singer sample videos (with stems) and build them into a packed LMDB."""
    from chorushead.demo import run_demo
    try:
        code = run_demo(out, seconds=seconds, jobs=jobs, echo=typer.echo, fit=fit, n_videos=videos)
    except (RuntimeError, FileNotFoundError, ValueError) as e:
        typer.secho(str(e), fg="red", err=True)
        raise typer.Exit(2)
    raise typer.Exit(code)


@app.command()
def separate(
    song: Path = typer.Option(..., "--song", help="The mixed song: an audio file, or a video (its soundtrack)."),
    out: Path = typer.Option(..., "--out", help="Folder for vocals.wav, accompaniment.wav, singer<k>.wav, "
                             "separation.json (and build/, the one-song build: a rerun reuses it)."),
    video: Optional[Path] = typer.Option(None, "--video", help="The song's video (the same file as --song): "
                                         "the assign step orders the singers as the faces, left to right."),
    pipeline: Optional[Path] = typer.Option(None, "--pipeline", help="Pipeline TOML (default: pipelines/chorushead.toml)."),
    sets: List[str] = typer.Option([], "--set", help="Override a parameter: stage.param=value (repeatable)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
):
    """Separate a mixed song exactly as the build does: Spleeter vocals/accompaniment, MossFormer2 singers.

    A video (--song video.mp4) also goes through vad, crop, fit, smooth and assign, so singer k is the
    k-th face from the left; an audio file keeps the separator's order (and separation.json says so)."""
    from chorushead.core.errors import StageError
    from chorushead.separate import separate as run_separate
    try:
        sep = run_separate(song, out, _pipeline(pipeline, sets), video=video, progress=not quiet,
                           log=lambda m: typer.echo(m, err=True))
    except (RuntimeError, FileNotFoundError, ValueError, StageError) as e:
        typer.secho(" ".join(str(e).split()), fg="red", err=True)   # one line: `pachorus infer --song` shows it
        raise typer.Exit(2)
    typer.echo(f"{out}: vocals.wav, accompaniment.wav, {', '.join(sep.singers)} ({sep.order_source} order)")
    typer.echo(f"note: {sep.note}")


@app.command()
def doctor():
    """Where each model-backed stage looks for its assets, whether they were found, how to get them."""
    try:
        from chorushead.doctor import doctor as run_doctor, format_report
    except ImportError as e:  # pragma: no cover
        typer.secho(f"doctor unavailable: {e}", fg="red", err=True)
        raise typer.Exit(2)
    checks = run_doctor()
    typer.echo(format_report(checks))


@app.command()
def review(
    out: Path = typer.Option(..., "--out", help="Build output folder."),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8765, "--port"),
    allow_remote: bool = typer.Option(False, "--allow-remote", help="Permit binding to a non-loopback address."),
    flame: Optional[Path] = typer.Option(None, "--flame", help="FLAME folder to render meshes, or 'open' for the "
                                         "open head (the default for a landmark-fitted build)."),
):
    """Start the local review web app: accept or reject segments with the keyboard."""
    from chorushead.review.server import serve
    serve(out, host=host, port=port, allow_remote=allow_remote, flame_dir=flame)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
