"""Tests that kill the mutants of chorushead/stages/fingerprint.py that survived the fast tests
(docs/mutation-survivors.md). fpcalc is replaced by a script on $CHORUSHEAD_FPCALC and the frame decode
by a generator of hand-made 9x8 thumbnails, so every hash, bit-error rate, offset and group below is
worked out by hand."""
from __future__ import annotations

import json
import os
import stat
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from chorushead.core.errors import MissingAsset, StageError
from chorushead.core.manifest import Record
from chorushead.core.payloads import AudioPrint, FrameHashes
from chorushead.stages import fingerprint as F


def _get(x, key):
    return x.get(key) if isinstance(x, dict) else getattr(x, key)


# ----------------------------------------------------------------------------- fpcalc
def _script(path: Path, body: str) -> Path:
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def test_fpcalc_exe_env_path_and_errors(monkeypatch, tmp_path):
    exe = _script(tmp_path / "myfpcalc", "print('{}')\n")
    monkeypatch.setenv("CHORUSHEAD_FPCALC", str(exe))
    assert F.fpcalc_exe() == str(exe)
    plain = tmp_path / "plain"
    plain.write_text("x")
    plain.chmod(0o644)
    for bad in (plain, tmp_path / "missing", tmp_path):      # not executable, absent, a folder
        monkeypatch.setenv("CHORUSHEAD_FPCALC", str(bad))
        with pytest.raises(MissingAsset) as e:
            F.fpcalc_exe()
        assert str(e.value) == (f"Chromaprint's fpcalc not found (looked in: $CHORUSHEAD_FPCALC={bad}). "
                                f"How to get it: {F.FPCALC_HOW}")
    # unset (or empty): PATH
    bindir = tmp_path / "bin"
    bindir.mkdir()
    onpath = _script(bindir / "fpcalc", "print('{}')\n")
    for env in (None, ""):
        if env is None:
            monkeypatch.delenv("CHORUSHEAD_FPCALC", raising=False)
        else:
            monkeypatch.setenv("CHORUSHEAD_FPCALC", env)
        monkeypatch.setenv("PATH", str(bindir))
        assert F.fpcalc_exe() == str(onpath)
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    with pytest.raises(MissingAsset) as e:
        F.fpcalc_exe()
    assert str(e.value) == (f"Chromaprint's fpcalc not found (looked in: PATH ({tmp_path / 'nowhere'})). "
                            f"How to get it: {F.FPCALC_HOW}")
    monkeypatch.delenv("PATH")                              # which() then looks in os.defpath
    monkeypatch.setattr(F.shutil, "which", lambda name: None)
    with pytest.raises(MissingAsset) as e:
        F.fpcalc_exe()
    assert str(e.value).startswith("Chromaprint's fpcalc not found (looked in: PATH ()). ")


def _fake_fpcalc(monkeypatch, tmp_path, stdout: str, stderr: str = "", rc: int = 0) -> Path:
    log = tmp_path / "args.json"
    body = (f"import json, sys\nopen({str(log)!r}, 'w').write(json.dumps(sys.argv[1:]))\n"
            f"sys.stdout.write({stdout!r}); sys.stderr.write({stderr!r}); sys.exit({rc})\n")
    monkeypatch.setenv("CHORUSHEAD_FPCALC", str(_script(tmp_path / "fpcalc", body)))
    return log


def test_audio_fingerprint_arguments_and_uint32(monkeypatch, tmp_path):
    # exit 1 after a whole fingerprint (fpcalc 1.5.1 with FFmpeg 5) still counts
    log = _fake_fpcalc(monkeypatch, tmp_path, json.dumps({"duration": 3, "fingerprint": [-1, 5, -2147483648]}),
                       "Error decoding audio frame (End of file)", rc=1)
    fp = F.audio_fingerprint(tmp_path / "mix.wav", max_seconds=90.7)
    assert json.loads(log.read_text()) == ["-raw", "-json", "-length", "90", str(tmp_path / "mix.wav")]
    assert fp.dtype == np.uint32 and fp.tolist() == [4294967295, 5, 2147483648]
    F.audio_fingerprint(tmp_path / "mix.wav")                  # default: the first half hour
    assert json.loads(log.read_text())[3] == "1800"


