"""The dataset card's plots: matplotlib figures rendered with Agg straight to PNG (no pyplot state, no
display, no server). One small function per plot, each returning a figure or None when it has no data;
:data:`PLOTS` says which file each one writes."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from chorushead.report.card import Card


def _figure(w: float = 6.0, h: float = 3.2):
    from matplotlib.figure import Figure
    return Figure(figsize=(w, h), dpi=100, layout="constrained")


def _hist(values: np.ndarray, xlabel: str, ylabel: str, title: str, color: str = "#4477aa"):
    if not len(values):
        return None
    fig = _figure()
    ax = fig.add_subplot(111)
    ax.hist(values, bins=min(30, max(5, len(values))), color=color)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return fig


def _overlaid_hist(groups: dict[int, np.ndarray], bins: int, label: str, xlabel: str, title: str):
    """One figure: a translucent histogram per group (singer position / strip), numbered from 1."""
    fig = _figure()
    ax = fig.add_subplot(111)
    for k, a in groups.items():
        ax.hist(a, bins=bins, alpha=0.55, label=f"{label} {k + 1}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("frames")
    ax.legend()
    ax.set_title(title)
    return fig


def _bars(labels: list[str], values: list[int], ylabel: str, title: str, color):
    fig = _figure(5, 2.8)
    ax = fig.add_subplot(111)
    ax.bar(labels, values, color=color)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return fig


def funnel(card: Card):
    if not card.funnel:
        return None
    fig = _figure(7, 3.4)
    ax = fig.add_subplot(111)
    x = np.arange(len(card.funnel))
    in_hours = max(r.hours for r in card.funnel) >= 1.0     # a real corpus; the demo is minutes
    ax.bar(x, [r.hours * (1 if in_hours else 60) for r in card.funnel], color="#4477aa")
    ax.set_xticks(x, [r.stage for r in card.funnel], rotation=30, ha="right")
    ax.set_ylabel("hours" if in_hours else "minutes")
    ax2 = ax.twinx()
    ax2.plot(x, [r.videos for r in card.funnel], "o-", color="#cc6677")
    ax2.set_ylabel("videos", color="#cc6677")
    ax2.set_ylim(0, max(1, max(r.videos for r in card.funnel)) * 1.15)
    ax.set_title("yield after each stage")
    return fig


def head_pose(card: Card):
    if not card.dists["pose"]:
        return None
    fig = _figure(9, 3.0)
    for j, name in enumerate(("pitch", "yaw", "roll")):
        ax = fig.add_subplot(1, 3, j + 1)
        for k, a in card.dists["pose"].items():
            ax.hist(a[:, j], bins=40, alpha=0.55, label=f"position {k + 1}")
        ax.set_xlabel(f"head {name} (degrees)")
        if j == 0:
            ax.set_ylabel("frames")
            ax.legend(fontsize=8)
    return fig


N_EXPRESSION_SHOWN = 16   # the open head's named actions (the first 16 of 50)


def expression(card: Card):
    """How much each of the first expression coefficients moves, per singer position (RMS over frames)."""
    exp = card.dists.get("expression") or {}
    if not exp:
        return None
    names = card.dists["expression_names"][:N_EXPRESSION_SHOWN]
    fig = _figure(8, 3.4)
    ax = fig.add_subplot(111)
    x = np.arange(len(names))
    width = 0.8 / len(exp)
    for i, (k, a) in enumerate(exp.items()):
        ax.bar(x + i * width, np.sqrt((a[:, :len(names)] ** 2).mean(0)), width, label=f"singer position {k + 1}")
    ax.set_xticks(x + 0.4 - width / 2, names, rotation=40, ha="right")
    ax.set_ylabel("RMS (coefficient units)")
    ax.legend()
    ax.set_title("expression per singer position")
    return fig


def assignment(card: Card):
    d = card.dists
    return _hist(d["assign"], "assignment margin (best over second-best)", "videos",
                 f"voice-to-singer assignment confidence ({d['assign_low']} flagged low)", color="#228833")


# name (the key the page looks plots up by), file, figure maker
PLOTS: list[tuple[str, str, Callable[[Card], object]]] = [
    ("funnel", "funnel.png", funnel),
    ("segment_seconds", "segment_seconds.png",
     lambda c: _hist(c.dists["segment_seconds"], "seconds", "segments", "segment length")),
    ("kept_minutes", "kept_minutes.png",
     lambda c: _hist(c.dists["kept_minutes"], "minutes", "videos", "kept footage per video")),
    ("jaw", "jaw.png", lambda c: _overlaid_hist(c.dists["jaw"], 40, "singer position", "jaw opening (degrees)",
                                                "jaw opening per singer position") if c.dists["jaw"] else None),
    ("pose", "head_pose.png", head_pose),
    ("expression", "expression.png", expression),
    ("detection", "detection.png",
     lambda c: _overlaid_hist(c.dists["detection"], 30, "strip", "MTCNN face probability (detected frames)",
                              "detection confidence (crop)")
     if any(len(a) for a in c.dists["detection"].values()) else None),
    ("assign", "assign.png", assignment),
    ("review", "review.png",
     lambda c: _bars(list(c.dists["review"]), list(c.dists["review"].values()), "segments", "review decisions",
                     ["#228833", "#cc6677", "#bbbbbb"]) if sum(c.dists["review"].values()) else None),
    ("splits", "splits.png",
     lambda c: _bars([s.split for s in c.splits], [s.windows for s in c.splits], "windows", "windows per split",
                     "#4477aa") if c.lmdb is not None else None),
]


def draw(card: Card, dest: Path) -> dict[str, str]:
    """name -> PNG file (relative to ``dest``) for every plot with data."""
    out = {}
    for name, file, make in PLOTS:
        fig = make(card)
        if fig is not None:
            fig.savefig(dest / file)
            out[name] = file
    return out
