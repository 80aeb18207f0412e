"""The pachorus CLI end to end on tiny synthetic data: mixed duets/trios, fps from the data, safe
checkpoints, one-line errors, masked coefficient groups."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from chorushead.core.windows import WindowReader
from pachorus.cli import app
from pachorus.data import HostWindowDataset

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--d-model", "16", "--n-layers", "1", "--n-heads", "2", "--latent", "4", "--threads", "1", "--no-progress"]


def cli(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def _ok(res):
    assert res.exit_code == 0, (res.stdout, res.stderr, res.exception)
    return res


def _one_line_error(res, *needles: str) -> str:
    assert res.exit_code == 2, (res.stdout, res.stderr, res.exception)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pachorus: error: "), res.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """One LMDB with duets and trios (videos alternate 2, 3 singers) at 25 fps, 1 s windows."""
    p = tmp_path_factory.mktemp("mixed") / "mix.lmdb"
    _ok(cli("synth", "--out", p, "--videos", "4", "--seconds", "3", "--singers", "2,3", "--window", "25",
            "--stride", "25", "--fps", "25", "--seed", "2"))  # seed 2: both train videos differ in S
    return p


@pytest.fixture(scope="module")
def mixed_run(mixed, tmp_path_factory):
    run = tmp_path_factory.mktemp("mixrun") / "run"
    res = _ok(cli("train", "--data", mixed, "--out", run, "--epochs", "1", "--batch-size", "3", *TINY))
    return run, json.loads(res.stdout.strip().splitlines()[-1])


def test_mixed_duets_and_trios_train_and_eval(mixed, mixed_run, tmp_path):
    r = WindowReader(mixed, None)
    assert r.meta["singer_counts"] == [2, 3] and r.meta["fps"] == 25
    # every singer of every window is one host sample: sample count = sum of S over windows
    for split in ("train", "test"):
        ds = HostWindowDataset(mixed, split)
        assert len(ds) == int(ds.reader.singers.sum())
        seen = {(ds[j]["key"], ds[j]["singer"]) for j in range(len(ds))}
        assert seen == {(k, h) for k, s in zip(ds.reader.keys, ds.reader.singers) for h in range(s)}
    ds = HostWindowDataset(mixed, "train")
    assert set(ds.reader.singers.tolist()) == {2, 3}    # the training split itself mixes S
    i = int(np.flatnonzero(ds.reader.singers == 3)[0])
    w, first = ds.reader[i], int(ds.reader.singers[:i].sum())
    for h in range(3):       # a trio's partner is the sum of the other two singers
        s = ds[first + h]
        assert s["singer"] == h and s["key"] == w.key
        others = [k for k in range(3) if k != h]
        np.testing.assert_allclose(s["partner"].numpy(), w.vocals[others].astype(np.float32).sum(0), atol=1e-6)
    # train: one epoch = sum of S over training windows // batch size steps (batches mix duets and trios)
    run, summary = mixed_run
    assert summary["step"] == len(ds) // 3
    ck = torch.load(run / "model.pt", weights_only=True)
    assert ck["data_info"]["fps"] == 25 and ck["data_info"]["window"] == 25 and ck["data_info"]["sr"] == 16000
    assert json.loads((run / "config.json").read_text())["data_info"]["fps"] == 25
    # eval visits every host sample of the test split
    _ok(cli("eval", "--ckpt", run / "model.pt", "--data", mixed, "--out", tmp_path / "e.json"))
    js = json.loads((tmp_path / "e.json").read_text())
    assert js["n_samples"] == int(HostWindowDataset(mixed, "test").reader.singers.sum())
    assert js["singer_counts"] and js["masked_groups"] == []


def test_infer_takes_fps_from_the_checkpoint(mixed_run, tmp_path):
    from scipy.io import wavfile
    run, _ = mixed_run
    rng = np.random.default_rng(0)
    paths = []
    for name in ("a", "b", "bgm"):   # 1.6 s at 16 kHz -> 40 frames at the data's 25 fps (48 at 30)
        paths.append(tmp_path / f"{name}.wav")
        wavfile.write(paths[-1], 16000, (0.1 * rng.normal(size=25600)).astype(np.float32))
    res = _ok(cli("infer", "--ckpt", run / "model.pt", "--vocals", paths[0], paths[1], "--bgm", paths[2],
                  "--out", tmp_path / "inf", "-k", "1"))
    assert json.loads(res.stdout)["frames"] == 40
    assert np.load(tmp_path / "inf" / "singer1_sample0.npy").shape == (40, 56)


def test_checkpoint_with_code_is_refused(mixed, mixed_run, tmp_path):
    run, _ = mixed_run
    evil = tmp_path / "evil.pt"
    ck = torch.load(run / "model.pt", weights_only=True)
    torch.save({**ck, "evil": os.system}, evil)
    line = _one_line_error(cli("eval", "--ckpt", evil, "--data", mixed, "--out", tmp_path / "e.json"),
                           str(evil), "non-data objects")
    assert "system" in line
    assert not (tmp_path / "e.json").exists()
    # every checkpoint the trainer writes loads as plain data
    for name in ("model.pt", "best.pt", "last.pt"):
        assert "model" in torch.load(run / name, weights_only=True)


def test_errors_are_one_line_exit_2_and_create_nothing(mixed, mixed_run, tmp_path):
    from chorushead.core.flame import make_synthetic_flame
    run, _ = mixed_run
    out = tmp_path / "newrun"
    _one_line_error(cli("train", "--data", tmp_path / "missing.lmdb", "--out", out, *TINY), "No packed LMDB")
    _one_line_error(cli("train", "--data", mixed, "--out", out, "--variant", "fancy", *TINY), "variant")
    _one_line_error(cli("train", "--data", mixed, "--out", out, "--flame", tmp_path / "noflame",
                        "--w-lip-vertex", "1", "--batch-size", "3", *TINY), "FLAME")
    _one_line_error(cli("train", "--data", mixed, "--out", out, "--resume", *TINY), "--resume")
    assert not out.exists()                      # no argument error leaves a run folder behind
    _one_line_error(cli("train", "--data", mixed, "--out", run, *TINY), "already holds a run")
    _one_line_error(cli("eval", "--ckpt", tmp_path / "nope.pt", "--data", mixed), "checkpoint not found")
    _one_line_error(cli("eval", "--ckpt", run / "model.pt", "--data", mixed, "--split", "dev"), "split")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    inf = tmp_path / "inf"
    _one_line_error(cli("infer", "--ckpt", run / "model.pt", "--vocals", bad, bad, "--bgm", bad, "--out", inf),
                    "cannot decode audio")
    _one_line_error(cli("infer", "--ckpt", run / "model.pt", "--vocals", bad, bad, "--bgm", bad, "--out", inf,
                        "--flame", tmp_path / "noflame"), "FLAME")
    assert not inf.exists()
    _one_line_error(cli("synth", "--out", tmp_path / "s.lmdb", "--singers", "2,x"), "--singers")
    _one_line_error(cli("synth", "--out", tmp_path / "s.lmdb", "--coeff-groups", "jaw,mouth"), "coeff_groups")
    assert not (tmp_path / "s.lmdb").exists()
    make_synthetic_flame(tmp_path / "flame")   # a real FLAME folder makes the same command pass the FLAME check
    _one_line_error(cli("infer", "--ckpt", run / "model.pt", "--vocals", bad, bad, "--bgm", bad, "--out", inf,
                        "--flame", tmp_path / "flame"), "cannot decode audio")


@pytest.mark.slow   # two subprocesses importing torch
def test_debug_flag_shows_the_traceback(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    base = [sys.executable, "-m", "pachorus.cli"]
    args = ["train", "--data", str(tmp_path / "missing.lmdb"), "--out", str(tmp_path / "run")]
    plain = subprocess.run(base + args, env=env, capture_output=True, text=True, timeout=120)
    assert plain.returncode == 2 and len(plain.stderr.strip().splitlines()) == 1
    assert "Traceback" not in plain.stderr
    debug = subprocess.run(base + ["--debug"] + args, env=env, capture_output=True, text=True, timeout=120)
    assert debug.returncode != 0 and "Traceback (most recent call last)" in debug.stderr
    assert "FileNotFoundError: No packed LMDB" in debug.stderr
    assert not (tmp_path / "run").exists()


def test_absent_coefficient_groups_are_masked(mixed, tmp_path):
    from pachorus.losses import LossConfig, PaChorusLoss
    from pachorus.model.pachorus import ModelConfig, build_model
    data = tmp_path / "lm.lmdb"
    _ok(cli("synth", "--out", data, "--videos", "3", "--seconds", "2", "--window", "30", "--stride", "15",
            "--coeff-groups", "jaw,pose"))
    meta = WindowReader(data, "train").meta
    assert meta["coeff_groups"] == ["jaw", "pose"] and meta["fit_backend"] == "synthetic"
    ds = HostWindowDataset(data, "train")
    assert float(ds[0]["coeffs"][:, :50].abs().max()) == 0.0        # exp stored as zeros
    # the exp part contributes nothing to the loss: exp targets replaced by noise give the same loss
    torch.manual_seed(0)
    model = build_model(ModelConfig(d_model=16, n_layers=1, n_heads=2, latent=4, dropout=0.0))
    batch = {k: torch.stack([ds[j][k] for j in range(4)]) for k in ("host", "partner", "bgm", "coeffs", "pose0")}
    noisy = batch["coeffs"].clone()
    noisy[..., :50] = torch.randn_like(noisy[..., :50]) * 3
    masked, full = PaChorusLoss(LossConfig(), groups=["jaw", "pose"]), PaChorusLoss(LossConfig())
    with torch.no_grad():
        out = model(batch["host"], batch["partner"], batch["bgm"], batch["pose0"], 30, z_mode="mean")
    assert masked(out, noisy)["loss"].item() == masked(out, batch["coeffs"])["loss"].item()
    assert full(out, noisy)["loss"].item() > full(out, batch["coeffs"])["loss"].item() * 2   # unmasked: it would
    # train records the groups; eval reports the masked one and has no exp error
    run = tmp_path / "run"
    _ok(cli("train", "--data", data, "--out", run, "--epochs", "1", "--batch-size", "4", *TINY))
    assert torch.load(run / "model.pt", weights_only=True)["data_info"]["coeff_groups"] == ["jaw", "pose"]
    res = _ok(cli("eval", "--ckpt", run / "model.pt", "--data", data, "--out", tmp_path / "e.json"))
    js = json.loads((tmp_path / "e.json").read_text())
    assert js["masked_groups"] == ["exp"] and "exp_mse" not in js["model"] and "jaw_mse" in js["model"]
    assert "masked (not estimated by the fit): exp" in res.stdout
    # a checkpoint trained without exp is refused on data that has exp (and vice versa on resume)
    _one_line_error(cli("eval", "--ckpt", run / "model.pt", "--data", mixed), "coeff_groups")
    _one_line_error(cli("train", "--data", mixed, "--out", run, "--resume", "--epochs", "2", *TINY), "coeff_groups")


def test_vertex_metrics_zero_absent_groups_on_both_sides(tmp_path):
    from chorushead.core.flame import FlameModel, make_synthetic_flame
    from pachorus.evaluate import sequence_metrics
    flame = FlameModel.load(make_synthetic_flame(tmp_path))
    rng = np.random.default_rng(0)
    gt = np.zeros((5, 56), np.float32)
    pred = gt.copy()
    pred[:, :50] = rng.normal(0, 2, (5, 50))          # only the (absent) expression differs
    m = sequence_metrics(pred, gt, flame, ["jaw", "pose"])
    assert m["LVE_l2"] == 0.0 and m["FVE_mean"] == 0.0 and "exp_mse" not in m
    assert sequence_metrics(pred, gt, flame)["FVE_mean"] > 0   # with exp present it counts


def test_eval_diagnose_reports_the_host_attention_band(mixed, mixed_run, tmp_path):
    """`pachorus eval --diagnose`: how local the host animator's self-attention is, so a model that
    pools the whole window (near-uniform attention) cannot pass unnoticed."""
    run, _ = mixed_run
    res = _ok(cli("eval", "--ckpt", run / "model.pt", "--data", mixed, "--out", tmp_path / "e.json", "--diagnose"))
    a = json.loads((tmp_path / "e.json").read_text())["attention"]
    assert a["band"] == 3 and not a["causal"] and a["frames"] == 25
    # a ±3 band: at most 7 frames attended, so entropy ≤ log 7 and distance ≤ 3, far below uniform over 25
    assert a["entropy"] <= np.log(7) + 1e-4 < a["entropy_uniform"] == pytest.approx(np.log(25))
    assert 0 <= a["attended_distance"] <= 3 and 0 < a["own_frame_weight"] <= 1
    assert "attention (host animator" in res.stdout and "own-frame weight" in res.stdout
