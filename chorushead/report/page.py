"""Writing the dataset card: its sections (one function each) as Markdown and as one HTML page that links
the PNGs relatively, so the folder can be copied or opened from disk."""
from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from chorushead.report.card import Card, collect
from chorushead.report.plots import draw
from chorushead.runner import Pipeline
from chorushead.stages import pack

REPORT_DIR = "report"
FINGERPRINT_ROWS = 200   # videos listed with their fingerprints (the rest are counted)


@dataclass
class Section:
    title: str
    text: list[str] = field(default_factory=list)                          # paragraphs
    tables: list[tuple[list[str], list[list[str]]]] = field(default_factory=list)
    images: list[tuple[str, str]] = field(default_factory=list)            # (file, alt)


def summary_section(card: Card, plots: dict[str, str]) -> Section:
    return Section("Summary", text=list(card.notes), tables=[(["", "value"], [[k, v] for k, v in card.summary])])


def funnel_section(card: Card, plots: dict[str, str]) -> Section:
    f = Section("Yield funnel", text=["Videos usable after each stage (done or skipped) and the hours they hold."],
                tables=[(["stage", "videos", "hours", "done", "skipped", "failed", "pending"],
                         [[r.stage, str(r.videos), f"{r.hours:.4f}", str(r.done), str(r.skipped), str(r.failed),
                           str(r.pending)] for r in card.funnel])])
    reasons = [[r.stage, why, str(n)] for r in card.funnel for why, n in r.reasons.items()]
    if reasons:
        f.tables.append((["stage", "reason", "videos"], reasons))
    if "funnel" in plots:
        f.images.append((plots["funnel"], "yield funnel"))
    return f


DISTRIBUTION_PLOTS = (("segment_seconds", "segment length"), ("kept_minutes", "kept footage per video"),
                      ("jaw", "jaw opening per singer position"),
                      ("pose", "head pitch, yaw and roll per singer position"),
                      ("expression", "expression per singer position"),
                      ("detection", "detection confidence"), ("assign", "assignment confidence"),
                      ("review", "review decisions"))


def distributions_section(card: Card, plots: dict[str, str]) -> Section:
    d = card.dists
    dist = Section("Distributions", images=[(plots[k], alt) for k, alt in DISTRIBUTION_PLOTS if k in plots])
    seg = d["segment_seconds"]
    if len(seg):
        dist.text.append(f"{len(seg)} segment(s): {seg.min():.2f} to {seg.max():.2f} s, median {np.median(seg):.2f} s.")
    else:
        dist.text.append("No contiguous segments yet (contiguity has not run or kept nothing).")
    rows = [[f"{k + 1}", str(len(a)), f"{a.mean():.2f} ± {a.std():.2f}"]
            + [f"{d['pose'][k][:, j].mean():.2f} ± {d['pose'][k][:, j].std():.2f}" for j in range(3)]
            for k, a in d["jaw"].items()]
    if rows:
        dist.text.append("Motion per singer position (strip, left to right) over every smoothed segment, degrees.")
        dist.tables.append((["position", "frames", "jaw", "pitch", "yaw", "roll"], rows))
    names = d.get("expression_names") or []
    exp_rows = []
    for k, a in (d.get("expression") or {}).items():
        rms = np.sqrt((a.astype(np.float64) ** 2).mean(0)) if len(a) else np.zeros(len(names))
        top = np.argsort(rms)[::-1][:3]
        exp_rows.append([f"{k + 1}", ", ".join(f"{names[j]} {rms[j]:.2f}" for j in top)])
    if exp_rows and len(names):
        dist.text.append("Most active expression coefficients per singer position (RMS over frames; the landmark "
                         "fit's are the open head's named actions, chorushead.core.openhead).")
        dist.tables.append((["position", "most active (RMS)"], exp_rows))
    det_rows = [[f"{k + 1}", str(len(a)), f"{a.mean():.4f}" if len(a) else "-", f"{a.min():.4f}" if len(a) else "-"]
                for k, a in d["detection"].items()]
    if det_rows:
        dist.tables.append((["strip", "detected frames", "mean probability", "min probability"], det_rows))
    if len(d["assign"]):
        dist.text.append(f"Assignment confidence over {len(d['assign'])} video(s): mean {d['assign'].mean():.3f}, "
                         f"min {d['assign'].min():.3f}; {d['assign_low']} flagged low for review.")
    dist.text.append("Review decisions over the kept segments: "
                     + ", ".join(f"{k} {n}" for k, n in d["review"].items()) + ".")
    return dist


