"""Fingerprints follow what actually runs: swapping a model's weights file redoes that stage and what
follows it (its fingerprint changes, and with it every downstream one) but nothing upstream; settings
that only say where or how fast a stage runs (device, batch size, threads, timeouts, interpreter paths)
change no fingerprint. Unit level: the runner's Plan computes the fingerprints, no model is loaded
(the identities hash the stand-in files the other tests use as models)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from chorushead.core.manifest import Record
from chorushead.runner import Pipeline, Plan
from chorushead.stages import get_stage
from chorushead.stages.base import Item

ITEM_STAGES = ["ingest", "screen", "bgm_split", "duet_split", "vad", "crop", "contiguity", "fit", "smooth", "assign"]
UPSTREAM = {  # every stage before it (transitively)
    "bgm_split": {"ingest"}, "duet_split": {"ingest", "bgm_split"}, "crop": {"ingest", "bgm_split", "duet_split", "vad"},
    "fit": {"ingest", "bgm_split", "duet_split", "vad", "crop", "contiguity"},
}


def fingerprints(pipeline: Pipeline, source: Path) -> dict[str, str]:
    """Stage -> the fingerprint a build would record for one item, each stage fed its upstream's."""
    plan = Plan.of(pipeline)
    item = Item(id="song-000000", source=str(source))
    recs: dict[str, Record] = {}
    out = {}
    for name in ITEM_STAGES:
        fp = plan.fingerprint(name, item, {need: recs[need] for need in plan.needs(name)})
        recs[name] = Record(item=item.id, stage=name, status="done", fingerprint=fp)
        out[name] = fp
    return out


def changed(a: dict[str, str], b: dict[str, str]) -> set[str]:
    return {k for k in a if a[k] != b[k]}


