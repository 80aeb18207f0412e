"""``pachorus`` command line: train, eval, infer, export, bench, synth.

Errors a person can act on (missing LMDB or checkpoint, wrong split, unknown variant, bad audio,
missing FLAME folder, unsafe checkpoint...) print ONE line on stderr and exit with code 2; the
global ``--debug`` flag (``pachorus --debug train ...``) shows the full traceback instead.
Arguments are checked before any output folder is created.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Callable, List, Optional

import click
import typer

app = typer.Typer(help="PaChorus: partner-aware chorus head animation (train / eval / infer / synth).",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
_debug = {"on": False}

# Error types whose message is written for a person; anything else is a bug and says so.
EXPECTED_ERRORS = (FileNotFoundError, FileExistsError, ValueError, RuntimeError)


@app.callback()
def _options(debug: bool = typer.Option(False, "--debug", help="on errors, show the full Python traceback")):
    """PaChorus: partner-aware chorus head animation (train / eval / infer / synth)."""
    _debug["on"] = debug


def _one_line(e: BaseException) -> str:
    from chorushead.core.errors import StageError
    msg = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, EXPECTED_ERRORS + (StageError,)):
        return msg
    return f"{type(e).__name__}: {msg} (unexpected: rerun with --debug and report the traceback)"


def clean_errors(fn: Callable) -> Callable:
    """Run a command; turn an exception into one stderr line + exit code 2 (unless --debug)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, click.exceptions.ClickException, click.exceptions.Abort):
            raise
        except Exception as e:
            if _debug["on"]:
                raise
            typer.secho(f"pachorus: error: {_one_line(e)}", fg="red", err=True)
            raise typer.Exit(2) from None
    return wrapper


