"""The metrics the paper's claims need (issue 19): posed vs zeroed LVE/FVE, |FDD|, the host's
silent-frame jaw, the diversity of prior samples and the posterior's active units — each on inputs
with a known answer."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pachorus import metrics as M
from pachorus.evaluate import _summarise_metrics, evaluate_model, pose_diversity, posterior_kl, sequence_metrics
from pachorus.model.pachorus import ModelConfig, build_model
from chorushead.core.windows import POSE

SR, FPS = 16000, 25
HOP = SR // FPS


@pytest.fixture(scope="module")
def flame(tmp_path_factory):
    from chorushead.core.flame import FlameModel, make_synthetic_flame
    return FlameModel.load(make_synthetic_flame(tmp_path_factory.mktemp("flame")))


# ------------------------------------------------------------------------------------ posed vs zeroed


def test_posed_lve_differs_from_zeroed_exactly_when_the_pose_differs(flame):
    rng = np.random.default_rng(0)
    gt = np.zeros((6, 56), np.float32)
    gt[:, 50] = rng.uniform(0, 0.3, 6)                  # some jaw motion
    gt[:, POSE] = rng.normal(0, 0.2, (6, 3))          # and a head pose
    # 1) only the head pose differs: zeroed sees nothing, posed sees the rotated lips
    pred = gt.copy()
    pred[:, 54] += 0.2
    m = sequence_metrics(pred, gt, flame)
    assert m["LVE_l2"] == 0.0 and m["FVE_max"] == 0.0
    assert m["LVE_l2_posed"] > 0.1 and m["FVE_max_posed"] > 0.1 and m["LVE_sq_posed"] > 0
    # 2) the same pose on both sides, the jaw differs: a rigid rotation of both keeps every distance
    pred = gt.copy()
    pred[:, 50] += 0.2
    m = sequence_metrics(pred, gt, flame)
    assert m["LVE_l2"] > 0.1
    for k in ("LVE_l2", "LVE_sq", "FVE_max", "FVE_mean"):
        assert m[f"{k}_posed"] == pytest.approx(m[k], rel=1e-4), k
    # 3) the pose group masked (not estimated by the fit): zeroed on both sides, so posed = zeroed
    pred = gt.copy()
    pred[:, 54] += 0.2
    m = sequence_metrics(pred, gt, flame, ["exp", "jaw"])
    assert m["LVE_l2_posed"] == 0.0 and "PPE" not in m


# ---------------------------------------------------------------------------------------------- |FDD|


def test_fdd_abs_is_the_mean_of_magnitudes_not_the_magnitude_of_the_mean(flame):
    still = np.zeros((8, 56), np.float32)
    moving = still.copy()
    moving[:, :50] = np.random.default_rng(1).normal(0, 1.5, (8, 50))   # the upper face moves
    a = sequence_metrics(still, moving, flame)     # too little motion: FDD > 0
    b = sequence_metrics(moving, still, flame)     # too much motion: FDD < 0, same size
    assert a["FDD"] > 0.01 and b["FDD"] == pytest.approx(-a["FDD"])
    assert a["FDD_abs"] == a["FDD"] and b["FDD_abs"] == -b["FDD"]
    s = _summarise_metrics([a, b])
    assert s["FDD"] == pytest.approx(0.0, abs=1e-9)            # the signed mean cancels ...
    assert s["FDD_abs"] == pytest.approx(a["FDD"])              # ... the magnitudes do not


# ----------------------------------------------------------------------------------------- silent jaw


def _host(loud: list[bool]) -> np.ndarray:
    """Host audio at SR with one FPS frame per entry: a 0.1-amplitude tone (-23 dBFS) or exact silence."""
    t = np.arange(HOP) / SR
    tone = 0.1 * np.sin(2 * np.pi * 220 * t) * np.sqrt(2)    # RMS 0.1 = -20 dBFS
    return np.concatenate([tone if x else np.zeros(HOP) for x in loud]).astype(np.float32)


def test_frame_energy_and_silent_frames():
    host = _host([False, True, True, False])
    db = M.frame_energy_db(host, SR, FPS, 4)
    assert db[0] == -np.inf and db[3] == -np.inf and db[1:3] == pytest.approx([-20.0, -20.0], abs=0.05)
    assert M.silent_frames(host, SR, FPS, 4, -40.0).tolist() == [True, False, False, True]
    assert M.silent_frames(host, SR, FPS, 4, -10.0).all()             # a threshold above the tone
    assert M.silent_frames(host, SR, FPS, 6).tolist()[4:] == [True, True]   # no audio for the motion's end


def test_silent_jaw_counts_only_the_hosts_silent_frames():
    loud = [False] * 3 + [True] * 5 + [False] * 2
    host = _host(loud)
    pred, gt = np.zeros((10, 56), np.float32), np.zeros((10, 56), np.float32)
    quiet = ~np.array(loud)
    pred[:, 50] = np.where(quiet, 0.1, 0.9)          # opens while singing (0.9), almost closed when silent
    pred[:, 51] = np.where(quiet, 0.0, 0.5)
    gt[:, 50] = np.where(quiet, 0.02, 0.6)
    m = sequence_metrics(pred, gt, host=host, sr=SR, fps=FPS)
    assert m["silent_jaw"] == pytest.approx(0.1) and m["silent_jaw_gt"] == pytest.approx(0.02)
    assert m["silent_frames"] == 5 and m["frames"] == 10
    # a sequence where the host never rests contributes no frame; the split pools silent frames
    always = sequence_metrics(pred, gt, host=_host([True] * 10), sr=SR, fps=FPS)
    assert always["silent_jaw"] is None and always["silent_frames"] == 0
    other = pred.copy()
    other[:, 50] = 0.4
    one_silent = sequence_metrics(other, gt, host=_host([False] + [True] * 9), sr=SR, fps=FPS)
    s = _summarise_metrics([m, always, one_silent])
    assert s["silent_jaw"] == pytest.approx((5 * 0.1 + 1 * 0.4) / 6)     # pooled over the 6 silent frames
    assert s["silent_fraction"] == pytest.approx(6 / 30)
    # the jaw group masked: nothing to measure
    assert "silent_jaw" not in sequence_metrics(pred, gt, groups=["exp", "pose"], host=host, sr=SR, fps=FPS)
    with pytest.raises(ValueError, match="sample rate"):
        sequence_metrics(pred, gt, host=host)


# ------------------------------------------------------------------------------ diversity, active units


def test_pairwise_pose_distance_known_values():
    same = np.repeat(np.random.default_rng(2).normal(size=(1, 7, 3)), 4, axis=0)
    assert M.pairwise_pose_distance(same) == 0.0
    poses = np.zeros((3, 5, 3))
    poses[1, :, 0] = 0.3          # pairs: |0-0.3| = 0.3, |0-(0,0.4)| = 0.4, |(0.3,0)-(0,0.4)| = 0.5
    poses[2, :, 1] = 0.4
    assert M.pairwise_pose_distance(poses) == pytest.approx(0.4)
    with pytest.raises(ValueError):
        M.pairwise_pose_distance(poses[:1])


def test_kl_per_dim_and_active_units():
    mu, logvar = np.array([[0.0, 1.0, 0.0]]), np.array([[0.0, 0.0, np.log(2.0)]])
    kl = M.kl_per_dim(mu, logvar)[0]
    assert kl == pytest.approx([0.0, 0.5, 0.5 * (2.0 - np.log(2.0) - 1.0)])
    assert M.active_units(kl) == 2 and M.active_units(np.full(4, 0.009)) == 0


def _tiny(variant: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(variant=variant, d_model=16, n_layers=1, n_heads=2, latent=4, dropout=0.0)).eval()


def _batch(b: int = 3, frames: int = 10) -> dict:
    g = torch.Generator().manual_seed(0)
    coeffs = torch.randn(b, frames, 56, generator=g) * 0.1
    n = frames * HOP
    return {"host": torch.randn(b, n, generator=g) * 0.1, "partner": torch.randn(b, n, generator=g),
            "bgm": torch.randn(b, n, generator=g), "pose0": coeffs[:, 0, POSE].clone(), "coeffs": coeffs}


def _collapse(model, collapsed: bool) -> None:
    """Force the posterior: q(z|x) = N(0, I) (collapsed, KL 0) or N(1, I) (every dimension active, KL ½)."""
    with torch.no_grad():
        for lin in (model.prior.to_mu, model.prior.to_logvar):
            lin.weight.zero_()
            lin.bias.zero_()
        if not collapsed:
            model.prior.to_mu.bias.fill_(1.0)


def test_diversity_is_zero_for_identical_samples_and_positive_otherwise():
    model = _tiny("full")
    b = _batch()
    # untrained, the prior's output layer is zero: every z gives the same pose -> identical samples
    div = pose_diversity(model, b, 10, 5, torch.Generator().manual_seed(0))
    assert div.shape == (3,) and (div == 0).all()
    with torch.no_grad():
        torch.nn.init.normal_(model.prior.out.weight, std=0.5)
    div = pose_diversity(model, b, 10, 5, torch.Generator().manual_seed(0))
    assert (div > 0).all()
    assert pose_diversity(_tiny("mono"), b, 10, 5, torch.Generator()) is None
    assert pose_diversity(model, b, 10, 0, torch.Generator()) is None


def test_active_units_on_a_collapsed_and_an_active_posterior():
    model, b = _tiny("full"), _batch()
    _collapse(model, True)
    kl = posterior_kl(model, b)
    assert kl.shape == (3, 4) and M.active_units(kl.mean(0)) == 0
    _collapse(model, False)
    kl = posterior_kl(model, b)
    assert kl == pytest.approx(np.full((3, 4), 0.5)) and M.active_units(kl.mean(0)) == 4
    assert posterior_kl(_tiny("no_prior"), b) is None


@pytest.fixture(scope="module")
def tiny_lmdb(tmp_path_factory):
    from pachorus.synth import SynthConfig, write_synth_lmdb
    p = tmp_path_factory.mktemp("d") / "d.lmdb"
    write_synth_lmdb(p, SynthConfig(videos=3, seconds=3.0, window=25, stride=25, fps=FPS, seed=0))
    return p


def test_evaluate_model_reports_every_new_key(tiny_lmdb, flame):
    model = _tiny("full")
    _collapse(model, True)
    res = evaluate_model(model, tiny_lmdb, "test", flame, batch_size=4, samples=3)
    m = res["model"]
    for k in ("LVE_l2_posed", "FVE_max_posed", "FDD_abs", "silent_jaw", "silent_jaw_gt", "silent_fraction"):
        assert np.isfinite(m[k]), k
    assert m["FDD_abs"] >= abs(m["FDD"]) - 1e-9
    assert m["diversity_pose"] == 0.0                 # the untrained prior's output is zero for every z
    assert m["active_units"] == 0 and m["latent"] == 4 and res["posterior"]["kl_per_dim"] == [0.0] * 4
    assert 0 < m["silent_fraction"] < 1 and res["samples"] == 3
    assert "FDD_abs" in res["mean_motion_baseline"] and "diversity_pose" not in res["mean_motion_baseline"]
    _collapse(model, False)
    with torch.no_grad():
        torch.nn.init.normal_(model.prior.out.weight, std=0.5)
    m = evaluate_model(model, tiny_lmdb, "test", flame, batch_size=4, samples=3)["model"]
    assert m["diversity_pose"] > 0 and m["active_units"] == 4
    # without a prior: null, not 0
    res = evaluate_model(_tiny("mono"), tiny_lmdb, "test", None, batch_size=4)
    assert res["model"]["diversity_pose"] is None and res["model"]["active_units"] is None
    assert res["model"]["latent"] is None and res["posterior"] is None
    with pytest.raises(ValueError, match="K ≥ 2"):
        evaluate_model(_tiny("mono"), tiny_lmdb, "test", None, samples=1)


# ------------------------------------------------------------------------------------- bench tables


def test_bench_tables_carry_the_new_columns(tmp_path):
    import csv
    from pachorus.bench import TABLE2, TABLE2_COLS, TABLE3, TABLE3_COLS, summarise, write_table
    keys = ("LVE_l2", "FVE_max", "FDD", "PPE", "LVE_l2_posed", "FVE_max_posed", "FDD_abs", "silent_jaw")

    def run(v, s, x, prior):
        m = {k: x + 0.1 * i for i, k in enumerate(keys)}
        m.update(diversity_pose=0.05 + 0.01 * s if prior else None, active_units=3.0 if prior else None,
                 latent=4 if prior else None, silent_jaw_gt=0.01)
        return {"variant": v, "seed": s, "metrics": m}
    runs = [run(v, s, x + 0.01 * s, v in ("full", "no_bgm", "no_kl"))
            for v, x in (("full", 1.0), ("mono", 2.0), ("no_prior", 1.5), ("no_bgm", 1.2)) for s in range(3)]
    stats = summarise(runs)
    assert "diversity_pose" not in stats["mono"] and "active_units" not in stats["no_prior"]   # null: absent
    assert stats["full"]["diversity_pose"] == pytest.approx((0.06, 0.01, 3))
    ref = {k: 9.0 for k in keys}
    md = write_table(tmp_path / "t2", TABLE2, TABLE2_COLS, stats, "c", ref).splitlines()
    # (|FDD| escaped: a bare | would split the Markdown cell)
    assert md[0] == r"| Method | LVE ↓ | FVE ↓ | FDD →0 | \|FDD\| ↓ | silent jaw | diversity |"
    full, mono = md[2].split(" | "), md[3].split(" | ")
    assert full[4] == "**1.61 ± 0.01**" and full[6] == "0.06 ± 0.01 |"    # |FDD| ranked; diversity never bold
    assert mono[6] == "– |"                                                # no prior: a dash, not a 0
    assert md[4] == "| *mean motion (reference)* | *9* | *9* | *9* | *9* | *9* | – |"   # no diversity there
    rows = list(csv.DictReader((tmp_path / "t2.csv").open()))
    assert rows[1]["diversity_pose_mean"] == "" and rows[0]["diversity_pose_vs_best"] == ""
    assert rows[0]["FDD_abs_vs_best"] == "best"
    md3 = write_table(tmp_path / "t3", TABLE3, TABLE3_COLS, stats, "c").splitlines()
    assert md3[0] == (r"| Method | LVE ↓ | FVE ↓ | FDD →0 | PPE ↓ | LVE posed ↓ | FVE posed ↓ | "
                      r"\|FDD\| ↓ | active units |")
    no_prior = next(line for line in md3 if line.startswith("| w/o prior"))
    assert no_prior.endswith("| – |") and "**1.41 ± 0.01**" in next(x for x in md3 if x.startswith("| PaChorus"))


def test_cli_eval_samples_option_and_lines(tiny_lmdb, tmp_path):
    import json
    from typer.testing import CliRunner
    from pachorus.cli import app
    tiny = ["--d-model", "16", "--n-layers", "1", "--n-heads", "2", "--latent", "4", "--threads", "1", "--no-progress"]
    run = tmp_path / "run"
    res = CliRunner().invoke(app, ["train", "--data", str(tiny_lmdb), "--out", str(run), "--epochs", "1",
                                   "--batch-size", "4", *tiny])
    assert res.exit_code == 0, res.output
    out = tmp_path / "e.json"
    res = CliRunner().invoke(app, ["eval", "--ckpt", str(run / "model.pt"), "--data", str(tiny_lmdb), "--out", str(out),
                                   "--samples", "3"])
    assert res.exit_code == 0, res.output
    js = json.loads(out.read_text())
    assert js["samples"] == 3 and js["model"]["latent"] == 4 and 0 <= js["model"]["active_units"] <= 4
    assert "motion prior: diversity" in res.stdout and "of 3 samples" in res.stdout and "active units" in res.stdout
    assert "silent jaw (host vocals below -40 dBFS" in res.stdout
    res = CliRunner().invoke(app, ["eval", "--ckpt", str(run / "model.pt"), "--data", str(tiny_lmdb), "--out", str(out),
                                   "--samples", "1"])
    assert res.exit_code == 2 and "K ≥ 2" in res.output
