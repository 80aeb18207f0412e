"""bgm_split: the mix -> vocals + accompaniment with Spleeter 2stems (paper §3, "audio track separation").

Input: ingest's ``audio_44k`` (stereo float wav). Output: ``vocals.wav`` and ``accompaniment.wav``,
stereo float32 at 44.1 kHz, exactly as long as the input (no 600 s cut; see spleeter_worker.py).
When the user supplied stems, nothing is separated: the stage is "skipped" and points at them.

Spleeter runs in its own venv through a long-lived worker started once per runner worker
(``setup``), so TensorFlow is imported once, not once per song.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from chorushead.backends import spleeter as spleeter_backend
from chorushead.backends.spleeter import SpleeterBackend
from chorushead.core.media import read_wav, resample, write_wav
from chorushead.core.errors import BadInput
from chorushead.core.shapes import Metrics as MetricsShape, Outputs as OutputsShape
from chorushead.stages import ingest
from chorushead.stages.base import EXEC, Context, Result, Stage, check_chunking

SR = 44100


@dataclass
class Params:
    model: str = "2stems"             # Spleeter model name, looked up at <model_path>/<model>
    # default: $MODEL_PATH, else $CHORUSHEAD_HOME/models/spleeter, else the checkout's pretrained_models
    # (core/assets.py). Where the model lives is not what it is: the identity below hashes its files.
    model_path: str = field(default="", metadata=EXEC)
    # Which interpreter runs Spleeter (default $CHORUSHEAD_SPLEETER_PYTHON, $CHORUSHEAD_HOME/envs/spleeter,
    # the checkout's envs/spleeter) and whether in-process: execution only, the identity records the
    # Spleeter/TensorFlow versions of the environment that runs.
    python: str = field(default="", metadata=EXEC)
    in_process: str = field(default="auto", metadata=EXEC)   # auto: only if this interpreter imports spleeter; never; always
    chunk_seconds: float = 60.0       # memory bound: ~1.3 GB per 60 s chunk instead of ~12 GB for 10 min
    overlap_seconds: float = 4.0      # cross-faded between chunks
    timeout_seconds: float = field(default=7200.0, metadata=EXEC)   # per song: a limit, not a result

    def __post_init__(self):
        check_chunking(self.chunk_seconds, self.overlap_seconds)


@dataclass
class Outputs(OutputsShape):
    vocals: str                       # stereo float32, 44.1 kHz (skipped: the user's stem)
    accompaniment: str


@dataclass
class Metrics(MetricsShape):
    seconds_audio: float
    vocals_rms: float
    accompaniment_rms: float
    spleeter: str                     # where Spleeter ran (in-process or the worker's python)


def setup(params: Params) -> SpleeterBackend:
    return SpleeterBackend.open(python=params.python, model_path_=params.model_path, model=params.model,
                                in_process=params.in_process)


def identity(params: Params) -> dict:
    """The model files and the Spleeter/TensorFlow versions that will run (Stage.identity)."""
    return spleeter_backend.identity(python=params.python, model_path_=params.model_path, model=params.model,
                                     in_process=params.in_process)


def _as_stereo(a: np.ndarray) -> np.ndarray:
    if a.ndim == 1:
        return np.stack([a, a], axis=1)
    if a.shape[1] == 2:
        return a
    if a.shape[1] == 1:
        return np.repeat(a, 2, axis=1)
    return a[:, :2]                   # >2 channels: ingest should not produce these; keep front L/R


def process(ctx: Context, params: Params, model: SpleeterBackend) -> Result:
    ing = ingest.Outputs.of(ctx.upstream["ingest"])
    if ing.stems_vocals and ing.stems_accompaniment:
        # Output values starting with "items/" are relative to the build root (runner convention).
        return Result(status="skipped", reason="stems supplied",
                      outputs=Outputs(vocals=ing.stems_vocals, accompaniment=ing.stems_accompaniment))
    if not ing.audio_44k:
        raise BadInput("the video has no audio track and no stems were supplied")
    mix, sr = read_wav(ctx.path(ing.audio_44k))
    if mix.size == 0:
        raise BadInput("the video's audio track is empty")
    mix = _as_stereo(resample(mix, sr, SR) if sr != SR else mix)
    stems = model.separate(mix, ctx.tmp, params.chunk_seconds, params.overlap_seconds,
                           timeout=params.timeout_seconds)
    outputs = {}
    for name in ("vocals", "accompaniment"):
        if name not in stems:
            raise BadInput(f"Spleeter model {params.model} gave no '{name}' stem (got {sorted(stems)})")
        write_wav(Path(ctx.tmp) / f"{name}.wav", stems[name], SR)
        outputs[name] = f"{name}.wav"
    rms = lambda a: float(np.sqrt(np.mean(np.square(a, dtype=np.float64))))  # noqa: E731
    return Result(outputs=Outputs(**outputs),
                  metrics=Metrics(seconds_audio=mix.shape[0] / SR, vocals_rms=rms(stems["vocals"]),
                                  accompaniment_rms=rms(stems["accompaniment"]), spleeter=str(model.where)))


STAGE = Stage(name="bgm_split", version="1", params=Params, outputs=Outputs, metrics=Metrics, process=process,
              setup=setup, needs=("ingest", "screen"), identity=identity,
              gpu=False, description="Spleeter 2stems: vocals + accompaniment at 44.1 kHz")
