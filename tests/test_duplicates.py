"""Duplicates stay together (issue 21, part 3): the fingerprint stage's audio fingerprint and frame hashes
find a re-encoded, trimmed, rescaled copy of a video and not an unrelated one; pack puts the group in
one split where the plain split by video would not; the dataset card's check reports a split group."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import numpy as np

from chorushead.core.payloads import AudioPrint, FrameHashes
import pytest
from hypothesis import given, settings, strategies as st

from chorushead.core import media
from chorushead.core.manifest import Manifest, Record
from chorushead.core.windows import WindowReader
from chorushead.report import _splits
from chorushead.stages import fingerprint as F, pack
from chorushead.stages.selection import SPLIT_NAMES, assign_splits
from packfixture import make_upstream
from test_pack import run_pack

P = pack.Params()
T = F.Thresholds(audio_max_ber=P.dup_audio_max_ber, frames_max_hamming=P.dup_frames_max_hamming,
                 min_overlap_s=P.dup_min_overlap_s, max_offset_s=P.dup_max_offset_s)


# ----------------------------------------------------------------------------- split with groups
@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 30), seed=st.integers(0, 5), data=st.data(),
       fractions=st.sampled_from([[0.6, 0.1, 0.3], [1.0, 0.0, 0.0], [0.34, 0.33, 0.33], [0.8, 0.1, 0.1]]))
def test_a_group_is_never_split_and_no_groups_is_the_old_split(n, seed, data, fractions):
    videos = [f"v{i:02d}-{i * 7919 % 1000:03d}" for i in range(n)]
    old = assign_splits(videos, fractions, seed)
    assert assign_splits(videos, fractions, seed, []) == old == assign_splits(videos, fractions, seed, None)
    # disjoint groups (connected components are): a random labelling, groups of two or more
    labels = data.draw(st.lists(st.integers(0, max(1, n // 2)), min_size=n, max_size=n))
    groups = [g for lab in set(labels) if len(g := [v for v, x in zip(videos, labels) if x == lab]) > 1]
    new = assign_splits(videos, fractions, seed, groups)
    assert set(new) == set(videos) and set(new.values()) <= set(SPLIT_NAMES)
    for g in groups:
        assert {new[v] for v in g} == {old[min(g)]}            # the group's first member decides
    grouped = {v for g in groups for v in g}
    assert all(new[v] == old[v] for v in videos if v not in grouped)   # nobody else moves


# ----------------------------------------------------------------------------- real videos
@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """An original (the project's sample duet), a copy re-encoded at another CRF and audio bitrate, 1.5 s
    cut off its start and rescaled to 384x192, and an unrelated duet (another seed: other songs, other
    motion, the same two faces on the same background: a hard case for frame hashes)."""
    from chorushead.sample import write_sample
    d = tmp_path_factory.mktemp("dups")
    orig, _, _ = write_sample(d / "a", seconds=12.0, seed=0)
    other, _, _ = write_sample(d / "u", seconds=12.0, seed=7, name="other")
    copy = d / "copy.mp4"
    subprocess.run([media.ffmpeg_exe(), "-y", "-loglevel", "error", "-ss", "1.5", "-i", str(orig),
                    "-vf", "scale=384:192", "-c:v", "libx264", "-crf", "35", "-c:a", "aac", "-b:a", "64k", str(copy)],
                   check=True)
    assert media.probe(copy).width == 384 and abs(media.probe(copy).duration - 10.5) < 0.2
    prints, seconds = {}, {}
    for name, path in [("orig", orig), ("copy", copy), ("other", other)]:
        t0 = time.time()
        prints[name] = {"audio": F.audio_fingerprint(path), "frames": F.frame_hashes(path, 5), "sample_fps": 5}
        seconds[name] = time.time() - t0
    print("fingerprint seconds per 12 s video:", {k: round(v, 2) for k, v in seconds.items()})
    return prints


def test_the_copy_matches_the_original_and_the_unrelated_video_does_not(videos):
    o, c, u = videos["orig"], videos["copy"], videos["other"]
    audio_copy, off = F.audio_score(o["audio"], c["audio"], T.min_overlap_s, T.max_offset_s)
    audio_other, _ = F.audio_score(o["audio"], u["audio"], T.min_overlap_s, T.max_offset_s)
    frames_copy, foff = F.frames_score(o["frames"], c["frames"], 5, T.min_overlap_s, T.max_offset_s)
    frames_other, _ = F.frames_score(o["frames"], u["frames"], 5, T.min_overlap_s, T.max_offset_s)
    print(f"audio BER copy {audio_copy:.3f} (offset {off:.2f} s), unrelated {audio_other:.3f}, "
          f"threshold {T.audio_max_ber}; frames bits copy {frames_copy:.2f} (offset {foff:.2f} s), "
          f"unrelated {frames_other:.2f}, threshold {T.frames_max_hamming}")
    # each test on its own finds the copy, with margin on both sides of its threshold
    assert audio_copy < T.audio_max_ber / 2 and audio_other > T.audio_max_ber * 1.5
    assert frames_copy < T.frames_max_hamming * 0.75 and frames_other > T.frames_max_hamming * 1.5
    assert abs(off - 1.5) < 0.2 and abs(foff - 1.5) < 0.25     # the trim, found as the offset
    groups = F.duplicate_groups(videos, T)
    assert [g["members"] for g in groups] == [["copy", "orig"]]
    assert groups[0]["links"][0]["by"] == "audio"
    # the frames alone group them too (a video whose audio was replaced)
    no_audio = {k: {kk: vv for kk, vv in v.items() if kk != "audio"} for k, v in videos.items()}
    groups = F.duplicate_groups(no_audio, T)
    assert [(g["members"], g["links"][0]["by"]) for g in groups] == [(["copy", "orig"], "frames")]


def test_a_missing_fpcalc_is_one_clear_error(monkeypatch, tmp_path):
    from chorushead.core.errors import MissingAsset
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(MissingAsset, match="fpcalc not found .*libchromaprint-tools"):
        F.fpcalc_exe()


def _fingerprint_record(out: Path, vid: str, prints: dict) -> None:
    d = out / "items" / vid / "fingerprint"
    d.mkdir(parents=True, exist_ok=True)
    AudioPrint(fingerprint=prints["audio"]).save(d / "audio.npz")
    FrameHashes(hashes=prints["frames"][0], informative=prints["frames"][1], sample_fps=np.asarray(5)).save(d / "frames.npz")
    ing = Manifest(out, "ingest").latest()[vid]
    Manifest(out, "fingerprint").append(Record(
        item=vid, stage="fingerprint", status="done", fingerprint="test", stage_version=F.VERSION,
        outputs={"ingest_fingerprint": ing.fingerprint, "audio": f"items/{vid}/fingerprint/audio.npz",
                 "frames": f"items/{vid}/fingerprint/frames.npz", "sample_fps": 5},
        metrics={"audio_items": len(prints["audio"]), "frames_hashed": len(prints["frames"][0]), "frames_flat": 0}))


def test_pack_keeps_a_group_in_one_split_and_the_card_checks_it(tmp_path, videos):
    out = tmp_path / "out"
    items = make_upstream(out, n_videos=3, seconds=6.0, segments=((0, 160),))
    ids = [it.id for it in items]                      # song0-abcdef, song1-abcdef, song2-abcdef
    plain = assign_splits(ids, P.split, P.seed)
    assert plain[ids[0]] != plain[ids[1]], plain       # the plain split by video would split the pair
    before = run_pack(out, items, append=True)
    assert {r.item: r.outputs["split"] for r in before} == plain      # no fingerprints: today's split
    assert all("group" not in r.outputs for r in before)
    for vid, name in zip(ids, ["orig", "copy", "other"]):
        _fingerprint_record(out, vid, videos[name])
    recs = {r.item: r for r in run_pack(out, items, append=True)}
    # the copy moves to its group's first member's split; the group's members are repacked (their records
    # name the group), the unrelated video is not touched
    assert sorted(recs) == ids[:2] and recs[ids[0]].outputs["split"] == plain[ids[0]]
    assert recs[ids[1]].outputs["split"] == plain[ids[0]] and recs[ids[1]].outputs["group"] == ids[:2]
    meta = WindowReader(out / P.lmdb, None).meta
    (group,) = meta["summary"]["duplicates"]
    assert group["members"] == ids[:2] and group["splits"] == {ids[0]: plain[ids[0]], ids[1]: plain[ids[0]]}
    assert group["links"][0]["by"] == "audio" and group["links"][0]["score"] < T.audio_max_ber
    index = {s: WindowReader(out / P.lmdb, split=s).keys for s in SPLIT_NAMES}
    packed = {v: {"split": s, "frames": 160} for s, ks in index.items() for v in {k.split("/")[1] for k in ks}}
    _rows, violations = _splits(index, packed, lambda v: 30, [group["members"]])
    assert violations == [] and packed[ids[0]]["split"] == packed[ids[1]]["split"]
    assert run_pack(out, items) == []                  # a rerun has nothing to do

    # the card's check on a group split between train and test (as the plain split would have put it)
    split_index = {"train": [f"w/{ids[0]}/0000/0000000"], "val": [], "test": [f"w/{ids[1]}/0000/0000000"]}
    _rows, violations = _splits(split_index, {}, lambda v: 30, [ids[:2]])
    assert violations == [f"duplicates {ids[0]}, {ids[1]} (one song): {ids[0]} in train, {ids[1]} in test"]


def test_fingerprint_payloads_are_typed(tmp_path):
    from chorushead.core.payloads import BadPayload
    h = np.array([1, 2**63 + 5], np.uint64)
    FrameHashes(hashes=h, informative=np.array([True, False]), sample_fps=np.asarray(5)).save(tmp_path / "f.npz")
    got = FrameHashes.load(tmp_path / "f.npz", 5)
    assert got.hashes.dtype == np.uint64 and got.hashes[1] == 2**63 + 5 and got.informative.tolist() == [True, False]
    with pytest.raises(BadPayload, match="sample rate .* is 5, its record says 4; rerun stage fingerprint"):
        FrameHashes.load(tmp_path / "f.npz", 4)
    np.savez(tmp_path / "a.npz", fingerprint=np.array([0.5, 1.5]))
    with pytest.raises(BadPayload, match="fingerprint is float64, expected kind 'iu'"):
        AudioPrint.load(tmp_path / "a.npz")
