"""Training beyond one process (issue 21 part 6): ``torchrun --nproc_per_node 2`` on the CPU (gloo).

What is checked, on a tiny model (d_model 16, one layer) and a 28-sample synthetic LMDB:

1. each rank reads its own shard of every epoch: disjoint, together the whole epoch, and step k of the
   two ranks together is batch k of one process with twice the batch (the trainer's own sampler and
   batches, :func:`pachorus.train.train_sampler` / :func:`pachorus.train.train_loader`);
2. 2 ranks x batch 2 train to the weights of 1 process x batch 4 (10 steps across an epoch end), to
   float rounding. Only for a variant that draws no random numbers (``no_prior``, dropout 0): dropout
   masks and the prior's posterior noise come from the RNG state all ranks share, so rank 1's samples
   get rank 0's draws, where one process draws anew for each of its 4 samples;
3. a DDP run killed with SIGKILL after a checkpoint (torchrun and both workers, as a crash would)
   resumes with ``--resume`` to bit-identical weights, optimiser state and log of an uninterrupted DDP
   run (``full`` variant, dropout 0.1: the RNG state matters);
4. a DDP checkpoint evaluates in one plain process (``pachorus eval``) and loads with ``load_model``;
5. under torchrun only rank 0 prints the run summary (stdout is one JSON line).
"""
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from chorushead.core.windows import POSE
from pachorus.data import HostWindowDataset
from pachorus.device import Dist
from pachorus.model import load_model
from pachorus.model.pachorus import ModelConfig, build_model
from pachorus.synth import SynthConfig, write_synth_lmdb
from pachorus.train import TrainConfig, read_log, train, train_loader, train_sampler

ROOT = Path(__file__).resolve().parents[1]
TINY_ARGS = ["--d-model", "16", "--n-layers", "1", "--n-heads", "2", "--latent", "4"]
# every run: batch 2 per rank, CPU (so gloo), one thread per process (2 cores, 2 ranks)
COMMON = ["--batch-size", "2", "--threads", "1", "--no-progress", "--device", "cpu", "--lr", "1e-3", *TINY_ARGS]
EQUAL_STEPS = 10     # test 2: 7 steps per epoch (28 samples / (2 ranks x 2)): crosses an epoch end
RESUME_STEPS = 24    # test 3: epoch ends (validation) at 7, 14, 21
CKPT_EVERY = 4
WEIGHT_TOL = 1e-5    # max |w_ddp - w_single| after EQUAL_STEPS steps (measured ~1e-6)


@pytest.fixture(scope="module")
def lmdb_path(tmp_path_factory):
    p = tmp_path_factory.mktemp("ddp") / "synth.lmdb"
    counts = write_synth_lmdb(p, SynthConfig(videos=4, seconds=4, window=30, stride=15, seed=0))
    assert counts["train"] == 14   # windows of 2 singers: 28 host samples
    return p


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env["OMP_NUM_THREADS"] = "1"
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):   # torchrun sets its own
        env.pop(k, None)
    return env


def _torchrun_cmd(data, out, *args) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
            str(_free_port()), "-m", "pachorus.cli", "train", "--data", str(data), "--out", str(out), *COMMON, *args]


def _start(cmd) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _children(pid: int) -> list[int]:
    kids = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        kids += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
    return kids


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return True


