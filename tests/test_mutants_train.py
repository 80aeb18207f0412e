"""pachorus.train: exact values, messages and boundaries, written to kill the mutants that survived
``scripts/mutation.sh train`` (see docs/mutation-survivors.md). The helpers are called with small
stand-ins; the few real runs train a d_model-8 model for 1-3 steps on a 12-sample synthetic LMDB."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch

from pachorus import train as TR
from pachorus.checkpoint import CheckpointError, save_checkpoint
from pachorus.device import Dist
from pachorus.losses import LossConfig
from pachorus.model.pachorus import ModelConfig, ModelOutput, build_model
from pachorus.synth import SynthConfig, write_synth_lmdb
from pachorus.train import SkipSampler, TrainConfig, read_log, train, truncate_log

MODEL = dict(variant="full", d_model=8, n_layers=1, n_heads=2, latent=2, dropout=0.0)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    p = tmp_path_factory.mktemp("synth") / "s.lmdb"
    # 4 videos of 1.5 s, 0.5 s windows: split by video -> 6 train, 3 val, 3 test windows; 2 singers each,
    # so 12 training samples (3 batches of 4) and 6 validation samples
    assert write_synth_lmdb(p, SynthConfig(videos=4, seconds=1.5, window=15, stride=15, seed=0)) == \
        {"train": 6, "val": 3, "test": 3}
    return p


def _cfg(data, out, **kw) -> TrainConfig:
    kw = {"model": ModelConfig(**MODEL), "batch_size": 4, "epochs": 1, "lr": 1e-3, "threads": 1, **kw}
    return TrainConfig(data=str(data), out=str(out), **kw)


# ---------------------------------------------------------------- config, sampler, log

def test_train_config_defaults_and_round_trip():
    c = TrainConfig(data="d", out="o")
    assert (c.epochs, c.batch_size, c.lr, c.grad_clip, c.seed, c.device, c.amp, c.num_workers, c.ckpt_every,
            c.max_steps, c.time_budget_s, c.threads, c.flame, c.data_info, c.init) == \
        (100, 16, 1e-4, 1.0, 0, "auto", True, 0, 0, 0, 0.0, 0, None, None, None)
    c = TrainConfig(data="d", out="o", model=ModelConfig(**MODEL), loss=LossConfig(w_kl=0.5), epochs=3)
    d = c.to_dict()
    assert d["model"] == c.model.to_dict() and d["loss"] == c.loss.to_dict() and d["epochs"] == 3
    back = TrainConfig.from_dict({**d, "unknown": 1})
    assert back == c
    empty = TrainConfig.from_dict({"data": "x", "out": "y"})
    assert empty.model == ModelConfig.from_dict({}) and empty.loss == LossConfig.from_dict({})
    assert TR.RESUMABLE_OVERRIDES == ("epochs", "max_steps", "time_budget_s", "device", "num_workers", "threads",
                                      "ckpt_every")
    assert TR.INIT_MAY_DIFFER == ("dropout", "faceformer_dropout")


def test_skip_sampler():
    s = SkipSampler(range(5), 2)
    assert list(s) == [2, 3, 4] and len(s) == 3
    assert list(SkipSampler(range(5), 0)) == [0, 1, 2, 3, 4]
    assert len(SkipSampler(range(3), 3)) == 0 and len(SkipSampler(range(3), 7)) == 0


def test_read_log_skips_torn_lines_and_goes_on(tmp_path):
    p = tmp_path / "log.jsonl"
    assert read_log(p) == []
    p.write_text('{"a": 1}\n{"torn\n{"b": 2}\n{"c"')
    assert read_log(p) == [{"a": 1}, {"b": 2}]


def test_truncate_log_keeps_exactly_the_checkpoints_lines(tmp_path):
    p = tmp_path / "log.jsonl"
    rows = [{"type": "train", "step": 1, "epoch": 0}, {"type": "train", "step": 2, "epoch": 0},
            {"type": "val", "step": 2, "epoch": 0}, {"type": "train", "step": 3, "epoch": 1},
            {"type": "train", "step": 4, "epoch": 1}, {"type": "val", "step": 4, "epoch": 1}, {"type": "other"}]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"torn')
    truncate_log(p, 3, 1)
    assert p.read_text() == "".join(json.dumps(r) + "\n" for r in rows[:4])
    assert not p.with_suffix(".tmp").exists()
    truncate_log(p, 0, 0)
    assert p.read_text() == ""


def test_plot_curves_only_with_train_lines(tmp_path):
    log, png = tmp_path / "log.jsonl", tmp_path / "c.png"
    log.write_text(json.dumps({"type": "val", "step": 1, "epoch": 0, "val_loss": 1.0}) + "\n")
    TR.plot_curves(log, png)
    assert not png.exists()
    rows = [{"type": "train", "step": s, "loss": 1.0 / s, "mse": 0.5, "vel": 0.1} for s in range(1, 4)]
    rows.append({"type": "val", "step": 3, "epoch": 0, "val_loss": 0.4, "val_pose_l2": 0.2})
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    TR.plot_curves(log, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- validate

class _Loss:
    """Stand-in for PaChorusLoss: mse = mean of (pred - target)², vel = 1, lip_vertex = 2 when asked."""

    def __init__(self, groups, lip=False):
        self.groups = groups
        self.lip = lip
        self.cfg = LossConfig(w_mse=2.0, w_vel=3.0, w_kl=100.0, w_lip_vertex=5.0)

    def __call__(self, out, target):
        parts = {"mse": ((out.coeffs - target) ** 2).mean(), "vel": torch.tensor(1.0), "kl": torch.tensor(9.0)}
        if self.lip:
            parts["lip_vertex"] = torch.tensor(2.0)
        return parts


class _Model(torch.nn.Module):
    """Predicts pose0 + 1 on the pose and zeros elsewhere; records its calls."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, host, partner, bgm, pose0, n, z_mode="posterior"):
        self.calls.append((n, z_mode, self.training))
        c = torch.zeros(host.shape[0], n, 56)
        c[..., 53:] = 1.0
        return ModelOutput(coeffs=c)


