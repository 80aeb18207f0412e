"""doctor: every asset is reported found when it is where the stages look, missing (with how to
get it) when not, honouring pipeline parameters and environment variables."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from chorushead.doctor import Check, doctor, format_report

STAND_INS = Path(__file__).parent / "stand_ins"


def by_what(checks: list[Check]) -> dict[str, Check]:
    return {f"{c.stage}:{c.what}": c for c in checks}


def test_everything_missing(tmp_path, monkeypatch):
    for var in ("CHORUSHEAD_SPLEETER_PYTHON", "CHORUSHEAD_EMOCA_PYTHON", "CHORUSHEAD_EMOCA_PATH",
                "CHORUSHEAD_EMOCA_MODELS", "FLAME_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MODEL_PATH", str(tmp_path / "spleeter_models"))
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms"))
    params = {"bgm_split": {"python": str(tmp_path / "no/python")}, "fit": {"models_dir": str(tmp_path / "emoca")}}
    checks = doctor(params)
    stages = {c.stage for c in checks}
    assert {"bgm_split", "duet_split", "crop", "fit", "pachorus"} <= stages
    missing = {f"{c.stage}:{c.what}" for c in checks if not c.found}
    for key in ("bgm_split:Spleeter environment", "bgm_split:Spleeter model '2stems'",
                "duet_split:MossFormer2 model 'damo/speech_mossformer2_separation_temporal_8k'",
                "fit:EMOCA model 'EMOCA_v2_lr_mse_20'", "pachorus:FLAME model + masks (for LVE/FVE/FDD)"):
        assert key in missing, (key, missing)
    assert all(c.how_to_get for c in checks if not c.found)
    report = format_report(checks)
    assert "MISSING" in report and "how to get it" in report and str(tmp_path / "spleeter_models") in report


def test_everything_found_where_configured(tmp_path, monkeypatch):
    (tmp_path / "sm/2stems").mkdir(parents=True)
    (tmp_path / "sm/2stems/.probe").touch()
    m2 = tmp_path / "ms/models/damo/speech_mossformer2_separation_temporal_8k"
    m2.mkdir(parents=True)
    (m2 / "configuration.json").write_text("{}")
    (m2 / "pytorch_model.pt").write_bytes(b"")
    (tmp_path / "emoca/EMOCA_v2_lr_mse_20").mkdir(parents=True)
    (tmp_path / "flame").mkdir()
    for f in ("generic_model.pkl", "FLAME_masks.pkl"):
        (tmp_path / "flame" / f).write_bytes(b"")
    monkeypatch.setenv("MODEL_PATH", str(tmp_path / "sm"))
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms"))
    monkeypatch.setenv("FLAME_DIR", str(tmp_path / "flame"))
    monkeypatch.setenv("CHORUSHEAD_EMOCA_MODELS", str(tmp_path / "emoca"))
    monkeypatch.setenv("CHORUSHEAD_EMOCA_PYTHON", sys.executable)
    monkeypatch.setenv("CHORUSHEAD_EMOCA_PATH", str(STAND_INS))
    checks = by_what(doctor())
    for key in ("bgm_split:Spleeter model '2stems'",
                "duet_split:MossFormer2 model 'damo/speech_mossformer2_separation_temporal_8k'",
                "fit:EMOCA environment (python that imports gdl_apps)", "fit:EMOCA model 'EMOCA_v2_lr_mse_20'",
                "pachorus:FLAME model + masks (for LVE/FVE/FDD)"):
        assert checks[key].found, checks[key]
    assert "found" in format_report(list(checks.values()))


def test_a_failing_check_does_not_crash_the_doctor(monkeypatch):
    import chorushead.doctor as d
    monkeypatch.setattr(d, "facenet_checks", lambda p: 1 / 0)
    checks = d.doctor()
    bad = [c for c in checks if c.stage == "crop"]
    assert len(bad) == 1 and not bad[0].found and "ZeroDivisionError" in bad[0].detail


# ------------------------------------------------------------------ one lookup, the same from any folder
ASSET_VARS = ("CHORUSHEAD_SPLEETER_PYTHON", "CHORUSHEAD_LANDMARKS_PYTHON", "CHORUSHEAD_EMOCA_MODELS",
              "CHORUSHEAD_EMOCA_PYTHON", "CHORUSHEAD_EMOCA_PATH", "MODEL_PATH", "MODELSCOPE_CACHE", "XDG_DATA_HOME")
M2 = "damo/speech_mossformer2_separation_temporal_8k"

DOCTOR = r"""
import json
from chorushead.doctor import doctor
print(json.dumps({f"{c.stage}:{c.what}": [c.looked_in, c.found, c.detail] for c in doctor()}))
"""
BACKENDS = r"""
import json
from chorushead.backends import emoca, landmarks, mossformer2, spleeter
from chorushead.core.errors import MissingAsset
out = {"spleeter_model": str(spleeter.model_path("", "2stems") / "2stems"),
       "spleeter_looked": [str(c / "2stems") for c in spleeter.model_paths()],
       "spleeter_python": spleeter.spleeter_pythons(),
       "emoca_model": str(emoca.models_dir("", "EMOCA_v2_lr_mse_20") / "EMOCA_v2_lr_mse_20"),
       "m2_candidates": [str(d) for d in mossformer2.candidate_dirs(%r)],
       "landmarks_python": landmarks.landmark_pythons()}
try:
    spleeter.SpleeterBackend.open(python="/nonexistent/python")
except MissingAsset as e:
    out["spleeter_missing"] = e.looked
try:
    emoca.EmocaBackend.open()
