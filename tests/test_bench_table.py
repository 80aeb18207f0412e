"""benchmarks/table.py: README's benchmark table from results JSON, only between its markers; and
benchmarks/_results.py writes what the table reads."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import table  # noqa: E402
from _results import Recorder  # noqa: E402

README = """# Project
intro | not a table row
## Benchmarks
<!-- bench-table -->
| old | table |
<!-- /bench-table -->
after the table
"""


def _write(folder: Path, name: str, rows: list[tuple[str, str]], load=(1.5, 2.25)) -> None:
    rec = {"name": name, "started": "2026-11-25T20:00:00+00:00", "commit": "abc1234",
           "machine": {"cores": 2, "gpu": None}, "load_before": [load[0], 1.0, 1.0], "load_after": [load[1], 1.0, 1.0],
           "note": "", "rows": [{"label": a, "figure": b, "numbers": {}} for a, b in rows]}
    (folder / f"{name}.json").write_text(json.dumps(rec))


def test_table_rewrites_only_between_markers_in_order(tmp_path):
    res, readme = tmp_path / "results", tmp_path / "README.md"
    res.mkdir()
    readme.write_text(README)
    _write(res, "zz_extra", [("other", "1/s")])
    _write(res, "bench_lmdb", [("reads | warm", "**2.6×**"), ("trainer", "5000/s")])
    (res / "bench_crop.json").write_text(json.dumps({"name": "bench_crop", "legacy": True, "note": "stems mode",
                                                     "rows": [{"label": "crop", "figure": "17×"}]}))
    assert table.main(["--results", str(res), "--readme", str(readme), "--check"]) == 1
    assert table.main(["--results", str(res), "--readme", str(readme)]) == 0
    out = readme.read_text()
    head, rest = out.split("<!-- bench-table -->\n")
    body, tail = rest.split("<!-- /bench-table -->")
    assert head == README.split("<!-- bench-table -->")[0] and tail == "\nafter the table\n"
    rows = [ln for ln in body.splitlines() if ln.startswith("| ") and "---" not in ln][1:]
    assert [r.split(" | ")[0] for r in rows] == ["| `bench_crop` (stems mode)", "| `bench_lmdb`", "| ", "| `zz_extra`"]
    assert "reads \\| warm" in rows[1] and "load 1.5 → 2.2; 2 cores, no GPU; 2026-11-25 @ abc1234" in rows[1]
    assert rows[2].endswith("|  |")            # a benchmark's conditions are written once, on its first row
    assert "hand-recorded" in rows[0]
    assert table.main(["--results", str(res), "--readme", str(readme), "--check"]) == 0
    assert table.main(["--results", str(res), "--readme", str(readme)]) == 0 and readme.read_text() == out


def test_missing_markers_is_one_clear_error(tmp_path):
    res, readme = tmp_path / "results", tmp_path / "README.md"
    res.mkdir()
    _write(res, "bench_lmdb", [("x", "1")])
    readme.write_text("# no markers\n")
    with pytest.raises(SystemExit, match="bench-table"):
        table.main(["--results", str(res), "--readme", str(readme)])


def test_recorder_writes_what_the_table_reads(tmp_path):
    rec = Recorder("bench_x")
    rec.row("reads/s", "10/s", reads=10.0)
    p = rec.write("printed text", note="random weights", path=tmp_path / "bench_x.json")
    got = json.loads(p.read_text())
    assert got["machine"]["cores"] >= 1 and len(got["load_before"]) == 3 and len(got["load_after"]) == 3
    assert got["rows"] == [{"label": "reads/s", "figure": "10/s", "numbers": {"reads": 10.0}}]
    assert got["text"] == "printed text" and got["note"] == "random weights" and got["commit"]
    assert "bench_x" in table.render(table.load_results(tmp_path))


def test_readme_table_is_up_to_date():
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "table.py"), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_a_benchmark_run_never_touches_the_tracked_tree_and_take_records_on_request(tmp_path):
    """Issue 23: a run writes into benchmarks/results (git-ignored) or $BENCH_RESULTS; the README's
    table reads benchmarks/recorded only, so the suite stays green after any README benchmark; --take
    copies a fresh result into recorded/ and rewrites the table, and refuses a missing or broken one."""
    ignored = subprocess.run(["git", "check-ignore", "-q", "benchmarks/results/bench_lmdb.json"], cwd=ROOT)
    assert ignored.returncode == 0
    env = {**__import__("os").environ, "BENCH_RESULTS": str(tmp_path / "fresh")}
    code = ("import sys; sys.path.insert(0, 'benchmarks'); from _results import Recorder; "
            "r = Recorder('bench_lmdb'); r.row('reads/s', '99/s'); print(r.write())")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "fresh" / "bench_lmdb.json").is_file()
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "table.py"), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr                     # the README still matches recorded/

    rec, readme = tmp_path / "recorded", tmp_path / "README.md"
    rec.mkdir()
    readme.write_text(README)
    _write(rec, "bench_crop", [("crop", "17×")])
    args = ["--results", str(rec), "--fresh", str(tmp_path / "fresh"), "--readme", str(readme)]
    assert table.main(args) == 0
    assert "99/s" not in readme.read_text()                # not recorded yet: not shown
    assert table.main(args + ["--take", "bench_lmdb"]) == 0
    assert (rec / "bench_lmdb.json").is_file() and "99/s" in readme.read_text() and "17×" in readme.read_text()
    with pytest.raises(SystemExit, match="no result file"):
        table.main(args + ["--take", "bench_nothing"])
    (tmp_path / "fresh" / "bench_bad.json").write_text("{not json")
    before = sorted(p.name for p in rec.iterdir())
    with pytest.raises(ValueError):
        table.main(args + ["--take", "all"])
    assert sorted(p.name for p in rec.iterdir()) == before   # nothing copied when one file is broken
