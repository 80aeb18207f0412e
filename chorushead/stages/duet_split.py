"""duet_split: vocals -> one track per singer with MossFormer2 (paper §3; 8 kHz model).

Long songs are separated in overlapping chunks, because MossFormer2 on a whole 4-minute song needs
memory that grows with the song (see benchmarks/bench_duet_split.py). Chunking brings two problems
that this module solves:

1. Speaker order is arbitrary in every chunk (permutation-invariant training). We align chunk c to
   what is already stitched by correlating the tracks over their overlap and picking the best
   assignment. (ClearerVoice's chunking skips this, so singers swap tracks mid-song.)
2. Output scale is arbitrary per chunk (and modelscope's pipeline peak-normalises each output to
   0.5). Per chunk we fit least-squares gains so the tracks add back up to the vocal mixture; this
   also fixes a sign flip, and it makes the cross-fade sum-preserving.

Outputs: ``singers`` (one wav per singer at the vocals' rate, 44.1 kHz) and ``singers_16k``. The
8 kHz model knows nothing above 4 kHz, so (``full_band``, default) the 8 kHz tracks are turned into
soft masks on the full-band vocals' spectrogram: below 3.8 kHz each bin goes to the tracks in
proportion to their energy there; above, in proportion to each track's 2-3.8 kHz energy in that
frame (a voice's upper band moves with its own presence band). The masks sum to one, so the
full-rate tracks add up to the vocals exactly and keep their high band (wav2vec at 16 kHz sees up
to 8 kHz). With ``full_band = false`` the 8 kHz tracks are only resampled.
With user stems the stage is "skipped": ``singers`` points at them and only 16 kHz copies are made.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from scipy.optimize import linear_sum_assignment

from chorushead.backends.crossfade import chunk_starts, crossfade_into
from chorushead.core.media import read_wav, resample, write_wav
from chorushead.core.errors import BadInput, StageError
from chorushead.core.shapes import Metrics as MetricsShape, Outputs as OutputsShape
from chorushead.stages import bgm_split, ingest
from chorushead.stages.base import EXEC, Context, Result, Stage, check_chunking

MODEL_SR = 8000
OUT_SR = 16000


@dataclass
class Params:
    n_singers: int = 2
    model: str = "damo/speech_mossformer2_separation_temporal_8k"  # hub id or a local model folder
    model_3: str = ""               # model for 3 singers (hub id or folder); none is published for MossFormer2
    # Execution only (left out of the fingerprint, see base.EXEC). allow_download: fetch a hub id missing
    # from the cache at set-up (needs internet); what was fetched is in the identity (its files).
    allow_download: bool = field(default=False, metadata=EXEC)
    # auto | cpu | cuda | cuda:1 ...: the same model and inputs; CPU and GPU kernels differ only in float
    # rounding, and moving a build to a GPU must not redo it.
    device: str = field(default="auto", metadata=EXEC)
    # chunks per forward pass: every chunk has the same length (no padding) and the model has no
    # batch-dependent layer in eval mode, so a batch only changes how many run at once (measured on CPU
    # with a random 2-block model: batch 1 and 4 give bit-identical tracks).
    batch_size: int = field(default=4, metadata=EXEC)
    chunk_seconds: float = 16.0
    overlap_seconds: float = 4.0
    full_band: bool = True          # mask the full-band vocals with the 8 kHz tracks (see module doc)

    def __post_init__(self):
        check_chunking(self.chunk_seconds, self.overlap_seconds)


@dataclass
class Outputs(OutputsShape):
    singers: list[str]              # one wav per singer at the vocals' rate (skipped: the user's stems)
    singers_16k: list[str]          # the same, mono 16 kHz


@dataclass
class Metrics(MetricsShape):
    chunks: int
    residual_ratio: float           # |mix - sum of tracks| / |mix| at 8 kHz
    track_rms: list[float]
    seam_corr_min: float | None     # None: one chunk, no seam
    seam_margin_min: float | None
    model: str


def setup(params: Params):
    from chorushead.backends.mossformer2 import MossFormer2Separator
    model = params.model if params.n_singers == 2 else params.model_3
    if not model:
        raise StageError(f"duet_split: no MossFormer2 model configured for {params.n_singers} singers "
                         f"(set duet_split.model_3 to a hub id or a folder)")
    sep = MossFormer2Separator.load(model, params.device, params.batch_size, params.allow_download)
    if sep.num_spks != params.n_singers:
        raise StageError(f"duet_split: model {sep.model_dir} separates {sep.num_spks} voices, "
                         f"but n_singers = {params.n_singers}")
    return sep


def identity(params: Params) -> dict:
    """The MossFormer2 model that will separate (Stage.identity): its id and its files' fingerprints."""
    from chorushead.backends.mossformer2 import identity as model_identity
    model = params.model if params.n_singers == 2 else params.model_3
    if not model:
        return {"missing": "duet_split.model_3"}
    return model_identity(model)


