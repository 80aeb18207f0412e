"""Spleeter worker: runs INSIDE Spleeter's own environment (see scripts/setup_spleeter_env.sh).

Spleeter 2.4.2 pins tensorflow 2.12 / numpy<2 / Python<3.12, so it cannot be imported next to the
project's torch + numpy 2. The bgm_split stage starts this file with that environment's python and
talks to it over stdin/stdout, one JSON object per line:

    -> {"input": "/abs/mix.npy", "output_dir": "/abs/dir"}          (mix: float32 (n, 2) at 44.1 kHz)
    <- {"ok": true, "outputs": {"vocals": "/abs/dir/vocals.npy", "accompaniment": ...}, "seconds": 1.2}
    <- {"ok": false, "error": "...", "missing": false}

The first line it writes is {"ready": true, ...} once TensorFlow and Spleeter are imported, so the
parent can tell a broken environment (no ready line) from a failing song.

Only numpy, spleeter and ``crossfade.py`` from this folder (numpy only: the chunking shared with
duet_split) are imported here (no chorushead): this file must run in a venv that has nothing of the
project installed. The same ``SpleeterRunner`` is used in-process when the current interpreter can
import spleeter.

Why arrays and not files: Spleeter's own loader shells out to ffmpeg AND ffprobe, and its
``separate_to_file`` cuts songs at 600 s by default. ``Separator.separate`` on an array does
neither, so a 20-minute song is separated to its end.

Why chunks: Spleeter holds the whole song's spectrograms in TensorFlow at once; measured on 2 CPU
cores, a 620 s song took 12.2 GB peak RSS (and 237 s). Its U-Net already works on independent
512-frame (11.9 s) segments, so separating 60 s chunks with a few seconds of overlap and
cross-fading them changes nothing but the memory: about 1.3 GB whatever the song's length.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

if __package__:   # imported in-process (the adapter, when this interpreter has spleeter): as ours
    crossfade = importlib.import_module(__package__ + ".crossfade")
else:             # run as a script under Spleeter's interpreter: this file's folder is sys.path[0]
    import crossfade
chunk_starts, crossfade_into = crossfade.chunk_starts, crossfade.crossfade_into

SAMPLE_RATE = 44100


class ModelMissing(Exception):
    pass


def model_folder(model_path: str, model: str) -> str:
    return os.path.join(model_path, model)


def check_model(model_path: str, model: str) -> None:
    """Spleeter downloads a model unless ``<MODEL_PATH>/<model>/.probe`` exists; offline that download
    hangs or fails deep inside TensorFlow, so we check first and say what to do."""
    folder = model_folder(model_path, model)
    if os.path.exists(os.path.join(folder, ".probe")):
        return
    if os.path.exists(os.path.join(folder, "checkpoint")):
        raise ModelMissing(
            f"Spleeter model folder {folder} has a checkpoint but no .probe marker, so Spleeter would "
            f"try to download it again. Run: touch {os.path.join(folder, '.probe')}")
    raise ModelMissing(
        f"Spleeter model '{model}' not found at {folder}. Download {model}.tar.gz from the Spleeter "
        f"release v1.4.0 (github.com/deezer/spleeter/releases), extract it into {folder} and "
        f"`touch {os.path.join(folder, '.probe')}`; or set MODEL_PATH / bgm_split.model_path.")


class SpleeterRunner:
    """Loads Spleeter once; ``separate`` maps a (n, 2) float32 44.1 kHz array to its stems."""

    def __init__(self, model_path: str, model: str = "2stems"):
        check_model(model_path, model)
        # ModelProvider reads MODEL_PATH when spleeter is first imported: set it before the import.
        os.environ["MODEL_PATH"] = os.path.abspath(model_path)
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import spleeter
        from spleeter.model.provider import ModelProvider
        from spleeter.separator import Separator
        if os.path.abspath(ModelProvider.DEFAULT_MODEL_PATH) != os.path.abspath(model_path):
            # spleeter was imported earlier in this process with another MODEL_PATH
            ModelProvider.DEFAULT_MODEL_PATH = os.path.abspath(model_path)
        try:
            from importlib.metadata import version
            self.version = version("spleeter")
        except Exception:
            self.version = getattr(spleeter, "__version__", "?")
        # multiprocess=False: the Pool it would start is only used by separate_to_file.
        self.separator = Separator(f"spleeter:{model}", multiprocess=False)

    def separate_whole(self, mix):
        import numpy as np
        stems = self.separator.separate(mix)
        out = {}
        for name, wav in stems.items():
            wav = np.asarray(wav, dtype=np.float32)
            # Spleeter pads to whole STFT segments; give back exactly the input's length.
            if wav.shape[0] < mix.shape[0]:
                wav = np.pad(wav, ((0, mix.shape[0] - wav.shape[0]), (0, 0)))
            out[name] = wav[:mix.shape[0]]
        return out

    def separate(self, mix, chunk_seconds: float = 60.0, overlap_seconds: float = 4.0):
        import numpy as np
        mix = np.asarray(mix, dtype=np.float32)
        if mix.ndim == 1:
            mix = np.stack([mix, mix], axis=1)
        return separate_chunked(mix, self.separate_whole, int(chunk_seconds * SAMPLE_RATE),
                                int(overlap_seconds * SAMPLE_RATE))


def separate_chunked(mix, separate_fn, chunk: int, overlap: int):
    """Run ``separate_fn`` (array -> {stem: array of the same length}) on overlapping chunks and
    cross-fade linearly where chunks overlap. Stems of a mask model sum to the mix in every chunk,
    so the cross-fade keeps that property. Output length == input length, whatever it is."""
    import numpy as np
    n = mix.shape[0]
    starts = chunk_starts(n, chunk, overlap)
    if len(starts) == 1:
        return separate_fn(mix)
    out, end = None, 0
    for s in starts:
        stems = separate_fn(mix[s:s + chunk])
        if out is None:
            out = {k: np.zeros((n,) + v.shape[1:], np.float32) for k, v in stems.items()}
        for k, v in stems.items():
            crossfade_into(out[k], s, end, v)
        end = s + chunk
    return out


def handle(runner: SpleeterRunner, job: dict) -> dict:
    """One song: ``input`` (.npy mix) -> one ``<stem>.npy`` per stem in ``output_dir``."""
    import numpy as np
    mix = np.load(job["input"])
    stems = runner.separate(mix, float(job.get("chunk_seconds", 60.0)), float(job.get("overlap_seconds", 4.0)))
    outputs = {}
    for name, wav in stems.items():
        path = os.path.join(job["output_dir"], f"{name}.npy")
        np.save(path, wav)
        outputs[name] = path
    return {"outputs": outputs}


def main() -> None:
    # Run as a script, this file's folder is sys.path[0] and holds chorushead's adapters (``spleeter.py``,
    # ``worker.py``, ...); ``isolate`` drops it, since ``spleeter.py`` would shadow the real package.
    import worker_protocol as wp
    proto = wp.isolate(__file__)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-path", default=os.environ.get("MODEL_PATH", "pretrained_models"))
    ap.add_argument("--model", default="2stems")
    args = ap.parse_args()
    runner = wp.start(proto, lambda: SpleeterRunner(args.model_path, args.model),
                      lambda r: {"spleeter": r.version}, missing=lambda e: True if isinstance(e, ModelMissing) else None)
    wp.serve(lambda job: handle(runner, job), sys.stdin, proto)


if __name__ == "__main__":
    main()
