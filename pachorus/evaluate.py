"""``pachorus eval``: metrics of a trained model on a split, next to a mean-motion baseline.

Predictions use z = 0 (the prior's mean): one deterministic answer per window. Vertex metrics need
FLAME; they are computed with the global head rotation zeroed (paper §5.3; the paper's columns), in
millimetres (squared LVE in mm²), and again with the head pose applied (``*_posed``: a pose error then
moves the lips too). ``FDD_abs`` is the mean over sequences of |FDD| (signed FDDs of opposite sign
cancel in the mean; their magnitudes do not). Without FLAME, PPE and coefficient errors are still reported.

Beyond the paper: ``silent_jaw`` / ``silent_jaw_gt`` = mean jaw opening (rad: the jaw joint's
axis-angle magnitude, coefficients 50..53, also with FLAME) over the frames where the HOST's vocal
track is below ``silence_db`` dBFS (RMS per motion frame), pooled over the split; ``silent_fraction``
says how many frames that was. For variants with a motion prior: ``diversity_pose`` = mean pairwise
L2 distance (rad) between the poses of K samples z ~ N(0, I) of one window, averaged over windows,
and the posterior-collapse check ``active_units`` of ``latent``: latent dimensions whose KL(q(z|Δpose)
‖ N(0, I)), averaged over the split, exceeds 0.01 nats (the per-dimension KLs are under
``posterior``). Both are null for variants without a prior.

Identity: where a window carries its singers' shape codes (EMOCA's, packed per segment), vertex
metrics are computed on each sample's own head (FLAME with the host's shape code, prediction and
ground truth alike); samples without one use FLAME's mean head. The result says how many samples
had their own head (``identity``); the CLI prints it under the table.

Mean-motion baseline: expression and jaw = their mean over the training split, pose = frame-0 pose
held constant (it gets the same pose0 the models get).

Coefficient groups the LMDB's fit did not estimate (meta ``coeff_groups``, e.g. no ``exp`` from the
landmarks backend) are masked: their coefficient errors are not reported, PPE needs ``pose``, and
vertex metrics are computed with the absent groups zeroed in BOTH prediction and ground truth. The
report lists the masked groups. A checkpoint trained on other data facts (fps, sample rate, fit
backend, groups) is refused.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from . import metrics as M
from .checkpoint import ALL_GROUPS, check_same_data, data_info
from .data import HostWindowDataset
from .model.pachorus import PaChorus, load_model
from .vertices import head_vertices
from chorushead.core.windows import GROUPS, JAW, POSE

GROUP_SLICES = GROUPS

MM = 1000.0  # FLAME is in metres
SILENCE_DB = -40.0     # host vocal RMS per frame below this (dBFS) = the host is silent
ACTIVE_KL = 0.01       # nats: a latent dimension with a larger mean KL is active
COLUMNS = [("LVE_sq", "LVE sq (CodeTalker) mm²"), ("LVE_l2", "LVE L2 (SingingHead) mm"),
           ("FVE_max", "FVE max-L2 mm"), ("FVE_mean", "FVE mean-L2 (SingingHead) mm"),
           ("FDD", "FDD (CodeTalker) mm²"), ("FDD_abs", "abs FDD mm²"),
           ("LVE_l2_posed", "LVE L2 posed mm"), ("FVE_max_posed", "FVE max-L2 posed mm"),
           ("PPE", "PPE rad"), ("exp_mse", "exp MSE"), ("jaw_mse", "jaw MSE"),
           ("silent_jaw", "silent jaw rad")]   # silent_jaw_gt, diversity, active units: lines under the table


def train_mean_coeffs(data: str | Path, max_windows: int = 2000) -> np.ndarray:
    """Mean coefficient vector over (up to ``max_windows`` evenly spaced) training windows."""
    ds = HostWindowDataset(data, "train")
    r = ds.reader
    idx = np.linspace(0, len(r) - 1, min(len(r), max_windows)).astype(int) if len(r) else []
    return np.mean([r[int(i)].coeffs.reshape(-1, 56).mean(0) for i in idx], axis=0).astype(np.float32)


def sequence_metrics(pred: np.ndarray, gt: np.ndarray, flame=None, groups=ALL_GROUPS,
                     shape: np.ndarray | None = None, host: np.ndarray | None = None, sr: int | None = None,
                     fps: float | None = None, silence_db: float = SILENCE_DB) -> dict[str, float]:
    """All metrics for one (T, 56) prediction/GT pair, over the coefficient groups in ``groups``; vertex
    metrics on the head of identity ``shape`` (100,), or FLAME's mean head when None. With the host's
    vocal audio ``host`` (at ``sr``, motion at ``fps``): the jaw opening on the host's silent frames,
    ``silent_jaw`` (prediction) and ``silent_jaw_gt`` (None when no frame is silent), and their count
    ``silent_frames`` of ``frames``."""
    out = {k: v for k, v in M.coeff_mse(pred, gt).items() if k.split("_")[0] in groups}
    if "pose" in groups:
        out["PPE"] = M.ppe(pred[:, POSE], gt[:, POSE])
    if host is not None and "jaw" in groups:
        if sr is None or fps is None:
            raise ValueError("silent-jaw needs the audio's sample rate and the motion's fps")
        silent = M.silent_frames(host, sr, fps, len(gt), silence_db)
        out["silent_jaw"], n = M.silent_jaw(pred[:, JAW], silent)
        out["silent_jaw_gt"], _ = M.silent_jaw(gt[:, JAW], silent)
        out.update(silent_frames=n, frames=len(gt))
    if flame is not None:
        pred, gt = pred.copy(), gt.copy()
        for g, sl in GROUP_SLICES.items():
            if g not in groups:   # meaningless in the data: zero it on both sides
                pred[:, sl] = 0.0
                gt[:, sl] = 0.0
        vp = head_vertices(flame, pred, shape, zero_pose=True) * MM
        vg = head_vertices(flame, gt, shape, zero_pose=True) * MM
        pp = head_vertices(flame, pred, shape, zero_pose=False) * MM
        pg = head_vertices(flame, gt, shape, zero_pose=False) * MM
        # FDD's rest shape is this head's neutral face (the mean head's template when no identity)
        tmpl = (flame.v_template.cpu().numpy() if shape is None
                else head_vertices(flame, np.zeros(56, np.float32), shape)) * MM
        lips, face = flame.masks["lips"], flame.masks["face"]
        out.update(LVE_sq=M.lve_squared(vp, vg, lips), LVE_l2=M.lve_l2(vp, vg, lips),
                   FVE_max=M.fve_max_l2(vp, vg, face), FVE_mean=M.fve_mean_l2(vp, vg, face),
                   FDD=M.fdd(vp, vg, tmpl, flame.upper_face()),
                   LVE_sq_posed=M.lve_squared(pp, pg, lips), LVE_l2_posed=M.lve_l2(pp, pg, lips),
                   FVE_max_posed=M.fve_max_l2(pp, pg, face), FVE_mean_posed=M.fve_mean_l2(pp, pg, face))
        out["FDD_abs"] = abs(out["FDD"])   # per sequence: the split's FDD_abs is the mean of |FDD|
    return out


@torch.no_grad()
def predict(model: PaChorus, ds: HostWindowDataset, batch_size: int = 16, device: str = "cpu"):
    """Yield (pred, gt) numpy batches (B, T, 56) with z = 0; the window length is the LMDB's."""
    for pred, b in _predict_batches(model, ds, batch_size, device):
        yield pred, b["coeffs"].numpy()