def _batch(k, value):
    return {"host": torch.zeros(k, 4, dtype=torch.float16), "partner": torch.zeros(k, 4), "bgm": torch.zeros(k, 4),
            "pose0": torch.zeros(k, 3), "coeffs": torch.full((k, 2, 56), value)}


def test_validate_by_hand():
    m = _Model()
    m.train()
    batches = [_batch(1, 0.0), _batch(3, 1.0)]
    v = TR.validate(m, batches, _Loss(("exp", "jaw", "pose")), torch.device("cpu"), 2)
    assert m.calls == [(2, "mean", False), (2, "mean", False)] and m.training
    # batch 1: mse = 3/56, batch 2: mse = 53/56; weighted by batch size 1 and 3
    mse = (1 * 3 / 56 + 3 * 53 / 56) / 4
    assert v["val_mse"] == pytest.approx(mse)
    assert v["val_loss"] == pytest.approx(2.0 * mse + 3.0)           # no KL in validation
    # pose L2: batch 1 |(1,1,1)| = sqrt 3, batch 2: 0
    assert v["val_pose_l2"] == pytest.approx(math.sqrt(3) / 4)
    assert set(v) == {"val_loss", "val_mse", "val_pose_l2"}
    v = TR.validate(_Model(), batches, _Loss(("exp", "jaw"), lip=True), torch.device("cpu"), 2)
    assert set(v) == {"val_loss", "val_mse"}
    assert v["val_loss"] == pytest.approx(2.0 * mse + 3.0 + 5.0 * 2.0)
    assert TR.validate(_Model(), [], _Loss(("pose",)), torch.device("cpu"), 2) == \
        {"val_loss": 0.0, "val_mse": 0.0, "val_pose_l2": 0.0}


# ---------------------------------------------------------------- init, resume, data checks

def _ckpt(path, model_cfg, state=None):
    m = build_model(model_cfg)
    save_checkpoint({"model": state if state is not None else m.state_dict(), "model_config": model_cfg.to_dict()},
                    path)
    return m


def test_load_init_copies_weights_and_refuses_others(tmp_path):
    ours = ModelConfig(**MODEL)
    torch.manual_seed(3)
    src = _ckpt(tmp_path / "a.pt", ModelConfig(**{**MODEL, "dropout": 0.3}))
    torch.manual_seed(4)
    model = build_model(ours)
    TR.load_init(model, TrainConfig(data="d", out="o", model=ours, init=str(tmp_path / "a.pt")), torch.device("cpu"))
    for k, v in src.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    _ckpt(tmp_path / "b.pt", ModelConfig(**{**MODEL, "d_model": 16, "latent": 4}))
    with pytest.raises(CheckpointError) as e:
        TR.load_init(model, TrainConfig(data="d", out="o", model=ours, init=str(tmp_path / "b.pt")), "cpu")
    assert str(e.value) == (f"--init {tmp_path / 'b.pt'}: another model architecture (d_model: 16 there, 8 here; "
                            "latent: 4 there, 2 here); give the same model options as the run that wrote it")
    sd = dict(src.state_dict())
    sd.pop("animator.out.bias")
    save_checkpoint({"model": sd, "model_config": ours.to_dict()}, tmp_path / "c.pt")
    with pytest.raises(CheckpointError) as e:
        TR.load_init(model, TrainConfig(data="d", out="o", model=ours, init=str(tmp_path / "c.pt")), "cpu")
    assert str(e.value) == (f"--init {tmp_path / 'c.pt'}: its weights do not fit this model (1 tensors differ, "
                            "e.g. animator.out.bias)")
    sd = dict(src.state_dict())
    sd["animator.out.bias"] = torch.zeros(3)
    sd["zzz.extra"] = torch.zeros(1)
    save_checkpoint({"model": sd, "model_config": ours.to_dict()}, tmp_path / "d.pt")
    with pytest.raises(CheckpointError) as e:
        TR.load_init(model, TrainConfig(data="d", out="o", model=ours, init=str(tmp_path / "d.pt")), "cpu")
    assert str(e.value).endswith("(2 tensors differ, e.g. zzz.extra)")


