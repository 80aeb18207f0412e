"""FaceFormer baseline (Fan et al., CVPR 2022), adapted "with the least modification" (paper §5.1).

What FaceFormer is, and what we keep (compared with the released code, EvelynFan/FaceFormer):
- an autoregressive transformer decoder over the PAST motion: the input at frame t is a motion
  encoding of the frame t-1 output (linear) plus the style embedding, frame 0's input is the style
  embedding alone (FaceFormer: a linear map of the speaking-style one-hot; here: of the frame-0 pose,
  the only identity-like input every variant gets), so the style is on EVERY input token;
- periodic positional encoding (PPE): sinusoids of ``t mod period`` instead of ``t``, followed by
  dropout, so the encoding repeats and the model generalises to sequences longer than those it
  trained on;
- biased causal self-attention (ALiBi-style): frame i may attend to j ≤ i with the score bias
  ``-slope_h · floor((i - j) / period)`` (constant within a period, decreasing linearly with the
  distance in periods), one geometric slope per head; -inf above the diagonal;
- an alignment mask on the cross-attention: frame t attends only to its own audio frame (the audio
  features are interpolated to the motion frame rate, as FaceFormer does for VOCASET);
- ONE post-norm ``nn.TransformerDecoderLayer`` (feed-forward 2·d, ReLU), dropout 0.1;
- autoregressive TRAINING, as the released ``main.py`` does (``teacher_forcing=False``): the input
  sequence is built from the model's own predictions frame by frame (T sequential decoder passes
  over the growing prefix, gradients through the whole chain, the loss on the last pass's T
  outputs), and step-by-step generation at inference — the same loop. Teacher forcing (the shifted
  ground truth as input, one parallel pass) stays as an option (``ModelConfig.faceformer_teacher_forcing``)
  and is what a model in eval mode computes when given a target (a diagnostic; evaluation generates).

What we adapt: the output is our 56 FLAME coefficients per frame (exp 50, jaw 3, pose 3) instead of
vertex offsets; the audio encoder is the one every variant uses (``pachorus.model.audio``) on the
HOST vocal only; the pose is predicted as a residual anchored at frame 0 (pose = pose0 + Δ,
Δ[0] = 0), exactly like the other variants, so every row of Table 2 gets the same inputs; the style
map keeps a bias (the official ``obj_vector`` has none: with a one-hot input a bias is redundant,
with a continuous pose0 it is not); the teacher-forced frame-0 input is the style embedding alone
(the official teacher-forced path feeds ``motion_map(0) + style`` there, its autoregressive path the
style alone; we use the latter in both, so teacher forcing on the generated sequence = generation).

Older checkpoints (trained before these matched the released code: teacher-forced, style on the start
token only, pre-norm, ``n_layers`` layers, the shared ``dropout``, no PPE dropout) load with exactly
that network and behaviour through ``ModelConfig.LEGACY``.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from chorushead.core.windows import EXP_JAW, POSE

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
    the quantity every variant predicts. ``self.start`` is the style embedding (a linear map of pose0).

    ``post_norm``, ``style_every_token``, ``input_dropout`` give the released code's network (True,
    True, 0.1); ``False, False, 0.0`` the one older checkpoints were trained with.
    """

    def __init__(self, d_model: int, n_heads: int, n_layers: int, ff_mult: int, dropout: float,
                 audio_dim: int, period: int = 30, *, post_norm: bool = True, style_every_token: bool = True,
                 input_dropout: float = 0.1):
        super().__init__()
        self.n_heads, self.period, self.style_every_token = n_heads, period, style_every_token
        self.audio_proj = nn.Linear(audio_dim, d_model)
        self.motion_enc = nn.Linear(56, d_model)
        self.start = nn.Linear(3, d_model)       # the style embedding from pose0 (FaceFormer: style one-hot)
        self.ppe = PeriodicPE(d_model, period)
        # FaceFormer's PPE ends in dropout; older checkpoints had none (Identity: no RNG draw either).
        self.in_drop = nn.Dropout(input_dropout) if input_dropout > 0 else nn.Identity()
        layer = nn.TransformerDecoderLayer(d_model, n_heads, ff_mult * d_model, dropout, batch_first=True,
                                           norm_first=not post_norm)
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
        return self.out(self.decoder(self.in_drop(self.ppe(inputs)), mem[:, :L], tgt_mask=tgt_mask,
                                     memory_mask=mem_mask))

    @staticmethod
    def _finish(raw: torch.Tensor) -> torch.Tensor:
        """Anchor the pose residual at frame 0 (Δ[0] = 0), like every other variant."""
        return torch.cat([raw[..., EXP_JAW], raw[..., POSE] - raw[:, :1, POSE]], dim=-1)

    def memory(self, host_feat: torch.Tensor, n_frames: int) -> torch.Tensor:
        return to_frames(self.audio_proj(host_feat), n_frames)

    def style(self, pose0: torch.Tensor) -> torch.Tensor:
        """(B, 1, d) style embedding: frame 0's input, and added to every later input when ``style_every_token``."""
        return self.start(pose0)[:, None]

    def embed_motion(self, motion: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """Decoder inputs for the frames after ``motion`` (B, L, 56): motion encoding (+ style)."""
        x = self.motion_enc(motion)
        return x + style if self.style_every_token else x

    def teacher_forced(self, host_feat: torch.Tensor, pose0: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
        """One parallel pass with the shifted ground truth ``motion`` (B, T, 56, pose relative to pose0) as input."""
        n = motion.shape[1]
        s = self.style(pose0)
        inputs = torch.cat([s, self.embed_motion(motion[:, :-1], s)], dim=1)
        return self._finish(self._decode(inputs, self.memory(host_feat, n)))

    def _last_row(self, inputs: torch.Tensor, mem_t: torch.Tensor) -> torch.Tensor:
        """The one-layer decoder's output for the LAST of ``inputs`` (B, L, d) -> raw (B, 1, 56), computing
        only that row: its query attends to the whole prefix (keys and values = the prefix's inputs,
        fresh PPE dropout each call) with the biased mask's last row, and to its own audio frame
        ``mem_t`` (B, 1, d) — the alignment mask leaves it no other. Row L-1 of a full pass over
        ``inputs`` is the same function (the released code runs that full pass and keeps only this row),
        at a fraction of the cost: T rows per sequence instead of T²/2."""
        layer = self.decoder.layers[0]
        b, L = inputs.shape[:2]
        j = torch.arange(L, device=inputs.device)
        dist = torch.div(L - 1 - j, self.period, rounding_mode="floor").to(inputs.dtype)
        bias = (-alibi_slopes(self.n_heads).to(inputs.device, inputs.dtype)[:, None] * dist)[:, None]   # (heads, 1, L)
        bias = bias.repeat(b, 1, 1)
        x = self.in_drop(self.ppe(inputs))

        def sa(q, kv):
            return layer.dropout1(layer.self_attn(q, kv, kv, attn_mask=bias, need_weights=False)[0])

        def ca(h):
            return layer.dropout2(layer.multihead_attn(h, mem_t, mem_t, need_weights=False)[0])

        def ff(h):
            return layer.dropout3(layer.linear2(layer.dropout(layer.activation(layer.linear1(h)))))

        q = x[:, -1:]
        if layer.norm_first:
            kv = layer.norm1(x)
            h = q + sa(kv[:, -1:], kv)
            h = h + ca(layer.norm2(h))
            h = h + ff(layer.norm3(h))
        else:
            h = layer.norm1(q + sa(q, x))
            h = layer.norm2(h + ca(h))
            h = layer.norm3(h + ff(h))
        return self.out(h)

    def generate(self, host_feat: torch.Tensor, pose0: torch.Tensor, n_frames: int) -> torch.Tensor:
        """Step-by-step: frame t is decoded from the outputs of frames < t (no ground truth). Inference
        runs it under ``no_grad``; autoregressive training runs it with gradients, which then flow
        through every fed-back prediction (as in the released code).

        As in the released code, the returned T frames come from one last pass over the whole input
        sequence built step by step (what the loss reads). The fed-back frames come, with one decoder
        layer, from :meth:`_last_row` (the only row of each growing-prefix pass the released code
        uses); with more layers (older checkpoints) from full passes over the growing prefix."""
        mem = self.memory(host_feat, n_frames)
        s = self.style(pose0)
        inputs = s
        if len(self.decoder.layers) != 1:
            out = None
            for t in range(n_frames):
                out = self._finish(self._decode(inputs, mem))          # (B, t+1, 56)
                if t + 1 < n_frames:
                    inputs = torch.cat([inputs, self.embed_motion(out[:, -1:], s)], dim=1)
            return out
        raw0 = None
        for t in range(n_frames - 1):
            raw = self._last_row(inputs, mem[:, t:t + 1])                # frame t, (B, 1, 56)
            raw0 = raw if raw0 is None else raw0
            step = torch.cat([raw[..., EXP_JAW], raw[..., POSE] - raw0[..., POSE]], dim=-1)   # Δpose[0] = 0
            inputs = torch.cat([inputs, self.embed_motion(step, s)], dim=1)
        return self._finish(self._decode(inputs, mem))