@pytest.mark.parametrize("stdout", ["not json", json.dumps({"fingerprint": []}), json.dumps({"duration": 1}),
                                    json.dumps({"fingerprint": None})])
def test_audio_fingerprint_without_one_is_a_stage_error(monkeypatch, tmp_path, stdout):
    _fake_fpcalc(monkeypatch, tmp_path, stdout, "  bad\n  file   " + "x" * 400, rc=3)
    with pytest.raises(StageError) as e:
        F.audio_fingerprint(tmp_path / "dir" / "song.wav")
    assert str(e.value) == "fpcalc gave no fingerprint for song.wav (exit 3): " + ("bad file " + "x" * 400)[:300]


# ----------------------------------------------------------------------------- frame hashes
def _thumb(cells: dict[tuple[int, int], int]) -> np.ndarray:
    """A grey 8x9 RGB thumbnail: 0 except the given (row, col) -> value."""
    x = np.zeros((8, 9, 3), np.uint8)
    for (r, c), v in cells.items():
        x[r, c] = v
    return x


def test_frame_hashes_bits_order_and_contrast(monkeypatch):
    calls = []
    first = _thumb({(0, 1): 200})                 # bit 0 (the top bit): (0,1) brighter than (0,0)
    last = _thumb({(7, 8): 10})                   # bit 63: (7,8) brighter than (7,7); std 1.17: flat
    mid = _thumb({(3, 4): 60, (3, 5): 60})        # (3,4) > (3,3): bit 3*8+3 = 27; (3,5) == (3,4): no bit
    half = np.zeros((8, 9, 3), np.uint8)
    half[:4] = 8                                  # rows 0-3 at 8: no left-right difference: hash 0
    ramp = np.tile((np.arange(9, dtype=np.uint8) * 20)[None, :, None], (8, 1, 3))   # every bit set
    nine = np.zeros((8, 9, 3), np.uint8)
    nine[:4] = 9                                  # std 4.5: informative at 4.0, not at 5.0

    def fake_iter(path, **kw):
        calls.append((path, kw))
        yield np.stack([first, last])
        yield np.stack([mid, half])
        if kw.get("fps") == 5:
            yield np.stack([ramp, nine])

    monkeypatch.setattr(F.media, "iter_frames", fake_iter)
    grey_half = half.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    h, ok = F.frame_hashes("v.mp4", sample_fps=7, min_contrast=float(grey_half.std()))   # half: exactly at it
    assert calls[0][0] == "v.mp4" and calls[0][1]["fps"] == 7 and calls[0][1]["scale"] == (9, 8)
    assert h.dtype == np.uint64 and h.tolist() == [1 << 63, 1, 1 << (63 - 27), 0]
    assert ok.dtype == bool and ok.tolist() == [True, False, True, True]
    _, ok = F.frame_hashes("v.mp4", sample_fps=7, min_contrast=float(grey_half.std()) * 1.001)
    assert ok.tolist() == [True, False, True, False]
    c = calls[0][1].get("chunk", 32)
    assert isinstance(c, int) and c > 0            # a real chunk size for the decoder
    h, ok = F.frame_hashes("v.mp4")               # defaults: 5 fps, contrast 4.0
    assert calls[-1][1]["fps"] == 5 and ok.tolist()[:3] == [True, False, True] and ok.tolist()[4:] == [True, True]
    assert h.tolist()[4] == 2**64 - 1                       # 64 bits summed exactly (integer, not float)


def test_frame_hashes_of_no_frames(monkeypatch):
    monkeypatch.setattr(F.media, "iter_frames", lambda path, **kw: iter(()))
    h, ok = F.frame_hashes("v.mp4")
    assert h.dtype == np.uint64 and ok.dtype == bool and h.shape == ok.shape == (0,)


# ----------------------------------------------------------------------------- process
def _ctx(tmp_path, audio, width):
    ing = Record(item="v", stage="ingest", status="done", fingerprint="ing-fp",
                 outputs={"source": "/src/v.mp4", "n_frames": 30, "fps": 30, "width": width, "height": 8,
                          "duration": 1.0, "source_fps": 30.0, "audio_44k": audio})
    tmp = tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    return types.SimpleNamespace(upstream={"ingest": ing}, tmp=tmp, path=lambda rel: tmp_path / rel)


