"""ingest: probe the video, define its timeline at the pipeline's fps, extract the audio the later stages need.

The video itself is not re-encoded: every frame reader goes through ffmpeg's ``fps`` filter
(:func:`chorushead.core.media.iter_frames`), which puts sources of any rate, variable ones included, on
the same constant timeline at the pipeline's fps (``[pipeline] fps``, 30 by default). Audio: the mix at 44.1 kHz stereo (Spleeter's rate) and, when the
user supplies stems (``--stems``), those stems imported at 44.1 kHz.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from chorushead.core import media
from chorushead.core.errors import BadInput
from chorushead.core.shapes import Metrics as MetricsShape, Outputs as OutputsShape
from chorushead.stages.base import Context, Result, Stage

MIX_SR = 44100
# Supplied stems against the video. A stem a little off (encoder padding, a trimmed fade) is normal;
# beyond STEMS_WARN_S it is recorded as a warning and flagged for review (lip sync may drift); beyond
# STEMS_REFUSE_S or STEMS_REFUSE_FRAC of the video, whichever is less (but never under
# STEMS_REFUSE_MIN_S), the stems belong to another cut of the song and are refused.
STEMS_WARN_S = 0.5
STEMS_REFUSE_S = 5.0
STEMS_REFUSE_FRAC = 0.10
STEMS_REFUSE_MIN_S = 1.0
_SINGER = re.compile(r"singer(\d+)\.wav")
# A song without a picture (`chorushead separate --song mix.wav`): only the audio stages can use it.
AUDIO_EXTS = {".wav", ".flac", ".mp3", ".m4a", ".aac", ".ogg", ".opus"}


@dataclass
class Params:
    min_seconds: float = 5.0     # shorter videos cannot hold one 5 s segment
    max_seconds: float = 3 * 3600.0


@dataclass
class Outputs(OutputsShape):
    source: str                  # absolute path of the raw video
    n_frames: int                # frames on the pipeline's timeline
    fps: int                     # the pipeline's fps this build's frame indices are on
    width: int
    height: int
    duration: float              # seconds
    source_fps: float            # the file's own (average) rate, for information
    audio_44k: str | None = None             # mix, stereo 44.1 kHz (absent: no audio stream, stems supplied)
    stems_vocals: str | None = None          # user stems, imported at 44.1 kHz
    stems_accompaniment: str | None = None
    stems_singers: list[str] | None = None   # stems/singer1.wav, ...: the user's numbers, in order


@dataclass
class Metrics(MetricsShape):
    seconds_of_video: float
    frames: int
    resolution: str
    source_fps: float
    stems_max_diff_s: float | None = None    # largest |stem length - video length|, seconds
    warnings: list[str] = field(default_factory=list)   # supplied stems a person should check


def _stem_files(folder: Path) -> tuple[Path, Path, list[Path]]:
    """vocals.wav, accompaniment.wav and singer1.wav..singerN.wav (N >= 2, numbered from 1, no gaps):
    singer k of every later output is the user's singer<k>.wav."""
    vocals, acc = folder / "vocals.wav", folder / "accompaniment.wav"
    numbered = {}
    for p in folder.glob("singer*.wav"):
        m = _SINGER.fullmatch(p.name)
        if m is None:
            raise BadInput(f"stems folder {folder}: {p.name} is not named singer<number>.wav (singer1.wav, singer2.wav...)")
        numbered[int(m.group(1))] = p
    missing = [p.name for p in (vocals, acc) if not p.exists()]
    if missing or len(numbered) < 2:
        raise BadInput(f"stems folder {folder} needs vocals.wav, accompaniment.wav and singer1.wav, singer2.wav...; "
                       f"missing: {missing + ([] if len(numbered) >= 2 else ['singerN.wav (at least 2)'])}")
    if sorted(numbered) != list(range(1, len(numbered) + 1)):
        raise BadInput(f"stems folder {folder}: singers are numbered {sorted(numbered)}; number them 1..{len(numbered)} "
                       "without gaps (singer1.wav, singer2.wav...), so singer k is the same singer in every output")
    return vocals, acc, [numbered[k] for k in sorted(numbered)]


def _wav_rate(path: Path) -> int:
    """Sample rate from a WAV header (PCM, float or extensible; RIFF or RF64), without decoding."""
    with open(path, "rb") as f:
        head = f.read(12)
        if head[:4] not in (b"RIFF", b"RF64") or head[8:12] != b"WAVE":
            raise BadInput(f"{path.name}: not a WAV file (stems must be .wav)")
        while len(chunk := f.read(8)) == 8:
            size = int.from_bytes(chunk[4:], "little")
            if chunk[:4] == b"fmt ":
                return int.from_bytes(f.read(8)[4:8], "little")
            f.seek(size + (size & 1), 1)
    raise BadInput(f"{path.name}: WAV file without a format chunk (damaged?)")


