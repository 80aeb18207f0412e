"""Where models and their environments are: ONE lookup, the same from any folder.

Every backend, `chorushead doctor` and the set-up scripts ask this module, so a build and the doctor
run from different folders look in the same places. Nothing here depends on the current folder.

The data folder (:func:`home`): ``$CHORUSHEAD_HOME``, else ``$XDG_DATA_HOME/chorushead``, else
``~/.local/share/chorushead``. Inside it::

    envs/spleeter/          Spleeter's venv      (scripts/setup_spleeter_env.sh)
    envs/landmarks/         MediaPipe's venv     (scripts/setup_landmarks_env.sh)
    models/spleeter/2stems/ Spleeter's models    (Spleeter's MODEL_PATH)
    models/EMOCA/           EMOCA's models       (holds EMOCA_v2_lr_mse_20/ ...)
    models/modelscope/      a modelscope cache   (holds models/damo/speech_mossformer2_...)

Lookup order for each kind (first match wins; see :data:`KINDS`):

1. the stage parameter (e.g. ``bgm_split.python``), ALONE: a configured path that is wrong fails
   instead of silently using another copy;
2. the kind's own environment variable (``CHORUSHEAD_SPLEETER_PYTHON``, ``MODEL_PATH``,
   ``CHORUSHEAD_EMOCA_MODELS``, ``CHORUSHEAD_LANDMARKS_PYTHON``, ``MODELSCOPE_CACHE``), also alone;
3. the data folder above;
4. the source checkout's own folders, found from this file (not the current folder): ``envs/``
   (where ``scripts/setup.sh`` builds the venvs unless CHORUSHEAD_HOME is set),
   ``pretrained_models/`` and ``assets/EMOCA/models`` — so installs made before the data folder
   existed keep working. (For a wheel install these point into site-packages and find nothing.)

Stdlib only, and runnable as a script (the set-up scripts call it before the package is installed):
``python chorushead/core/assets.py install-dir spleeter`` prints where a new venv goes;
``python chorushead/core/assets.py find spleeter_python`` prints what the lookup finds (exit 1: nothing);
``python chorushead/core/assets.py home`` prints the data folder.
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

HOME_VAR = "CHORUSHEAD_HOME"
CHECKOUT = Path(__file__).resolve().parents[2]     # the source tree (or site-packages for a wheel)


def home() -> Path:
    """The data folder: $CHORUSHEAD_HOME, else $XDG_DATA_HOME/chorushead, else ~/.local/share/chorushead."""
    explicit = os.environ.get(HOME_VAR, "")
    if explicit:
        return Path(explicit).expanduser().absolute()
    xdg = os.environ.get("XDG_DATA_HOME", "")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return (base / "chorushead").absolute()


@dataclass(frozen=True)
class Kind:
    """One kind of asset: its env var, its place in the data folder and in the checkout."""
    env: str                  # the specific environment variable (wins over the defaults, alone)
    in_home: str              # path inside home()
    in_checkout: str          # path inside the source checkout (installs made by older set-ups)
    suffix: str = ""          # appended to every default (a venv folder -> its python)
    description: str = ""


KINDS: dict[str, Kind] = {
    "spleeter_python": Kind("CHORUSHEAD_SPLEETER_PYTHON", "envs/spleeter", "envs/spleeter", "bin/python",
                            "Spleeter's venv python"),
    "landmarks_python": Kind("CHORUSHEAD_LANDMARKS_PYTHON", "envs/landmarks", "envs/landmarks", "bin/python",
                             "MediaPipe's venv python"),
    "spleeter_models": Kind("MODEL_PATH", "models/spleeter", "pretrained_models", "",
                            "Spleeter's model folder (holds 2stems/)"),
    "emoca_models": Kind("CHORUSHEAD_EMOCA_MODELS", "models/EMOCA", "assets/EMOCA/models", "",
                         "EMOCA's model folder (holds EMOCA_v2_lr_mse_20/)"),
    # modelscope's cache root (it holds models/<id>): $MODELSCOPE_CACHE, else ours, else modelscope's default
    "modelscope_cache": Kind("MODELSCOPE_CACHE", "models/modelscope", "", "", "a modelscope hub cache"),
}


def _p(s: str) -> Path:
    return Path(os.path.expanduser(s))


def candidates(kind: str, explicit: str = "") -> list[Path]:
    """Where ``kind`` is looked for, in order (see the module doc). Parameter or env var: that alone."""
    k = KINDS[kind]
    if explicit:
        return [_p(explicit)]
    env = os.environ.get(k.env, "")
    if env:
        return [_p(env)]
    return defaults(kind)


def defaults(kind: str) -> list[Path]:
    """Where ``kind`` is looked for when neither its parameter nor its variable is set."""
    k = KINDS[kind]
    out = [home() / k.in_home]
    if kind == "modelscope_cache":
        out.append(Path.home() / ".cache" / "modelscope" / "hub")   # modelscope's own default
    elif k.in_checkout:
        out.append(CHECKOUT / k.in_checkout)
    return [p / k.suffix if k.suffix else p for p in out]


def find(kind: str, explicit: str = "", ok: Callable[[Path], bool] = Path.exists) -> Optional[Path]:
    """The first candidate for which ``ok`` holds, else None."""
    return next((c for c in candidates(kind, explicit) if ok(c)), None)


def resolve(kind: str, explicit: str = "", ok: Callable[[Path], bool] = Path.exists) -> Path:
    """The first candidate that ``ok`` accepts, else the first candidate (where a new install should go,
    and what error messages name first)."""
    return find(kind, explicit, ok) or candidates(kind, explicit)[0]


def install_dir(name: str) -> Path:
    """Where the set-up scripts build the venv ``name`` (spleeter, landmarks): $CHORUSHEAD_HOME/envs/<name>
    when CHORUSHEAD_HOME is set, else the checkout's envs/<name> (as before the data folder existed).
    Either is on the lookup list."""
    if os.environ.get(HOME_VAR):
        return home() / "envs" / name
    return CHECKOUT / "envs" / name


def describe_order() -> str:
    """One line per kind: the lookup order as this machine resolves it (for `chorushead doctor`)."""
    lines = [f"data folder: {home()}  (${HOME_VAR}, else $XDG_DATA_HOME/chorushead, else ~/.local/share/chorushead)"]
    for name, k in KINDS.items():
        looked = ", ".join(map(str, defaults(name)))
        lines.append(f"{name}: stage parameter, else ${k.env}, else {looked}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Identities: cheap fingerprints of what a model is (for Stage.identity). Never raise.

def file_identity(path: Path, sample: int = 1 << 20) -> str:
    """Size + mtime + first/last MiB hash (the same rule as core.manifest.file_fingerprint)."""
    from chorushead.core.manifest import file_fingerprint
    return file_fingerprint(Path(path), sample)


def files_identity(root: Path, patterns: Iterable[str] = ("*",), hidden: bool = False,
                   limit: int = 500) -> list[list[str]]:
    """Sorted [relative path, fingerprint] of the files under ``root`` matching any of ``patterns``
    (recursive glob patterns, e.g. "*.ckpt"); hidden files (marker files such as Spleeter's .probe)
    are left out unless ``hidden``. At most ``limit`` files (a weights folder has a handful)."""
    root = Path(root)
    seen: dict[str, Path] = {}
    for pat in patterns:
        for p in root.rglob(pat):
            rel = p.relative_to(root).as_posix()
            if not hidden and any(part.startswith(".") for part in p.relative_to(root).parts):
                continue
            if p.is_file():
                seen[rel] = p
    return [[rel, file_identity(seen[rel])] for rel in sorted(seen)[:limit]]


_DIST = re.compile(r"^Version:\s*(\S+)", re.M)


def dist_version(name: str, site_dirs: Iterable[Path]) -> Optional[str]:
    """The version of distribution ``name`` installed in one of ``site_dirs``, read from its dist-info
    METADATA (nothing is imported)."""
    norm = re.sub(r"[-_.]+", "_", name).lower()
    for d in site_dirs:
        d = Path(d)
        if not d.is_dir():
            continue
        for info in d.glob("*.dist-info"):
            if re.sub(r"[-_.]+", "_", info.name[:-len(".dist-info")].rsplit("-", 1)[0]).lower() != norm:
                continue
            meta = info / "METADATA"
            if meta.is_file():
                m = _DIST.search(meta.read_text(errors="replace")[:4096])
                if m:
                    return m.group(1)
    return None


def venv_site_packages(python: str | Path) -> list[Path]:
    """site-packages folders of the environment whose interpreter is ``python`` (a venv's bin/python,
    not resolved: venv pythons are symlinks to the base interpreter), found on disk without running it."""
    root = Path(python).absolute().parent.parent
    return sorted(root.glob("lib/python3*/site-packages")) + sorted(root.glob("lib/python3*/dist-packages"))


def safe(fn: Callable[[], object]) -> object:
    """``fn()``, or {"error": ...} if it raises: an identity must never stop a build."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - the stage itself reports the real problem at set-up
        return {"error": f"{type(e).__name__}: {e}"[:300]}


def _main(argv: list[str]) -> int:
    if argv[:1] == ["home"]:
        print(home())
    elif argv[:1] == ["install-dir"] and len(argv) == 2:
        print(install_dir(argv[1]))
    elif argv[:1] == ["find"] and len(argv) == 2 and argv[1] in KINDS:
        found = find(argv[1])
        if found is None:
            return 1
        print(found)
    elif argv[:1] == ["order"]:
        print(describe_order())
    else:
        print(f"usage: assets.py home | install-dir NAME | find {{{'|'.join(KINDS)}}} | order", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
