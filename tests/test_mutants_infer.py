"""pachorus.infer: exact values, windows and messages, written to kill the mutants that survived
``scripts/mutation.sh infer`` (see docs/mutation-survivors.md). ``animate`` runs a stand-in model that
records what it is given; ``infer`` runs a tiny random-weight checkpoint with the audio decoder and the
separation child process replaced, so nothing is decoded, rendered or spawned."""
from __future__ import annotations

import json
import subprocess
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from pachorus import infer as I
from pachorus.checkpoint import save_checkpoint
from pachorus.model.pachorus import ModelConfig, ModelOutput, build_model


class _Model(torch.nn.Module):
    """Stand-in: coefficients = frame index + 100 · window call + the first host sample, pose = pose0 + z."""

    def __init__(self):
        super().__init__()
        self.calls = []
        self.evaluated = False
        self.dev = None

    def eval(self):
        self.evaluated = True
        return super().eval()

    def to(self, device):
        self.dev = device
        return self

    def forward(self, host, partner, bgm, pose0, n, z_mode="posterior", generator=None):
        z = torch.randn(1, generator=generator)
        self.calls.append(dict(host=host.clone(), partner=partner.clone(), bgm=bgm.clone(), pose0=pose0.clone(), n=n,
                               z_mode=z_mode, z=float(z)))
        c = torch.zeros(host.shape[0], n, 56)
        c[..., :53] = torch.arange(n, dtype=torch.float32)[None, :, None] + 100 * len(self.calls)
        c[..., 53:] = pose0[:, None] + z + torch.arange(host.shape[0], dtype=torch.float32)[:, None, None]
        return ModelOutput(coeffs=c)


def test_animate_windows_partners_and_pose_chain():
    m = _Model()
    # fps 2, sr 4: 2 samples per frame; window 2 frames = 4 samples; 11 samples -> 5 frames -> 3 windows
    v1 = np.arange(11, dtype=np.float64)
    v2 = np.arange(11, 24, dtype=np.float64) * 10        # longer: cut to the shortest
    v3 = np.ones(12)
    bgm = -np.arange(11, dtype=np.float64)
    out = I.animate(m, [v1, v2, v3], bgm, fps=2, sr=4, window=2, k=2, seed=5, pose0=np.array([1.0, 2.0, 3.0]))
    assert out.shape == (2, 3, 5, 56) and out.dtype == np.float32
    assert m.evaluated and m.dev == "cpu"
    assert len(m.calls) == 6 and all(c["n"] == 2 and c["z_mode"] == "sample" for c in m.calls)
    first = m.calls[0]
    torch.testing.assert_close(first["host"], torch.tensor([[0.0, 1, 2, 3], [110, 120, 130, 140], [1, 1, 1, 1]]))
    total = first["host"].sum(0)
    torch.testing.assert_close(first["partner"], total[None] - first["host"])
    torch.testing.assert_close(first["bgm"], torch.tensor([[0.0, -1, -2, -3]] * 3))
    torch.testing.assert_close(first["pose0"], torch.tensor([[1.0, 2.0, 3.0]] * 3))
    last = m.calls[2]                                      # window 3: samples 8..11, zero-padded after 10
    torch.testing.assert_close(last["host"][0], torch.tensor([8.0, 9.0, 10.0, 0.0]))
    torch.testing.assert_close(last["bgm"][0], torch.tensor([-8.0, -9.0, -10.0, 0.0]))
    # pose0 of window w = the last predicted pose of window w - 1
    for w in (1, 2):
        prev = m.calls[w - 1]
        exp = torch.tensor([[1.0, 2.0, 3.0]]) if w == 1 else m.calls[w - 1]["pose0"]
        torch.testing.assert_close(m.calls[w]["pose0"], exp + prev["z"] + torch.arange(3.0)[:, None])
    # sample k draws from seed + k, continuing over its windows
    g = torch.Generator().manual_seed(5)
    assert [c["z"] for c in m.calls[:3]] == [float(torch.randn(1, generator=g)) for _ in range(3)]
    g = torch.Generator().manual_seed(6)
    assert m.calls[3]["z"] == float(torch.randn(1, generator=g))
    torch.testing.assert_close(m.calls[3]["pose0"], torch.tensor([[1.0, 2.0, 3.0]] * 3))   # each sample restarts
    # frames laid window after window, cut to 5
    assert out[0, 0, :, 0].tolist() == [100, 101, 200, 201, 300]
    assert out[1, 2, :, 0].tolist() == [400, 401, 500, 501, 600]


