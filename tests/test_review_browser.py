"""The review page in a real browser (Debian chromium driven by Playwright): play, keys, decisions,
the unmatched-decisions panel, and another site's page trying to record decisions.

Needs ``apt-get install -y chromium`` and ``pip install playwright`` (never ``playwright install``:
we drive the system chromium). Skips, saying which is missing, when either is absent.
Set REVIEW_SCREENSHOT=/some/file.png to keep the screenshot it takes.
"""
from __future__ import annotations

import json
import os
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest

from chorushead.core.decisions import record_decision
from chorushead.core.manifest import Manifest
from chorushead.review.server import ReviewHandler, make_server

from review_fixture import shared_review_build

from browser import launch, sync_playwright


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    return shared_review_build(tmp_path_factory)


@pytest.fixture(scope="module")
def app(build):
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


def test_play_review_with_keys(app, page, build, tmp_path):
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
    rec = wait_decision(out, "duetA:2", "accept")
    # the frames the reviewer saw, on the full timeline: vad start (15, not 0) + the crop frames
    assert rec.outputs["frames"] == [15 + 420, 15 + 570] == list(build.frames("duetA:2"))
    page.wait_for_function("() => document.querySelector('#list li.current').dataset.key === 'duetA:1'")
    # r: reject with a reason, Enter confirms
    page.keyboard.press("r")
    page.wait_for_selector("#reason-dialog:not([hidden])")
    page.keyboard.type("mouth barely moves")
    page.keyboard.press("Enter")
    rec = wait_decision(out, "duetA:1", "reject")
    assert rec.outputs.get("reason") == "mouth barely moves"
    assert rec.outputs["frames"] == [15 + 250, 15 + 410]
    page.wait_for_function("() => document.querySelector('#list li.current').dataset.key === 'duetB:0'")
    # r then Escape: nothing recorded
    page.keyboard.press("r")
    page.wait_for_selector("#reason-dialog:not([hidden])")
    page.keyboard.press("Escape")
    page.wait_for_selector("#reason-dialog", state="hidden")
    assert "duetB:0" not in Manifest(out, "review").latest()
    # u: undo the last decision (the reject of duetA:1) and go back to it
    page.keyboard.press("u")
    assert wait_decision(out, "duetA:1", "undo").outputs["frames"] == [15 + 250, 15 + 410]
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


def test_unmatched_decisions_are_listed_on_the_page(app, page, build):
    """A decision on frames that no segment covers now shows in the side panel (hidden while none)."""
    out, url = app
    (out / "manifests" / "review.jsonl").unlink(missing_ok=True)
    page.goto(url)
    page.wait_for_selector("#list li.current")
    page.wait_for_timeout(300)                            # the panel loads after the list
    assert not page.is_visible("#unmatched")
    record_decision(out, "duetA", 0, "reject", "wrong face", frames=(600, 630))    # past every segment
    record_decision(out, "duetA", 2, "accept", frames=build.frames("duetA:2"))     # matches duetA:2: not listed
    page.reload()
    page.wait_for_selector("#unmatched:not([hidden])")
    rows = page.eval_on_selector_all("#unmatched tbody tr", "trs => trs.map(t => [...t.cells].map(c => c.textContent))")
    assert rows == [["duetA", "20.0–21.0 s", "reject", "wrong face"]]
    assert "no segment" in page.inner_text("#unmatched h3")
    assert page.get_attribute("#list li[data-key='duetA:2']", "class").split()[0] == "accept"
    assert page.get_attribute("#list li[data-key='duetA:0']", "class").split()[:1] != ["reject"]
    assert page.errors == []


