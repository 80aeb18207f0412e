"""`chorushead report`: the dataset card of a build, ``<out>/report/index.html`` + ``report.md`` + PNGs.

Every number comes from the stage manifests (newest record per video, read through the stages' typed
``Outputs.of``/``Metrics.of``) and the packed LMDB (its index and ``__meta__``, whose ``summary`` pack
writes). A build that stopped early gets a card of what exists, saying what is missing. Plots are
matplotlib figures rendered with Agg straight to PNG (no pyplot state, no display, no server); the page
links them relatively, so the folder can be copied or opened from disk.
"""
from __future__ import annotations

import html
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from chorushead.core.decisions import decisions as review_decisions, timeline_ranges
from chorushead.core.manifest import Record, iter_records
from chorushead.core.windows import JAW_OPEN, POSE, SPLITS, WindowReader, packed_videos
from chorushead.runner import Pipeline, Plan, load_items
from chorushead.stages import assign, contiguity, crop, get_stage, ingest, pack, smooth, vad
from chorushead.stages.base import DEFAULT_FPS, GlobalContext
from chorushead.status import collect as collect_status, dataset_notes

REPORT_DIR = "report"
FINGERPRINT_ROWS = 200   # videos listed with their fingerprints (the rest are counted)


@dataclass
class FunnelRow:
    """One stage of the yield funnel: videos usable after it and the hours they hold."""
    stage: str
    videos: int                  # done or skipped (downstream stages accept both)
    done: int
    skipped: int
    failed: int
    pending: int                 # registered videos with no record for this stage
    hours: float
    reasons: dict[str, int] = field(default_factory=dict)   # "skipped: ..." / "failed: ..." -> videos


@dataclass
class SplitRow:
    split: str
    videos: list[str]
    windows: int
    hours: float                 # frames of the packed segments of its videos


@dataclass
class Card:
    out: Path
    pipeline: Pipeline
    pipeline_file: str
    summary: list[tuple[str, str]]           # Table 1 style rows
    funnel: list[FunnelRow]
    splits: list[SplitRow]
    split_violations: list[str]              # "video: in train, test"; empty = the check passes
    versions: dict[str, dict[str, int]]      # stage -> version -> videos
    fingerprints: dict[str, dict[str, str]]  # video -> stage -> fingerprint
    same_params: dict[str, tuple[int, int]]  # stage -> (records these parameters reproduce, records)
    lmdb: Path | None                        # None: pack has not written one
    meta: dict[str, Any] | None
    dists: dict[str, Any]                    # arrays/counters the plots draw
    notes: list[str]                         # what is missing, honestly


