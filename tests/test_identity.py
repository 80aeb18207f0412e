"""Identity-aware meshes: each singer's EMOCA shape code is packed per segment, carried by the reader,
and used by `pachorus eval` (vertex metrics on the sample's own head) and `pachorus infer` (renders);
the mean head only where no shape code is known. On the synthetic FLAME, whose 300 shape directions
are random fields, so that identity moves the vertices."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from chorushead.core.flame import FlameModel, make_synthetic_flame
from chorushead.core.manifest import Manifest
from chorushead.core.windows import (JAW, POSE, N_SHAPE, WindowReader, decode_arrays, encode_arrays, open_env,
                                     rebuild_index, window_key)
from chorushead.runner import run_global_stage
from chorushead.stages import pack
from packfixture import make_upstream
from pachorus import metrics as M
from pachorus.cli import app
from pachorus.data import HostWindowDataset
from pachorus.evaluate import MM, sequence_metrics
from pachorus.vertices import head_vertices

TINY = ["--d-model", "16", "--n-layers", "1", "--n-heads", "2", "--latent", "4", "--threads", "1", "--no-progress"]


def cli(*args):
    res = CliRunner().invoke(app, [str(a) for a in args])
    return res


def _ok(res):
    assert res.exit_code == 0, (res.stdout, res.stderr, res.exception)
    return res


@pytest.fixture(scope="module")
def flame_dir(tmp_path_factory) -> Path:
    return make_synthetic_flame(tmp_path_factory.mktemp("flame"))


@pytest.fixture(scope="module")
def flame(flame_dir) -> FlameModel:
    return FlameModel.load(flame_dir)


# ------------------------------------------------------------------------------------------- pack
def _run_pack(out, items):
    latest = {s: Manifest(out, s).latest() for s in (*pack.NEEDS, "pack")}
    return run_global_stage(pack.STAGE, pack.Params(), items, out, latest, 30)


def _add_fit_shapes(out: Path, rng) -> dict[tuple[str, int], np.ndarray]:
    """Give every fit npz of the fixture an EMOCA-like ``shape`` (S, T, 100): a per-singer identity plus
    per-frame noise and a few wild frames (a median ignores them). Returns the expected medians."""
    expected = {}
    for rec in Manifest(out, "fit").latest().values():
        for i, rel in enumerate(rec.outputs["segments"]):
            z = dict(np.load(out / rel))
            s, t = z["coeffs"].shape[:2]
            shape = rng.normal(0, 1, (s, 1, N_SHAPE)) + rng.normal(0, 0.05, (s, t, N_SHAPE))
            shape[:, :3] += 50.0                                   # three badly fitted frames
            np.savez(out / rel, shape=shape.astype(np.float32), **z)
            expected[(rec.item, i)] = np.median(shape.astype(np.float32), axis=1)
    return expected


def test_pack_stores_each_singers_median_shape_code_per_segment(tmp_path):
    out = tmp_path / "out"
    items = make_upstream(out, n_videos=3, segments=((0, 200), (200, 360)))
    expected = _add_fit_shapes(out, np.random.default_rng(0))
    _run_pack(out, items)
    r = WindowReader(out / "windows.lmdb", None)
    assert len(r) and r.meta["has_shape"] is True and r.meta["shape_windows"] == r.meta["windows"] == len(r)
    for w in r:
        vid = w.key.split("/")[1]
        assert w.shape.shape == (2, N_SHAPE) and w.shape.dtype == np.float32
        np.testing.assert_array_equal(w.shape, expected[(vid, w.segment)])
        assert np.abs(w.shape).max() < 10                           # the wild frames did not move it
    # two singers, two segments: different identities, carried to each host sample
    seg0 = next(w for w in r if w.segment == 0)
    assert not np.allclose(seg0.shape[0], seg0.shape[1])
    j = int(r.singers[:r.keys.index(seg0.key)].sum()) + 1           # that window, host = singer 1
    hs = r.host_sample(j)
    assert hs["has_shape"] and np.array_equal(hs["shape"], seg0.shape[1])
    shapes, known = r.host_shapes()
    assert known.all() and np.array_equal(shapes[j], seg0.shape[1])
    ds = HostWindowDataset(out / "windows.lmdb", seg0.split)
    k = ds.reader.keys.index(seg0.key)
    s = ds[int(ds.reader.singers[:k].sum()) + 1]
    assert bool(s["has_shape"]) and torch.equal(s["shape"], torch.from_numpy(seg0.shape[1]))


def test_fit_without_shape_packs_none(tmp_path):
    """The landmarks backend writes no ``shape``: its windows carry none and the meta says so."""
    out = tmp_path / "out"
    items = make_upstream(out, n_videos=3, fit_backend="landmarks")
    _run_pack(out, items)
    r = WindowReader(out / "windows.lmdb", None)
    assert len(r) and r.meta["has_shape"] is False and r.meta["shape_windows"] == 0
    assert all(w.shape is None for w in r)
    hs = r.host_sample(0)
    assert hs["has_shape"] is False and np.array_equal(hs["shape"], np.zeros(N_SHAPE, np.float32))
    s = HostWindowDataset(out / "windows.lmdb", r[0].split)[0]
    assert not bool(s["has_shape"]) and not s["shape"].any()


# ------------------------------------------------------------------------------- vertex metrics
def test_synthetic_flame_has_an_identity_basis(flame):
    assert flame.n_shape == 300
    code = np.random.default_rng(1).normal(0, 1, N_SHAPE).astype(np.float32)
    rest = head_vertices(flame, np.zeros((1, 56), np.float32), code)[0]
    by_hand = flame.v_template.numpy() + np.einsum("vcs,s->vc", flame.shapedirs[..., :N_SHAPE].numpy(), code)
    np.testing.assert_allclose(rest, by_hand, atol=1e-6)
    assert np.abs(rest - flame.v_template.numpy()).max() * MM > 5      # millimetres: identity matters


def test_vertex_metrics_on_the_singers_own_head(flame):
    rng = np.random.default_rng(0)
    t = 12
    gt = np.zeros((t, 56), np.float32)
    gt[:, :50] = rng.normal(0, 1, (t, 50))
    gt[:, 50] = np.abs(rng.normal(0, 0.2, t))                       # the jaw opens
    pred = gt + rng.normal(0, 0.3, gt.shape).astype(np.float32)
    pred[:, JAW] += 0.1
    code = rng.normal(0, 2, N_SHAPE).astype(np.float32)
    own = sequence_metrics(pred, gt, flame, shape=code)
    mean = sequence_metrics(pred, gt, flame)
    for k in ("LVE_sq", "LVE_l2", "FVE_max", "FVE_mean"):
        assert own[k] != pytest.approx(mean[k], rel=1e-3), k      # the head changes the numbers
    # (FDD measures upper-face motion from the head's own neutral face; the synthetic jaw does not
    # skin the upper face, so there identity barely moves it: checked by hand below instead)
    # by hand: FLAME with this identity (the first 100 of 300 shape directions), head rotation zeroed
    betas = torch.zeros(flame.n_shape)
    betas[:N_SHAPE] = torch.from_numpy(code)
    with torch.no_grad():
        vp = flame.vertices(torch.from_numpy(pred), shape=betas, zero_pose=True).numpy() * MM
        vg = flame.vertices(torch.from_numpy(gt), shape=betas, zero_pose=True).numpy() * MM
    lips, face, upper = flame.masks["lips"], flame.masks["face"], flame.upper_face()
    d = np.linalg.norm(vp - vg, axis=-1)                            # (T, V) per-vertex distance
    assert own["LVE_l2"] == pytest.approx(d[:, lips].max(1).mean(), rel=1e-5)
    assert own["LVE_sq"] == pytest.approx((d[:, lips] ** 2).max(1).mean(), rel=1e-4)
    assert own["FVE_max"] == pytest.approx(d[:, face].max(1).mean(), rel=1e-5)
    assert own["FVE_mean"] == pytest.approx(d[:, face].mean(), rel=1e-5)
    rest = (flame.v_template.numpy() + np.einsum("vcs,s->vc", flame.shapedirs[..., :N_SHAPE].numpy(), code)) * MM
    dyn = lambda v: (((v[:, upper] - rest[upper]) ** 2).sum(-1)).std(0).mean()  # noqa: E731
    assert own["FDD"] == pytest.approx(dyn(vg) - dyn(vp), rel=1e-3, abs=1e-6)
    # no shape code = the mean head, as before
    assert mean["LVE_l2"] == pytest.approx(M.lve_l2(flame.vertices_np(pred, zero_pose=True) * MM,
                                                   flame.vertices_np(gt, zero_pose=True) * MM, lips), rel=1e-6)


# ------------------------------------------------------------------------------ eval end to end
def _with_shapes(src: Path, dst: Path, every: int = 1) -> None:
    """Copy a packed LMDB, giving every ``every``-th window per-singer shape codes (as pack would)."""
    shutil.copytree(src, dst)
    env = open_env(dst, write=True)
    rng = np.random.default_rng(5)
    with env.begin(write=True) as txn:
        items = [(bytes(k), bytes(v)) for k, v in txn.cursor() if bytes(k).startswith(b"w/")]
        for n, (k, v) in enumerate(items):
            if n % every:
                continue
            arrays, head = decode_arrays(v)
            arrays["shape"] = rng.normal(0, 2, (arrays["coeffs"].shape[0], N_SHAPE)).astype(np.float32)
            txn.put(k, encode_arrays(arrays, head))
        rebuild_index(txn)
    env.close()


@pytest.fixture(scope="module")
def lmdbs(tmp_path_factory):
    d = tmp_path_factory.mktemp("lmdbs")
    _ok(cli("synth", "--out", d / "plain.lmdb", "--videos", "4", "--seconds", "2", "--window", "25",
            "--stride", "25", "--fps", "25", "--seed", "3"))
    _with_shapes(d / "plain.lmdb", d / "shaped.lmdb")
    _with_shapes(d / "plain.lmdb", d / "half.lmdb", every=2)
    res = _ok(cli("train", "--data", d / "plain.lmdb", "--out", d / "run", "--epochs", "1", "--batch-size", "4",
                  *TINY))
    assert json.loads(res.stdout.strip().splitlines()[-1])["step"] >= 1
    return d


def test_eval_with_and_without_shape_codes(lmdbs, flame_dir, tmp_path):
    ckpt = lmdbs / "run" / "model.pt"
    out = {}
    for name in ("plain", "shaped", "half"):
        res = _ok(cli("eval", "--ckpt", ckpt, "--data", lmdbs / f"{name}.lmdb", "--flame", flame_dir,
                      "--out", tmp_path / f"{name}.json", "--device", "cpu"))
        out[name] = (res.stdout, json.loads((tmp_path / f"{name}.json").read_text()))
    n = out["plain"][1]["n_samples"]
    assert n > 0 and all(js["n_samples"] == n for _, js in out.values())
    assert out["plain"][1]["identity"] == {"personalised": 0, "samples": n,
                                           "heads": f"mean head (no shape codes in the data): {n} of {n} samples"}
    assert "vertex metrics on mean head" in out["plain"][0]
    assert out["shaped"][1]["identity"]["personalised"] == n
    assert f"vertex metrics on personalised heads from shape codes: {n} of {n} samples" in out["shaped"][0]
    half = out["half"][1]["identity"]
    assert 0 < half["personalised"] < n and f"mean head for the other {n - half['personalised']}" in half["heads"]
    # same motion, other heads: the coefficient metrics agree, the vertex metrics do not
    plain, shaped = out["plain"][1]["model"], out["shaped"][1]["model"]
    assert plain["PPE"] == pytest.approx(shaped["PPE"]) and plain["jaw_mse"] == pytest.approx(shaped["jaw_mse"])
    assert plain["LVE_l2"] != pytest.approx(shaped["LVE_l2"], rel=1e-4)
    assert out["plain"][1]["mean_motion_baseline"]["FVE_mean"] != pytest.approx(
        out["shaped"][1]["mean_motion_baseline"]["FVE_mean"], rel=1e-4)


# ------------------------------------------------------------------------------ older files read
def _old_lmdb(path: Path, version: int) -> None:
    """A file as pack wrote it before shape codes: no ``shape`` arrays, no shape counts in the meta
    (version 1 also had bare index keys and one S in the meta)."""
    env = open_env(path, write=True, map_size=1 << 24)
    rng = np.random.default_rng(0)
    keys = []
    with env.begin(write=True) as txn:
        for start in (0, 10):
            c = rng.normal(0, 1, (2, 20, 56)).astype(np.float32)
            arrays = {"coeffs": c, "vocals": np.zeros((2, 16000 * 20 // 25), np.float16),
                      "bgm": np.zeros(16000 * 20 // 25, np.float16), "pose0": c[:, 0, POSE].copy()}
            k = window_key("old", 0, start)
            txn.put(k, encode_arrays(arrays, {"video": "old", "segment": 0, "start": start, "split": "test"}))
            keys.append(k.decode())
        meta = {"format": "chorushead-windows", "version": version, "fps": 25, "sr": 16000, "window": 20,
                "stride": 10, "coeff_layout": {"exp": [0, 50], "jaw": [50, 53], "pose": [53, 56]}}
        if version == 1:
            meta["n_singers"] = 2
            index = {"train": [], "val": [], "test": keys}
        else:
            meta["singer_counts"] = [2]
            index = {"train": [], "val": [], "test": [[k, 2] for k in keys]}
        txn.put(b"__meta__", json.dumps(meta).encode())
        txn.put(b"__index__", json.dumps(index).encode())
    env.close()


@pytest.mark.parametrize("version", [1, 2])
def test_windows_written_before_shape_codes_still_read(tmp_path, flame, version):
    path = tmp_path / f"v{version}.lmdb"
    _old_lmdb(path, version)
    r = WindowReader(path, "test")
    assert len(r) == 2 and "has_shape" not in r.meta
    assert r[0].shape is None and r[0].coeffs.shape == (2, 20, 56)
    shapes, known = r.host_shapes()
    assert shapes.shape == (4, N_SHAPE) and not known.any()
    ds = HostWindowDataset(path, "test")
    s = ds[3]
    assert not bool(s["has_shape"]) and s["shape"].shape == (N_SHAPE,) and s["coeffs"].shape == (20, 56)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["shape"].shape == (4, N_SHAPE) and not batch["has_shape"].any()


# ---------------------------------------------------------------------------------------- infer
def test_infer_renders_each_singer_on_their_own_head(lmdbs, flame_dir, tmp_path, monkeypatch):
    from scipy.io import wavfile

    import pachorus.video as video
    drawn = []

    def spy(verts, faces, cam):                     # what would be drawn, frame by frame
        drawn.append(verts.copy())
        return np.zeros((cam.size, cam.size, 3), np.uint8)

    monkeypatch.setattr(video, "draw_mesh", spy)
    rng = np.random.default_rng(0)
    wavs = []
    for name in ("a", "b", "bgm"):                  # 0.4 s: 10 frames at 25 fps
        wavs.append(tmp_path / f"{name}.wav")
        wavfile.write(wavs[-1], 16000, (0.1 * rng.normal(size=6400)).astype(np.float32))
    codes = [rng.normal(0, 2, N_SHAPE).astype(np.float32) for _ in range(2)]
    for i, c in enumerate(codes):
        np.save(tmp_path / f"id{i}.npy", c)
    ckpt = lmdbs / "run" / "model.pt"
    base = ["infer", "--ckpt", ckpt, "--vocals", wavs[0], wavs[1], "--bgm", wavs[2], "-k", "1", "--flame", flame_dir,
            "--size", "32", "--device", "cpu"]
    res = {}
    for name, extra in {"mean": [], "files": ["--shape", tmp_path / "id0.npy", tmp_path / "id1.npy"],
                        "lmdb": ["--shapes-from", lmdbs / "shaped.lmdb"]}.items():
        drawn.clear()
        r = _ok(cli(*base, "--out", tmp_path / name, *extra))
        res[name] = (json.loads(r.stdout[:r.stdout.rindex("}") + 1]), [v.copy() for v in drawn])
    assert res["mean"][0]["heads"] == "mean head"
    assert res["files"][0]["heads"].startswith("personalised heads from shape codes")
    coeffs = np.load(tmp_path / "files" / "singer2_sample0.npy")
    # frame 0 of singer 2 (draw order: frame by frame, singers left to right) is drawn on id1's head
    np.testing.assert_allclose(res["files"][1][1], head_vertices(FlameModel.load(flame_dir), coeffs[:1], codes[1])[0],
                               atol=1e-5)
    assert np.abs(res["files"][1][1] - res["mean"][1][1]).max() > 1e-3
    first = next(w for w in WindowReader(lmdbs / "shaped.lmdb", None) if w.shape is not None)
    coeffs = np.load(tmp_path / "lmdb" / "singer1_sample0.npy")
    np.testing.assert_allclose(res["lmdb"][1][0], head_vertices(FlameModel.load(flame_dir), coeffs[:1],
                                                                first.shape[0])[0], atol=1e-5)
    # wrong counts are one-line errors, before anything is written
    r = cli(*base, "--out", tmp_path / "bad", "--shape", tmp_path / "id0.npy")
    assert r.exit_code == 2 and "1 --shape file(s) for 2 singers" in r.stderr and not (tmp_path / "bad").exists()
    r = cli(*base, "--out", tmp_path / "bad", "--shapes-from", lmdbs / "plain.lmdb")
    assert r.exit_code == 2 and "no window" in r.stderr and not (tmp_path / "bad").exists()


# ------------------------------------------------------------------- a build through EMOCA's stand-in
@pytest.mark.slow
def test_build_through_the_emoca_stand_in_packs_shape_codes(tmp_path, monkeypatch):
    from chorushead.sample import write_sample
    from chorushead.runner import Pipeline, build
    from conftest import ROOT
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name in [m for m in sys.modules if m.split(".")[0] in ("gdl", "gdl_apps")]:
        monkeypatch.delitem(sys.modules, name)
    raw = tmp_path / "raw"
    write_sample(raw, seconds=7.0, size=(256, 512), name="clip", absent_s=None, seed=30)
    models = tmp_path / "emoca-models" / "EMOCA_v2_lr_mse_20"
    models.mkdir(parents=True)
    (models / "cfg.yaml").write_text("model: {}\n")
    sets = [f"fit.models_dir={tmp_path / 'emoca-models'}", f"fit.emoca_path={ROOT / 'tests' / 'stand_ins'}"]
    out = tmp_path / "out"
    build(raw / "videos", out, Pipeline.load(overrides=sets), stems=raw / "stems", progress=False)
    r = WindowReader(out / "windows.lmdb", None)
    assert len(r) and r.meta["fit_backend"] == "emoca" and r.meta["has_shape"] is True
    (fit_rec,) = Manifest(out, "fit").latest().values()
    for w in r:
        fitted = np.load(out / fit_rec.outputs["segments"][w.segment])["shape"]      # (S, T, 100) per frame
        np.testing.assert_array_equal(w.shape, np.median(fitted, axis=1).astype(np.float32))
    assert not np.allclose(r[0].shape[0], r[0].shape[1])           # two faces, two identities
    for name in [m for m in sys.modules if m.split(".")[0] in ("gdl", "gdl_apps")]:
        del sys.modules[name]
