"""What a stage is: a params dataclass, an optional per-worker ``setup``, and ``process`` over one item.

A stage never appends to a manifest and never writes outside its temp folder: the runner gives it
``ctx.tmp`` (a fresh folder), renames it to ``<out>/items/<id>/<stage>/`` once ``process`` returns,
and only then appends the record. So a crash leaves either the old outputs + old record or a
half-written temp folder that the next run discards.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional


from chorushead.core.manifest import Record


@dataclass
class Item:
    """One input video. ``id`` is a filesystem-safe slug that is unique within a build."""
    id: str
    source: str                      # absolute path of the raw video
    stems: Optional[str] = None      # folder with vocals/accompaniment/singerN.wav, when supplied

    def dir(self, out: Path) -> Path:
        return Path(out) / "items" / self.id


@dataclass
class Result:
    outputs: dict[str, Any] = field(default_factory=dict)  # paths relative to the stage folder, or values
    metrics: dict[str, Any] = field(default_factory=dict)
    status: str = "done"
    reason: Optional[str] = None


@dataclass
class Context:
    """Everything ``process`` may look at for one item."""
    item: Item
    out: Path                         # build output root
    tmp: Path                         # where this stage writes; renamed to ``final`` on success
    final: Path                       # <out>/items/<id>/<stage>
    upstream: dict[str, Record]       # newest ok record of each stage this one needs

    def input(self, stage: str, name: str) -> Path:
        """Absolute path of an upstream output file."""
        rel = self.upstream[stage].outputs[name]
        return self.out / rel

    def value(self, stage: str, name: str, default: Any = None) -> Any:
        return self.upstream[stage].outputs.get(name, default) if stage in self.upstream else default


@dataclass(frozen=True)
class Stage:
    name: str
    version: str
    params: type                                            # a dataclass with defaults
    process: Callable[[Context, Any, Any], Result] | None = None   # (ctx, params, model) -> Result
    setup: Callable[[Any], Any] | None = None               # params -> model, once per worker
    needs: tuple[str, ...] = ()
    kind: str = "item"                                      # "item" or "global" (see run_global)
    run_global: Callable[..., list[Record]] | None = None   # for kind == "global"
    gpu: bool = False                                       # batches on a GPU when there is one
    description: str = ""

    def make_params(self, values: dict[str, Any] | None) -> Any:
        values = dict(values or {})
        names = {f.name for f in dataclasses.fields(self.params)}
        unknown = set(values) - names
        if unknown:
            raise ValueError(f"stage {self.name}: unknown parameter(s) {sorted(unknown)}; known: {sorted(names)}")
        return self.params(**values)


def params_dict(params: Any) -> dict[str, Any]:
    return dataclasses.asdict(params)