def _kill_job(proc: subprocess.Popen) -> None:
    """SIGKILL torchrun and its workers, as a crash of the machine would. torchrun starts every worker in
    a session of its own (torch.distributed.elastic's SubprocessHandler: ``start_new_session``), so
    killing torchrun's process group alone leaves both workers training and writing last.pt (seen here):
    each worker's group is killed too."""
    try:
        workers = _children(proc.pid)
    except FileNotFoundError:
        workers = []
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for w in workers:
        try:
            os.killpg(w, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    deadline = time.time() + 30
    while not all(_gone(w) for w in workers) and time.time() < deadline:
        time.sleep(0.05)
    assert all(_gone(w) for w in workers), f"workers {workers} survived SIGKILL"


def _run(cmd, timeout: float = 300) -> tuple[str, str]:
    """Run a torchrun job to its end; its stdout and stderr (all ranks). On a timeout the whole job is killed."""
    proc = _start(cmd)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_job(proc)
        raise
    assert proc.returncode == 0, err[-3000:]
    return out, err


def _summary(stdout: str) -> dict:
    """Only rank 0 prints: stdout is exactly one line, the run summary."""
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected rank 0's summary only, got {len(lines)} lines:\n{stdout}"
    return json.loads(lines[0])


@pytest.fixture(scope="module")
def ddp_equal(lmdb_path, tmp_path_factory):
    """2 ranks x batch 2, no random numbers drawn (no_prior, dropout 0), EQUAL_STEPS steps."""
    out = tmp_path_factory.mktemp("ddp_equal") / "run"
    t0 = time.time()
    stdout, _ = _run(_torchrun_cmd(lmdb_path, out, "--variant", "no_prior", "--dropout", "0", "--epochs", "100",
                                   "--max-steps", str(EQUAL_STEPS)))
    return {"out": out, "stdout": stdout, "seconds": time.time() - t0}


@pytest.fixture(scope="module")
def ddp_full(lmdb_path, tmp_path_factory):
    """The uninterrupted reference: 2 ranks x batch 2, full model, dropout 0.1, RESUME_STEPS steps."""
    out = tmp_path_factory.mktemp("ddp_full") / "run"
    stdout, _ = _run(_torchrun_cmd(lmdb_path, out, "--dropout", "0.1", "--epochs", "1000",
                                   "--max-steps", str(RESUME_STEPS)))
    return {"out": out, "stdout": stdout}


def test_each_rank_reads_its_own_shard(lmdb_path):
    """The trainer's sampler and batches for rank 0 and 1 of 2 (what ``setup`` builds from the process's
    Dist): disjoint, together the whole epoch, a new order each epoch, and step k of both ranks is batch k
    of one process with batch 2b. Mid-epoch resume (``skip``) continues each rank's own sequence."""
    ds = HostWindowDataset(lmdb_path, "train")
    n, b = len(ds), 2
    cfg = TrainConfig(data=str(lmdb_path), out="-", batch_size=b)
    one = TrainConfig(data=str(lmdb_path), out="-", batch_size=2 * b)
    cpu = torch.device("cpu")
    orders = []
    for epoch in range(3):
        ranks = [[list(js) for js in train_loader(ds, train_sampler(ds, cfg, Dist(r, 2, r)), cfg, epoch, 0, cpu).batches]
                 for r in range(2)]
        single = [list(js) for js in train_loader(ds, train_sampler(ds, one, Dist()), one, epoch, 0, cpu).batches]
        shard = [{j for js in batches for j in js} for batches in ranks]
        assert len(ranks[0]) == len(ranks[1]) == len(single) == n // (2 * b) == 7
        assert all(len(js) == b for batches in ranks for js in batches)
        assert not shard[0] & shard[1]                              # disjoint
        assert shard[0] | shard[1] == set(range(n))                 # together the whole epoch
        assert sum(len(s) for s in shard) == n                      # no sample twice within a rank
        for k in range(len(single)):                                # step k: the same 2b samples
            assert sorted(ranks[0][k] + ranks[1][k]) == sorted(single[k])
        for r in range(2):   # a resume at batch 3 of the epoch: the rest of this rank's own batches
            resumed = train_loader(ds, train_sampler(ds, cfg, Dist(r, 2, r)), cfg, epoch, 3, cpu).batches
            assert [list(js) for js in resumed] == ranks[r][3:]
        orders.append(ranks[0])
    assert orders[0] != orders[1] != orders[2]                      # reshuffled per epoch (seed + epoch)


@pytest.mark.slow  # torchrun: 3 processes importing torch
def test_two_ranks_equal_one_process_with_double_batch(ddp_equal, lmdb_path, tmp_path):
    """2 ranks x batch 2 == 1 process x batch 4 after EQUAL_STEPS steps: max |dw| < WEIGHT_TOL.

    Excluded from the weight comparison: the 3 pose entries of ``animator.out.bias``. The host's pose
    residual is anchored at frame 0 (Δ - Δ[0]), so a constant added to it cancels: their gradient is 0
    in exact arithmetic, and float rounding (~1e-10, different for a batch of 4 than for 2+2) is all
    that is left. Adam divides a gradient by its own running RMS, so that noise moves them by up to
    ~lr per step in both runs, differently (measured 1.6e-4). They change no output: the predictions of
    the two models are compared as well."""
    single = tmp_path / "single"
    t0 = time.time()
    res = train(TrainConfig(data=str(lmdb_path), out=str(single), batch_size=4, epochs=100, lr=1e-3, threads=1,
                            device="cpu", max_steps=EQUAL_STEPS,
                            model=ModelConfig(variant="no_prior", d_model=16, n_layers=1, n_heads=2, latent=4,
                                              dropout=0.0)), progress=False)
    t_single = time.time() - t0
    ddp = ddp_equal["out"]
    summary = _summary(ddp_equal["stdout"])
    assert summary["world_size"] == 2 and summary["step"] == res["step"] == EQUAL_STEPS
    # the same run but for the split of the batch: config.json differs in out and batch size only
    cd, cs = (json.loads((p / "config.json").read_text()) for p in (ddp, single))
    assert {k for k in cd if cd[k] != cs[k]} == {"out", "batch_size"} and (cd["batch_size"], cs["batch_size"]) == (2, 4)

    wd = torch.load(ddp / "last.pt", weights_only=True)["model"]
    ws = torch.load(single / "last.pt", weights_only=True)["model"]
    assert wd.keys() == ws.keys()
    diffs = {}
    for k in wd:
        d = (wd[k] - ws[k]).abs()
        if k == "animator.out.bias":
            d[POSE] = 0.0
        diffs[k] = float(d.max())
    worst = max(diffs, key=diffs.get)
    print(f"\nDDP 2x2 vs single 1x4 after {EQUAL_STEPS} steps: max |dw| = {diffs[worst]:.2e} ({worst}); "
          f"pose bias {float((wd['animator.out.bias'] - ws['animator.out.bias']).abs().max()):.2e}; "
          f"torchrun {ddp_equal['seconds']:.1f} s, single in-process {t_single:.1f} s")
    assert diffs[worst] < WEIGHT_TOL, (worst, diffs[worst])
    # ... and it trained: the weights left their initial values (seed 0) by far more than the tolerance
    torch.manual_seed(0)
    w0 = build_model(ModelConfig.from_dict(cd["model"])).state_dict()
    assert max(float((ws[k] - w0[k]).abs().max()) for k in ws) > 100 * WEIGHT_TOL
    # the predictions agree (the excluded bias entries cancel)
    val = HostWindowDataset(lmdb_path, "val")
    b = val[list(range(len(val)))]
    preds = []
    for p in (ddp, single):
        m, _ = load_model(p / "last.pt")
        m.eval()
        with torch.no_grad():
            preds.append(m(b["host"], b["partner"], b["bgm"], b["pose0"], 30, z_mode="mean").coeffs)
    assert float((preds[0] - preds[1]).abs().max()) < WEIGHT_TOL
    # one validation (epoch 0, rank 0) in both logs: same loss to rounding
    vd, vs = ([r["val_loss"] for r in read_log(p / "log.jsonl") if r["type"] == "val"] for p in (ddp, single))
    assert len(vd) == len(vs) == 1 and vd[0] == pytest.approx(vs[0], rel=1e-5)


@pytest.mark.slow  # three torchrun jobs (one is killed)
def test_killed_ddp_run_resumes_exactly(ddp_full, lmdb_path, tmp_path):
    """SIGKILL the job (torchrun + both workers) after a checkpoint past the first validation, then
    ``--resume`` to RESUME_STEPS: the same weights, optimiser state and log as the uninterrupted run."""
    out = tmp_path / "killed"
    cmd = _torchrun_cmd(lmdb_path, out, "--dropout", "0.1", "--epochs", "1000", "--ckpt-every", str(CKPT_EVERY))
    proc = _start(cmd)   # no --max-steps: it would run for 1000 epochs
    try:
        deadline = time.time() + 240
        while time.time() < deadline:   # step 9 logged: last.pt of step 8 is complete (after epoch 0's validation)
            log = read_log(out / "log.jsonl")
            if any(r["type"] == "val" for r in log) and max((r["step"] for r in log if r["type"] == "train"),
                                                            default=0) >= 2 * CKPT_EVERY + 1:
                break
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            time.sleep(0.02)
        else:
            pytest.fail("no checkpoint past step 8 within 240 s")
    finally:
        _kill_job(proc)
    assert proc.returncode == -signal.SIGKILL
    assert proc.stdout.read() == ""                        # killed: no summary from any rank
    ck_step = torch.load(out / "last.pt", weights_only=True)["step"]
    killed_at = max(r["step"] for r in read_log(out / "log.jsonl") if r["type"] == "train")
    assert 2 * CKPT_EVERY <= ck_step <= killed_at and ck_step < RESUME_STEPS
    assert ck_step % CKPT_EVERY == 0 or ck_step % 7 == 0
    print(f"\nkilled at step {killed_at} (rank 0's log), resumed from last.pt of step {ck_step} to {RESUME_STEPS}")

    resume = cmd[:cmd.index("--epochs")] + ["--epochs", "1000", "--max-steps", str(RESUME_STEPS), "--resume"]
    resume[resume.index("--master_port") + 1] = str(_free_port())
    stdout, _ = _run(resume)
    assert _summary(stdout)["step"] == RESUME_STEPS and _summary(stdout)["steps_this_run"] == RESUME_STEPS - ck_step

    ref = ddp_full["out"]
    a, b = (torch.load(p / "last.pt", weights_only=True) for p in (ref, out))
    assert a["step"] == b["step"] == RESUME_STEPS
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k       # bit-identical
    for i, s in a["optimizer"]["state"].items():
        for k, v in s.items():
            assert torch.equal(v, b["optimizer"]["state"][i][k]), (i, k)
    la, lb = (read_log(p / "log.jsonl") for p in (ref, out))
    ta, tb = ([(r["step"], r["loss"]) for r in log if r["type"] == "train"] for log in (la, lb))
    assert [s for s, _ in tb] == list(range(1, RESUME_STEPS + 1))   # no gap, no duplicate
    assert tb == ta                                                 # rank 0's losses, exact
    va, vb = ([(r["epoch"], r["val_loss"]) for r in log if r["type"] == "val"] for log in (la, lb))
    assert [e for e, _ in vb] == [0, 1, 2] and vb == va


@pytest.mark.slow  # a torchrun job and one eval process
def test_ddp_checkpoint_evaluates_in_one_process(ddp_full, lmdb_path, tmp_path):
    """Rank 0 saves the unwrapped model (no DDP ``module.`` prefix): eval and load_model take it as they
    take a one-process run's."""
    run = ddp_full["out"]
    res = subprocess.run([sys.executable, "-m", "pachorus.cli", "eval", "--ckpt", str(run / "model.pt"),
                          "--data", str(lmdb_path), "--out", str(tmp_path / "e.json")], env=_env(), cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    js = json.loads((tmp_path / "e.json").read_text())
    assert js["n_samples"] == 14 and math.isfinite(js["model"]["PPE"]) and js["head"] == "open"   # synthetic data
    last = torch.load(run / "last.pt", weights_only=True)["model"]
    for name in ("model.pt", "best.pt", "last.pt"):
        model, ck = load_model(run / name)
        sd = model.state_dict()
        assert not any(k.startswith("module.") for k in ck["model"]) and sd.keys() == last.keys()
        if name != "best.pt":   # best.pt: the weights at the best validation (an epoch end)
            assert all(torch.equal(sd[k], last[k]) for k in sd), name
        assert ck["model_config"]["d_model"] == 16 and ck["data_info"]["window"] == 30


@pytest.mark.slow  # the torchrun jobs of the fixtures
def test_only_rank0_prints_the_summary(ddp_equal, ddp_full):
    """Before the fix every rank printed its summary (rank 1's with ``best_val: null``)."""
    for job, steps in ((ddp_equal, EQUAL_STEPS), (ddp_full, RESUME_STEPS)):
        s = _summary(job["stdout"])   # exactly one line
        assert s["world_size"] == 2 and s["step"] == steps and s["stopped"] == "max_steps" and s["device"] == "cpu"
        assert isinstance(s["best_val"], float)   # rank 0's: it validated at the end of epoch 0
