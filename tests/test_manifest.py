import os

import pytest

from chorushead.core.manifest import Manifest, Record, fingerprint, file_fingerprint, write_atomic
from conftest import validate_record


def rec(item, status="done", fp="0123456789abcdef", **kw):
    return Record(item=item, stage="ingest", status=status, fingerprint=fp, **kw)


def test_append_and_latest_wins(tmp_path):
    m = Manifest(tmp_path, "ingest")
    m.append(rec("a", status="failed", error_class="BadInput", message="broken"))
    m.append(rec("b"))
    m.append(rec("a", outputs={"x": 1}))
    latest = m.latest()
    assert set(latest) == {"a", "b"}
    assert latest["a"].status == "done" and latest["a"].outputs == {"x": 1}
    assert len(m.read_all()) == 3


def test_torn_last_line_is_ignored_and_next_append_still_parses(tmp_path):
    m = Manifest(tmp_path, "ingest")
    m.append(rec("a"))
    with open(m.path, "ab") as f:  # a crash in the middle of a write
        f.write(b'{"item": "b", "stage": "ingest", "sta')
    assert [r.item for r in m.read_all()] == ["a"]
    m.append(rec("c"))
    assert [r.item for r in m.read_all()] == ["a", "c"]


def test_records_validate_against_schema():
    validate_record(rec("a", outputs={"source": "/x.mp4", "n_frames": 10, "fps": 30, "width": 2, "height": 2,
                                      "duration": 1.0, "source_fps": 25.0},
                        metrics={"seconds_of_video": 1.0, "frames": 10, "resolution": "2x2",
                                 "source_fps": 25.0}).to_dict())
    validate_record(rec("a", status="failed", error_class="BadInput", message="no video stream").to_dict())
    stems = {"vocals": "items/a/ingest/stems/vocals.wav", "accompaniment": "items/a/ingest/stems/accompaniment.wav"}
    validate_record(Record(item="a", stage="bgm_split", status="skipped", fingerprint="0" * 16,
                           reason="stems supplied", outputs=stems).to_dict())   # skipped: outputs, no metrics
    import jsonschema
    with pytest.raises(jsonschema.ValidationError):
        validate_record(rec("a", status="failed").to_dict())  # a failure must say why
    with pytest.raises(jsonschema.ValidationError):
        validate_record(rec("a", outputs={"n_frames": 0}).to_dict())  # ingest outputs incomplete
    with pytest.raises(jsonschema.ValidationError):                     # a done record has its metrics
        validate_record(rec("a", outputs={"source": "/x.mp4", "n_frames": 10, "fps": 30, "width": 2, "height": 2,
                                          "duration": 1.0, "source_fps": 25.0}).to_dict())


def test_unknown_status_refused():
    with pytest.raises(ValueError):
        rec("a", status="maybe")


def test_fingerprints(tmp_path):
    assert fingerprint({"a": 1, "b": 2}) == fingerprint({"b": 2, "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})
    f = tmp_path / "v.bin"
    write_atomic(f, os.urandom(3 << 20))
    fp1 = file_fingerprint(f)
    with open(f, "r+b") as h:  # change a byte in the tail
        h.seek(-10, 2)
        h.write(b"xxxxxxxxxx")
    assert file_fingerprint(f) != fp1
    assert not list(tmp_path.glob(".*tmp*"))  # no temp files left behind