@torch.no_grad()
def _predict_batches(model: PaChorus, ds: HostWindowDataset, batch_size: int = 16, device: str = "cpu"):
    """Yield (pred (B, T, 56) numpy with z = 0, the input batch)."""
    model.eval().to(device)
    n_frames = int(ds.meta["window"])
    for b in DataLoader(ds, batch_size=batch_size):
        o = model(b["host"].to(device), b["partner"].to(device), b["bgm"].to(device), b["pose0"].to(device),
                  n_frames, z_mode="mean")
        yield o.coeffs.float().cpu().numpy(), b


@torch.no_grad()
def pose_diversity(model: PaChorus, b: dict, n_frames: int, samples: int, generator: torch.Generator,
                   device: str = "cpu") -> np.ndarray | None:
    """Per window of batch ``b``: the mean pairwise pose distance (rad) of ``samples`` predictions with
    z ~ N(0, I) (:func:`metrics.pairwise_pose_distance`); None without a motion prior (or K < 2)."""
    if model.prior is None or samples < 2:
        return None
    args = [b[k].to(device) for k in ("host", "partner", "bgm", "pose0")]
    poses = np.stack([model(*args, n_frames, z_mode="sample", generator=generator).coeffs[..., POSE]
                      .float().cpu().numpy() for _ in range(samples)], axis=1)     # (B, K, T, 3)
    return np.array([M.pairwise_pose_distance(p) for p in poses])


