"""Training loss (paper Eq. 7–8): w1·MSE + w2·KL + w3·velocity, with the lips emphasised.

- MSE and velocity are over the 56 coefficients with per-group weights: expression 1, jaw
  ``jaw_weight`` (the jaw opens the mouth: the coefficient-space stand-in for FLAME's lip mask) and
  pose ``pose_weight`` (radians are ~10× smaller than expression coefficients; the weight keeps the
  pose gradient from vanishing). Weights are normalised so the weighted MSE is a mean.
- KL: the paper's Σ(σ² + μ² − log σ² − 1) over latent dims, averaged over the batch (no ½).
- Coefficient groups the fit did not estimate (LMDB meta ``coeff_groups``; e.g. the landmarks fit
  backend has no expression) get weight 0 in MSE and velocity, and are zeroed in both prediction
  and target before the vertex loss: their stored values are meaningless, not ground truth.
- Optional vertex lip loss when a FLAME model is given: MSE over lip-mask vertices with the head
  pose zeroed, in millimetres (metres would make it ~1e-6 and useless next to the rest).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch

from .model.pachorus import ModelOutput
from chorushead.core.windows import GROUPS, JAW, POSE

GROUP_SLICES = GROUPS


@dataclass
class LossConfig:
    w_mse: float = 1.0
    w_kl: float = 0.005
    w_vel: float = 1.0
    jaw_weight: float = 5.0
    pose_weight: float = 5.0
    w_lip_vertex: float = 0.0   # > 0 needs a FLAME model (train --flame DIR)

    @classmethod
    def from_dict(cls, d: dict) -> "LossConfig":
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})

    def to_dict(self) -> dict:
        return asdict(self)


def coeff_weights(cfg: LossConfig, device=None, groups=tuple(GROUP_SLICES)) -> torch.Tensor:
    """Per-coefficient weights (mean 1); groups not in ``groups`` get 0."""
    w = torch.ones(56, device=device)
    w[JAW] = cfg.jaw_weight
    w[POSE] = cfg.pose_weight
    for g, sl in GROUP_SLICES.items():
        if g not in groups:
            w[sl] = 0.0
    return w / w.mean()


def zero_absent(coeffs: torch.Tensor, groups) -> torch.Tensor:
    """Copy of ``coeffs`` (..., 56) with the groups not in ``groups`` set to 0."""
    out = coeffs.clone()
    for g, sl in GROUP_SLICES.items():
        if g not in groups:
            out[..., sl] = 0.0
    return out


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return (logvar.exp() + mu ** 2 - logvar - 1).sum(-1).mean()


class PaChorusLoss:
    def __init__(self, cfg: LossConfig, flame=None, groups=tuple(GROUP_SLICES)):
        """``groups``: the coefficient groups the training data really has (the rest is masked out)."""
        self.cfg, self.flame, self.groups = cfg, flame, tuple(groups)
        if not self.groups:
            raise ValueError("no coefficient group to learn: coeff_groups is empty")
        if cfg.w_lip_vertex > 0 and flame is None:
            raise ValueError("w_lip_vertex > 0 needs a FLAME model (--flame DIR)")
        self.lips = None if flame is None else torch.as_tensor(flame.masks["lips"])

    def __call__(self, out: ModelOutput, target: torch.Tensor) -> dict[str, torch.Tensor]:
        c = self.cfg
        w = coeff_weights(c, target.device, self.groups)
        pred = out.coeffs.float()
        mse = (((pred - target) ** 2) * w).mean()
        vel = ((((pred[:, 1:] - pred[:, :-1]) - (target[:, 1:] - target[:, :-1])) ** 2) * w).mean()
        kl = kl_divergence(out.mu.float(), out.logvar.float()) if out.mu is not None else pred.new_zeros(())
        total = c.w_mse * mse + c.w_kl * kl + c.w_vel * vel
        parts = {"mse": mse, "kl": kl, "vel": vel}
        if c.w_lip_vertex > 0:
            vp = self.flame.vertices(zero_absent(pred, self.groups), zero_pose=True)[..., self.lips, :]
            vt = self.flame.vertices(zero_absent(target, self.groups), zero_pose=True)[..., self.lips, :]
            lip = (((vp - vt) * 1000.0) ** 2).mean()
            total = total + c.w_lip_vertex * lip
            parts["lip_vertex"] = lip
        parts["loss"] = total
        return parts
