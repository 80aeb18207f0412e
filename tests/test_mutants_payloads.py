"""Values of chorushead.core.payloads that mutation testing showed were not pinned
(docs/mutation-survivors.md, `scripts/mutation.sh payloads`).

A bad payload's error is the user's only clue, so each test checks the whole line: the file's path
first, what is wrong, and the stage to rerun.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from chorushead.core.payloads import (AudioPrint, BadPayload, Detections, FitSegment, FrameHashes,
                                      Separation, SmoothSegment)
from chorushead.core.windows import N_COEFFS


def _raises(call, message: str) -> None:
    with pytest.raises(BadPayload) as e:
        call()
    assert str(e.value) == message


# ----------------------------------------------------------------------------- NpzPayload.read
def test_a_missing_file_names_its_class_path_and_stage(tmp_path):
    p = tmp_path / "detections.npz"
    _raises(lambda: Detections.read(p), f"{p}: Detections file missing; rerun stage crop")


def test_a_torn_file_is_unreadable_with_the_exception_named(tmp_path):
    p = tmp_path / "detections.npz"
    p.write_bytes(b"PK\x03\x04 torn zip")
    with pytest.raises(BadPayload) as e:
        Detections.read(p)
    assert str(e.value).startswith(f"{p}: unreadable (BadZipFile: ")
    assert str(e.value).endswith("; rerun stage crop")


def test_pickled_object_arrays_are_refused_never_unpickled(tmp_path):
    """An object array would run pickle on load: np.load must stay allow_pickle=False."""
    p = tmp_path / "detections.npz"
    np.savez(p, probs=np.array([[{"a": 1}]], dtype=object))
    with pytest.raises(BadPayload) as e:
        Detections.read(p)
    assert str(e.value).startswith(f"{p}: unreadable (ValueError: Object arrays cannot be loaded")


def test_each_mismatch_is_one_line_with_the_path(tmp_path):
    p = tmp_path / "x.npz"
    np.savez(p, boxes=np.zeros((2, 3, 4), np.float32))
    _raises(lambda: Detections.read(p), f"{p}: no array 'probs' (holds ['boxes']); rerun stage crop")
    np.savez(p, probs=np.zeros((2, 3), np.int32))
    _raises(lambda: Detections.read(p), f"{p}: probs is int32, expected kind 'f'; rerun stage crop")
    np.savez(p, probs=np.zeros(3, np.float32))
    _raises(lambda: Detections.read(p),
            f"{p}: probs has shape (3,), expected 2 dims ('S', 'T'); rerun stage crop")
    np.savez(p, probs=np.zeros((2, 3), np.float32), boxes=np.zeros((2, 4, 4), np.float32))
    _raises(lambda: Detections.read(p),
            f"{p}: probs has shape (2, 3): its T is 3, expected 4; rerun stage crop")


# ----------------------------------------------------------------------------- fingerprint payloads
def test_audio_print_and_frame_hashes_load_what_was_saved(tmp_path):
    fp = np.array([1, 2**32 - 1, 7], np.uint32)
    a = AudioPrint.load(AudioPrint(fp).save(tmp_path / "audio.npz"))
    assert isinstance(a, AudioPrint) and a.fingerprint.dtype == np.uint32
    assert np.array_equal(a.fingerprint, fp)

    h = FrameHashes(np.array([3, 2**64 - 1], np.uint64), np.array([True, False]), np.array(5))
    p = h.save(tmp_path / "frames.npz")
    for rate in (None, 5):
        got = FrameHashes.load(p, sample_fps=rate)
        assert isinstance(got, FrameHashes)
        assert np.array_equal(got.hashes, h.hashes) and got.hashes.dtype == np.uint64
        assert got.informative.tolist() == [True, False] and int(got.sample_fps) == 5
    _raises(lambda: FrameHashes.load(p, sample_fps=4),
            f"{p}: its sample rate (frames/s) is 5, its record says 4; rerun stage fingerprint")


# ----------------------------------------------------------------------------- fit and smooth segments
def _coeffs(t: int) -> np.ndarray:
    return np.zeros((2, t, N_COEFFS), np.float32)


def test_a_fit_segment_with_frames_is_checked_against_them_and_the_span(tmp_path):
    p = FitSegment(_coeffs(4), frames=np.array([10, 15])).save(tmp_path / "seg000.npz")
    _raises(lambda: FitSegment.load(p),
            f"{p}: its frame count (end - start) is 4, its record says 5; rerun stage fit")
    p = FitSegment(_coeffs(5), frames=np.array([10, 15])).save(tmp_path / "seg000.npz")
    assert FitSegment.load(p, (10, 15)).frames.tolist() == [10, 15]
    _raises(lambda: FitSegment.load(p, (11, 16)),
            f"{p}: it covers frames [10, 15), the segment is [11, 16); rerun stage fit")


def test_a_fit_segment_without_frames_is_checked_against_the_spans_length(tmp_path):
    p = FitSegment(_coeffs(4)).save(tmp_path / "seg001.npz")
    assert FitSegment.load(p).frames is None          # no span, no frames: nothing to check
    assert FitSegment.load(p, (20, 24)).coeffs.shape == (2, 4, N_COEFFS)
    _raises(lambda: FitSegment.load(p, (20, 23)),
            f"{p}: its frame count is 4, its record says 3; rerun stage fit")
    _raises(lambda: FitSegment.load(p, (19, 24)),
            f"{p}: its frame count is 4, its record says 5; rerun stage fit")


def test_a_smooth_segment_names_its_path(tmp_path):
    p = SmoothSegment(_coeffs(6)).save(tmp_path / "seg000.npz")
    _raises(lambda: SmoothSegment.load(p, frames=7),
            f"{p}: its frame count is 6, its record says 7; rerun stage smooth")


# ----------------------------------------------------------------------------- Separation
def _separation_folder(tmp_path, **change) -> dict:
    for name in ("vocals.wav", "accompaniment.wav", "singer1.wav", "singer2.wav"):
        (tmp_path / name).write_bytes(b"")
    d = dict(song="/s.wav", video=None, vocals="vocals.wav", accompaniment="accompaniment.wav",
             singers=["singer1.wav", "singer2.wav"], order_source="separator", order=[1, 0], note="n")
    d.update(change)
    (tmp_path / "separation.json").write_text(json.dumps(d))
    return d


def test_fields_with_defaults_may_be_absent_the_others_may_not(tmp_path):
    d = _separation_folder(tmp_path)      # no confidence, low_confidence, models, build
    sep = Separation.load(tmp_path)
    assert (sep.confidence, sep.low_confidence, sep.models, sep.build) == (None, None, {}, "")
    assert sep.order == [1, 0]
    p = tmp_path / "separation.json"
    for gone in ("song", "note", "order"):
        p.write_text(json.dumps({k: v for k, v in d.items() if k != gone}))
        left = sorted(k for k in d if k != gone)
        _raises(lambda: Separation.load(tmp_path),
                f"{p}: holds {left}, expected the fields of Separation; rerun `chorushead separate`")
    p.write_text(json.dumps([1, 2]))
    _raises(lambda: Separation.load(tmp_path),
            f"{p}: holds list, expected the fields of Separation; rerun `chorushead separate`")


def test_separation_errors_are_whole_lines(tmp_path):
    p = tmp_path / "separation.json"
    p.write_text("{not json")
    with pytest.raises(BadPayload) as e:
        Separation.load(tmp_path)
    assert str(e.value).startswith(f"{p}: unreadable (JSONDecodeError: ")
    assert str(e.value).endswith("); rerun `chorushead separate`")

    _separation_folder(tmp_path, order=[0])
    _raises(lambda: Separation.load(tmp_path), f"{p}: 2 singer track(s) for an order of 1")

    _separation_folder(tmp_path)
    (tmp_path / "singer1.wav").unlink()
    (tmp_path / "accompaniment.wav").unlink()
    _raises(lambda: Separation.load(tmp_path),
            f"{p}: names accompaniment.wav, singer1.wav, not in {tmp_path}; rerun `chorushead separate`")
