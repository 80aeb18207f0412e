"""``pachorus infer``: per-singer coefficients (K samples) from separated vocal tracks + BGM, and a render.

Long songs run as consecutive windows of the training window length; each window's pose0 is the
previous window's last predicted pose (the first one's is ``--pose0``, default zeros), which is what
the frame-0-relative pose design is for. Frame rate, sample rate and window length are the training
data's, read from the checkpoint (``data_info``). Each sample k draws z ~ N(0, I) per window from a
seeded generator, so samples differ only in what the prior writes: head motion and the expression
residual (the jaw comes from the host audio alone).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from chorushead.core import media
from chorushead.core.payloads import Separation
from chorushead.core.windows import POSE, N_SHAPE, WindowReader

from .model.pachorus import load_model
from .video import render_video


def load_audio(path: str | Path, sr: int) -> np.ndarray:
    """Any audio file as mono float32 at ``sr`` (the ground floor's ffmpeg decoder)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    return media.load_audio(path, sr)


@torch.no_grad()
def animate(model, vocals: list[np.ndarray], bgm: np.ndarray, *, fps: int, sr: int, window: int, k: int = 1,
            seed: int = 0, pose0: np.ndarray | None = None, device: str = "cpu") -> np.ndarray:
    """Coefficients (K, S, T, 56) for S ≥ 2 singers; partner of singer i = sum of the others (paper Eq. 3)."""
    if len(vocals) < 2:
        raise ValueError("need at least two singers' vocal tracks")
    n = min(min(len(v) for v in vocals), len(bgm))
    vocals = np.stack([v[:n] for v in vocals]).astype(np.float32)
    bgm = bgm[:n].astype(np.float32)
    n_frames = int(n * fps / sr)
    spw = window * sr // fps
    n_win = int(np.ceil(n_frames / window))
    pad = n_win * spw - n
    vocals = np.pad(vocals, ((0, 0), (0, max(pad, 0))))
    bgm = np.pad(bgm, (0, max(pad, 0)))
    total = vocals.sum(0)
    s_count = len(vocals)
    model.eval().to(device)
    out = np.zeros((k, s_count, n_win * window, 56), np.float32)
    p0 = np.zeros(3, np.float32) if pose0 is None else np.asarray(pose0, np.float32)
    for kk in range(k):
        gen = torch.Generator(device=device).manual_seed(seed + kk)
        cur = torch.as_tensor(np.tile(p0, (s_count, 1)), device=device)
        for w in range(n_win):
            a = slice(w * spw, (w + 1) * spw)
            host = torch.as_tensor(vocals[:, a], device=device)
            partner = torch.as_tensor(total[a][None] - vocals[:, a], device=device)
            b = torch.as_tensor(np.tile(bgm[a], (s_count, 1)), device=device)
            o = model(host, partner, b, cur, window, z_mode="sample", generator=gen).coeffs
            out[kk, :, w * window:(w + 1) * window] = o.cpu().numpy()
            cur = o[:, -1, POSE]
    return out[:, :, :n_frames]


def load_identity(n_singers: int, shape_files: list[str | Path] | None = None, lmdb: str | Path | None = None,
                  key: str | None = None) -> np.ndarray | None:
    """Each singer's identity (S, 100) for rendering: one ``.npy`` shape code per singer (in --vocals
    order), or the codes a packed window carries (``key``, default the first window that has them).
    None when neither is given: FLAME's mean head."""
    if shape_files and lmdb:
        raise ValueError("give shape codes either as --shape files or from a packed LMDB (--shapes-from), not both")
    if shape_files:
        if len(shape_files) != n_singers:
            raise ValueError(f"{len(shape_files)} --shape file(s) for {n_singers} singers: give one per --vocals track")
        codes = []
        for f in shape_files:
            if not Path(f).is_file():
                raise FileNotFoundError(f"shape code file not found: {f}")
            c = np.load(f).astype(np.float32).reshape(-1)
            if not 1 <= len(c) <= 300:
                raise ValueError(f"{f}: a shape code has 1 to 300 values (EMOCA's: 100), this one has {len(c)}")
            codes.append(np.pad(c, (0, N_SHAPE - len(c))) if len(c) < N_SHAPE else c)
        if len({len(c) for c in codes}) > 1:
            raise ValueError("the --shape files have different lengths: give every singer's code in one layout")
        return np.stack(codes)
    if lmdb is None:
        if key is not None:
            raise ValueError("--shape-key names a window of a packed LMDB: give the LMDB with --shapes-from")
        return None
    reader = WindowReader(lmdb, None)
    if key is not None:
        if key not in reader.keys:
            raise ValueError(f"no window {key!r} in {lmdb} (keys look like w/<video>/<segment>/<start>)")
        w = reader[reader.keys.index(key)]
        if w.shape is None:
            raise ValueError(f"window {key} of {lmdb} has no shape codes (its fit gave none, e.g. landmarks)")
    else:
        w = next((w for w in reader if w.shape is not None), None)
        if w is None:
            raise ValueError(f"no window of {lmdb} has shape codes (its fit gave none, e.g. the landmarks backend)")
    if w.n_singers != n_singers:
        raise ValueError(f"window {w.key} of {lmdb} has {w.n_singers} singers' shape codes for "
                         f"{n_singers} --vocals tracks")
    return w.shape.astype(np.float32)


def separate_song(song: str | Path, out: str | Path, video: str | Path | None = None,
                  pipeline: str | Path | None = None, sets: list[str] = ()) -> Separation:
    """Separate a mixed song as the build does, by running `chorushead separate` in a child process
    (a process boundary, not an import: pachorus imports only chorushead.core, the separators live in
    chorushead's stages). Returns its separation.json, typed and checked (``.paths(out)`` gives the
    tracks); a failure (a missing model, a bad file) raises with chorushead's own one-line message."""
    import os
    import subprocess
    import sys
    import chorushead.core
    out = Path(out)
    cmd = [sys.executable, "-m", "chorushead.cli", "separate", "--song", str(song), "--out", str(out), "--quiet"]
    if video is not None:
        cmd += ["--video", str(video)]
    if pipeline is not None:
        cmd += ["--pipeline", str(pipeline)]
    for s in sets:
        cmd += ["--set", s]
    # The child imports the chorushead that sits next to this pachorus, whatever the working folder.
    env = dict(os.environ)
    here = str(Path(chorushead.core.__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [here, env.get("PYTHONPATH")]))
    proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", env=env)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
        raise RuntimeError(f"separating {Path(song).name}: {lines[-1] if lines else f'exit code {proc.returncode}'}")
    return Separation.load(out)   # typed and checked: every track it names is there


def infer(ckpt: str | Path, vocals: list[str | Path], bgm: str | Path, out: str | Path, k: int = 3,
          flame_dir: str | Path | None = None, seed: int = 0, pose0: list[float] | None = None,
          device: str = "auto", size: int = 256, formats: tuple[str, ...] | None = None,
          shapes: list[str | Path] | None = None, shapes_from: str | Path | None = None,
          shape_key: str | None = None, head: str = "auto") -> dict:
    """``head`` / ``flame_dir``: the mesh of the videos and meshes (pachorus.vertices.resolve_head: with
    ``auto``, FLAME when given, else the open head for a model trained on landmark or synthetic data)."""
    from .export import RUN_INFO, Motion, export_motion, parse_formats
    from .device import pick_device
    from .vertices import describe_head, load_head, resolve_head
    device = str(pick_device(device))
    model, meta = load_model(ckpt, map_location=device)
    if meta.get("data_info") is None:
        raise ValueError(f"{ckpt} has no data_info (fps, sample rate, window): it predates this version; retrain")
    info = meta["data_info"]
    where = resolve_head(flame_dir, head, info.get("fit_backend"), shapes=bool(shapes or shapes_from))
    formats = parse_formats(list(formats or []), flame=bool(where))   # npz (+ mp4 with a head) by default
    fps, sr, window = int(info["fps"]), int(info["sr"]), int(info["window"])
    flame = load_head(where)   # before anything is written: a missing FLAME folder leaves no output behind
    identity = load_identity(len(vocals), shapes, shapes_from, shape_key)   # (S, 100) or None: mean head
    tracks = [load_audio(v, sr) for v in vocals]
    music = load_audio(bgm, sr)
    coeffs = animate(model, tracks, music, fps=fps, sr=sr, window=window, k=k, seed=seed,
                     pose0=None if pose0 is None else np.asarray(pose0), device=device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for kk in range(coeffs.shape[0]):
        for s in range(coeffs.shape[1]):
            p = out / f"singer{s + 1}_sample{kk}.npy"   # singer k = the k-th --vocals file, as the user numbers them
            np.save(p, coeffs[kk, s])
            files.append(str(p))
    groups = tuple(info.get("coeff_groups") or ("exp", "jaw", "pose"))
    exports = [str(f) for kk in range(coeffs.shape[0]) for s in range(coeffs.shape[1])
               for f in export_motion(out, Motion(name=f"singer{s + 1}_sample{kk}", coeffs=coeffs[kk, s], fps=fps,
                                                  coeff_groups=groups,
                                                  shape=None if identity is None else identity[s]), formats, flame)]
    # what `pachorus export --run` needs to redo any format later: frame rate, groups, the audio animated
    (out / RUN_INFO).write_text(json.dumps({"fps": fps, "sr": sr, "coeff_groups": list(groups),
                                            "fit_backend": info.get("fit_backend"),
                                            "vocals": [str(Path(v).resolve()) for v in vocals],
                                            "bgm": str(Path(bgm).resolve()),
                                            "shapes": None if identity is None else identity.tolist()}, indent=2))
    videos = []
    if flame is not None and "mp4" in formats:
        n = coeffs.shape[2] * sr // fps
        mix = (np.sum([t[:n] for t in tracks], 0) if all(len(t) >= n for t in tracks) else None)
        if mix is not None and len(music) >= n:
            mix = mix + music[:n]
        for kk in range(coeffs.shape[0]):
            videos.append(str(render_video(coeffs[kk], flame, out / f"sample{kk}.mp4", audio=mix, fps=fps, sr=sr,
                                       size=size, shapes=identity)))
    return {"coeffs": files, "exports": exports, "videos": videos, "frames": int(coeffs.shape[2]),
            "singers": int(coeffs.shape[1]), "samples": int(coeffs.shape[0]), "head": where,
            "mesh": describe_head(where),
            "heads": "mean head" if identity is None else
                     f"personalised heads from shape codes ({'--shape files' if shapes else str(shapes_from)})"}