@torch.no_grad()
def posterior_kl(model: PaChorus, b: dict, device: str = "cpu") -> np.ndarray | None:
    """KL(q(z | Δpose) ‖ N(0, I)) per window and latent dimension (B, latent) for the target's Δpose =
    pose − pose0 of batch ``b``, through ``model.prior.encode``; None without a motion prior."""
    if model.prior is None:
        return None
    target, pose0 = b["coeffs"].to(device).float(), b["pose0"].to(device).float()
    mu, logvar = model.prior.encode(target[..., POSE] - pose0[:, None])
    return M.kl_per_dim(mu.float().cpu().numpy(), logvar.float().cpu().numpy())


@torch.no_grad()
def attention_summary(model: PaChorus, ds: HostWindowDataset, batch_size: int = 16, device: str = "cpu",
                      max_batches: int = 8) -> dict | None:
    """The host animator's self-attention on real inputs (first decoder layer, averaged over heads and
    up to ``max_batches`` batches): entropy vs the uniform log T, weight on the own frame, attended
    distance in frames (see model.pachorus.attention_diagnostic). None for the autoregressive
    ``faceformer``, whose attention is its own module."""
    from .model.pachorus import HostAnimator, attention_diagnostic
    if not isinstance(model.animator, HostAnimator):
        return None
    model.eval().to(device)
    n_frames = int(ds.meta["window"])
    rows = []
    for i, b in enumerate(DataLoader(ds, batch_size=batch_size)):
        if i >= max_batches:
            break
        w = model.animator.self_attention(model.audio(b["host"].to(device)), b["pose0"].to(device), n_frames)
        rows.append(attention_diagnostic(w))
    out = _summarise(rows)
    out.update(frames=n_frames, band=model.cfg.attn_band, causal=bool(model.animator.causal))
    return out


def _summarise(rows: list[dict]) -> dict[str, float]:
    keys = rows[0].keys() if rows else []
    return {k: float(np.mean([r[k] for r in rows])) for k in keys}