ATTACKER_PAGE = """<!doctype html><html><body><iframe name="sink" hidden></iframe><script>
(async () => {
  const p = JSON.parse(decodeURIComponent(location.hash.slice(1)));
  const api = p.review + "api/decision", results = {};
  const attempt = async (name, f) => {
    try { const r = await f(); results[name] = r.type + " " + r.status; } catch (e) { results[name] = "error"; }
  };
  // the issue's attack: no preflight (text/plain, no-cors), the body a complete decision request
  await attempt("smuggle", () => fetch(api, { method: "POST", mode: "no-cors",
    headers: { "Content-Type": "text/plain" }, body: p.smuggled }));
  await attempt("text_json", () => fetch(api, { method: "POST", mode: "no-cors",
    headers: { "Content-Type": "text/plain" }, body: p.decision }));
  // a plain cross-origin fetch, JSON and even the right token: needs a preflight, which is refused
  await attempt("cors_json", () => fetch(api, { method: "POST",
    headers: { "Content-Type": "application/json", "X-Review-Token": p.token }, body: p.decision }));
  // reading the page (and its token) from another origin
  await attempt("read_page", () => fetch(p.review));
  results.beacon = navigator.sendBeacon(api, new Blob([p.smuggled], { type: "text/plain" }));
  // a form post (text/plain encoding) into a hidden frame
  const form = Object.assign(document.createElement("form"),
    { method: "POST", action: api, enctype: "text/plain", target: "sink" });
  form.append(Object.assign(document.createElement("input"), { name: p.smuggled, value: "" }));
  document.body.append(form);
  const loaded = new Promise((res) => document.querySelector("iframe").addEventListener("load", res, { once: true }));
  form.submit();
  await Promise.race([loaded, new Promise((res) => setTimeout(res, 3000))]);
  window.results = results;
})();
</script></body></html>"""


def test_another_sites_page_cannot_record_decisions(app, page):
    """A page served from another loopback port (another origin) throws every simple request a browser
    allows at the API, including the issue's smuggled request; nothing is recorded, and the requests
    did reach the server (so it is the server that refused them)."""
    out, _ = app
    (out / "manifests" / "review.jsonl").unlink(missing_ok=True)
    seen: list[tuple] = []

    class Recording(ReviewHandler):
        def log_request(self, code="-", size="-"):
            seen.append((self.command, urlsplit_path(self.path), int(code), self.headers.get("Origin")))

    srv = make_server(out, port=0)
    srv.RequestHandlerClass = Recording
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    class Attacker(BaseHTTPRequestHandler):
        def do_GET(self):
            data = ATTACKER_PAGE.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *a):
            pass

    evil = ThreadingHTTPServer(("127.0.0.1", 0), Attacker)
    threading.Thread(target=evil.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        review = srv.url                                   # http://127.0.0.1:<port>/
        body = json.dumps({"key": "duetA:0", "decision": "reject", "reason": "smuggled"})
        smuggled = (f"POST /api/decision HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\nContent-Type: application/json\r\n"
                    f"X-Review-Token: {srv.token}\r\nContent-Length: {len(body)}\r\n\r\n{body}")
        params = {"review": review, "smuggled": smuggled, "decision": body, "token": srv.token}
        page.goto(f"http://127.0.0.1:{evil.server_address[1]}/evil.html#{quote(json.dumps(params))}")
        page.wait_for_function("() => window.results !== undefined", timeout=15000)
        results = page.evaluate("() => window.results")
        assert results["smuggle"] == "opaque 0" and results["text_json"] == "opaque 0"      # sent, unreadable
        assert results["cors_json"] == "error" and results["read_page"] == "error"
        time.sleep(0.5)                                    # a beacon is sent in the background
        posts = [s for s in seen if s[0] == "POST"]
        assert len(posts) >= 3, seen                       # two fetches and the form (and maybe the beacon)
        assert all(code == 403 and origin != review.rstrip("/") for _, _, code, origin in posts), seen
        assert ("POST", "/api/decision", 200) not in [s[:3] for s in seen]
        assert not (out / "manifests" / "review.jsonl").exists() or Manifest(out, "review").read_all() == []
        assert page.errors == []

        # and the review page itself, from its own origin, still records with the same browser
        page.goto(review)
        page.wait_for_selector("#list li.current")
        key = current(page)
        page.keyboard.press("a")
        wait_decision(out, key, "accept")
        # (a late beacon from the other page may still arrive after it: look for the page's own POST,
        # not the last one)
        # The manifest is written before the handler logs the request: wait for the log line too.
        mine = (None, review.rstrip("/"))

        def own_posts():
            return [(m, c) for m, p, c, o in list(seen) if p == "/api/decision" and o in mine]

        t0 = time.time()
        while ("POST", 200) not in own_posts() and time.time() - t0 < 5:
            time.sleep(0.05)
        assert ("POST", 200) in own_posts(), seen
        assert all(c == 403 for m, _, c, o in seen if m == "POST" and o not in mine), seen   # late beacons too
    finally:
        srv.shutdown()
        srv.server_close()
        evil.shutdown()
        evil.server_close()


def urlsplit_path(path: str) -> str:
    return path.split("?", 1)[0]
