"""pachorus bench: the "not established" logic, the tables' layout, run reuse, the recipes (the synthetic
rules are tested in test_synth_rules.py)."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from pachorus.bench import (NOT_ESTABLISHED, RECIPES, SYNTH_RULES, TABLE2, TABLE2_COLS, TABLE3, TABLE3_COLS, BenchConfig,
                            orderings, rank_column, resolve_steps, run_bench, summarise, write_table)


def test_rank_column_marks_gaps_within_two_std():
    stats = {"a": (1.00, 0.01, 3),    # best
             "b": (1.05, 0.02, 3),    # gap 0.05 > 2 * 0.02: worse, established
             "c": (1.029, 0.015, 3),  # gap 0.029 ≤ 2 * 0.015: not established
             "d": (1.015, 0.001, 3)}  # gap 0.015 ≤ 2 * 0.01 (the best's own spread counts too)
    assert rank_column(stats, "LVE_l2") == {"a": "best", "b": "worse", "c": NOT_ESTABLISHED, "d": NOT_ESTABLISHED}
    # FDD is signed: the value closest to 0 is best, whatever its sign
    fdd = {"x": (-0.2, 0.01, 3), "y": (0.5, 0.01, 3), "z": (-0.9, 0.01, 3)}
    assert rank_column(fdd, "FDD") == {"x": "best", "y": "worse", "z": "worse"}


def test_orderings_report_holds_and_established():
    stats = {"full": {"LVE_l2": (1.0, 0.01, 3)}, "mono": {"LVE_l2": (1.1, 0.01, 3)},
             "faceformer": {"LVE_l2": (1.01, 0.02, 3)}}
    o = {c["claim"]: c for c in orderings(stats, [("full", "mono", "LVE_l2"), ("full", "faceformer", "LVE_l2")])}
    assert o["full < mono on LVE_l2"]["holds"] and o["full < mono on LVE_l2"]["established"]
    assert o["full < faceformer on LVE_l2"]["holds"] and not o["full < faceformer on LVE_l2"]["established"]


def _runs(values: dict[str, list[float]]) -> list[dict]:
    keys = ("LVE_l2", "FVE_max", "FDD", "PPE")
    return [{"variant": v, "seed": s, "metrics": {k: x + i for i, k in enumerate(keys)}}
            for v, xs in values.items() for s, x in enumerate(xs)]


def test_tables_from_hand_made_numbers(tmp_path):
    stats = summarise(_runs({"full": [1.0, 1.02, 0.98], "mono": [1.5, 1.52, 1.48], "faceformer": [1.01, 1.05, 0.97],
                             "no_bgm": [1.3, 1.3, 1.3]}))
    assert stats["full"]["LVE_l2"] == pytest.approx((1.0, 0.02, 3))   # sample std (ddof 1)
    md = write_table(tmp_path / "table2", TABLE2, TABLE2_COLS, stats, "caption here", {k: 9.0 for k, _ in TABLE3_COLS})
    lines = md.splitlines()
    assert lines[0] == "| Method | LVE ↓ | FVE ↓ | FDD →0 |"
    assert lines[2].startswith("| PaChorus (Ours) | **1 ± 0.02** |")
    assert lines[3].startswith("| Mono (host animator: Eq. 2) | 1.5 ± 0.02 |")           # established gap
    assert lines[4].startswith(f"| FaceFormer [1] | 1.01 ± 0.04 ({NOT_ESTABLISHED}) |")
    assert lines[5].startswith("| *mean motion (reference)* | *9* |") and "caption here" in md
    rows = list(csv.DictReader((tmp_path / "table2.csv").open()))
    assert [r["variant"] for r in rows] == ["full", "mono", "faceformer", "mean_motion"]
    assert rows[2]["LVE_l2_vs_best"] == NOT_ESTABLISHED and rows[1]["LVE_l2_vs_best"] == "worse"
    assert float(rows[0]["LVE_l2_std"]) == pytest.approx(0.02)
    # with fewer than 3 seeds nothing is established, however large the gap (std of 2 seeds is no spread)
    two = summarise(_runs({"full": [1.0, 1.0], "mono": [1.5, 1.5]}))
    assert rank_column({k: v["LVE_l2"] for k, v in two.items()}, "LVE_l2")["mono"] == NOT_ESTABLISHED
    (c,) = orderings(two, [("full", "mono", "LVE_l2")])
    assert c["holds"] and not c["established"] and c["seeds"] == 2
    # Table 3 keeps the paper's row order and leaves out variants that were not run
    md3 = write_table(tmp_path / "table3", TABLE3, TABLE3_COLS, stats, "c")
    assert [line.split(" | ")[0] for line in md3.splitlines()[2:4]] == ["| w/o BGM", "| PaChorus (Ours)"]
    assert "PPE ↓" in md3.splitlines()[0]


@pytest.mark.slow
def test_tiny_bench_writes_tables_and_reuses_complete_runs(tmp_path):
    cfg = BenchConfig(out=str(tmp_path / "bench"), variants=("full", "faceformer"), seeds=2, steps=3, batch_size=4,
                      d_model=16, n_layers=1, jobs=2, synth_videos=4, synth_seconds=4.0, synth_window=30,
                      synth_stride=30)
    logs: list[str] = []
    rep = run_bench(cfg, log=logs.append)
    out = tmp_path / "bench"
    assert rep["trained"] == 4 and {(r["variant"], r["seed"]) for r in rep["runs"]} == \
        {(v, s) for v in ("full", "faceformer") for s in (0, 1)}
    for f in ("table2.md", "table2.csv", "table3.md", "table3.csv", "metrics.png", "results.json"):
        assert (out / f).stat().st_size > 0, f
    t2 = list(csv.DictReader((out / "table2.csv").open()))
    assert [r["variant"] for r in t2] == ["full", "faceformer", "mean_motion"]
    assert {"LVE_l2_mean", "FVE_max_std", "FDD_vs_best"} <= set(t2[0]) and t2[0]["seeds"] == "2"
    assert "the open head" in (out / "table2.md").read_text()      # the caption says which mesh (no FLAME given)
    t3 = list(csv.DictReader((out / "table3.csv").open()))
    assert [r["variant"] for r in t3] == ["full"] and "PPE_mean" in t3[0]
    assert any("[4/4]" in m for m in logs)
    for v in ("full", "faceformer"):
        ev = json.loads((out / "runs" / f"{v}_s1" / "eval_test.json").read_text())
        assert ev["step"] == 3 and np.isfinite(ev["metrics"]["LVE_l2"])
    # Second invocation: every run is complete, nothing is trained, the tables are rewritten the same.
    before = (out / "table2.csv").read_text()
    rep2 = run_bench(cfg, log=logs.append)
    assert rep2["trained"] == 0 and all(r["reused"] for r in rep2["runs"])
    assert (out / "table2.csv").read_text() == before
    # Other settings into the same folder are refused (they would mix incomparable runs).
    with pytest.raises(ValueError, match="other settings"):
        run_bench(BenchConfig(**{**cfg.__dict__, "steps": 5}))


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_bench_steps(tmp_path):
    """A run folder stopped at step 2 (last.pt) is resumed, not restarted, to the bench's 3 steps."""
    from chorushead.core.flame import make_synthetic_flame
    from pachorus.bench import Job, run_job
    from pachorus.evaluate import train_mean_coeffs
    from pachorus.model.pachorus import ModelConfig
    from pachorus.synth import SynthConfig, write_synth_lmdb
    from pachorus.train import TrainConfig, read_log, train
    data, flame, run = tmp_path / "d.lmdb", tmp_path / "flame", tmp_path / "runs" / "mono_s0"
    write_synth_lmdb(data, SynthConfig(videos=3, seconds=3.0, window=30, stride=30, seed=0))
    make_synthetic_flame(flame)
    job = Job(variant="mono", seed=0, data=str(data), flame=str(flame), out=str(run), steps=3, batch_size=2,
              lr=1e-3, w_kl=0.005, d_model=16, n_layers=1, mean_coeffs=train_mean_coeffs(data).tolist())
    train(TrainConfig(data=str(data), out=str(run), epochs=1_000_000, batch_size=2, lr=1e-3, seed=0, device="cpu",
                      max_steps=2, model=ModelConfig(variant="mono", d_model=16, n_layers=1, dropout=0.0)),
          progress=False)
    r = run_job(job)
    assert not r["reused"] and r["step"] == 3 and np.isfinite(r["metrics"]["PPE"])
    assert [x["step"] for x in read_log(run / "log.jsonl") if x["type"] == "train"] == [1, 2, 3]
    assert run_job(job)["reused"]


