"""Manifests, fingerprints and atomic writes (chorushead.core.manifest): cases mutation testing showed were
not pinned (docs/mutation-survivors.md). Values are stated by hand."""
import json
import os
from pathlib import Path

import numpy as np
import pytest

from chorushead.core import manifest as MF
from chorushead.core.manifest import Manifest, Record


def rec(item="a", **kw):
    return Record(item=item, stage="crop", status=kw.pop("status", "done"), fingerprint="f" * 16, **kw)


def test_unknown_status_names_the_allowed_ones():
    with pytest.raises(ValueError, match=r"status must be one of .*got 'ok'"):
        rec(status="ok")


@pytest.mark.parametrize("cls, message, limit, line", [
    ("ValueError", "  first line\nsecond line\n", None, "ValueError: first line"),
    (None, "boom", None, "error: boom"),
    ("OSError", None, None, "OSError: "),
    (None, "", None, "error: "),
    ("ValueError", "abcdefghij", 22, "ValueError: abcdefghij"),      # exactly the limit: whole
    ("ValueError", "abcdefghij", 21, "ValueError: abcdef..."),       # one over: cut to 21 with "..."
    ("ValueError", "abcdefghij", 10, "ValueEr..."),
])
def test_failure_line(cls, message, limit, line):
    got = rec(status="failed", error_class=cls, message=message).failure_line(limit)
    assert got == line
    assert limit is None or len(got) <= limit


def test_fingerprint_is_16_hex_and_takes_paths_as_their_text():
    fp = MF.fingerprint(Path("videos/a.mp4"), 3)
    assert fp == MF.fingerprint("videos/a.mp4", 3)
    assert len(fp) == 16 and int(fp, 16) >= 0


def _same_mtime(path, ns):
    os.utime(path, ns=(ns, ns))


def test_file_fingerprint_samples_the_first_and_last_chunk_only(tmp_path):
    p = tmp_path / "v.bin"
    data = bytearray(os.urandom(64))
    ns = 1_700_000_000_000_000_000

    def fp(b):
        p.write_bytes(bytes(b))
        _same_mtime(p, ns)
        return MF.file_fingerprint(p, sample=16)
    base = fp(data)
    assert len(base) == 16
    middle = bytearray(data)
    middle[32] ^= 0xFF                        # outside the first and last 16 bytes: not seen (by design)
    assert fp(middle) == base
    last = bytearray(data)
    last[-1] ^= 0xFF
    assert fp(last) != base
    first = bytearray(data)
    first[0] ^= 0xFF
    assert fp(first) != base
    assert fp(data) == base


def test_manifest_path_and_stage(tmp_path):
    m = Manifest(tmp_path, "crop")
    assert m.path == tmp_path / "manifests" / "crop.jsonl" and m.stage == "crop"


def test_append_creates_missing_folders_and_a_0644_file(tmp_path):
    old = os.umask(0o022)
    try:
        m = Manifest(tmp_path / "new" / "out", "crop")
        m.append(rec())
    finally:
        os.umask(old)
    assert [r.item for r in m.read_all()] == ["a"]
    assert m.path.stat().st_mode & 0o777 == 0o644


def test_append_writes_one_sorted_utf8_line_and_nothing_else(tmp_path):
    m = Manifest(tmp_path, "crop")
    m.append(rec("a", message="été"))
    first = m.path.read_bytes()
    assert first.endswith(b"\n") and first.count(b"\n") == 1
    assert "été".encode() in first                       # not \u00e9
    d = json.loads(first)
    assert list(d) == sorted(d)
    m.append(rec("b"))
    both = m.path.read_bytes()
    assert both.startswith(first) and both.count(b"\n") == 2 and b"\n\n" not in both


def test_append_after_a_one_byte_torn_fragment(tmp_path):
    m = Manifest(tmp_path, "crop")
    m.path.parent.mkdir(parents=True)
    m.path.write_bytes(b"{")
    m.append(rec("a"))
    assert m.path.read_bytes().startswith(b"{\n")
    assert [r.item for r in m.read_all()] == ["a"]


def test_a_bad_line_in_the_middle_is_skipped_and_reading_goes_on(tmp_path):
    m = Manifest(tmp_path, "crop")
    m.append(rec("a"))
    with open(m.path, "ab") as f:
        f.write(b'{"not": "a record"}\n\n   \nnot json\n')     # blank lines too
    m.append(rec("b"))
    assert [r.item for r in m.read_all()] == ["a", "b"]


def test_write_atomic_creates_missing_folders_and_leaves_no_temp(tmp_path):
    p = tmp_path / "x" / "y" / "f.bin"
    MF.write_atomic(p, b"abc")
    assert p.read_bytes() == b"abc" and sorted(os.listdir(p.parent)) == ["f.bin"]


def test_write_json_atomic_text_and_numpy_values(tmp_path):
    p = tmp_path / "d" / "f.json"
    MF.write_json_atomic(p, {"b": np.float32(1.5), "a": np.arange(2)})
    assert p.read_text() == '{\n "a": [\n  0,\n  1\n ],\n "b": 1.5\n}'
    with pytest.raises(TypeError, match="class 'object'"):
        MF.write_json_atomic(tmp_path / "g.json", {"x": object()})
    assert not (tmp_path / "g.json").exists()


def test_iter_records_reads_each_stage(tmp_path):
    Manifest(tmp_path, "crop").append(rec("a"))
    Manifest(tmp_path, "vad").append(Record(item="b", stage="vad", status="skipped", fingerprint="x"))
    got = MF.iter_records(tmp_path, ["crop", "vad", "pack"])
    assert {s: sorted(v) for s, v in got.items()} == {"crop": ["a"], "vad": ["b"], "pack": []}
