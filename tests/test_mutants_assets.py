"""Tests that kill the mutants of chorushead/core/assets.py that survived the fast tests
(docs/mutation-survivors.md). Every lookup runs with the asset variables cleared and CHORUSHEAD_HOME
(or XDG_DATA_HOME, or HOME) pointed into tmp_path, so each expected path is written out by hand; the
identities are checked against core.manifest.file_fingerprint on files made here; the script entry
point (`python chorushead/core/assets.py ...`) is called in-process through _main."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from chorushead.core import assets as A
from chorushead.core.manifest import file_fingerprint

VARS = ("CHORUSHEAD_HOME", "XDG_DATA_HOME", "CHORUSHEAD_SPLEETER_PYTHON", "CHORUSHEAD_LANDMARKS_PYTHON",
        "MODEL_PATH", "CHORUSHEAD_EMOCA_MODELS", "MODELSCOPE_CACHE")


@pytest.fixture
def env(monkeypatch, tmp_path):
    """No asset variable set; HOME is tmp_path/user (so ~ and Path.home() are known)."""
    for v in VARS:
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    return monkeypatch


# ----------------------------------------------------------------------------- the data folder
def test_home_order_and_forms(env, tmp_path):
    user = tmp_path / "user"
    assert A.home() == user / ".local/share/chorushead"
    env.setenv("XDG_DATA_HOME", "~/xdg")                              # expanded
    assert A.home() == user / "xdg/chorushead"
    env.chdir(tmp_path)
    env.setenv("XDG_DATA_HOME", "rel")                                # made absolute (not left relative)
    assert A.home() == tmp_path / "rel/chorushead"
    env.setenv(A.HOME_VAR, "")                                         # empty: as if unset
    assert A.home() == tmp_path / "rel/chorushead"
    env.setenv(A.HOME_VAR, "~/h")                                      # wins over XDG, used as it is
    assert A.home() == user / "h"
    env.setenv(A.HOME_VAR, "data")
    assert A.home() == tmp_path / "data" and A.home().is_absolute()
    assert A.HOME_VAR == "CHORUSHEAD_HOME"


def test_kind_is_frozen_with_empty_defaults():
    k = A.Kind("E", "in/home", "in/checkout")
    assert (k.suffix, k.description) == ("", "")
    with pytest.raises(dataclasses.FrozenInstanceError):
        k.env = "F"


def test_defaults_of_every_kind(env, tmp_path):
    env.setenv(A.HOME_VAR, str(tmp_path / "h"))
    h, c, user = tmp_path / "h", A.CHECKOUT, tmp_path / "user"
    assert {k: A.defaults(k) for k in A.KINDS} == {
        "spleeter_python": [h / "envs/spleeter/bin/python", c / "envs/spleeter/bin/python"],
        "landmarks_python": [h / "envs/landmarks/bin/python", c / "envs/landmarks/bin/python"],
        "spleeter_models": [h / "models/spleeter", c / "pretrained_models"],
        "emoca_models": [h / "models/EMOCA", c / "assets/EMOCA/models"],
        "modelscope_cache": [h / "models/modelscope", user / ".cache/modelscope/hub"],
    }
    assert A.CHECKOUT == Path(A.__file__).resolve().parents[2]


def test_candidates_parameter_then_variable_then_defaults(env, tmp_path):
    env.setenv(A.HOME_VAR, str(tmp_path / "h"))
    user = tmp_path / "user"
    assert A.candidates("emoca_models") == A.defaults("emoca_models")
    env.setenv("CHORUSHEAD_EMOCA_MODELS", "~/emoca")                   # the variable alone, expanded
    assert A.candidates("emoca_models") == [user / "emoca"]
    assert A.candidates("emoca_models", "~/param") == [user / "param"]    # the parameter alone, expanded
    env.setenv("CHORUSHEAD_EMOCA_MODELS", "")                          # empty variable: the defaults
    assert A.candidates("emoca_models") == A.defaults("emoca_models")
    with pytest.raises(KeyError):
        A.candidates("nothing")


def test_find_and_resolve(env, tmp_path):
    h = tmp_path / "h"
    env.setenv(A.HOME_VAR, str(h))
    first, second = A.candidates("modelscope_cache")
    assert A.find("modelscope_cache") is None
    assert A.resolve("modelscope_cache") == first                      # nothing: where it should go
    second.mkdir(parents=True)
    assert A.find("modelscope_cache") == second == A.resolve("modelscope_cache")
    first.mkdir(parents=True)
    assert A.find("modelscope_cache") == first                         # the first that exists wins
    assert A.find("modelscope_cache", ok=lambda p: p == second) == second
    assert A.resolve("modelscope_cache", ok=lambda p: False) == first
    assert A.resolve("modelscope_cache", ok=lambda p: p == second) == second    # ok decides, not exists()
    # a parameter alone: a wrong one is not replaced by a copy that exists
    assert A.find("modelscope_cache", str(tmp_path / "wrong")) is None
    assert A.resolve("modelscope_cache", str(tmp_path / "wrong")) == tmp_path / "wrong"
    env.setenv("MODELSCOPE_CACHE", str(second))                        # no parameter: the variable
    assert A.find("modelscope_cache", ok=lambda p: True) == second
    assert A.resolve("modelscope_cache", ok=lambda p: False) == second


def test_install_dir(env, tmp_path):
    assert A.install_dir("spleeter") == A.CHECKOUT / "envs/spleeter"
    env.setenv(A.HOME_VAR, "")
    assert A.install_dir("landmarks") == A.CHECKOUT / "envs/landmarks"
    env.setenv(A.HOME_VAR, str(tmp_path / "h"))
    assert A.install_dir("landmarks") == tmp_path / "h/envs/landmarks"


def test_describe_order_lines(env, tmp_path):
    h, c, user = tmp_path / "h", A.CHECKOUT, tmp_path / "user"
    env.setenv(A.HOME_VAR, str(h))
    assert A.describe_order().split("\n") == [
        f"data folder: {h}  ($CHORUSHEAD_HOME, else $XDG_DATA_HOME/chorushead, else ~/.local/share/chorushead)",
        f"spleeter_python: stage parameter, else $CHORUSHEAD_SPLEETER_PYTHON, else {h}/envs/spleeter/bin/python, "
        f"{c}/envs/spleeter/bin/python",
        f"landmarks_python: stage parameter, else $CHORUSHEAD_LANDMARKS_PYTHON, else {h}/envs/landmarks/bin/python, "
        f"{c}/envs/landmarks/bin/python",
        f"spleeter_models: stage parameter, else $MODEL_PATH, else {h}/models/spleeter, {c}/pretrained_models",
        f"emoca_models: stage parameter, else $CHORUSHEAD_EMOCA_MODELS, else {h}/models/EMOCA, "
        f"{c}/assets/EMOCA/models",
        f"modelscope_cache: stage parameter, else $MODELSCOPE_CACHE, else {h}/models/modelscope, "
        f"{user}/.cache/modelscope/hub",
    ]


# ----------------------------------------------------------------------------- identities
def test_file_identity_samples_one_mebibyte(tmp_path):
    p = tmp_path / "w.bin"
    p.write_bytes(os.urandom(3 << 20))
    assert A.file_identity(p) == file_fingerprint(p, 1 << 20) != file_fingerprint(p, 1 << 21)
    assert A.file_identity(str(p), 16) == file_fingerprint(p, 16)


def _tree(root: Path, files: list[str]) -> None:
    for f in files:
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_text(f)


def test_files_identity_selects_sorts_and_limits(tmp_path):
    r = tmp_path / "w"
    _tree(r, [".probe", "a.ckpt", "b.yaml", "sub/c.ckpt", "sub/.e.ckpt", ".hid/d.ckpt", "z.txt"])
    (r / "dir.ckpt").mkdir()                                            # a folder is not a file
    ident = {f: A.file_identity(r / f) for f in
             [".probe", "a.ckpt", "b.yaml", "sub/c.ckpt", "sub/.e.ckpt", ".hid/d.ckpt", "z.txt"]}
    # .probe sits in the root: a hidden file is skipped, the walk goes on into sub/
    assert A.files_identity(r) == [[f, ident[f]] for f in ("a.ckpt", "b.yaml", "sub/c.ckpt", "z.txt")]
    assert A.files_identity(str(r), ("*.ckpt", "*.yaml", "*.ckpt")) == \
        [[f, ident[f]] for f in ("a.ckpt", "b.yaml", "sub/c.ckpt")]
    assert [x[0] for x in A.files_identity(r, ("*.ckpt",), hidden=True)] == \
        [".hid/d.ckpt", "a.ckpt", "sub/.e.ckpt", "sub/c.ckpt"]
    assert [x[0] for x in A.files_identity(r, hidden=True, limit=3)] == [".hid/d.ckpt", ".probe", "a.ckpt"]
    many = tmp_path / "many"
    _tree(many, [f"f{i:03d}" for i in range(501)])
    got = A.files_identity(many)
    assert len(got) == 500 and got[-1][0] == "f499"


def _dist(site: Path, info: str, meta: bytes | None) -> None:
    d = site / info
    d.mkdir(parents=True)
    if meta is not None:
        (d / "METADATA").write_bytes(meta)


def test_dist_version_reads_metadata_by_normalised_name(tmp_path):
    s1, s2 = tmp_path / "s1", tmp_path / "s2"
    _dist(s1, "Mediapipe-0.10.14.dist-info", b"Metadata-Version: 2.1\nName: mediapipe\nSummary: \xff\n"
                                             b"Version: 0.10.14\n")
    for i in range(30):                                                  # other distributions beside it
        _dist(s1, f"other{i}-1.0.dist-info", b"Version: 9\n")
    _dist(s1, "spleeter-2.4.0.dist-info", None)                          # no METADATA here ...
    _dist(s2, "Spleeter-2.4.0.dist-info", b"Version:   2.4.0 \n")        # ... but in the next folder
    _dist(s2, "tensor-flow-2.1.dist-info", b"Name: tensor-flow\nVersion: 2.1\n")   # an old name with a dash
    _dist(s2, "nover-1.dist-info", b"Name: nover\n")
    (tmp_path / "afile").write_text("")
    sites = [tmp_path / "missing", tmp_path / "afile", s1, s2]
    assert A.dist_version("mediapipe", sites) == "0.10.14"
    assert A.dist_version("MediaPipe", [str(s) for s in sites]) == "0.10.14"
    assert A.dist_version("spleeter", sites) == "2.4.0"
    assert A.dist_version("tensor_flow", sites) == A.dist_version("Tensor.Flow", sites) == "2.1"
    assert A.dist_version("tensor", sites) is None
    assert A.dist_version("nover", sites) is None
    assert A.dist_version("absent", sites) is None


def test_dist_version_reads_the_header_only(tmp_path):
    # "Version: 7" ends on byte 4097 (past the first 4096, where the header is): not read
    pad = b"Name: late\n" + b"x" * (4086 - 12) + b"\n"
    assert len(pad) == 4086
    _dist(tmp_path, "late-1.dist-info", pad + b"\nVersion: 7")
    assert A.dist_version("late", [tmp_path]) is None
    _dist(tmp_path, "early-1.dist-info", pad + b"Version: 7")            # ends on byte 4096: read
    assert A.dist_version("early", [tmp_path]) == "7"


def test_venv_site_packages(tmp_path, monkeypatch):
    v = tmp_path / "v"
    for d in ("lib/python3.11/site-packages", "lib/python3.9/site-packages", "lib/python3.11/dist-packages",
              "lib/python2.7/site-packages", "lib64/python3.11/site-packages"):
        (v / d).mkdir(parents=True)
    (v / "bin").mkdir()
    (v / "bin/python").symlink_to("/usr/bin/python3")                    # a venv python: not resolved
    want = [v / "lib/python3.11/site-packages", v / "lib/python3.9/site-packages", v / "lib/python3.11/dist-packages"]
    assert A.venv_site_packages(v / "bin/python") == want
    monkeypatch.chdir(tmp_path)
    assert A.venv_site_packages("v/bin/python") == want
    assert A.venv_site_packages(tmp_path / "none/bin/python") == []


def test_safe_returns_or_reports():
    assert A.safe(lambda: {"a": 1}) == {"a": 1}

    def boom():
        raise ValueError("x" * 400)
    assert A.safe(boom) == {"error": ("ValueError: " + "x" * 400)[:300]}
    assert len(A.safe(boom)["error"]) == 300


# ----------------------------------------------------------------------------- the script
USAGE = ("usage: assets.py home | install-dir NAME | find "
         "{spleeter_python|landmarks_python|spleeter_models|emoca_models|modelscope_cache} | order\n")


def test_main_commands(env, tmp_path, capsys):
    h = tmp_path / "h"
    env.setenv(A.HOME_VAR, str(h))
    assert A._main(["home"]) == 0 and capsys.readouterr().out == f"{h}\n"
    assert A._main(["install-dir", "spleeter"]) == 0 and capsys.readouterr().out == f"{h}/envs/spleeter\n"
    assert A._main(["order"]) == 0 and capsys.readouterr().out == A.describe_order() + "\n"
    # home and order take no argument: words after them are ignored, not a usage error
    assert A._main(["home", "x"]) == 0 and capsys.readouterr().out == f"{h}\n"
    assert A._main(["order", "x"]) == 0 and capsys.readouterr().out == A.describe_order() + "\n"
    assert A._main(["find", "emoca_models"]) == 1 and capsys.readouterr().out == ""
    (h / "models/EMOCA").mkdir(parents=True)
    assert A._main(["find", "emoca_models"]) == 0 and capsys.readouterr().out == f"{h}/models/EMOCA\n"
    for bad in ([], ["nothing"], ["install-dir"], ["install-dir", "a", "b"], ["find"], ["find", "nothing"],
                ["find", "emoca_models", "x"]):
        assert A._main(bad) == 2, bad
        out = capsys.readouterr()
        assert out.out == "" and out.err == USAGE, bad
