"""pachorus.export: exact bytes, JSON fields, boundaries and messages, written to kill the mutants that
survived ``scripts/mutation.sh export`` (docs/mutation/export.md). The GLB is checked byte for byte
(header, chunk lengths and types, JSON padding, every accessor and buffer view) on a 2-frame triangle;
the PLY file likewise; windows are stitched by hand at and just past the "no gap" boundary, with audio
lengths that are not a whole number of samples per frame; export_split / export_run run in-process
with the mp4 renderer and the audio decoder replaced by stand-ins that record their calls."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from chorushead.core import media
from chorushead.core.flame import FlameModel, make_synthetic_flame
from chorushead.core.windows import encode_arrays, open_env, rebuild_index, window_key, write_meta
from pachorus import export as E
from pachorus import video as pvideo
from pachorus.vertices import head_vertices

HEAD_MSG = ("needs a head: pass --flame DIR (FLAME 2020, https://flame.is.tue.mpg.de) or --head open "
            "(the open head: jaw, pose and its own expression basis)")


@pytest.fixture(scope="module")
def flame(tmp_path_factory) -> FlameModel:
    return FlameModel.load(make_synthetic_flame(tmp_path_factory.mktemp("flame")))


@pytest.fixture
def renders(monkeypatch):
    """Stand-in for the mp4 renderer (ffmpeg): records its arguments, writes a marker file."""
    calls = []

    def render(coeffs, flame, out_path, audio=None, *, fps, sr, size=256, shapes=None):
        calls.append(dict(coeffs=np.array(coeffs), flame=flame, path=Path(out_path),
                          audio=None if audio is None else np.array(audio), fps=fps, sr=sr, size=size,
                          shapes=None if shapes is None else np.array(shapes)))
        Path(out_path).write_bytes(b"mp4")
        return Path(out_path)

    monkeypatch.setattr(pvideo, "render_video", render)
    return calls


# ------------------------------------------------------------------------------------ constants, formats
def test_constants():
    assert E.FORMATS == ("npz", "gltf", "ply", "mp4") and E.NEEDS_FLAME == ("gltf", "ply", "mp4")
    assert E.ALL_GROUPS == ("exp", "jaw", "pose") and E.RUN_INFO == "infer.json"
    assert (E._FLOAT, E._UINT, E._ARRAY_BUFFER, E._ELEMENT_ARRAY_BUFFER) == (5126, 5125, 34962, 34963)
    assert struct.pack("<III", E._GLB_MAGIC, E._CHUNK_JSON, E._CHUNK_BIN) == b"glTFJSON" + b"BIN\0"


def test_parse_formats_defaults_order_and_spelling():
    assert E.parse_formats(None, False) == ("npz",) and E.parse_formats([], False) == ("npz",)
    assert E.parse_formats(None, True) == ("npz", "mp4") and E.parse_formats([], True) == ("npz", "mp4")
    assert E.parse_formats(["MP4, ply", "gltf,,npz "], True) == ("npz", "gltf", "ply", "mp4")
    assert E.parse_formats([" NPZ "], False) == ("npz",)
    assert E.parse_formats(["ply"], True) == ("ply",)
    assert E.parse_formats(["mp4,npz", "mp4"], True) == ("npz", "mp4")


def test_parse_formats_messages():
    with pytest.raises(ValueError) as e:
        E.parse_formats(["obj,npz", "Xyz"], True)
    assert str(e.value) == "--format: unknown obj, xyz; choose from npz, gltf, ply, mp4"
    with pytest.raises(ValueError) as e:
        E.parse_formats([",", " , "], True)
    assert str(e.value) == "--format: empty list; choose from npz, gltf, ply, mp4"
    with pytest.raises(ValueError) as e:
        E.parse_formats(["ply,npz", "mp4,gltf"], False)
    assert str(e.value) == "--format gltf,mp4,ply " + HEAD_MSG
    with pytest.raises(ValueError) as e:
        E.parse_formats(["mp4"], False)
    assert str(e.value) == "--format mp4 " + HEAD_MSG


def test_groups_in_canonical_order():
    assert E._groups({}) == ("exp", "jaw", "pose")
    assert E._groups({"coeff_groups": []}) == ("exp", "jaw", "pose")
    assert E._groups({"coeff_groups": None}) == ("exp", "jaw", "pose")
    assert E._groups({"coeff_groups": ["pose", "jaw"]}) == ("jaw", "pose")
    assert E._groups({"coeff_groups": ["pose", "other"]}) == ("pose",)


# ------------------------------------------------------------------------------------------------ npz
def test_npz_dtypes_and_values(tmp_path):
    c = np.arange(3 * 56, dtype=np.float64).reshape(3, 56) / 7
    m = E.Motion("a", c, 30, ("exp", "pose"))
    assert m.shape is None
    p = E.write_npz(tmp_path / "a.npz", m)
    assert p == tmp_path / "a.npz"
    z = np.load(p, allow_pickle=False)
    assert sorted(z.files) == ["coeff_groups", "expression", "fps", "global_pose", "jaw_pose"]
    assert z["expression"].dtype == np.float32 and z["jaw_pose"].dtype == np.float32
    assert z["global_pose"].dtype == np.float32 and z["fps"].dtype == np.int64 and z["fps"].shape == ()
    np.testing.assert_array_equal(z["jaw_pose"], c[:, 50:53].astype(np.float32))
    np.testing.assert_array_equal(z["global_pose"], c[:, 53:56].astype(np.float32))
    assert z["coeff_groups"].dtype.kind == "U" and z["coeff_groups"].tolist() == ["exp", "pose"]
    z = np.load(E.write_npz(str(tmp_path / "b.npz"), E.Motion("b", c, 25, (), np.arange(4.0))), allow_pickle=False)
    assert z["shape"].dtype == np.float32 and z["shape"].tolist() == [0, 1, 2, 3]
    assert z["coeff_groups"].dtype.kind == "U" and z["coeff_groups"].tolist() == []   # not float64 when empty
    z = np.load(E.write_npz(tmp_path / "c.npz", E.Motion("c", c, np.int32(30), ("jaw",))), allow_pickle=False)
    assert z["fps"].dtype == np.int64 and int(z["fps"]) == 30


# ------------------------------------------------------------------------------------------------ glb
V2 = np.array([[[0, 0, 0], [1, 0, 0], [0, 2, 0]],
               [[0, 0, 1], [1.5, 0, 0], [0, 2, -3]]], np.float64)   # 2 frames of a 3-vertex triangle
F2 = np.array([[0, 1, 2]], np.int64)


def _f32(*arrays) -> bytes:
    return b"".join(np.asarray(a, "<f4").tobytes() for a in arrays)


def _expected_gltf(name, fps, extras):
    d = (V2[1] - V2[0]).astype(np.float32)
    return {
        "asset": {"version": "2.0", "generator": "pachorus export", "extras": {"fps": fps, **extras}},
        "scene": 0, "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0, "name": name}],
        "meshes": [{"name": name, "weights": [0.0, 0.0],
                    "primitives": [{"attributes": {"POSITION": 0}, "indices": 1, "mode": 4,
                                    "targets": [{"POSITION": 2}, {"POSITION": 3}]}],
                    "extras": {"targetNames": ["frame000000", "frame000001"]}}],
        "animations": [{"name": f"{name} @ {fps} fps",
                        "samplers": [{"input": 4, "output": 5, "interpolation": "STEP"}],
                        "channels": [{"sampler": 0, "target": {"node": 0, "path": "weights"}}]}],
        "buffers": [{"byteLength": 156}],
        "bufferViews": [{"buffer": 0, "byteOffset": 0, "byteLength": 36, "target": 34962},
                        {"buffer": 0, "byteOffset": 36, "byteLength": 12, "target": 34963},
                        {"buffer": 0, "byteOffset": 48, "byteLength": 36, "target": 34962},
                        {"buffer": 0, "byteOffset": 84, "byteLength": 36, "target": 34962},
                        {"buffer": 0, "byteOffset": 120, "byteLength": 12},
                        {"buffer": 0, "byteOffset": 132, "byteLength": 24}],
        "accessors": [
            {"bufferView": 0, "componentType": 5126, "type": "VEC3", "count": 3,
             "min": [0.0, 0.0, 0.0], "max": [1.0, 2.0, 0.0]},
            {"bufferView": 1, "componentType": 5125, "type": "SCALAR", "count": 3},
            {"bufferView": 2, "componentType": 5126, "type": "VEC3", "count": 3,
             "min": [0.0, 0.0, 0.0], "max": [0.0, 0.0, 0.0]},
            {"bufferView": 3, "componentType": 5126, "type": "VEC3", "count": 3,
             "min": [float(x) for x in d.min(0)], "max": [float(x) for x in d.max(0)]},
            {"bufferView": 4, "componentType": 5126, "type": "SCALAR", "count": 3,
             "min": [0.0], "max": [float(np.float32(2) / np.float32(fps))]},
            {"bufferView": 5, "componentType": 5126, "type": "SCALAR", "count": 6}],
    }


@pytest.mark.parametrize("name", ["h", "he", "hea", "head"])   # every JSON padding 0..3
def test_glb_bytes_exactly(tmp_path, name):
    p = E.write_glb(tmp_path / "x.glb", V2, F2, 10, name=name, extras={"k": [1, "a"]})
    assert p == tmp_path / "x.glb"
    data = p.read_bytes()
    magic, version, total = struct.unpack_from("<III", data, 0)
    assert data[:4] == b"glTF" and version == 2 and total == len(data)
    n_js, kind = struct.unpack_from("<II", data, 12)
    assert kind == 0x4E4F534A and n_js % 4 == 0
    js = data[20:20 + n_js]
    gltf = json.loads(js)
    expected = _expected_gltf(name, 10, {"k": [1, "a"]})
    assert gltf == expected
    compact = json.dumps(expected, separators=(",", ":")).encode()
    assert js == compact + b" " * (-len(compact) % 4)
    n_bin, kind = struct.unpack_from("<II", data, 20 + n_js)
    assert kind == 0x004E4942 and n_bin == 156 and len(data) == 28 + n_js + n_bin
    times = np.arange(3, dtype=np.float32) / np.float32(10)
    weights = [1, 0, 0, 1, 0, 1]
    bin_ = data[28 + n_js:]
    assert bin_ == (_f32(V2[0]) + np.array([0, 1, 2], "<u4").tobytes() + _f32(V2[0] - V2[0], V2[1] - V2[0])
                    + _f32(times, weights))
    assert E.read_glb(p) == (gltf, bin_)


def test_glb_offsets_are_float32_differences(tmp_path):
    v = np.random.default_rng(7).normal(0, 1, (3, 50, 3))            # float64, not float32-exact
    gltf, bin_ = E.read_glb(E.write_glb(tmp_path / "r.glb", v, F2, 25))
    v32 = v.astype(np.float32)
    for t in range(3):
        view = gltf["bufferViews"][gltf["accessors"][2 + t]["bufferView"]]
        got = np.frombuffer(bin_, "<f4", 150, view["byteOffset"]).reshape(50, 3)
        np.testing.assert_array_equal(got, v32[t] - v32[0])
    assert not np.array_equal((v[1] - v[0]).astype(np.float32), v32[1] - v32[0])   # the test can tell


def test_glb_defaults_one_frame_and_no_frames(tmp_path):
    p = E.write_glb(str(tmp_path / "one.glb"), V2[:1].astype(np.float32), F2, 4)
    gltf, bin_ = E.read_glb(p)
    assert gltf["asset"]["extras"] == {"fps": 4}
    assert gltf["nodes"] == [{"mesh": 0, "name": "head"}] and gltf["meshes"][0]["name"] == "head"
    assert gltf["animations"][0]["name"] == "head @ 4 fps" and gltf["meshes"][0]["weights"] == [0.0]
    assert [a["count"] for a in gltf["accessors"]] == [3, 3, 3, 2, 2]
    assert gltf["accessors"][3]["max"] == [0.25] and gltf["accessors"][3]["min"] == [0.0]
    assert bin_[-16:] == _f32([0.0, 0.25], [1.0, 1.0])
    with pytest.raises(ValueError) as e:
        E.write_glb(tmp_path / "none.glb", np.zeros((0, 3, 3)), F2, 4)
    assert str(e.value) == "none.glb: no frames to export"
    assert not (tmp_path / "none.glb").exists()


def _glb(js: bytes, bin_: bytes, *, magic=0x46546C67, version=2, kinds=(0x4E4F534A, 0x004E4942), extra=b"",
         total=None) -> bytes:
    body = struct.pack("<II", len(js), kinds[0]) + js + struct.pack("<II", len(bin_), kinds[1]) + bin_ + extra
    return struct.pack("<III", magic, version, 12 + len(body) if total is None else total) + body


def test_read_glb_checks_each_field(tmp_path):
    p = tmp_path / "t.glb"
    p.write_bytes(_glb(b'{"a":1}', b"\1\2\3\4", extra=b"zzzz"))
    assert E.read_glb(p) == ({"a": 1}, b"\1\2\3\4")     # what follows the BIN chunk is not part of it
    p.write_bytes(_glb(b'{"a":1} ', b"\1\2\3\4\5\6\7\x08"))
    assert E.read_glb(str(p)) == ({"a": 1}, b"\1\2\3\4\5\6\7\x08")
    for kw, msg in [(dict(magic=0x46546C66), "magic 0x46546c66, version 2, length 40"),
                    (dict(version=1), "magic 0x46546c67, version 1, length 40"),
                    (dict(total=39), "magic 0x46546c67, version 2, length 39"),
                    (dict(total=41), "magic 0x46546c67, version 2, length 41")]:
        p.write_bytes(_glb(b'{"a":1} ', b"\1\2\3\4", **kw))
        with pytest.raises(ValueError) as e:
            E.read_glb(p)
        assert str(e.value) == f"{p}: not a glTF 2.0 binary ({msg})"
    p.write_bytes(_glb(b'{"a":1} ', b"\1\2\3\4", magic=0x80000000))    # read unsigned
    with pytest.raises(ValueError) as e:
        E.read_glb(p)
    assert str(e.value) == f"{p}: not a glTF 2.0 binary (magic 0x80000000, version 2, length 40)"
    data = bytearray(_glb(b'{"a":1} ', b"\1\2\3\4"))
    data[28:32] = struct.pack("<I", 0x80000000)      # a BIN length past the end: what is there (unsigned)
    p.write_bytes(bytes(data))
    assert E.read_glb(p) == ({"a": 1}, b"\1\2\3\4")
    p.write_bytes(_glb(b'{"a":1} ', b"\1\2\3\4", kinds=(0x004E4942, 0x004E4942)))
    with pytest.raises(ValueError) as e:
        E.read_glb(p)
    assert str(e.value) == f"{p}: first chunk is not JSON"
    p.write_bytes(_glb(b'{"a":1} ', b"\1\2\3\4", kinds=(0x4E4F534A, 0x4E4F534A)))
    with pytest.raises(ValueError) as e:
        E.read_glb(p)
    assert str(e.value) == f"{p}: second chunk is not BIN"


# ------------------------------------------------------------------------------------------------ ply
def test_ply_bytes_exactly(tmp_path):
    verts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0.5, 0.25, -1]], np.float64)
    faces = [[0, 1, 2], [3, 2, 1]]
    p = E.write_ply(tmp_path / "m.ply", verts, faces)
    assert p == tmp_path / "m.ply"
    head = (b"ply\nformat binary_little_endian 1.0\ncomment pachorus export\nelement vertex 4\n"
            b"property float x\nproperty float y\nproperty float z\n"
            b"element face 2\nproperty list uchar int vertex_indices\nend_header\n")
    body = _f32(verts) + b"\3" + struct.pack("<3i", 0, 1, 2) + b"\3" + struct.pack("<3i", 3, 2, 1)
    assert p.read_bytes() == head + body
    assert E.write_ply(str(tmp_path / "n.ply"), verts, faces).read_bytes() == head + body


# --------------------------------------------------------------------------------------- export_motion
def test_export_motion_files_and_flags(tmp_path, flame):
    c = np.random.default_rng(1).normal(0, 0.2, (3, 56))
    shape = np.random.default_rng(2).normal(0, 1, 100).astype(np.float32)
    m = E.Motion("s", c, 12, ("jaw", "pose"), shape)
    out = tmp_path / "a" / "b"
    assert E.export_motion(out, m, ("npz", "gltf")) == [out / "s.npz"]          # no head: no meshes
    assert E.export_motion(str(out), m, ("gltf",), None) == []
    assert not (out / "s.glb").exists() and not (out / "s_ply").exists()
    expected = head_vertices(flame, c.astype(np.float32), shape).astype(np.float32)
    for _ in range(2):                                                          # again: the folders exist
        files = E.export_motion(out, m, ("npz", "gltf", "ply"), flame)
        assert files == [out / "s.npz", out / "s.glb", out / "s_ply"]
    gltf, bin_ = E.read_glb(out / "s.glb")
    assert gltf["asset"]["extras"] == {"fps": 12, "coeff_groups": ["jaw", "pose"]}
    assert gltf["nodes"][0]["name"] == "s" and gltf["animations"][0]["name"] == "s @ 12 fps"
    n = expected.shape[1] * 12
    np.testing.assert_array_equal(np.frombuffer(bin_, "<f4", n // 4, 0).reshape(-1, 3), expected[0])
    assert sorted(x.name for x in (out / "s_ply").iterdir()) == ["frame_000000.ply", "frame_000001.ply",
                                                                 "frame_000002.ply"]
    assert (out / "s_ply" / "frame_000002.ply").read_bytes() == E.write_ply(tmp_path / "r.ply", expected[2],
                                                                           flame.faces).read_bytes()
    only = tmp_path / "only"
    assert E.export_motion(only, m, ("ply",), flame) == [only / "s_ply"]
    assert sorted(x.name for x in only.iterdir()) == ["s_ply"]
    assert E.export_motion(only, m, ("gltf",), flame) == [only / "s.glb"]
    assert E.read_glb(only / "s.glb")[1] == bin_


def test_export_video_passes_everything(tmp_path, renders):
    c = np.zeros((2, 3, 56), np.float32)
    audio, shapes = np.ones(10, np.float32), np.ones((2, 4), np.float32)
    assert E.export_video(tmp_path / "v.mp4", c, "FL", audio, fps=25, sr=8000) == tmp_path / "v.mp4"
    assert E.export_video(tmp_path / "w.mp4", c, "FL", None, fps=30, sr=16000, size=64, shapes=shapes)
    a, b = renders
    assert a["path"] == tmp_path / "v.mp4" and a["flame"] == "FL" and a["fps"] == 25 and a["sr"] == 8000
    assert a["size"] == 256 and a["shapes"] is None and a["audio"].tolist() == audio.tolist()
    assert b["size"] == 64 and b["audio"] is None and b["shapes"].tolist() == shapes.tolist() and b["sr"] == 16000


# ----------------------------------------------------------------------------------------------- stitch
def _win(start, w, n_audio, s=2, seed=0, shape=None):
    rng = np.random.default_rng([seed, start])
    a = {"coeffs": rng.normal(size=(s, w, 56)).astype(np.float32),
         "vocals": rng.normal(size=(s, n_audio)).astype(np.float16),
         "bgm": rng.normal(size=n_audio).astype(np.float16)}
    if shape is not None:
        a["shape"] = shape
    return start, a


def test_stitch_boundaries_and_audio_cuts():
    sr, fps, w = 16000, 30, 6                       # 533.3 samples a frame: the cuts round
    wins = [_win(1, w, 3203), _win(4, w, 3200), _win(10, w, 3210), _win(17, w, 3199)]
    seqs = E._stitch(wins, "v", 7, fps, sr)
    # 1 -> 4 overlaps, 4 -> 10 is exactly adjacent (no gap), 10 -> 17 leaves frame 16 out: a new sequence
    assert [(q.start, q.coeffs.shape[1]) for q in seqs] == [(1, 15), (17, 6)]
    q = seqs[0]
    assert q.video == "v" and q.segment == 7 and q.name == "v_seg0007_f0000001" and q.shape is None
    assert seqs[1].name == "v_seg0007_f0000017"
    np.testing.assert_array_equal(q.coeffs, np.concatenate([wins[0][1]["coeffs"][:, :3], wins[1][1]["coeffs"],
                                                            wins[2][1]["coeffs"]], 1))
    k0 = round(4 * sr / fps) - round(1 * sr / fps)      # 2133 - 533 = 1600
    k1 = round(10 * sr / fps) - round(4 * sr / fps)     # 5333 - 2133 = 3200
    assert (k0, k1) == (1600, 3200)
    np.testing.assert_array_equal(q.bgm, np.concatenate([wins[0][1]["bgm"][:k0], wins[1][1]["bgm"][:k1],
                                                         wins[2][1]["bgm"]]).astype(np.float32))
    np.testing.assert_array_equal(q.vocals, np.concatenate([wins[0][1]["vocals"][:, :k0],
                                                            wins[1][1]["vocals"][:, :k1],
                                                            wins[2][1]["vocals"]], 1).astype(np.float32))
    assert q.coeffs.dtype == q.vocals.dtype == q.bgm.dtype == np.float32
    np.testing.assert_array_equal(seqs[1].bgm, wins[3][1]["bgm"].astype(np.float32))   # the last: all of it
    assert seqs[1].vocals.shape == (2, 3199)
    # one window; a window reaching past the next's end still stops at its start (the gap is measured
    # from the later window's end)
    assert [(q.start, q.coeffs.shape[1]) for q in E._stitch(wins[:1], "v", 0, fps, sr)] == [(1, 6)]
    s = E._stitch([_win(0, 6, 2000), _win(1, 2, 1000), _win(7, 6, 900)], "v", 0, fps, sr)
    assert [(q.start, q.coeffs.shape[1], q.bgm.shape[0]) for q in s] == [(0, 3, 533 + 1000), (7, 6, 900)]
    assert E._stitch([], "v", 0, fps, sr) == []


def test_stitch_shape_comes_from_the_first_window():
    shape = np.arange(6, dtype=np.float64).reshape(2, 3)
    q, = E._stitch([_win(0, 4, 100, shape=shape), _win(2, 4, 100, shape=shape * 0)], "v", 1, 25, 1000)
    assert q.shape.dtype == np.float32 and q.shape.tolist() == shape.tolist()


def _lmdb(path, windows, extra=None, fps=25, sr=1000):
    """windows: (video, segment, start, arrays)."""
    env = open_env(path, write=True, map_size=1 << 24)
    with env.begin(write=True) as txn:
        write_meta(txn, fps=fps, sr=sr, window=4, stride=2, extra=extra)
        for vid, seg, start, a, *split in windows:
            a = {**a, "pose0": a["coeffs"][:, 0, 53:].copy()}
            txn.put(window_key(vid, seg, start), encode_arrays(a, {"video": vid, "segment": seg, "start": start,
                                                                   "split": split[0] if split else "test"}))
        rebuild_index(txn)
    env.close()
    return path


def test_stitch_split_groups_videos_and_segments(tmp_path):
    # keys sort "a-b" before "a" ('-' < '/'), sequences come in (video, segment) order
    wins = [("a-b", 1, 0, _win(0, 4, 160, seed=1)[1]), ("a", 2, 0, _win(0, 4, 160, seed=2)[1]),
            ("a", 2, 2, _win(2, 4, 160, seed=3)[1]), ("a", 10, 5, _win(5, 4, 160, seed=4)[1])]
    p = _lmdb(tmp_path / "s.lmdb", wins)
    seqs, meta = E.stitch_split(p, "test")
    assert meta["fps"] == 25 and meta["sr"] == 1000
    assert [(q.video, q.segment, q.start, q.coeffs.shape[1]) for q in seqs] == [
        ("a", 2, 0, 6), ("a", 10, 5, 4), ("a-b", 1, 0, 4)]
    np.testing.assert_array_equal(seqs[0].coeffs[:, 2:], wins[2][3]["coeffs"])
    np.testing.assert_array_equal(seqs[0].coeffs[:, :2], wins[1][3]["coeffs"][:, :2])
    assert seqs[0].bgm.shape == (80 + 160,) and seqs[0].shape is None
    seqs, _ = E.stitch_split(str(p), "test", video="a-b")
    assert [(q.video, q.segment) for q in seqs] == [("a-b", 1)]
    with pytest.raises(ValueError) as e:
        E.stitch_split(p, "test", video="c")
    assert str(e.value) == f"video 'c' has no windows in split 'test' of {p} (videos there: a, a-b)"
    with pytest.raises(ValueError) as e:
        E.stitch_split(p, "train", video="a")
    assert str(e.value) == f"video 'a' has no windows in split 'train' of {p} (videos there: none)"
    assert E.stitch_split(p, "train")[0] == []


def test_export_split_in_process(tmp_path, flame, renders):
    shape = np.random.default_rng(0).normal(0, 1, (2, 100)).astype(np.float32)
    wins = [("v", 0, 0, _win(0, 4, 160, seed=1, shape=shape)[1]), ("v", 0, 2, _win(2, 4, 160, seed=2, shape=shape)[1]),
            ("v", 0, 9, _win(9, 4, 160, seed=3, shape=shape)[1])]
    other = [("w", 0, 0, _win(0, 4, 160, seed=5, shape=shape)[1], "train")]   # another split: not exported
    p = _lmdb(tmp_path / "s.lmdb", wins + other,
              extra={"coeff_groups": ["pose", "jaw"], "fit_backend": "landmarks"})
    out = tmp_path / "o" / "x"
    out.mkdir(parents=True)                                # an existing folder is written into
    res = E.export_split(p, "test", out, ("npz", "mp4"), flame)
    seqs, _ = E.stitch_split(p, "test")
    listing = [{"name": "v_seg0000_f0000000", "video": "v", "segment": 0, "start": 0, "frames": 6, "singers": 2,
                "shape": True},
               {"name": "v_seg0000_f0000009", "video": "v", "segment": 0, "start": 9, "frames": 4, "singers": 2,
                "shape": True}]
    info = {"source": str(p), "split": "test", "fps": 25, "sr": 1000, "coeff_groups": ["jaw", "pose"],
            "fit_backend": "landmarks", "sequences": listing}
    files = [out / "v_seg0000_f0000000_singer1.npz", out / "v_seg0000_f0000000_singer2.npz",
             out / "v_seg0000_f0000000.mp4", out / "v_seg0000_f0000009_singer1.npz",
             out / "v_seg0000_f0000009_singer2.npz", out / "v_seg0000_f0000009.mp4"]
    assert res == {"files": [str(f) for f in files], **info}
    assert (out / "export.json").read_text() == json.dumps(info, indent=2)
    z = np.load(out / "v_seg0000_f0000009_singer2.npz", allow_pickle=False)
    np.testing.assert_array_equal(z["shape"], shape[1])
    np.testing.assert_array_equal(z["jaw_pose"], seqs[1].coeffs[1, :, 50:53])
    assert int(z["fps"]) == 25 and z["coeff_groups"].tolist() == ["jaw", "pose"]
    assert len(renders) == 2
    r = renders[0]
    assert r["path"] == out / "v_seg0000_f0000000.mp4" and r["flame"] is flame and r["fps"] == 25
    assert r["sr"] == 1000 and r["size"] == 256
    np.testing.assert_array_equal(r["coeffs"], seqs[0].coeffs)
    np.testing.assert_array_equal(r["audio"], seqs[0].vocals.sum(0) + seqs[0].bgm)
    np.testing.assert_array_equal(r["shapes"], shape)
    # no head: no mp4 even when asked; no mp4 asked: none with a head; size and defaults pass through
    res = E.export_split(str(p), "test", str(tmp_path / "n" / "deep"), ("npz", "mp4"))   # parents made
    assert len(renders) == 2 and len(res["files"]) == 4
    E.export_split(p, "test", tmp_path / "m", ("mp4",), flame, video="v", size=48)
    assert [r["size"] for r in renders[2:]] == [48, 48]
    assert sorted(x.name for x in (tmp_path / "m").iterdir()) == [
        "export.json", "v_seg0000_f0000000.mp4", "v_seg0000_f0000009.mp4"]
    E.export_split(p, "test", tmp_path / "g", ("gltf",), flame)
    assert len(renders) == 4 and (tmp_path / "g" / "v_seg0000_f0000009_singer1.glb").is_file()
    p2 = _lmdb(tmp_path / "t.lmdb", wins[:1])
    res = E.export_split(p2, "test", tmp_path / "t", ("npz",))
    assert res["coeff_groups"] == ["exp", "jaw", "pose"] and res["fit_backend"] is None


def test_export_split_without_shape_codes(tmp_path):
    p = _lmdb(tmp_path / "s.lmdb", [("v", 0, 0, _win(0, 4, 160, seed=1)[1])])
    res = E.export_split(p, "test", tmp_path / "o", ("npz",))
    assert res["sequences"][0]["shape"] is False
    assert "shape" not in np.load(tmp_path / "o" / "v_seg0000_f0000000_singer1.npz").files


# --------------------------------------------------------------------------------------------- a run
def _run(folder, n_singers=2, samples=(0,), frames=4, info=None):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for k in samples:
        for s in range(1, n_singers + 1):
            np.save(folder / f"singer{s}_sample{k}.npy", rng.normal(size=(frames, 56)).astype(np.float32))
    if info is not None:
        (folder / "infer.json").write_text(json.dumps(info))
    return folder


@pytest.fixture
def audio(monkeypatch):
    calls = []

    def load(path, sr):
        calls.append((str(path), sr))
        n = {"a.wav": 10, "b.wav": 8, "c.wav": 9, "mix.wav": 5}[Path(path).name]
        return np.full(n, len(calls), np.float32)

    monkeypatch.setattr(media, "load_audio", load)
    return calls


def test_export_run_files_names_and_overrides(tmp_path, flame, renders, audio):
    run = _run(tmp_path / "run", samples=(0, 2), info={"fps": 20, "coeff_groups": ["pose"], "sr": 8000})
    np.save(run / "singer1_sample0_old.npy", np.zeros((4, 56), np.float32))   # not a prediction's name
    np.save(run / "singerX_sample1.npy", np.zeros((4, 56), np.float32))
    out = tmp_path / "o" / "p"
    assert E.export_run(run, out, ("npz",))["samples"] == 2
    res = E.export_run(run, out, ("npz",))                # again, into the folder it made
    names = [f"singer{s}_sample{k}.npz" for k in (0, 2) for s in (1, 2)]
    assert res == {"files": [str(out / n) for n in names], "fps": 20, "coeff_groups": ["pose"], "samples": 2}
    z = np.load(out / "singer2_sample2.npz", allow_pickle=False)
    np.testing.assert_array_equal(z["jaw_pose"], np.load(run / "singer2_sample2.npy")[:, 50:53])
    assert int(z["fps"]) == 20 and z["coeff_groups"].tolist() == ["pose"] and "shape" not in z.files
    assert E.export_run(str(run), str(tmp_path / "q"), ("npz",), fps=50)["fps"] == 50
    assert int(np.load(tmp_path / "q" / "singer1_sample0.npz")["fps"]) == 50
    # mp4 with --audio: the mix file decoded at the run's sr, per sample one video
    res = E.export_run(run, tmp_path / "m", ("mp4",), flame, audio=tmp_path / "mix.wav", size=40)
    assert audio == [(str(tmp_path / "mix.wav"), 8000)]
    assert res["files"] == [str(tmp_path / "m" / "sample0.mp4"), str(tmp_path / "m" / "sample2.mp4")]
    r = renders[1]
    assert r["path"] == tmp_path / "m" / "sample2.mp4" and r["flame"] is flame and r["fps"] == 20
    assert r["sr"] == 8000 and r["size"] == 40 and r["shapes"] is None and r["audio"].tolist() == [1.0] * 5
    np.testing.assert_array_equal(r["coeffs"], np.stack([np.load(run / f"singer{s}_sample2.npy") for s in (1, 2)]))


def test_export_run_audio_from_infer_json(tmp_path, renders, audio):
    for n in ("a.wav", "b.wav", "c.wav"):
        (tmp_path / n).write_bytes(b"")
    info = {"fps": 25.0, "vocals": [str(tmp_path / "a.wav"), str(tmp_path / "b.wav")], "bgm": str(tmp_path / "c.wav")}
    run = _run(tmp_path / "run", info=info)
    res = E.export_run(run, tmp_path / "o", ("npz", "mp4"), "FL")
    assert audio == [(str(tmp_path / n), 16000) for n in ("a.wav", "b.wav", "c.wav")]   # sr default 16000
    assert res["fps"] == 25 and isinstance(res["fps"], int) and res["coeff_groups"] == ["exp", "jaw", "pose"]
    r, = renders
    assert r["audio"].tolist() == [6.0] * 8 and r["sr"] == 16000 and r["fps"] == 25 and isinstance(r["fps"], int)
    assert r["size"] == 256
    assert res["files"][-1] == str(tmp_path / "o" / "sample0.mp4") and len(res["files"]) == 3
    (tmp_path / "c.wav").unlink()
    with pytest.raises(FileNotFoundError) as e:
        E.export_run(run, tmp_path / "o", ("mp4",), "FL")
    assert str(e.value) == f"the audio infer used is gone ({tmp_path / 'c.wav'}): pass the mix with --audio"
    (tmp_path / "a.wav").unlink()
    with pytest.raises(FileNotFoundError) as e:
        E.export_run(run, tmp_path / "o", ("mp4",), "FL")
    assert str(e.value) == f"the audio infer used is gone ({tmp_path / 'a.wav'}): pass the mix with --audio"
    for info in ({"fps": 25}, {"fps": 25, "bgm": "x"}, {"fps": 25, "vocals": ["x"]}):
        run2 = _run(tmp_path / "r2", info=info)
        with pytest.raises(ValueError) as e:
            E.export_run(run2, tmp_path / "n", ("mp4",), "FL")
        assert str(e.value) == f"{run2} does not say which audio it animated: pass the mix with --audio"
    assert not (tmp_path / "n").exists()
    E.export_run(run2, tmp_path / "n", ("npz",), "FL")   # no mp4: no audio needed, no render
    assert len(renders) == 1


def test_export_run_shapes_and_errors(tmp_path, flame, renders, audio):
    shapes = np.random.default_rng(3).normal(0, 1, (2, 100)).tolist()
    run = _run(tmp_path / "run", info={"fps": 10, "shapes": shapes})
    res = E.export_run(run, tmp_path / "o", ("npz", "gltf", "mp4"), flame, audio="mix.wav")
    assert [Path(f).name for f in res["files"]] == ["singer1_sample0.npz", "singer1_sample0.glb",
                                                     "singer2_sample0.npz", "singer2_sample0.glb", "sample0.mp4"]
    z = np.load(tmp_path / "o" / "singer2_sample0.npz")
    np.testing.assert_array_equal(z["shape"], np.asarray(shapes[1], np.float32))
    np.testing.assert_array_equal(renders[0]["shapes"], np.asarray(shapes, np.float32))
    assert renders[0]["shapes"].dtype == np.float32
    # a run with one singer in one sample and two in another: the count is the larger
    run3 = _run(tmp_path / "r3", n_singers=2, samples=(1,), info={"fps": 10, "shapes": shapes})
    np.save(run3 / "singer1_sample0.npy", np.zeros((4, 56), np.float32))
    assert E.export_run(run3, tmp_path / "o3", ("npz",))["samples"] == 2
    run1 = _run(tmp_path / "r1", n_singers=1, info={"fps": 10, "shapes": shapes})
    with pytest.raises(ValueError) as e:
        E.export_run(run1, tmp_path / "o", ("npz",))
    assert str(e.value) == f"{run1 / 'infer.json'}: 2 shape codes for 1 singers"
    nofps = _run(tmp_path / "nofps", info={"sr": 16000})
    with pytest.raises(ValueError) as e:
        E.export_run(nofps, tmp_path / "o", ("npz",))
    assert str(e.value) == f"{nofps} has no infer.json saying the frame rate: pass --fps"
    noinfo = _run(tmp_path / "noinfo")
    with pytest.raises(ValueError) as e:
        E.export_run(noinfo, tmp_path / "o", ("npz",), fps=0)
    assert "has no infer.json" in str(e.value)
    (noinfo / "infer.json").mkdir()                     # not a file: ignored, --fps given
    assert E.export_run(noinfo, tmp_path / "o4", ("npz",), fps=5)["fps"] == 5
    empty = tmp_path / "empty"
    empty.mkdir()
    np.save(empty / "singer1_sampleA.npy", np.zeros(1))
    with pytest.raises(FileNotFoundError) as e:
        E.export_run(empty, tmp_path / "o", ("npz",), fps=5)
    assert str(e.value) == f"no singer<i>_sample<k>.npy predictions in {empty} (write them with pachorus infer)"