def test_resolve_resume_keeps_the_saved_config_but_the_run_settings(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        TR._resolve_resume(TrainConfig(data="d", out=str(tmp_path)), tmp_path)
    assert str(e.value) == f"--resume: no last.pt/config.json in {tmp_path}; start without --resume"
    saved = TrainConfig(data="old", out="old", model=ModelConfig(**MODEL), lr=0.5, batch_size=3, epochs=2, seed=7)
    (tmp_path / "config.json").write_text(json.dumps(saved.to_dict()))
    with pytest.raises(FileNotFoundError):       # config.json alone is not enough
        TR._resolve_resume(TrainConfig(data="d", out=str(tmp_path)), tmp_path)
    (tmp_path / "last.pt").write_bytes(b"x")
    new = TrainConfig(data="new", out="newout", lr=9.0, batch_size=9, epochs=5, max_steps=4, time_budget_s=2.0,
                      device="cpu", num_workers=1, threads=2, ckpt_every=3, seed=1)
    r = TR._resolve_resume(new, tmp_path)
    assert (r.lr, r.batch_size, r.seed, r.model) == (0.5, 3, 7, saved.model)
    assert (r.epochs, r.max_steps, r.time_budget_s, r.device, r.num_workers, r.threads, r.ckpt_every) == \
        (5, 4, 2.0, "cpu", 1, 2, 3)
    assert (r.data, r.out) == ("new", "newout")
    (tmp_path / "last.pt").unlink()
    (tmp_path / "config.json").unlink()
    (tmp_path / "last.pt").write_bytes(b"x")
    with pytest.raises(FileNotFoundError):       # last.pt alone is not enough either
        TR._resolve_resume(new, tmp_path)


def test_open_data_refuses_another_sample_rate(tmp_path):
    p = tmp_path / "8k.lmdb"
    write_synth_lmdb(p, SynthConfig(videos=4, seconds=1.5, window=15, stride=15, seed=0, sr=8000))
    with pytest.raises(ValueError) as e:
        TR._open_data(TrainConfig(data=str(p), out="o"), False, False)
    assert str(e.value) == (f"{p}: audio at 8000 Hz, but the audio encoders take 16000 Hz; "
                            "repack the LMDB at 16000 Hz")


def test_open_data_checks_the_data_on_resume(data):
    tr, va, info = TR._open_data(TrainConfig(data=str(data), out="o"), False, False)
    assert (len(tr), len(va)) == (12, 6) and info["sr"] == 16000 and info["window"] == 15
    other = {**info, "fps": 25}
    TR._open_data(TrainConfig(data=str(data), out="o", data_info=other), False, False)   # not resuming: no check
    with pytest.raises(ValueError, match="fps: trained on 25, this LMDB has 30"):
        TR._open_data(TrainConfig(data=str(data), out="o", data_info=other), True, False)
    TR._open_data(TrainConfig(data=str(data), out="o", data_info=None), True, False)
    tr, va, _ = TR._open_data(TrainConfig(data=str(data), out="o"), False, True)
    assert (tr.half_audio, va.half_audio, len(tr), len(va)) == (True, True, 12, 6)


# ---------------------------------------------------------------- setup

def test_setup_refusals_say_why_and_leave_nothing(data, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ValueError) as e:
        TR.setup(_cfg(data, out, init="x.pt"), resume=True)
    assert str(e.value) == "--init starts a new run from a checkpoint's weights, --resume continues one: give one"
    with pytest.raises(FileNotFoundError) as e:
        TR.setup(_cfg(data, out, init=str(tmp_path / "nope.pt")), resume=False)
    assert str(e.value) == f"--init {tmp_path / 'nope.pt'}: no such checkpoint"
    with pytest.raises(ValueError) as e:
        TR.setup(_cfg(data, out, batch_size=13), resume=False)
    assert str(e.value) == f"{data}: 12 training samples, fewer than one batch (13 x 1 processes)"
    assert not out.exists()
    run = TR.setup(_cfg(data, out, batch_size=12), resume=False)   # exactly one batch is enough
    run.log.close()
    with pytest.raises(FileExistsError) as e:
        (out / "last.pt").write_bytes(b"x")
        TR.setup(_cfg(data, out), resume=False)
    assert str(e.value) == (f"{out} already holds a run (last.pt): pass --resume to continue it, "
                            "or choose another --out (the folder is never deleted)")


def test_setup_builds_the_run(data, tmp_path):
    out = tmp_path / "run"
    cfg = _cfg(data, out, model=ModelConfig(**{**MODEL, "variant": "no_kl"}), loss=LossConfig(w_kl=0.5), lr=0.01,
               seed=3)
    run = TR.setup(cfg, resume=False)
    try:
        assert run.cfg.loss.w_kl == 0.0                       # no_kl: the trainer zeroes it
        assert json.loads((out / "config.json").read_text()) == run.cfg.to_dict()
        assert run.cfg.data_info["window"] == 15 and run.n_frames == 15 and type(run.n_frames) is int
        assert run.state == {"step": 0, "epoch": 0, "batch_in_epoch": 0, "best_val": math.inf}
        assert run.use_amp is False and run.device.type == "cpu" and run.ddp is run.model
        assert run.opt.param_groups[0]["lr"] == 0.01 and isinstance(run.opt, torch.optim.Adam)
        assert len(run.params) == len([p for p in run.model.parameters() if p.requires_grad])
        assert run.scaler.is_enabled() is False
        assert run.val_loader is not None and run.val_loader.prefetch == 0 and run.val_loader.pin_memory is False
        assert list(run.val_loader.batches) == [[0, 1, 2, 3], [4, 5]]          # in order, last short batch kept
        assert run.sampler.seed == 3 and run.sampler.shuffle and run.sampler.drop_last
        assert run.loss_fn.groups == tuple(run.cfg.data_info["coeff_groups"]) or \
            list(run.loss_fn.groups) == list(run.cfg.data_info["coeff_groups"])
        assert run.log_path == out / "log.jsonl"
        assert torch.get_num_threads() == 1
        torch.manual_seed(3)
        ref = build_model(cfg.model)
        for k, v in ref.state_dict().items():
            assert torch.equal(run.model.state_dict()[k], v), k    # seeded before the model is built
    finally:
        run.log.close()


def test_payload_and_write_log(data, tmp_path):
    run = TR.setup(_cfg(data, tmp_path / "run"), resume=False)
    try:
        p = run.payload("best", epoch=1)
        assert set(p) == {"model", "model_config", "data_info", "step", "epoch"} and p["epoch"] == 1
        assert p["model_config"] == run.cfg.model.to_dict() and p["data_info"] == run.cfg.data_info
        p = run.payload("model")
        assert set(p) == {"model", "model_config", "data_info", "step", "train_config"}
        assert p["train_config"] == run.cfg.to_dict()
        p = run.payload("last")
        assert {"optimizer", "scaler", "rng", "train_config", "epoch", "batch_in_epoch", "best_val"} <= set(p)
        run.write_log({"a": 1})
        run.write_log({"b": 2})
        assert (tmp_path / "run" / "log.jsonl").read_text() == '{"a": 1}\n{"b": 2}\n'    # flushed
        run.save("best")
        assert (tmp_path / "run" / "best.pt").exists()
        run.d = Dist(rank=1, world=2)
        run.save("model")
        assert not (tmp_path / "run" / "model.pt").exists()      # only the main process writes
    finally:
        run.log.close()


# ---------------------------------------------------------------- loader, sampler, stop

def test_read_ahead_and_samplers(data):
    assert TR.READ_AHEAD == 2
    assert TR.default_read_ahead(torch.device("cpu")) == 0
    assert TR.default_read_ahead(torch.device("cuda")) == 2
    tr, _, _ = TR._open_data(TrainConfig(data=str(data), out="o"), False, False)
    cfg = TrainConfig(data=str(data), out="o", batch_size=4, seed=5)
    s = TR.train_sampler(tr, cfg, Dist(rank=1, world=2))
    assert (s.num_replicas, s.rank, s.shuffle, s.seed, s.drop_last) == (2, 1, True, 5, True)
    s = TR.train_sampler(tr, cfg, Dist())
    loader = TR.train_loader(tr, s, cfg, 3, 1, torch.device("cpu"))
    s.set_epoch(3)
    order = list(s)
    assert [list(b) for b in loader.batches] == [order[4:8], order[8:12]]
    assert loader.prefetch == 0 and loader.pin_memory is False and loader.num_workers == 0
    assert torch.equal(loader.generator.get_state(), torch.Generator().manual_seed(8).get_state())
    assert TR.train_loader(tr, s, cfg, 0, 0, torch.device("cpu"), read_ahead=3).prefetch == 3
    assert len(list(TR.train_loader(tr, s, cfg, 0, 2, torch.device("cpu")).batches)) == 1


def test_stop_reason_boundaries():
    class R:
        pass
    r = R()
    r.d = Dist()
    r.cfg = TrainConfig(data="d", out="o", max_steps=3)
    r.state = {"step": 2}
    assert TR._stop_reason(r, time.time()) is None
    r.state = {"step": 3}
    assert TR._stop_reason(r, time.time()) == "max_steps"
    r.cfg = TrainConfig(data="d", out="o", max_steps=0)
    assert TR._stop_reason(r, time.time() - 1e6) is None               # 0 = no limit
    r.cfg = TrainConfig(data="d", out="o", time_budget_s=50.0)
    assert TR._stop_reason(r, time.time() - 100) == "time_budget"
    assert TR._stop_reason(r, time.time()) is None
    r.cfg = TrainConfig(data="d", out="o", max_steps=3, time_budget_s=50.0)
    assert TR._stop_reason(r, time.time() - 100) == "max_steps"


def test_stop_reason_at_exactly_the_time_budget(monkeypatch):
    class R:
        pass
    r = R()
    r.d, r.state = Dist(), {"step": 1}
    r.cfg = TrainConfig(data="d", out="o", time_budget_s=0.5)
    monkeypatch.setattr(TR, "time", type("Clock", (), {"time": staticmethod(lambda: 100.5)}))
    assert TR._stop_reason(r, 100.0) == "time_budget"                  # 0.5 s spent of 0.5: stop
    assert TR._stop_reason(r, 100.25) is None


class _Bar:
    """Stand-in for tqdm (a real bar deadlocks in mutmut's forked children: tqdm's lock comes from the parent)."""
    made = []

    def __init__(self, **kw):
        self.kw, self.n, self.postfix, self.closed = kw, kw.get("initial", 0), None, False
        _Bar.made.append(self)

    def update(self, k):
        self.n += k

    def set_postfix(self, **kw):
        self.postfix = kw

    def close(self):
        self.closed = True


@pytest.fixture
def bars(monkeypatch):
    import tqdm
    monkeypatch.setattr(tqdm, "tqdm", _Bar)
    _Bar.made = []
    return _Bar.made


def test_progress_bar_counts_the_epochs_batches(data, tmp_path, bars):
    import sys
    run = TR.setup(_cfg(data, tmp_path / "run", epochs=4), resume=False)
    try:
        bar = TR._progress_bar(run, 1, 2)
        assert bar.kw == {"total": 3, "initial": 2, "desc": "epoch 2/4", "dynamic_ncols": True, "leave": False,
                          "file": sys.stderr}
    finally:
        run.log.close()


# ---------------------------------------------------------------- the loop

def test_one_epoch_to_its_end(data, tmp_path, monkeypatch):
    saved = []
    orig = TR.Run.save
    monkeypatch.setattr(TR.Run, "save", lambda self, kind, **kw: (saved.append((kind, self.state["step"])),
                                                                   orig(self, kind, **kw)))
    out = tmp_path / "run"
    res = train(_cfg(data, out, ckpt_every=2, max_steps=4), progress=False)   # 4: never reached (3 batches)
    assert res["step"] == 3 and res["epoch"] == 1 and res["steps_this_run"] == 3 and res["stopped"] == "epochs"
    assert res["device"] == "cpu" and res["world_size"] == 1 and res["steps_per_s"] > 0
    assert saved == [("last", 2), ("best", 3), ("model", 3), ("last", 3), ("model", 3)]
    log = read_log(out / "log.jsonl")
    assert [(r["type"], r["step"], r["epoch"]) for r in log] == \
        [("train", 1, 0), ("train", 2, 0), ("train", 3, 0), ("val", 3, 0)]
    assert res["best_val"] == log[3]["val_loss"]
    assert set(log[3]) == {"type", "step", "epoch", "val_loss", "val_mse", "val_pose_l2"}
    t = log[0]
    assert t["lr"] == 1e-3 and {"loss", "mse", "kl", "vel", "time"} <= set(t) and type(t["loss"]) is float
    last = torch.load(out / "last.pt", weights_only=True)
    assert (last["step"], last["epoch"], last["batch_in_epoch"]) == (3, 1, 0)
    best = torch.load(out / "best.pt", weights_only=True)
    assert best["epoch"] == 0 and best["val"]["val_loss"] == log[3]["val_loss"]
    assert last["best_val"] == log[3]["val_loss"]
    for f in ("model.pt", "curves.png", "config.json"):
        assert (out / f).exists()


def test_mid_epoch_stop_and_checkpoint_every(data, tmp_path, monkeypatch):
    saved = []
    orig = TR.Run.save
    monkeypatch.setattr(TR.Run, "save", lambda self, kind, **kw: (saved.append((kind, self.state["step"])),
                                                                   orig(self, kind, **kw)))
    out = tmp_path / "run"
    res = train(_cfg(data, out, max_steps=2, ckpt_every=1), progress=False)
    assert res["stopped"] == "max_steps" and res["epoch"] == 0 and res["step"] == 2
    assert saved == [("last", 1), ("last", 2), ("last", 2), ("model", 2), ("best", 2)]
    assert res["best_val"] is None                              # stopped before any validation
    last = torch.load(out / "last.pt", weights_only=True)
    assert (last["step"], last["epoch"], last["batch_in_epoch"]) == (2, 0, 2)
    assert [r["type"] for r in read_log(out / "log.jsonl")] == ["train", "train"]
    saved.clear()
    res = train(_cfg(data, out, max_steps=4, ckpt_every=0), resume=True, progress=False)   # 4: never reached
    assert res["step"] == 3 and res["steps_this_run"] == 1 and res["epoch"] == 1 and res["stopped"] == "epochs"
    assert saved == [("best", 3), ("model", 3), ("last", 3), ("model", 3)]
    assert [(r["type"], r["step"]) for r in read_log(out / "log.jsonl")] == \
        [("train", 1), ("train", 2), ("train", 3), ("val", 3)]


def test_grad_clip_and_progress(data, tmp_path, monkeypatch, bars):
    clipped = []
    orig = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda p, n: clipped.append(n) or orig(p, n))
    train(_cfg(data, tmp_path / "a", max_steps=1, grad_clip=0.5), progress=True)
    assert clipped == [0.5]
    assert len(bars) == 1 and bars[0].n == 1 and bars[0].closed
    assert bars[0].postfix == {"loss": f"{read_log(tmp_path / 'a' / 'log.jsonl')[0]['loss']:.4f}"}
    train(_cfg(data, tmp_path / "b", max_steps=1, grad_clip=0.0), progress=False)
    assert clipped == [0.5] and len(bars) == 1


