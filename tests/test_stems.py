"""Supplied stems (``--stems``): singers keep the numbers the user gave them in every output name, and
stems that do not fit the video are warned about (and flagged for review) or refused."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from chorushead.core import media
from chorushead.core.manifest import Manifest
from chorushead.runner import Pipeline, build
from chorushead.stages import duet_split, ingest, vad

SR = 44100


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    """A 6 s two-singer video with its stems (``sample/videos``, ``sample/stems/duet``)."""
    from chorushead.sample import write_sample
    root = tmp_path_factory.mktemp("stems")
    write_sample(root, seconds=6, size=(96, 192), name="duet", seed=3, absent_s=None)
    return root


def _copy(sample: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A private copy of the sample, so each test may change its stems."""
    shutil.copytree(sample / "videos", tmp_path / "videos")
    shutil.copytree(sample / "stems", tmp_path / "stems")
    return tmp_path / "videos", tmp_path / "stems" / "duet"


def _build(videos: Path, stems: Path, out: Path, stages: list[str]):
    # tiny test videos (192x96): the screen's resolution gate would turn them away
    return build(videos, out, Pipeline.load(overrides=["screen.enabled=false"]), stages=stages, stems=stems.parent,
                 progress=False, log=lambda _: None)


def _latest(out: Path, stage: str):
    [rec] = Manifest(out, stage).latest().values()
    return rec


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    n = min(len(a), len(b))
    return float(np.corrcoef(a[:n], b[:n])[0, 1])


# ----------------------------------------------------------------------------- numbering
def test_singers_keep_the_users_numbers_in_every_output_name(sample, tmp_path):
    videos, stems = _copy(sample, tmp_path)
    # A third singer, and files whose directory order is not their number order (singer10 would sort
    # before singer2 as text): numbers, not positions, name the outputs.
    third = media.read_wav(stems / "singer1.wav")[0][::-1].copy()   # a voice unlike the other two
    media.write_wav(stems / "singer3.wav", third, SR)
    out = tmp_path / "out"
    summaries = _build(videos, stems, out, ["ingest", "screen", "bgm_split", "duet_split", "vad"])
    assert all(s.failed == 0 for s in summaries), [s.failures for s in summaries]

    ing = ingest.Outputs.of(_latest(out, "ingest"))
    assert [Path(p).name for p in ing.stems_singers] == ["singer1.wav", "singer2.wav", "singer3.wav"]
    dsplit = duet_split.Outputs.of(_latest(out, "duet_split"))
    assert [Path(p).name for p in dsplit.singers_16k] == ["singer1_16k.wav", "singer2_16k.wav", "singer3_16k.wav"]
    trimmed = vad.Outputs.of(_latest(out, "vad"))
    assert [Path(p).name for p in trimmed.singers_16k] == ["singer1_16k.wav", "singer2_16k.wav", "singer3_16k.wav"]
    assert not list(out.rglob("singer0*")), "a 0-based name slipped through"

    # and singer k's file holds the user's singer k (not merely a file of that name)
    vad_start = vad.Outputs.of(_latest(out, "vad")).start_frame / 30.0
    for k in (1, 2, 3):
        mine = media.load_audio(stems / f"singer{k}.wav", 16000, start=vad_start)
        corr = [_corr(media.read_wav(out / p)[0], mine) for p in trimmed.singers_16k]
        assert int(np.argmax(corr)) == k - 1 and corr[k - 1] > 0.9, (k, corr)


@pytest.mark.parametrize("names, message", [
    (["singer1.wav", "singer3.wav"], r"numbered \[1, 3\]"),
    (["singer0.wav", "singer1.wav"], r"numbered \[0, 1\]"),
    (["singer1.wav", "singer2.wav", "singer_b.wav"], "singer_b.wav is not named singer<number>.wav"),
    (["singer1.wav"], "at least 2"),
])
def test_singer_files_must_be_numbered_from_one_without_gaps(sample, tmp_path, names, message):
    videos, stems = _copy(sample, tmp_path)
    voices = [media.read_wav(stems / f"singer{k}.wav")[0] for k in (1, 2)]
    for p in stems.glob("singer*.wav"):
        p.unlink()
    for i, name in enumerate(names):
        media.write_wav(stems / name, voices[i % 2], SR)
    [summary] = _build(videos, stems, tmp_path / "out", ["ingest"])
    assert summary.failed == 1
    rec = _latest(tmp_path / "out", "ingest")
    assert rec.error_class == "BadInput"
    assert re.search(message, rec.message), rec.message


# ----------------------------------------------------------------------------- stems that do not fit
def test_matching_stems_give_no_warning(sample, tmp_path):
    videos, stems = _copy(sample, tmp_path)
    [summary] = _build(videos, stems, tmp_path / "out", ["ingest"])
    assert summary.done == 1
    m = ingest.Metrics.of(_latest(tmp_path / "out", "ingest"))
    assert m.warnings == [] and m.stems_max_diff_s is not None and m.stems_max_diff_s < ingest.STEMS_WARN_S


def test_stems_a_little_off_are_warned_about_and_flagged(sample, tmp_path):
    from chorushead.review.flags import FLAG_INFO, flag_segment
    videos, stems = _copy(sample, tmp_path)
    voice = media.read_wav(stems / "singer2.wav")[0]
    media.write_wav(stems / "singer2.wav", np.concatenate([voice, np.zeros(int(0.8 * SR), np.float32)]), SR)
    vocals = media.read_wav(stems / "vocals.wav")[0]
    media.write_wav(stems / "vocals.wav", media.resample(vocals, SR, 48000), 48000)
    [summary] = _build(videos, stems, tmp_path / "out", ["ingest"])
    assert summary.done == 1, summary.failures           # warned, not refused
    rec = _latest(tmp_path / "out", "ingest")
    m = ingest.Metrics.of(rec)
    assert len(m.warnings) == 2, m.warnings
    assert any("singer2.wav" in w and "+0.8" in w for w in m.warnings), m.warnings
    assert any("vocals.wav is at 48000 Hz" in w and "44100 Hz" in w for w in m.warnings), m.warnings
    assert 0.7 < m.stems_max_diff_s < 0.9
    # the imported stems are still all at 44.1 kHz, the rate every later stage reads
    assert media.read_wav(tmp_path / "out" / ingest.Outputs.of(rec).stems_vocals)[1] == SR

    flagged = flag_segment(300, stems_warnings=m.warnings)
    assert "stems_mismatch" in flagged.flags and "stems_mismatch" in FLAG_INFO
    assert flagged.metrics["stems_warnings"] == 2.0
    assert "stems_mismatch" not in flag_segment(300, stems_warnings=[]).flags
    assert flagged.score > flag_segment(300, stems_warnings=[]).score


def test_stems_far_off_are_refused(sample, tmp_path):
    videos, stems = _copy(sample, tmp_path)
    voice = media.read_wav(stems / "singer1.wav")[0]
    media.write_wav(stems / "singer1.wav", voice[: len(voice) - int(2.0 * SR)], SR)   # 2 s short of 6 s
    [summary] = _build(videos, stems, tmp_path / "out", ["ingest"])
    assert summary.failed == 1
    rec = _latest(tmp_path / "out", "ingest")
    assert rec.error_class == "BadInput"
    assert "singer1.wav is 4.00 s but the video is 6.0" in rec.message and "another cut" in rec.message