def test_animate_defaults():
    m = _Model()
    out = I.animate(m, [np.zeros(8), np.zeros(8)], np.zeros(8), fps=2, sr=4, window=2)
    assert out.shape == (1, 2, 4, 56)
    assert len(m.calls) == 2
    torch.testing.assert_close(m.calls[0]["pose0"], torch.zeros(2, 3))
    assert m.calls[0]["z"] == float(torch.randn(1, generator=torch.Generator().manual_seed(0)))
    assert m.calls[0]["host"].dtype == torch.float32 and m.calls[0]["bgm"].dtype == torch.float32
    # the BGM may be the shortest: it cuts the song; an exact multiple needs no padding
    m = _Model()
    out = I.animate(m, [np.zeros(20), np.zeros(20)], np.zeros(8), fps=2, sr=4, window=2)
    assert out.shape == (1, 2, 4, 56) and len(m.calls) == 2
    # 9 samples at fps 2 / sr 4 -> 4.5 frames -> 4 (int), 2 windows
    m = _Model()
    assert I.animate(m, [np.zeros(9), np.zeros(9)], np.zeros(9), fps=2, sr=4, window=2).shape == (1, 2, 4, 56)
    assert len(m.calls) == 2
    with pytest.raises(ValueError) as e:
        I.animate(m, [np.zeros(8)], np.zeros(8), fps=2, sr=4, window=2)
    assert str(e.value) == "need at least two singers' vocal tracks"


def test_load_audio_missing_and_present(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError) as e:
        I.load_audio(tmp_path / "x.wav", 16000)
    assert str(e.value) == f"audio file not found: {tmp_path / 'x.wav'}"
    (tmp_path / "a.wav").write_bytes(b"")
    seen = []
    monkeypatch.setattr(I.media, "load_audio", lambda p, sr: seen.append((p, sr)) or np.zeros(3, np.float32))
    assert I.load_audio(str(tmp_path / "a.wav"), 8000).shape == (3,)
    assert seen == [(tmp_path / "a.wav", 8000)]


# ---------------------------------------------------------------- load_identity

def test_load_identity_from_shape_files(tmp_path):
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    np.save(a, np.arange(3, dtype=np.float64).reshape(1, 3))
    np.save(b, np.ones(3))
    ids = I.load_identity(2, [a, b])
    assert ids.shape == (2, 100) and ids.dtype == np.float32
    assert ids[0, :4].tolist() == [0, 1, 2, 0] and ids[1, :3].tolist() == [1, 1, 1] and ids[1, 3:].sum() == 0
    np.save(a, np.ones(100))
    assert I.load_identity(1, [a]).shape == (1, 100)
    np.save(a, np.ones(300))
    np.save(b, np.ones(300))
    assert I.load_identity(2, [a, b]).shape == (2, 300)
    np.save(a, np.ones(1))
    assert I.load_identity(1, [a])[0, :2].tolist() == [1, 0]
    assert I.load_identity(2) is None


def test_load_identity_refusals(tmp_path):
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    np.save(a, np.ones(3))
    with pytest.raises(ValueError) as e:
        I.load_identity(2, [a], tmp_path)
    assert str(e.value) == ("give shape codes either as --shape files or from a packed LMDB (--shapes-from), "
                            "not both")
    with pytest.raises(ValueError) as e:
        I.load_identity(2, [a])
    assert str(e.value) == "1 --shape file(s) for 2 singers: give one per --vocals track"
    with pytest.raises(FileNotFoundError) as e:
        I.load_identity(2, [a, b])
    assert str(e.value) == f"shape code file not found: {b}"
    for n in (0, 301):
        np.save(b, np.ones(n))
        with pytest.raises(ValueError) as e:
            I.load_identity(2, [a, b])
        assert str(e.value) == f"{b}: a shape code has 1 to 300 values (EMOCA's: 100), this one has {n}"
    np.save(a, np.ones(300))
    np.save(b, np.ones(200))
    with pytest.raises(ValueError) as e:
        I.load_identity(2, [a, b])
    assert str(e.value) == "the --shape files have different lengths: give every singer's code in one layout"
    with pytest.raises(ValueError) as e:
        I.load_identity(2, None, None, "w/x/0/0")
    assert str(e.value) == "--shape-key names a window of a packed LMDB: give the LMDB with --shapes-from"


