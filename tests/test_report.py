"""`chorushead report`: the dataset card's numbers against the manifests and the LMDB, read raw here
(JSON lines and the LMDB's own keys), not through the report's code."""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from chorushead.cli import app
from chorushead.core.decisions import record_decision
from chorushead.core.manifest import Manifest, Record
from chorushead.core.windows import open_env
from chorushead.report import _splits, card_hint, collect, write_card
from chorushead.runner import Pipeline, save_items
from chorushead.stages.base import Item

from packfixture import make_upstream


def records(out: Path, stage: str) -> dict[str, dict]:
    """Newest raw record per item of one stage manifest."""
    path = out / "manifests" / f"{stage}.jsonl"
    res = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                d = json.loads(line)
                res[d["item"]] = d
    return res


def raw_lmdb(out: Path) -> tuple[dict, dict]:
    """__meta__ and __index__ as stored (through the process's shared read-only environment: the report
    has opened this file in this process already)."""
    with open_env(out / "windows.lmdb").begin() as txn:
        return json.loads(txn.get(b"__meta__")), json.loads(txn.get(b"__index__"))


def md_row(md: str, label: str) -> str:
    m = re.search(rf"^\| {re.escape(label)} \| (.*) \|$", md, re.M)
    assert m, f"no row {label!r} in report.md"
    return m.group(1)


def funnel_rows(md: str) -> dict[str, list[str]]:
    block = md.split("## Yield funnel", 1)[1].split("## ", 1)[0]
    rows = {}
    for line in block.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 7 and cells[0] not in ("stage", "---"):
            rows[cells[0]] = cells[1:]
    return rows


# ----------------------------------------------------------------------------- a build without ingest/crop
@pytest.mark.slow
def test_card_of_a_build_without_ingest_or_crop_and_pack_blocked_on_it(tmp_path):
    """vad .. assign records only (a partial or older build): the card says what exists, and a build's
    pack refuses to pack on upstream records that are not current (issue 18: only current inputs flow)."""
    out = tmp_path / "b"
    make_upstream(out, n_videos=3, fit_backend="landmarks", read_by_pack_only=True)
    record_decision(out, "song1-abcdef", 0, "reject", frames=(0, 200))
    # a fourth video that failed at ingest: counted in the funnel with its reason
    save_items(out, [Item(id="broken-123456", source="/raw/broken.mp4")])
    Manifest(out, "ingest").append(Record(item="broken-123456", stage="ingest", status="failed", fingerprint="x",
                                          error_class="BadInput", message="no video stream\nffprobe said ..."))
    pl = Pipeline.load()

    card = collect(out, pl)
    assert card.lmdb is None and any("pack has not written an LMDB" in n for n in card.notes)
    write_card(card)
    md = (out / "report" / "report.md").read_text()
    assert md_row(md, "Windows") == "not packed yet" and "Not packed yet: no splits." in md
    funnel = funnel_rows(md)
    assert funnel["ingest"] == ["0", "0.0000", "0", "0", "1", "3"]      # 1 failed, 3 without ingest records
    assert "| ingest | failed: BadInput: no video stream | 1 |" in md
    assert funnel["contiguity"][0] == "3" and funnel["pack"][-1] == "4"
    assert md_row(md, "Videos registered") == "4" and md_row(md, "Videos ingested") == "0"
    # motion comes from the smoothed segments even without a pack: both singer positions
    assert sorted(card.dists["jaw"]) == [0, 1] and len(card.dists["jaw"][0]) == 3 * (200 + 140)
    # ... and the expression: landmark fits, so the open head's named actions, per position
    assert card.dists["expression"][1].shape == (3 * (200 + 140), 50)
    assert card.dists["expression_names"][:2] == ["smile", "smile_asym"]
    assert "Most active expression coefficients per singer position" in md and "expression.png" in md
    assert card.dists["review"] == {"accept": 0, "reject": 1, "unreviewed": 5}
    assert card_hint(out, pl) is None     # nothing packed: build/status say nothing of a card
    res = CliRunner().invoke(app, ["build", "--out", str(out), "--stages", "pack", "--quiet"])
    assert res.exit_code == 1 and not (out / "windows.lmdb").exists(), res.output
    assert next(line for line in res.output.splitlines() if line.startswith("pack")).split()[5] == "4"  # blocked


