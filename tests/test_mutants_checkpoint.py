"""pachorus.checkpoint: exact values and messages, written to kill the mutants that survived
``scripts/mutation.sh checkpoint`` (see docs/mutation-survivors.md). No training: small dicts only."""
from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from pachorus import checkpoint as C
from pachorus.checkpoint import (CheckpointError, check_same_data, data_info, load_checkpoint, rng_state,
                                 save_checkpoint, set_rng_state)

META = {"fps": "25", "sr": 16000.0, "window": 150, "fit_backend": "emoca", "extra": 1}


def test_data_info_values():
    assert data_info(META) == {"fps": 25, "sr": 16000, "window": 150, "fit_backend": "emoca",
                               "coeff_groups": ["exp", "jaw", "pose"]}
    info = data_info({**META, "coeff_groups": ["pose", "jaw"]})
    assert info["coeff_groups"] == ["jaw", "pose"]            # in the canonical order
    assert type(info["fps"]) is int and type(info["sr"]) is int and type(info["window"]) is int
    assert data_info({"fps": 30, "sr": 8000, "window": 60})["fit_backend"] is None
    assert data_info({**META, "coeff_groups": []})["coeff_groups"] == ["exp", "jaw", "pose"]   # empty = all


def test_data_info_refuses_unknown_groups():
    with pytest.raises(ValueError) as e:
        data_info({**META, "coeff_groups": ["jaw", "neck", "eyes"]})
    assert str(e.value) == "LMDB meta lists unknown coefficient groups ['neck', 'eyes']; known: ['exp', 'jaw', 'pose']"


def test_check_same_data_lists_every_difference_in_one_line():
    trained = {"fps": 25, "sr": 16000, "window": 150, "fit_backend": "emoca", "coeff_groups": ["jaw"]}
    assert check_same_data(trained, {**trained, "window": 60}, "a.pt", "b.lmdb") is None   # window may differ
    with pytest.raises(ValueError) as e:
        check_same_data(trained, {**trained, "fps": 30, "coeff_groups": ["exp", "jaw"]}, "run/model.pt", "x.lmdb")
    assert str(e.value) == ("run/model.pt does not match x.lmdb (fps: trained on 25, this LMDB has 30; "
                            "coeff_groups: trained on ['jaw'], this LMDB has ['exp', 'jaw']); use an LMDB built "
                            "the same way or train a new model on this one")
    with pytest.raises(ValueError, match=r"\(sr: trained on 16000, this LMDB has None\)"):
        check_same_data(trained, {k: v for k, v in trained.items() if k != "sr"}, "a.pt", "b.lmdb")
    with pytest.raises(ValueError, match=r"\(fit_backend: trained on 'emoca', this LMDB has 'synthetic'\)"):
        check_same_data(trained, {**trained, "fit_backend": "synthetic"}, "a.pt", "b.lmdb")