# ----------------------------------------------------------------------------- collecting
def collect(out: Path, pipeline: Pipeline, pipeline_file: str = "") -> Card:
    out = Path(out)
    items = load_items(out)
    stages = list(pipeline.stages)
    latest = iter_records(out, stages)
    notes: list[str] = []

    def ok(stage: str) -> dict[str, Record]:
        return {v: r for v, r in latest.get(stage, {}).items() if r.ok and v in items}

    ing = {v: ingest.Outputs.of(r) for v, r in ok("ingest").items()}
    fps_of = {v: o.fps for v, o in ing.items()}

    def fps(v: str) -> int:
        return fps_of.get(v, pipeline.fps or DEFAULT_FPS)

    cont = {v: contiguity.Outputs.of(r) for v, r in ok("contiguity").items()}
    lmdb_path = out / pipeline.params.get("pack", {}).get("lmdb", pack.Params().lmdb)
    meta, index = None, {}
    if (lmdb_path / "data.mdb").exists():
        try:
            meta = WindowReader(lmdb_path, split=None).meta
            index = {s: WindowReader(lmdb_path, split=s).keys for s in SPLITS}
        except ValueError as e:   # an unfinished or foreign file: say so, show the manifests
            notes.append(f"{e}")
            lmdb_path, meta, index = None, None, {}
    else:
        lmdb_path = None
        notes.append("pack has not written an LMDB yet: no windows, splits or packed hours; "
                     "the sections below show what the manifests hold so far.")
    # What is packed is what the LMDB holds (its markers), as `chorushead status` reads it
    packed_recs = {v: s for v, s in packed_videos(lmdb_path).items() if v in items} if lmdb_path else {}
    notes += dataset_notes(collect_status(out, pipeline))
    funnel = _funnel(items, stages, latest, ing, cont, packed_recs, fps)
    splits, violations = _splits(index, packed_recs, cont, fps)

    # Table 1
    n_windows = sum(len(k) for k in index.values())
    crops = {v: crop.Outputs.of(r) for v, r in ok("crop").items()}
    seg_total = sum(len(o.segments) for o in cont.values())
    kept_s = sum(_frames(o.segments) / fps(v) for v, o in cont.items())
    packed_s = sum(int(o["frames"]) / fps(v) for v, o in packed_recs.items())
    singers = Counter(o.n_strips for o in crops.values())
    source_fps = _counts(Counter(f"{o.source_fps:g} fps" for o in ing.values()), "video")
    summary = [
        ("Videos registered", str(len(items))),
        ("Videos ingested", str(len(ing))),
        ("Hours ingested", f"{sum(o.duration for o in ing.values()) / 3600:.4f}"),
        ("Hours kept (contiguous segments)", f"{kept_s / 3600:.4f}"),
        ("Hours packed", f"{packed_s / 3600:.4f}" if lmdb_path else "not packed yet"),
        ("Segments (kept / packed)", f"{seg_total} / {sum(int(o['segments']) for o in packed_recs.values())}"),
        ("Windows", f"{n_windows} (" + ", ".join(f"{s} {len(index.get(s, []))}" for s in SPLITS) + ")"
         if lmdb_path else "not packed yet"),
        ("Singers per video", _counts(singers, "video") or "no crops yet"),
        ("Frame rate (pipeline)", f"{pipeline.fps} fps" + (f"; sources: {source_fps}" if ing else "")),
        ("Resolutions", _counts(Counter(f"{o.width}x{o.height}" for o in ing.values()), "video") or "nothing ingested"),
    ]
    if meta:
        summary += [("Window / stride", f"{meta['window']} / {meta['stride']} frames at {meta['fps']} fps"),
                    ("Audio", f"{meta['sr']} Hz"),
                    ("Fit", f"{meta.get('fit_backend', '?')} ({', '.join(meta.get('coeff_groups', []))})"),
                    ("Singers per window", ", ".join(map(str, meta.get("singer_counts", []))))]

    versions = {s: dict(Counter(r.stage_version or "?" for v, r in latest.get(s, {}).items() if v in items))
                for s in stages}
    prints = {v: {s: latest[s][v].fingerprint for s in stages if v in latest.get(s, {})} for v in sorted(items)}
    dists = _distributions(out, ok, cont, crops, fps, notes)
    same = _same_params(out, items, latest, pipeline)
    if any(n < total for n, total in same.values()):
        notes.append("Some records were made with other parameters than the pipeline file's (Provenance says "
                     "which stages): the card shows the file's; pass the build's --pipeline/--set to report.")
    return Card(out=out, pipeline=pipeline, pipeline_file=pipeline_file, summary=summary, funnel=funnel,
                splits=splits, split_violations=violations, versions=versions, fingerprints=prints, same_params=same,
                lmdb=lmdb_path, meta=meta, dists=dists, notes=notes)


def _same_params(out: Path, items: dict, latest: dict[str, dict[str, Record]],
                 pipeline: Pipeline) -> dict[str, tuple[int, int]]:
    """Per stage: of its ok records, how many carry the fingerprint these parameters give now (the
    runner's own computation, over the recorded upstream fingerprints). All of them: the parameters the
    card shows are exactly the ones the data came from."""
    res = {}
    its = list(items.values())
    plan = Plan.of(pipeline)
    for name in pipeline.stages:
        stage = get_stage(name)
        mine = {v: r for v, r in latest.get(name, {}).items() if r.ok and v in items}
        ready = {vid: {need: latest[need][vid] for need in stage.needs} for vid in mine
                 if all(latest.get(need, {}).get(vid) is not None for need in stage.needs)}
        plans: dict[str, Any] = {}
        if stage.kind == "global" and stage.plan is not None:
            ctx = GlobalContext(out=out, fps=pipeline.fps, upstream=dict(sorted(ready.items())), previous={},
                                fingerprints={}, progress=False, items=sorted(items))
            plans = stage.plan(ctx, plan.params[name])
        same = sum(1 for v, r in mine.items() if v in ready and r.fingerprint == plan.fingerprint(
            name, items[v], ready[v], plans.get(v)))
        res[name] = (same, len(mine))
    return res


