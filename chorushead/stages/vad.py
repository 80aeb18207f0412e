"""vad: find where the singing starts and ends (webrtcvad on the vocal stem) and trim to it.

Singing is "on" once ``voiced_ratio`` of the frames in a ``padding_ms`` window are voiced and "off"
once that many are unvoiced (the classic ring-buffer smoothing of a frame-wise VAD). The first "on"
and the last "off" bound the kept range; it is snapped to the video timeline (the pipeline's fps), and every audio
track (vocals, accompaniment, each singer) is cut to it and written at 16 kHz for the later stages.
The video is trimmed logically: crop decodes only ``[start_frame, end_frame)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chorushead.core import media
from chorushead.core.errors import BadInput
from chorushead.core.shapes import Metrics as MetricsShape, Outputs as OutputsShape
from chorushead.stages import bgm_split, duet_split, ingest
from chorushead.stages.base import Context, Result, Stage

VAD_SR = 16000  # webrtcvad accepts 8/16/32/48 kHz; 16 kHz is also the trainer's rate


@dataclass
class Params:
    aggressiveness: int = 2
    frame_ms: int = 30
    padding_ms: int = 300
    voiced_ratio: float = 0.9
    sr: int = VAD_SR


@dataclass
class Outputs(OutputsShape):
    start_frame: int                 # kept range [start_frame, end_frame) on the pipeline's timeline
    end_frame: int
    start_s: float
    end_s: float
    sr: int
    vocals_16k: str                  # every track cut to the kept range
    bgm_16k: str
    singers_16k: list[str]


@dataclass
class Metrics(MetricsShape):
    kept_seconds: float
    trimmed_seconds: float
    voiced_fraction: float


def voiced_flags(audio: np.ndarray, sr: int, aggressiveness: int, frame_ms: int) -> np.ndarray:
    """webrtcvad decision per frame of ``frame_ms`` on 16-bit mono PCM."""
    import webrtcvad
    if frame_ms not in (10, 20, 30):
        raise ValueError("webrtcvad frames must be 10, 20 or 30 ms")
    vad = webrtcvad.Vad(int(aggressiveness))
    n = sr * frame_ms // 1000
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    # Normalise quiet stems so the VAD's energy gate sees them; never amplify silence into noise.
    gain = 0.9 / peak if peak > 1e-4 else 1.0
    pcm = (np.clip(audio * gain, -1, 1) * 32767).astype("<i2")
    return np.array([vad.is_speech(pcm[i:i + n].tobytes(), sr) for i in range(0, len(pcm) - n + 1, n)], bool)


def singing_range(flags: np.ndarray, frame_ms: int, padding_ms: int, ratio: float) -> tuple[float, float] | None:
    """(start_s, end_s) from the first triggered window to the last de-triggered one, or None."""
    win = max(1, padding_ms // frame_ms)
    if len(flags) < win:
        return None
    counts = np.convolve(flags.astype(int), np.ones(win, int), mode="valid")  # voiced in [i, i+win)
    need = math.ceil(ratio * win - 1e-9)      # 0.28 x 25 is 7.000000000000001 in floats: 7 voiced frames trigger
    on = np.nonzero(counts >= need)[0]
    if on.size == 0:
        return None
    start = on[0]
    # the last window that is still mostly voiced ends the singing
    end = on[-1] + win
    return start * frame_ms / 1000.0, end * frame_ms / 1000.0


def process(ctx: Context, p: Params, _model) -> Result:
    fps = ctx.fps
    n_frames = ingest.Outputs.of(ctx.upstream["ingest"]).n_frames
    bgm = bgm_split.Outputs.of(ctx.upstream["bgm_split"])
    vocals = media.load_audio(ctx.path(bgm.vocals), p.sr)
    flags = voiced_flags(vocals, p.sr, p.aggressiveness, p.frame_ms)
    rng = singing_range(flags, p.frame_ms, p.padding_ms, p.voiced_ratio)
    if rng is None:
        raise BadInput(f"no singing found in the vocal track ({len(flags)} VAD frames, "
                       f"{int(flags.sum())} voiced). Is the vocal stem silent, or is aggressiveness={p.aggressiveness} too strict?")
    start_f = int(np.floor(rng[0] * fps))
    end_f = min(n_frames, int(np.ceil(rng[1] * fps)))
    if end_f - start_f < 1:
        raise BadInput("the voiced range is empty after snapping to the video's frames")
    a, b = start_f / fps, end_f / fps
    n = int(round((end_f - start_f) * p.sr / fps))

    def cut(x: np.ndarray) -> np.ndarray:
        seg = x[int(round(a * p.sr)):int(round(a * p.sr)) + n]
        return np.pad(seg, (0, n - len(seg)))  # stems may be a hair shorter than the video

    media.write_wav(ctx.tmp / "vocals_16k.wav", cut(vocals), p.sr)
    media.write_wav(ctx.tmp / "bgm_16k.wav", cut(media.load_audio(ctx.path(bgm.accompaniment), p.sr)), p.sr)
    singers = []
    for rel in duet_split.Outputs.of(ctx.upstream["duet_split"]).singers:
        name = f"{Path(rel).stem}_16k.wav"   # singer<k>.wav -> singer<k>_16k.wav: the user's numbers kept
        media.write_wav(ctx.tmp / name, cut(media.load_audio(ctx.path(rel), p.sr)), p.sr)
        singers.append(name)
    outputs = Outputs(start_frame=start_f, end_frame=end_f, start_s=a, end_s=b, sr=p.sr,
                      vocals_16k="vocals_16k.wav", bgm_16k="bgm_16k.wav", singers_16k=singers)
    metrics = Metrics(kept_seconds=round(b - a, 3), trimmed_seconds=round(n_frames / fps - (b - a), 3),
                      voiced_fraction=round(float(flags.mean()), 3))
    return Result(outputs=outputs, metrics=metrics)


STAGE = Stage(name="vad", version="1", params=Params, outputs=Outputs, metrics=Metrics, process=process,
              needs=("ingest", "bgm_split", "duet_split"),
              description="webrtcvad start/end of singing; trim all tracks")