def test_save_writes_the_file_whole_and_leaves_no_temp(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(C.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    ck = {"model": {"w": torch.arange(4.0)}, "model_config": {"d": 8}, "step": 3}
    save_checkpoint(ck, tmp_path / "last.pt")
    assert len(synced) == 1 and isinstance(synced[0], int)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    back = torch.load(tmp_path / "last.pt", weights_only=True)
    assert back["step"] == 3 and back["model_config"] == {"d": 8} and torch.equal(back["model"]["w"], torch.arange(4.0))
    save_checkpoint({**ck, "step": 4}, str(tmp_path / "last.pt"))        # a str path, over an older file
    assert torch.load(tmp_path / "last.pt", weights_only=True)["step"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_save_writes_through_a_temp_file_next_to_the_target(tmp_path, monkeypatch):
    replaced = []
    real = os.replace
    monkeypatch.setattr(C.os, "replace", lambda a, b: (replaced.append((str(a), str(b))), real(a, b))[1])
    save_checkpoint({"model": {}, "model_config": {}}, tmp_path / "best.pt")
    assert replaced == [(str(tmp_path / f".best.pt.tmp{os.getpid()}"), str(tmp_path / "best.pt"))]


def test_load_round_trip_and_its_arguments(tmp_path, monkeypatch):
    ck = {"model": {"w": torch.ones(2)}, "model_config": {"d": 8}}
    save_checkpoint(ck, tmp_path / "m.pt")
    seen = []
    real = torch.load
    monkeypatch.setattr(C.torch, "load", lambda *a, **k: (seen.append((a, k)), real(*a, **k))[1])
    out = load_checkpoint(str(tmp_path / "m.pt"))
    assert torch.equal(out["model"]["w"], torch.ones(2)) and out["model_config"] == {"d": 8}
    out = load_checkpoint(tmp_path / "m.pt", map_location="meta")
    assert out["model"]["w"].device.type == "meta"
    assert [k for _, k in seen] == [{"map_location": "cpu", "weights_only": True},
                                    {"map_location": "meta", "weights_only": True}]
    assert [a for a, _ in seen] == [(tmp_path / "m.pt",)] * 2


def test_load_refusals_say_why(tmp_path, monkeypatch):
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path / "nope.pt")
    assert str(e.value) == (f"checkpoint not found: {tmp_path / 'nope.pt'} "
                            "(a run folder holds model.pt, best.pt and last.pt)")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path)                               # a folder is not a checkpoint file

    evil = tmp_path / "evil.pt"
    torch.save({"model": {}, "model_config": {}, "evil": os.system}, evil)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(evil)
    assert str(e.value) == (f"{evil} contains non-data objects ({os.system.__module__}.system); refusing to load "
                            "it: a pachorus checkpoint holds only tensors and plain types")
    assert e.value.__cause__ is None and e.value.__suppress_context__

    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path / "empty.pt")
    assert str(e.value) == f"{tmp_path / 'empty.pt'} is not a readable torch checkpoint (EOFError: empty)"

    for name, ok in (("list.pt", [1, 2]), ("nomodel.pt", {"model_config": {}}), ("noconfig.pt", {"model": {}})):
        torch.save(ok, tmp_path / name)
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(tmp_path / name)
        assert str(e.value) == f"{tmp_path / name} is not a pachorus checkpoint (no 'model'/'model_config' entries)"


@pytest.mark.parametrize("error", [RuntimeError("first line\nsecond line"), OSError("disk\ngone")])
def test_load_keeps_the_first_line_of_a_read_error(tmp_path, monkeypatch, error):
    (tmp_path / "m.pt").write_bytes(b"x")

    def fail(*a, **k):
        raise error
    monkeypatch.setattr(C.torch, "load", fail)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path / "m.pt")
    first = str(error).splitlines()[0]
    assert str(e.value) == f"{tmp_path / 'm.pt'} is not a readable torch checkpoint ({type(error).__name__}: {first})"
    assert e.value.__suppress_context__


def test_rng_state_is_plain_data_and_restores_every_generator(tmp_path):
    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)
    random.gauss(0, 1)           # python keeps the second gaussian of a pair: gauss_next is set
    np.random.standard_normal()  # numpy too: has_gauss = 1 with a cached value
    s = rng_state()
    n = s["numpy"]
    assert n["name"] == "MT19937" and n["keys"].dtype == torch.int64 and n["keys"].shape == (624,)
    assert type(n["pos"]) is int and n["has_gauss"] == 1 and type(n["has_gauss"]) is int
    assert type(n["cached_gaussian"]) is float and n["cached_gaussian"] != 0.0
    p = s["python"]
    assert p["version"] == 3 and len(p["state"]) == 625 and all(type(x) is int for x in p["state"][:5])
    assert type(p["gauss_next"]) is float
    assert s["cuda"] is None or isinstance(s["cuda"], list)
    assert torch.equal(s["torch"], torch.get_rng_state())
    # it goes through a weights-only save and load
    save_checkpoint({"model": {}, "model_config": {}, "rng": s}, tmp_path / "r.pt")
    s2 = load_checkpoint(tmp_path / "r.pt")["rng"]
    want = (random.gauss(0, 1), random.random(), np.random.standard_normal(), np.random.random(), torch.rand(3))
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    set_rng_state(s2)
    got = (random.gauss(0, 1), random.random(), np.random.standard_normal(), np.random.random(), torch.rand(3))
    assert got[:4] == want[:4] and torch.equal(got[4], want[4])


def test_an_unpickling_error_without_a_global_name_says_code(tmp_path, monkeypatch):
    import pickle
    (tmp_path / "m.pt").write_bytes(b"x")

    def fail(*a, **k):
        raise pickle.UnpicklingError("Weights only load failed: unsupported operand")
    monkeypatch.setattr(C.torch, "load", fail)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path / "m.pt")
    assert str(e.value) == (f"{tmp_path / 'm.pt'} contains non-data objects (code); refusing to load it: "
                            "a pachorus checkpoint holds only tensors and plain types")