def _check_stems(video: str, duration: float, stems: dict[str, tuple[float, int]]) -> tuple[list[str], float]:
    """Warnings for stems (name -> (seconds, native rate)) that differ from the video in length or from
    each other in rate; BadInput when one is so far off it cannot be this video's. Also the largest
    length difference."""
    warnings = []
    worst = max(abs(sec - duration) for sec, _ in stems.values())
    refuse = max(STEMS_REFUSE_MIN_S, min(STEMS_REFUSE_S, STEMS_REFUSE_FRAC * duration))
    for name, (sec, _) in stems.items():
        diff = sec - duration
        if abs(diff) > refuse:
            raise BadInput(f"{video}: stem {name} is {sec:.2f} s but the video is {duration:.2f} s ({diff:+.2f} s); "
                           "these stems are from another cut of the song: supply this video's stems")
        if abs(diff) > STEMS_WARN_S:
            warnings.append(f"stem {name} is {sec:.2f} s, the video {duration:.2f} s ({diff:+.2f} s)")
    rates = {name: sr for name, (_, sr) in stems.items()}
    common = max(set(rates.values()), key=list(rates.values()).count)
    for name, sr in rates.items():
        if sr != common:
            warnings.append(f"stem {name} is at {sr} Hz, the other stems at {common} Hz (from another source?)")
    return warnings, worst


def _audio_only(ctx: Context, p: Params, src: Path) -> Result:
    """An audio file: the mix, a timeline of its length at the pipeline's fps, no picture (0x0)."""
    mix = media.load_audio(src, MIX_SR, mono=False)
    if mix.size == 0:
        raise BadInput(f"{src.name}: the audio decodes to nothing (damaged file?)")
    duration = len(mix) / MIX_SR
    _check_length(src, duration, p, ctx.fps)
    media.write_wav(ctx.tmp / "mix_44k.wav", mix, MIX_SR)
    n_frames = media.count_frames(duration, ctx.fps)
    outputs = Outputs(source=str(src), n_frames=n_frames, fps=ctx.fps, width=0, height=0, duration=duration,
                      source_fps=0.0, audio_44k="mix_44k.wav")
    return Result(outputs=outputs, metrics=Metrics(seconds_of_video=round(duration, 3), frames=n_frames,
                                                   resolution="audio only", source_fps=0.0))


def _check_length(src: Path, duration: float, p: Params, fps: int) -> None:
    if duration < p.min_seconds:
        raise BadInput(f"{src.name}: {duration:.2f} s long; a segment needs at least {p.min_seconds:g} s "
                       f"({int(p.min_seconds * fps)} frames at {fps} fps).")
    if duration > p.max_seconds:
        raise BadInput(f"{src.name}: {duration / 3600:.1f} h is longer than max_seconds={p.max_seconds:g}; "
                       "split it or raise the limit with --set ingest.max_seconds=...")


def process(ctx: Context, p: Params, _model) -> Result:
    src = Path(ctx.item.source)
    if src.suffix.lower() in AUDIO_EXTS and not ctx.item.stems:
        return _audio_only(ctx, p, src)
    info = media.probe(src)
    if not info.has_audio and not ctx.item.stems:
        raise BadInput(f"{src.name}: the video has no audio stream; ChorusHead needs the song "
                       "(or supply per-singer stems with --stems DIR).")
    _check_length(src, info.duration, p, ctx.fps)
    n_frames = media.count_frames(info.duration, ctx.fps)
    outputs = Outputs(source=str(src), n_frames=n_frames, fps=ctx.fps, width=info.width, height=info.height,
                      duration=info.duration, source_fps=info.fps)
    if info.has_audio:
        mix = media.load_audio(src, MIX_SR, mono=False)
        if mix.size == 0:
            raise BadInput(f"{src.name}: the audio stream decodes to nothing (damaged file?)")
        media.write_wav(ctx.tmp / "mix_44k.wav", mix, MIX_SR)
        outputs.audio_44k = "mix_44k.wav"
    warnings: list[str] = []
    stems_diff = None
    if ctx.item.stems:
        vocals, acc, singers = _stem_files(Path(ctx.item.stems))
        stems = ctx.tmp / "stems"
        stems.mkdir()
        measured = {}   # name -> (seconds, native rate)
        # Each keeps its file name, so singer<k>.wav is singer k here and in every later output.
        for path, mono in [(vocals, False), (acc, False)] + [(singer, True) for singer in singers]:
            audio = media.load_audio(path, MIX_SR, mono=mono)
            measured[path.name] = (len(audio) / MIX_SR, _wav_rate(path))
            media.write_wav(stems / path.name, audio, MIX_SR)
        outputs.stems_vocals, outputs.stems_accompaniment = "stems/vocals.wav", "stems/accompaniment.wav"
        outputs.stems_singers = [f"stems/{singer.name}" for singer in singers]
        warnings, stems_diff = _check_stems(src.name, info.duration, measured)
    metrics = Metrics(seconds_of_video=round(info.duration, 3), frames=n_frames,
                      resolution=f"{info.width}x{info.height}", source_fps=info.fps,
                      stems_max_diff_s=None if stems_diff is None else round(stems_diff, 3), warnings=warnings)
    return Result(outputs=outputs, metrics=metrics)


STAGE = Stage(name="ingest", version="1", params=Params, outputs=Outputs, metrics=Metrics, process=process,
              needs=(), description="probe, timeline at the pipeline's fps, audio extraction, stems import")
