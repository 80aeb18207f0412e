"""Shared test helpers: JSON-Schema validation of manifest records, hand-built stage contexts."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("OMP_NUM_THREADS", "2")
if os.environ.get("CHORUSHEAD_MUTATION"):     # set by scripts/mutation.sh
    # mutmut forks a child per mutant; once a test has shown a bar, tqdm's monitor thread can hold
    # tqdm's lock across the fork and hang the child (counted as a timeout, not a kill)
    import tqdm
    tqdm.tqdm.monitor_interval = 0


def validate_record(rec: dict, stage: str | None = None) -> None:
    """Validate a manifest record against manifests/record.schema.json (+ the stage's own schema)."""
    import jsonschema
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012
    schemas = {p.name: json.loads(p.read_text()) for p in (ROOT / "manifests").glob("*.schema.json")}
    registry = Registry().with_resources(
        [(name, Resource.from_contents(s, default_specification=DRAFT202012))
         for name, s in schemas.items()])
    name = f"{stage or rec['stage']}.schema.json"
    schema = schemas.get(name, schemas["record.schema.json"])
    jsonschema.Draft202012Validator(schema, registry=registry).validate(rec)


def make_ctx(tmp_path: Path, stage: str, upstream: dict, item_id: str = "vid-000000", source: str = "/nonexistent",
             out: Path | None = None):
    """A Context as the runner builds it, with upstream records made from plain output dicts; the
    build root is ``out`` (default ``tmp_path/out``)."""
    from chorushead.core.manifest import Record
    from chorushead.stages.base import Context, Item
    out = out or tmp_path / "out"
    item = Item(id=item_id, source=source)
    final = item.dir(out) / stage
    tmp = final.parent / f".tmp-{stage}"
    tmp.mkdir(parents=True, exist_ok=True)
    ups = {k: Record(item=item_id, stage=k, status="done", fingerprint="0" * 16, outputs=v) for k, v in upstream.items()}
    return Context(item=item, out=out, tmp=tmp, final=final, upstream=ups)


def fit_upstream(n_strips: int, segments: list, n_frames: int, item_id: str) -> dict:
    """crop + contiguity outputs as the fit stage reads them (strip folders under items/<id>/crop)."""
    return {"crop": {"strips": [f"items/{item_id}/crop/strip{s}" for s in range(n_strips)],
                     "detections": f"items/{item_id}/crop/detections.npz", "n_strips": n_strips,
                     "frames": n_frames, "start_frame": 0, "crop_size": 224},
            "contiguity": {"segments": segments, "strip_runs": [], "n_frames": n_frames}}


@pytest.fixture
def ctx_factory(tmp_path):
    return lambda stage, upstream, **kw: make_ctx(tmp_path, stage, upstream, **kw)


def kill_when(cmd: list[str], ready, timeout: float = 300.0, poll: float = 0.02) -> bool:
    """Start ``cmd``; SIGKILL it as soon as ``ready()`` is true. True if it was killed mid-run."""
    import signal
    import subprocess
    import time
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline and proc.poll() is None:
            if ready():
                proc.send_signal(signal.SIGKILL)
                return True
            time.sleep(poll)
        return False
    finally:
        proc.wait()
