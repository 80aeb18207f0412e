"""The README's journey on the built-in sample, run verbatim: demo (every stage, landmark fit, LMDB) →
pachorus train → eval → infer. The commands are read from README.md between ``<!-- journey -->`` and
``<!-- /journey -->``, so the README and this test cannot drift apart."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from chorushead.core import media
from chorushead.demo_faces import loudness_envelope

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- journey -->", "<!-- /journey -->"


def journey_commands(readme: Path = ROOT / "README.md") -> list[list[str]]:
    """The shell lines of the README's journey block: comments dropped, backslash continuations joined."""
    text = readme.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        raise AssertionError(f"README.md has no journey block: put the quick-start commands between "
                             f"{BEGIN} and {END} (a ```bash block)")
    block = text.split(BEGIN, 1)[1].split(END, 1)[0]
    code = re.search(r"```(?:bash|sh)?\n(.*?)```", block, re.S)
    assert code, f"the journey block in README.md holds no ``` code block: {block!r}"
    joined = re.sub(r"\\\n\s*", " ", code.group(1))
    return [shlex.split(line, comments=True) for line in joined.splitlines() if shlex.split(line, comments=True)]


def _env() -> dict[str, str]:
    # the console scripts of this interpreter first (a venv need not be activated)
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    env.pop("CHORUSHEAD_LANDMARKS_PYTHON", None)   # the demo must find envs/landmarks itself
    return env


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.perf_counter()
    res = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    return res, time.perf_counter() - t0


def test_journey_block_parses_to_the_four_commands():
    cmds = journey_commands()
    assert [c[:2] for c in cmds] == [["chorushead", "demo"], ["pachorus", "train"], ["pachorus", "eval"],
                                     ["pachorus", "infer"]], cmds


@pytest.mark.slow   # ~1.5 min on 2 cores: builds 4 × 12 s duets, trains 100 steps, evaluates, animates
def test_readme_journey_runs_verbatim(tmp_path):
    from chorushead.core.windows import WindowReader

    env, times, outputs = _env(), {}, {}
    for args in journey_commands():
        step = f"{args[0]} {args[1]}"
        res, times[step] = _run(args, tmp_path, env)
        outputs[step] = res.stdout + res.stderr
        assert res.returncode == 0, f"`{shlex.join(args)}` failed ({res.returncode}):\n{outputs[step][-4000:]}"
    print("journey step times (s):", {k: round(v, 1) for k, v in times.items()})

    demo, out = outputs["chorushead demo"], tmp_path / "demo-out"
    assert "Fitting with the open landmark backend" in demo, demo
    assert "Ran: ingest, screen, fingerprint, bgm_split, duet_split, vad, crop, contiguity, fit, smooth, assign, pack." in demo, demo
    lmdb = out / "build" / "windows.lmdb"
    counts = {split: len(WindowReader(lmdb, split)) for split in ("train", "val", "test")}
    assert all(n > 0 for n in counts.values()), counts   # split by video: 4 videos → 2 / 1 / 1
    assert f"{counts['train']} train / {counts['val']} val / {counts['test']} test windows" in demo, demo
    # the README names the held-out song its journey animates: it is the test split's one video
    test_videos = {k.split("/")[1].split("-")[0] for k in WindowReader(lmdb, "test").keys}
    named = re.search(r"the test split: (duet\d)", (ROOT / "README.md").read_text()).group(1)
    assert test_videos == {named} and f"stems/{named}/singer1.wav" in (ROOT / "README.md").read_text()

    run = out / "run"
    assert {"model.pt", "best.pt", "last.pt", "config.json", "log.jsonl"} <= {p.name for p in run.iterdir()}
    steps = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in steps if r["type"] == "train") == 100
    assert any(r["type"] == "val" for r in steps)   # the val split is not empty, so validation ran

    ev = outputs["pachorus eval"]
    assert re.search(r"full \(z=0\)\s*\|\s*\d+\.\d+", ev) and "PPE" in ev and "LVE" in ev, ev
    assert "samples of split 'test'" in ev and "masked" not in ev, ev         # the landmark fit estimates exp too
    assert "head: the open head" in ev, ev                                     # vertex metrics without FLAME
    res = json.loads((run / "eval_test.json").read_text())
    assert res["n_samples"] == 2 * counts["test"] and np.isfinite(res["model"]["PPE"]), res
    assert res["head"] == "open" and res["vertex_metrics"], res
    # LVE in mm on the open head: the model's lips move less wrongly than the mean motion's
    assert 0 < res["model"]["LVE_l2"] < res["mean_motion_baseline"]["LVE_l2"], res
    # the demo's mouths follow each singer's voice, so 100 steps learn the jaw: measured 0.00060 vs the mean
    # motion's 0.00223 (a per-singer constant would get ~0.0018; static mouths gave 0.00068 vs 0.00108)
    model, mean_motion = res["model"], res["mean_motion_baseline"]
    assert model["jaw_mse"] < 0.5 * mean_motion["jaw_mse"], (model, mean_motion)

    infer = out / "infer"
    for singer in (1, 2):   # one file per singer (numbered like the stems) and prior sample (-k 3), 12 s at 30 fps
        files = sorted(infer.glob(f"singer{singer}_sample*.npy"))
        assert len(files) == 3, sorted(p.name for p in infer.iterdir())
        for f in files:
            c = np.load(f)
            assert c.shape == (360, 56) and np.isfinite(c).all(), (f.name, c.shape)
    # no FLAME here: the videos are on the open head, with the song as audio, and their mouths sing
    videos = sorted(infer.glob("sample*.mp4"))
    assert [v.name for v in videos] == ["sample0.mp4", "sample1.mp4", "sample2.mp4"], sorted(infer.iterdir())
    pr = media.probe(videos[0])
    assert pr.has_audio and (pr.width, pr.height) == (512, 256) and abs(pr.duration - 12.0) < 0.1
    for singer in (1, 2):
        voice = media.load_audio(out / "sample" / "stems" / "duet1" / f"singer{singer}.wav", 16000)
        loud = loudness_envelope(voice, 16000, 30, 360)
        hole = mouth_hole_px(videos[0], np.load(infer / f"singer{singer}_sample0.npy"), singer - 1)
        r = np.corrcoef(hole, loud)[0, 1]
        print(f"singer {singer}: mouth opening in the video vs the voice's loudness r = {r:.3f}")
        assert r > 0.5, r
        assert hole[loud == 0].mean() < 0.5 * hole[loud > 0.5].mean()        # shut while silent, open when loud