def test_process_writes_both_prints_with_counts(monkeypatch, tmp_path):
    seen = {}

    def fake_audio(path, max_seconds):
        seen["audio"] = (path, max_seconds)
        return np.array([1, 2, 3], np.uint32)

    def fake_frames(path, sample_fps, min_contrast):
        seen["frames"] = (path, sample_fps, min_contrast)
        return np.array([7, 8, 9, 10], np.uint64), np.array([True, False, False, False])

    monkeypatch.setattr(F, "audio_fingerprint", fake_audio)
    monkeypatch.setattr(F, "frame_hashes", fake_frames)
    p = F.Params(sample_fps=4, max_seconds=60.0, min_contrast=2.5)
    r = F.process(_ctx(tmp_path, "items/v/ingest/mix.wav", 16), p, None)
    assert seen == {"audio": (tmp_path / "items/v/ingest/mix.wav", 60.0), "frames": ("/src/v.mp4", 4, 2.5)}
    o, m = r.outputs, r.metrics
    assert (_get(o, "ingest_fingerprint"), _get(o, "audio"), _get(o, "frames"), _get(o, "sample_fps")) == \
        ("ing-fp", "audio.npz", "frames.npz", 4)
    assert (_get(m, "audio_items"), _get(m, "frames_hashed"), _get(m, "frames_flat")) == (3, 4, 3)
    assert AudioPrint.load(tmp_path / "tmp" / "audio.npz").fingerprint.tolist() == [1, 2, 3]
    fh = FrameHashes.load(tmp_path / "tmp" / "frames.npz", 4)
    assert fh.hashes.tolist() == [7, 8, 9, 10] and fh.informative.tolist() == [True, False, False, False]
    r = F.process(_ctx(tmp_path, None, 1), p, None)         # one pixel wide is still a picture
    assert _get(r.outputs, "frames") == "frames.npz" and _get(r.outputs, "audio") is None


def test_process_without_audio_or_picture(monkeypatch, tmp_path):
    monkeypatch.setattr(F, "audio_fingerprint", lambda *a: pytest.fail("no audio to fingerprint"))
    monkeypatch.setattr(F, "frame_hashes", lambda *a: pytest.fail("no picture to hash"))
    r = F.process(_ctx(tmp_path, None, 0), F.Params(), None)
    assert (_get(r.outputs, "audio"), _get(r.outputs, "frames"), _get(r.outputs, "sample_fps")) == (None, None, 5)
    assert (_get(r.metrics, "audio_items"), _get(r.metrics, "frames_hashed"), _get(r.metrics, "frames_flat")) == (0, 0, 0)
    assert not (tmp_path / "tmp" / "audio.npz").exists() and not (tmp_path / "tmp" / "frames.npz").exists()


def test_load_reads_what_process_wrote(tmp_path):
    d = tmp_path / "items" / "v" / "fingerprint"
    d.mkdir(parents=True)
    AudioPrint(fingerprint=np.array([5, 6], np.uint32)).save(d / "audio.npz")
    FrameHashes(hashes=np.array([1, 2, 3], np.uint64), informative=np.array([True, False, True]),
                sample_fps=np.asarray(4)).save(d / "frames.npz")
    rec = Record(item="v", stage="fingerprint", status="done", fingerprint="x",
                 outputs={"ingest_fingerprint": "i", "audio": "items/v/fingerprint/audio.npz",
                          "frames": "items/v/fingerprint/frames.npz", "sample_fps": 4})
    got = F.load(tmp_path, rec)
    assert sorted(got) == ["audio", "frames", "sample_fps"]
    assert got["audio"].tolist() == [5, 6] and got["sample_fps"] == 4 and type(got["sample_fps"]) is int
    assert got["frames"][0].tolist() == [1, 2, 3] and got["frames"][1].tolist() == [True, False, True]
    from chorushead.core.payloads import BadPayload
    rec.outputs = {**rec.outputs, "sample_fps": 5}          # the record and the file disagree
    with pytest.raises(BadPayload, match="is 4, its record says 5"):
        F.load(tmp_path, rec)
    rec.outputs = {"ingest_fingerprint": "i", "audio": None, "frames": None, "sample_fps": 4}
    assert F.load(tmp_path, rec) == {}


