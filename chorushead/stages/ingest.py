"""ingest: probe the video, define its timeline at the pipeline's fps, extract the audio the later stages need.

The video itself is not re-encoded: every frame reader goes through ffmpeg's ``fps`` filter
(:func:`chorushead.core.media.iter_frames`), which puts sources of any rate, variable ones included, on
the same constant timeline at the pipeline's fps (``[pipeline] fps``, 30 by default). Audio: the mix at 44.1 kHz stereo (Spleeter's rate) and, when the
user supplies stems (``--stems``), those stems imported at 44.1 kHz.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from chorushead.core import media
from chorushead.core.errors import BadInput
from chorushead.core.shapes import Metrics as MetricsShape, Outputs as OutputsShape
from chorushead.stages.base import Context, Result, Stage

MIX_SR = 44100


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
    stems_singers: list[str] | None = None


@dataclass
class Metrics(MetricsShape):
    seconds_of_video: float
    frames: int
    resolution: str
    source_fps: float


def _stem_files(folder: Path) -> tuple[Path, Path, list[Path]]:
    vocals, acc = folder / "vocals.wav", folder / "accompaniment.wav"
    singers = sorted(folder.glob("singer*.wav"), key=lambda p: int("".join(c for c in p.stem if c.isdigit()) or 0))
    missing = [p.name for p in (vocals, acc) if not p.exists()]
    if missing or len(singers) < 2:
        raise BadInput(f"stems folder {folder} needs vocals.wav, accompaniment.wav and singer1.wav, singer2.wav...; "
                       f"missing: {missing + ([] if len(singers) >= 2 else ['singerN.wav (at least 2)'])}")
    return vocals, acc, singers


def process(ctx: Context, p: Params, _model) -> Result:
    src = Path(ctx.item.source)
    info = media.probe(src)
    if not info.has_audio and not ctx.item.stems:
        raise BadInput(f"{src.name}: the video has no audio stream; ChorusHead needs the song "
                       "(or supply per-singer stems with --stems DIR).")
    if info.duration < p.min_seconds:
        raise BadInput(f"{src.name}: {info.duration:.2f} s long; a segment needs at least {p.min_seconds:g} s "
                       f"({int(p.min_seconds * ctx.fps)} frames at {ctx.fps} fps).")
    if info.duration > p.max_seconds:
        raise BadInput(f"{src.name}: {info.duration / 3600:.1f} h is longer than max_seconds={p.max_seconds:g}; "
                       "split it or raise the limit with --set ingest.max_seconds=...")
    n_frames = media.count_frames(info.duration, ctx.fps)
    outputs = Outputs(source=str(src), n_frames=n_frames, fps=ctx.fps, width=info.width, height=info.height,
                      duration=info.duration, source_fps=info.fps)
    if info.has_audio:
        mix = media.load_audio(src, MIX_SR, mono=False)
        if mix.size == 0:
            raise BadInput(f"{src.name}: the audio stream decodes to nothing (damaged file?)")
        media.write_wav(ctx.tmp / "mix_44k.wav", mix, MIX_SR)
        outputs.audio_44k = "mix_44k.wav"
    if ctx.item.stems:
        vocals, acc, singers = _stem_files(Path(ctx.item.stems))
        stems = ctx.tmp / "stems"
        stems.mkdir()
        for name, path in [("vocals", vocals), ("accompaniment", acc)]:
            media.write_wav(stems / f"{name}.wav", media.load_audio(path, MIX_SR, mono=False), MIX_SR)
        outputs.stems_vocals, outputs.stems_accompaniment = "stems/vocals.wav", "stems/accompaniment.wav"
        for k, path in enumerate(singers):
            media.write_wav(stems / f"singer{k}.wav", media.load_audio(path, MIX_SR, mono=True), MIX_SR)
        outputs.stems_singers = [f"stems/singer{k}.wav" for k in range(len(singers))]
    metrics = Metrics(seconds_of_video=round(info.duration, 3), frames=n_frames,
                      resolution=f"{info.width}x{info.height}", source_fps=info.fps)
    return Result(outputs=outputs, metrics=metrics)


STAGE = Stage(name="ingest", version="1", params=Params, outputs=Outputs, metrics=Metrics, process=process,
              needs=(), description="probe, timeline at the pipeline's fps, audio extraction, stems import")