class _W:
    def __init__(self, key, shape, n):
        self.key, self.shape, self.n_singers = key, shape, n


class _Reader:
    windows = []
    opened = []

    def __init__(self, path, split):
        _Reader.opened.append((path, split))
        self.keys = [w.key for w in self.windows]

    def __getitem__(self, i):
        return self.windows[i]

    def __iter__(self):
        return iter(self.windows)


def test_load_identity_from_a_packed_lmdb(monkeypatch):
    monkeypatch.setattr(I, "WindowReader", _Reader)
    s2 = np.arange(200, dtype=np.float64).reshape(2, 100)
    _Reader.windows = [_W("w/a/0/0", None, 2), _W("w/a/0/15", s2, 2), _W("w/b/0/0", s2 + 1, 2),
                       _W("w/c/0/0", np.ones((3, 100)), 3)]
    _Reader.opened = []
    ids = I.load_identity(2, None, "db")
    assert _Reader.opened == [("db", None)]
    assert ids.dtype == np.float32 and ids.tolist() == s2.tolist()        # the first window that has codes
    assert I.load_identity(2, None, "db", "w/b/0/0").tolist() == (s2 + 1).tolist()
    with pytest.raises(ValueError) as e:
        I.load_identity(2, None, "db", "w/zz")
    assert str(e.value) == "no window 'w/zz' in db (keys look like w/<video>/<segment>/<start>)"
    with pytest.raises(ValueError) as e:
        I.load_identity(2, None, "db", "w/a/0/0")
    assert str(e.value) == "window w/a/0/0 of db has no shape codes (its fit gave none, e.g. landmarks)"
    with pytest.raises(ValueError) as e:
        I.load_identity(2, None, "db", "w/c/0/0")
    assert str(e.value) == "window w/c/0/0 of db has 3 singers' shape codes for 2 --vocals tracks"
    _Reader.windows = [_W("w/a/0/0", None, 2)]
    with pytest.raises(ValueError) as e:
        I.load_identity(2, None, "db")
    assert str(e.value) == "no window of db has shape codes (its fit gave none, e.g. the landmarks backend)"


# ---------------------------------------------------------------- separate_song

def test_separate_song_runs_chorushead_separate(tmp_path, monkeypatch):
    runs = []

    def run(cmd, **kw):
        runs.append((cmd, kw))
        return types.SimpleNamespace(returncode=0, stderr="")
    monkeypatch.setattr(subprocess, "run", run)
    monkeypatch.setattr(I.Separation, "load", classmethod(lambda cls, out: ("loaded", out)))
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    assert I.separate_song("s.wav", tmp_path / "o", video="v.mp4", pipeline="p.yaml", sets=["a=1", "b=2"]) == \
        ("loaded", tmp_path / "o")
    cmd, kw = runs[0]
    assert cmd[1:] == ["-m", "chorushead.cli", "separate", "--song", "s.wav", "--out", str(tmp_path / "o"), "--quiet",
                       "--video", "v.mp4", "--pipeline", "p.yaml", "--set", "a=1", "--set", "b=2"]
    assert kw["capture_output"] is True and kw["text"] is True and kw["errors"] == "replace"
    root = str(Path(I.__file__).resolve().parents[1])
    assert kw["env"]["PYTHONPATH"] == root + ":/elsewhere"
    monkeypatch.delenv("PYTHONPATH")
    I.separate_song("s.wav", tmp_path / "o")
    cmd, kw = runs[1]
    assert cmd[2:] == ["chorushead.cli", "separate", "--song", "s.wav", "--out", str(tmp_path / "o"), "--quiet"]
    assert kw["env"]["PYTHONPATH"] == root


