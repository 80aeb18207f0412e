"""The built-in sample (what `chorushead demo` builds, and what the tests build): generated duet videos
with real faces, synthesised singing, music and stems.

Faces are real photographs that ship inside scikit-image and matplotlib (the astronaut Eileen Collins
and Grace Hopper), one per half of the frame, drifting and bobbing; the second singer leaves the frame for a
while so the contiguity filter has something to cut. Each singer's mouth opens with that singer's own
voice (its loudness per video frame, closed while it is silent; the warp is demo_faces.open_mouth),
and each singer smiles while listening: the corners of the mouth rise with the partners' loudness
(smoothed over half a second; demo_faces.smile), the demo's counterpart of the paper's listener who
shares the singing partner's expression (§4.4).
Voices are harmonic tones with vibrato and vowel-like formants sung in phrases; the music is chords
plus a kick drum on the beat. Stems are written next to the video in the layout ``--stems`` expects.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chorushead.core import media
from chorushead.demo_faces import MOUTHS, listening, loudness_envelope, open_mouth, smile as smile_warp

SR = 44100
MOUTH_GAP = 0.08   # the lips' widest parting, as a fraction of the face image's size
LISTEN_SMILE = 0.03   # the mouth corners' largest lift while listening, as a fraction of the face's size


# x1, y1, x2, y2 of a region tight around each face (face + hair + chin): the face fills ~55% of it
FACE_REGIONS = {"astronaut": (135, 15, 315, 210), "grace_hopper": (105, 50, 425, 410)}


def face_photos() -> dict[str, np.ndarray]:
    """Two real face photos that ship inside wheels (no download), RGB uint8: scikit-image's astronaut
    (Eileen Collins) and matplotlib's sample portrait of Grace Hopper."""
    import os

    import cv2
    import matplotlib
    import skimage.data
    hopper = cv2.imread(os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg"), cv2.IMREAD_COLOR)
    return {"astronaut": skimage.data.astronaut()[..., :3], "grace_hopper": cv2.cvtColor(hopper, cv2.COLOR_BGR2RGB)}


def face_images(size: int) -> list[np.ndarray]:
    """The two faces cropped to :data:`FACE_REGIONS`, square, ``size`` pixels."""
    import cv2
    out = []
    for name, im in face_photos().items():
        x1, y1, x2, y2 = FACE_REGIONS[name]
        out.append(cv2.resize(np.ascontiguousarray(im[y1:y2, x1:x2]), (size, size), interpolation=cv2.INTER_AREA))
    return out


@dataclass
class DuetVideo:
    frames: np.ndarray            # (T, H, W, 3) uint8
    boxes: np.ndarray             # (S, T, 4) patch boxes in strip coordinates, NaN when absent
    fps: int
    mouth_gap: np.ndarray | None = None   # (S, T) lips' parting in pixels of the pasted face (0 = closed)
    smile: np.ndarray | None = None       # (S, T) mouth corners' lift in pixels of the pasted face (0 = none)


def make_duet_frames(n_frames: int, size: tuple[int, int] = (256, 512), fps: int = 30,
                     absent: tuple[int, int] | None = None, n_faces: int = 2, seed: int = 0,
                     face_frac: float = 0.7, mouth_open: np.ndarray | None = None,
                     max_gap: float = MOUTH_GAP, smile: np.ndarray | None = None,
                     max_smile: float = LISTEN_SMILE) -> DuetVideo:
    """Frames of ``n_faces`` singers side by side (one per vertical strip); strip 1's face is out of
    the picture for frames ``absent = (a, b)``. ``mouth_open`` (n_faces, n_frames) in 0..1 parts each
    face's lips by that fraction of ``max_gap`` × the face's size (None: closed mouths); ``smile``
    (same shape, 0..1) lifts the mouth corners by that fraction of ``max_smile`` × the face's size.
    Returns the frames, the true patch boxes, mouth gaps and smiles."""
    h, w = size
    rng = np.random.default_rng(seed)
    sw = w // n_faces
    fs = int(min(h, sw) * face_frac)
    photos = face_images(fs)
    faces = [photos[k % len(photos)] if k < 2 else np.ascontiguousarray(photos[k % 2][:, ::-1]) for k in range(n_faces)]
    yy, xx = np.mgrid[0:h, 0:w]
    background = (40 + 30 * np.sin(xx / 37.0)[..., None] + 20 * np.cos(yy / 23.0)[..., None]
                  + np.array([20, 10, 30])).clip(0, 255).astype(np.uint8)
    frames = np.empty((n_frames, h, w, 3), np.uint8)
    boxes = np.full((n_faces, n_frames, 4), np.nan, np.float32)
    phase = rng.uniform(0, 2 * np.pi, size=(n_faces, 2))
    gaps = np.zeros((n_faces, n_frames), np.float32)
    if mouth_open is not None:
        gaps[:] = np.round(np.clip(np.asarray(mouth_open, np.float64)[:n_faces, :n_frames], 0, 1)
                           * max_gap * fs, 2)
    lifts = np.zeros((n_faces, n_frames), np.float32)
    if smile is not None:
        lifts[:] = np.round(np.clip(np.asarray(smile, np.float64)[:n_faces, :n_frames], 0, 1) * max_smile * fs, 2)
    for t in range(n_frames):
        fr = background.copy()
        for k in range(n_faces):
            cx = sw / 2 + 0.12 * sw * np.sin(2 * np.pi * t / (4.0 * fps) + phase[k, 0])
            cy = h / 2 + 0.08 * h * np.sin(2 * np.pi * t / (2.5 * fps) + phase[k, 1])
            if k == 1 and absent is not None and absent[0] <= t < absent[1]:
                continue  # the singer stepped out of the frame
            x0 = int(round(cx - fs / 2))
            y0 = int(round(cy - fs / 2))
            x0 = min(max(x0, 0), sw - fs)
            y0 = min(max(y0, 0), h - fs)
            face = faces[k]
            if gaps[k, t] > 0 or lifts[k, t] > 0:   # singers past the second are the photos mirrored: warp, then mirror
                face = open_mouth(photos[k % 2], MOUTHS[k % 2], float(gaps[k, t]))
                face = smile_warp(face, MOUTHS[k % 2], float(lifts[k, t]))
                face = face if k < 2 else face[:, ::-1]
            fr[y0:y0 + fs, k * sw + x0:k * sw + x0 + fs] = face
            boxes[k, t] = [x0, y0, x0 + fs, y0 + fs]
        frames[t] = fr
    return DuetVideo(frames=frames, boxes=boxes, fps=fps, mouth_gap=gaps, smile=lifts)


def sing(seconds: float, sr: int, phrases: list[tuple[float, float]], f0_base: float, seed: int) -> np.ndarray:
    """A singing-like voice: notes with vibrato, 12 harmonics shaped by two vowel formants."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    t = np.arange(n) / sr
    out = np.zeros(n, np.float64)
    scale = np.array([0, 2, 4, 5, 7, 9, 11, 12])
    for a, b in phrases:
        i0, i1 = int(a * sr), min(n, int(b * sr))
        if i1 <= i0:
            continue
        tt = t[i0:i1] - a
        note_len = 0.4
        notes = f0_base * 2 ** (scale[rng.integers(0, len(scale), size=int(np.ceil((b - a) / note_len)) + 1)] / 12)
        f0 = notes[(tt / note_len).astype(int)] * (1 + 0.012 * np.sin(2 * np.pi * 5.5 * tt))
        ph = 2 * np.pi * np.cumsum(f0) / sr
        f1, f2 = 700 + 200 * np.sin(2 * np.pi * 0.7 * tt), 1200 + 300 * np.cos(2 * np.pi * 0.5 * tt)
        v = np.zeros_like(tt)
        for hn in range(1, 13):
            fh = hn * f0
            amp = np.exp(-((fh - f1) / 300) ** 2) + 0.6 * np.exp(-((fh - f2) / 400) ** 2) + 0.05 / hn
            v += amp * np.sin(hn * ph)
        env = np.minimum(1, np.minimum(tt / 0.05, (b - a - tt) / 0.08)).clip(0, 1)
        syll = 0.6 + 0.4 * np.abs(np.sin(np.pi * tt / note_len))   # syllable-rate loudness (mouth opening)
        out[i0:i1] += v * env * syll
    out += 0.002 * rng.standard_normal(n)   # breath noise floor
    return (0.25 * out / (np.abs(out).max() + 1e-9)).astype(np.float32)


def music(seconds: float, sr: int, bpm: float = 100.0, seed: int = 0) -> np.ndarray:
    """Accompaniment: sustained chords and a kick drum on every beat."""
    n = int(seconds * sr)
    t = np.arange(n) / sr
    chords = [[220.0, 277.2, 329.6], [196.0, 246.9, 293.7], [174.6, 220.0, 261.6], [196.0, 246.9, 293.7]]
    beat = 60.0 / bpm
    out = np.zeros(n)
    for i, c in enumerate(chords * int(np.ceil(seconds / (4 * beat * len(chords))) + 1)):
        a, b = i * 4 * beat, (i + 1) * 4 * beat
        m = (t >= a) & (t < b)
        for f in c:
            out[m] += 0.3 * np.sin(2 * np.pi * f * t[m]) * np.exp(-(t[m] - a) * 0.3)
    for k in range(int(seconds / beat) + 1):
        i0 = int(k * beat * sr)
        tt = np.arange(min(int(0.15 * sr), n - i0)) / sr
        if len(tt):
            out[i0:i0 + len(tt)] += np.sin(2 * np.pi * (60 + 80 * np.exp(-tt * 30)) * tt) * np.exp(-tt * 25)
    return (0.15 * out / (np.abs(out).max() + 1e-9)).astype(np.float32)


def write_sample(folder: Path, seconds: float = 12.0, size: tuple[int, int] = (256, 512), fps: int = 30,
                 name: str = "duet_sample", seed: int = 0, absent_s: tuple[float, float] | None = (8.0, 9.0),
                 n_faces: int = 2, with_audio: bool = True) -> tuple[Path, Path, DuetVideo]:
    """Write ``folder/videos/<name>.mp4`` and ``folder/stems/<name>/...``; return both paths + truth."""
    videos, stems = Path(folder) / "videos", Path(folder) / "stems" / name
    videos.mkdir(parents=True, exist_ok=True)
    stems.mkdir(parents=True, exist_ok=True)
    n = int(round(seconds * fps))
    absent = (int(absent_s[0] * fps), int(absent_s[1] * fps)) if absent_s else None
    # Singing starts after 1 s and stops 0.5 s before the end (VAD trims both); the two singers take
    # turns and overlap in the middle, as duets do.
    end = seconds - 0.5
    p1 = [(1.0, 3.6), (4.2, 6.8), (7.4, end)]
    p2 = [(2.4, 5.0), (5.6, 8.2), (8.8, end)]
    voices = [sing(seconds, SR, p1, 220.0, seed + 1), sing(seconds, SR, p2, 165.0, seed + 2)]
    voices += [sing(seconds, SR, p1[::-1], 260.0, seed + 3 + k) for k in range(n_faces - 2)]
    # each singer's mouth follows that singer's own loudness, frame by frame, and smiles at the partners'
    loud = np.stack([loudness_envelope(v, SR, fps, n) for v in voices])
    vid = make_duet_frames(n, size=size, fps=fps, absent=absent, n_faces=n_faces, seed=seed,
                           mouth_open=loud, smile=listening(loud, fps))
    bgm = music(seconds, SR, seed=seed)
    vocals = np.sum(voices, axis=0)
    mix = np.stack([vocals + bgm, vocals + 0.9 * bgm], axis=1)
    for k, v in enumerate(voices):
        media.write_wav(stems / f"singer{k + 1}.wav", v, SR)
    media.write_wav(stems / "vocals.wav", np.stack([vocals, vocals], 1), SR)
    media.write_wav(stems / "accompaniment.wav", np.stack([bgm, 0.9 * bgm], 1), SR)
    audio = None
    if with_audio:
        audio = stems / "mix.wav"
        media.write_wav(audio, mix, SR)
    path = videos / f"{name}.mp4"
    media.encode_video(path, vid.frames, fps=fps, audio=audio)
    return path, stems.parent, vid