def mouth_hole_px(video: Path, coeffs: np.ndarray, tile: int, size: int = 256) -> np.ndarray:
    """(T,) pixels of background seen through the mouth of singer ``tile`` in each frame of ``video``:
    the open head's mouth is an opening, so a parted jaw shows the dark background. Counted inside the
    box of the singer's lip vertices in that frame (posed, projected with the renderer's camera),
    widened by a quarter of its width."""
    from chorushead.core.openhead import open_head
    from chorushead.core.render import Camera
    head = open_head()
    cam = Camera.fit(head.v_template.numpy(), size, margin=0.15)
    lips = head.vertices_np(coeffs)[:, head.masks["lips"]]
    out = []
    frames = (f for chunk in media.iter_frames(video, 30) for f in chunk)
    for t, frame in zip(range(len(coeffs)), frames):
        xy = cam.project(lips[t])
        (x0, y0), (x1, y1) = xy.min(0), xy.max(0)
        pad = 0.25 * (x1 - x0)
        box = frame[max(0, int(y0 - pad)):int(y1 + pad) + 1, tile * size + max(0, int(x0 - pad)):tile * size + int(x1 + pad) + 1]
        out.append(int((box.max(axis=2) < 45).sum()))
    return np.asarray(out, np.float64)


@pytest.mark.slow   # ~15 s: one 7 s duet through crop, then fit fails
def test_demo_without_the_landmark_env_fails_fit_with_the_setup_hint_and_no_fallback(tmp_path):
    env = dict(_env(), CHORUSHEAD_LANDMARKS_PYTHON=str(tmp_path / "no-such-env" / "bin" / "python"))
    res, _ = _run(["chorushead", "demo", "--out", "d", "--videos", "1", "--seconds", "7"], tmp_path, env)
    text = res.stdout + res.stderr
    assert res.returncode == 1, text
    line = re.search(r"^  fit failed: (.*)$", text, re.M)
    assert line and "MissingAsset" in line.group(1) and "scripts/setup.sh" in line.group(1), text
    assert re.search(r"^  smooth waiting: waits for fit$", text, re.M), text
    assert "Packed " not in text   # nothing was fitted, so no windows (pack publishes an empty LMDB)
