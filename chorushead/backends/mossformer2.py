"""MossFormer2 adapter (modelscope): find the model folder, build it through modelscope's own
pipeline, and run batches of equal-length 8 kHz chunks through it.

Why not call the pipeline on the song: modelscope's SeparationPipeline takes one mono clip, runs it
whole (no chunking: memory grows with the song), peak-normalises each output to 0.5 and quantises
to int16. We build the pipeline (so loading, the registry and ``load_check_point`` are modelscope's
real code) and then call ``pipeline.model`` on float batches; the duet_split stage does the
chunking, the speaker-order alignment and the rescaling.

Install (beside torch 2.14 / numpy 2, nothing downgraded):
    pip install "modelscope[framework]==1.40.2" addict einops rotary-embedding-torch soundfile
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from chorushead.core import assets
from chorushead.core.device import pick_device
from chorushead.core.errors import MissingAsset, StageError

HUB_ID_2SPK = "damo/speech_mossformer2_separation_temporal_8k"
SR = 8000
INSTALL = ('pip install "modelscope[framework]==1.40.2" addict einops rotary-embedding-torch soundfile')


def cache_roots() -> list[Path]:
    """Where a hub id is looked for (core/assets.py): $MODELSCOPE_CACHE alone when set, else
    $CHORUSHEAD_HOME/models/modelscope, else modelscope's default ~/.cache/modelscope/hub; each in
    modelscope's new (``<cache>/models/<id>``) and old (``<cache>/<id>``) layouts."""
    return [r for base in assets.candidates("modelscope_cache") for r in (base / "models", base)]


def candidate_dirs(model: str) -> list[Path]:
    p = Path(os.path.expanduser(model))
    if p.is_absolute() or model.startswith(".") or p.exists():
        return [p]
    # modelscope stores "a.b" names as "a___b" in the cache
    names = {model, model.replace(".", "___")}
    return [root / n for root in cache_roots() for n in sorted(names)]


def is_model_dir(p: Path) -> bool:
    return (p / "configuration.json").is_file() and (p / "pytorch_model.pt").is_file()


def how_to_get(model: str) -> str:
    return (f"on a machine with internet: `python -c \"from modelscope import snapshot_download; "
            f"print(snapshot_download('{model}'))\"` and copy that folder to {cache_roots()[0] / model} (or "
            f"anywhere, and set duet_split.model to the folder); or set duet_split.allow_download=true to fetch "
            f"it at set-up; or skip separation by giving the singers' stems (`chorushead build --stems DIR`)")


def resolve_model_dir(model: str, allow_download: bool = False) -> Path:
    for d in candidate_dirs(model):
        if is_model_dir(d):
            return d
    looked = [str(d) for d in candidate_dirs(model)]
    if allow_download and not Path(os.path.expanduser(model)).is_absolute():
        try:
            from modelscope import snapshot_download
            d = Path(snapshot_download(model))
        except Exception as e:  # offline, unknown id...
            raise MissingAsset(f"MossFormer2 model '{model}'", looked, f"download failed ({e}); {how_to_get(model)}")
        if is_model_dir(d):
            return d
        looked.append(str(d))
    raise MissingAsset(f"MossFormer2 model '{model}' (configuration.json + pytorch_model.pt)", looked,
                       how_to_get(model))


def identity(model: str) -> dict:
    """What will separate (for the stage's fingerprint): the model id or folder as configured, and the
    files modelscope loads from the folder it resolves to (configuration.json + pytorch_model.pt), plus
    the installed modelscope's version (read from its metadata, not imported). Never raises; a model not
    on disk gives "missing" (set-up then fails, or downloads it with allow_download, and the next build's
    identity names the downloaded files)."""
    def make() -> dict:
        out: dict = {"model": model}
        found = next((d for d in candidate_dirs(model) if is_model_dir(d)), None)
        if found is None:
            out["missing"] = [str(d) for d in candidate_dirs(model)]
        else:
            out["files"] = [[f, assets.file_identity(found / f)] for f in ("configuration.json", "pytorch_model.pt")]
        from importlib import metadata
        try:
            out["modelscope"] = metadata.version("modelscope")
        except metadata.PackageNotFoundError:
            out["modelscope"] = None
        return out
    return assets.safe(make)


