"""Export motion for other tools: FLAME parameters (.npz), mesh sequences (.glb, .ply), an mp4 with audio.

Sources: a run's predictions (``singer<i>_sample<k>.npy`` written by ``pachorus infer``) or the ground
truth of a packed split, whose overlapping windows are stitched back into one continuous sequence per
video segment (each frame once: window i gives the frames up to the next window's start).

- ``npz``: per singer, ``expression`` (T, 50), ``jaw_pose`` (T, 3), ``global_pose`` (T, 3) axis-angle,
  ``fps``, ``coeff_groups`` (the groups the fit really estimated: landmark fits made before the open
  head had no expression, so their ``expression`` is zeros) and ``shape`` (identity code) when the data carries one.
- ``gltf`` (needs a head: FLAME, or the open head of chorushead.core.openhead): one binary glTF 2.0 file per singer. The mesh is frame 0; every frame t is a
  morph target holding its vertex offsets from frame 0, and one animation steps through the weights
  (sampler input t/fps, STEP interpolation, weight 1 on target t, a closing key at T/fps): Blender and
  three.js play it as is.
  trimesh, the obvious library, writes neither morph targets nor animations, so the file is written
  here: a JSON chunk + one little-endian binary chunk, every accessor 4-byte aligned.
- ``ply`` (needs a head): one binary PLY per frame in ``<name>_ply/``.
- ``mp4`` (needs a head): the singers side by side, with the mix (vocals + accompaniment) as audio.
"""
from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chorushead.core.windows import EXP, JAW, POSE, Window, WindowReader, parse_window_key

FORMATS = ("npz", "gltf", "ply", "mp4")
NEEDS_FLAME = ("gltf", "ply", "mp4")
ALL_GROUPS = ("exp", "jaw", "pose")
RUN_INFO = "infer.json"   # what infer writes next to its .npy files: fps, sr, groups, the audio it used

# glTF 2.0 constants (spec §3.6.2: accessor component types, buffer view targets)
_FLOAT, _UINT = 5126, 5125
_ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 34962, 34963
_GLB_MAGIC, _CHUNK_JSON, _CHUNK_BIN = 0x46546C67, 0x4E4F534A, 0x004E4942


def parse_formats(values: list[str] | None, flame: bool) -> tuple[str, ...]:
    """``--format`` values (repeatable, each may be a comma list) -> formats in canonical order.
    Default: npz, plus mp4 when a FLAME folder is given."""
    if not values:
        return ("npz", "mp4") if flame else ("npz",)
    asked = {v.strip().lower() for value in values for v in value.split(",") if v.strip()}
    unknown = sorted(asked - set(FORMATS))
    if unknown:
        raise ValueError(f"--format: unknown {', '.join(unknown)}; choose from {', '.join(FORMATS)}")
    if not asked:
        raise ValueError(f"--format: empty list; choose from {', '.join(FORMATS)}")
    mesh = sorted(asked & set(NEEDS_FLAME))
    if mesh and not flame:
        raise ValueError(f"--format {','.join(mesh)} needs a head: pass --flame DIR (FLAME 2020, "
                         "https://flame.is.tue.mpg.de) or --head open (the open head: jaw, pose and its own "
                         "expression basis)")
    return tuple(f for f in FORMATS if f in asked)


@dataclass
class Motion:
    """One singer's coefficient sequence and what is known about it."""
    name: str                        # file stem
    coeffs: np.ndarray               # (T, 56): exp(50), jaw(3), pose(3)
    fps: int
    coeff_groups: tuple[str, ...]    # groups that were really estimated
    shape: np.ndarray | None = None  # identity shape code, when the data has one


# ------------------------------------------------------------------------------------------- npz
def write_npz(path: str | Path, m: Motion) -> Path:
    path = Path(path)
    c = np.asarray(m.coeffs, np.float32)
    arrays = {"expression": c[:, EXP], "jaw_pose": c[:, JAW], "global_pose": c[:, POSE],
              "fps": np.asarray(m.fps, np.int64), "coeff_groups": np.asarray(list(m.coeff_groups), dtype=str)}
    if m.shape is not None:
        arrays["shape"] = np.asarray(m.shape, np.float32)
    np.savez(path, **arrays)   # plain arrays only: loads with allow_pickle=False
    return path


