"""Audio encoders: wav2vec2 (the paper's; weights from a hub id or a local folder) or log-mel (no weights).

Both map a batch of 16 kHz waveforms (B, N) to features (B, T_a, out_dim) at ~50 Hz; the branches
interpolate those to the motion frame rate themselves. 16 kHz is the encoders' input rate (wav2vec2
was pretrained on it), so the trainer refuses LMDBs packed at another rate.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


ENCODER_SR = 16000  # the audio encoders' input sample rate (a model property, not a data one)


class AudioEncoderUnavailable(RuntimeError):
    """wav2vec2 weights could not be loaded (offline without a local copy, wrong path, ...)."""


def _mel_filters(sr: int, n_fft: int, n_mels: int, fmin: float = 50.0, fmax: float | None = None) -> np.ndarray:
    """Triangular HTK-style mel filterbank (n_mels, n_fft // 2 + 1)."""
    fmax = fmax or sr / 2
    mel = lambda f: 2595 * np.log10(1 + f / 700.0)  # noqa: E731
    hz = lambda m: 700 * (10 ** (m / 2595.0) - 1)  # noqa: E731
    pts = hz(np.linspace(mel(fmin), mel(fmax), n_mels + 2))
    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    fb = np.zeros((n_mels, len(freqs)), np.float32)
    for i in range(n_mels):
        lo, c, hi = pts[i], pts[i + 1], pts[i + 2]
        fb[i] = np.clip(np.minimum((freqs - lo) / (c - lo), (hi - freqs) / (hi - c)), 0, None)
    return fb


class LogMelEncoder(nn.Module):
    """Log-mel spectrogram (20 ms hop, like wav2vec2's 50 Hz) + two 1-D convolutions. No pretrained weights."""

    def __init__(self, out_dim: int = 64, sr: int = ENCODER_SR, n_mels: int = 40, n_fft: int = 512, hop: int = 320):
        super().__init__()
        self.n_fft, self.hop, self.out_dim = n_fft, hop, out_dim
        self.register_buffer("fb", torch.from_numpy(_mel_filters(sr, n_fft, n_mels)), persistent=False)
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.norm = nn.LayerNorm(n_mels)
        self.conv = nn.Sequential(nn.Conv1d(n_mels, out_dim, 3, padding=1), nn.GELU(),
                                  nn.Conv1d(out_dim, out_dim, 3, padding=1), nn.GELU())

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # nothing learnable before the log-mel: skip its autograd graph
            spec = torch.view_as_real(torch.stft(wave.float(), self.n_fft, self.hop, window=self.window,
                                                 center=True, return_complex=True)).pow(2).sum(-1)  # (B, F, T)
            logmel = torch.log(torch.einsum("mf,bft->btm", self.fb, spec) + 1e-6)
        return self.conv(self.norm(logmel).transpose(1, 2)).transpose(1, 2)


class Wav2Vec2Encoder(nn.Module):
    """wav2vec2 via transformers; the convolutional feature extractor (the paper's "TCN") is frozen."""

    def __init__(self, name_or_path: str):
        super().__init__()
        try:
            from transformers import Wav2Vec2Model
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise AudioEncoderUnavailable(
                "wav2vec2 needs the `transformers` package: pip install 'chorushead[wav2vec]'") from e
        try:
            self.model = Wav2Vec2Model.from_pretrained(name_or_path)
        except Exception as e:  # OSError offline, ValueError on bad configs, ...
            raise AudioEncoderUnavailable(
                f"could not load wav2vec2 weights from {name_or_path!r} ({type(e).__name__}: {e}). "
                "Without internet, download the model elsewhere (e.g. `huggingface-cli download "
                "facebook/wav2vec2-base-960h --local-dir w2v`) and pass the local folder, "
                "or use --audio-encoder logmel.") from e
        self.model.freeze_feature_encoder()
        self.out_dim = int(self.model.config.hidden_size)
        self.name_or_path = name_or_path

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        # wav2vec2 expects zero-mean unit-variance input (what its feature extractor does).
        wave = (wave - wave.mean(-1, keepdim=True)) / (wave.std(-1, keepdim=True) + 1e-5)
        return self.model(wave).last_hidden_state


def build_audio_encoder(spec: str, dim: int) -> nn.Module:
    """``logmel`` or ``wav2vec2:<hub id or local folder>``."""
    if spec == "logmel":
        return LogMelEncoder(out_dim=dim)
    if spec.startswith("wav2vec2:"):
        return Wav2Vec2Encoder(spec.split(":", 1)[1])
    raise ValueError(f"unknown audio encoder {spec!r}: use 'logmel' or 'wav2vec2:<hub id or folder>'")


class SinusoidalPE(nn.Module):
    """Sinusoidal position encoding, added to the input; with ``period``, of ``t mod period``
    (FaceFormer's periodic PE)."""

    def __init__(self, dim: int, max_len: int = 4096, period: int | None = None):
        super().__init__()
        pos = torch.arange(max_len)[:, None]
        if period:
            pos = pos % period
        div = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))
        pe = torch.zeros(max_len, dim)
        pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * div), torch.cos(pos * div)[:, : dim // 2]
        self.register_buffer("pe", pe, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pe[: x.shape[1]]


def to_frames(feat: torch.Tensor, n_frames: int) -> torch.Tensor:
    """Linear interpolation of (B, T_a, D) audio features to (B, n_frames, D) at the motion frame rate."""
    return nn.functional.interpolate(feat.transpose(1, 2), size=n_frames, mode="linear",
                                     align_corners=False).transpose(1, 2)
