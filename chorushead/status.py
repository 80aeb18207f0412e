"""`chorushead status`: per stage done / failed / pending, hours and frames, segments, failures."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from chorushead.core.manifest import iter_records
from chorushead.runner import Pipeline, StageSummary, load_items
from chorushead.stages import contiguity, crop, ingest, pack


@dataclass
class BuildStatus:
    items: int
    stages: list[StageSummary]
    hours: float
    frames: int
    segments: int
    frames_in_segments: int
    windows: dict[str, int]


def collect(out: Path, pipeline: Pipeline) -> BuildStatus:
    out = Path(out)
    items = load_items(out)
    latest = iter_records(out, pipeline.stages)
    stages = []
    for s in pipeline.stages:
        st = StageSummary(s)
        for iid in items:
            st.count(latest[s].get(iid))
        stages.append(st)
    def ok(stage: str):
        return [r for r in latest.get(stage, {}).values() if r.ok]

    seconds = sum(ingest.Outputs.of(r).duration for r in ok("ingest"))
    frames = sum(crop.Outputs.of(r).frames for r in ok("crop"))
    cont = ok("contiguity")
    windows: dict[str, int] = {}
    for r in ok("pack"):
        o = pack.Outputs.of(r)
        windows[o.split] = windows.get(o.split, 0) + o.windows
    return BuildStatus(items=len(items), stages=stages, hours=seconds / 3600, frames=frames,
                       segments=sum(len(contiguity.Outputs.of(r).segments) for r in cont),
                       frames_in_segments=sum(contiguity.Metrics.of(r).frames_kept for r in cont), windows=windows)


def format_status(bs: BuildStatus, max_failures: int = 20) -> str:
    lines = [f"{bs.items} video(s), {bs.hours:.3f} h ingested, {bs.frames} frames cropped, "
             f"{bs.segments} segment(s) kept ({bs.frames_in_segments} frames)"]
    if bs.windows:
        lines.append("windows packed: " + ", ".join(f"{k} {v}" for k, v in sorted(bs.windows.items())))
    lines.append(f"{'stage':<12}{'done':>6}{'skipped':>9}{'failed':>8}{'pending':>9}")
    for s in bs.stages:
        lines.append(f"{s.stage:<12}{s.done:>6}{s.skipped:>9}{s.failed:>8}{s.pending:>9}")
    fails = [(s.stage, i, m) for s in bs.stages for i, m in s.failures]
    if fails:
        lines.append("")
        lines.append("failures:")
        for stage, item, msg in fails[:max_failures]:
            lines.append(f"  [{stage}] {item}: {msg}")
        if len(fails) > max_failures:
            lines.append(f"  ... and {len(fails) - max_failures} more (see manifests/*.jsonl)")
    return "\n".join(lines)
