"""Training loss (paper Eq. 7–8): w1·MSE + w2·KL + w3·velocity, with the lips emphasised.

- MSE and velocity are over the 56 coefficients with per-group weights: expression 1, jaw
  ``jaw_weight`` (the jaw opens the mouth: the coefficient-space stand-in for FLAME's lip mask) and
  pose ``pose_weight`` (radians are ~10× smaller than expression coefficients; the weight keeps the
  pose gradient from vanishing). Weights are normalised so the weighted MSE is a mean.
- KL: the paper's Σ(σ² + μ² − log σ² − 1) over latent dims, averaged over the batch (no ½).
- Optional vertex lip loss when a FLAME model is given: MSE over lip-mask vertices with the head
  pose zeroed, in millimetres (metres would make it ~1e-6 and useless next to the rest).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch

from .model.pachorus import ModelOutput


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


def coeff_weights(cfg: LossConfig, device=None) -> torch.Tensor:
    w = torch.ones(56, device=device)
    w[50:53] = cfg.jaw_weight
    w[53:56] = cfg.pose_weight
    return w / w.mean()


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return (logvar.exp() + mu ** 2 - logvar - 1).sum(-1).mean()


class PaChorusLoss:
    def __init__(self, cfg: LossConfig, flame=None):
        self.cfg, self.flame = cfg, flame
        if cfg.w_lip_vertex > 0 and flame is None:
            raise ValueError("w_lip_vertex > 0 needs a FLAME model (--flame DIR)")
        self.lips = None if flame is None else torch.as_tensor(flame.masks["lips"])

    def __call__(self, out: ModelOutput, target: torch.Tensor) -> dict[str, torch.Tensor]:
        c = self.cfg
        w = coeff_weights(c, target.device)
        pred = out.coeffs.float()
        mse = (((pred - target) ** 2) * w).mean()
        vel = ((((pred[:, 1:] - pred[:, :-1]) - (target[:, 1:] - target[:, :-1])) ** 2) * w).mean()
        kl = kl_divergence(out.mu.float(), out.logvar.float()) if out.mu is not None else pred.new_zeros(())
        total = c.w_mse * mse + c.w_kl * kl + c.w_vel * vel
        parts = {"mse": mse, "kl": kl, "vel": vel}
        if c.w_lip_vertex > 0:
            vp = self.flame.vertices(pred, zero_pose=True)[..., self.lips, :]
            vt = self.flame.vertices(target, zero_pose=True)[..., self.lips, :]
            lip = (((vp - vt) * 1000.0) ** 2).mean()
            total = total + c.w_lip_vertex * lip
            parts["lip_vertex"] = lip
        parts["loss"] = total
        return parts
