"""`chorushead status`: per stage done / stale / failed / pending; what the LMDB holds; what needs a rerun.

Counts follow the runner's own rule (runner.Plan.states): a record counts as done only while it is
current (today's inputs, settings, model and upstream); an ok record that is no longer current is
*stale*. What is packed is read from the LMDB itself (its per-video markers' summary), so status, the
dataset card and the file always agree.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from chorushead.core.decisions import Painted, describe_unmatched, resolve, timeline_ranges
from chorushead.core.manifest import iter_records
from chorushead.core.windows import packed_videos
from chorushead.failures import failure_lines
from chorushead.runner import Pipeline, Plan, StageSummary, load_items
from chorushead.stages import contiguity, crop, get_stage, ingest, pack, vad


@dataclass
class StageStatus(StageSummary):
    stale: int = 0       # an ok record made from other inputs/settings than today's: rerun to refresh


@dataclass
class BuildStatus:
    items: int
    stages: list[StageStatus]
    hours: float
    frames: int
    segments: int
    frames_in_segments: int
    windows: dict[str, int]                          # split -> windows in the LMDB
    packed: dict[str, dict] = field(default_factory=dict)   # video -> its LMDB summary (split, windows...)
    stale_packed: list[str] = field(default_factory=list)   # packed videos whose pack is not current
    unregistered_packed: list[str] = field(default_factory=list)   # in the LMDB, removed from the build
    unmatched: list[Painted] = field(default_factory=list)  # review decisions no segment matches now


def collect(out: Path, pipeline: Pipeline) -> BuildStatus:
    out = Path(out)
    items = load_items(out)
    latest = iter_records(out, pipeline.stages)
    plan = Plan.of(pipeline)
    stages = {s: StageStatus(s) for s in pipeline.stages}
    pack_current: set[str] = set()
    for it in items.values():
        for name, (state, _fp) in plan.states(it, latest).items():
            r = latest.get(name, {}).get(it.id)
            st = stages[name]
            if state == "current" and get_stage(name).kind == "global":
                # pack: current when the LMDB holds this video as its upstream is now (checked below)
                pack_current.add(it.id)
                st.count(r)
            elif state == "current":
                st.count(r)
            elif r is not None and r.status == "failed" and state == "todo":
                st.count(r)
            elif r is not None and r.ok:
                st.stale += 1
            elif state == "blocked":
                st.blocked += 1
            else:
                st.pending += 1

    def ok(stage: str):
        return {v: r for v, r in latest.get(stage, {}).items() if r.ok and v in items}

    seconds = sum(ingest.Outputs.of(r).duration for r in ok("ingest").values())
    frames = sum(crop.Outputs.of(r).frames for r in ok("crop").values())
    cont = ok("contiguity")
    pack_params = pack.Params(**pipeline.params.get("pack", {})) if "pack" in pipeline.stages else pack.Params()
    packed = packed_videos(out / pack_params.lmdb)
    windows: dict[str, int] = {}
    for v, s in packed.items():
        windows[s["split"]] = windows.get(s["split"], 0) + int(s["windows"])
    # a packed video is current when its pack record is current and the LMDB holds that same fingerprint
    pack_recs = latest.get("pack", {})
    stale_packed = sorted(v for v, s in packed.items() if v in items and not (
        v in pack_current and pack_recs.get(v) is not None and pack_recs[v].ok
        and pack_recs[v].fingerprint == s.get("fingerprint")))
    vads = ok("vad")
    ranges = {v: timeline_ranges(vad.Outputs.of(vads[v]).start_frame, contiguity.Outputs.of(r).segments)
              for v, r in cont.items() if v in vads}
    return BuildStatus(items=len(items), stages=list(stages.values()), hours=seconds / 3600, frames=frames,
                       segments=sum(len(contiguity.Outputs.of(r).segments) for r in cont.values()),
                       frames_in_segments=sum(contiguity.Metrics.of(r).frames_kept for r in cont.values()),
                       windows=windows, packed=packed, stale_packed=stale_packed,
                       unregistered_packed=sorted(v for v in packed if v not in items),
                       unmatched=resolve(out, ranges).unmatched)


def dataset_notes(bs: BuildStatus, limit: int = 10) -> list[str]:
    """What a user must know about the dataset beyond the counts (status prints these, the card shows
    them as notes): stale packed videos, videos removed but still packed, unmatched review decisions."""
    notes = []
    if bs.stale_packed:
        notes.append(f"stale in the LMDB ({len(bs.stale_packed)}): {', '.join(bs.stale_packed[:limit])}"
                     f"{' ...' if len(bs.stale_packed) > limit else ''} — their windows are from an earlier build "
                     "and stay until a rebuild succeeds (`chorushead status` lists the failures; fix them and rerun)")
    if bs.unregistered_packed:
        notes.append(f"in the LMDB but no longer registered: {', '.join(bs.unregistered_packed)} "
                     "(the next pack removes them)")
    if bs.unmatched:
        notes.append(f"review decisions that match no segment now ({len(bs.unmatched)}): "
                     + "; ".join(describe_unmatched(bs.unmatched, limit)))
    return notes


def format_status(bs: BuildStatus, max_failures: int = 20) -> str:
    lines = [f"{bs.items} video(s), {bs.hours:.3f} h ingested, {bs.frames} frames cropped, "
             f"{bs.segments} segment(s) kept ({bs.frames_in_segments} frames)"]
    if bs.windows:
        lines.append(f"windows packed ({len(bs.packed)} video(s) in the LMDB): "
                     + ", ".join(f"{k} {v}" for k, v in sorted(bs.windows.items())))
    lines.append(f"{'stage':<12}{'done':>6}{'skipped':>9}{'failed':>8}{'stale':>7}{'blocked':>9}{'pending':>9}")
    for s in bs.stages:
        lines.append(f"{s.stage:<12}{s.done:>6}{s.skipped:>9}{s.failed:>8}{s.stale:>7}{s.blocked:>9}{s.pending:>9}")
    if any(s.stale for s in bs.stages):
        lines.append("stale: outputs made from other inputs, settings or models than now (or on an upstream "
                     "result that has changed); they are kept, not used downstream; rerun `chorushead build` to refresh.")
    notes = dataset_notes(bs)
    if notes:
        lines.append("")
        lines += notes
    fails = failure_lines(bs.stages, max_failures)
    if fails:
        lines += ["", "failures:", *fails]
    return "\n".join(lines)
