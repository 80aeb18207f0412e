"""Stage registry: name -> module that defines ``STAGE`` (a :class:`chorushead.stages.base.Stage`).

Modules are imported on first use so a stage whose third-party package is missing does not break
the others (its missing asset is reported when it runs, and by `chorushead doctor`).
"""
from __future__ import annotations

import importlib

from chorushead.stages.base import Stage

STAGE_MODULES: dict[str, str] = {
    "ingest": "chorushead.stages.ingest",
    "screen": "chorushead.stages.screen",
    "fingerprint": "chorushead.stages.fingerprint",
    "bgm_split": "chorushead.stages.bgm_split",
    "duet_split": "chorushead.stages.duet_split",
    "vad": "chorushead.stages.vad",
    "crop": "chorushead.stages.crop",
    "contiguity": "chorushead.stages.contiguity",
    "fit": "chorushead.stages.fit",
    "smooth": "chorushead.stages.smooth",
    "assign": "chorushead.stages.assign",
    "pack": "chorushead.stages.pack",
}


def get_stage(name: str) -> Stage:
    if name not in STAGE_MODULES:
        raise KeyError(f"unknown stage {name!r}; known: {', '.join(STAGE_MODULES)}")
    return importlib.import_module(STAGE_MODULES[name]).STAGE
