"""The review page in a real browser (Debian chromium driven by Playwright): play, keys, decisions.

Needs ``apt-get install -y chromium`` and ``pip install playwright`` (never ``playwright install``:
we drive the system chromium). Skips, saying which is missing, when either is absent.
Set REVIEW_SCREENSHOT=/some/file.png to keep the screenshot it takes.
"""
from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from chorushead.core.manifest import Manifest
from chorushead.review.server import make_server

from review_fixture import shared_review_build

from browser import launch, sync_playwright


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    build = shared_review_build(tmp_path_factory)
    srv = make_server(build.out, port=0)
    th = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    th.start()
    yield build.out, srv.url
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def page(app):
    with sync_playwright() as p:
        browser = launch(p)
        pg = browser.new_page(viewport={"width": 1400, "height": 900})
        errors: list[str] = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.errors = errors
        yield pg
        browser.close()


def wait_decision(out: Path, key: str, want: str, timeout: float = 5.0):
    """The newest review record of ``key`` once its decision is ``want`` (the POST is async)."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        rec = Manifest(out, "review").latest().get(key)
        if rec is not None and rec.outputs.get("decision") == want:
            return rec
        time.sleep(0.05)
    raise AssertionError(f"{key}: no '{want}' decision in the review manifest after {timeout} s")


def current(page) -> str:
    return page.eval_on_selector("#list li.current", "e => e.dataset.key")


def canvas_ink(page, sel: str) -> float:
    """Fraction of a canvas' pixels that differ from its background colour."""
    return page.evaluate("""sel => {
        const c = document.querySelector(sel), d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let ink = 0; const [r, g, b] = [d[0], d[1], d[2]];
        for (let i = 0; i < d.length; i += 4)
            if (Math.abs(d[i] - r) + Math.abs(d[i + 1] - g) + Math.abs(d[i + 2] - b) > 30) ink++;
        return ink / (d.length / 4);
    }""", sel)


def test_play_review_with_keys(app, page, tmp_path):
    out, url = app
    page.goto(url)
    page.wait_for_selector("#list li.current")
    keys = page.eval_on_selector_all("#list li", "els => els.map(e => e.dataset.key)")
    assert keys == ["duetA:2", "duetA:1", "duetB:0", "duetA:0"]      # most suspicious first
    assert current(page) == "duetA:2"

    # play: the clip is cut on first request, then the video runs and the cursor/crops follow it
    page.keyboard.press("Space")
    page.wait_for_function("() => { const v = document.querySelector('#video');"
                           " return v.readyState >= 2 && v.currentTime > 0.8 && !v.paused; }", timeout=20000)
    state = page.evaluate("""() => { const v = document.querySelector('#video'), r = v.getBoundingClientRect();
        const crops = [...document.querySelectorAll('#strips canvas.crop')];
        return {w: v.videoWidth, h: v.videoHeight, bw: r.width, bh: r.height, t: v.currentTime,
                crop: crops.map(c => c.width), frames: crops.map(c => Number(c.dataset.frame))}; }""")
    assert state["w"] == 384 and state["h"] == 192 and state["bw"] > 200 and state["bh"] > 100
    assert state["crop"] == [224, 224]
    # both crops show the frame under the video's clock (a few frames of slack for image loading)
    assert all(abs(f - state["t"] * 30) < 12 for f in state["frames"]), state
    for sel in ("#plot-jaw", "#plot-pose", "#plot-audio", "#strips canvas.crop"):
        assert canvas_ink(page, sel) > 0.02, sel

    shot = tmp_path / "review.png"
    page.screenshot(path=str(shot))
    if os.environ.get("REVIEW_SCREENSHOT"):
        shutil.copy(shot, os.environ["REVIEW_SCREENSHOT"])
    from PIL import Image
    im = np.asarray(Image.open(shot).convert("RGB")).astype(float)
    for sel in ("#video", "#plot-jaw", "#plot-audio", "#strips"):
        box = page.locator(sel).bounding_box()
        region = im[int(box["y"]):int(box["y"] + box["height"]), int(box["x"]):int(box["x"] + box["width"])]
        assert region.size and region.std() > 10, f"{sel} looks blank in the screenshot"

    # a: accept -> manifest, and the page moves on to the next segment
    page.keyboard.press("a")
    wait_decision(out, "duetA:2", "accept")
    page.wait_for_function("() => document.querySelector('#list li.current').dataset.key === 'duetA:1'")
    # r: reject with a reason, Enter confirms
    page.keyboard.press("r")
    page.wait_for_selector("#reason-dialog:not([hidden])")
    page.keyboard.type("mouth barely moves")
    page.keyboard.press("Enter")
    rec = wait_decision(out, "duetA:1", "reject")
    assert rec.outputs.get("reason") == "mouth barely moves"
    page.wait_for_function("() => document.querySelector('#list li.current').dataset.key === 'duetB:0'")
    # r then Escape: nothing recorded
    page.keyboard.press("r")
    page.wait_for_selector("#reason-dialog:not([hidden])")
    page.keyboard.press("Escape")
    page.wait_for_selector("#reason-dialog", state="hidden")
    assert "duetB:0" not in Manifest(out, "review").latest()
    # u: undo the last decision (the reject of duetA:1) and go back to it
    page.keyboard.press("u")
    wait_decision(out, "duetA:1", "undo")
    page.wait_for_function("() => document.querySelector('#list li.current').dataset.key === 'duetA:1'")
    # j / ArrowRight next, k / ArrowLeft previous
    page.keyboard.press("j")
    page.wait_for_function("() => document.querySelector('#list li.current').dataset.key === 'duetB:0'")
    # duetB has no source video: crops play on a timer instead
    assert page.is_visible("#no-video") and not page.is_visible("#video")
    # (moving with j starts playback, as with a video)
    page.wait_for_function("() => Number(document.querySelector('#strips canvas.crop').dataset.frame) > 5")
    page.keyboard.press("Space")                                   # pause: the clock and the crops stop
    page.wait_for_function("() => !state.clock.playing")
    page.wait_for_timeout(300)                                     # let a frame already in flight land
    clock_and_crop = "() => [state.clock.time, document.querySelector('#strips canvas.crop').dataset.frame]"
    paused = page.evaluate(clock_and_crop)
    page.wait_for_timeout(300)
    assert page.evaluate(clock_and_crop) == paused
    page.keyboard.press("ArrowLeft")
    page.wait_for_function("() => document.querySelector('#list li.current').dataset.key === 'duetA:1'")
    page.keyboard.press("ArrowRight")
    page.wait_for_function("() => document.querySelector('#list li.current').dataset.key === 'duetB:0'")
    page.keyboard.press("k")
    page.wait_for_function("() => document.querySelector('#list li.current').dataset.key === 'duetA:1'")

    # reload: state comes back from the server
    page.reload()
    page.wait_for_selector("#list li.current")
    assert page.get_attribute("#list li[data-key='duetA:2']", "class").split()[0] == "accept"
    assert "reviewed 1/4" in page.inner_text("#summary").replace("\n", " ")
    # filter: only rejected (none now), then only accepted
    page.select_option("#f-dec", "accept")
    assert page.eval_on_selector_all("#list li", "els => els.map(e => e.dataset.key)") == ["duetA:2"]
    page.select_option("#f-dec", "")
    page.select_option("#f-flag", "still_mouth")
    assert page.eval_on_selector_all("#list li", "els => els.map(e => e.dataset.key)") == ["duetA:1"]
    assert page.errors == []
