"""doctor: every asset is reported found when it is where the stages look, missing (with how to
get it) when not, honouring pipeline parameters and environment variables."""
from __future__ import annotations

import sys
from pathlib import Path

from chorushead.doctor import Check, doctor, format_report

STAND_INS = Path(__file__).parent / "stand_ins"


def by_what(checks: list[Check]) -> dict[str, Check]:
    return {f"{c.stage}:{c.what}": c for c in checks}


def test_everything_missing(tmp_path, monkeypatch):
    for var in ("CHORUSHEAD_SPLEETER_PYTHON", "CHORUSHEAD_EMOCA_PYTHON", "CHORUSHEAD_EMOCA_PATH",
                "CHORUSHEAD_EMOCA_MODELS", "FLAME_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MODEL_PATH", str(tmp_path / "spleeter_models"))
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms"))
    params = {"bgm_split": {"python": str(tmp_path / "no/python")}, "fit": {"models_dir": str(tmp_path / "emoca")}}
    checks = doctor(params)
    stages = {c.stage for c in checks}
    assert {"bgm_split", "duet_split", "crop", "fit", "pachorus"} <= stages
    missing = {f"{c.stage}:{c.what}" for c in checks if not c.found}
    for key in ("bgm_split:Spleeter environment", "bgm_split:Spleeter model '2stems'",
                "duet_split:MossFormer2 model 'damo/speech_mossformer2_separation_temporal_8k'",
                "fit:EMOCA model 'EMOCA_v2_lr_mse_20'", "pachorus:FLAME model + masks (for LVE/FVE/FDD)"):
        assert key in missing, (key, missing)
    assert all(c.how_to_get for c in checks if not c.found)
    report = format_report(checks)
    assert "MISSING" in report and "how to get it" in report and str(tmp_path / "spleeter_models") in report


def test_everything_found_where_configured(tmp_path, monkeypatch):
    (tmp_path / "sm/2stems").mkdir(parents=True)
    (tmp_path / "sm/2stems/.probe").touch()
    m2 = tmp_path / "ms/models/damo/speech_mossformer2_separation_temporal_8k"
    m2.mkdir(parents=True)
    (m2 / "configuration.json").write_text("{}")
    (m2 / "pytorch_model.pt").write_bytes(b"")
    (tmp_path / "emoca/EMOCA_v2_lr_mse_20").mkdir(parents=True)
    (tmp_path / "flame").mkdir()
    for f in ("generic_model.pkl", "FLAME_masks.pkl"):
        (tmp_path / "flame" / f).write_bytes(b"")
    monkeypatch.setenv("MODEL_PATH", str(tmp_path / "sm"))
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms"))
    monkeypatch.setenv("FLAME_DIR", str(tmp_path / "flame"))
    monkeypatch.setenv("CHORUSHEAD_EMOCA_MODELS", str(tmp_path / "emoca"))
    monkeypatch.setenv("CHORUSHEAD_EMOCA_PYTHON", sys.executable)
    monkeypatch.setenv("CHORUSHEAD_EMOCA_PATH", str(STAND_INS))
    checks = by_what(doctor())
    for key in ("bgm_split:Spleeter model '2stems'",
                "duet_split:MossFormer2 model 'damo/speech_mossformer2_separation_temporal_8k'",
                "fit:EMOCA environment (python that imports gdl_apps)", "fit:EMOCA model 'EMOCA_v2_lr_mse_20'",
                "pachorus:FLAME model + masks (for LVE/FVE/FDD)"):
        assert checks[key].found, checks[key]
    assert "found" in format_report(list(checks.values()))


def test_a_failing_check_does_not_crash_the_doctor(monkeypatch):
    import chorushead.doctor as d
    monkeypatch.setattr(d, "facenet_checks", lambda p: 1 / 0)
    checks = d.doctor()
    bad = [c for c in checks if c.stage == "crop"]
    assert len(bad) == 1 and not bad[0].found and "ZeroDivisionError" in bad[0].detail
