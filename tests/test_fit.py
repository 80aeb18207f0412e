"""fit: runs the REAL emoca_worker.py (as a subprocess, and in-process) against a stand-in `gdl`
package with EMOCA's API (tests/stand_ins). The stand-in's codes are a function of the image, and
every test crop's colours encode its (strip, frame), so any mix-up of order, batching or frame
alignment shows up as a wrong row."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from chorushead.core.errors import MissingAsset, StageError
from chorushead.stages.base import Context
from chorushead.stages.fit import STAGE, Params
from conftest import fit_upstream, make_ctx
from chorushead.core.windows import EXP, JAW, POSE

STAND_INS = Path(__file__).parent / "stand_ins"
N_FRAMES = 22


def crop_image(strip: int, frame: int) -> np.ndarray:
    yy, xx = np.mgrid[0:224, 0:224]
    r = (frame * 9 + yy // 5 * 3) % 256                      # red bands -> expcode: depend on the frame
    g = np.where(xx < 112, 40 + strip * 90, 200 - frame * 4)   # green thirds -> jaw: strip and frame
    b = (strip * 60 + frame * 5 + yy // 9) % 256
    return np.stack([r, g, b], -1).astype(np.uint8)


def make_build(root: Path, segments) -> Context:
    for s in range(2):
        d = root / "items/song/crop" / f"strip{s}"
        d.mkdir(parents=True)
        for t in range(N_FRAMES):
            Image.fromarray(crop_image(s, t)).save(d / f"{t:06d}.jpg", quality=95)
    (root / "models" / "EMOCA_v2_lr_mse_20").mkdir(parents=True)
    (root / "models" / "EMOCA_v2_lr_mse_20" / "cfg.yaml").write_text("model: {}\n")
    return make_ctx(root, "fit", fit_upstream(2, segments, N_FRAMES, "song"), item_id="song", out=root)


def expected_codes(root: Path, strip: int, frame: int) -> dict[str, np.ndarray]:
    sys.path.insert(0, str(STAND_INS))
    try:
        from gdl.standin import codes_for_images
    finally:
        sys.path.remove(str(STAND_INS))
    img = np.asarray(Image.open(root / f"items/song/crop/strip{strip}/{frame:06d}.jpg").convert("RGB"),
                     np.float32).transpose(2, 0, 1)[None] / 255.0
    return {k: v.numpy()[0] for k, v in codes_for_images(img).items()}


def check_outputs(ctx: Context, result, segments) -> None:
    STAGE.check(result)                                  # the declared Outputs/Metrics, as the runner checks
    assert result.outputs["backend"] == "emoca" and result.outputs["coeff_groups"] == ["exp", "jaw", "pose"]
    assert result.status == "done" and result.outputs["segments"] == [f"seg{i:03d}.npz" for i in range(len(segments))]
    for i, (start, end) in enumerate(segments):
        z = np.load(ctx.tmp / result.outputs["segments"][i])
        assert z["coeffs"].shape == (2, end - start, 56) and z["coeffs"].dtype == np.float32
        assert z["shape"].shape == (2, end - start, 100) and z["cam"].shape == (2, end - start, 3)
        assert list(z["frames"]) == [start, end]
        for s in range(2):
            for t in range(end - start):
                e = expected_codes(ctx.out, s, start + t)
                c = z["coeffs"][s, t]
                np.testing.assert_allclose(c[EXP], e["expcode"], atol=1e-5)
                np.testing.assert_allclose(c[JAW], e["posecode"][3:6], atol=1e-5)   # jaw
                np.testing.assert_allclose(c[POSE], e["posecode"][0:3], atol=1e-5)   # global pose
                np.testing.assert_allclose(z["shape"][s, t], e["shapecode"], atol=1e-5)
                np.testing.assert_allclose(z["cam"][s, t], e["cam"], atol=1e-5)


SEGMENTS = [[2, 9], [12, 21]]


def test_real_worker_subprocess_order_batching_alignment(tmp_path, monkeypatch):
    ctx = make_build(tmp_path, SEGMENTS)
    log = tmp_path / "batches.log"
    monkeypatch.setenv("STANDIN_EMOCA_LOG", str(log))
    params = Params(python=sys.executable, emoca_path=str(STAND_INS), models_dir=str(tmp_path / "models"),
                    batch_size=5, device="cpu")
    backend = STAGE.setup(params)
    try:
        assert backend.worker is not None and backend.device == "cpu"
        r = STAGE.process(ctx, params, backend)
        check_outputs(ctx, r, SEGMENTS)
        sizes = [int(x) for x in log.read_text().split()]
        assert max(sizes) == 5 and sum(sizes) == 2 * (7 + 9) == r.metrics["images"]
        # the same worker serves the next video; a failing one does not kill it
        ctx.upstream["contiguity"].outputs["segments"] = [[20, 30]]       # frames 22..29 do not exist
        with pytest.raises(StageError, match="missing"):
            STAGE.process(ctx, params, backend)
        ctx.upstream["contiguity"].outputs["segments"] = [[0, 3]]
        for p in ctx.tmp.glob("*.npz"):
            p.unlink()
        r2 = STAGE.process(ctx, params, backend)
        check_outputs(ctx, r2, [[0, 3]])
    finally:
        backend.close()


def test_in_process_when_gdl_imports(tmp_path, monkeypatch):
    monkeypatch.delenv("CHORUSHEAD_EMOCA_PYTHON", raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))          # undo the emoca_path insertion afterwards
    ctx = make_build(tmp_path, [[0, 4]])
    params = Params(emoca_path=str(STAND_INS), models_dir=str(tmp_path / "models"), batch_size=3, device="cpu")
    backend = STAGE.setup(params)
    assert backend.runner is not None and backend.worker is None
    check_outputs(ctx, STAGE.process(ctx, params, backend), [[0, 4]])


def test_missing_models_say_how_to_get_them(tmp_path):
    with pytest.raises(MissingAsset) as e:
        STAGE.setup(Params(models_dir=str(tmp_path / "nope"), python=sys.executable))
    assert "EMOCA_v2_lr_mse_20" in str(e.value) and "download_assets" in str(e.value)


def test_missing_environment_is_explained(tmp_path, monkeypatch):
    monkeypatch.delenv("CHORUSHEAD_EMOCA_PYTHON", raising=False)
    monkeypatch.delenv("CHORUSHEAD_EMOCA_PATH", raising=False)
    for name in [m for m in sys.modules if m.split(".")[0] in ("gdl", "gdl_apps")]:
        monkeypatch.delitem(sys.modules, name)                # left over from the in-process test
    make_build(tmp_path, [[0, 1]])
    with pytest.raises(MissingAsset, match="CHORUSHEAD_EMOCA_PYTHON"):
        STAGE.setup(Params(models_dir=str(tmp_path / "models")))
    # an EMOCA python that cannot import gdl
    with pytest.raises(MissingAsset, match="gdl"):
        STAGE.setup(Params(models_dir=str(tmp_path / "models"), python=sys.executable, emoca_path=str(tmp_path)))


def test_no_segments_skips(tmp_path):
    ctx = make_build(tmp_path, [])
    r = STAGE.process(ctx, Params(), None)
    assert r.status == "skipped" and r.outputs["segments"] == []
    STAGE.check(r)