def _csv(value: str, what: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise ValueError(f"{what}: empty list")
    return items


@app.command()
@clean_errors
def train(
    data: Path = typer.Option(..., help="packed LMDB (chorushead build ... pack, or pachorus synth)"),
    out: Path = typer.Option(..., help="run folder (created; never deleted)"),
    resume: bool = typer.Option(False, help="continue the run in --out from last.pt"),
    init: Optional[Path] = typer.Option(None, help="start a NEW run from this checkpoint's weights (fine-tuning: same "
                                        "model options, fresh optimiser, step 0), e.g. a run on `synth --talking`"),
    variant: str = typer.Option("full", help="full | no_bgm | no_kl | no_prior | mono | mono_causal | faceformer"),
    audio_encoder: str = typer.Option("logmel", help="logmel, or wav2vec2:<hub id or local folder>"),
    epochs: int = typer.Option(100), batch_size: int = typer.Option(16), lr: float = typer.Option(1e-4),
    w_mse: float = typer.Option(1.0), w_kl: float = typer.Option(0.005), w_vel: float = typer.Option(1.0),
    jaw_weight: float = typer.Option(5.0, help="loss weight of the jaw coefficients (lip emphasis)"),
    pose_weight: float = typer.Option(5.0, help="loss weight of the pose coefficients"),
    w_lip_vertex: float = typer.Option(0.0, help="vertex lip loss weight (needs --flame DIR or --flame open)"),
    d_model: int = typer.Option(64), n_layers: int = typer.Option(2), n_heads: int = typer.Option(4),
    latent: int = typer.Option(16), dropout: float = typer.Option(0.1),
    attn_band: int = typer.Option(3, help="host animator self-attention band in frames (±N; 0 = whole window)"),
    seed: int = typer.Option(0),
    device: str = typer.Option("auto", help="auto (cuda when present), cpu, cuda, cuda:N"),
    amp: bool = typer.Option(True, help="autocast + GradScaler (CUDA only)"),
    num_workers: int = typer.Option(0), threads: int = typer.Option(0, help="torch CPU threads (0 = default)"),
    ckpt_every: int = typer.Option(0, help="also checkpoint every N steps"),
    max_steps: int = typer.Option(0, help="stop after N steps in total (0 = no limit)"),
    time_budget: float = typer.Option(0.0, help="stop after this many seconds (0 = no limit)"),
    flame: Optional[Path] = typer.Option(None, help="FLAME folder, or 'open' for the open head (for --w-lip-vertex)"),
    progress: bool = typer.Option(True, help="tqdm progress bar"),
):
    """Train PaChorus (or an ablation/baseline). Multi-GPU: torchrun --nproc_per_node N -m pachorus.cli train ...

    Frame rate, sample rate, window length, fit backend and coefficient groups come from the LMDB's
    meta and are stored in the run's config and checkpoints; groups the fit did not estimate are masked
    out of the loss. One LMDB may mix duets and trios (each singer of each window is a host sample).
    """
    from .losses import LossConfig
    from .model.pachorus import ModelConfig
    from .train import TrainConfig, train as run
    cfg = TrainConfig(
        data=str(data), out=str(out), epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device, amp=amp,
        num_workers=num_workers, threads=threads, ckpt_every=ckpt_every, max_steps=max_steps,
        time_budget_s=time_budget, flame=str(flame) if flame else None, init=str(init) if init else None,
        model=ModelConfig(variant=variant, audio_encoder=audio_encoder, d_model=d_model, n_layers=n_layers,
                          n_heads=n_heads, latent=latent, dropout=dropout, attn_band=attn_band),
        loss=LossConfig(w_mse=w_mse, w_kl=w_kl, w_vel=w_vel, jaw_weight=jaw_weight, pose_weight=pose_weight,
                        w_lip_vertex=w_lip_vertex))
    summary = run(cfg, resume=resume, progress=progress)
    from .device import Dist
    if Dist.from_env().main:   # under torchrun one summary, rank 0's; the other ranks print only errors
        typer.echo(json.dumps(summary))


@app.command("eval")
@clean_errors
def eval_cmd(
    ckpt: Path = typer.Option(..., help="model.pt / best.pt / last.pt from a run folder"),
    data: Path = typer.Option(..., help="packed LMDB"),
    split: str = typer.Option("test", help="train | val | test"),
    flame: Optional[Path] = typer.Option(None, help="FLAME folder (generic_model.pkl + FLAME_masks.pkl) for LVE/FVE/FDD"),
    head: str = typer.Option("auto", help="mesh for LVE/FVE/FDD: auto (FLAME with --flame, else the open head for landmark-"
                              "fitted or synthetic data) | open | flame | none"),
    out: Optional[Path] = typer.Option(None, help="JSON file for the results (default: next to the checkpoint)"),
    batch_size: int = typer.Option(16), device: str = typer.Option("auto", help="auto (cuda when present), cpu, cuda"),
    diagnose: bool = typer.Option(False, "--diagnose", help="also report how local the host animator's "
                                  "self-attention is (entropy, own-frame weight, attended distance)"),
    samples: int = typer.Option(5, "--samples", help="K prior samples z ~ N(0, I) per window for the pose "
                                "diversity (variants with a motion prior; K ≥ 2, 0 = skip)"),
):
    """Evaluate: LVE (squared, CodeTalker; L2, SingingHead), FVE, FDD, PPE, coefficient errors + a mean-motion baseline.

    Also: LVE/FVE with the head pose applied (*_posed), |FDD|, the jaw on the host's silent frames, and
    for variants with a prior the diversity of --samples K prior samples and its active latent units.

    Coefficient groups the LMDB's fit did not estimate are masked (reported as such). The checkpoint
    must come from data with the same fps, sample rate, fit backend and coefficient groups.
    """
    from .evaluate import evaluate, format_table
    out = out or ckpt.with_name(f"eval_{split}.json")
    res = evaluate(ckpt, data, split, flame, out, batch_size, device, diagnose=diagnose, samples=samples, head=head)
    if res["head"] is None:   # after the run, so that an error stays the only stderr line
        why = "--head none" if head == "none" else "this data's expression is FLAME's (EMOCA)"
        typer.echo(f"note: no head for vertex metrics (LVE, FVE, FDD): {why}; they need FLAME 2020 (--flame DIR; "
                   "https://flame.is.tue.mpg.de, registration), or --head open for jaw and pose on the open head; "
                   "reporting PPE, silent jaw, the prior's metrics and coefficient errors only.", err=True)
    else:
        typer.echo(f"head: {res['mesh']}")
    typer.echo(format_table({f"{res['variant']} (z=0)": res["model"], "mean motion": res["mean_motion_baseline"]}))
    if res["masked_groups"]:
        typer.echo(f"masked (not estimated by the fit): {', '.join(res['masked_groups'])}")
    if res["vertex_metrics"] and res["head"] != "open":   # the open head is one face: no identities to report
        typer.echo(f"vertex metrics on {res['identity']['heads']}")
    m = res["model"]
    if m.get("silent_fraction") is not None:
        sj = lambda v: "-" if v is None else f"{v:.4g} rad"  # noqa: E731
        typer.echo(f"silent jaw (host vocals below {res['silence_db']:g} dBFS: {100 * m['silent_fraction']:.3g}% of "
                   f"frames): model {sj(m.get('silent_jaw'))}, ground truth {sj(m.get('silent_jaw_gt'))}")
    if m.get("latent") is None:
        typer.echo(f"motion prior: none in variant {res['variant']} (no diversity, no active units)")
    else:
        div = m.get("diversity_pose")
        typer.echo(f"motion prior: diversity {'-' if div is None else f'{div:.4g} rad'} (mean pairwise pose "
                   f"distance of {res['samples']} samples z ~ N(0, I)); active units "
                   f"{'-' if m['active_units'] is None else m['active_units']} of {m['latent']} (posterior KL > "
                   "0.01 nats per latent dimension)")
    if diagnose:
        a = res.get("attention")
        typer.echo("attention: not applicable (faceformer: autoregressive, its own attention)" if a is None else
                   f"attention (host animator, layer 1, band ±{a['band']}{', causal' if a['causal'] else ''}): "
                   f"entropy {a['entropy']:.3g} of {a['entropy_uniform']:.3g} nats (uniform), own-frame weight "
                   f"{a['own_frame_weight']:.3g}, attended distance {a['attended_distance']:.3g} frames of {a['frames']}")
    typer.echo(f"{res['n_samples']} samples of split {split!r}; {res['units']}. JSON: {out}")


@app.command(context_settings={"allow_extra_args": True})
@clean_errors
def infer(
    ctx: typer.Context,
    ckpt: Path = typer.Option(..., help="trained model (model.pt / best.pt)"),
    vocals: Optional[List[Path]] = typer.Option(None, help="separated vocal tracks, one per singer (≥ 2): "
                                                "--vocals a.wav b.wav c.wav"),
    bgm: Optional[Path] = typer.Option(None, help="the accompaniment track"),
    song: Optional[Path] = typer.Option(None, help="the mixed song (audio, or a video: its soundtrack), instead of "
                                        "--vocals/--bgm: separated as the build does into OUT/separation/"),
    video: Optional[Path] = typer.Option(None, help="with --song: the song's video (the same file), so singer k "
                                         "is the k-th face from the left (the build's assign step)"),
    pipeline: Optional[Path] = typer.Option(None, help="with --song: the chorushead pipeline TOML to separate with"),
    sets: List[str] = typer.Option([], "--set", help="with --song: a chorushead pipeline override, stage.param=value "
                                   "(repeatable), e.g. --set duet_split.device=cpu"),
    out: Path = typer.Option(..., help="output folder"),
    k: int = typer.Option(3, "-k", "--k", help="samples of the motion prior per singer"),
    flame: Optional[Path] = typer.Option(None, help="FLAME folder: render sample<k>.mp4 on FLAME"),
    head: str = typer.Option("auto", help="mesh for sample<k>.mp4 and meshes: auto (FLAME with --flame, else the open head for landmark-"
                              "fitted or synthetic data) | open | flame | none"),
    seed: int = typer.Option(0), device: str = typer.Option("auto", help="auto (cuda when present), cpu, cuda"),
    size: int = typer.Option(256, help="render size per singer (pixels)"),
    formats: Optional[List[str]] = typer.Option(None, "--format", help="npz | gltf | ply | mp4, repeatable or "
                                                "comma list (default: npz, + mp4 when there is a head; gltf/ply/"
                                                "mp4 need one); see `pachorus export`"),
    shape: Optional[List[Path]] = typer.Option(None, "--shape", help="each singer's identity, one .npy shape code "
                                               "per --vocals track (EMOCA's 100 values): --shape a.npy b.npy"),
    shapes_from: Optional[Path] = typer.Option(None, help="take the singers' shape codes from a packed LMDB window"),
    shape_key: Optional[str] = typer.Option(None, help="that window's key (default: the first with shape codes)"),
):
    """Animate N ≥ 2 singers from per-singer vocal tracks + BGM (partner = sum of the others).

    Takes separated tracks, or the mixed song (--song): then `chorushead separate` separates it as the
    build does (Spleeter + MossFormer2, frozen; with the video, assign orders the singers as the faces)
    into OUT/separation/, each voice drives its singer and the accompaniment is the BGM. Writes
    singer<i>_sample<k>.npy (T, 56) and sample<k>.mp4 on FLAME (--flame) or the open head (a model
    trained on landmark-fitted or synthetic data, or --head open).
    Frame rate, sample rate and window length are the training data's (stored in the checkpoint).
    FLAME renders use each singer's own head with --shape or --shapes-from, FLAME's mean head otherwise.
    """
    from .infer import infer as run
    # click options take one value; the rest arrive here, in order: .npy files continue --shape
    # (a shape code is never an audio file), everything else continues --vocals
    extra_shapes = [a for a in ctx.args if a.lower().endswith(".npy")]
    tracks = [str(v) for v in vocals or []] + [a for a in ctx.args if not a.lower().endswith(".npy")]
    separation = None
    if song is not None:
        if tracks or bgm is not None:
            raise ValueError("--song is separated here: give either --song or --vocals and --bgm, not both")
        from .infer import separate_song
        if not Path(ckpt).is_file():   # before minutes of separation
            raise FileNotFoundError(f"--ckpt {ckpt}: no such checkpoint")
        sep_dir = out / "separation"
        separation = separate_song(song, sep_dir, video=video, pipeline=pipeline, sets=sets)
        singers, accompaniment = separation.paths(sep_dir)
        tracks, bgm = [str(p) for p in singers], str(accompaniment)
    elif video is not None or pipeline is not None or sets:
        raise ValueError("--video, --pipeline and --set belong to --song (separating a mix)")
    elif len(tracks) < 2 or bgm is None:
        raise ValueError("give the song as --song mix.wav, or its separated tracks as --vocals (one per singer, "
                         "at least 2) and --bgm")
    shapes = [str(s) for s in shape or []] + extra_shapes
    if extra_shapes and not shape:
        raise ValueError(f"{extra_shapes[0]}: a shape code file needs --shape before it")
    res = run(ckpt, tracks, bgm, out, k=k, flame_dir=flame, seed=seed, device=device, size=size, formats=formats,
              shapes=shapes or None, shapes_from=shapes_from, shape_key=shape_key, head=head)
    if separation is not None:
        res["separation"] = {"folder": str(sep_dir), "order_source": separation.order_source, "order": separation.order,
                             "confidence": separation.confidence, "note": separation.note}
    typer.echo(json.dumps(res, indent=2))
    if separation is not None:
        typer.echo(f"note: {separation.note}", err=True)
    if res["head"] is None:
        why = ("--head none" if head == "none" else "the singers have FLAME identity codes" if (shapes or shapes_from)
               else "this model's expression is FLAME's (EMOCA)")
        typer.echo(f"note: no head: wrote coefficients only, no video ({why}). Render with --flame DIR (FLAME 2020, "
                   "https://flame.is.tue.mpg.de, registration; README 'Model assets'), or --head open for the open "
                   "head.", err=True)


@app.command()
@clean_errors
def export(
    out: Path = typer.Option(..., help="output folder"),
    data: Optional[Path] = typer.Option(None, help="packed LMDB: export the ground truth of --split"),
    split: str = typer.Option("test", help="train | val | test (with --data)"),
    video: Optional[str] = typer.Option(None, help="only this video of the split (with --data)"),
    run: Optional[Path] = typer.Option(None, help="a `pachorus infer` output folder: export its predictions"),
    formats: Optional[List[str]] = typer.Option(None, "--format", help="npz | gltf | ply | mp4, repeatable or comma "
                                                "list (default: npz, + mp4 when there is a head)"),
    flame: Optional[Path] = typer.Option(None, help="FLAME folder (gltf, ply and mp4 need a mesh)"),
    head: str = typer.Option("auto", help="mesh for gltf, ply and mp4: auto (FLAME with --flame, else the open head for landmark-"
                              "fitted or synthetic data) | open | flame | none"),
    fps: Optional[int] = typer.Option(None, help="frame rate of a --run without infer.json"),
    audio: Optional[Path] = typer.Option(None, help="the mix to mux into a --run's mp4 (default: the tracks "
                                         "infer.json names)"),
    size: int = typer.Option(256, help="mp4 render size per singer (pixels)"),
):
    """Export motion for other tools: FLAME parameters (.npz), glTF morph-target animation (.glb),
    one .ply per frame, an mp4 with audio.

    --data: each segment's ground-truth coefficients, overlapping windows stitched back into one
    continuous sequence (each frame once), the window audio stitched the same way for the mp4.
    --run: the singer<i>_sample<k>.npy predictions `pachorus infer` wrote.
    """
    from .export import RUN_INFO, export_run, export_split, parse_formats
    if (data is None) == (run is None):
        raise ValueError("give exactly one source: --data X.lmdb (ground truth of a split) or --run DIR (predictions)")
    from .vertices import load_head, resolve_head
    if data is not None:
        from chorushead.core.windows import WindowReader
        backend = WindowReader(data, None).meta.get("fit_backend") if (data / "data.mdb").exists() else None
        shapes = False   # a split's windows may carry shape codes; export_split renders the mean head then
    else:
        info = json.loads((run / RUN_INFO).read_text()) if (run / RUN_INFO).is_file() else {}
        backend, shapes = info.get("fit_backend"), info.get("shapes") is not None
    where = resolve_head(flame, head, backend, shapes=shapes)
    fmts = parse_formats(formats, flame=where is not None)
    model = load_head(where)   # before anything is written: a missing FLAME folder leaves no output behind
    if data is not None:
        res = export_split(data, split, out, fmts, model, video=video, size=size)
    else:
        if not run.is_dir():
            raise FileNotFoundError(f"run folder not found: {run}")
        res = export_run(run, out, fmts, model, fps=fps, audio=audio, size=size)
    typer.echo(json.dumps(res, indent=2))


@app.command()
@clean_errors
def synth(
    out: Path = typer.Option(..., help="LMDB folder to write"),
    videos: int = typer.Option(12), seconds: float = typer.Option(20.0),
    singers: str = typer.Option("2", help="singers per video; a list is cycled over videos (2,3: duets and trios)"),
    window: int = typer.Option(150, help="frames per window"), stride: int = typer.Option(15),
    fps: int = typer.Option(30, help="motion frame rate of the generated data"),
    seed: int = typer.Option(0), noise: float = typer.Option(1.0, help="scale of the per-frame noise"),
    coeff_groups: str = typer.Option("exp,jaw,pose", help="groups 'the fit estimated' (e.g. jaw,pose like the "
                                     "landmarks backend); the others are written as zeros and masked by train/eval"),
    anticipation: float = typer.Option(0.3, help="seconds the mouth starts opening before a host phrase onset "
                                       "(0 = off; see pachorus.synth)"),
    solo: float = typer.Option(0.3, help="share of phrases sung alone (the others rest): stretches where the "
                               "host is silent while the partner sings"),
    talking: bool = typer.Option(False, "--talking", help="a talking-style corpus instead (speech-like host, silent "
                                 "BGM, silent partner track) to pretrain on before fine-tuning (train --init)"),
    listener: float = typer.Option(0.6, help="amplitude of the listener rule: the host's expression answers a "
                                   "singing partner (0 = off; see pachorus.synth)"),
):
    """Write a synthetic packed LMDB whose motion follows known, learnable rules (see pachorus.synth)."""
    from .synth import SynthConfig, write_synth_lmdb
    try:
        counts_s = [int(x) for x in _csv(singers, "--singers")]
    except ValueError:
        raise ValueError(f"--singers takes comma-separated integers such as 2 or 2,3, got {singers!r}") from None
    cfg = SynthConfig(videos=videos, seconds=seconds, n_singers=counts_s[0] if len(counts_s) == 1 else counts_s,
                      window=window, stride=stride, fps=fps, seed=seed, noise=noise, anticipation=anticipation,
                      solo=solo, talking=talking, listener=listener, coeff_groups=tuple(_csv(coeff_groups, "--coeff-groups")))
    counts = write_synth_lmdb(out, cfg)
    typer.echo(json.dumps({"out": str(out), "windows": counts}))


@app.command()
@clean_errors
def bench(
    out: Path = typer.Option(..., help="bench folder (created; runs inside are reused or resumed)"),
    data: Optional[Path] = typer.Option(None, help="packed LMDB (default: a synthetic one written into --out)"),
    flame: Optional[Path] = typer.Option(None, help="FLAME folder (default: the open head; the tables say so)"),
    head: str = typer.Option("auto", help="vertex metrics on: auto (FLAME with --flame, else the open head) | open | "
                             "toy (the generated toy head of earlier tables) | flame"),
    variants: str = typer.Option("full,no_prior,no_bgm,no_kl,mono,mono_causal,faceformer", help="comma list"),
    recipe: str = typer.Option("fast", help="fast (600 steps, lr 1e-3, 2 s windows: minutes on a CPU) | paper "
                               "(§5.1: lr 1e-4, 100 epochs, 5 s windows, 0.5 s stride: hours); options given override it"),
    seeds: int = typer.Option(3),
    steps: Optional[int] = typer.Option(None, help="training steps of every run, equal for all [recipe: fast 600]"),
    epochs: Optional[int] = typer.Option(None, help="instead of --steps: epochs over the training split [recipe: "
                                         "paper 100]"),
    batch_size: int = typer.Option(16),
    lr: Optional[float] = typer.Option(None, help="[recipe: fast 1e-3, paper 1e-4]"),
    w_kl: float = typer.Option(0.005),
    d_model: int = typer.Option(64), n_layers: int = typer.Option(2),
    attn_band: int = typer.Option(3, help="host animator self-attention band (±frames; 0 = none)"),
    jobs: int = typer.Option(2, help="runs in parallel, one CPU thread each"),
    videos: int = typer.Option(12, help="synthetic default only: songs"),
    seconds: float = typer.Option(20.0, help="synthetic default only: song length"),
    window: Optional[int] = typer.Option(None, help="synthetic default only: frames per window [recipe: fast 60, "
                                         "paper 150 = 5 s]"),
    stride: Optional[int] = typer.Option(None, help="synthetic default only: frames between window starts "
                                         "[recipe: fast 30, paper 15 = 0.5 s]"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the resolved settings and exit (nothing is written)"),
):
    """Tables 2 and 3 of the paper: train every variant over seeds, evaluate, write Markdown/CSV/PNG.

    Layout of --out and the statistics ("not established" = gap to the best within 2 std): see
    pachorus.bench. Rerunning reuses finished runs and resumes unfinished ones.
    """
    from .bench import BenchConfig, run_bench
    cfg = BenchConfig.from_recipe(recipe, out=str(out), data=str(data) if data else None,
                                  flame=str(flame) if flame else None, head=head,
                                  variants=tuple(_csv(variants, "--variants")),
                                  seeds=seeds, steps=steps, epochs=epochs, batch_size=batch_size, lr=lr, w_kl=w_kl,
                                  d_model=d_model, n_layers=n_layers, attn_band=attn_band, jobs=jobs,
                                  synth_videos=videos, synth_seconds=seconds, synth_window=window,
                                  synth_stride=stride)
    if dry_run:
        typer.echo(json.dumps({**cfg.shared(), "variants": list(cfg.variants), "seeds": cfg.seeds, "jobs": cfg.jobs},
                              indent=2))
        return
    run_bench(cfg, log=lambda m: typer.echo(m))


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":
    main()
