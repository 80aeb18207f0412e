"""``pachorus infer``: per-singer coefficients (K samples) from separated vocal tracks + BGM, and a render.

Long songs run as consecutive windows of the training window length; each window's pose0 is the
previous window's last predicted pose (the first one's is ``--pose0``, default zeros), which is what
the frame-0-relative pose design is for. Each sample k draws z ~ N(0, I) per window from a seeded
generator, so samples differ only in the prior's head motion (exp/jaw come from the host audio).
"""
from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch

from .model.pachorus import load_model

SR = 16000


def load_audio(path: str | Path, sr: int = SR) -> np.ndarray:
    """Any audio file as mono float32 at ``sr`` (chorushead's ffmpeg decoder)."""
    from chorushead import media
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    return media.load_audio(path, sr)


@torch.no_grad()
def animate(model, vocals: list[np.ndarray], bgm: np.ndarray, *, fps: int = 30, sr: int = SR, window: int = 150,
            k: int = 1, seed: int = 0, pose0: np.ndarray | None = None, device: str = "cpu") -> np.ndarray:
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
            cur = o[:, -1, 53:56]
    return out[:, :, :n_frames]


# ------------------------------------------------------------------ software renderer
def render_mesh(verts: np.ndarray, faces: np.ndarray, size: int = 256, scale: float | None = None,
                center: np.ndarray | None = None) -> np.ndarray:
    """Flat-shaded grey mesh, orthographic view from +z, painter's algorithm (no OpenGL). (H, W, 3) uint8."""
    import cv2
    img = np.full((size, size, 3), 255, np.uint8)
    center = verts.mean(0) if center is None else center
    scale = (0.8 * size / (np.ptp(verts[:, :2], axis=0).max() + 1e-9)) if scale is None else scale
    xy = (verts[:, :2] - center[:2]) * scale
    px = np.stack([size / 2 + xy[:, 0], size / 2 - xy[:, 1]], 1)
    tri = verts[faces]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normal /= np.linalg.norm(normal, axis=1, keepdims=True) + 1e-12
    visible = normal[:, 2] > 0
    shade = (40 + 200 * np.clip(normal[:, 2], 0, 1)).astype(int)
    order = np.argsort(tri[:, :, 2].mean(1))  # far to near
    pts = np.round(px[faces] * 16).astype(np.int32)  # 4 fractional bits for smoother edges
    for i in order:
        if visible[i]:
            g = int(shade[i])
            cv2.fillConvexPoly(img, pts[i], (g, g, g), lineType=cv2.LINE_AA, shift=4)
    return img


def render_video(coeffs: np.ndarray, flame, out_path: str | Path, audio: np.ndarray | None = None,
                 fps: int = 30, size: int = 256, sr: int = SR) -> Path:
    """Render S singers side by side (coeffs (S, T, 56)) to an H.264 mp4, muxing ``audio`` when given."""
    import imageio_ffmpeg
    out_path = Path(out_path)
    s_count, t_count = coeffs.shape[:2]
    verts = [flame.vertices_np(c) for c in coeffs]                # each (T, V, 3)
    tmpl = flame.v_template.cpu().numpy()
    scale = 0.7 * size / (np.ptp(tmpl[:, :2], axis=0).max() + 1e-9)
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [ffmpeg, "-y", "-v", "error", "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{size * s_count}x{size}",
               "-r", str(fps), "-i", "-"]
        if audio is not None:
            wav = Path(tmp) / "mix.wav"
            from chorushead import media
            media.write_wav(wav, audio, sr)
            cmd += ["-i", str(wav), "-c:a", "aac", "-shortest"]
        cmd += ["-c:v", "libx264", "-pix_fmt", "yuv420p", str(out_path)]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            for t in range(t_count):
                frame = np.concatenate([render_mesh(v[t], flame.faces, size, scale, tmpl.mean(0)) for v in verts], 1)
                proc.stdin.write(frame.tobytes())
        finally:
            proc.stdin.close()
            err = proc.stderr.read()
            proc.wait()
        if proc.returncode != 0:
            raise RuntimeError(f"ffmpeg failed writing {out_path}: {err.decode(errors='replace')[-500:]}")
    return out_path


def infer(ckpt: str | Path, vocals: list[str | Path], bgm: str | Path, out: str | Path, k: int = 3,
          flame_dir: str | Path | None = None, seed: int = 0, pose0: list[float] | None = None,
          device: str = "auto", size: int = 256) -> dict:
    from .train import Dist, pick_device
    device = str(pick_device(device, Dist()))
    model, meta = load_model(ckpt, map_location=device)
    window = int(meta.get("window", 150))  # the training window length, saved in every checkpoint
    tracks = [load_audio(v) for v in vocals]
    music = load_audio(bgm)
    coeffs = animate(model, tracks, music, window=window, k=k, seed=seed,
                     pose0=None if pose0 is None else np.asarray(pose0), device=device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for kk in range(coeffs.shape[0]):
        for s in range(coeffs.shape[1]):
            p = out / f"singer{s}_sample{kk}.npy"
            np.save(p, coeffs[kk, s])
            files.append(str(p))
    videos = []
    if flame_dir:
        from .flame import FlameModel
        flame = FlameModel.load(flame_dir)
        n = coeffs.shape[2] * SR // 30
        mix = (np.sum([t[:n] for t in tracks], 0) if all(len(t) >= n for t in tracks) else None)
        if mix is not None and len(music) >= n:
            mix = mix + music[:n]
        for kk in range(coeffs.shape[0]):
            videos.append(str(render_video(coeffs[kk], flame, out / f"sample{kk}.mp4", audio=mix, size=size)))
    return {"coeffs": files, "videos": videos, "frames": int(coeffs.shape[2]), "singers": int(coeffs.shape[1]),
            "samples": int(coeffs.shape[0])}