def splits_section(card: Card, plots: dict[str, str]) -> Section:
    sp = Section("Splits")
    if card.lmdb is None:
        sp.text.append("Not packed yet: no splits.")
        return sp
    sp.tables.append((["split", "videos", "windows", "hours"],
                      [[s.split, str(len(s.videos)), str(s.windows), f"{s.hours:.4f}"] for s in card.splits]))
    if card.split_violations:
        sp.text.append("FAILED: videos in more than one split: " + "; ".join(card.split_violations))
    else:
        sp.text.append("Check passed: no video has windows in two splits."
                       + (f" Every group of duplicates ({len(card.duplicates)}) is in one split." if card.duplicates else ""))
    if card.duplicates:   # pack's groups: the same song in several videos (the fingerprint stage)
        sp.tables.append((["duplicates (one song)", "split", "matched by", "score"],
                          [[", ".join(g["members"]), ", ".join(sorted(set(g.get("splits", {}).values()))),
                            "; ".join(f"{lk['a']} ~ {lk['b']}: {lk['by']}" for lk in g["links"]),
                            "; ".join(f"{lk['score']:g}" + (" BER" if lk["by"] == "audio" else " bits")
                                      for lk in g["links"])] for g in card.duplicates]))
    elif card.lmdb is not None:
        sp.text.append("Duplicates: none found among the fingerprinted videos (pack's audio and frame-hash check).")
    if "splits" in plots:
        sp.images.append((plots["splits"], "windows per split"))
    return sp


def provenance_section(card: Card, plots: dict[str, str]) -> Section:
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
    if card.sources:
        prov.text.append(f"Sources: {len(card.sources)} of {len(card.fingerprints)} video(s) were downloaded by "
                         "`chorushead fetch` (its fetch.jsonl beside them); as their sites describe them:")
        prov.tables.append((["video", "URL", "title", "uploader", "licence", "duration (s)"],
                            [[v, o.get("url") or "-", o.get("title") or "-", o.get("uploader") or "-",
                              o.get("license") or "not stated", f"{o['duration']:g}" if o.get("duration") else "-"]
                             for v, o in list(card.sources.items())[:FINGERPRINT_ROWS]]))
        if len(card.sources) > FINGERPRINT_ROWS:
            prov.text.append(f"... and {len(card.sources) - FINGERPRINT_ROWS} more sources (see OUT/items.json).")
    stages = card.pipeline.stages
    prov.text.append("The last table: the fingerprint of each video's newest record per stage (manifests/<stage>.jsonl); "
                     "a fingerprint covers the stage's version, parameters, fps and its inputs' fingerprints.")
    vids = list(card.fingerprints)[:FINGERPRINT_ROWS]
    prov.tables.append((["video"] + stages, [[v] + [card.fingerprints[v].get(s, "-") for s in stages] for v in vids]))
    if len(card.fingerprints) > FINGERPRINT_ROWS:
        prov.text.append(f"... and {len(card.fingerprints) - FINGERPRINT_ROWS} more videos (see manifests/*.jsonl).")
    return prov


SECTIONS = (summary_section, funnel_section, distributions_section, splits_section, provenance_section)


def markdown(secs: list[Section], title: str) -> str:
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


def page(secs: list[Section], title: str) -> str:
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
    plots = draw(card, dest)
    secs = [make(card, plots) for make in SECTIONS]
    title = f"ChorusHead dataset card: {card.out.resolve().parent.name}/{card.out.name}"
    (dest / "report.md").write_text(markdown(secs, title))
    (dest / "index.html").write_text(page(secs, title))
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
