"""The dataset card in a real browser (Debian chromium driven by Playwright), opened from disk: every
plot loads and has pixels, the sections are there, nothing errors.

Needs ``apt-get install -y chromium`` and ``pip install playwright`` (never ``playwright install``: we
drive the system chromium). Skips, saying which is missing, when either is absent.
Set REPORT_SCREENSHOT=/some/file.png to keep the screenshot it takes (docs/report-card.png is one).
"""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from chorushead.cli import app

from test_report import shared_demo

from browser import launch, sync_playwright

pytestmark = pytest.mark.slow   # builds the demo (~25 s) unless test_report.py did in this session


def test_card_page_renders_every_plot(tmp_path_factory, tmp_path):
    out = shared_demo(tmp_path_factory)
    res = CliRunner().invoke(app, ["report", "--out", str(out)])
    assert res.exit_code == 0, res.output
    index = out / "report" / "index.html"
    pngs = sorted(p.name for p in index.parent.glob("*.png"))
    assert len(pngs) == 10, pngs
    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("requestfailed", lambda r: errors.append(f"failed: {r.url}"))
        page.goto(index.as_uri())
        page.wait_for_load_state("load")
        imgs = page.eval_on_selector_all("img", """els => els.map(e => ({src: e.getAttribute('src'),
            complete: e.complete, w: e.naturalWidth, h: e.naturalHeight, shown: e.getBoundingClientRect().width}))""")
        assert sorted(i["src"] for i in imgs) == pngs
        for i in imgs:
            assert i["complete"] and i["w"] > 0 and i["h"] > 0 and i["shown"] > 100, i
        titles = page.eval_on_selector_all("h2", "els => els.map(e => e.textContent)")
        assert titles == ["Summary", "Yield funnel", "Distributions", "Splits", "Provenance"]
        assert "Check passed: no video has windows in two splits." in page.inner_text("#splits")
        # a plot drawn, not a blank canvas: the funnel image has ink of more than one colour
        shot = tmp_path / "card.png"
        page.locator("#yield-funnel img").screenshot(path=str(shot))
        from PIL import Image
        im = np.asarray(Image.open(shot).convert("RGB")).astype(float)
        assert im.std() > 10 and len(np.unique(im.reshape(-1, 3), axis=0)) > 20
        full = tmp_path / "page.png"
        page.screenshot(path=str(full), full_page=False)
        if os.environ.get("REPORT_SCREENSHOT"):
            shutil.copy(full, os.environ["REPORT_SCREENSHOT"])
        browser.close()
    assert not errors, errors