# ------------------------------------------------------------------------------------------ meshes
def write_glb(path: str | Path, verts: np.ndarray, faces: np.ndarray, fps: int, name: str = "head",
              extras: dict | None = None) -> Path:
    """Vertex sequence (T, V, 3) -> binary glTF: frame 0 as the mesh, one morph target per frame
    (offsets from frame 0), an animation on the node's ``weights`` with STEP keys at t / fps."""
    path = Path(path)
    verts = np.asarray(verts, np.float32)
    n_frames = len(verts)
    if n_frames < 1:
        raise ValueError(f"{path.name}: no frames to export")
    blob = bytearray()
    views: list[dict] = []
    accessors: list[dict] = []

    def add(arr: np.ndarray, kind: str, component: int, target: int | None = None, minmax: bool = False) -> int:
        arr = np.ascontiguousarray(arr, dtype="<f4" if component == _FLOAT else "<u4")
        blob.extend(b"\0" * (-len(blob) % 4))        # accessor offsets: multiples of the component size
        view = {"buffer": 0, "byteOffset": len(blob), "byteLength": arr.nbytes}
        if target is not None:
            view["target"] = target
        blob.extend(arr.tobytes())
        views.append(view)
        acc = {"bufferView": len(views) - 1, "componentType": component, "type": kind,
               "count": len(arr) if kind == "VEC3" else int(arr.size)}
        if minmax:   # required for POSITION (base and targets) and for animation inputs
            flat = arr.reshape(len(arr), -1) if kind == "VEC3" else arr.reshape(-1, 1)
            acc["min"] = [float(x) for x in flat.min(0)]
            acc["max"] = [float(x) for x in flat.max(0)]
        accessors.append(acc)
        return len(accessors) - 1

    base = verts[0]
    position = add(base, "VEC3", _FLOAT, _ARRAY_BUFFER, minmax=True)
    indices = add(np.asarray(faces).reshape(-1), "SCALAR", _UINT, _ELEMENT_ARRAY_BUFFER)
    targets = [{"POSITION": add(v - base, "VEC3", _FLOAT, _ARRAY_BUFFER, minmax=True)} for v in verts]
    # key t shows target t alone; a closing key at T / fps holds the last frame for its 1/fps, so the clip
    # lasts T / fps like the audio (players that loop would otherwise show the last frame for no time)
    times = add(np.arange(n_frames + 1, dtype=np.float32) / np.float32(fps), "SCALAR", _FLOAT, minmax=True)
    keys = np.eye(n_frames, dtype=np.float32)
    weights = add(np.concatenate([keys, keys[-1:]]).reshape(-1), "SCALAR", _FLOAT)
    gltf = {
        "asset": {"version": "2.0", "generator": "pachorus export", "extras": {"fps": fps, **(extras or {})}},
        "scene": 0, "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0, "name": name}],
        "meshes": [{"name": name, "weights": [0.0] * n_frames,
                    "primitives": [{"attributes": {"POSITION": position}, "indices": indices, "mode": 4,
                                    "targets": targets}],
                    "extras": {"targetNames": [f"frame{t:06d}" for t in range(n_frames)]}}],
        "animations": [{"name": f"{name} @ {fps} fps",
                        "samplers": [{"input": times, "output": weights, "interpolation": "STEP"}],
                        "channels": [{"sampler": 0, "target": {"node": 0, "path": "weights"}}]}],
        "buffers": [{"byteLength": len(blob)}],
        "bufferViews": views, "accessors": accessors,
    }
    js = json.dumps(gltf, separators=(",", ":")).encode()
    js += b" " * (-len(js) % 4)            # the JSON chunk is padded with spaces ...
    bin_ = bytes(blob) + b"\0" * (-len(blob) % 4)   # ... the binary chunk with zeros
    total = 12 + 8 + len(js) + 8 + len(bin_)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<III", _GLB_MAGIC, 2, total))
        fh.write(struct.pack("<II", len(js), _CHUNK_JSON) + js)
        fh.write(struct.pack("<II", len(bin_), _CHUNK_BIN) + bin_)
    return path


