"""benchmarks/bench_gpu.py, the script a lent GPU machine runs in one call: its --quick smoke run works
here (CPU side only) and records a figure per section, so it does not rot between GPU sessions."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_run_measures_every_section_and_says_there_is_no_gpu(tmp_path):
    out = tmp_path / "bench_gpu.json"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--quick", "--json", str(out)],
                       capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    rec = json.loads(out.read_text())
    assert rec["name"] == "bench_gpu" and "--quick sizes" in rec["note"]
    runs = {row["numbers"]["section"]: row["numbers"]["runs"] for row in rec["rows"]}
    assert list(runs) == ["crop", "duet_split", "fit", "train"]
    assert runs["crop"][0]["device"] == "cpu" and runs["crop"][0]["frames_per_s"] > 0
    assert [r["batch"] for r in runs["duet_split"]][:2] == [1, 4] and all(r["seconds"] > 0 for r in runs["duet_split"])
    assert [r["batch"] for r in runs["fit"]][:2] == [1, 8] and all(r["images_per_s"] > 0 for r in runs["fit"])
    assert runs["train"][0]["run"] == "cpu" and runs["train"][0]["steps_per_s"] > 0
    if rec["machine"]["gpu"] is None:
        assert "no CUDA device" in rec["note"] and "measuring the CPU side only" in p.stdout


def test_unknown_section_is_one_clear_error():
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--sections", "crop,warp"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "unknown section(s) ['warp']" in p.stderr