def _summarise_metrics(rows: list[dict]) -> dict[str, float | None]:
    """Means over sequences, except: None values are left out (a key with none left is None); the
    silent-jaw means are pooled over silent frames (weighted by each sequence's count) and
    ``silent_frames`` / ``frames`` become ``silent_fraction``."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    out: dict[str, float | None] = {}
    for k in keys:
        if k in ("silent_frames", "frames"):
            continue
        vals = [(r[k], r.get("silent_frames", 1) if k.startswith("silent_jaw") else 1)
                for r in rows if r.get(k) is not None]
        out[k] = float(np.average([v for v, _ in vals], weights=[w for _, w in vals])) if vals else None
    if "frames" in keys:
        out["silent_fraction"] = sum(r.get("silent_frames", 0) for r in rows) / max(1, sum(r.get("frames", 0)
                                                                                          for r in rows))
    return out


def evaluate_model(model: PaChorus, data: str | Path, split: str = "test", flame=None, batch_size: int = 16,
                   device: str = "cpu", mean_coeffs: np.ndarray | None = None, samples: int = 5,
                   silence_db: float = SILENCE_DB, seed: int = 0) -> dict:
    """Metrics for the model and the mean-motion baseline (means over host samples). ``samples`` = K
    prior samples per window for ``diversity_pose`` (z ~ N(0, I), drawn from ``seed``)."""
    ds = HostWindowDataset(data, split)
    if len(ds) == 0:
        raise ValueError(f"{data}: the {split!r} split is empty")
    if samples < 0 or samples == 1:
        raise ValueError(f"--samples {samples}: diversity needs K ≥ 2 prior samples (0 = skip it)")
    groups = data_info(ds.meta)["coeff_groups"]
    if mean_coeffs is None:
        mean_coeffs = train_mean_coeffs(data)
    shapes, known = ds.reader.host_shapes()   # in sample order, which predict keeps (no shuffling)
    sr, fps, n_frames = int(ds.meta["sr"]), float(ds.meta["fps"]), int(ds.meta["window"])
    gen = torch.Generator(device=device).manual_seed(seed)
    rows, base_rows, kls = [], [], []
    for pred, b in _predict_batches(model, ds, batch_size, device):
        gt, host = b["coeffs"].numpy(), b["host"].float().numpy()
        div = pose_diversity(model, b, n_frames, samples, gen, device)
        kl = posterior_kl(model, b, device) if "pose" in groups else None
        if kl is not None:
            kls.append(kl)
        for i, (p, g) in enumerate(zip(pred, gt)):
            j = len(rows)
            head = shapes[j] if known[j] else None
            rows.append(sequence_metrics(p, g, flame, groups, head, host[i], sr, fps, silence_db))
            rows[-1]["diversity_pose"] = None if div is None else float(div[i])
            base = np.broadcast_to(mean_coeffs, g.shape).copy()
            base[:, POSE] = g[0, POSE]  # pose0 held constant
            base_rows.append(sequence_metrics(base, g, flame, groups, head, host[i], sr, fps, silence_db))
    summary = _summarise_metrics(rows)
    posterior = None
    if kls:
        kl_dim = np.concatenate(kls).mean(0)
        summary.update(active_units=M.active_units(kl_dim, ACTIVE_KL), latent=int(kl_dim.shape[0]))
        posterior = {"kl_per_dim": [float(x) for x in kl_dim], "kl_total": float(kl_dim.sum()),
                     "active_threshold": ACTIVE_KL}
    else:   # no prior, or no pose in the data to encode
        summary.update(active_units=None, latent=None if model.prior is None else int(model.cfg.latent))
    masked = [g for g in ALL_GROUPS if g not in groups]
    return {"split": split, "n_samples": len(rows), "z": "mean (z = 0)", "vertex_metrics": flame is not None,
            "identity": identity_summary(int(known.sum()), len(rows)),
            "singer_counts": ds.reader.singer_counts, "masked_groups": masked,
            "units": "vertex metrics in mm (LVE_sq, FDD, FDD_abs in mm²), PPE in rad, lip/face metrics with head "
                     "pose zeroed (the *_posed ones with it applied); silent_jaw = jaw opening (rad) on frames where "
                     f"the host's vocals are below {silence_db:g} dBFS; diversity_pose in rad over {samples} samples"
                     + (f"; {', '.join(masked)} not estimated by the fit: masked (zeroed on both sides for "
                        "vertex metrics)" if masked else ""),
            "samples": samples, "silence_db": silence_db, "posterior": posterior,
            "model": summary, "mean_motion_baseline": _summarise_metrics(base_rows)}


def identity_summary(personalised: int, n: int) -> dict:
    """Which heads the vertex metrics were computed on: ``personalised`` of ``n`` samples had a shape code."""
    if personalised == n:
        heads = f"personalised heads from shape codes: {n} of {n} samples"
    elif personalised == 0:
        heads = f"mean head (no shape codes in the data): {n} of {n} samples"
    else:
        heads = (f"personalised heads from shape codes: {personalised} of {n} samples; "
                 f"mean head for the other {n - personalised}")
    return {"personalised": personalised, "samples": n, "heads": heads}


def format_table(results: dict[str, dict], spread: dict[str, dict] | None = None) -> str:
    """Rows = named metric dicts; columns = the metrics present. ``spread`` adds ± values."""
    present = [(k, label) for k, label in COLUMNS if any(k in r for r in results.values())]
    head = ["method"] + [label for _, label in present]
    lines = [head]
    for name, r in results.items():
        cells = [name]
        for k, _ in present:
            v = r.get(k)
            s = "-" if v is None else f"{v:.4g}"
            if spread and name in spread and k in spread[name]:
                s += f" ± {spread[name][k]:.2g}"
            cells.append(s)
        lines.append(cells)
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    fmt = lambda row: " | ".join(c.ljust(w) for c, w in zip(row, widths))  # noqa: E731
    return "\n".join([fmt(lines[0]), "-+-".join("-" * w for w in widths)] + [fmt(r) for r in lines[1:]])


def evaluate(ckpt: str | Path, data: str | Path, split: str = "test", flame_dir: str | Path | None = None,
             out_json: str | Path | None = None, batch_size: int = 16, device: str = "auto",
             diagnose: bool = False, samples: int = 5, head: str = "auto") -> dict:
    """``head`` / ``flame_dir``: which mesh the vertex metrics use (pachorus.vertices.resolve_head)."""
    from .device import pick_device
    from .vertices import describe_head, load_head, resolve_head
    device = str(pick_device(device))
    model, meta = load_model(ckpt, map_location=device)
    info = data_info(HostWindowDataset(data, split).meta)
    check_same_data(meta["data_info"], info, ckpt, data)
    where = resolve_head(flame_dir, head, info.get("fit_backend"))
    flame = load_head(where)
    res = evaluate_model(model, data, split, flame, batch_size, device, samples=samples)
    res.update(ckpt=str(ckpt), data=str(data), variant=model.cfg.variant, step=meta.get("step"),
               head=where, mesh=describe_head(where))
    if diagnose:
        res["attention"] = attention_summary(model, HostWindowDataset(data, split), batch_size, device)
    if out_json:
        Path(out_json).write_text(json.dumps(res, indent=2))
    return res