@pytest.fixture
def assets(tmp_path, monkeypatch):
    """Stand-in assets for every model-backed stage, all named through stage parameters; returns
    (pipeline overrides, paths). The file contents are arbitrary bytes: identities hash, never load."""
    for var in ("CHORUSHEAD_SPLEETER_PYTHON", "CHORUSHEAD_LANDMARKS_PYTHON", "CHORUSHEAD_EMOCA_MODELS",
                "MODEL_PATH", "MODELSCOPE_CACHE", "CHORUSHEAD_EMOCA_PYTHON"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CHORUSHEAD_HOME", str(tmp_path / "home"))
    a = tmp_path / "assets"
    p = {
        # Spleeter: a random-weight model folder (test_bgm_split) plus a weights file
        "spleeter": a / "spleeter" / "2stems" / "model.data-00000-of-00001",
        # MossFormer2: a model folder in the hub layout (test_duet_split's write_random_model)
        "m2": a / "m2" / "pytorch_model.pt",
        # EMOCA: the stand-in model folder of test_fit, with a checkpoint
        "emoca": a / "emoca" / "EMOCA_v2_lr_mse_20" / "detail" / "checkpoints" / "deca-epoch=03.ckpt",
        # MTCNN: facenet-pytorch's data folder
        "mtcnn": a / "facenet" / "onet.pt",
        # landmarks: a venv layout with mediapipe's model files and metadata
        "lm_model": a / "lmenv" / "lib" / "python3.11" / "site-packages" / "mediapipe" / "modules" / "face_landmark"
                    / "face_landmark_with_attention.tflite",
        "lm_meta": a / "lmenv" / "lib" / "python3.11" / "site-packages" / "mediapipe-0.10.21.dist-info" / "METADATA",
    }
    (a / "spleeter" / "2stems").mkdir(parents=True)
    (a / "spleeter" / "2stems" / ".probe").touch()
    p["m2"].parent.mkdir(parents=True)
    (a / "m2" / "configuration.json").write_text(json.dumps({"model": {"num_spks": 2}}))
    p["emoca"].parent.mkdir(parents=True)
    (a / "emoca" / "EMOCA_v2_lr_mse_20" / "cfg.yaml").write_text("model: {}\n")
    p["mtcnn"].parent.mkdir(parents=True)
    for f in ("pnet.pt", "rnet.pt"):
        (a / "facenet" / f).write_bytes(f.encode())
    p["lm_model"].parent.mkdir(parents=True)
    p["lm_meta"].parent.mkdir(parents=True)
    (a / "lmenv" / "bin").mkdir()
    (a / "lmenv" / "bin" / "python").touch()
    for key in ("spleeter", "m2", "emoca", "mtcnn", "lm_model"):
        p[key].write_bytes(b"weights A" * 100)
    p["lm_meta"].write_text("Metadata-Version: 2.1\nName: mediapipe\nVersion: 0.10.21\n")
    import chorushead.backends.mtcnn as mtcnn
    monkeypatch.setattr(mtcnn, "weights_dir", lambda: a / "facenet")
    sets = [f"bgm_split.model_path={a / 'spleeter'}", f"duet_split.model={a / 'm2'}",
            f"fit.models_dir={a / 'emoca'}"]
    source = tmp_path / "song.mp4"
    source.write_bytes(b"not really a video")
    return sets, p, source


def swap(path: Path) -> None:
    """Replace a weights file by another of the same size (as a re-download of other weights would)."""
    path.write_bytes(b"weights B" * 100)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


@pytest.mark.parametrize("key,stage,extra", [
    ("spleeter", "bgm_split", []),
    ("m2", "duet_split", []),
    ("mtcnn", "crop", []),
    ("emoca", "fit", []),
    ("lm_model", "fit", ["fit.backend=landmarks"]),
    ("lm_meta", "fit", ["fit.backend=landmarks"]),     # another mediapipe version in the landmark venv
])
def test_swapping_a_models_weights_redoes_that_stage_and_what_follows_only(assets, key, stage, extra):
    sets, paths, source = assets
    sets = sets + extra + [f"fit.landmarks_python={paths['lm_meta'].parents[4] / 'bin' / 'python'}"]
    before = fingerprints(Pipeline.load(overrides=sets), source)
    if key == "lm_meta":
        paths[key].write_text("Metadata-Version: 2.1\nName: mediapipe\nVersion: 0.10.22\n")
    else:
        swap(paths[key])
    after = fingerprints(Pipeline.load(overrides=sets), source)
    downstream = set(ITEM_STAGES[ITEM_STAGES.index(stage):])
    # crop's downstream: contiguity, fit, smooth, assign (vad is upstream of crop, not after it)
    downstream = {s for s in downstream if s not in UPSTREAM.get(stage, set())}
    assert stage in changed(before, after)
    assert changed(before, after) & UPSTREAM.get(stage, set()) == set(), "an upstream stage would be redone"
    assert changed(before, after) == downstream
    # and the same weights again give the same fingerprints (nothing random in an identity)
    assert fingerprints(Pipeline.load(overrides=sets), source) == after


def test_execution_settings_change_no_fingerprint(assets, tmp_path, monkeypatch):
    sets, paths, source = assets
    exec_only = ["bgm_split.timeout_seconds=5", f"bgm_split.python={tmp_path / 'elsewhere/bin/python'}",
                 "duet_split.device=cpu", "duet_split.batch_size=1", "duet_split.allow_download=true",
                 "crop.device=cuda", "crop.torch_threads=4",
                 "fit.device=cuda:1", "fit.batch_size=8", f"fit.python={tmp_path / 'emoca/bin/python'}",
                 f"fit.emoca_path={tmp_path / 'emoca-clone'}", f"fit.landmarks_python={tmp_path / 'x/bin/python'}"]
    # bgm_split.python names another interpreter: its (absent) Spleeter version would differ from the
    # checkout's venv, so compare it against the same python given through the environment variable.
    monkeypatch.setenv("CHORUSHEAD_SPLEETER_PYTHON", str(tmp_path / "elsewhere/bin/python"))
    base = fingerprints(Pipeline.load(overrides=sets), source)
    moved = fingerprints(Pipeline.load(overrides=sets + exec_only), source)
    assert moved == base


def test_result_settings_still_change_it(assets):
    sets, _, source = assets
    base = fingerprints(Pipeline.load(overrides=sets), source)
    # MTCNN batching changes boxes in the last bits (see crop.Params): not execution-only
    assert changed(base, fingerprints(Pipeline.load(overrides=sets + ["crop.batch_size=4"]), source)) == {
        "crop", "contiguity", "fit", "smooth", "assign"}
    assert "fit" in changed(base, fingerprints(Pipeline.load(overrides=sets + ["fit.backend=landmarks"]), source))


def test_identities_never_raise_and_name_what_is_missing(tmp_path, monkeypatch):
    for var in ("CHORUSHEAD_SPLEETER_PYTHON", "CHORUSHEAD_LANDMARKS_PYTHON", "CHORUSHEAD_EMOCA_MODELS",
                "MODEL_PATH", "MODELSCOPE_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CHORUSHEAD_HOME", str(tmp_path / "home"))
    pl = Pipeline.load(overrides=[f"bgm_split.model_path={tmp_path / 'none'}", f"duet_split.model={tmp_path / 'none'}",
                                  f"fit.models_dir={tmp_path / 'none'}", "duet_split.n_singers=3"])
    ids = Plan.of(pl).identities
    assert set(ids) == {"bgm_split", "duet_split", "crop", "fit"}
    assert str(tmp_path / "none" / "2stems") in json.dumps(ids["bgm_split"])
    assert ids["duet_split"] == {"missing": "duet_split.model_3"}
    assert str(tmp_path / "none" / "EMOCA_v2_lr_mse_20") in json.dumps(ids["fit"])
    # a lookup that raises becomes an "error" entry, not a failed build
    import chorushead.backends.emoca as em
    monkeypatch.setattr(em, "models_dirs", lambda explicit="": 1 / 0)
    assert "ZeroDivisionError" in get_stage("fit").identity(get_stage("fit").make_params({}))["error"]
