"""Exports reload to the arrays they came from: npz keys/values, glTF morph-target animation (parsed
back from the binary chunk), per-frame PLY, mp4 with audio; windows stitched back into sequences."""
import json
from pathlib import Path

import numpy as np

from chorushead.core.openhead import open_head
import pytest
import torch
from typer.testing import CliRunner

from chorushead.core import media
from chorushead.core.flame import FlameModel, make_synthetic_flame
from chorushead.core.windows import (JAW, POSE, WindowReader, decode_arrays, encode_arrays, open_env, rebuild_index,
                                     window_key, write_meta)
from pachorus.cli import app
from pachorus.export import Motion, export_motion, read_glb, stitch_split, write_npz
from pachorus.synth import SynthConfig, synthesize_song, write_synth_lmdb

FPS = 25
TINY = ["--d-model", "16", "--n-layers", "1", "--n-heads", "2", "--latent", "4", "--threads", "1", "--no-progress"]


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _ok(res):
    assert res.exit_code == 0, (res.stdout, res.stderr, res.exception)
    return res


def _error(res, *needles):
    assert res.exit_code == 2, (res.stdout, res.stderr, res.exception)
    line = res.stderr.strip()
    assert line.startswith("pachorus: error: ") and "\n" not in line, line
    for n in needles:
        assert n in line, (n, line)


@pytest.fixture(scope="module")
def flame_dir(tmp_path_factory):
    return make_synthetic_flame(tmp_path_factory.mktemp("flame"))


@pytest.fixture(scope="module")
def flame(flame_dir):
    return FlameModel.load(flame_dir)


@pytest.fixture(scope="module")
def lmdb(tmp_path_factory):
    """3 videos of 3 s at 25 fps, 1 s windows every 0.4 s (overlapping), written by `pachorus synth`."""
    p = tmp_path_factory.mktemp("synth") / "s.lmdb"
    _ok(cli("synth", "--out", p, "--videos", "3", "--seconds", "3", "--window", "25", "--stride", "10",
            "--fps", FPS, "--seed", "1"))
    return p