# ----------------------------------------------------------------------------- comparing
U = np.uint32


def test_popcount_counts_bits():
    assert F._popcount(np.array([0, 1, 0xFFFFFFFF, 0b1011], np.uint32)).tolist() == [0, 1, 32, 3]


def test_best_offset_finds_a_shift_with_its_error_and_count():
    a = np.array([0, 1, 2, 3, 4, 5, 6, 7], U)
    b = a[3:].copy()                               # b[j] = a[j + 3]: a[i] against b[i - 3]
    assert F._best_offset(a, b, 32, 2, 10) == (0.0, 3, 5)
    assert F._best_offset(b, a, 32, 2, 10) == (0.0, -3, 5)
    # 3 differing bits over 4 compared 8-bit items at offset 0
    c = np.array([1, 2, 4, 8], U)
    d = np.array([1, 3, 4, 15], U)                 # 2 ^ 3 = 1 bit, 8 ^ 15 = 3 bits
    assert F._best_offset(c, d, 8, 4, 0) == (4 / 32, 0, 4)


def test_best_offset_limits_and_ties():
    a = np.arange(10, dtype=U)
    b = a[4:].copy()                               # the match is at offset 4
    assert F._best_offset(a, b, 32, 6, 4) == (0.0, 4, 6)          # |offset| == max_offset is searched
    err, off, n = F._best_offset(a, b, 32, 6, 3)                   # beyond it: not found at 4
    assert off != 4 and err > 0
    assert F._best_offset(a, b, 32, 7, 10)[1] != 4                 # overlap 6 < min_overlap 7
    # b longer than a, matched at a negative offset at the edge: b[j] = a[j - 5] -> a[i] against b[i + 5]
    b2 = np.concatenate([np.array([99, 98, 97, 96, 95], U), a])
    assert F._best_offset(a, b2, 32, 10, 5) == (0.0, -5, 10)
    assert F._best_offset(a, b2, 32, 10, 4)[1] != -5
    # every offset equally bad: the first one kept, (1.0, 0, 0) when nothing is below 1.0
    z, o = np.zeros(4, U), np.full(4, 0xFFFFFFFF, U)
    assert F._best_offset(z, o, 32, 1, 3) == (1.0, 0, 0)
    half = np.full(4, 0xFFFF, U)
    assert F._best_offset(z, half, 32, 1, 3) == (0.5, -3, 1)     # the lowest offset of equal scores
    # no overlap long enough, or nothing to compare
    assert F._best_offset(z, o, 32, 5, 3) == (1.0, 0, 0)
    assert F._best_offset(np.zeros(0, U), o, 32, 1, 3) == (1.0, 0, 0)
    assert F._best_offset(o, np.zeros(0, U), 32, 1, 3) == (1.0, 0, 0)
    assert F._best_offset(np.zeros(0, U), o, 32, 0, 3) == (1.0, 0, 0)   # not a 0/0
    # min_overlap 0: only offsets that overlap are tried (else 0 items: 0/0)
    assert F._best_offset(np.array([1, 2], U), np.array([1, 2], U), 32, 0, 10) == (0.0, 0, 2)


def test_best_offset_counts_only_valid_items():
    a = np.array([0, 0, 0, 0, 0], U)
    b = np.array([0, 0xFF, 0, 0xFF, 0], U)        # items 1 and 3 differ by 8 bits
    va = np.array([True, True, True, True, True])
    vb = np.array([True, False, True, False, True])
    assert F._best_offset(a, b, 32, 3, 0) == (16 / (5 * 32), 0, 5)
    assert F._best_offset(a, b, 32, 3, 0, va, vb) == (0.0, 0, 3)          # n == min_overlap is enough
    assert F._best_offset(a, b, 32, 4, 0, va, vb) == (1.0, 0, 0)          # 3 valid < 4
    assert F._best_offset(a, b, 32, 3, 0, vb, None) == (0.0, 0, 3)        # valid_a alone counts too
    assert F._best_offset(b, a, 32, 3, 0, None, vb) == (0.0, 0, 3)        # valid_b alone counts too
    # shifted: a[i] against b[i - 1], validity of b taken at i - 1
    a2 = np.array([7, 0, 0xFF, 0, 0xFF], U)
    b2 = np.array([0, 0xFF, 0, 0xFF, 7], U)
    vb2 = np.array([True, True, True, True, False])
    assert F._best_offset(a2, b2, 32, 4, 1, None, vb2) == (0.0, 1, 4)