def read_glb(path: str | Path) -> tuple[dict, bytes]:
    """The JSON and binary chunks of a .glb (checks the header and chunk layout)."""
    data = Path(path).read_bytes()
    magic, version, total = struct.unpack_from("<III", data, 0)
    if magic != _GLB_MAGIC or version != 2 or total != len(data):
        raise ValueError(f"{path}: not a glTF 2.0 binary (magic {magic:#x}, version {version}, length {total})")
    n_js, kind = struct.unpack_from("<II", data, 12)
    if kind != _CHUNK_JSON:
        raise ValueError(f"{path}: first chunk is not JSON")
    gltf = json.loads(data[20:20 + n_js])
    n_bin, kind = struct.unpack_from("<II", data, 20 + n_js)
    if kind != _CHUNK_BIN:
        raise ValueError(f"{path}: second chunk is not BIN")
    return gltf, data[28 + n_js:28 + n_js + n_bin]


def write_ply(path: str | Path, verts: np.ndarray, faces: np.ndarray) -> Path:
    """One mesh as binary little-endian PLY (float xyz, uchar-counted int triangles)."""
    path = Path(path)
    faces = np.asarray(faces)
    head = (f"ply\nformat binary_little_endian 1.0\ncomment pachorus export\nelement vertex {len(verts)}\n"
            "property float x\nproperty float y\nproperty float z\n"
            f"element face {len(faces)}\nproperty list uchar int vertex_indices\nend_header\n")
    tri = np.empty(len(faces), np.dtype([("n", "u1"), ("v", "<i4", (3,))]))
    tri["n"], tri["v"] = 3, faces
    with open(path, "wb") as fh:
        fh.write(head.encode("ascii"))
        fh.write(np.ascontiguousarray(verts, "<f4").tobytes())
        fh.write(tri.tobytes())
    return path


def export_motion(out: str | Path, m: Motion, formats: tuple[str, ...], flame=None) -> list[Path]:
    """Write one singer's npz / glb / ply frames (mp4 is per group of singers: :func:`export_video`)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    if "npz" in formats:
        files.append(write_npz(out / f"{m.name}.npz", m))
    if flame is not None and ("gltf" in formats or "ply" in formats):
        from .vertices import head_vertices   # the one place identity codes meet FLAME
        verts = head_vertices(flame, np.asarray(m.coeffs, np.float32), m.shape).astype(np.float32)
        faces = np.asarray(flame.faces)
        if "gltf" in formats:
            files.append(write_glb(out / f"{m.name}.glb", verts, faces, m.fps, name=m.name,
                                   extras={"coeff_groups": list(m.coeff_groups)}))
        if "ply" in formats:
            folder = out / f"{m.name}_ply"
            folder.mkdir(exist_ok=True)
            for t, v in enumerate(verts):
                write_ply(folder / f"frame_{t:06d}.ply", v, faces)
            files.append(folder)
    return files


def export_video(path: str | Path, coeffs: np.ndarray, flame, audio: np.ndarray | None, *, fps: int, sr: int,
                 size: int = 256, shapes: np.ndarray | None = None) -> Path:
    """Singers (S, T, 56) side by side as H.264 with the mix muxed in (the renderer infer uses), each
    on their own head when ``shapes`` (S, D) are known."""
    from .video import render_video
    return render_video(coeffs, flame, path, audio=audio, fps=fps, sr=sr, size=size, shapes=shapes)


# ------------------------------------------------------------------------------- a packed split
@dataclass
class Sequence:
    """One continuous stretch of a video segment, stitched from its windows."""
    video: str
    segment: int
    start: int                 # first frame, in the video's trimmed timeline
    coeffs: np.ndarray         # (S, T, 56) float32
    vocals: np.ndarray         # (S, N) float32
    bgm: np.ndarray            # (N,) float32
    shape: np.ndarray | None   # (S, D) when the windows carry identity codes

    @property
    def name(self) -> str:
        return f"{self.video}_seg{self.segment:04d}_f{self.start:07d}"


def _stitch(windows: list[tuple[int, dict]], video: str, segment: int, fps: int, sr: int) -> list[Sequence]:
    """Windows (start, arrays) of one segment, sorted by start -> continuous sequences. Window i gives
    its frames up to window i+1's start (each frame once); a gap between windows starts a new sequence."""
    out: list[Sequence] = []
    run: list[tuple[int, dict, int]] = []      # (start, arrays, frames taken)

    def close():
        s0 = run[0][0]
        coeffs = np.concatenate([a["coeffs"][:, :n] for _, a, n in run], 1)
        vox, bgm = [], []
        for i, (s, a, n) in enumerate(run):
            # audio of frames [s, s + n): the samples pack cut at round(frame * sr / fps)
            k = a["bgm"].shape[0] if i == len(run) - 1 else round((s + n) * sr / fps) - round(s * sr / fps)
            vox.append(a["vocals"][:, :k].astype(np.float32))
            bgm.append(a["bgm"][:k].astype(np.float32))
        shape = run[0][1].get("shape")
        out.append(Sequence(video=video, segment=segment, start=s0, coeffs=coeffs.astype(np.float32),
                            vocals=np.concatenate(vox, 1), bgm=np.concatenate(bgm),
                            shape=None if shape is None else np.asarray(shape, np.float32)))

    for i, (s, a) in enumerate(windows):
        w = a["coeffs"].shape[1]
        nxt = windows[i + 1][0] if i + 1 < len(windows) else None
        take = w if nxt is None or nxt - s > w else nxt - s
        run.append((s, a, take))
        if nxt is None or nxt - s > w:
            close()
            run = []
    return out