def _coeffs(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.normal(0, 0.5, (n, 56)).astype(np.float32)
    c[:, 50:56] *= 0.2   # jaw and head rotations of a few tenths of a radian
    return c


def _accessor(gltf: dict, bin_: bytes, i: int) -> np.ndarray:
    acc = gltf["accessors"][i]
    view = gltf["bufferViews"][acc["bufferView"]]
    dtype = {5126: "<f4", 5125: "<u4"}[acc["componentType"]]
    width = {"SCALAR": 1, "VEC3": 3}[acc["type"]]
    start = view["byteOffset"] + acc.get("byteOffset", 0)
    a = np.frombuffer(bin_, dtype, acc["count"] * width, start)
    return a.reshape(acc["count"], width) if width > 1 else a


# --------------------------------------------------------------------------------------- formats
def test_npz_has_explicit_keys_and_exact_values(tmp_path):
    c = _coeffs(17)
    shape = np.linspace(-1, 1, 100).astype(np.float32)
    p = write_npz(tmp_path / "a.npz", Motion("a", c, 30, ("jaw", "pose"), shape))
    z = np.load(p, allow_pickle=False)
    assert set(z.files) == {"expression", "jaw_pose", "global_pose", "fps", "coeff_groups", "shape"}
    np.testing.assert_array_equal(z["expression"], c[:, :50])
    np.testing.assert_array_equal(z["jaw_pose"], c[:, JAW])
    np.testing.assert_array_equal(z["global_pose"], c[:, POSE])
    np.testing.assert_array_equal(z["shape"], shape)
    assert int(z["fps"]) == 30 and z["coeff_groups"].tolist() == ["jaw", "pose"]
    z = np.load(write_npz(tmp_path / "b.npz", Motion("b", c, 30, ("exp", "jaw", "pose"))), allow_pickle=False)
    assert "shape" not in z.files and z["coeff_groups"].tolist() == ["exp", "jaw", "pose"]


def test_glb_morph_targets_replay_the_flame_vertices(tmp_path, flame):
    import trimesh
    c, n = _coeffs(12), 12
    files = export_motion(tmp_path, Motion("head", c, FPS, ("exp", "jaw", "pose")), ("gltf",), flame)
    assert files == [tmp_path / "head.glb"]
    data = files[0].read_bytes()
    assert len(data) % 4 == 0
    gltf, bin_ = read_glb(files[0])
    assert gltf["asset"]["version"] == "2.0" and gltf["buffers"][0]["byteLength"] <= len(bin_)
    for key in ("scenes", "nodes", "meshes", "accessors", "bufferViews", "buffers", "animations"):
        assert gltf[key], key
    assert all(v["byteOffset"] % 4 == 0 for v in gltf["bufferViews"])
    prim = gltf["meshes"][0]["primitives"][0]
    assert len(prim["targets"]) == n == len(gltf["meshes"][0]["weights"])
    expected = flame.vertices_np(c)
    base = _accessor(gltf, bin_, prim["attributes"]["POSITION"])
    faces = _accessor(gltf, bin_, prim["indices"]).reshape(-1, 3)
    np.testing.assert_array_equal(faces, np.asarray(flame.faces))
    for t, target in enumerate(prim["targets"]):
        offsets = _accessor(gltf, bin_, target["POSITION"])
        np.testing.assert_allclose(base + offsets, expected[t], atol=1e-6)
        acc = gltf["accessors"][target["POSITION"]]   # the spec requires exact bounds on POSITION
        assert acc["min"] == offsets.min(0).tolist() and acc["max"] == offsets.max(0).tolist()
    acc = gltf["accessors"][prim["attributes"]["POSITION"]]
    assert acc["min"] == base.min(0).tolist() and acc["max"] == base.max(0).tolist()
    anim = gltf["animations"][0]
    assert anim["channels"] == [{"sampler": 0, "target": {"node": 0, "path": "weights"}}]
    sampler = anim["samplers"][0]
    assert sampler["interpolation"] == "STEP"
    times = _accessor(gltf, bin_, sampler["input"])   # frame t at t / fps, and the clip lasts n / fps
    np.testing.assert_array_equal(times, np.arange(n + 1, dtype=np.float32) / np.float32(FPS))
    assert gltf["accessors"][sampler["input"]]["max"] == [float(times[-1])]
    weights = _accessor(gltf, bin_, sampler["output"]).reshape(n + 1, n)   # key t shows target t alone
    np.testing.assert_array_equal(weights, np.concatenate([np.eye(n), np.eye(n)[-1:]]))
    # an independent reader sees the base mesh (frame 0)
    mesh = next(iter(trimesh.load(files[0], process=False).geometry.values()))
    np.testing.assert_allclose(mesh.vertices, expected[0], atol=1e-6)
    np.testing.assert_array_equal(mesh.faces, np.asarray(flame.faces))


def test_ply_frames_and_identity_shape(tmp_path, flame):
    import trimesh
    c = _coeffs(5, seed=3)
    shape = np.random.default_rng(4).normal(0, 1, 100).astype(np.float32)
    m = Motion("s1", c, FPS, ("exp", "jaw", "pose"), shape)
    files = export_motion(tmp_path, m, ("npz", "ply"), flame)
    assert files == [tmp_path / "s1.npz", tmp_path / "s1_ply"]
    betas = torch.zeros(flame.n_shape)
    betas[:100] = torch.from_numpy(shape)
    expected = flame.vertices(torch.from_numpy(c), shape=betas).numpy()
    assert not np.allclose(expected, flame.vertices_np(c), atol=1e-5)   # the identity changes the head
    plys = sorted((tmp_path / "s1_ply").glob("*.ply"))
    assert [p.name for p in plys] == [f"frame_{t:06d}.ply" for t in range(5)]
    for t, p in enumerate(plys):
        mesh = trimesh.load(p, process=False)
        np.testing.assert_allclose(mesh.vertices, expected[t], atol=1e-6)
        np.testing.assert_array_equal(mesh.faces, np.asarray(flame.faces))


# -------------------------------------------------------------------------------------- stitching
def test_stitched_windows_are_the_continuous_sequence(tmp_path, lmdb):
    reader = WindowReader(lmdb, "test")
    seqs, meta = stitch_split(lmdb, "test")
    videos = sorted({reader[i].video for i in range(len(reader))})
    assert [q.video for q in seqs] == videos and all(q.start == 0 for q in seqs)
    spf = meta["sr"] // FPS
    for q in seqs:
        wins = sorted((w for w in reader if w.video == q.video), key=lambda w: w.start)
        assert q.coeffs.shape == (2, wins[-1].start + 25, 56) and q.vocals.shape == (2, q.coeffs.shape[1] * spf)
        for i, w in enumerate(wins):   # each frame comes from the last window starting at or before it
            end = wins[i + 1].start if i + 1 < len(wins) else w.start + 25
            np.testing.assert_array_equal(q.coeffs[:, w.start:end], w.coeffs[:, :end - w.start])
            np.testing.assert_array_equal(q.vocals[:, w.start * spf:end * spf], w.vocals[:, :(end - w.start) * spf])
            np.testing.assert_array_equal(q.bgm[w.start * spf:end * spf], w.bgm[:(end - w.start) * spf])
    # without synth's per-window pose offset, the windows overlap exactly and stitch into the song itself
    cfg = SynthConfig(videos=3, seconds=3, window=25, stride=10, fps=FPS, seed=1, window_offset=0.0)
    write_synth_lmdb(tmp_path / "flat.lmdb", cfg)
    for q in stitch_split(tmp_path / "flat.lmdb", "test")[0]:
        v = int(q.video[5:])
        song = synthesize_song(cfg, np.random.default_rng([cfg.seed, v]), cfg.singers_of(v))
        np.testing.assert_array_equal(q.coeffs, song.coeffs[:, :q.coeffs.shape[1]])
        np.testing.assert_array_equal(q.vocals, song.vocals.astype(np.float16).astype(np.float32))
        np.testing.assert_array_equal(q.bgm, song.bgm.astype(np.float16).astype(np.float32))


def test_gaps_split_sequences_and_shape_codes_pass_through(tmp_path):
    """Hand-written windows with identity codes; a gap between windows starts a new sequence."""
    path, sr, spw = tmp_path / "g.lmdb", 16000, 25 * 16000 // FPS
    rng = np.random.default_rng(0)
    shape = rng.normal(0, 1, (2, 100)).astype(np.float32)
    env = open_env(path, write=True, map_size=1 << 24)
    with env.begin(write=True) as txn:
        write_meta(txn, fps=FPS, sr=sr, window=25, stride=10, extra={"coeff_groups": ["jaw", "pose"]})
        for start in (0, 10, 60):
            c = rng.normal(0, 1, (2, 25, 56)).astype(np.float32)
            arrays = {"coeffs": c, "vocals": rng.normal(0, 0.1, (2, spw)).astype(np.float16),
                      "bgm": rng.normal(0, 0.1, spw).astype(np.float16), "pose0": c[:, 0, 53:].copy(),
                      "shape": shape}
            txn.put(window_key("vid", 3, start), encode_arrays(arrays, {"video": "vid", "segment": 3, "start": start,
                                                                        "split": "test"}))
        rebuild_index(txn)
    env.close()
    seqs, _ = stitch_split(path, "test", video="vid")
    assert [(q.start, q.coeffs.shape[1]) for q in seqs] == [(0, 35), (60, 25)]
    with open_env(path).begin() as txn:
        second = decode_arrays(txn.get(window_key("vid", 3, 10)))[0]
    np.testing.assert_array_equal(seqs[0].coeffs[:, 10:], second["coeffs"])
    out = tmp_path / "ex"
    _ok(cli("export", "--data", path, "--split", "test", "--out", out))
    z = np.load(out / "vid_seg0003_f0000060_singer2.npz", allow_pickle=False)
    np.testing.assert_array_equal(z["shape"], shape[1])
    np.testing.assert_array_equal(z["jaw_pose"], seqs[1].coeffs[1, :, JAW])
    assert z["coeff_groups"].tolist() == ["jaw", "pose"]
    _error(cli("export", "--data", path, "--split", "test", "--video", "other", "--out", out), "'other'", "vid")


# ---------------------------------------------------------------------------------- CLI and mp4
def _frames(path: Path) -> int:
    return sum(len(c) for c in media.iter_frames(path, fps=FPS, scale=(64, 32)))


def test_export_split_cli_npz_and_mp4_with_audio(tmp_path, lmdb, flame_dir):
    out = tmp_path / "ex"
    res = json.loads(_ok(cli("export", "--data", lmdb, "--split", "test", "--out", out, "--flame", flame_dir,
                             "--size", "32")).stdout)
    seqs, _ = stitch_split(lmdb, "test")
    assert len(res["sequences"]) == len(seqs) == 1
    q = seqs[0]
    for s in range(2):
        z = np.load(out / f"{q.name}_singer{s + 1}.npz", allow_pickle=False)
        np.testing.assert_array_equal(np.concatenate([z["expression"], z["jaw_pose"], z["global_pose"]], 1),
                                      q.coeffs[s])
        assert int(z["fps"]) == FPS
    mp4 = out / f"{q.name}.mp4"
    pr = media.probe(mp4)
    assert pr.has_audio and (pr.width, pr.height) == (64, 32)
    assert _frames(mp4) == q.coeffs.shape[1]
    assert abs(pr.duration - q.coeffs.shape[1] / FPS) < 0.1
    assert json.loads((out / "export.json").read_text())["sequences"][0]["frames"] == q.coeffs.shape[1]


def test_infer_formats_and_export_of_a_run(tmp_path, lmdb, flame_dir):
    from scipy.io import wavfile
    run = tmp_path / "run"
    _ok(cli("train", "--data", lmdb, "--out", run, "--epochs", "1", "--batch-size", "4", *TINY))
    rng = np.random.default_rng(0)
    wavs = []
    for name in ("a", "b", "bgm"):    # 1.2 s -> 30 frames at 25 fps
        wavs.append(tmp_path / f"{name}.wav")
        wavfile.write(wavs[-1], 16000, (0.1 * rng.normal(size=19200)).astype(np.float32))
    inf = tmp_path / "inf"
    res = json.loads(_ok(cli("infer", "--ckpt", run / "model.pt", "--vocals", wavs[0], wavs[1], "--bgm", wavs[2],
                             "--out", inf, "-k", "1", "--flame", flame_dir, "--format", "npz",
                             "--format", "gltf")).stdout)
    assert res["videos"] == [] and len(res["exports"]) == 4    # 2 singers x (npz, glb); no mp4 asked for
    pred = np.load(inf / "singer2_sample0.npy")
    z = np.load(inf / "singer2_sample0.npz", allow_pickle=False)
    np.testing.assert_array_equal(z["expression"], pred[:, :50])
    np.testing.assert_array_equal(z["global_pose"], pred[:, 53:])
    gltf, _ = read_glb(inf / "singer2_sample0.glb")
    assert len(gltf["meshes"][0]["primitives"][0]["targets"]) == len(pred) == 30
    # export the run's predictions again later: mp4 with the audio infer.json names
    out = tmp_path / "ex"
    _ok(cli("export", "--run", inf, "--out", out, "--flame", flame_dir, "--format", "npz,mp4", "--size", "32"))
    np.testing.assert_array_equal(np.load(out / "singer1_sample0.npz")["jaw_pose"],
                                  np.load(inf / "singer1_sample0.npy")[:, JAW])
    pr = media.probe(out / "sample0.mp4")
    assert pr.has_audio and _frames(out / "sample0.mp4") == 30
    # identity codes recorded in infer.json reach the npz and the mesh
    from pachorus.vertices import head_vertices
    info = json.loads((inf / "infer.json").read_text())
    assert info["fps"] == FPS and Path(info["bgm"]) == wavs[2].resolve() and info["shapes"] is None
    shapes = np.random.default_rng(5).normal(0, 1, (2, 100)).astype(np.float32)
    codes = [tmp_path / "s1.npy", tmp_path / "s2.npy"]
    for p, c in zip(codes, shapes):
        np.save(p, c)
    inf2 = tmp_path / "inf2"   # the same animation on the singers' own heads (infer --shape)
    _ok(cli("infer", "--ckpt", run / "model.pt", "--vocals", wavs[0], wavs[1], "--bgm", wavs[2], "--out", inf2,
            "-k", "1", "--shape", codes[0], codes[1]))
    np.testing.assert_array_equal(np.load(inf2 / "singer2_sample0.npz")["shape"], shapes[1])
    np.testing.assert_allclose(json.loads((inf2 / "infer.json").read_text())["shapes"], shapes)
    out2 = tmp_path / "ex2"
    _ok(cli("export", "--run", inf2, "--out", out2, "--flame", flame_dir, "--format", "npz,gltf,mp4", "--size", "32"))
    assert media.probe(out2 / "sample0.mp4").has_audio
    np.testing.assert_array_equal(np.load(out2 / "singer2_sample0.npz")["shape"], shapes[1])
    gltf, bin_ = read_glb(out2 / "singer2_sample0.glb")
    base = _accessor(gltf, bin_, gltf["meshes"][0]["primitives"][0]["attributes"]["POSITION"])
    np.testing.assert_allclose(base, head_vertices(FlameModel.load(flame_dir), pred[:1], shapes[1])[0], atol=1e-6)
    # without FLAME the synthetic model's motion goes on the open head (468 vertices, 852 faces)
    out3 = tmp_path / "ex3"
    _ok(cli("export", "--run", inf, "--out", out3, "--format", "gltf,ply"))
    gltf, bin_ = read_glb(out3 / "singer1_sample0.glb")
    base = _accessor(gltf, bin_, gltf["meshes"][0]["primitives"][0]["attributes"]["POSITION"])
    assert base.shape == (468, 3) and len(gltf["meshes"][0]["primitives"][0]["targets"]) == 30
    np.testing.assert_allclose(base, head_vertices(open_head(), np.load(inf / "singer1_sample0.npy")[:1])[0], atol=1e-6)
    import trimesh
    plys = sorted((out3 / "singer1_sample0_ply").glob("*.ply"))
    assert len(plys) == 30
    mesh = trimesh.load(plys[7], process=False)
    np.testing.assert_allclose(mesh.vertices, head_vertices(open_head(), np.load(inf / "singer1_sample0.npy")[7:8])[0],
                               atol=1e-6)
    np.testing.assert_array_equal(mesh.faces, open_head().faces)
    # ... but not with identity codes (they are FLAME's): auto renders nothing, --head open is refused
    _error(cli("export", "--run", inf2, "--out", out3, "--format", "gltf"), "--flame")
    _error(cli("export", "--run", inf2, "--out", out3, "--format", "gltf", "--head", "open"), "identity")
    # errors: one line, exit 2
    _error(cli("export", "--run", inf, "--out", out, "--format", "gltf", "--head", "none"), "--flame")
    _error(cli("export", "--run", inf, "--out", out, "--head", "flame"), "--flame DIR")
    _error(cli("export", "--run", inf, "--out", out, "--format", "obj"), "unknown obj")
    _error(cli("export", "--run", inf, "--data", lmdb, "--out", out), "exactly one")
    _error(cli("infer", "--ckpt", run / "model.pt", "--vocals", wavs[0], wavs[1], "--bgm", wavs[2],
               "--out", tmp_path / "no", "--format", "ply", "--head", "none"), "--flame")
    assert not (tmp_path / "no").exists()
