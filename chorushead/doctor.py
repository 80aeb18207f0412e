"""`chorushead doctor`: is every model and environment the pipeline needs where the stages will look?

Each :class:`Check` says what is needed, which stage needs it, where it was looked for, whether it
was found, and how to get it. The checks are cheap (no model is loaded; the other environments are
asked with a one-line ``find_spec`` subprocess, not a TensorFlow import) and use the same lookup
rules as the stages (the one lookup in :mod:`chorushead.core.assets`: stage parameter, else the
specific environment variable, else $CHORUSHEAD_HOME, else the checkout's folders — never the current
folder), honouring the pipeline's parameters when given. So the doctor run in one folder and a build
run in another report and use the same paths.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional


@dataclass
class Check:
    stage: str
    what: str
    looked_in: str
    found: bool
    how_to_get: str
    detail: str = ""


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _other_python_has(python: str, module: str, pythonpath: str = "", timeout: float = 60.0) -> tuple[bool, str]:
    """Ask another interpreter whether it can find ``module`` (without importing it)."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    code = f"import importlib.util,sys; sys.exit(0 if importlib.util.find_spec({module!r}) else 1)"
    try:
        p = subprocess.run([python, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, str(e)
    return p.returncode == 0, p.stderr.strip()[-200:]


def _safe(stage: str, what: str, fn: Callable[[], Check]) -> Check:
    try:
        return fn()
    except Exception as e:  # a doctor never crashes on what it examines
        return Check(stage, what, "?", False, "see detail", detail=f"{type(e).__name__}: {e}")


# ------------------------------------------------------------------ bgm_split

def spleeter_checks(p: dict[str, Any]) -> list[Check]:
    from chorushead.backends import spleeter as sp
    out = []
    exe = sp.find_spleeter_python(p.get("python", ""))
    looked = ", ".join(sp.spleeter_pythons(p.get("python", "")))
    if exe is None and not p.get("python") and sp.in_process_available():
        out.append(Check("bgm_split", "Spleeter (in this python)", sys.executable, True, sp.SETUP_HINT))
    else:
        ok, err = _other_python_has(exe, "spleeter") if exe else (False, "")
        out.append(Check("bgm_split", "Spleeter environment", looked, ok, sp.SETUP_HINT,
                         detail=err or (exe if ok else "")))
    model = p.get("model", "2stems")
    mp = sp.model_path(p.get("model_path", ""), model)
    problem = sp.model_problem(mp, model)
    looked = ", ".join(str(c / model) for c in sp.model_paths(p.get("model_path", "")))
    out.append(Check("bgm_split", f"Spleeter model '{model}'", looked, problem is None,
                     sp.model_how(mp, model), detail=str(mp / model) if problem is None
                     else "" if problem == "missing" else problem))
    return out


# ------------------------------------------------------------------ duet_split

def mossformer_checks(p: dict[str, Any]) -> list[Check]:
    from chorushead.backends import mossformer2 as m2
    mods = ["modelscope", "addict", "einops", "rotary_embedding_torch", "soundfile"]
    missing = [m for m in mods if not _has_module(m)]
    out = [Check("duet_split", "modelscope + MossFormer2 dependencies", f"{sys.executable} site-packages",
                 not missing, m2.INSTALL, detail=f"missing: {', '.join(missing)}" if missing else "")]
    n = int(p.get("n_singers", 2))
    model = p.get("model", m2.HUB_ID_2SPK) if n == 2 else p.get("model_3", "")
    if not model:
        out.append(Check("duet_split", f"MossFormer2 model for {n} singers", "duet_split.model_3", False,
                         "set duet_split.model_3 to a hub id or a model folder"))
        return out
    dirs = m2.candidate_dirs(model)
    found = next((d for d in dirs if m2.is_model_dir(d)), None)
    out.append(Check("duet_split", f"MossFormer2 model '{model}'", ", ".join(map(str, dirs)), found is not None,
                     m2.how_to_get(model), detail=str(found or "")))
    return out


# ------------------------------------------------------------------ crop

def facenet_checks(p: dict[str, Any]) -> list[Check]:
    from chorushead.backends import mtcnn
    data = mtcnn.weights_dir()
    if data is None:
        return [Check("crop", "facenet-pytorch MTCNN weights", f"{sys.executable} site-packages", False, mtcnn.HOW)]
    missing = [f for f in mtcnn.WEIGHT_FILES if not (data / f).is_file()]
    return [Check("crop", "facenet-pytorch MTCNN weights (pnet/rnet/onet)", str(data), not missing, mtcnn.HOW,
                  detail=f"missing: {missing}" if missing else "")]


# ------------------------------------------------------------------ fit

def emoca_checks(p: dict[str, Any]) -> list[Check]:
    from chorushead.backends import emoca as em
    out = []
    exe = em.emoca_python(p.get("python", ""))
    code = em.emoca_code_path(p.get("emoca_path", ""))
    if exe:
        ok, err = (_other_python_has(exe, "gdl_apps", code) if Path(exe).exists() else (False, "no such file"))
        out.append(Check("fit", "EMOCA environment (python that imports gdl_apps)",
                         exe + (f" with PYTHONPATH={code}" if code else ""), ok, em.HOW_ENV, detail=err))
    else:
        if code and code not in sys.path:
            sys.path.insert(0, code)
            try:
                ok = em.in_process_available()
            finally:
                sys.path.remove(code)
        else:
            ok = em.in_process_available()
        out.append(Check("fit", "EMOCA environment", "fit.python, $CHORUSHEAD_EMOCA_PYTHON, "
                         f"this python ({sys.executable})", ok, em.HOW_ENV))
    name = p.get("model_name", "EMOCA_v2_lr_mse_20")
    mdir = em.models_dir(p.get("models_dir", ""), name)
    looked = ", ".join(str(c / name) for c in em.models_dirs(p.get("models_dir", "")))
    found = (mdir / name).is_dir()
    out.append(Check("fit", f"EMOCA model '{name}'", looked, found, em.HOW_MODELS,
                     detail=str(mdir / name) if found else ""))
    return out


def landmark_checks(p: dict[str, Any]) -> list[Check]:
    """fit.backend = landmarks: the mediapipe venv, the face-mesh models inside its wheel, our canonical face."""
    from chorushead.backends import landmarks as lmk
    explicit = p.get("landmarks_python", "")
    exe = lmk.find_landmark_python(explicit)
    looked = ", ".join(lmk.landmark_pythons(explicit))
    out = []
    if exe is None and not explicit and lmk.in_process_available():
        out.append(Check("fit", "landmarks: mediapipe (in this python)", sys.executable, True, lmk.SETUP_HINT))
    elif exe is None:
        out.append(Check("fit", "landmarks: mediapipe environment + face-mesh models", looked, False, lmk.SETUP_HINT))
    else:
        # where the wheel's models are, found without importing mediapipe (as the stage's worker loads them)
        from chorushead.backends.landmarks_worker import MODEL_FILES
        code = ("import importlib.util,os,sys; s=importlib.util.find_spec('mediapipe'); "
                "sys.exit(1) if s is None else print(list(s.submodule_search_locations)[0])")
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        r = subprocess.run([exe, "-c", code], env=env, capture_output=True, text=True, timeout=60)
        root = r.stdout.strip()
        missing = [f for f in MODEL_FILES if not root or not (Path(root) / f).is_file()]
        out.append(Check("fit", "landmarks: mediapipe environment + face-mesh models", looked, r.returncode == 0 and not missing,
                         lmk.SETUP_HINT, detail=(f"{exe}: missing in {root or 'mediapipe (not installed)'}: {missing}"
                                                 if missing else f"{exe}: {root}")))
    out.append(Check("fit", "landmarks: canonical face", str(lmk.CANONICAL), lmk.CANONICAL.is_file(),
                     "it ships with chorushead (chorushead/data); reinstall the package"))
    return out


# ------------------------------------------------------------------ pachorus

def flame_checks(p: dict[str, Any]) -> list[Check]:
    folder = os.environ.get("FLAME_DIR", "")
    how = ("register at https://flame.is.tue.mpg.de, download FLAME 2020 (generic_model.pkl) and the "
           "FLAME vertex masks (FLAME_masks.pkl) into one folder, and set FLAME_DIR to it")
    if not folder:
        return [Check("pachorus", "FLAME model + masks (for LVE/FVE/FDD)", "$FLAME_DIR (not set)", False, how)]
    missing = [f for f in ("generic_model.pkl", "FLAME_masks.pkl") if not (Path(folder) / f).is_file()]
    return [Check("pachorus", "FLAME model + masks (for LVE/FVE/FDD)", folder, not missing, how,
                  detail=f"missing: {missing}" if missing else "")]


def doctor(stage_params: Optional[dict[str, dict[str, Any]]] = None) -> list[Check]:
    """All checks; ``stage_params`` = the pipeline's ``[stages.*]`` tables (so configured paths count)."""
    sp = stage_params or {}
    groups = [("bgm_split", "Spleeter", spleeter_checks), ("duet_split", "MossFormer2", mossformer_checks),
              ("crop", "facenet", facenet_checks), ("fit", "EMOCA", emoca_checks), ("fit", "face landmarks", landmark_checks),
              ("pachorus", "FLAME", flame_checks)]
    checks: list[Check] = []
    for stage, what, fn in groups:
        res = _safe(stage, what, lambda fn=fn, stage=stage: fn(dict(sp.get(stage, {}))))
        checks.extend(res if isinstance(res, list) else [res])
    return checks


def format_report(checks: list[Check]) -> str:
    """Human-readable report: one block per check, missing ones with how to get them."""
    from chorushead.core.assets import HOME_VAR, home
    lines = [f"data folder: {home()} (set ${HOME_VAR} to move it; lookup order: stage parameter, the specific "
             f"environment variable, this folder, then the source checkout's envs/ and model folders)"]
    width = max((len(c.stage) for c in checks), default=5)
    for c in checks:
        mark = "ok     " if c.found else "MISSING"
        lines.append(f"[{mark}] {c.stage:<{width}}  {c.what}")
        lines.append(f"          looked in: {c.looked_in}")
        if c.detail:
            lines.append(f"          detail: {c.detail}")
        if not c.found:
            lines.append(f"          how to get it: {c.how_to_get}")
    n_missing = sum(not c.found for c in checks)
    lines.append(f"{len(checks) - n_missing} of {len(checks)} found" + (f"; {n_missing} missing" if n_missing else ""))
    return "\n".join(lines)


if __name__ == "__main__":
    print(format_report(doctor()))