@pytest.mark.slow   # packs 3 videos and draws the card twice (~9-14 s)
def test_card_before_and_after_pack_says_what_exists(tmp_path):
    out = tmp_path / "b"
    make_upstream(out, n_videos=3, fit_backend="landmarks")    # current records up to assign
    record_decision(out, "song1-abcdef", 0, "reject", frames=(0, 200))
    pl = Pipeline.load()
    card = collect(out, pl)
    assert card.lmdb is None
    write_card(card)

    res = CliRunner().invoke(app, ["build", "--out", str(out), "--stages", "pack", "--quiet"])
    assert res.exit_code == 0, res.output
    # the card written above predates the LMDB: build says to refresh it
    assert res.output.strip().splitlines()[-1] == (f"Dataset card: {out / 'report' / 'index.html'} is older than "
                                                   f"the LMDB; refresh it: chorushead report --out {out}")
    card = collect(out, pl)
    index_html = write_card(card)
    meta, index = raw_lmdb(out)
    want = {s: len(index[s]) for s in ("train", "val", "test")}
    assert {s.split: s.windows for s in card.splits} == want
    md = (out / "report" / "report.md").read_text()
    assert md_row(md, "Windows") == (f"{sum(want.values())} (train {want['train']}, val {want['val']}, "
                                     f"test {want['test']})")
    # hours packed: the frames of the packed segments (song1's segment 0 rejected) at 30 fps
    packs, cont = records(out, "pack"), records(out, "contiguity")
    frames = sum(cont[v]["outputs"]["segments"][i][1] - cont[v]["outputs"]["segments"][i][0]
                 for v, r in packs.items() for i in r["outputs"]["segments_packed"])
    assert frames == 2 * 340 + 140
    assert md_row(md, "Hours packed") == f"{frames / 30 / 3600:.4f}"
    assert funnel_rows(md)["pack"][:2] == ["3", f"{frames / 30 / 3600:.4f}"]
    # the meta's summary (pack writes it) agrees with the index, video by video
    summ = meta["summary"]["videos"]
    per_video = Counter(k.split("/")[1] for s in index.values() for k, _ in s)
    # song1 keeps only its 140-frame segment: shorter than a window, so packed with no windows
    assert {v: s["windows"] for v, s in summ.items()} == {v: per_video.get(v, 0) for v in packs}
    assert per_video.get("song1-abcdef", 0) == 0
    assert {v: s["split"] for v, s in summ.items()} == {v: r["outputs"]["split"] for v, r in packs.items()}
    assert summ["song1-abcdef"]["segments"] == 1 and summ["song0-abcdef"]["frames"] == 340
    assert "Check passed: no video has windows in two splits." in md
    assert not card.split_violations
    assert card_hint(out, pl) == (f"Dataset card: {index_html} (refresh: chorushead report --out {out})")

    # song2's assign now fails: its windows stay in the LMDB (nothing a user built is lost) and the
    # card says they are stale; the LMDB file is not rewritten
    before = (out / "windows.lmdb" / "data.mdb").read_bytes()
    Manifest(out, "assign").append(Record(item="song2-abcdef", stage="assign", status="failed", fingerprint="y",
                                          error_class="StageError", message="no voice matches"))
    assert CliRunner().invoke(app, ["build", "--out", str(out), "--stages", "pack", "-q"]).exit_code == 1
    assert (out / "windows.lmdb" / "data.mdb").read_bytes() == before
    card = collect(out, pl)
    meta, index = raw_lmdb(out)
    assert "song2-abcdef" in meta["summary"]["videos"]
    assert any("stale" in n and "song2-abcdef" in n for n in card.notes), card.notes
    assert {s.split: s.windows for s in card.splits} == {s: len(index[s]) for s in ("train", "val", "test")}
    assert dict(card.summary)["Hours packed"] == f"{frames / 30 / 3600:.4f}"
    # removed from the build: the next pack drops it, and the card agrees
    res = CliRunner().invoke(app, ["remove", "song2-abcdef", "--out", str(out), "-q"])
    assert res.exit_code == 0, res.output
    card = collect(out, pl)
    assert "song2-abcdef" not in [v for sp in card.splits for v in sp.videos]
    assert "song2-abcdef" not in raw_lmdb(out)[0]["summary"]["videos"]