@dataclass
class MossFormer2Separator:
    """``sep(chunks)`` maps (B, L) float32 8 kHz mono chunks to (B, num_spks, L) float32."""
    model: Any
    model_dir: Path
    device: str
    batch_size: int
    num_spks: int

    @classmethod
    def load(cls, model: str = HUB_ID_2SPK, device: str = "auto", batch_size: int = 4,
             allow_download: bool = False) -> "MossFormer2Separator":
        model_dir = resolve_model_dir(model, allow_download)   # before the (slow) modelscope import
        try:
            from modelscope.pipelines import pipeline
            from modelscope.utils.constant import Tasks
        except ImportError as e:
            raise MissingAsset("modelscope (for MossFormer2)", [f"this python's site-packages ({e})"], INSTALL) from e
        dev = pick_device(device)
        try:
            pipe = pipeline(Tasks.speech_separation, model=str(model_dir), device="gpu" if dev.startswith("cuda") else "cpu")
        except ImportError as e:   # modelscope names the missing extra (soundfile, einops...) itself
            raise MissingAsset("a dependency of modelscope's separation pipeline", [str(model_dir)],
                               f"{e}. Install: {INSTALL}") from e
        net = pipe.model
        cls._check_weights(net, model_dir)
        net.eval()
        return cls(model=net, model_dir=model_dir, device=dev, batch_size=max(1, int(batch_size)),
                   num_spks=int(net.num_spks))

    @staticmethod
    def _check_weights(net: Any, model_dir: Path) -> None:
        """modelscope loads the checkpoint with strict=False: a checkpoint for another configuration
        would leave random layers behind without a word. Refuse that here."""
        import torch
        sd = torch.load(model_dir / "pytorch_model.pt", map_location="cpu", weights_only=True)
        if isinstance(sd, dict) and "state_dict" in sd:
            sd = sd["state_dict"]
        missing = sorted(set(net.state_dict()) - set(sd))
        if missing:
            raise StageError(f"MossFormer2 checkpoint {model_dir / 'pytorch_model.pt'} does not match its "
                             f"configuration.json: {len(missing)} weights missing (e.g. {missing[:3]})")

    def __call__(self, chunks: np.ndarray) -> np.ndarray:
        import torch
        chunks = np.asarray(chunks, dtype=np.float32)
        out = np.empty((chunks.shape[0], self.num_spks, chunks.shape[1]), np.float32)
        with torch.inference_mode():
            for i in range(0, len(chunks), self.batch_size):
                x = torch.from_numpy(chunks[i:i + self.batch_size]).to(self.device)
                y = self.model(x)                      # (b, L, num_spks)
                out[i:i + len(x)] = y.permute(0, 2, 1).float().cpu().numpy()
        return out


def write_random_model(folder: Path, num_spks: int = 2, num_blocks: int = 2, channels: int = 64,
                       seed: int = 0) -> Path:
    """A MossFormer2 folder in the hub's layout with random weights and a small configuration:
    used by tests and the benchmark (no machine here reaches the hub)."""
    import json
    import torch
    from modelscope.models.audio.separation.m2.mossformer import MossFormer2
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"framework": "pytorch", "task": "speech-separation",
           "model": {"type": "speech_mossformer2_separation_temporal_8k", "num_spks": num_spks,
                     "num_blocks": num_blocks, "in_channels": channels, "out_channels": channels,
                     "kernel_size": 16},
           "pipeline": {"type": "speech_mossformer2_separation_temporal_8k"}}
    (folder / "configuration.json").write_text(json.dumps(cfg, indent=1))
    torch.manual_seed(seed)
    net = MossFormer2(str(folder), **{k: v for k, v in cfg["model"].items() if k != "type"})
    torch.save(net.state_dict(), folder / "pytorch_model.pt")
    return folder