def test_audio_score_in_seconds_with_its_overlap_and_offset_limits():
    sub = F.SUB_PER_S
    assert sub == pytest.approx(8.0769, abs=1e-4)
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2**32, 200, dtype=np.uint64).astype(U)
    err, off = F.audio_score(a, a[16:].copy())
    assert err == 0.0 and off == pytest.approx(16 / sub)
    # min_overlap_s = 5 s -> int(40.38) = 40 items; max_offset_s = 2 s -> int(16.15) = 16
    assert F.audio_score(a[:40], a[:40].copy(), 5.0, 2.0)[0] == 0.0
    assert F.audio_score(a[:39], a[:39].copy(), 5.0, 2.0)[0] > 0.3
    assert F.audio_score(a, a[16:].copy(), 5.0, 2.0) == (0.0, pytest.approx(16 / sub))
    assert F.audio_score(a, a[17:].copy(), 5.0, 2.0)[0] > 0.3
    # a zero overlap still means one item
    assert F.audio_score(a[:1], a[:1].copy(), 0.0, 0.0) == (0.0, 0.0)
    # unrelated: about half the bits
    assert 0.45 < F.audio_score(a, rng.integers(0, 2**32, 200, dtype=np.uint64).astype(U))[0] < 0.55


def test_audio_score_defaults():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 2**32, 1000, dtype=np.uint64).astype(U)
    # default max offset 60 s = int(484.6) = 484 items
    b = a[484:].copy()
    assert F.audio_score(a, b)[0] == 0.0
    assert F.audio_score(a, a[485:].copy())[0] > 0.3
    # default min overlap 5 s = 40 items
    assert F.audio_score(a[:40], a[:40].copy())[0] == 0.0
    assert F.audio_score(a[:39], a[:39].copy())[0] == 1.0


def test_frames_score_in_bits_and_seconds_with_validity():
    h = np.array([0, 0xFF, 0, 0xFFFF, 0, 0, 0, 0], np.uint64)
    g = h.copy()
    g[1] ^= 0b111                                  # 3 bits off on frame 1
    ok = np.ones(8, bool)
    assert F.frames_score((h, ok), (g, ok), 2, 1.0, 1.0) == (3 / 8, 0.0)
    flat = ok.copy()
    flat[1] = False                                # frame 1 is flat in one of them: not compared
    assert F.frames_score((h, flat), (g, ok), 2, 1.0, 1.0) == (0.0, 0.0)
    assert F.frames_score((h, ok), (g, flat), 2, 1.0, 1.0) == (0.0, 0.0)
    # shift by 2 frames at 4 fps = 0.5 s; min overlap 1.5 s * 4 = 6 frames, max offset 0.5 s * 4 = 2
    assert F.frames_score((h, ok), (h[2:].copy(), ok[2:].copy()), 4, 1.5, 0.5) == (0.0, 0.5)
    assert F.frames_score((h, ok), (h[2:].copy(), ok[2:].copy()), 4, 1.75, 0.5)[0] > 0
    assert F.frames_score((h, ok), (h[2:].copy(), ok[2:].copy()), 4, 1.5, 0.25)[0] > 0
    assert F.frames_score((h[:1], ok[:1]), (h[:1].copy(), ok[:1].copy()), 4, 0.0, 0.0) == (0.0, 0.0)