def test_split_check_lists_a_video_in_two_splits():
    index = {"train": ["w/a/0000/0000000", "w/b/0000/0000000"], "val": [], "test": ["w/a/0001/0000000"]}
    rows, violations = _splits(index, {}, lambda v: 30)
    assert violations == ["a: windows in train, test"]
    assert [(r.split, r.videos, r.windows) for r in rows] == [("train", ["a", "b"], 2), ("val", [], 0),
                                                             ("test", ["a"], 1)]


def test_report_refuses_a_folder_without_a_build(tmp_path):
    res = CliRunner().invoke(app, ["report", "--out", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "has no build yet" in res.output
    assert not (tmp_path / "nothing").exists()


# ----------------------------------------------------------------------------- slow: the demo, end to end
def shared_demo(tmp_path_factory) -> Path:
    """The demo (2 duets of 8 s, landmark fit) built once per test session; returns its build folder."""
    from chorushead.demo import run_demo
    root = tmp_path_factory.getbasetemp() / "report-demo"
    out = root / "build"
    if not (out / "windows.lmdb").exists():
        assert run_demo(root, seconds=8.0, n_videos=2, echo=lambda m: None) == 0
    return out


@pytest.fixture(scope="module")
def demo_build(tmp_path_factory) -> Path:
    return shared_demo(tmp_path_factory)


@pytest.mark.slow   # builds the demo (~25 s)
def test_card_numbers_match_the_demo_build(demo_build):
    out = demo_build
    # the demo fits with the landmark backend; the pipeline file says emoca. Given the file, the card says
    # fit's records were made with other parameters; by default it uses what the build ran with
    # (build/pipeline.json), and with that (or the demo's --set) every record is reproduced
    from chorushead.runner import default_pipeline_path
    res = CliRunner().invoke(app, ["report", "--out", str(out), "--pipeline", str(default_pipeline_path())])
    assert res.exit_code == 0, res.output
    md = (out / "report" / "report.md").read_text()
    assert re.search(r"^\| fit \| v\d+ \(2\) \| 0 of 2 \| ", md, re.M) and "other parameters" in md
    res = CliRunner().invoke(app, ["report", "--out", str(out)])
    assert res.exit_code == 0, res.output
    md = (out / "report" / "report.md").read_text()
    assert re.search(r"^\| fit \| v\d+ \(2\) \| 2 of 2 \| ", md, re.M) and "other parameters" not in md
    res = CliRunner().invoke(app, ["report", "--out", str(out), "--set", "fit.backend=landmarks"])
    assert res.exit_code == 0, res.output
    assert res.output.strip() == f"Dataset card: {out / 'report' / 'index.html'} (report.md and the plots beside it)"
    md = (out / "report" / "report.md").read_text()
    html = (out / "report" / "index.html").read_text()
    ing, cont, crop = records(out, "ingest"), records(out, "contiguity"), records(out, "crop")
    meta, index = raw_lmdb(out)

    assert md_row(md, "Videos registered") == "2" == md_row(md, "Videos ingested")
    hours = sum(r["outputs"]["duration"] for r in ing.values()) / 3600
    assert md_row(md, "Hours ingested") == f"{hours:.4f}" and abs(hours - 16 / 3600) < 1e-3
    segs = [s for r in cont.values() for s in r["outputs"]["segments"]]
    kept = sum(b - a for a, b in segs) / 30 / 3600
    assert md_row(md, "Hours kept (contiguous segments)") == f"{kept:.4f}"
    packed = sum(len(r["outputs"]["segments_packed"]) for r in records(out, "pack").values())
    assert md_row(md, "Segments (kept / packed)") == f"{len(segs)} / {packed}"
    w = {s: len(index[s]) for s in ("train", "val", "test")}
    assert w["train"] > 0 and w["test"] > 0     # 2 videos: 1 train, 1 test
    assert md_row(md, "Windows") == f"{sum(w.values())} (train {w['train']}, val {w['val']}, test {w['test']})"
    assert md_row(md, "Singers per video") == "2 (2 videos)"
    res_ = Counter(f"{r['outputs']['width']}x{r['outputs']['height']}" for r in ing.values())
    assert md_row(md, "Resolutions") == ", ".join(f"{k} ({n} videos)" for k, n in res_.items())
    assert md_row(md, "Window / stride") == f"{meta['window']} / {meta['stride']} frames at {meta['fps']} fps"

    # the funnel: every stage's videos and done/skipped/failed against its manifest
    funnel = funnel_rows(md)
    for stage in Pipeline.load().stages:
        recs = records(out, stage)
        st = Counter(r["status"] for r in recs.values())
        assert funnel[stage][0] == str(st["done"] + st["skipped"]), stage
        assert funnel[stage][2:5] == [str(st["done"]), str(st["skipped"]), str(st["failed"])], stage
    vad = records(out, "vad")
    vad_s = sum(r["outputs"]["end_s"] - r["outputs"]["start_s"] for r in vad.values())
    assert funnel["vad"][1] == f"{vad_s / 3600:.4f}"
    assert "| bgm_split | skipped: stems supplied | 2 |" in md      # the demo supplies stems

    # distributions: detection probabilities and motion per singer position
    card = collect(out, Pipeline.load())
    import numpy as np
    det = {k: [] for k in range(2)}
    for r in crop.values():
        d = np.load(out / r["outputs"]["detections"])
        for k in range(2):
            det[k] += list(d["probs"][k][d["detected"][k] & (d["probs"][k] > 0)])
    assert {k: len(a) for k, a in card.dists["detection"].items()} == {k: len(a) for k, a in det.items()}
    assert sorted(card.dists["pose"]) == [0, 1] and card.dists["pose"][0].shape == (sum(b - a for a, b in segs), 3)
    assert len(card.dists["assign"]) == 2

    # splits: per split videos, windows and hours; no video in two splits
    assert "Check passed: no video has windows in two splits." in html
    for s in card.splits:
        assert s.windows == w[s.split] and s.videos == sorted({k.split("/")[1] for k, _ in index[s.split]})
    # provenance: stage versions, every video's fingerprint per stage, the LMDB meta's summary
    for v, r in ing.items():
        assert r["fingerprint"] in md and v in md
    assert set(meta["summary"]["videos"]) == set(ing)
    for stage in Pipeline.load().stages:
        assert re.search(rf"^\| {stage} \| v\d+ \(2\) \| 2 of 2 \| ", md, re.M), stage
    assert "other parameters" not in md
    for png in ("funnel", "segment_seconds", "kept_minutes", "jaw", "head_pose", "detection", "assign", "review",
                "splits"):
        assert (out / "report" / f"{png}.png").stat().st_size > 1000
        assert f'src="{png}.png"' in html and f"]({png}.png)" in md

    status = CliRunner().invoke(app, ["status", "--out", str(out)])
    assert status.output.strip().splitlines()[-1] == (f"Dataset card: {out / 'report' / 'index.html'} "
                                                      f"(refresh: chorushead report --out {out})")


def test_an_unfinished_lmdb_is_said_not_fatal(tmp_path):
    out = tmp_path / "b"
    make_upstream(out, n_videos=1)
    env = open_env(out / "windows.lmdb", write=True, map_size=1 << 20)   # pack killed before its index
    env.close()
    card = collect(out, Pipeline.load())
    assert card.lmdb is None and not card.splits[0].windows
    assert any("is not a finished chorushead-windows LMDB" in n for n in card.notes), card.notes


def test_the_card_describes_the_pipeline_the_build_ran_with(tmp_path):
    """A build saves its effective pipeline (after --set); `chorushead report` reads it by default."""
    from chorushead.runner import Pipeline
    pl = Pipeline.load(None, ["fit.backend=landmarks", "pipeline.fps=25"])
    pl.save(tmp_path)
    used = Pipeline.used_by(tmp_path)
    assert used == pl and used.params["fit"]["backend"] == "landmarks" and used.fps == 25
    assert Pipeline.used_by(tmp_path / "nothing-here") is None