def _frames(segments: list[list[int]]) -> int:
    return int(sum(b - a for a, b in segments))


def _counts(c: Counter, unit: str) -> str:
    return ", ".join(f"{k} ({n} {unit}{'s' if n != 1 else ''})" for k, n in sorted(c.items(), key=str))


def _funnel(items: dict, stages: list[str], latest: dict[str, dict[str, Record]], ing: dict, cont: dict,
            packed: dict, fps: Callable[[str], int]) -> list[FunnelRow]:
    """Videos and hours after every stage. A video's hours shrink where a stage cuts: vad trims the
    silence, crop may decode short, contiguity keeps the runs with every face, pack takes the reviewed
    segments; the other stages carry the hours of their input."""
    seconds: dict[str, float] = {v: o.duration for v, o in ing.items()}
    rows = []
    for s in stages:
        recs = {v: r for v, r in latest.get(s, {}).items() if v in items}
        good = [v for v, r in recs.items() if r.ok]
        if s == "vad":
            seconds = {v: (o.end_s - o.start_s) for v, o in ((v, vad.Outputs.of(recs[v])) for v in good)}
        elif s == "crop":
            seconds = {v: crop.Outputs.of(recs[v]).frames / fps(v) for v in good}
        elif s == "contiguity":
            seconds = {v: _frames(cont[v].segments) / fps(v) for v in good if v in cont}
        elif s == "pack":   # what the LMDB holds (stale windows included: they are in the dataset)
            good = [v for v in items if v in packed]
            seconds = {v: int(packed[v]["frames"]) / fps(v) for v in good}
        reasons: Counter = Counter()
        for r in recs.values():
            if r.status == "skipped":
                reasons[f"skipped: {r.reason or 'no reason given'}"] += 1
            elif r.status == "failed":
                msg = (r.message or "").splitlines()[0] if r.message else ""
                reasons[f"failed: {r.error_class or 'error'}: {msg[:160]}"] += 1
        st = Counter(r.status for r in recs.values())
        rows.append(FunnelRow(stage=s, videos=len(good), done=st["done"], skipped=st["skipped"], failed=st["failed"],
                              pending=len(items) - len(recs), hours=sum(seconds.get(v, 0.0) for v in good) / 3600,
                              reasons=dict(reasons.most_common())))
    return rows


def _splits(index: dict[str, list[str]], packed: dict, cont: dict,
            fps: Callable[[str], int]) -> tuple[list[SplitRow], list[str]]:
    """Per split from the LMDB index: its videos and windows; hours from the packed segments. A video
    whose windows sit in two splits would leak a song between training and test."""
    where: dict[str, set[str]] = {}
    rows = []
    for s in SPLITS:
        keys = index.get(s, [])
        vids = sorted({k.split("/")[1] for k in keys})
        for v in vids:
            where.setdefault(v, set()).add(s)
        hours = sum(int(packed[v]["frames"]) / fps(v) for v in vids if v in packed) / 3600
        rows.append(SplitRow(split=s, videos=vids, windows=len(keys), hours=hours))
    violations = [f"{v}: windows in {', '.join(s for s in SPLITS if s in ss)}" for v, ss in sorted(where.items())
                  if len(ss) > 1]
    violations += [f"{v}: its marker says {packed[v]['split']}, the LMDB index holds it in {next(iter(ss))}"
                   for v, ss in sorted(where.items()) if len(ss) == 1 and v in packed and packed[v]["split"] not in ss]
    return rows, violations


