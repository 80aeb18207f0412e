"""`chorushead demo`: generate the built-in sample (:mod:`chorushead.sample`), build it to an LMDB and say
what ran, what was reused and what needs a model asset (and where `chorushead doctor` tells more).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from chorushead.sample import write_sample

# A 5 s segment (150 frames) must survive the sample's 1 s silent lead-in and 0.5 s tail, trimmed by VAD.
MIN_DEMO_SECONDS = 7.0
_MAX_REASON = 240   # characters of a failure message in the closing lines (status shows it whole)
# pack splits by video (60/10/30): four videos give 2 train / 1 val / 1 test, so `pachorus eval` (test
# split by default) and the trainer's validation both have data. With pack's seed 0, duet1 is the test
# song (the README journey animates it; tests/test_journey.py checks that).
DEMO_VIDEOS = 4
FIT_BACKENDS = {
    "landmarks": "Fitting with the open landmark backend (jaw + head pose, no expression); for the paper's "
                 "EMOCA v2 fit: `chorushead demo --fit emoca` after fetching EMOCA's assets (README \"Model assets\").",
    "emoca": "Fitting with EMOCA v2 (50 expression + jaw + head pose); it needs EMOCA's licensed assets "
             "(README \"Model assets\"); without them: `chorushead demo --fit landmarks`.",
}


def sample_names(n_videos: int = DEMO_VIDEOS) -> list[str]:
    return [f"duet{k + 1}" for k in range(n_videos)]


def run_demo(out: Path, seconds: float = 12.0, jobs: int = 1, echo: Callable[[str], None] = print,
             fit: str = "landmarks", n_videos: int = DEMO_VIDEOS) -> int:
    """Generate the sample videos and build them to the LMDB; report what ran and what needs assets.
    Returns an exit code: 0 when every stage ran or was reused (the LMDB is there), else 1."""
    from chorushead.core.manifest import iter_records
    from chorushead.runner import Pipeline, build
    from chorushead.status import collect

    # checked before anything is written
    if seconds < MIN_DEMO_SECONDS:
        raise ValueError(f"--seconds {seconds:g}: the demo needs at least {MIN_DEMO_SECONDS:g} s "
                         "(a 5 s segment after the sample's silent start and end)")
    if fit not in FIT_BACKENDS:
        raise ValueError(f"--fit {fit!r}: choose one of {', '.join(FIT_BACKENDS)}")
    if n_videos < 1:
        raise ValueError(f"--videos {n_videos}: the demo needs at least one video")
    out = Path(out)
    sample = out / "sample"
    pl = Pipeline.load(None, [f"fit.backend={fit}"])
    missing = [(k, name) for k, name in enumerate(sample_names(n_videos))
               if not (sample / "videos" / f"{name}.mp4").exists()]
    if missing:
        echo(f"Generating {len(missing)} two-singer sample video(s) of {seconds:g} s in {sample} ...")
        for k, name in missing:   # a seed per video: other melodies and head motion
            write_sample(sample, seconds=seconds, name=name, seed=k)
    echo(FIT_BACKENDS[fit])
    summaries = build(sample / "videos", out / "build", pl, jobs=jobs, stems=sample / "stems")
    bs = collect(out / "build", pl)
    echo(f"\n{bs.items} video(s), {bs.hours * 3600:.1f} s ingested, {bs.frames} frames cropped, "
         f"{bs.segments} segment(s) kept ({bs.frames_in_segments} frames).")
    if bs.windows:
        counts = " / ".join(f"{bs.windows.get(s, 0)} {s}" for s in ("train", "val", "test"))
        echo(f"Packed {out / 'build' / 'windows.lmdb'}: {counts} windows (split by video).")
        from chorushead.report import card_hint
        hint = card_hint(out / "build", pl)
        if hint:
            echo(hint)
    lines, states = closing_lines(summaries, iter_records(out / "build", pl.stages), out / "build")
    for line in lines:
        echo(line)
    ok = all(states.get(s) in ("ran", "reused") for s in pl.stages)
    return 0 if ok else 1


def closing_lines(summaries: list, latest: dict[str, dict], build_dir: Path) -> tuple[list[str], dict[str, str]]:
    """What the build did, one line per stage that did not simply run: ran / reused / skipped / failed /
    waiting, with the reason; then the exact status command. Also returns each stage's state."""
    import shlex

    from chorushead.stages import get_stage

    states: dict[str, str] = {}
    reasons: dict[str, str] = {}
    for s in summaries:
        records = list(latest.get(s.stage, {}).values())
        failed = [r for r in records if r.status == "failed"]
        skipped = [r for r in records if r.status == "skipped"]
        if failed:
            states[s.stage] = "failed"
            reasons[s.stage] = failed[0].failure_line(_MAX_REASON)
        elif s.done + s.skipped > 0:
            states[s.stage] = "ran"
        elif s.reused > 0 or (records and all(r.ok for r in records)):
            states[s.stage] = "reused"
        else:
            blockers = [n for n in get_stage(s.stage).needs if states.get(n) not in ("ran", "reused")]
            states[s.stage] = "waiting"
            reasons[s.stage] = (f"waits for {', '.join(blockers)}" if blockers
                                else "not run (nothing to do for it yet)")
        if skipped and states[s.stage] in ("ran", "reused"):
            reasons[s.stage] = f"skipped: {skipped[0].reason or 'no reason given'}"
    ran = [st for st, v in states.items() if v == "ran"]
    reused = [st for st, v in states.items() if v == "reused"]
    lines = ["", f"Ran: {', '.join(ran) or 'nothing'}.", f"Reused from an earlier run: {', '.join(reused) or 'nothing'}."]
    for st, why in reasons.items():
        label = "skipped" if why.startswith("skipped: ") else states[st]
        lines.append(f"  {st} {label}: {why.removeprefix('skipped: ')}")
    if "failed" in states.values():
        lines.append("`chorushead doctor` lists where each model is looked for and how to get it.")
    lines.append(f"Status of this build at any time: chorushead status --out {shlex.quote(str(build_dir))}")
    return lines, states