def test_cli_bench_refuses_unknown_variants_before_writing(tmp_path):
    from typer.testing import CliRunner
    from pachorus.cli import app
    res = CliRunner().invoke(app, ["bench", "--out", str(tmp_path / "b"), "--variants", "full,fancy"])
    assert res.exit_code == 2 and "--variants: unknown ['fancy']" in res.output
    assert not (tmp_path / "b").exists()


def test_recipes_resolve_to_their_settings_and_flags_override_them():
    fast, paper = BenchConfig.from_recipe("fast", out="b"), BenchConfig.from_recipe("paper", out="b")
    assert (fast.lr, fast.steps, fast.epochs, fast.synth_window, fast.synth_stride) == (1e-3, 600, 0, 60, 30)
    assert fast == BenchConfig(out="b")                  # fast is today's default bench
    # the paper's §5.1: lr 1e-4, 100 epochs, 5 s windows at a 0.5 s stride (30 fps synthetic data)
    assert (paper.lr, paper.epochs, paper.steps, paper.synth_window, paper.synth_stride) == (1e-4, 100, 0, 150, 15)
    assert paper.shared()["recipe"] == "paper" and paper.shared()["epochs"] == 100
    # explicit flags win; None = not given
    p2 = BenchConfig.from_recipe("paper", out="b", lr=3e-4, synth_window=None, batch_size=8)
    assert (p2.lr, p2.synth_window, p2.batch_size, p2.epochs) == (3e-4, 150, 8, 100)
    p3 = BenchConfig.from_recipe("paper", out="b", steps=50)          # explicit steps replace the epochs
    assert (p3.steps, p3.epochs, p3.lr) == (50, 0, 1e-4)
    f2 = BenchConfig.from_recipe("fast", out="b", epochs=2)           # and explicit epochs the steps
    assert (f2.steps, f2.epochs) == (0, 2)
    with pytest.raises(ValueError, match="--recipe: unknown 'slow'"):
        BenchConfig.from_recipe("slow", out="b")
    assert set(RECIPES) == {"fast", "paper"}