def stitch_split(lmdb: str | Path, split: str, video: str | None = None) -> tuple[list[Sequence], dict]:
    """The ground truth of a packed split as continuous sequences (one per video segment) + the LMDB meta."""
    reader = WindowReader(lmdb, split)
    fps, sr = int(reader.meta["fps"]), int(reader.meta["sr"])
    groups: dict[tuple[str, int], list[tuple[int, int]]] = {}
    for i, key in enumerate(reader.keys):
        vid, seg, start = parse_window_key(key)
        if video is None or vid == video:
            groups.setdefault((vid, seg), []).append((start, i))
    if video is not None and not groups:
        videos = sorted({parse_window_key(k)[0] for k in reader.keys})
        raise ValueError(f"video {video!r} has no windows in split {split!r} of {lmdb} "
                         f"(videos there: {', '.join(videos) or 'none'})")
    seqs: list[Sequence] = []
    for (vid, seg), entries in sorted(groups.items()):   # every read checks the generation: one pack's windows
        entries.sort()
        windows = reader.read([i for _, i in entries])
        seqs += _stitch([(s, _arrays(w)) for (s, _), w in zip(entries, windows)], vid, seg, fps, sr)
    return seqs, reader.meta


def _arrays(w: Window) -> dict[str, np.ndarray]:
    arrays = {"coeffs": w.coeffs, "vocals": w.vocals, "bgm": w.bgm}
    return arrays if w.shape is None else {**arrays, "shape": w.shape}


def _groups(meta: dict) -> tuple[str, ...]:
    groups = meta.get("coeff_groups") or ALL_GROUPS
    return tuple(g for g in ALL_GROUPS if g in groups)


