"""Which stage failed and why, in words: the one way the CLIs say it.

A failed record carries the error's class and its one-line message (``core.errors``: written for a
person); ``Record.failure_line`` words one. ``chorushead build`` and ``status`` list the failures of a whole build, ``demo`` names the
first one of each stage in its closing lines, ``separate`` (and so ``pachorus infer --song``) the
first stage of its one song that did not end ok.
"""
from __future__ import annotations

from typing import Iterable

from chorushead.core.manifest import Record


def failure_lines(summaries: Iterable, limit: int = 20) -> list[str]:
    """``  [stage] item: why`` for each failure of the build's stage summaries (``runner.StageSummary``
    or ``status.StageStatus``: their ``failures`` are (item, why) pairs), the first ``limit`` of them."""
    fails = [(s.stage, item, why) for s in summaries for item, why in s.failures]
    lines = [f"  [{stage}] {item}: {why}" for stage, item, why in fails[:limit]]
    if len(fails) > limit:
        lines.append(f"  ... and {len(fails) - limit} more (see manifests/*.jsonl)")
    return lines


def first_failure(latest: dict[str, dict[str, Record]], item: str, stages: list[str]) -> str | None:
    """The first of ``stages`` that did not end ok for ``item``, in words (``stage: why``); None when all did."""
    for name in stages:
        rec = latest.get(name, {}).get(item)
        if rec is None:
            return f"{name}: not run (an earlier stage did not finish)"
        if not rec.ok:
            return f"{name}: {rec.failure_line()}"
    return None