def _distributions(out: Path, ok: Callable[[str], dict[str, Record]], cont: dict, crops: dict,
                   fps: Callable[[str], int], notes: list[str]) -> dict[str, Any]:
    from scipy.spatial.transform import Rotation

    d: dict[str, Any] = {}
    d["segment_seconds"] = np.array([(b - a) / fps(v) for v, o in cont.items() for a, b in o.segments], float)
    d["kept_minutes"] = np.array([_frames(o.segments) / fps(v) / 60 for v, o in cont.items()], float)
    # motion per singer position (strip k, left to right) over every smoothed segment
    jaw: dict[int, list[np.ndarray]] = {}
    pose: dict[int, list[np.ndarray]] = {}
    for v, r in ok("smooth").items():
        for rel in smooth.Outputs.of(r).segments:
            c = np.load(out / rel)["coeffs"]            # (S, T, 56)
            for k in range(c.shape[0]):
                jaw.setdefault(k, []).append(np.degrees(c[k, :, JAW_OPEN]))
                # FLAME's global pose is an axis-angle; as x/y/z Euler angles: pitch, yaw, roll
                pose.setdefault(k, []).append(Rotation.from_rotvec(c[k, :, POSE].astype(np.float64))
                                              .as_euler("xyz", degrees=True))
    d["jaw"] = {k: np.concatenate(a) for k, a in sorted(jaw.items())}
    d["pose"] = {k: np.concatenate(a) for k, a in sorted(pose.items())}
    if not jaw:
        notes.append("no smoothed segments yet: jaw and head-pose distributions are empty")
    probs: dict[int, list[np.ndarray]] = {}
    for v, o in crops.items():
        with np.load(out / o.detections) as det:
            p, found = det["probs"], det["detected"]
        for k in range(p.shape[0]):
            probs.setdefault(k, []).append(p[k][found[k] & (p[k] > 0)])   # detector's own outputs only
    d["detection"] = {k: np.concatenate(a) for k, a in sorted(probs.items())}
    d["face_fraction"] = {v: [n / max(1, crop.Metrics.of(r).frames) for n in crop.Metrics.of(r).faces_per_strip]
                          for v, r in ok("crop").items() if r.status == "done"}
    d["assign"] = np.array([assign.Outputs.of(r).confidence for r in ok("assign").values()], float)
    d["assign_low"] = sum(assign.Outputs.of(r).low_confidence for r in ok("assign").values())
    # decisions belong to frames: applied to the segments as they are now (core/decisions.py)
    vads = ok("vad")
    decided = review_decisions(out, {v: timeline_ranges(vad.Outputs.of(vads[v]).start_frame, o.segments)
                                     for v, o in cont.items() if v in vads})
    review = Counter()
    for v, o in cont.items():
        for i in range(len(o.segments)):
            review[decided.get((v, i), "unreviewed")] += 1
    d["review"] = {k: review.get(k, 0) for k in ("accept", "reject", "unreviewed")}
    return d


# ----------------------------------------------------------------------------- plots
def _figure(w: float = 6.0, h: float = 3.2):
    from matplotlib.figure import Figure
    return Figure(figsize=(w, h), dpi=100, layout="constrained")


def _save(fig, dest: Path, name: str) -> str:
    fig.savefig(dest / name)
    return name


