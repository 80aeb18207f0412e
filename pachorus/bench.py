"""``pachorus bench``: the paper's Tables 2 and 3 with one command.

Trains every named variant (``full``, ``no_prior``, ``no_bgm``, ``no_kl``, ``mono``, ``faceformer``)
for the SAME number of steps over several seeds, evaluates each on the test split (z = 0; the
autoregressive ``faceformer`` generates step by step from pose0), and writes:

    <out>/
      bench_config.json     the settings every run shares (a rerun with other settings is refused)
      synth.lmdb/           the synthetic LMDB (only when no --data is given; written once)
      flame/                a generated FLAME-format toy head (only with --head toy; the default
                            without --flame is the open head, chorushead.core.openhead)
      runs/<variant>_s<seed>/   a ``pachorus train`` run folder (config.json, last.pt, model.pt,
                            log.jsonl, curves.png) + eval_test.json (the metrics of that run)
      table2.md / .csv      Table 2: PaChorus vs baselines (full, mono, faceformer + mean motion)
      table3.md / .csv      Table 3: ablations (no_bgm, no_kl, no_prior, full)
      metrics.png           one panel per metric: every variant's mean ± std and its seeds
      results.json          every run's metrics, the per-variant mean/std and the orderings

Recipes (``--recipe``): ``fast`` (default; 600 steps at lr 1e-3, 2 s synthetic windows: minutes on
a CPU) and ``paper`` (§5.1: lr 1e-4, 100 epochs, 5 s windows at a 0.5 s stride: hours, a GPU's job);
a recipe sets defaults, options given explicitly override them; bench_config.json records it.

Resumable: a run whose eval_test.json exists at the requested step count is reused (nothing is
trained); a run with a last.pt below it resumes from there (``--resume`` semantics); the rest start.

Statistics: mean ± sample std (ddof 1) over seeds. Per metric, the best mean is bold; another row
whose gap to the best is within two standard deviations (the larger of the two rows' stds) is marked
"not established": with that spread the ordering could be seed noise. Lower is better for every
metric except FDD, which is signed (ground truth minus prediction; > 0 = too little upper-face
motion): its best is the one closest to 0. Silent jaw, diversity and active units (``UNRANKED``) are
shown without a ranking; a variant without a prior has "–" for the last two.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from chorushead.core.manifest import write_json_atomic

VARIANTS = ("full", "no_prior", "no_bgm", "no_kl", "mono", "mono_causal", "faceformer")
TABLE2 = (("full", "PaChorus (Ours)"), ("mono", "Mono (host animator: Eq. 2)"),
          ("mono_causal", "Mono causal (FaceFormer masks)"), ("faceformer", "FaceFormer [1]"))
MIN_SEEDS = 3   # below this a std means nothing: no ordering is called established
TABLE3 = (("no_bgm", "w/o BGM"), ("no_kl", "w/o L_kl"), ("no_prior", "w/o prior"), ("full", "PaChorus (Ours)"))
# (metric key in evaluate's results, column title): the paper's columns (head pose zeroed), then ours.
PAPER_COLS = (("LVE_l2", "LVE ↓"), ("FVE_max", "FVE ↓"), ("FDD", "FDD →0"))
TABLE2_COLS = PAPER_COLS + (("FDD_abs", r"\|FDD\| ↓"), ("silent_jaw", "silent jaw"), ("diversity_pose", "diversity"))
TABLE3_COLS = PAPER_COLS + (("PPE", "PPE ↓"), ("LVE_l2_posed", "LVE posed ↓"), ("FVE_max_posed", "FVE posed ↓"),
                            ("FDD_abs", r"\|FDD\| ↓"), ("active_units", "active units"))
# Shown, never ranked (no "better" direction): "–" in rows without them (diversity, active units: no prior).
UNRANKED = ("silent_jaw", "diversity_pose", "active_units")
PLOT_COLS = tuple((k, t.replace("\\", "")) for k, t in TABLE3_COLS)   # no Markdown escapes in titles
NOT_ESTABLISHED = "not established"
MEAN_MOTION = "mean motion (reference)"


SYNTH_FPS = 30   # the synthetic bench data's frame rate (pachorus.synth.SynthConfig.fps)
SYNTH_RULES = 3  # the rule set its synthetic LMDB is written with (pachorus.synth.RULES)
# `pachorus bench --recipe`: the defaults each recipe sets; options given explicitly override them.
RECIPES = {
    # minutes on 2 CPU cores: 600 equal steps at lr 1e-3 (1e-4 learns too slowly for that budget),
    # 2 s synthetic windows at half overlap
    "fast": {"lr": 1e-3, "steps": 600, "epochs": 0, "synth_window": 60, "synth_stride": 30},
    # the paper's §5.1: Adam at lr 1e-4 for 100 epochs, 5 s windows at a 0.5 s stride (hours: a GPU's job)
    "paper": {"lr": 1e-4, "steps": 0, "epochs": 100, "synth_window": 5 * SYNTH_FPS, "synth_stride": SYNTH_FPS // 2},
}


@dataclass
class BenchConfig:
    out: str
    data: str | None = None        # packed LMDB; None = a synthetic one written into out/synth.lmdb
    flame: str | None = None       # FLAME folder (head "flame")
    head: str = "auto"             # vertex metrics on: flame | open (the open head) | toy (out/flame); auto = flame
                                   # with a FLAME folder, else open
    variants: tuple[str, ...] = VARIANTS
    seeds: int = 3
    # 600: ~24 CPU-min for the 21 default runs (per run, measured: full ~80 CPU-s, no_kl 75, no_bgm 65,
    # mono / no_prior / mono_causal ~37, faceformer ~147: autoregressive training); 5 seeds took ~25 min
    # wall on 2 cores at load 2-4; a loaded machine stretches that (12x at load 12).
    steps: int = 600
    batch_size: int = 16
    lr: float = 1e-3               # 1e-4 (the paper's) learns too slowly for a CPU budget of minutes
    w_kl: float = 0.005
    d_model: int = 64
    n_layers: int = 2
    attn_band: int = 3             # the host animator's self-attention band (ModelConfig.attn_band)
    jobs: int = 2                  # parallel runs, one torch thread each
    # The synthetic default (ignored with --data): sized for 2 CPU cores, 3 seeds, < 30 min.
    synth_videos: int = 12
    synth_seconds: float = 20.0
    synth_window: int = 60
    synth_stride: int = 30         # half-overlapping windows: half the evaluation cost of stride 15
    recipe: str = "fast"           # which RECIPES entry set the defaults above (a record: the values are the fields)
    epochs: int = 0                # > 0: steps = epochs x the training batches per epoch of the data (steps unused)
    synth_rules: int = SYNTH_RULES

    # Settings that change what a run computes: a rerun into the same --out must keep them.
    SHARED = ("data", "flame", "head", "steps", "batch_size", "lr", "w_kl", "d_model", "n_layers", "attn_band",
              "synth_videos", "synth_seconds", "synth_window", "synth_stride", "recipe", "epochs", "synth_rules")
    # What a bench_config.json written before a setting existed ran with.
    LEGACY = {"recipe": "fast", "epochs": 0, "synth_rules": 1}

    def __post_init__(self):
        if self.head not in ("auto", "flame", "open", "toy"):
            raise ValueError(f"--head {self.head!r}: use auto, flame, open or toy")
        if self.head == "flame" and not self.flame:
            raise ValueError("--head flame needs --flame DIR")
        if self.head == "auto":
            self.head = "flame" if self.flame else "open"

    def shared(self) -> dict:
        return {k: getattr(self, k) for k in self.SHARED}

    @classmethod
    def from_recipe(cls, recipe: str = "fast", **explicit) -> "BenchConfig":
        """The recipe's defaults, then every option given (None = not given). An explicit ``steps``
        replaces the recipe's epochs and an explicit ``epochs`` its steps (one run length)."""
        if recipe not in RECIPES:
            raise ValueError(f"--recipe: unknown {recipe!r}; choose from {', '.join(RECIPES)}")
        given = {k: v for k, v in explicit.items() if v is not None}
        kw = {**RECIPES[recipe], **given, "recipe": recipe}
        if "steps" in given and "epochs" not in given:
            kw["epochs"] = 0
        elif "epochs" in given and "steps" not in given:
            kw["steps"] = 0
        return cls(**kw)