def export_split(lmdb: str | Path, split: str, out: str | Path, formats: tuple[str, ...], flame=None,
                 video: str | None = None, size: int = 256) -> dict:
    """Ground-truth coefficients of a packed split: per sequence and singer npz/glb/ply, per sequence
    an mp4 with the stitched window audio (all singers' vocals + the accompaniment)."""
    seqs, meta = stitch_split(lmdb, split, video)
    fps, sr, groups = int(meta["fps"]), int(meta["sr"]), _groups(meta)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files, listing = [], []
    for q in seqs:
        for s in range(q.coeffs.shape[0]):
            m = Motion(name=f"{q.name}_singer{s + 1}", coeffs=q.coeffs[s], fps=fps, coeff_groups=groups,
                       shape=None if q.shape is None else q.shape[s])
            files += export_motion(out, m, formats, flame)
        if "mp4" in formats and flame is not None:
            files.append(export_video(out / f"{q.name}.mp4", q.coeffs, flame, q.vocals.sum(0) + q.bgm,
                                      fps=fps, sr=sr, size=size, shapes=q.shape))
        listing.append({"name": q.name, "video": q.video, "segment": q.segment, "start": q.start,
                        "frames": int(q.coeffs.shape[1]), "singers": int(q.coeffs.shape[0]),
                        "shape": q.shape is not None})
    info = {"source": str(lmdb), "split": split, "fps": fps, "sr": sr, "coeff_groups": list(groups),
            "fit_backend": meta.get("fit_backend"), "sequences": listing}
    (out / "export.json").write_text(json.dumps(info, indent=2))
    return {"files": [str(f) for f in files], **info}


# ------------------------------------------------------------------------------- a run's output
_PRED = re.compile(r"singer(\d+)_sample(\d+)\.npy")


def export_run(run: str | Path, out: str | Path, formats: tuple[str, ...], flame=None, fps: int | None = None,
               audio: str | Path | None = None, size: int = 256) -> dict:
    """Predictions ``singer<i>_sample<k>.npy`` of an infer output folder. fps, coefficient groups and
    the audio come from its ``infer.json``; ``fps``/``audio`` override (audio: one file with the mix)."""
    run, out = Path(run), Path(out)
    preds: dict[int, dict[int, Path]] = {}
    for p in sorted(run.glob("singer*_sample*.npy")):
        mt = _PRED.fullmatch(p.name)
        if mt:
            preds.setdefault(int(mt.group(2)), {})[int(mt.group(1))] = p
    if not preds:
        raise FileNotFoundError(f"no singer<i>_sample<k>.npy predictions in {run} (write them with pachorus infer)")
    info = json.loads((run / RUN_INFO).read_text()) if (run / RUN_INFO).is_file() else {}
    fps = fps or info.get("fps")
    if not fps:
        raise ValueError(f"{run} has no {RUN_INFO} saying the frame rate: pass --fps")
    groups = _groups(info)
    sr = int(info.get("sr", 16000))
    shapes = info.get("shapes")   # per singer, when infer animated personalised heads
    n_singers = max(len(singers) for singers in preds.values())
    if shapes is not None and len(shapes) != n_singers:
        raise ValueError(f"{run / RUN_INFO}: {len(shapes)} shape codes for {n_singers} singers")
    mix = None
    if "mp4" in formats:
        from chorushead.core import media
        if audio is not None:
            mix = media.load_audio(audio, sr)
        elif info.get("vocals") and info.get("bgm"):
            missing = [p for p in info["vocals"] + [info["bgm"]] if not Path(p).is_file()]
            if missing:
                raise FileNotFoundError(f"the audio infer used is gone ({missing[0]}): pass the mix with --audio")
            tracks = [media.load_audio(p, sr) for p in info["vocals"] + [info["bgm"]]]
            n = min(len(t) for t in tracks)
            mix = np.sum([t[:n] for t in tracks], 0)
        else:
            raise ValueError(f"{run} does not say which audio it animated: pass the mix with --audio")
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for k, singers in sorted(preds.items()):
        coeffs = [np.load(singers[s]) for s in sorted(singers)]
        for s, c in zip(sorted(singers), coeffs):
            shape = None if shapes is None else np.asarray(shapes[s - 1], np.float32)
            files += export_motion(out, Motion(name=f"singer{s}_sample{k}", coeffs=c, fps=int(fps),
                                               coeff_groups=groups, shape=shape), formats, flame)
        if mix is not None:
            files.append(export_video(out / f"sample{k}.mp4", np.stack(coeffs), flame, mix, fps=int(fps), sr=sr,
                                      size=size, shapes=None if shapes is None else np.asarray(shapes, np.float32)))
    return {"files": [str(f) for f in files], "fps": int(fps), "coeff_groups": list(groups),
            "samples": len(preds)}
