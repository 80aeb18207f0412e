"""Values of the small ground-floor modules (core/origin.py, core/errors.py, core/device.py) that
mutation testing showed were not pinned (docs/mutation-survivors.md, `scripts/mutation.sh core_small`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from chorushead.core import origin
from chorushead.core.device import pick_device
from chorushead.core.errors import MissingAsset, StageError
from chorushead.core.origin import FETCH_MANIFEST, FetchRecord


def _rec(url: str, status: str = "done", **kw) -> FetchRecord:
    return FetchRecord(url=url, status=status, **kw)


# ----------------------------------------------------------------------------- origin
def test_append_writes_one_sorted_utf8_line_and_mends_a_torn_end(tmp_path):
    old = os.umask(0o022)
    try:
        origin.append(tmp_path, _rec("u1", title="Ça chante", at=1.0))
    finally:
        os.umask(old)
    path = tmp_path / FETCH_MANIFEST
    assert path.stat().st_mode & 0o777 == 0o644
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n") and text.count("\n") == 1
    assert "Ça chante" in text                          # raw UTF-8, not \u escapes
    keys = list(json.loads(text))
    assert keys == sorted(keys) and keys[0] == "at"
    with open(path, "ab") as f:                          # a crash in the middle of the next line
        f.write(b'{"url": "u2", "sta')
    origin.append(tmp_path, _rec("u3", at=3.0))
    lines = path.read_text().split("\n")
    assert lines[1] == '{"url": "u2", "sta' and json.loads(lines[2])["url"] == "u3" and lines[3] == ""
    assert sorted(origin.read(tmp_path)) == ["u1", "u3"]
    origin.append(tmp_path, _rec("u4", at=4.0))          # after a whole line: no blank line between
    assert path.read_text().split("\n")[2:] == [lines[2], json.dumps(origin.asdict(_rec("u4", at=4.0)),
                                                                      sort_keys=True), ""]


def test_read_takes_the_newest_line_per_url_and_skips_bad_ones(tmp_path):
    assert origin.read(tmp_path) == {}
    lines = [json.dumps({"url": "a", "status": "failed", "reason": "r", "at": 1}), "",
             "not json", json.dumps(["a list"]), json.dumps({"status": "done"}),   # no url: TypeError
             json.dumps({"url": "b", "status": "done", "at": 2, "newer_field": 1}),
             json.dumps({"url": "a", "status": "done", "file": "a.mp4", "at": 3}), "   "]
    (tmp_path / FETCH_MANIFEST).write_text("\n".join(lines) + "\n")
    got = origin.read(tmp_path)
    assert sorted(got) == ["a", "b"]
    assert (got["a"].status, got["a"].file, got["a"].at) == ("done", "a.mp4", 3)
    assert got["b"] == _rec("b", at=2)


def test_origins_maps_done_files_under_every_fetch_folder(tmp_path):
    (tmp_path / "x" / "deep").mkdir(parents=True)
    origin.append(tmp_path, _rec("u1", file="one.mp4", title="T", uploader="U", license="cc", duration=7.5,
                                 extractor="generic", yt_dlp="2025.1", bytes=10, reason=None, at=1))
    origin.append(tmp_path, _rec("u2", status="failed", file="two.mp4", reason="404"))
    origin.append(tmp_path, _rec("u3", file=None))
    origin.append(tmp_path / "x" / "deep", _rec("u4", file="../four.mp4"))
    got = origin.origins(tmp_path)
    assert set(got) == {tmp_path / "one.mp4", tmp_path / "x" / "four.mp4"}
    assert got[tmp_path / "one.mp4"] == {"url": "u1", "title": "T", "uploader": "U", "license": "cc",
                                         "duration": 7.5, "extractor": "generic", "yt_dlp": "2025.1"}
    assert got[tmp_path / "x" / "four.mp4"]["url"] == "u4"


def test_from_dict_ignores_fields_of_newer_versions():
    r = FetchRecord.from_dict({"url": "u", "status": "done", "bytes": 3, "from_the_future": True})
    assert r == FetchRecord("u", "done", bytes=3)


# ----------------------------------------------------------------------------- errors
def test_missing_asset_says_what_where_and_how():
    e = MissingAsset("FLAME model", "/a/generic_model.pkl", "register at flame.is.tue.mpg.de")
    assert isinstance(e, StageError)
    assert str(e) == ("FLAME model not found (looked in: /a/generic_model.pkl). "
                      "How to get it: register at flame.is.tue.mpg.de")
    assert (e.what, e.looked, e.how) == ("FLAME model", ["/a/generic_model.pkl"], "register at flame.is.tue.mpg.de")
    e = MissingAsset("EMOCA", [Path("/x"), "/y"], "see README")
    assert str(e) == "EMOCA not found (looked in: /x, /y). How to get it: see README"
    assert e.looked == [Path("/x"), "/y"]


# ----------------------------------------------------------------------------- device
def test_pick_device_auto_and_explicit(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device() == "cpu" and pick_device("auto") == "cpu"
    assert pick_device("cpu") == "cpu" and pick_device("mps") == "mps"
    with pytest.raises(StageError) as e:
        pick_device("cuda:1")
    assert str(e.value) == ("--device cuda:1 requested but CUDA is not available (torch sees no GPU); "
                            "use --device auto or cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("auto") == "cuda" and pick_device("cuda:1") == "cuda:1" and pick_device("cpu") == "cpu"