except MissingAsset as e:
    out["emoca_missing"] = e.looked
    out["emoca_message"] = str(e)
print(json.dumps(out))
""" % M2


def _run(code: str, cwd: Path, env: dict) -> dict:
    import json
    import subprocess
    cwd.mkdir(parents=True, exist_ok=True)
    p = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


def _env(tmp_path: Path) -> dict:
    import os
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k not in ASSET_VARS}
    env["CHORUSHEAD_HOME"] = str(tmp_path / "home")
    env["PYTHONPATH"] = str(root)    # the checkout, whatever the folder the commands run in
    return env


def test_doctor_and_the_backends_look_in_the_same_places_from_any_folder(tmp_path):
    """Nothing in the data folder: the doctor (run in one folder) and the backends' own errors (run in
    another) name the same places, all absolute and none under either folder."""
    from chorushead.core.assets import CHECKOUT
    if (CHECKOUT / "pretrained_models/2stems").exists() or (CHECKOUT / "assets/EMOCA/models").exists():
        pytest.skip("this checkout holds Spleeter/EMOCA models of its own (found before anything is missing)")
    env = _env(tmp_path)
    doc = _run(DOCTOR, tmp_path / "here", env)
    back = _run(BACKENDS, tmp_path / "there" / "deeper", env)
    home = str(tmp_path / "home")
    looked = doc["bgm_split:Spleeter model '2stems'"][0].split(", ")
    assert looked == back["spleeter_looked"] == back["spleeter_missing"]
    assert looked[0] == f"{home}/models/spleeter/2stems"
    assert doc["bgm_split:Spleeter environment"][0].split(", ") == back["spleeter_python"]
    assert back["spleeter_python"][0] == f"{home}/envs/spleeter/bin/python"
    assert doc["fit:EMOCA model 'EMOCA_v2_lr_mse_20'"][0].split(", ") == back["emoca_missing"]
    assert doc[f"duet_split:MossFormer2 model '{M2}'"][0].split(", ") == back["m2_candidates"]
    assert back["m2_candidates"][0].startswith(f"{home}/models/modelscope/")
    for paths in (looked, back["emoca_missing"], back["m2_candidates"], back["spleeter_python"]):
        assert all(Path(p).is_absolute() and str(tmp_path / "here") not in p and str(tmp_path / "there") not in p
                   for p in paths), paths
    # without EMOCA, the error names the open backend
    assert "--set fit.backend=landmarks" in back["emoca_message"]


def test_assets_in_the_data_folder_are_found_by_both(tmp_path):
    home = tmp_path / "home"
    (home / "models/spleeter/2stems").mkdir(parents=True)
    (home / "models/spleeter/2stems/.probe").touch()
    (home / "models/EMOCA/EMOCA_v2_lr_mse_20").mkdir(parents=True)
    m2 = home / "models/modelscope/models" / M2
    m2.mkdir(parents=True)
    (m2 / "configuration.json").write_text("{}")
    (m2 / "pytorch_model.pt").write_bytes(b"")
    env = _env(tmp_path)
    doc = _run(DOCTOR, tmp_path / "a", env)
    back = _run(BACKENDS, tmp_path / "b", env)
    spl = doc["bgm_split:Spleeter model '2stems'"]
    assert spl[1] and spl[2] == back["spleeter_model"] == str(home / "models/spleeter/2stems")
    emo = doc["fit:EMOCA model 'EMOCA_v2_lr_mse_20'"]
    assert emo[1] and emo[2] == back["emoca_model"] == str(home / "models/EMOCA/EMOCA_v2_lr_mse_20")
    mf = doc[f"duet_split:MossFormer2 model '{M2}'"]
    assert mf[1] and mf[2] == str(m2)


def test_data_folder_and_lookup_order(tmp_path, monkeypatch):
    from chorushead.core import assets
    monkeypatch.delenv("CHORUSHEAD_HOME", raising=False)
    monkeypatch.delenv("MODEL_PATH", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert assets.home() == tmp_path / "xdg" / "chorushead"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert assets.home() == Path.home() / ".local" / "share" / "chorushead"
    monkeypatch.setenv("CHORUSHEAD_HOME", str(tmp_path / "h"))
    assert assets.home() == tmp_path / "h"
    # parameter alone, else the specific variable alone, else the data folder, then the checkout
    assert assets.candidates("spleeter_models", "/x") == [Path("/x")]
    assert assets.candidates("spleeter_models") == [tmp_path / "h/models/spleeter", assets.CHECKOUT / "pretrained_models"]
    monkeypatch.setenv("MODEL_PATH", "/y")
    assert assets.candidates("spleeter_models") == [Path("/y")]
    assert assets.install_dir("spleeter") == tmp_path / "h" / "envs" / "spleeter"
    monkeypatch.delenv("CHORUSHEAD_HOME")
    assert assets.install_dir("landmarks") == assets.CHECKOUT / "envs" / "landmarks"


def test_landmark_venv_of_an_older_setup_is_still_found(tmp_path, monkeypatch):
    """scripts/setup.sh without CHORUSHEAD_HOME builds envs/landmarks in the checkout: still on the list."""
    from chorushead.backends import landmarks
    from chorushead.core import assets
    monkeypatch.delenv("CHORUSHEAD_LANDMARKS_PYTHON", raising=False)
    monkeypatch.setenv("CHORUSHEAD_HOME", str(tmp_path / "empty"))
    assert landmarks.landmark_pythons()[-1] == str(assets.CHECKOUT / "envs" / "landmarks" / "bin" / "python")
