"""Synthetic LMDB, dataset, trainer (epochs, exact resume, kill -9 + resume), eval and infer CLIs."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from chorushead.core.windows import JAW, POSE, WindowReader
from pachorus.data import HostWindowDataset
from pachorus.model.pachorus import ModelConfig
from pachorus.synth import SynthConfig, write_synth_lmdb
from pachorus.train import TrainConfig, read_log, train

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(variant="full", d_model=16, n_layers=1, n_heads=2, latent=4)
TINY_ARGS = ["--d-model", "16", "--n-layers", "1", "--n-heads", "2", "--latent", "4"]


@pytest.fixture(scope="module")
def lmdb_path(tmp_path_factory):
    p = tmp_path_factory.mktemp("synth") / "synth.lmdb"
    # 4 videos of 4 s, 1 s windows: 7 windows per video; splits by video -> 2 train, 1 val, 1 test
    counts = write_synth_lmdb(p, SynthConfig(videos=4, seconds=4, window=30, stride=15, seed=0))
    assert counts == {"train": 14, "val": 7, "test": 7}
    return p


def _cfg(data, out, **kw) -> TrainConfig:
    kw = {"model": ModelConfig(dropout=0.1, **TINY), "batch_size": 4, "epochs": 2, "lr": 1e-3, "threads": 1, **kw}
    return TrainConfig(data=str(data), out=str(out), **kw)


def _env():
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env["OMP_NUM_THREADS"] = "1"
    return env


def test_synth_lmdb_format_and_rules(lmdb_path):
    r = WindowReader(lmdb_path, None)
    assert r.meta["window"] == 30 and r.meta["singer_counts"] == [2] and r.meta["synthetic"]
    videos = {}
    for w in r:
        videos.setdefault(w.video, set()).add(w.split)
        assert w.coeffs.shape == (2, 30, 56) and w.vocals.shape == (2, 16000) and w.bgm.shape == (16000,)
        np.testing.assert_array_equal(w.pose0, w.coeffs[:, 0, POSE])
    assert all(len(s) == 1 for s in videos.values())          # no song in two splits
    # rule: jaw follows the host's loudness (strongly correlated over all windows)
    jaw = np.concatenate([w.coeffs[h, :, 50] for w in r for h in range(2)])
    rms = np.concatenate([np.sqrt((w.vocals[h][:30 * 533].reshape(30, 533) ** 2).mean(1)) for w in r for h in range(2)])
    assert np.corrcoef(jaw, rms)[0, 1] > 0.8
    # rule: singer 0 (left) has a positive yaw bias, singer 1 a negative one
    yaw = np.array([[w.coeffs[h, :, 54].mean() for h in range(2)] for w in r])
    assert (yaw[:, 0] > yaw[:, 1]).mean() > 0.9


def test_dataset_sample(lmdb_path):
    ds = HostWindowDataset(lmdb_path, "train")
    assert len(ds) == 28
    s = ds[3]
    w = ds.reader[1]
    assert s["singer"] == 1 and s["coeffs"].shape == (30, 56) and s["pose0"].shape == (3,)
    np.testing.assert_allclose(s["partner"].numpy(), w.vocals[0], atol=1e-6)   # sum of the others
    np.testing.assert_allclose(s["host"].numpy(), w.vocals[1], atol=1e-6)
    HostWindowDataset(lmdb_path, "val")[0]   # train and val readers coexist in one process


def test_train_two_epochs_outputs(lmdb_path, tmp_path):
    out = tmp_path / "run"
    res = train(_cfg(lmdb_path, out), progress=False)
    assert res["step"] == 14 and res["epoch"] == 2 and res["stopped"] == "epochs"
    for f in ("config.json", "last.pt", "best.pt", "model.pt", "log.jsonl", "curves.png"):
        assert (out / f).exists(), f
    log = read_log(out / "log.jsonl")
    assert [r["step"] for r in log if r["type"] == "train"] == list(range(1, 15))
    vals = [r for r in log if r["type"] == "val"]
    assert [v["epoch"] for v in vals] == [0, 1]
    ck = torch.load(out / "last.pt", weights_only=True)
    assert {"model", "optimizer", "scaler", "rng", "step", "epoch", "model_config"} <= set(ck)
    assert json.loads((out / "config.json").read_text())["model"]["d_model"] == 16
    assert vals[1]["val_loss"] < vals[0]["val_loss"]   # it learns something (fixed val data, z = 0)
    with pytest.raises(FileExistsError):   # an existing run is never overwritten
        train(_cfg(lmdb_path, out), progress=False)
    assert (out / "last.pt").exists()


def test_resume_is_bit_identical(lmdb_path, tmp_path):
    """Stop mid-epoch (step 4 of 7 per epoch), resume to step 10 (crossing validation): same losses."""
    a, b = tmp_path / "a", tmp_path / "b"
    train(_cfg(lmdb_path, a, max_steps=10), progress=False)
    train(_cfg(lmdb_path, b, max_steps=4), progress=False)
    assert torch.load(b / "last.pt", weights_only=True)["batch_in_epoch"] == 4
    train(_cfg(lmdb_path, b, max_steps=10), resume=True, progress=False)
    la = {r["step"]: r["loss"] for r in read_log(a / "log.jsonl") if r["type"] == "train"}
    lb = [r for r in read_log(b / "log.jsonl") if r["type"] == "train"]
    assert [r["step"] for r in lb] == list(range(1, 11))
    assert {r["step"]: r["loss"] for r in lb} == la        # exact float equality, steps 5..10 included


@pytest.mark.slow  # two subprocesses importing torch
def test_kill9_then_resume_has_no_gap_or_duplicate(lmdb_path, tmp_path):
    out = tmp_path / "k"
    cmd = [sys.executable, "-m", "pachorus.cli", "train", "--data", str(lmdb_path), "--out", str(out),
           "--batch-size", "4", "--epochs", "1000", "--ckpt-every", "3", "--threads", "1", "--no-progress",
           "--lr", "1e-3", *TINY_ARGS]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            steps = [r["step"] for r in read_log(out / "log.jsonl") if r["type"] == "train"]
            if len(steps) >= 11 and (out / "last.pt").exists():
                break
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = max(r["step"] for r in read_log(out / "log.jsonl") if r["type"] == "train")
    ck_step = torch.load(out / "last.pt", weights_only=True)["step"]
    assert ck_step <= killed_at and (ck_step % 3 == 0 or ck_step % 7 == 0)
    # resume with a shorter run length: 3 epochs of 7 steps
    res = subprocess.run(cmd[:cmd.index("--epochs")] + ["--epochs", "3", "--resume"] + cmd[cmd.index("--epochs") + 2:],
                         env=_env(), capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-2000:]
    log = read_log(out / "log.jsonl")
    steps = [r["step"] for r in log if r["type"] == "train"]
    assert steps == list(range(1, 22)), steps
    assert [r["epoch"] for r in log if r["type"] == "val"] == [0, 1, 2]
    assert json.loads(res.stdout.strip().splitlines()[-1])["step"] == 21


@pytest.mark.slow  # three CLI subprocesses
def test_eval_and_infer_cli(lmdb_path, tmp_path):
    from scipy.io import wavfile
    from chorushead.core.flame import make_synthetic_flame
    from pachorus.synth import synthesize_song
    run = tmp_path / "run"
    train(_cfg(lmdb_path, run, epochs=1), progress=False)
    flame = make_synthetic_flame(tmp_path / "flame")
    res = subprocess.run([sys.executable, "-m", "pachorus.cli", "eval", "--ckpt", str(run / "model.pt"),
                          "--data", str(lmdb_path), "--flame", str(flame)], env=_env(), capture_output=True,
                         text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "LVE sq (CodeTalker)" in res.stdout and "mean motion" in res.stdout
    js = json.loads((run / "eval_test.json").read_text())
    assert js["n_samples"] == 14 and js["vertex_metrics"]
    for k in ("LVE_sq", "LVE_l2", "FVE_max", "FVE_mean", "FDD", "PPE", "exp_mse"):
        assert np.isfinite(js["model"][k]) and np.isfinite(js["mean_motion_baseline"][k])
    no_flame = subprocess.run([sys.executable, "-m", "pachorus.cli", "eval", "--ckpt", str(run / "model.pt"),
                               "--data", str(lmdb_path), "--out", str(tmp_path / "e.json")], env=_env(),
                              capture_output=True, text=True, timeout=180)
    # synthetic data without --flame: vertex metrics on the open head
    assert no_flame.returncode == 0 and "head: the open head" in no_flame.stdout and "LVE" in no_flame.stdout
    assert json.loads((tmp_path / "e.json").read_text())["head"] == "open"
    no_head = subprocess.run([sys.executable, "-m", "pachorus.cli", "eval", "--ckpt", str(run / "model.pt"),
                              "--data", str(lmdb_path), "--out", str(tmp_path / "e2.json"), "--head", "none"],
                             env=_env(), capture_output=True, text=True, timeout=180)
    assert no_head.returncode == 0 and "need FLAME" in no_head.stderr and "PPE" in no_head.stdout
    assert not json.loads((tmp_path / "e2.json").read_text())["vertex_metrics"]
    # three singers, 1.5 s: partner of each = sum of the other two
    song = synthesize_song(SynthConfig(seconds=1.5, n_singers=3), np.random.default_rng(5))
    paths = []
    for i, v in enumerate(song.vocals):
        paths.append(tmp_path / f"v{i}.wav")
        wavfile.write(paths[-1], 16000, v)
    wavfile.write(tmp_path / "bgm.wav", 16000, song.bgm)
    out = tmp_path / "inf"
    res = subprocess.run([sys.executable, "-m", "pachorus.cli", "infer", "--ckpt", str(run / "model.pt"),
                          "--vocals", str(paths[0]), str(paths[1]), str(paths[2]),
                          "--bgm", str(tmp_path / "bgm.wav"), "--out", str(out), "-k", "2", "--flame", str(flame),
                          "--size", "96"], env=_env(), capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-2000:]
    c = [np.load(out / f"singer{s}_sample{k}.npy") for k in range(2) for s in range(1, 4)]
    assert all(x.shape == (45, 56) for x in c)
    assert not np.allclose(c[0][:, POSE], c[3][:, POSE])      # K samples differ in head pose
    np.testing.assert_allclose(c[0][:30, JAW], c[3][:30, JAW], atol=1e-6)  # 1st window: the jaw is the host's only
    for k in range(2):
        mp4 = out / f"sample{k}.mp4"
        assert mp4.stat().st_size > 1000 and mp4.read_bytes()[4:8] == b"ftyp"


def test_synth_writes_a_new_lmdb_whole_or_not_at_all(tmp_path):
    """Into an existing LMDB it refuses (no stale windows mixed in); a finished one appears only at the
    end (written under a temporary name), so a killed synth leaves nothing `bench` could take for data."""
    cfg = SynthConfig(videos=2, seconds=2, window=30, stride=30, seed=0)
    out = tmp_path / "s.lmdb"
    counts = write_synth_lmdb(out, cfg)
    assert (out / "data.mdb").exists() and not (tmp_path / ".s.lmdb.tmp").exists() and sum(counts.values()) > 0
    with pytest.raises(FileExistsError, match="not empty"):
        write_synth_lmdb(out, SynthConfig(videos=1, seconds=2, window=30, stride=30, seed=1))
    assert WindowReader(out, None).keys and len({k.split("/")[1] for k in WindowReader(out, None).keys}) == 2


def test_init_pretrained_on_talking_then_finetuned_on_singing(lmdb_path, tmp_path):
    """The paper's protocol: pretrain on a talking corpus (`synth --talking`), then `train --init` on the
    singing data: a new run (step 0, fresh optimiser) that starts from the pretrained weights."""
    from pachorus.train import setup
    talk = tmp_path / "talk.lmdb"
    write_synth_lmdb(talk, SynthConfig(videos=4, seconds=4, window=30, stride=15, seed=1, talking=True))
    pre = tmp_path / "pre"
    train(_cfg(talk, pre, epochs=4), progress=False)
    # at step 0 the fine-tuning run holds exactly the pretrained weights
    run = setup(_cfg(lmdb_path, tmp_path / "probe", init=str(pre / "model.pt")), resume=False)
    run.log.close()
    pretrained = torch.load(pre / "model.pt", weights_only=True)["model"]
    assert run.state["step"] == 0 and not run.opt.state
    for k, v in run.model.state_dict().items():
        torch.testing.assert_close(v, pretrained[k], rtol=0, atol=0)
    # fine-tune vs from scratch (same seed, same data order): the first step's loss is lower
    ft, scratch = tmp_path / "ft", tmp_path / "scratch"
    train(_cfg(lmdb_path, ft, init=str(pre / "model.pt"), max_steps=3), progress=False)
    train(_cfg(lmdb_path, scratch, max_steps=3), progress=False)
    first = {p: read_log(p / "log.jsonl")[0] for p in (ft, scratch)}
    assert first[ft]["step"] == 1 and first[ft]["loss"] < first[scratch]["loss"]
    assert json.loads((ft / "config.json").read_text())["init"] == str(pre / "model.pt")


def test_init_refuses_another_architecture_in_one_line(lmdb_path, tmp_path):
    from typer.testing import CliRunner
    from pachorus.cli import app
    pre = tmp_path / "pre"
    train(_cfg(lmdb_path, pre, max_steps=1), progress=False)
    base = ["train", "--data", str(lmdb_path), "--batch-size", "4", "--max-steps", "1", "--no-progress",
            "--threads", "1", "--init", str(pre / "model.pt")]
    res = CliRunner().invoke(app, base + ["--out", str(tmp_path / "a"), "--d-model", "32", "--n-layers", "1",
                                          "--n-heads", "2", "--latent", "4"])
    assert res.exit_code == 2 and "another model architecture (d_model: 16 there, 32 here)" in res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "a").exists()
    res = CliRunner().invoke(app, base + ["--out", str(tmp_path / "b"), *TINY_ARGS, "--dropout", "0.3"])
    assert res.exit_code == 0, res.output                  # dropout is not architecture
    res = CliRunner().invoke(app, base + ["--out", str(tmp_path / "b"), *TINY_ARGS, "--resume"])
    assert res.exit_code == 2 and "give one" in res.output
    res = CliRunner().invoke(app, base[:-1] + [str(tmp_path / "nope.pt"), "--out", str(tmp_path / "c"), *TINY_ARGS])
    assert res.exit_code == 2 and "no such checkpoint" in res.output and not (tmp_path / "c").exists()
