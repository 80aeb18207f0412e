"""FaceFormer baseline (Fan et al., CVPR 2022), adapted "with the least modification" (paper §5.1).

What FaceFormer is, and what we keep:
- an autoregressive transformer decoder over the PAST motion: the input at frame t is a motion
  encoding of the frame t-1 output (linear), frame 0's input is a start embedding (FaceFormer: the
  speaking-style one-hot; here: the frame-0 pose, the only identity-like input every variant gets);
- periodic positional encoding (PPE): sinusoids of ``t mod period`` instead of ``t``, so the
  encoding repeats and the model generalises to sequences longer than those it trained on;
- biased causal self-attention (ALiBi-style): frame i may attend to j ≤ i with the score bias
  ``-slope_h · floor((i - j) / period)`` (constant within a period, decreasing linearly with the
  distance in periods), one geometric slope per head; -inf above the diagonal;
- an alignment mask on the cross-attention: frame t attends only to its own audio frame (the audio
  features are interpolated to the motion frame rate, as FaceFormer does for VOCASET);
- teacher forcing in training and step-by-step generation at inference.

What we adapt: the output is our 56 FLAME coefficients per frame (exp 50, jaw 3, pose 3) instead of
vertex offsets; the audio encoder is the one every variant uses (``pachorus.model.audio``) on the
HOST vocal only; the pose is predicted as a residual anchored at frame 0 (pose = pose0 + Δ,
Δ[0] = 0), exactly like the other variants, so every row of Table 2 gets the same inputs.

Training: FaceFormer's released code trains autoregressively (each step fed its own previous
predictions, T sequential decoder passes per batch). We train with teacher forcing (the shifted
ground truth as input, one parallel pass): T = 60–150 sequential passes per step would make this
baseline 60–150× slower to train on CPU than the others, so "equal steps" would no longer mean equal
compute. The cost is exposure bias at generation time, which the evaluation (generation, no ground
truth beyond pose0) measures honestly.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .audio import SinusoidalPE, to_frames


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """Per-head slopes 2^(-8/n · (h+1)) (ALiBi's geometric sequence; for non-powers of two, the
    nearest power's sequence plus every other slope of the next one)."""
    def pow2(n: int) -> list[float]:
        start = 2 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]
    if math.log2(n_heads).is_integer():
        return torch.tensor(pow2(n_heads))
    p = 2 ** math.floor(math.log2(n_heads))
    return torch.tensor(pow2(p) + pow2(2 * p)[0::2][: n_heads - p])


def biased_causal_mask(n_heads: int, n_frames: int, period: int) -> torch.Tensor:
    """(n_heads, T, T) additive attention mask: -slope_h · floor((i - j) / period) for j ≤ i, -inf for j > i."""
    i = torch.arange(n_frames)[:, None]
    j = torch.arange(n_frames)[None, :]
    dist = torch.div(i - j, period, rounding_mode="floor").clamp(min=0).float()
    bias = -alibi_slopes(n_heads)[:, None, None] * dist[None]
    return bias.masked_fill((j > i)[None], float("-inf"))


def alignment_mask(n_frames: int, device=None) -> torch.Tensor:
    """(T, T) boolean cross-attention mask, True = blocked: frame t sees only audio frame t."""
    return ~torch.eye(n_frames, dtype=torch.bool, device=device)


def PeriodicPE(dim: int, period: int, max_len: int = 4096) -> SinusoidalPE:
    """Sinusoidal encoding of ``t mod period`` (FaceFormer's PPE)."""
    return SinusoidalPE(dim, max_len=max_len, period=period)


class FaceFormer(nn.Module):
    """Host audio features + frame-0 pose -> (B, T, 56) coefficients, autoregressively.

    The motion fed back (and predicted) is ``[exp, jaw, pose - pose0]``: motion relative to frame 0,
    the quantity every variant predicts.
    """

    def __init__(self, d_model: int, n_heads: int, n_layers: int, ff_mult: int, dropout: float,
                 audio_dim: int, period: int = 30):
        super().__init__()
        self.n_heads, self.period = n_heads, period
        self.audio_proj = nn.Linear(audio_dim, d_model)
        self.motion_enc = nn.Linear(56, d_model)
        self.start = nn.Linear(3, d_model)       # the start token from pose0 (FaceFormer: style one-hot)
        self.ppe = PeriodicPE(d_model, period)
        layer = nn.TransformerDecoderLayer(d_model, n_heads, ff_mult * d_model, dropout, batch_first=True,
                                           norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, n_layers)
        self.out = nn.Linear(d_model, 56)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def _decode(self, inputs: torch.Tensor, mem: torch.Tensor) -> torch.Tensor:
        """Decoder over the first L = inputs.shape[1] frames (causal, biased, aligned) -> raw (B, L, 56)."""
        b, L = inputs.shape[:2]
        tgt_mask = biased_causal_mask(self.n_heads, L, self.period).to(inputs.device, inputs.dtype)
        tgt_mask = tgt_mask.repeat(b, 1, 1)   # (B·heads, L, L), batch-major as nn.MultiheadAttention expects
        mem_mask = alignment_mask(L, inputs.device)
        return self.out(self.decoder(self.ppe(inputs), mem[:, :L], tgt_mask=tgt_mask, memory_mask=mem_mask))

    @staticmethod
    def _finish(raw: torch.Tensor) -> torch.Tensor:
        """Anchor the pose residual at frame 0 (Δ[0] = 0), like every other variant."""
        return torch.cat([raw[..., :53], raw[..., 53:] - raw[:, :1, 53:]], dim=-1)

    def memory(self, host_feat: torch.Tensor, n_frames: int) -> torch.Tensor:
        return to_frames(self.audio_proj(host_feat), n_frames)

    def teacher_forced(self, host_feat: torch.Tensor, pose0: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
        """One parallel pass with the shifted ground truth ``motion`` (B, T, 56, pose relative to pose0) as input."""
        n = motion.shape[1]
        inputs = torch.cat([self.start(pose0)[:, None], self.motion_enc(motion[:, :-1])], dim=1)
        return self._finish(self._decode(inputs, self.memory(host_feat, n)))

    def generate(self, host_feat: torch.Tensor, pose0: torch.Tensor, n_frames: int) -> torch.Tensor:
        """Step-by-step generation: frame t is decoded from the outputs of frames < t (no ground truth)."""
        mem = self.memory(host_feat, n_frames)
        inputs = self.start(pose0)[:, None]
        out = None
        for t in range(n_frames):
            out = self._finish(self._decode(inputs, mem))          # (B, t+1, 56)
            if t + 1 < n_frames:
                inputs = torch.cat([inputs, self.motion_enc(out[:, -1:])], dim=1)
        return out