def _overlaid_hist(groups: dict[int, np.ndarray], bins: int, label: str, xlabel: str, title: str):
    """One figure: a translucent histogram per group (singer position / strip), numbered from 1."""
    fig = _figure()
    ax = fig.add_subplot(111)
    for k, a in groups.items():
        ax.hist(a, bins=bins, alpha=0.55, label=f"{label} {k + 1}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("frames")
    ax.legend()
    ax.set_title(title)
    return fig


def _plots(card: Card, dest: Path) -> dict[str, str]:
    """name -> PNG file (relative to ``dest``) for every plot with data."""
    d, out = card.dists, {}
    if card.funnel:
        fig = _figure(7, 3.4)
        ax = fig.add_subplot(111)
        x = np.arange(len(card.funnel))
        in_hours = max(r.hours for r in card.funnel) >= 1.0     # a real corpus; the demo is minutes
        ax.bar(x, [r.hours * (1 if in_hours else 60) for r in card.funnel], color="#4477aa")
        ax.set_xticks(x, [r.stage for r in card.funnel], rotation=30, ha="right")
        ax.set_ylabel("hours" if in_hours else "minutes")
        ax2 = ax.twinx()
        ax2.plot(x, [r.videos for r in card.funnel], "o-", color="#cc6677")
        ax2.set_ylabel("videos", color="#cc6677")
        ax2.set_ylim(0, max(1, max(r.videos for r in card.funnel)) * 1.15)
        ax.set_title("yield after each stage")
        out["funnel"] = _save(fig, dest, "funnel.png")
    for key, label, title in (("segment_seconds", "seconds", "segment length"),
                              ("kept_minutes", "minutes", "kept footage per video")):
        if len(d[key]):
            fig = _figure()
            ax = fig.add_subplot(111)
            ax.hist(d[key], bins=min(30, max(5, len(d[key]))), color="#4477aa")
            ax.set_xlabel(label)
            ax.set_ylabel("segments" if key == "segment_seconds" else "videos")
            ax.set_title(title)
            out[key] = _save(fig, dest, f"{key}.png")
    if d["jaw"]:
        fig = _overlaid_hist(d["jaw"], 40, "singer position", "jaw opening (degrees)",
                             "jaw opening per singer position")
        out["jaw"] = _save(fig, dest, "jaw.png")
    if d["pose"]:
        fig = _figure(9, 3.0)
        for j, name in enumerate(("pitch", "yaw", "roll")):
            ax = fig.add_subplot(1, 3, j + 1)
            for k, a in d["pose"].items():
                ax.hist(a[:, j], bins=40, alpha=0.55, label=f"position {k + 1}")
            ax.set_xlabel(f"head {name} (degrees)")
            if j == 0:
                ax.set_ylabel("frames")
                ax.legend(fontsize=8)
        out["pose"] = _save(fig, dest, "head_pose.png")
    if any(len(a) for a in d["detection"].values()):
        fig = _overlaid_hist(d["detection"], 30, "strip", "MTCNN face probability (detected frames)",
                             "detection confidence (crop)")
        out["detection"] = _save(fig, dest, "detection.png")
    if len(d["assign"]):
        fig = _figure()
        ax = fig.add_subplot(111)
        ax.hist(d["assign"], bins=min(30, max(5, len(d["assign"]))), color="#228833")
        ax.set_xlabel("assignment margin (best over second-best)")
        ax.set_ylabel("videos")
        ax.set_title(f"voice-to-singer assignment confidence ({d['assign_low']} flagged low)")
        out["assign"] = _save(fig, dest, "assign.png")
    if sum(d["review"].values()):
        fig = _figure(5, 2.8)
        ax = fig.add_subplot(111)
        ax.bar(list(d["review"]), list(d["review"].values()), color=["#228833", "#cc6677", "#bbbbbb"])
        ax.set_ylabel("segments")
        ax.set_title("review decisions")
        out["review"] = _save(fig, dest, "review.png")
    if card.lmdb is not None:
        fig = _figure(5, 2.8)
        ax = fig.add_subplot(111)
        ax.bar([s.split for s in card.splits], [s.windows for s in card.splits], color="#4477aa")
        ax.set_ylabel("windows")
        ax.set_title("windows per split")
        out["splits"] = _save(fig, dest, "splits.png")
    return out


# ----------------------------------------------------------------------------- writing
@dataclass
class Section:
    title: str
    text: list[str] = field(default_factory=list)                          # paragraphs
    tables: list[tuple[list[str], list[list[str]]]] = field(default_factory=list)
    images: list[tuple[str, str]] = field(default_factory=list)            # (file, alt)


def _sections(card: Card, plots: dict[str, str]) -> list[Section]:
    d = card.dists
    secs = [Section("Summary", text=list(card.notes),
                    tables=[(["", "value"], [[k, v] for k, v in card.summary])])]
    f = Section("Yield funnel", text=["Videos usable after each stage (done or skipped) and the hours they hold."],
                tables=[(["stage", "videos", "hours", "done", "skipped", "failed", "pending"],
                         [[r.stage, str(r.videos), f"{r.hours:.4f}", str(r.done), str(r.skipped), str(r.failed),
                           str(r.pending)] for r in card.funnel])])
    reasons = [[r.stage, why, str(n)] for r in card.funnel for why, n in r.reasons.items()]
    if reasons:
        f.tables.append((["stage", "reason", "videos"], reasons))
    if "funnel" in plots:
        f.images.append((plots["funnel"], "yield funnel"))
    secs.append(f)

    dist = Section("Distributions")
    seg = d["segment_seconds"]
    if len(seg):
        dist.text.append(f"{len(seg)} segment(s): {seg.min():.2f} to {seg.max():.2f} s, median {np.median(seg):.2f} s.")
    else:
        dist.text.append("No contiguous segments yet (contiguity has not run or kept nothing).")
    for key, alt in (("segment_seconds", "segment length"), ("kept_minutes", "kept footage per video"),
                     ("jaw", "jaw opening per singer position"),
                     ("pose", "head pitch, yaw and roll per singer position"),
                     ("detection", "detection confidence"), ("assign", "assignment confidence"),
                     ("review", "review decisions")):
        if key in plots:
            dist.images.append((plots[key], alt))
    rows = []
    for k, a in d["jaw"].items():
        p = d["pose"][k]
        rows.append([f"{k + 1}", str(len(a)), f"{a.mean():.2f} ± {a.std():.2f}"]
                    + [f"{p[:, j].mean():.2f} ± {p[:, j].std():.2f}" for j in range(3)])
    if rows:
        dist.text.append("Motion per singer position (strip, left to right) over every smoothed segment, degrees.")
        dist.tables.append((["position", "frames", "jaw", "pitch", "yaw", "roll"], rows))
    det_rows = [[f"{k + 1}", str(len(a)), f"{a.mean():.4f}" if len(a) else "-", f"{a.min():.4f}" if len(a) else "-"]
                for k, a in d["detection"].items()]
    if det_rows:
        dist.tables.append((["strip", "detected frames", "mean probability", "min probability"], det_rows))
    if len(d["assign"]):
        dist.text.append(f"Assignment confidence over {len(d['assign'])} video(s): mean {d['assign'].mean():.3f}, "
                         f"min {d['assign'].min():.3f}; {d['assign_low']} flagged low for review.")
    dist.text.append("Review decisions over the kept segments: "
                     + ", ".join(f"{k} {n}" for k, n in d["review"].items()) + ".")
    secs.append(dist)

    sp = Section("Splits")
    if card.lmdb is None:
        sp.text.append("Not packed yet: no splits.")
    else:
        sp.tables.append((["split", "videos", "windows", "hours"],
                          [[s.split, str(len(s.videos)), str(s.windows), f"{s.hours:.4f}"] for s in card.splits]))
        if card.split_violations:
            sp.text.append("FAILED: videos in more than one split: " + "; ".join(card.split_violations))
        else:
            sp.text.append("Check passed: no video has windows in two splits.")
        if "splits" in plots:
            sp.images.append((plots["splits"], "windows per split"))
    secs.append(sp)

    prov = Section("Provenance", text=[f"Build folder: {card.out}. Pipeline file: {card.pipeline_file or 'default'} "
                                       f"(its parameters as they read now; the fingerprints identify exactly what "
                                       f"each video's data came from); fps {card.pipeline.fps}."])
    prov.tables.append((["stage", "version(s) in the manifests (videos)", "records these parameters reproduce",
                         "parameters"],
                        [[s, ", ".join(f"v{v} ({n})" for v, n in sorted(card.versions.get(s, {}).items())) or "not run",
                          "{} of {}".format(*card.same_params.get(s, (0, 0))),
                          json.dumps(card.pipeline.params.get(s, {}), sort_keys=True)] for s in card.pipeline.stages]))
    if card.meta is not None:
        summ = card.meta.get("summary")
        prov.text.append(f"LMDB {card.lmdb}: format {card.meta.get('format')} v{card.meta.get('version')}; "
                         + ("its __meta__ carries pack's summary (below), so a copy keeps its provenance."
                            if summ else "its __meta__ has no summary (packed before pack wrote one; rerun pack)."))
        if summ:
            prov.tables.append((["video", "split", "segments", "frames", "windows", "pack fingerprint"],
                                [[v, s["split"], str(s["segments"]), str(s["frames"]), str(s["windows"]),
                                  s["fingerprint"]] for v, s in summ["videos"].items()]))
            prov.text.append("Upstream stage versions in the LMDB: " + json.dumps(summ.get("stage_versions", {}))
                             + f"; pack v{summ.get('pack_version')} with " + json.dumps(summ.get("pack_params", {})))
    stages = card.pipeline.stages
    prov.text.append("The last table: the fingerprint of each video's newest record per stage (manifests/<stage>.jsonl); "
                     "a fingerprint covers the stage's version, parameters, fps and its inputs' fingerprints.")
    vids = list(card.fingerprints)[:FINGERPRINT_ROWS]
    prov.tables.append((["video"] + stages, [[v] + [card.fingerprints[v].get(s, "-") for s in stages] for v in vids]))
    if len(card.fingerprints) > FINGERPRINT_ROWS:
        prov.text.append(f"... and {len(card.fingerprints) - FINGERPRINT_ROWS} more videos (see manifests/*.jsonl).")
    secs.append(prov)
    return secs


def _md(secs: list[Section], title: str) -> str:
    def cell(x: str) -> str:
        return x.replace("|", "\\|").replace("\n", " ")
    lines = [f"# {title}", ""]
    for s in secs:
        lines += [f"## {s.title}", ""]
        for t in s.text:
            lines += [t, ""]
        for head, rows in s.tables:
            lines.append("| " + " | ".join(cell(h) for h in head) + " |")
            lines.append("|" + "---|" * len(head))
            lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
            lines.append("")
        for img, alt in s.images:
            lines += [f"![{alt}]({img})", ""]
    return "\n".join(lines)


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em}td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:left;vertical-align:top}th{background:#f0f0f0}img{max-width:100%;display:block;margin:.8em 0}
h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}.fail{color:#b00}
.wide{overflow-x:auto;max-width:100%}td{overflow-wrap:break-word}"""


def _html(secs: list[Section], title: str) -> str:
    e = html.escape
    parts = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{e(title)}</title>",
             f"<style>{_CSS}</style></head><body>", f"<h1>{e(title)}</h1>"]
    for s in secs:
        parts.append(f'<section id="{e(s.title.lower().replace(" ", "-"))}"><h2>{e(s.title)}</h2>')
        for t in s.text:
            cls = ' class="fail"' if t.startswith("FAILED") else ""
            parts.append(f"<p{cls}>{e(t)}</p>")
        for head, rows in s.tables:
            parts.append('<div class="wide"><table><tr>' + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>")
            parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows]
            parts.append("</table></div>")
        for img, alt in s.images:
            parts.append(f'<img src="{e(img)}" alt="{e(alt)}">')
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_card(card: Card, dest: Path | None = None) -> Path:
    """Write index.html, report.md and the PNGs into ``dest`` (default ``<out>/report``); return index.html."""
    dest = Path(dest) if dest else card.out / REPORT_DIR
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.png"):   # plots without data this time must not linger from an earlier card
        old.unlink()
    plots = _plots(card, dest)
    secs = _sections(card, plots)
    title = f"ChorusHead dataset card: {card.out.resolve().parent.name}/{card.out.name}"
    (dest / "report.md").write_text(_md(secs, title))
    (dest / "index.html").write_text(_html(secs, title))
    return dest / "index.html"


def report(out: Path, pipeline: Pipeline, pipeline_file: str = "") -> Path:
    return write_card(collect(out, pipeline, pipeline_file))


def card_hint(out: Path, pipeline: Pipeline) -> str | None:
    """One line for `build`/`status` once pack has written the LMDB: where the card is, or how to make it."""
    import shlex
    lmdb = Path(out) / pipeline.params.get("pack", {}).get("lmdb", pack.Params().lmdb)
    if not (lmdb / "data.mdb").exists():
        return None
    index = Path(out) / REPORT_DIR / "index.html"
    cmd = f"chorushead report --out {shlex.quote(str(out))}"
    if index.exists() and index.stat().st_mtime >= (lmdb / "data.mdb").stat().st_mtime:
        return f"Dataset card: {index} (refresh: {cmd})"
    what = "is older than the LMDB; refresh it" if index.exists() else "not written yet"
    return f"Dataset card: {index} {what}: {cmd}"