def resolve_steps(cfg: BenchConfig, data: str) -> int:
    """Training steps of every run: ``cfg.steps``, or ``cfg.epochs`` x the batches of one epoch over
    the training split (each singer of each window is a host sample; the last partial batch dropped)."""
    if not cfg.epochs:
        return cfg.steps
    from .data import HostWindowDataset
    return cfg.epochs * max(1, len(HostWindowDataset(data, "train")) // cfg.batch_size)


@dataclass
class Job:
    variant: str
    seed: int
    data: str
    flame: str
    out: str
    steps: int
    batch_size: int
    lr: float
    w_kl: float
    d_model: int
    n_layers: int
    attn_band: int = 3
    mean_coeffs: list[float] = field(default_factory=list)


def _trained_steps(run: Path) -> int:
    from .checkpoint import load_checkpoint
    return int(load_checkpoint(run / "last.pt")["step"]) if (run / "last.pt").exists() else 0


def run_job(job: Job) -> dict:
    """Train (or resume, or reuse) one (variant, seed) and evaluate it on the test split."""
    import torch
    torch.set_num_threads(1)
    from .vertices import load_head
    from .evaluate import evaluate_model
    from .losses import LossConfig
    from .model.pachorus import ModelConfig, load_model
    from .train import TrainConfig, train
    run = Path(job.out)
    ev = run / "eval_test.json"
    if ev.exists():
        done = json.loads(ev.read_text())
        # "latent" (null or the latent size) marks an eval with the diversity/silent-jaw/posed metrics:
        # an older eval_test.json is evaluated again (not retrained)
        if done.get("step") == job.steps and "latent" in done.get("metrics", {}):
            return {**done, "reused": True}
    t0, c0 = time.time(), time.process_time()
    have = _trained_steps(run)
    summary = None
    if have < job.steps:
        print(f"  start  {job.variant:10s} seed {job.seed}: {'resume at step ' + str(have) if have else 'new'}"
              f" -> {job.steps} steps", flush=True)
        cfg = TrainConfig(data=job.data, out=job.out, epochs=1_000_000, batch_size=job.batch_size, lr=job.lr,
                          seed=job.seed, device="cpu", threads=1, max_steps=job.steps, ckpt_every=100,
                          model=ModelConfig(variant=job.variant, d_model=job.d_model, n_layers=job.n_layers,
                                            dropout=0.0, attn_band=job.attn_band),
                          loss=LossConfig(w_kl=0.0 if job.variant == "no_kl" else job.w_kl))
        summary = train(cfg, resume=have > 0, progress=False)
    elif have > job.steps:
        raise ValueError(f"{run} was trained for {have} steps, more than the bench's {job.steps}; "
                         "use another --out or the same --steps")
    train_s, train_cpu = time.time() - t0, time.process_time() - c0
    model, ck = load_model(run / "last.pt")
    res = evaluate_model(model, job.data, "test", load_head(job.flame), batch_size=32,
                         mean_coeffs=np.asarray(job.mean_coeffs, np.float32))
    out = {"variant": job.variant, "seed": job.seed, "step": int(ck["step"]), "metrics": res["model"],
           "mean_motion": res["mean_motion_baseline"], "n_samples": res["n_samples"],
           "train_s": round(train_s, 1), "eval_s": round(time.time() - t0 - train_s, 1),
           # CPU seconds of this one-thread worker: the wall time the run would take on an idle core
           "train_cpu_s": round(train_cpu, 1), "eval_cpu_s": round(time.process_time() - c0 - train_cpu, 1),
           "steps_per_s": summary["steps_per_s"] if summary else None}
    write_json_atomic(ev, out)   # a torn file would make every later bench fail on it
    return {**out, "reused": False}


# ----------------------------------------------------------------------------------------- statistics


def summarise(runs: list[dict]) -> dict[str, dict[str, tuple[float, float, int]]]:
    """variant -> metric -> (mean, sample std (0 for one seed), n seeds). Null values (diversity and
    active units of a variant without a prior) are left out: a metric no seed has is absent."""
    out: dict[str, dict] = {}
    for v in dict.fromkeys(r["variant"] for r in runs):
        ms = [r["metrics"] for r in runs if r["variant"] == v]
        out[v] = {}
        for k in dict.fromkeys(k for m in ms for k in m):
            x = np.array([m[k] for m in ms if m.get(k) is not None], float)
            if len(x):
                out[v][k] = (float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else 0.0, len(x))
    return out


def _score(metric: str, mean: float) -> float:
    """Lower is better; FDD is signed, so its distance to 0 is what counts."""
    return abs(mean) if metric == "FDD" else mean


def rank_column(stats: dict[str, tuple[float, float, int]], metric: str) -> dict[str, str]:
    """row -> "best" | "not established" | "worse" for one metric column (rows: (mean, std, n)).

    A row is "not established" when its gap to the best is ≤ 2 · max(std_best, std_row), or when either
    row has fewer than MIN_SEEDS seeds (its std is then no estimate of the spread at all)."""
    best = min(stats, key=lambda r: _score(metric, stats[r][0]))
    bm, bs, bn = stats[best]
    out = {}
    for r, (m, s, n) in stats.items():
        if r == best:
            out[r] = "best"
        else:
            gap = _score(metric, m) - _score(metric, bm)
            out[r] = NOT_ESTABLISHED if gap <= 2 * max(bs, s) or min(n, bn) < MIN_SEEDS else "worse"
    return out


def _gt_note(stats: dict) -> str:
    """The ground truth's silent-frame jaw opening (the same test split for every variant)."""
    g = next((d["silent_jaw_gt"][0] for d in stats.values() if "silent_jaw_gt" in d), None)
    return "" if g is None else f" (ground truth {g:.4g} rad)"


def _latent_note(stats: dict) -> str:
    """How many latent dimensions the prior has (what "active units" count out of)."""
    n = next((d["latent"][0] for d in stats.values() if "latent" in d), None)
    return "" if n is None else f" (of {n:g})"


def _fmt(mean: float, std: float) -> str:
    return f"{mean:.4g} ± {std:.2g}"


def write_table(path_stem: Path, rows: tuple[tuple[str, str], ...], cols: tuple[tuple[str, str], ...],
                stats: dict, caption: str, reference: dict[str, float] | None = None) -> str:
    """Markdown (+ caption) and CSV of one table; returns the Markdown. Rows missing from ``stats`` are left out."""
    rows = tuple((v, name) for v, name in rows if v in stats)
    cols = tuple((k, t) for k, t in cols if (any if k in UNRANKED else all)(k in stats[v] for v, _ in rows))
    ranks = {k: {} if k in UNRANKED else rank_column({v: stats[v][k] for v, _ in rows}, k) for k, _ in cols} \
        if rows else {}
    md = ["| Method | " + " | ".join(t for _, t in cols) + " |", "|---|" + "---|" * len(cols)]
    csv = ["method,variant,seeds," + ",".join(f"{k}_mean,{k}_std,{k}_vs_best" for k, _ in cols)]
    for v, name in rows:
        cells, parts = [], [name, v, str(next((stats[v][k][2] for k, _ in cols if k in stats[v]), 0))]
        for k, _ in cols:
            if k not in stats[v]:   # an unranked metric this variant has not (no prior: no diversity)
                cells.append("–")
                parts += ["", "", ""]
                continue
            m, s, _ = stats[v][k]
            status = ranks[k].get(v, "")
            cell = _fmt(m, s)
            cells.append(f"**{cell}**" if status == "best" else
                         f"{cell} ({NOT_ESTABLISHED})" if status == NOT_ESTABLISHED else cell)
            parts += [f"{m:.6g}", f"{s:.6g}", status]
        md.append(f"| {name} | " + " | ".join(cells) + " |")
        csv.append(",".join(parts))
    if reference is not None:
        ref = {k: reference.get(k) for k, _ in cols}
        md.append(f"| *{MEAN_MOTION}* | " + " | ".join("–" if ref[k] is None else f"*{ref[k]:.4g}*" for k, _ in cols)
                  + " |")
        csv.append(",".join([MEAN_MOTION, "mean_motion", "0"] + sum((["" if ref[k] is None else f"{ref[k]:.6g}", "",
                                                                      "reference"] for k, _ in cols), [])))
    text = "\n".join(md) + "\n\n" + caption + "\n"
    path_stem.with_suffix(".md").write_text(text)
    path_stem.with_suffix(".csv").write_text("\n".join(csv) + "\n")
    return text


def plot_metrics(png: Path, runs: list[dict], stats: dict, variants: list[str]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cols = [(k, t) for k, t in PLOT_COLS if all(k in stats[v] for v in variants)]
    fig, axes = plt.subplots(1, max(1, len(cols)), figsize=(3.2 * max(1, len(cols)), 3.4))
    axes = np.atleast_1d(axes)
    for ax, (k, title) in zip(axes, cols):
        # Points, not bars from 0: the differences that matter are a few percent of the value.
        x = np.arange(len(variants))
        ax.errorbar(x, [stats[v][k][0] for v in variants], yerr=[stats[v][k][1] for v in variants], fmt="o",
                    color="#246", capsize=4, label="mean ± std")
        for i, v in enumerate(variants):
            ys = [r["metrics"][k] for r in runs if r["variant"] == v]
            ax.plot([i + 0.15] * len(ys), ys, ".", color="#c64", ms=4, label="seeds" if i == 0 else None)
        ax.set_xlim(-0.5, len(variants) - 0.5)
        ax.grid(axis="y", alpha=0.3)
        ax.set_xticks(x, variants, rotation=45, ha="right", fontsize=8)
        ax.set_title(title, fontsize=9)
    axes[0].legend(fontsize=7)
    fig.suptitle("per variant: mean ± std over seeds (dots: single seeds)", fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)


def orderings(stats: dict, pairs: list[tuple[str, str, str]]) -> list[dict]:
    """For each (a, b, metric): does a beat b, and is the gap beyond 2 std (the larger one)?"""
    out = []
    for a, b, k in pairs:
        if a in stats and b in stats and k in stats[a] and k in stats[b]:
            (ma, sa, na), (mb, sb, nb) = stats[a][k], stats[b][k]
            gap = _score(k, mb) - _score(k, ma)
            out.append({"claim": f"{a} < {b} on {k}", "holds": gap > 0,
                        "established": gap > 2 * max(sa, sb) and min(na, nb) >= MIN_SEEDS,
                        "gap": gap, "two_std": 2 * max(sa, sb), "seeds": min(na, nb)})
    return out


# ---------------------------------------------------------------------------------------------- driver


def _prepare(cfg: BenchConfig, log) -> tuple[str, str, str]:
    """The LMDB, FLAME folder and the caption's data/mesh notes (writing the synthetic ones once)."""
    from chorushead.core.flame import make_synthetic_flame
    out = Path(cfg.out)
    data = cfg.data
    if data is None:
        data = str(out / "synth.lmdb")
        if not (Path(data) / "data.mdb").exists():
            from .synth import SynthConfig, write_synth_lmdb
            t0 = time.time()
            counts = write_synth_lmdb(data, SynthConfig(videos=cfg.synth_videos, seconds=cfg.synth_seconds,
                                                        window=cfg.synth_window, stride=cfg.synth_stride, seed=123,
                                                        **(SynthConfig.LEGACY if cfg.synth_rules == 1
                                                           else {"rules": cfg.synth_rules})))
            log(f"synthetic LMDB {data}: {counts} windows ({time.time() - t0:.0f} s)")
    elif not (Path(data) / "data.mdb").exists():
        raise FileNotFoundError(f"no LMDB at {data} (expected {data}/data.mdb)")
    if cfg.head == "toy":
        flame = str(out / "flame")
        if not (Path(flame) / "generic_model.pkl").exists():
            make_synthetic_flame(flame)
        return data, flame, ("a generated FLAME-format toy head (chorushead.core.flame.make_synthetic_flame; "
                             "--head toy): vertex metrics compare rows, their absolute values mean nothing")
    if cfg.head == "open" or not cfg.flame:
        from .vertices import describe_head
        return data, "open", describe_head("open")
    return data, cfg.flame, "FLAME"


def run_bench(cfg: BenchConfig, log=print) -> dict:
    bad = [v for v in cfg.variants if v not in VARIANTS]
    if bad or not cfg.variants:
        raise ValueError(f"--variants: unknown {bad}; choose from {','.join(VARIANTS)}")
    if cfg.seeds < 1 or cfg.jobs < 1 or cfg.epochs < 0 or (cfg.steps < 1 and cfg.epochs < 1):
        raise ValueError("--seeds, --jobs and --steps (or --epochs) must be ≥ 1")
    out = Path(cfg.out)
    saved = out / "bench_config.json"
    if saved.exists():
        old = json.loads(saved.read_text())
        old = {**BenchConfig.LEGACY, "head": "flame" if old.get("flame") else "toy", **old}   # before heads
        diff = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in cfg.shared().items() if old.get(k) != v]
        if diff:
            raise ValueError(f"{out} holds a bench with other settings ({'; '.join(diff)}); use another --out "
                             "or the same settings")
    out.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(cfg.shared(), indent=2))
    t0 = time.time()
    data, flame, mesh = _prepare(cfg, log)
    if cfg.epochs:
        cfg = replace(cfg, steps=resolve_steps(cfg, data))
        log(f"recipe {cfg.recipe}: {cfg.epochs} epochs = {cfg.steps} steps of batch {cfg.batch_size}")
    if cfg.recipe == "paper" and cfg.data is not None:   # --data: the windows are the LMDB's, as packed
        from chorushead.core.windows import WindowReader
        meta = WindowReader(data, None).meta
        if (int(meta["window"]), int(meta["stride"])) != (5 * int(meta["fps"]), int(meta["fps"]) // 2):
            log(f"note: recipe paper wants 5 s windows at a 0.5 s stride; {data} has {meta['window']} frames "
                f"at a {meta['stride']}-frame stride ({meta['fps']} fps): repack it to follow the paper")
    from .evaluate import train_mean_coeffs
    mean = [float(x) for x in train_mean_coeffs(data)]
    jobs = [Job(variant=v, seed=s, data=data, flame=flame, out=str(out / "runs" / f"{v}_s{s}"), steps=cfg.steps,
                batch_size=cfg.batch_size, lr=cfg.lr, w_kl=cfg.w_kl, d_model=cfg.d_model, n_layers=cfg.n_layers,
                attn_band=cfg.attn_band, mean_coeffs=mean)
            for s in range(cfg.seeds) for v in cfg.variants]
    log(f"{len(jobs)} runs ({len(cfg.variants)} variants x {cfg.seeds} seeds) x {cfg.steps} steps "
        f"on {cfg.jobs} process(es)")
    runs = []
    # Spawned workers (not forked): torch and LMDB handles are not fork-safe.
    with mp.get_context("spawn").Pool(min(cfg.jobs, len(jobs))) as pool:
        for i, r in enumerate(pool.imap_unordered(run_job, jobs), 1):
            runs.append(r)
            m = r["metrics"]
            how = "reused" if r["reused"] else (f"trained {r['train_s']:.0f} s + eval {r['eval_s']:.0f} s "
                                                f"({r['train_cpu_s'] + r['eval_cpu_s']:.0f} s CPU)")
            log(f"  [{i}/{len(jobs)}] {r['variant']:10s} seed {r['seed']}: {how}; LVE {m.get('LVE_l2', float('nan')):.4g}"
                f"  PPE {m.get('PPE', float('nan')):.4g}  ({time.time() - t0:.0f} s elapsed)")
    order = {v: i for i, v in enumerate(cfg.variants)}
    runs.sort(key=lambda r: (order[r["variant"]], r["seed"]))
    stats = summarise(runs)
    caption = (f"Mean ± std over {cfg.seeds} seed(s), {cfg.steps} training steps each (batch {cfg.batch_size}, "
               f"lr {cfg.lr}), test split of {data}, z = 0 (faceformer: step-by-step generation from pose0). "
               f"Vertex metrics on {mesh}, in mm with the head pose zeroed (the paper's protocol, §5.3; \"posed\": "
               f"with the predicted / GT head pose applied); LVE and FVE = per-frame max L2 over lip / face "
               f"vertices; FDD signed (GT − prediction, mm²), best = closest to 0; |FDD| = mean over sequences of "
               f"|FDD| (mm²); PPE in rad. Unranked: silent jaw = mean jaw opening (rad) on frames where the host's "
               f"vocals are below −40 dBFS{_gt_note(stats)}; diversity = mean pairwise pose distance (rad) of 5 "
               f"samples z ~ N(0, I); active units = latent dimensions{_latent_note(stats)} with posterior KL > "
               f"0.01 nats (– = no prior). **Bold**: best mean; ({NOT_ESTABLISHED}): gap to the best ≤ 2 std (the "
               f"larger of the two rows').")
    if cfg.seeds < MIN_SEEDS:
        caption += (f" **Only {cfg.seeds} seed(s): fewer than {MIN_SEEDS}, so no std is an estimate of the spread "
                    f"and no ordering below is established.**")
        log(f"note: {cfg.seeds} seed(s) < {MIN_SEEDS}: nothing in these tables is established (use --seeds 5)")
    ref = runs[0]["mean_motion"]
    t2 = write_table(out / "table2", TABLE2, TABLE2_COLS, stats, "Table 2. PaChorus vs baselines. " + caption, ref)
    t3 = write_table(out / "table3", TABLE3, TABLE3_COLS, stats, "Table 3. Ablations. " + caption)
    plot_metrics(out / "metrics.png", runs, stats, list(cfg.variants))
    checks = orderings(stats, [("full", "mono", "LVE_l2"), ("full", "mono_causal", "LVE_l2"),
                               ("full", "faceformer", "LVE_l2"), ("full", "mono", "FVE_max"),
                               ("full", "faceformer", "FVE_max"), ("full", "mono", "PPE"),
                               ("full", "mono_causal", "PPE"), ("full", "faceformer", "PPE"),
                               ("full", "no_prior", "PPE"), ("full", "no_bgm", "PPE"), ("full", "no_kl", "PPE"),
                               # Table 3's "w/o prior raises LVE": with the pose zeroed (the paper's) and applied
                               ("full", "no_prior", "LVE_l2"), ("full", "no_prior", "LVE_l2_posed")])
    report = {"config": asdict(cfg), "data": data, "flame": flame, "mesh": mesh, "runs": runs,
              "stats": {v: {k: {"mean": m, "std": s, "n": n} for k, (m, s, n) in d.items()} for v, d in stats.items()},
              "mean_motion": ref, "orderings": checks, "wall_s": round(time.time() - t0, 1),
              "trained": sum(not r["reused"] for r in runs),
              # total CPU of the runs trained now: ÷ jobs ≈ the wall time on that many idle cores
              "cpu_s": round(sum(r.get("train_cpu_s", 0) + r.get("eval_cpu_s", 0) for r in runs if not r["reused"]), 1)}
    (out / "results.json").write_text(json.dumps(report, indent=2))
    log("\n" + t2 + "\n" + t3)
    for c in checks:
        log(f"  {c['claim']}: {'holds' if c['holds'] else 'does NOT hold'}"
            f"{'' if not c['holds'] else ' (beyond 2 std)' if c['established'] else ' (' + NOT_ESTABLISHED + ')'}"
            f"{' [' + str(c['seeds']) + ' seed(s)]' if c['seeds'] < MIN_SEEDS else ''}"
            f"  gap {c['gap']:.4g} vs 2 std {c['two_std']:.2g}")
    log(f"{out}: table2.md/.csv, table3.md/.csv, metrics.png, results.json ({report['wall_s']:.0f} s, "
        f"{report['trained']} run(s) trained)")
    return report


if __name__ == "__main__":  # pragma: no cover - the CLI is `pachorus bench`
    sys.exit("use: pachorus bench --out DIR")