# ------------------------------------------------------------------ chunked separation (pure numpy)

@dataclass
class Stitched:
    tracks: np.ndarray                                   # (S, n): sums to the mix as well as it can
    starts: list[int]
    gains: list[list[float]] = field(default_factory=list)
    overlap_corr: list[float] = field(default_factory=list)   # mean matched correlation per seam
    overlap_margin: list[float] = field(default_factory=list)  # best minus second-best assignment


def lsq_gains(mix: np.ndarray, est: np.ndarray, ridge: float = 1e-6) -> np.ndarray:
    """Gains g minimising ||mix - sum_s g_s est_s||² (a tiny ridge keeps a silent track at ~0)."""
    a = est.astype(np.float64) @ est.T.astype(np.float64)
    a += ridge * (np.trace(a) / len(a) + 1e-12) * np.eye(len(a))
    return np.linalg.solve(a, est.astype(np.float64) @ mix.astype(np.float64))


def best_order(prev: np.ndarray, cur: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Permutation p so that cur[p[k]] continues prev[k]; with the mean matched correlation and the
    margin over the best assignment that differs (small margin: the seam was ambiguous, e.g. silence)."""
    def unit(x):
        x = x - x.mean(axis=1, keepdims=True)
        return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-9)
    corr = unit(prev) @ unit(cur).T                       # (S, S)
    rows, cols = linear_sum_assignment(-corr)
    best = corr[rows, cols].sum()
    second = -np.inf
    for k in range(len(rows)):                            # best assignment that avoids one matched pair
        c = corr.copy()
        c[rows[k], cols[k]] = -1e6
        r2, c2 = linear_sum_assignment(-c)
        second = max(second, c[r2, c2].sum())
    n = len(rows)
    margin = float((best - second) / n) if n > 1 else 1.0
    return cols, float(best / n), margin


def separate_long(mix: np.ndarray, separate: Callable[[np.ndarray], np.ndarray], chunk: int,
                  overlap: int) -> Stitched:
    """Separate a 1-D ``mix`` with ``separate((B, L)) -> (B, S, L)`` on overlapping chunks."""
    n = len(mix)
    chunk = min(chunk, n)
    starts = chunk_starts(n, chunk, overlap)
    est = separate(np.stack([mix[s:s + chunk] for s in starts]))       # (C, S, L): batched inside
    S = est.shape[1]
    out = np.zeros((S, n), np.float32)
    st = Stitched(tracks=out, starts=starts)
    end = 0
    for c, s in enumerate(starts):
        seg = mix[s:s + chunk]
        g = lsq_gains(seg, est[c])
        y = (est[c] * g[:, None]).astype(np.float32)
        ov = max(0, end - s)
        if c > 0 and ov > 0:
            perm, corr, margin = best_order(out[:, s:s + ov], y[:, :ov])
            y, g = y[perm], g[perm]
            st.overlap_corr.append(corr)
            st.overlap_margin.append(margin)
        end = crossfade_into(out.T, s, end, y.T)   # time first (views: written into out)
        st.gains.append([float(v) for v in g])
    return st


def _fit_length(a: np.ndarray, n: int) -> np.ndarray:
    return a[..., :n] if a.shape[-1] >= n else np.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, n - a.shape[-1])])


def full_band_tracks(vocals: np.ndarray, sr: int, tracks8: np.ndarray, nfft: int = 2048,
                     low_hz: float = 3800.0, band_hz: tuple[float, float] = (2000.0, 3800.0)) -> np.ndarray:
    """(n,) full-band vocals + (S, n8) 8 kHz tracks -> (S, n) tracks at ``sr`` that sum to ``vocals``."""
    from scipy.signal import istft, stft
    n = len(vocals)
    up = _fit_length(resample(tracks8.T, MODEL_SR, sr).T, n)              # (S, n)
    f, _, V = stft(vocals, sr, nperseg=nfft)                               # (F, T)
    _, _, U = stft(up, sr, nperseg=nfft)                                   # (S, F, T)
    P = (U.real ** 2 + U.imag ** 2).astype(np.float32)
    del U
    S = len(P)
    total = P.sum(0, keepdims=True)
    share = np.where(total > 1e-12, P / np.maximum(total, 1e-12), 1.0 / S)  # nobody there: split evenly
    band = (f >= band_hz[0]) & (f < band_hz[1])
    pb = P[:, band].sum(1)                                                 # (S, T)
    pbt = pb.sum(0, keepdims=True)
    hi = np.where(pbt > 1e-12, pb / np.maximum(pbt, 1e-12), 1.0 / S)
    share[:, f >= low_hz] = hi[:, None, :]
    _, y = istft(share * V[None], sr, nperseg=nfft)
    return _fit_length(y.astype(np.float32), n)


# ------------------------------------------------------------------ the stage

def _skip_with_stems(ctx: Context, singers: list[str]) -> Result:
    paths16 = []
    for rel in singers:   # the user's singer<k>.wav becomes singer<k>_16k.wav: numbers kept
        a, sr = read_wav(ctx.out / rel)
        a = a.mean(axis=1) if a.ndim == 2 else a
        name = f"{Path(rel).stem}_16k.wav"
        write_wav(Path(ctx.tmp) / name, resample(a, sr, OUT_SR), OUT_SR)
        paths16.append(name)
    return Result(status="skipped", reason="stems supplied",
                  outputs=Outputs(singers=list(singers), singers_16k=paths16))


def process(ctx: Context, params: Params, model) -> Result:
    stems = ingest.Outputs.of(ctx.upstream["ingest"]).stems_singers
    if stems:
        return _skip_with_stems(ctx, stems)
    vocals, sr = read_wav(ctx.path(bgm_split.Outputs.of(ctx.upstream["bgm_split"]).vocals))
    mono = vocals.mean(axis=1) if vocals.ndim == 2 else vocals
    if len(mono) == 0:
        raise BadInput("the vocals track is empty")
    mix8 = resample(mono, sr, MODEL_SR)
    st = separate_long(mix8, model, int(params.chunk_seconds * MODEL_SR), int(params.overlap_seconds * MODEL_SR))
    if params.full_band:
        full = full_band_tracks(mono, sr, st.tracks)
    else:
        full = _fit_length(resample(st.tracks.T, MODEL_SR, sr).T, len(mono))
    n16 = int(round(len(mono) * OUT_SR / sr))
    outputs = Outputs(singers=[], singers_16k=[])
    for k, track in enumerate(full, start=1):   # numbered from 1, as users number their stems
        write_wav(Path(ctx.tmp) / f"singer{k}.wav", track, sr)
        write_wav(Path(ctx.tmp) / f"singer{k}_16k.wav", _fit_length(resample(track, sr, OUT_SR), n16), OUT_SR)
        outputs.singers.append(f"singer{k}.wav")
        outputs.singers_16k.append(f"singer{k}_16k.wav")
    resid = float(np.linalg.norm(mix8 - st.tracks.sum(0)) / (np.linalg.norm(mix8) + 1e-9))
    metrics = Metrics(chunks=len(st.starts), residual_ratio=resid,
                      track_rms=[float(np.sqrt(np.mean(t.astype(np.float64) ** 2))) for t in st.tracks],
                      seam_corr_min=min(st.overlap_corr, default=None),
                      seam_margin_min=min(st.overlap_margin, default=None), model=str(model.model_dir))
    return Result(outputs=outputs, metrics=metrics)


STAGE = Stage(name="duet_split", version="1", params=Params, outputs=Outputs, metrics=Metrics, process=process,
              setup=setup, identity=identity,
              needs=("ingest", "screen", "bgm_split"), gpu=True, preload=("torch",),
              description="MossFormer2 (8 kHz) on the vocals, chunked with speaker-order alignment")
