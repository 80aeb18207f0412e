"""Nothing a user built is lost (issue 18): reruns, new batches, failures upstream, a full disk, exit codes.

One small demo build (2 videos of 7 s, landmarks fit) is made once; every case works on a copy of it.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from chorushead.cli import app
from chorushead.core.manifest import Manifest
from chorushead.core.windows import decode_arrays_header, open_env, packed_videos
from chorushead.runner import Pipeline
from chorushead.report import collect as collect_card
from chorushead.status import collect

pytestmark = pytest.mark.slow


def cli(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("safety") / "demo"
    res = cli("demo", "--out", out, "--seconds", "7", "--videos", "2")
    assert res.exit_code == 0, res.output
    return out


def copy_build(demo: Path, dest: Path) -> Path:
    shutil.copytree(demo / "build", dest, symlinks=True)
    return dest


def windows(build: Path) -> dict[bytes, bytes]:
    """Every window key -> value, through the readers' own handle (open_env: one per process and path)."""
    with open_env(build / "windows.lmdb").begin() as txn:
        return {bytes(k): bytes(v) for k, v in txn.cursor() if bytes(k).startswith(b"w/")}


def agree(build: Path) -> dict[str, int]:
    """status, the dataset card, the LMDB's index and its markers say the same about what is packed; returns per split."""
    bs = collect(build, Pipeline.for_build(build)[0])
    keys = windows(build)
    by_split: dict[str, int] = {}
    for v in keys.values():
        split = decode_arrays_header(v)[1]["split"]
        by_split[split] = by_split.get(split, 0) + 1
    assert bs.windows == by_split
    card = collect_card(build, Pipeline.for_build(build)[0])
    assert {r.split: r.windows for r in card.splits if r.windows} == by_split
    assert sum(int(s["windows"]) for s in packed_videos(build / "windows.lmdb").values()) == len(keys)
    return by_split


def test_a_plain_rerun_keeps_every_window_and_the_file_byte_identical(demo, tmp_path):
    x = copy_build(demo, tmp_path / "X")
    before = (x / "windows.lmdb" / "data.mdb").read_bytes()
    n = len(windows(x))
    assert n > 0
    res = cli("build", "--out", x)      # no --pipeline, no --set: the build's own saved pipeline
    assert res.exit_code == 0, res.output
    assert "saved pipeline" in res.output
    assert json.loads((x / "pipeline.json").read_text())["params"]["fit"]["backend"] == "landmarks"
    assert (x / "windows.lmdb" / "data.mdb").read_bytes() == before
    agree(x)


def test_an_upstream_failure_keeps_the_old_windows_marks_them_stale_and_exits_1(demo, tmp_path):
    x = copy_build(demo, tmp_path / "X")
    before = windows(x)
    n_pack = len(Manifest(x, "pack").read_all())
    res = cli("build", "--out", x, "--set", "fit.backend=emoca", "-q")   # no EMOCA here: fit fails
    assert res.exit_code == 1, res.output
    assert "fit.backend=landmarks" in res.output            # the failure names the open alternative
    assert windows(x) == before                              # nothing packed, nothing removed
    assert len(Manifest(x, "pack").read_all()) == n_pack     # and no pack record as if new
    text = cli("status", "--out", x).output
    assert "stale in the LMDB (2)" in text, text
    smooth = next(line for line in text.splitlines() if line.startswith("smooth"))
    assert smooth.split()[1:] == ["0", "0", "0", "2", "0", "0"], text   # done skipped failed stale ...
    agree(x)
    # back on the open fit: current again, the same windows
    res = cli("build", "--out", x, "--set", "fit.backend=landmarks", "-q")
    assert res.exit_code == 0, res.output
    assert windows(x) == before
    assert "stale in the LMDB" not in cli("status", "--out", x).output


def test_a_changed_setting_reruns_downstream_only_and_blocks_on_a_stale_upstream(demo, tmp_path):
    x = copy_build(demo, tmp_path / "X")
    # only pack asked for, but vad's settings changed: vad..assign are not current, so pack is blocked
    res = cli("build", "--out", x, "--stages", "pack", "--set", "vad.aggressiveness=3", "-q")
    assert res.exit_code == 1, res.output
    pack_row = next(line for line in res.output.splitlines() if line.startswith("pack"))
    assert pack_row.split()[5] == "2", res.output            # blocked 2
    assert windows(x)


def test_batches_add_up_and_remove_is_the_one_way_out(demo, tmp_path):
    sample = demo / "sample"
    a, b = tmp_path / "A", tmp_path / "B"
    for folder, name in ((a, "duet1"), (b, "duet2")):
        folder.mkdir()
        shutil.copy(sample / "videos" / f"{name}.mp4", folder)
    out = tmp_path / "O"
    common = ["--out", out, "--stems", sample / "stems", "--set", "fit.backend=landmarks", "-q"]
    assert cli("build", "--videos", a, *common).exit_code == 0
    first = windows(out)
    assert first
    res = cli("build", "--videos", b, *common)
    assert res.exit_code == 0, res.output
    both = windows(out)
    videos = {k.split(b"/")[1].decode().split("-")[0] for k in both}
    assert videos == {"duet1", "duet2"}
    agree(out)
    items = json.loads((out / "items.json").read_text())
    duet1 = next(i for i in items if i.startswith("duet1"))
    res = cli("remove", duet1, "--out", out, "-q")
    assert res.exit_code == 0, res.output
    assert {k.split(b"/")[1].decode().split("-")[0] for k in windows(out)} == {"duet2"}
    agree(out)
    assert cli("remove", "no-such-video", "--out", out).exit_code == 2


def test_a_build_whose_items_all_fail_exits_1(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "broken.mp4").write_bytes(b"not a video at all")
    res = cli("build", "--videos", raw, "--out", tmp_path / "o", "--stages", "ingest", "-q")
    assert res.exit_code == 1, res.output
    assert "[ingest] broken-" in res.output


def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True).returncode == 0


@pytest.mark.parametrize("full", ["map", "disk"])
def test_a_full_disk_during_pack_is_one_line_and_a_record(demo, tmp_path, full):
    """``map``: the LMDB's map is too small (pack.map_size_gb = 0: LMDB's 1 MiB default); ``disk``: a
    2 MiB tmpfs (needs root; skipped where mount is not allowed)."""
    x = copy_build(demo, tmp_path / "X")
    sets = ["--set", "pack.map_size_gb=0"]
    mnt = tmp_path / "small"
    if full == "disk":
        if not _mount_tmpfs(mnt, "2m"):
            pytest.skip("cannot mount a small tmpfs here (not root?)")
        sets = ["--set", f'pack.lmdb="{mnt}/windows.lmdb"']
    else:
        shutil.rmtree(x / "windows.lmdb")
    try:
        res = cli("build", "--out", x, "-q", *sets)
        assert res.exit_code == 1, res.output
        assert "Traceback" not in res.output
        fails = [line for line in res.output.splitlines() if line.startswith("  [pack]")]
        assert fails and all("no space left on the device" in line for line in fails), res.output
        recs = Manifest(x, "pack").latest()
        assert any(r.status == "failed" and "no space left" in r.message for r in recs.values())
        if full == "map":
            assert not (x / "windows.lmdb").exists() or not windows(x)
    finally:
        if full == "disk":
            subprocess.run(["umount", str(mnt)], capture_output=True)