def test_frames_score_defaults():
    rng = np.random.default_rng(2)
    h = rng.integers(0, 2**63, 400, dtype=np.uint64)
    ok = np.ones(400, bool)
    # at 2 fps: min overlap 5 s = 10 frames, max offset 60 s = 120 frames
    assert F.frames_score((h, ok), (h[120:].copy(), ok[120:]), 2) == (0.0, 60.0)
    assert F.frames_score((h, ok), (h[121:].copy(), ok[121:]), 2)[0] > 20
    assert F.frames_score((h[:10], ok[:10]), (h[:10].copy(), ok[:10]), 2) == (0.0, 0.0)
    assert F.frames_score((h[:9], ok[:9]), (h[:9].copy(), ok[:9]), 2) == (64.0, 0.0)


# ----------------------------------------------------------------------------- groups
T = F.Thresholds(audio_max_ber=0.25, frames_max_hamming=4.0, min_overlap_s=1.0, max_offset_s=2.0)
RNG = np.random.default_rng(3)


def _audio(n=40):
    return RNG.integers(0, 2**32, n, dtype=np.uint64).astype(U)


def _frames(n=20):
    return RNG.integers(0, 2**63, n, dtype=np.uint64), np.ones(n, bool)


def _flip(x, bits_per_item):
    """x with the lowest ``bits_per_item`` bits of every item flipped."""
    return x ^ x.dtype.type((1 << bits_per_item) - 1)


def test_groups_by_audio_at_the_threshold_and_not_above():
    a = _audio()
    prints = {"v2": {"audio": a}, "v1": {"audio": _flip(a, 8)},            # BER 8/32 = 0.25: the threshold
              "v3": {"audio": _flip(a, 9)}, "v4": {"audio": _audio()}}
    groups = F.duplicate_groups({k: prints[k] for k in ("v2", "v1", "v4")}, T)
    assert groups == [{"members": ["v1", "v2"], "links": [{"a": "v1", "b": "v2", "by": "audio", "score": 0.25}]}]
    # v3 is 9 bits from v2 (0.281) but 1 bit from v1 (0.031): linked through v1
    groups = F.duplicate_groups(prints, T)
    assert groups == [{"members": ["v1", "v2", "v3"],
                       "links": [{"a": "v1", "b": "v2", "by": "audio", "score": 0.25},
                                 {"a": "v1", "b": "v3", "by": "audio", "score": 0.0312}]}]
    assert F.duplicate_groups({"v2": prints["v2"], "v3": prints["v3"]}, T) == []


def test_groups_by_frames_when_audio_does_not_link():
    fa = _frames()
    f_near = (_flip(fa[0], 4), fa[1])                       # 4 bits of 64 per frame: the threshold
    f_far = (_flip(fa[0], 5), fa[1])
    prints = {
        "a": {"audio": _audio(), "frames": fa, "sample_fps": 5},
        "b": {"audio": _audio(), "frames": f_near, "sample_fps": 5},     # other audio, same picture
        "c": {"frames": f_far, "sample_fps": 5},                          # 5 bits from a, 1 from b
        "d": {"frames": fa, "sample_fps": 4},                             # another rate: not compared
    }
    groups = F.duplicate_groups(prints, T)
    assert groups == [{"members": ["a", "b", "c"],
                       "links": [{"a": "a", "b": "b", "by": "frames", "score": 4.0},
                                 {"a": "b", "b": "c", "by": "frames", "score": 1.0}]}]


def test_audio_link_comes_first_and_frames_need_both_sides():
    a, fa = _audio(), _frames()
    prints = {"p": {"audio": a, "frames": fa, "sample_fps": 5},
              "q": {"audio": a.copy(), "frames": fa, "sample_fps": 5},   # both match: audio is named
              "r": {"audio": _audio(), "sample_fps": 5},                 # no frames, other audio
              "s": {"frames": _frames(), "sample_fps": 5}}
    assert F.duplicate_groups(prints, T) == [
        {"members": ["p", "q"], "links": [{"a": "p", "b": "q", "by": "audio", "score": 0.0}]}]
    # audio on one side only: the frames decide
    prints = {"p": {"audio": a, "frames": fa, "sample_fps": 5}, "q": {"frames": fa, "sample_fps": 5}}
    assert F.duplicate_groups(prints, T)[0]["links"] == [{"a": "p", "b": "q", "by": "frames", "score": 0.0}]
    prints = {"p": {"frames": fa, "sample_fps": 5}, "q": {"audio": a, "frames": fa, "sample_fps": 5}}
    assert F.duplicate_groups(prints, T)[0]["links"] == [{"a": "p", "b": "q", "by": "frames", "score": 0.0}]


