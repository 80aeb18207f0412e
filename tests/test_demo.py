"""The command line's edges: the demo's closing lines, argument errors that leave nothing behind, and
the build lock that leaves no file behind."""
from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from chorushead.cli import app


# ----------------------------------------------------------------------------- demo
@pytest.mark.slow   # generates the demo's sample videos (7 s each) and builds them twice
def test_demo_says_what_ran_what_was_reused_and_how_to_see_status(tmp_path):
    from chorushead.runner import Pipeline
    out = tmp_path / "demo out"   # a space: the status command must quote it
    first = CliRunner().invoke(app, ["demo", "--out", str(out), "--seconds", "7"])
    assert first.exit_code == 0, first.output
    text = first.output
    assert "Ran: ingest, screen, fingerprint, bgm_split, duet_split, vad, crop, contiguity" in text
    assert "Reused from an earlier run: nothing." in text
    # the stems are supplied, so both separations are skipped, each with its reason on one line
    assert "  bgm_split skipped: stems supplied" in text and "  duet_split skipped: stems supplied" in text
    # every stage is accounted for: ran, reused, or on a line of its own saying why not
    said = set(re.search(r"Ran: (.*)\.", text).group(1).split(", "))
    said |= set(re.findall(r"^  (\w+) (?:skipped|failed|waiting): \S", text, re.M))
    assert said == set(Pipeline.load().stages), text
    for stage in ("smooth", "assign"):   # fit needs EMOCA (absent here, or a stand-in elsewhere)
        assert re.search(rf"^  {stage} waiting: waits for \w+", text, re.M) or re.search(rf"Ran: .*{stage}", text)

    build_dir = out / "build"
    command = text.strip().splitlines()[-1]
    assert command == f"Status of this build at any time: chorushead status --out {shlex.quote(str(build_dir))}"
    args = shlex.split(command.split(": ", 1)[1])   # exactly what a user would paste into a shell
    assert args[:3] == ["chorushead", "status", "--out"] and args[3] == str(build_dir)
    status = CliRunner().invoke(app, args[1:])
    assert status.exit_code == 0 and "contiguity" in status.output, status.output
    assert not (build_dir / ".build.lock").exists()

    again = CliRunner().invoke(app, ["demo", "--out", str(out), "--seconds", "7"])
    assert again.exit_code == 0, again.output
    reused = set(re.search(r"Reused from an earlier run: (.*)\.", again.output).group(1).split(", "))
    assert {"ingest", "bgm_split", "duet_split", "vad", "crop", "contiguity"} <= reused, again.output
    assert "Generating" not in again.output


# ----------------------------------------------------------------------------- argument errors
@pytest.mark.parametrize("args, message", [
    (["--stages", "ingest,bogus"], "unknown stage"),
    (["--set", "vad.no_such_param=1"], "unknown parameter"),
    (["--set", "no_equals_sign"], "--set expects"),
    (["--backend", "spark"], "--backend 'spark': unknown"),
    (["--stems", "{tmp}/no-stems-here"], "--stems .*: not a folder"),
    (["--pipeline", "{tmp}/missing.toml"], "missing.toml"),
])
def test_build_argument_errors_create_no_output_folder(tmp_path, args, message):
    videos = tmp_path / "videos"
    videos.mkdir()
    out = tmp_path / "out"
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = CliRunner().invoke(app, ["build", "--videos", str(videos), "--out", str(out), "-q", *args])
    assert result.exit_code == 2, result.output
    assert re.search(message, result.output), result.output
    assert not out.exists()


def test_build_missing_videos_or_nothing_to_rerun_creates_no_output_folder(tmp_path):
    out = tmp_path / "out"
    missing = CliRunner().invoke(app, ["build", "--videos", str(tmp_path / "nope"), "--out", str(out)])
    assert missing.exit_code == 2 and "--videos" in missing.output and "not a folder" in missing.output
    rerun = CliRunner().invoke(app, ["build", "--out", str(out)])   # no --videos and no earlier build
    assert rerun.exit_code == 2 and "give the raw videos with --videos" in rerun.output
    assert not out.exists()


def test_demo_argument_error_creates_no_output_folder(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "demo"), "--seconds", "2"])
    assert result.exit_code == 2 and "at least 7 s" in result.output
    assert not (tmp_path / "demo").exists()


# ----------------------------------------------------------------------------- build lock
def test_build_lock_file_is_removed_when_the_build_ends(tmp_path):
    from chorushead.runner import BuildLock
    lock = tmp_path / ".build.lock"
    with BuildLock(tmp_path):
        assert lock.exists() and f"pid {os.getpid()}" in lock.read_text()
    assert not lock.exists()
    with pytest.raises(KeyError):   # an exception inside the build removes it too
        with BuildLock(tmp_path):
            raise KeyError("boom")
    assert not lock.exists()


def test_stale_lock_file_from_a_killed_build_blocks_nothing(tmp_path):
    from chorushead.runner import BuildLock
    lock = tmp_path / ".build.lock"
    lock.write_text("pid 999999 since 2026-01-01 00:00:00")   # kill -9 left it; the OS dropped its flock
    with BuildLock(tmp_path):
        assert f"pid {os.getpid()}" in lock.read_text()
    assert not lock.exists()


def test_lock_opened_just_before_its_holder_removed_it_is_not_trusted(tmp_path, monkeypatch):
    """B opens the lock file, A finishes (unlinks it, unlocks), then B's flock succeeds on the orphaned
    file. B must notice and lock a fresh file, or a third build C could run beside B."""
    import chorushead.runner as runner
    first = runner.BuildLock(tmp_path).__enter__()
    real_open = os.open

    def open_then_first_finishes(path, *args, **kwargs):
        fd = real_open(path, *args, **kwargs)
        if first.fd is not None and Path(path).name == ".build.lock":
            first.__exit__(None, None, None)   # A ends between B's open and B's flock
        return fd

    monkeypatch.setattr(runner.os, "open", open_then_first_finishes)
    with runner.BuildLock(tmp_path) as second:
        monkeypatch.undo()
        lock = tmp_path / ".build.lock"
        assert lock.exists() and os.fstat(second.fd).st_ino == lock.stat().st_ino
        with pytest.raises(RuntimeError, match="Another build is running"):   # C is refused
            with runner.BuildLock(tmp_path):
                pass
    assert not (tmp_path / ".build.lock").exists()
