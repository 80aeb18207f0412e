"""PaChorus (paper §4): Host Animator + Partner-aware Motion Prior, its ablations and a mono baseline.

How the two branches' poses combine (the paper leaves it open; our choice):

    jaw             = Host Animator (host vocal only)
    exp             = Host Animator (host vocal) + E_prior
    pose            = pose0 + Δ_prior + Δ_host
    Δ_prior, E_prior = CVAE decoder(z, partner, BGM, pose0); Δ_prior anchored: Δ_prior[0] = 0
    Δ_host          = the animator's pose residual (host vocal), anchored: Δ_host[0] = 0

Anchoring makes the predicted first frame equal the given frame-0 pose exactly (paper Eq. 6:
β = F0 + Δβ), so every variant predicts motion *relative to* frame 0 and gets the same pose0 input.
The host residual lets the host's own singing move the head; the prior adds partner/BGM-driven motion.

E_prior (``ModelConfig.prior_expression``, on by default): the prior's decoder also writes a residual
on the 50 expression coefficients (never the jaw). Eq. 4 has the prior predict the pose only, but the
paper also says the partner and BGM "provide emotion priors" (§4.2), that a listener shares "a similar
emotional expression" with the singing partner (§4.4), and Table 3 has w/o prior lose LVE, FVE and FDD,
which §5.3 measures with the head pose fixed: with a pose-only prior those columns could not move.
The mouth opening (jaw) stays the host vocal's alone. ``prior_expression=False`` is Eq. 4 to the letter
(and what checkpoints written before the setting were trained as).

Variants (``ModelConfig.variant``):
- ``full``: both branches; KL weight from the loss config.
- ``no_kl``: same network, trained with KL weight 0 (the trainer zeroes it).
- ``no_bgm``: the prior is conditioned on the partner only.
- ``no_prior``: Host Animator alone (pose = pose0 + Δ_host).
- ``mono``: the paper's Eq. 2 with our animator: the same Host Animator as ``full`` (same band, same
  position encodings) on host audio + pose0, without partner, BGM and prior, so full vs mono
  measures the partner-aware branch alone (its network is ``no_prior``'s; the rows differ by seeds).
- ``mono_causal``: a FaceFormer-style causal baseline on host audio only (+ pose0): causal
  self-attention and a diagonal alignment mask for audio cross-attention (FaceFormer's two masks),
  one decoder for all 56 coefficients; not autoregressive on its own past motion. (Checkpoints
  written before ``mono`` changed meaning load as ``mono_causal``.)
- ``faceformer``: FaceFormer as released (autoregressive over past motion, periodic positional
  encoding, biased causal attention, alignment mask, one post-norm layer, dropout 0.1, style = pose0
  on every input token), host audio + pose0, trained autoregressively on its own predictions
  (``faceformer_teacher_forcing`` for teacher forcing) and generated step by step otherwise (see
  :mod:`pachorus.model.faceformer`).

Latent at test time: ``z = 0`` (the prior's mean) for evaluation, ``z ~ N(0, I)`` for K samples.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from chorushead.core.windows import EXP, EXP_JAW, JAW, N_EXP, POSE

from .audio import SinusoidalPE, build_audio_encoder, to_frames
from .faceformer import FaceFormer

VARIANTS = ("full", "no_bgm", "no_kl", "no_prior", "mono", "mono_causal", "faceformer")


@dataclass
class ModelConfig:
    variant: str = "full"
    audio_encoder: str = "logmel"   # or "wav2vec2:<hub id or local folder>"
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    ff_mult: int = 2
    latent: int = 16
    dropout: float = 0.1
    period: int = 30                # faceformer: PPE / attention-bias period in frames (FaceFormer's 25 at 25 fps)
    # The host animator's self-attention sees frames within ±attn_band of its own (0 = the whole window).
    # 3 frames = ±100 ms at 30 fps: the paper's animator follows FaceFormer, whose alignment mask ties
    # each frame to its own audio; a short non-causal band keeps that locality (a lip shape depends on
    # the phoneme and its neighbours, ~±100 ms of coarticulation) without FaceFormer's causality.
    # Measured (issue 19): without it, attention stays near uniform after training (entropy 3.95 of
    # 4.09 nats), every frame pools the whole window and LVE loses to the causal baseline.
    attn_band: int = 3
    memory_pe: bool = True          # position encoding on the cross-attention memory (the audio frames)
    prior_expression: bool = True   # the prior also writes an expression residual (module doc; False = Eq. 4)
    # faceformer only: FaceFormer's released code (EvelynFan/FaceFormer), whatever the settings above
    # say for the other variants. Older checkpoints load with LEGACY (teacher-forced, style on the start
    # token only, pre-norm, n_layers layers, the shared dropout).
    faceformer_teacher_forcing: bool = False   # False: train autoregressively on its own predictions
    faceformer_layers: int | None = 1          # decoder layers; None = n_layers
    faceformer_dropout: float | None = 0.1     # decoder + PPE dropout; None = `dropout`, no PPE dropout
    faceformer_post_norm: bool = True          # post-norm decoder layer (False: pre-norm)
    faceformer_style_every_token: bool = True  # pose0 (style) embedding on every decoder input, not frame 0's only

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.attn_band < 0:
            raise ValueError(f"attn_band must be >= 0 (0 = no band), got {self.attn_band}")
        if self.faceformer_layers is not None and self.faceformer_layers < 1:
            raise ValueError(f"faceformer_layers must be >= 1 (or None = n_layers), got {self.faceformer_layers}")
        if self.faceformer_dropout is not None and not 0 <= self.faceformer_dropout < 1:
            raise ValueError(f"faceformer_dropout must be in [0, 1) (or None = dropout), got {self.faceformer_dropout}")

    # What a checkpoint written before a setting existed was trained with (not today's default).
    LEGACY = {"attn_band": 0, "memory_pe": False, "prior_expression": False, "faceformer_teacher_forcing": True, "faceformer_layers": None,
              "faceformer_dropout": None, "faceformer_post_norm": False, "faceformer_style_every_token": False}

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        kw = {**cls.LEGACY, **{f.name: d[f.name] for f in fields(cls) if f.name in d}}
        if "attn_band" not in d and kw.get("variant") == "mono":
            kw["variant"] = "mono_causal"   # what "mono" was before it became Eq. 2 with our animator
        return cls(**kw)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ModelOutput:
    coeffs: torch.Tensor                 # (B, T, 56)
    mu: torch.Tensor | None = None       # (B, latent) posterior mean (training only)
    logvar: torch.Tensor | None = None


def _encoder(cfg: ModelConfig) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(cfg.d_model, cfg.n_heads, cfg.ff_mult * cfg.d_model, cfg.dropout,
                                       batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)


def _anchor(x: torch.Tensor) -> torch.Tensor:
    """Make a residual sequence zero at frame 0."""
    return x - x[:, :1]


class HostAnimator(nn.Module):
    """Host vocal -> linear -> interpolate to the motion frame rate -> transformer decoder -> 56 coefficients.

    The decoder's queries are the frame-rate audio features + position + a pose0 embedding; it
    cross-attends to the same features (+ position, ``memory_pe``). Self-attention is limited to a
    ±``attn_band`` frame band; ``causal=True`` gives the FaceFormer-style masks instead.
    """

    def __init__(self, cfg: ModelConfig, audio_dim: int, causal: bool = False):
        super().__init__()
        d = cfg.d_model
        self.causal = causal
        self.band, self.memory_pe = cfg.attn_band, cfg.memory_pe
        self.proj = nn.Linear(audio_dim, d)
        self.pe = SinusoidalPE(d)
        self.pose0 = nn.Linear(3, d)
        layer = nn.TransformerDecoderLayer(d, cfg.n_heads, cfg.ff_mult * d, cfg.dropout,
                                           batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, cfg.n_layers)
        self.out = nn.Linear(d, 56)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def masks(self, n_frames: int, device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(self-attention mask, memory mask), True = not allowed."""
        i = torch.arange(n_frames, device=device)
        if self.causal:
            tgt = i[None, :] > i[:, None]
            return tgt, i[None, :] != i[:, None]
        if self.band:
            return (i[None, :] - i[:, None]).abs() > self.band, None
        return None, None

    def inputs(self, host_feat: torch.Tensor, pose0: torch.Tensor, n_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(queries, memory) at the motion frame rate."""
        mem = to_frames(self.proj(host_feat), n_frames)
        q = self.pe(mem) + self.pose0(pose0)[:, None]
        return q, (self.pe(mem) if self.memory_pe else mem)

    def forward(self, host_feat: torch.Tensor, pose0: torch.Tensor, n_frames: int) -> torch.Tensor:
        q, mem = self.inputs(host_feat, pose0, n_frames)
        tgt_mask, mem_mask = self.masks(n_frames, q.device)
        h = self.decoder(q, mem, tgt_mask=tgt_mask, memory_mask=mem_mask)
        return self.out(h)

    @torch.no_grad()
    def self_attention(self, host_feat: torch.Tensor, pose0: torch.Tensor, n_frames: int) -> torch.Tensor:
        """The first decoder layer's self-attention weights (B, T, T), averaged over heads: what
        :func:`attention_diagnostic` reads."""
        q, _ = self.inputs(host_feat, pose0, n_frames)
        layer = self.decoder.layers[0]
        x = layer.norm1(q) if layer.norm_first else q
        tgt_mask, _ = self.masks(n_frames, q.device)
        _, w = layer.self_attn(x, x, x, attn_mask=tgt_mask, need_weights=True, average_attn_weights=True)
        return w


def attention_diagnostic(weights: torch.Tensor) -> dict[str, float]:
    """How local the host animator's self-attention is, from weights (B, T, T): mean entropy per
    query (nats) beside the uniform maximum log T, the weight on the query's own frame, and the mean
    attended distance in frames. Near-uniform attention (entropy ≈ log T, distance ≈ T/3) means every
    frame pools the whole window."""
    w = weights.float().clamp_min(1e-12)
    t = w.shape[-1]
    i = torch.arange(t, device=w.device, dtype=torch.float32)
    dist = (i[None, :] - i[:, None]).abs()
    return {"entropy": float(-(w * w.log()).sum(-1).mean()), "entropy_uniform": float(torch.log(torch.tensor(float(t)))),
            "own_frame_weight": float(torch.diagonal(w, dim1=-2, dim2=-1).mean()),
            "attended_distance": float((w * dist).sum(-1).mean()), "frames": int(t)}


class MotionPrior(nn.Module):
    """Transformer CVAE over the head-pose residual Δpose = pose - pose0 (B, T, 3).

    Encoder: Δpose tokens + two learned tokens -> (μ, log σ²). Decoder: partner (+ BGM) frame features
    + position + pose0 embedding + projected z -> Δpose, anchored at frame 0, and with ``expression``
    an expression residual (B, T, 50).
    """

    def __init__(self, cfg: ModelConfig, audio_dim: int, use_bgm: bool, expression: bool = False):
        super().__init__()
        d = cfg.d_model
        self.use_bgm, self.latent = use_bgm, cfg.latent
        self.pe = SinusoidalPE(d)
        self.pose_in = nn.Linear(3, d)
        self.dist_tokens = nn.Parameter(torch.randn(2, d) * 0.02)
        self.enc = _encoder(cfg)
        self.to_mu, self.to_logvar = nn.Linear(d, cfg.latent), nn.Linear(d, cfg.latent)
        self.partner_proj = nn.Linear(audio_dim, d)
        self.bgm_proj = nn.Linear(audio_dim, d) if use_bgm else None
        self.pose0 = nn.Linear(3, d)
        self.z_proj = nn.Linear(cfg.latent, d)
        self.dec = _encoder(cfg)
        self.out = nn.Linear(d, 3)
        self.out_exp = nn.Linear(d, N_EXP) if expression else None
        for lin in (self.out, self.out_exp):
            if lin is not None:
                nn.init.zeros_(lin.weight)
                nn.init.zeros_(lin.bias)

    def encode(self, dpose: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pe(self.pose_in(dpose))
        x = torch.cat([self.dist_tokens.expand(x.shape[0], -1, -1), x], dim=1)
        h = self.enc(x)
        return self.to_mu(h[:, 0]), self.to_logvar(h[:, 1]).clamp(-10, 10)

    def decode(self, z: torch.Tensor, partner_feat: torch.Tensor, bgm_feat: torch.Tensor | None,
               pose0: torch.Tensor, n_frames: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(Δpose (B, T, 3) anchored at frame 0, expression residual (B, T, 50) or None)."""
        c = to_frames(self.partner_proj(partner_feat), n_frames)
        if self.use_bgm:
            c = c + to_frames(self.bgm_proj(bgm_feat), n_frames)
        h = self.dec(self.pe(c) + self.pose0(pose0)[:, None] + self.z_proj(z)[:, None])
        return _anchor(self.out(h)), (self.out_exp(h) if self.out_exp is not None else None)


class PaChorus(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        # One audio encoder shared by host, partner and BGM streams (one wav2vec2 in memory);
        # each stream has its own projection in the branch that reads it.
        self.audio = build_audio_encoder(cfg.audio_encoder, cfg.d_model)
        adim = self.audio.out_dim
        if cfg.variant == "faceformer":
            legacy_drop = cfg.faceformer_dropout is None
            self.animator = FaceFormer(
                cfg.d_model, cfg.n_heads, cfg.faceformer_layers or cfg.n_layers, cfg.ff_mult,
                cfg.dropout if legacy_drop else cfg.faceformer_dropout, adim, cfg.period,
                post_norm=cfg.faceformer_post_norm, style_every_token=cfg.faceformer_style_every_token,
                input_dropout=0.0 if legacy_drop else cfg.faceformer_dropout)
            self.prior = None
            return
        self.animator = HostAnimator(cfg, adim, causal=cfg.variant == "mono_causal")
        self.prior = MotionPrior(cfg, adim, use_bgm=cfg.variant != "no_bgm", expression=cfg.prior_expression) \
            if cfg.variant in ("full", "no_kl", "no_bgm") else None

    def forward(self, host: torch.Tensor, partner: torch.Tensor, bgm: torch.Tensor, pose0: torch.Tensor,
                n_frames: int, target: torch.Tensor | None = None, z_mode: str = "posterior",
                generator: torch.Generator | None = None) -> ModelOutput:
        """``z_mode``: ``posterior`` (training; needs ``target``), ``mean`` (z = 0) or ``sample`` (z ~ N(0, I)).

        ``faceformer`` ignores ``z_mode``. In training mode with ``target`` it trains autoregressively, as
        FaceFormer's released code does (generated step by step from its own predictions, gradients
        through the chain; ``target`` is no input then, only the loss reads it), or teacher-forced on ``target``
        with ``faceformer_teacher_forcing``. In eval mode: teacher-forced on ``target`` when given (a
        diagnostic), generated step by step otherwise (evaluation, validation, inference)."""
        if self.cfg.variant == "faceformer":
            feat = self.audio(host)
            if target is not None and (self.cfg.faceformer_teacher_forcing or not self.training):
                motion = torch.cat([target[..., EXP_JAW], target[..., POSE] - pose0[:, None]], dim=-1)
                m = self.animator.teacher_forced(feat, pose0, motion)
            else:
                m = self.animator.generate(feat, pose0, n_frames)
            return ModelOutput(coeffs=torch.cat([m[..., EXP_JAW], pose0[:, None] + m[..., POSE]], dim=-1))
        a = self.animator(self.audio(host), pose0, n_frames)
        exp_jaw, d_host = a[..., EXP_JAW], _anchor(a[..., POSE])
        mu = logvar = None
        d_prior = torch.zeros_like(d_host)
        if self.prior is not None:
            b = host.shape[0]
            if z_mode == "posterior":
                if target is None:
                    raise ValueError("z_mode='posterior' needs the target coefficients")
                mu, logvar = self.prior.encode(target[..., POSE] - pose0[:, None])
                eps = torch.randn(mu.shape, device=mu.device, dtype=mu.dtype, generator=generator)
                z = mu + torch.exp(0.5 * logvar) * eps
            elif z_mode == "mean":
                z = torch.zeros(b, self.cfg.latent, device=host.device)
            elif z_mode == "sample":
                z = torch.randn(b, self.cfg.latent, device=host.device, generator=generator)
            else:
                raise ValueError(f"unknown z_mode {z_mode!r}")
            # Partner and BGM go through the encoder as one batch (one pass of wav2vec2).
            feats = self.audio(torch.cat([partner, bgm]) if self.prior.use_bgm else partner)
            p_feat, b_feat = (feats[:b], feats[b:]) if self.prior.use_bgm else (feats, None)
            d_prior, e_prior = self.prior.decode(z, p_feat, b_feat, pose0, n_frames)
            if e_prior is not None:   # the partner's emotion prior on the expression, never the jaw
                exp_jaw = torch.cat([exp_jaw[..., EXP] + e_prior, exp_jaw[..., JAW]], dim=-1)
        pose = pose0[:, None] + d_prior + d_host
        return ModelOutput(coeffs=torch.cat([exp_jaw, pose], dim=-1), mu=mu, logvar=logvar)


def build_model(cfg: ModelConfig | dict) -> PaChorus:
    return PaChorus(cfg if isinstance(cfg, ModelConfig) else ModelConfig.from_dict(cfg))


def load_model(path, map_location="cpu") -> tuple[PaChorus, dict]:
    """Load any checkpoint this package writes (last.pt, best.pt, model.pt) through the one safe loader."""
    from ..checkpoint import load_checkpoint
    ckpt = load_checkpoint(path, map_location=map_location)
    model = build_model(ckpt["model_config"])
    model.load_state_dict(ckpt["model"])
    model.eval()
    return model, ckpt