def test_groups_are_separate_sorted_and_keep_their_own_links():
    x, y, z = _audio(), _audio(), _audio()
    prints = {"m2": {"audio": y}, "b1": {"audio": x}, "m1": {"audio": y.copy()}, "a9": {"audio": z},
              "z0": {"audio": x.copy()}, "c5": {"audio": y.copy()}}
    groups = F.duplicate_groups(prints, T)
    assert [g["members"] for g in groups] == [["b1", "z0"], ["c5", "m1", "m2"]]
    assert groups[0]["links"] == [{"a": "b1", "b": "z0", "by": "audio", "score": 0.0}]
    assert [(lk["a"], lk["b"]) for lk in groups[1]["links"]] == [("c5", "m1"), ("c5", "m2"), ("m1", "m2")]
    assert F.duplicate_groups({}, T) == [] and F.duplicate_groups({"one": {"audio": x}}, T) == []


def test_groups_use_the_thresholds_overlap_and_offset():
    a = _audio(60)
    b = a[20:].copy()                     # 20 items = 2.48 s later
    t = F.Thresholds(audio_max_ber=0.1, frames_max_hamming=1.0, min_overlap_s=1.0, max_offset_s=2.0)
    assert F.duplicate_groups({"a": {"audio": a}, "b": {"audio": b}}, t) == []
    t.max_offset_s = 2.5
    assert F.duplicate_groups({"a": {"audio": a}, "b": {"audio": b}}, t)[0]["members"] == ["a", "b"]
    t.min_overlap_s = 5.0                 # 40 items overlap: enough; 6 s would need 48
    assert F.duplicate_groups({"a": {"audio": a}, "b": {"audio": b}}, t)[0]["members"] == ["a", "b"]
    t.min_overlap_s = 6.0
    assert F.duplicate_groups({"a": {"audio": a}, "b": {"audio": b}}, t) == []
    # the same for frames, at 5 fps: 10 frames later = 2 s
    fa = _frames(40)
    fb = (fa[0][10:].copy(), fa[1][10:].copy())
    t = F.Thresholds(audio_max_ber=0.1, frames_max_hamming=1.0, min_overlap_s=1.0, max_offset_s=1.8)
    pr = {"a": {"frames": fa, "sample_fps": 5}, "b": {"frames": fb, "sample_fps": 5}}
    assert F.duplicate_groups(pr, t) == []
    t.max_offset_s = 2.0
    assert F.duplicate_groups(pr, t)[0]["links"] == [{"a": "a", "b": "b", "by": "frames", "score": 0.0}]
    t.min_overlap_s = 6.2                 # 30 frames overlap, 31 needed
    assert F.duplicate_groups(pr, t) == []


@pytest.fixture
def two_seconds():
    """Fail (not hang) when the grouping loops."""
    import signal

    def boom(*_):
        raise TimeoutError("duplicate_groups did not finish in 2 s")
    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(2)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def test_long_chains_join_through_any_member(two_seconds):
    base = _audio()
    # e0 .. e5: each 1 bit from the previous; e0 and e5 are 5 bits (0.156) apart: all linked anyway.
    # Added in an order where union-find must follow parents more than one step.
    prints = {f"e{i}": {"audio": _flip(base, i)} for i in range(6)}
    prints["f0"] = {"audio": _audio()}
    prints["f1"] = {"audio": _flip(prints["f0"]["audio"], 1)}
    t = F.Thresholds(audio_max_ber=1.5 / 32, frames_max_hamming=0.0, min_overlap_s=1.0, max_offset_s=0.0)
    groups = F.duplicate_groups(prints, t)
    assert [g["members"] for g in groups] == [[f"e{i}" for i in range(6)], ["f0", "f1"]]
    assert [(lk["a"], lk["b"]) for lk in groups[0]["links"]] == [(f"e{i}", f"e{i + 1}") for i in range(5)]