def test_separate_song_failure_is_the_last_stderr_line(tmp_path, monkeypatch):
    res = types.SimpleNamespace(returncode=2, stderr="first\nwarning\n  model missing: x  \n\n  \n")
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: res)
    with pytest.raises(RuntimeError) as e:
        I.separate_song(tmp_path / "song.wav", tmp_path / "o")
    assert str(e.value) == "separating song.wav: model missing: x"
    res.stderr = " \n"
    with pytest.raises(RuntimeError) as e:
        I.separate_song(tmp_path / "song.wav", tmp_path / "o")
    assert str(e.value) == "separating song.wav: exit code 2"


# ---------------------------------------------------------------- infer

@pytest.fixture
def ckpt(tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig(variant="full", d_model=8, n_layers=1, n_heads=2, latent=2, dropout=0.0)
    m = build_model(cfg)
    for mod in m.modules():        # the output layers start at zero: give them weights so z (the seed) shows
        if isinstance(mod, torch.nn.Linear) and mod.weight.abs().sum() == 0:
            torch.nn.init.normal_(mod.weight, std=0.5)
    p = tmp_path / "model.pt"
    info = {"fps": 2, "sr": 16000, "window": 2, "fit_backend": "synthetic", "coeff_groups": ["jaw", "pose"]}
    save_checkpoint({"model": m.state_dict(), "model_config": cfg.to_dict(), "data_info": info}, p)
    return p


def _wavs(tmp_path, monkeypatch, lengths=(24000, 26000, 25000)):
    arrays = {}
    paths = []
    for i, n in enumerate(lengths):
        p = tmp_path / f"t{i}.wav"
        p.write_bytes(b"")
        arrays[p] = (np.sin(np.arange(n) * (0.01 + 0.01 * i)) * 0.1).astype(np.float32)
        paths.append(p)
    monkeypatch.setattr(I.media, "load_audio", lambda p, sr: arrays[Path(p)])
    return paths


def test_infer_writes_npy_npz_and_run_info(tmp_path, ckpt, monkeypatch):
    v1, v2, bgm = _wavs(tmp_path, monkeypatch)
    out = tmp_path / "out" / "deeper"
    res = I.infer(ckpt, [v1, v2], bgm, out, k=2, head="none", device="cpu", seed=3, pose0=[0.1, 0.2, 0.3])
    # 24000 samples at 16 kHz, 2 fps -> 3 frames; 2 samples x 2 singers
    assert (res["frames"], res["singers"], res["samples"]) == (3, 2, 2)
    assert res["coeffs"] == [str(out / f"singer{s}_sample{k}.npy") for k in range(2) for s in (1, 2)]
    assert res["exports"] == [str(out / f"singer{s}_sample{k}.npz") for k in range(2) for s in (1, 2)]
    assert res["videos"] == [] and res["head"] is None and res["heads"] == "mean head"
    a = np.load(out / "singer1_sample0.npy")
    assert a.shape == (3, 56)
    np.testing.assert_allclose(a[0, 53:], [0.1, 0.2, 0.3], atol=1e-6)      # --pose0
    info = json.loads((out / "infer.json").read_text())
    assert info == {"fps": 2, "sr": 16000, "coeff_groups": ["jaw", "pose"], "fit_backend": "synthetic",
                    "vocals": [str(v1.resolve()), str(v2.resolve())], "bgm": str(bgm.resolve()), "shapes": None}
    assert (out / "infer.json").read_text().startswith('{\n  "fps"')
    assert (out / "singer2_sample1.npz").is_file()
    # the same seed gives the same samples; another seed other samples
    res2 = I.infer(ckpt, [v1, v2], bgm, tmp_path / "o2", k=1, head="none", device="cpu", seed=3, pose0=[0.1, 0.2, 0.3])
    np.testing.assert_array_equal(np.load(res2["coeffs"][0]), a)


def test_infer_with_shape_codes_and_defaults(tmp_path, ckpt, monkeypatch):
    v1, v2, bgm = _wavs(tmp_path, monkeypatch)
    s1, s2 = tmp_path / "s1.npy", tmp_path / "s2.npy"
    np.save(s1, np.ones(100))
    np.save(s2, np.zeros(100))
    res = I.infer(ckpt, [v1, v2], bgm, tmp_path / "o", head="none", device="cpu", shapes=[s1, s2])
    assert res["samples"] == 3                                           # k = 3 by default
    assert res["heads"] == "personalised heads from shape codes (--shape files)"
    info = json.loads((tmp_path / "o" / "infer.json").read_text())
    assert info["shapes"][0] == [1.0] * 100 and info["shapes"][1] == [0.0] * 100
    a = np.load(res["coeffs"][0])
    np.testing.assert_allclose(a[0, 53:], [0, 0, 0], atol=1e-6)          # pose0 defaults to zeros


def test_infer_refuses_a_checkpoint_without_data_info(tmp_path, monkeypatch):
    cfg = ModelConfig(variant="no_prior", d_model=8, n_layers=1, n_heads=2, dropout=0.0)
    p = tmp_path / "old.pt"
    save_checkpoint({"model": build_model(cfg).state_dict(), "model_config": cfg.to_dict()}, p)
    with pytest.raises(ValueError) as e:
        I.infer(p, ["a", "b"], "c", tmp_path / "o", device="cpu")
    assert str(e.value) == f"{p} has no data_info (fps, sample rate, window): it predates this version; retrain"
    assert not (tmp_path / "o").exists()


def test_infer_renders_one_video_per_sample_with_the_mix(tmp_path, ckpt, monkeypatch):
    v1, v2, bgm = _wavs(tmp_path, monkeypatch, lengths=(24000, 24000, 24000))
    calls = []

    def render(coeffs, flame, path, audio=None, fps=None, sr=None, size=None, shapes=None):
        calls.append(dict(coeffs=coeffs, path=path, audio=audio, fps=fps, sr=sr, size=size, shapes=shapes))
        return path
    monkeypatch.setattr(I, "render_video", render)
    res = I.infer(ckpt, [v1, v2], bgm, tmp_path / "o", k=2, head="open", device="cpu", size=64,
                  formats=("npz", "mp4"))
    assert res["videos"] == [str(tmp_path / "o" / "sample0.mp4"), str(tmp_path / "o" / "sample1.mp4")]
    assert res["head"] == "open" and isinstance(res["mesh"], str)
    c = calls[0]
    assert (c["fps"], c["sr"], c["size"], c["shapes"]) == (2, 16000, 64, None)
    assert c["coeffs"].shape == (2, 3, 56)
    tracks = [I.media.load_audio(p, 16000) for p in (v1, v2, bgm)]
    np.testing.assert_allclose(c["audio"], tracks[0] + tracks[1] + tracks[2], rtol=1e-6)
    # no mp4 asked: no video
    calls.clear()
    I.infer(ckpt, [v1, v2], bgm, tmp_path / "o2", k=1, head="open", device="cpu", formats=("npz",))
    assert calls == []


def _arrays(tmp_path, monkeypatch, lengths=(24000, 24000, 24000)):
    """Audio stand-ins that record the rate asked for."""
    arrays, rates, paths = {}, [], []
    for i, n in enumerate(lengths):
        p = tmp_path / f"t{i}.wav"
        p.write_bytes(b"")
        arrays[p] = (np.cos(np.arange(n) * (0.02 + 0.01 * i)) * 0.1).astype(np.float32)
        paths.append(p)
    monkeypatch.setattr(I.media, "load_audio", lambda p, sr: rates.append(sr) or arrays[Path(p)])
    return paths, rates


def test_infer_defaults_match_animate_with_seed_zero(tmp_path, ckpt, monkeypatch):
    (v1, v2, bgm), rates = _arrays(tmp_path, monkeypatch)
    renders = []
    monkeypatch.setattr(I, "render_video", lambda c, flame, path, **kw: renders.append(kw) or path)
    out = tmp_path / "o"
    out.mkdir()                                      # an existing folder is fine
    res = I.infer(ckpt, [v1, v2], bgm, out)         # device auto (the CPU here), head auto, k 3, seed 0
    assert rates == [16000, 16000, 16000]
    assert res["head"] == "open"                      # synthetic data: the open head by default
    assert len(renders) == 3 and renders[0]["size"] == 256
    model, _ = I.load_model(ckpt)
    tracks = [I.media.load_audio(p, 16000) for p in (v1, v2, bgm)]
    ref = I.animate(model, tracks[:2], tracks[2], fps=2, sr=16000, window=2, k=3, seed=0)
    for i, f in enumerate(res["coeffs"]):
        np.testing.assert_array_equal(np.load(f), ref[i // 2, i % 2])
    res = I.infer(ckpt, [v1, v2], bgm, tmp_path / "o3", k=1, seed=3, head="none")
    ref = I.animate(model, tracks[:2], tracks[2], fps=2, sr=16000, window=2, k=1, seed=3)
    np.testing.assert_array_equal(np.load(res["coeffs"][0]), ref[0, 0])


def test_infer_passes_heads_identities_and_exports_through(tmp_path, ckpt, monkeypatch):
    import pachorus.export as E
    import pachorus.vertices as V
    (v1, v2, bgm), _ = _arrays(tmp_path, monkeypatch)
    seen = {}
    head = object()
    monkeypatch.setattr(V, "resolve_head", lambda flame, h, fit, shapes: seen.setdefault("resolve", (flame, h, fit, shapes))
                        and "FLAMEDIR")
    monkeypatch.setattr(V, "load_head", lambda where: seen.setdefault("load", where) and head)
    monkeypatch.setattr(V, "describe_head", lambda where: f"mesh of {where}")
    ids = np.arange(200, dtype=np.float32).reshape(2, 100)
    monkeypatch.setattr(I, "load_identity", lambda *a: seen.setdefault("identity", a) is not None and ids)
    exported = []
    monkeypatch.setattr(E, "export_motion", lambda out, motion, formats, flame: exported.append((motion, formats, flame))
                        or [out / f"{motion.name}.x"])
    renders = []
    monkeypatch.setattr(I, "render_video", lambda c, flame, path, **kw: renders.append((c, flame, kw)) or path)
    res = I.infer(ckpt, [v1, v2], bgm, tmp_path / "o", k=1, flame_dir="fdir", head="flame", device="cpu",
                  shapes_from="db.lmdb", shape_key="w/a/0/0", formats=("npz", "mp4"))
    assert seen["resolve"] == ("fdir", "flame", "synthetic", True)
    assert seen["load"] == "FLAMEDIR"
    assert seen["identity"] == (2, None, "db.lmdb", "w/a/0/0")
    assert res["mesh"] == "mesh of FLAMEDIR" and res["head"] == "FLAMEDIR"
    assert res["heads"] == "personalised heads from shape codes (db.lmdb)"
    assert [m.name for m, _, _ in exported] == ["singer1_sample0", "singer2_sample0"]
    assert all(f is head and fm == ("npz", "mp4") for _, fm, f in exported)
    np.testing.assert_array_equal(exported[1][0].shape, ids[1])
    assert exported[1][0].coeff_groups == ("jaw", "pose") and exported[1][0].fps == 2
    assert len(renders) == 1 and renders[0][1] is head and renders[0][2]["shapes"] is ids
    assert renders[0][0].shape == (2, 3, 56)
    seen.clear()
    I.infer(ckpt, [v1, v2], bgm, tmp_path / "o2", k=1, head="auto", device="cpu", shapes=["a.npy", "b.npy"])
    assert seen["resolve"] == (None, "auto", "synthetic", True)
    assert seen["identity"] == (2, ["a.npy", "b.npy"], None, None)


def test_infer_groups_default_to_all(tmp_path, monkeypatch):
    (v1, v2, bgm), _ = _arrays(tmp_path, monkeypatch)
    cfg = ModelConfig(variant="no_prior", d_model=8, n_layers=1, n_heads=2, dropout=0.0)
    p = tmp_path / "m.pt"
    save_checkpoint({"model": build_model(cfg).state_dict(), "model_config": cfg.to_dict(),
                     "data_info": {"fps": 2, "sr": 16000, "window": 2, "fit_backend": "emoca"}}, p)
    I.infer(p, [v1, v2], bgm, tmp_path / "o", k=1, head="none", device="cpu")
    info = json.loads((tmp_path / "o" / "infer.json").read_text())
    assert info["coeff_groups"] == ["exp", "jaw", "pose"] and info["fit_backend"] == "emoca"