# ---------------------------------------------------------------- plot_curves, through matplotlib objects
def _plot_capture(monkeypatch, tmp_path, rows):
    """Run plot_curves on a log of ``rows``; return the figure, its axes and savefig's keyword args."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.figure
    import matplotlib.pyplot as plt
    seen = {}
    real_subplots, real_savefig = plt.subplots, matplotlib.figure.Figure.savefig

    def subplots(*a, **kw):
        fig, ax = real_subplots(*a, **kw)
        seen["fig"], seen["ax"], seen["args"] = fig, ax, a
        return fig, ax

    def savefig(self, fname, **kw):
        seen["savefig"] = kw
        return real_savefig(self, fname, **kw)

    monkeypatch.setattr(plt, "subplots", subplots)
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    log, png = tmp_path / "log.jsonl", tmp_path / "curves.png"
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    TR.plot_curves(log, png)
    assert png.exists()
    return seen


def _lines(ax):
    return {ln.get_label(): ln for ln in ax.get_lines()}


def test_plot_curves_axes_lines_labels_and_save(monkeypatch, tmp_path):
    import matplotlib.pyplot as plt
    import numpy as np
    # 100 train rows -> moving average over k = 100 // 50 = 2 rows; val rows interleaved (ignored for train)
    rows = []
    for s in range(1, 101):
        rows.append({"type": "train", "step": s * 10, "loss": float(s), "mse": 2.0 * s, "vel": s * s * 1.0})
        if s % 25 == 0:
            rows.append({"type": "val", "step": s * 10, "val_loss": 1.0 / s, "val_pose_l2": 0.5 * s})
    rows.append({"type": "other", "step": 5})
    seen = _plot_capture(monkeypatch, tmp_path, rows)
    fig, ax = seen["fig"], seen["ax"]
    assert seen["args"] == (1, 2) and len(ax) == 2
    assert tuple(fig.get_size_inches()) == (10.0, 3.5)
    assert seen["savefig"] == {"dpi": 80}
    assert not plt.fignum_exists(fig.number)            # closed after saving
    left = _lines(ax[0])
    assert list(left) == ["train loss", "train mse", "train vel", "val loss"]
    steps = np.arange(1, 101) * 10
    for key, y in (("loss", steps / 10.0), ("mse", steps / 5.0), ("vel", (steps / 10.0) ** 2)):
        x_got, y_got = left[f"train {key}"].get_data()
        assert list(x_got) == list(steps[1:])
        np.testing.assert_allclose(y_got, (y[1:] + y[:-1]) / 2)
    v = left["val loss"]
    assert list(v.get_xdata()) == [250, 500, 750, 1000]
    np.testing.assert_allclose(v.get_ydata(), [1 / 25, 1 / 50, 1 / 75, 1 / 100])
    assert v.get_marker() == "o" and v.get_linestyle() == "-"
    right = _lines(ax[1])
    assert list(right) == ["val pose L2 (z=0)"]
    p = right["val pose L2 (z=0)"]
    assert list(p.get_xdata()) == [250, 500, 750, 1000] and list(p.get_ydata()) == [12.5, 25.0, 37.5, 50.0]
    assert p.get_marker() == "o" and p.get_linestyle() == "-"
    assert ax[0].get_yscale() == "log" and ax[1].get_yscale() == "linear"
    assert ax[0].get_xlabel() == "step" and ax[1].get_xlabel() == "step"
    leg0, leg1 = ax[0].get_legend(), ax[1].get_legend()
    assert [t.get_text() for t in leg0.get_texts()] == list(left)
    assert all(t.get_fontsize() == 7 for t in leg0.get_texts())
    assert [t.get_text() for t in leg1.get_texts()] == ["val pose L2 (z=0)"]


def test_plot_curves_few_rows_and_no_pose(monkeypatch, tmp_path):
    import numpy as np
    # 3 train rows -> k = max(1, 0) = 1 (no smoothing); val without pose -> right panel empty, no legend
    rows = [{"type": "train", "step": s, "loss": 1.0 * s, "mse": 0.5, "vel": 0.25} for s in (1, 2, 3)]
    rows.append({"type": "val", "step": 3, "val_loss": 0.75})
    seen = _plot_capture(monkeypatch, tmp_path, rows)
    ax = seen["ax"]
    left = _lines(ax[0])
    assert list(left) == ["train loss", "train mse", "train vel", "val loss"]
    assert list(left["train loss"].get_xdata()) == [1, 2, 3]
    np.testing.assert_allclose(left["train loss"].get_ydata(), [1.0, 2.0, 3.0])
    assert list(left["val loss"].get_xdata()) == [3] and list(left["val loss"].get_ydata()) == [0.75]
    assert ax[1].get_lines() == [] and ax[1].get_legend() is None
    assert ax[1].get_xlabel() == "step"


# ---------------------------------------------------------------- third round: the survivors of round two

@pytest.fixture(scope="module")
def data_noval(tmp_path_factory):
    p = tmp_path_factory.mktemp("synth_noval") / "s.lmdb"
    # 2 videos: no val/test video (video_splits gives none under 3); a fit without the pose group
    assert write_synth_lmdb(p, SynthConfig(videos=2, seconds=1.5, window=15, stride=15, seed=0,
                                           coeff_groups=("exp", "jaw"))) == {"train": 6, "val": 0, "test": 0}
    return p


def test_to_dict_has_exactly_the_fields():
    from dataclasses import fields
    d = TrainConfig(data="d", out="o").to_dict()
    assert set(d) == {f.name for f in fields(TrainConfig)}


def test_progress_bar_total_is_a_whole_number(data, tmp_path, bars):
    run = TR.setup(_cfg(data, tmp_path / "run", batch_size=5), resume=False)
    try:
        bar = TR._progress_bar(run, 0, 0)
        assert bar.kw["total"] == 2 and type(bar.kw["total"]) is int      # 12 // 5, not 2.4
    finally:
        run.log.close()


def test_train_loader_drops_the_short_batch_and_sampler_drops_the_tail(data):
    tr, _, _ = TR._open_data(TrainConfig(data=str(data), out="o"), False, False)
    cfg = TrainConfig(data=str(data), out="o", batch_size=5, seed=2)
    s = TR.train_sampler(tr, cfg, Dist())
    s.set_epoch(1)
    order = list(s)
    loader = TR.train_loader(tr, s, cfg, 1, 0, torch.device("cpu"))
    assert [list(b) for b in loader.batches] == [order[0:5], order[5:10]]      # 12 samples: 2 batches of 5
    loader = TR.train_loader(tr, s, cfg, 1, 1, torch.device("cpu"))
    assert [list(b) for b in loader.batches] == [order[5:10]]
    # 12 samples over 5 ranks: each takes 2 (drop_last), not 3 padded
    s = TR.train_sampler(tr, cfg, Dist(rank=1, world=5))
    assert len(s) == 2 and len(list(s)) == 2


def test_open_data_full_mismatch_message_and_half_audio_per_split(data):
    out = Path("o")
    other = {**TR.data_info(TR.HostWindowDataset(str(data), "train").meta), "fps": 25}
    with pytest.raises(ValueError) as e:
        TR._open_data(TrainConfig(data=str(data), out=str(out), data_info=other), True, False)
    assert str(e.value) == (f"{out / 'last.pt'} does not match {data} (fps: trained on 25, this LMDB has 30); "
                            "use an LMDB built the same way or train a new model on this one")
    for half in (False, True):
        tr, va, _ = TR._open_data(TrainConfig(data=str(data), out="o"), False, half)
        assert tr.half_audio is half and va.half_audio is half


def test_open_data_refuses_a_pack_between_the_two_opens(data, monkeypatch):
    from chorushead.core.windows import DatasetChanged
    real = TR.HostWindowDataset

    def opened(path, split, **kw):      # the train split opened one generation before the val split
        ds = real(path, split, **kw)
        if split == "train":
            ds.reader.generation -= 1
        return ds

    monkeypatch.setattr(TR, "HostWindowDataset", opened)
    g = real(str(data), "val").reader.generation
    with pytest.raises(DatasetChanged) as e:
        TR._open_data(TrainConfig(data=str(data), out="o"), False, False)
    assert str(e.value).startswith(f"{data} was repacked while in use (generation {g - 1} -> {g})")


def test_setup_seeds_every_rng_and_reads_float32_audio_on_the_cpu(data, tmp_path):
    import random

    import numpy as np
    run = TR.setup(_cfg(data, tmp_path / "a" / "b" / "run", seed=3), resume=False)   # parents created
    try:
        assert np.random.random() == np.random.RandomState(3).random_sample()
        assert random.random() == random.Random(3).random()
        assert run.train_ds.half_audio is False
        assert run.val_loader.ds.half_audio is False
        assert run.scaler.state_dict() == {} and run.payload("last")["scaler"] == run.scaler.state_dict()
    finally:
        run.log.close()


def test_setup_counts_every_process_in_the_one_batch_check(data, tmp_path, monkeypatch):
    monkeypatch.setattr(TR, "setup_distributed", lambda flag: Dist(rank=0, world=2))
    with pytest.raises(ValueError) as e:
        TR.setup(_cfg(data, tmp_path / "run", batch_size=7), resume=False)
    assert str(e.value) == f"{data}: 12 training samples, fewer than one batch (7 x 2 processes)"


def test_setup_with_a_head_and_without_val_or_pose(data_noval, tmp_path):
    from chorushead.core import openhead
    cfg = _cfg(data_noval, tmp_path / "run", flame="open", loss=LossConfig(w_lip_vertex=1.0), batch_size=12)
    run = TR.setup(cfg, resume=False)
    try:
        assert run.val_loader is None                              # no val split
        assert run.loss_fn.groups == ("exp", "jaw")                # the LMDB's groups, not all three
        assert run.loss_fn.flame is not None
        assert torch.equal(run.loss_fn.lips, torch.as_tensor(openhead.load_head("open").masks["lips"]))
    finally:
        run.log.close()


def test_setup_init_copies_the_weights_and_records_them(data, tmp_path):
    torch.manual_seed(11)
    src = _ckpt(tmp_path / "src.pt", ModelConfig(**MODEL))
    run = TR.setup(_cfg(data, tmp_path / "run", init=str(tmp_path / "src.pt")), resume=False)
    try:
        for k, v in src.state_dict().items():
            assert torch.equal(run.model.state_dict()[k], v), k
        assert run.state["step"] == 0
        assert json.loads((tmp_path / "run" / "config.json").read_text())["init"] == str(tmp_path / "src.pt")
    finally:
        run.log.close()


def test_resume_truncates_the_log_to_the_checkpoint(data, tmp_path):
    out = tmp_path / "run"
    train(_cfg(data, out, max_steps=2, ckpt_every=1), progress=False)
    log = out / "log.jsonl"
    kept = log.read_text()
    with open(log, "a") as f:                      # lines written after last.pt (a crash before the next one)
        f.write(json.dumps({"type": "train", "step": 3, "epoch": 0}) + "\n")
        f.write(json.dumps({"type": "val", "step": 3, "epoch": 0}) + "\n")
    run = TR.setup(_cfg(data, out, max_steps=0), resume=True)
    run.log.close()
    assert log.read_text() == kept
    assert run.state == {"step": 2, "epoch": 0, "batch_in_epoch": 2, "best_val": math.inf}
    saved = json.loads((out / "config.json").read_text())      # the run was trained on other data facts
    saved["data_info"]["fps"] = 25
    (out / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="fps: trained on 25, this LMDB has 30"):
        TR.setup(_cfg(data, out), resume=True)


def test_loaders_take_the_workers_setting(data, tmp_path):
    run = TR.setup(_cfg(data, tmp_path / "run", num_workers=1), resume=False)   # no worker starts here
    try:
        assert run.val_loader.num_workers == 1
        assert TR.train_loader(run.train_ds, run.sampler, run.cfg, 0, 0, run.device).num_workers == 1
    finally:
        run.log.close()


def test_first_step_loss_is_the_model_loss_in_float32(data, tmp_path):
    """The logged loss of step 1 equals the loss computed by hand from the same seeded model and first
    batch (no autocast on the CPU: float16 autocast would change it)."""
    from pachorus.losses import PaChorusLoss
    cfg = _cfg(data, tmp_path / "run", max_steps=1, seed=4)
    train(cfg, progress=False)
    got = read_log(tmp_path / "run" / "log.jsonl")[0]
    torch.manual_seed(4)
    model = build_model(ModelConfig(**MODEL))
    model.train()
    tr, _, info = TR._open_data(TrainConfig(data=str(data), out="o"), False, False)
    c = TrainConfig(data=str(data), out="o", batch_size=4, seed=4)
    b = TR.to_device(next(iter(TR.train_loader(tr, TR.train_sampler(tr, c, Dist()), c, 0, 0,
                                               torch.device("cpu")))), torch.device("cpu"))
    out = model(b["host"], b["partner"], b["bgm"], b["pose0"], 15, target=b["coeffs"])
    parts = PaChorusLoss(LossConfig(), None, info["coeff_groups"])(out, b["coeffs"])
    assert got["loss"] == float(parts["loss"].detach()) and got["mse"] == float(parts["mse"].detach())


class _Clock:
    """Stand-in for the ``time`` module inside pachorus.train: each call moves on by 0.0004 s."""

    def __init__(self):
        self.now = 1000.0

    def time(self):
        t = self.now
        self.now += 0.0004
        return t


def test_times_and_speed_from_the_clock(data, tmp_path, monkeypatch):
    monkeypatch.setattr(TR, "time", _Clock())
    res = train(_cfg(data, tmp_path / "run", max_steps=1), progress=False)
    rec = read_log(tmp_path / "run" / "log.jsonl")[0]
    # calls: t0 = 1000.0, the step's line 1000.0004 (rounded to ms: 0.0), the summary 1000.0008
    assert rec["time"] == 0.0 and type(rec["time"]) is float
    assert res["steps_per_s"] == pytest.approx(1 / 0.0008, rel=1e-6)


def test_time_budget_stops_the_loop(data, tmp_path):
    res = train(_cfg(data, tmp_path / "run", time_budget_s=1e-9), progress=False)
    assert res["stopped"] == "time_budget" and res["step"] == 1 and res["epoch"] == 0


def test_equal_val_loss_is_not_a_new_best_and_curves_each_epoch(data, tmp_path, monkeypatch, bars):
    saved, plots = [], []
    orig_save, orig_plot = TR.Run.save, TR.plot_curves
    monkeypatch.setattr(TR.Run, "save", lambda self, kind, **kw: (saved.append((kind, self.state["step"])),
                                                                   orig_save(self, kind, **kw)))
    monkeypatch.setattr(TR, "plot_curves", lambda log, png: (plots.append((log, png)), orig_plot(log, png)))
    out = tmp_path / "run"
    # lr 0: the weights never move, so epoch 2 validates to the same loss as epoch 1 (one batch per epoch);
    # max_steps 3 is never reached unless an epoch fails to advance
    res = train(_cfg(data, out, epochs=2, batch_size=12, lr=0.0, max_steps=3))     # progress on by default
    assert res["step"] == 2 and res["stopped"] == "epochs"
    assert saved == [("best", 1), ("model", 1), ("last", 1), ("model", 2), ("last", 2), ("model", 2)]
    assert torch.load(out / "best.pt", weights_only=True)["epoch"] == 0
    assert plots == [(out / "log.jsonl", out / "curves.png")] * 3
    assert len(bars) == 2 and [b.kw["desc"] for b in bars] == ["epoch 1/2", "epoch 2/2"]


def test_stop_reason_agrees_across_two_ranks(tmp_path):
    """Rank 0 here, rank 1 a subprocess (gloo over a file store): the flag is the maximum over ranks."""
    import datetime
    import subprocess
    import sys
    import torch.distributed as dist
    store = tmp_path / "store"
    child = subprocess.Popen([sys.executable, "-c", (
        "import torch, torch.distributed as d\n"
        "import datetime\n"
        f"d.init_process_group('gloo', init_method='file://{store}', rank=1, world_size=2, "
        "timeout=datetime.timedelta(seconds=60))\n"
        "for f in (0.0, 0.0, 1.0):\n"
        "    t = torch.tensor(f); d.all_reduce(t, op=d.ReduceOp.MAX)\n"
        "d.destroy_process_group()\n")])
    try:
        # a child that never joins fails the test in a minute, not gloo's default half hour
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=2,
                                timeout=datetime.timedelta(seconds=60))

        class R:
            pass
        r = R()
        r.d, r.device = Dist(rank=0, world=2), torch.device("cpu")
        r.cfg, r.state = TrainConfig(data="d", out="o", max_steps=3), {"step": 1}
        assert TR._stop_reason(r, time.time()) is None                  # neither rank ran out
        r.state = {"step": 3}
        assert TR._stop_reason(r, time.time()) == "max_steps"           # this one did
        r.state = {"step": 1}
        assert TR._stop_reason(r, time.time()) == "another_rank"        # the other one did
        assert child.wait(timeout=60) == 0
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        if child.poll() is None:
            child.kill()
            child.wait()