def test_cli_bench_recipe_dry_run_prints_the_settings_and_writes_nothing(tmp_path):
    from typer.testing import CliRunner
    from pachorus.cli import app
    res = CliRunner().invoke(app, ["bench", "--out", str(tmp_path / "b"), "--recipe", "paper", "--dry-run",
                                   "--steps", "40"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.output)
    assert (got["recipe"], got["lr"], got["steps"], got["epochs"], got["synth_window"], got["synth_stride"]) == \
        ("paper", 1e-4, 40, 0, 150, 15)
    assert not (tmp_path / "b").exists()
    res = CliRunner().invoke(app, ["bench", "--out", str(tmp_path / "b"), "--dry-run"])
    assert json.loads(res.output)["recipe"] == "fast" and json.loads(res.output)["steps"] == 600
    bad = CliRunner().invoke(app, ["bench", "--out", str(tmp_path / "b"), "--recipe", "slow"])
    assert bad.exit_code == 2 and "--recipe: unknown" in bad.output and not (tmp_path / "b").exists()


def test_epochs_resolve_to_steps_from_the_training_split(tmp_path):
    from pachorus.data import HostWindowDataset
    from pachorus.synth import SynthConfig, write_synth_lmdb
    data = tmp_path / "d.lmdb"
    write_synth_lmdb(data, SynthConfig(videos=3, seconds=3.0, window=30, stride=15, seed=0))
    n = len(HostWindowDataset(data, "train"))
    cfg = BenchConfig.from_recipe("paper", out=str(tmp_path / "b"), batch_size=4, epochs=3)
    assert resolve_steps(cfg, str(data)) == 3 * (n // 4) and n // 4 >= 1
    assert resolve_steps(BenchConfig(out="b", steps=7), str(data)) == 7


def test_a_bench_folder_from_before_the_recipes_is_kept_apart(tmp_path):
    """bench_config.json without recipe/epochs/synth_rules: those read as what it ran with (fast, steps,
    rules 1), so its synth.lmdb (old rules) is not mixed with runs on today's rules."""
    out = tmp_path / "b"
    out.mkdir()
    old = {k: v for k, v in BenchConfig(out=str(out)).shared().items() if k not in ("recipe", "epochs", "synth_rules")}
    (out / "bench_config.json").write_text(json.dumps(old))
    with pytest.raises(ValueError, match=f"synth_rules: 1 -> {SYNTH_RULES}"):
        run_bench(BenchConfig(out=str(out)))
    assert sorted(p.name for p in out.iterdir()) == ["bench_config.json"]
