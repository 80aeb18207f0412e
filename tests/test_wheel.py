"""The project installs as a plain wheel (not editable) and works from any folder: the default pipeline
file and the review page's static files ship inside the package."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_is_listed_in_pyproject():
    """pyproject lists its packages (to map pipelines/ into the wheel), so a new one must be added there."""
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {".".join(p.parent.relative_to(ROOT).parts)
               for top in ("chorushead", "pachorus") for p in (ROOT / top).rglob("__init__.py")}
    listed = set(cfg["packages"])
    assert on_disk - listed == set(), f"add these to [tool.setuptools] packages in pyproject.toml: {on_disk - listed}"
    assert listed - on_disk == {"chorushead.pipelines"}
    assert cfg["package-dir"]["chorushead.pipelines"] == "pipelines"
    assert (ROOT / "pipelines" / "chorushead.toml").is_file()


def running_site_dirs() -> list[str]:
    """The site folders of the interpreter running the tests, in its sys.path order."""
    import site
    dirs = list(site.getsitepackages())
    if site.ENABLE_USER_SITE and os.path.isdir(site.getusersitepackages()):
        dirs.append(site.getusersitepackages())
    order = {p: i for i, p in enumerate(sys.path)}
    return sorted((d for d in dirs if os.path.isdir(d)), key=lambda d: order.get(d, len(order)))


def inherit_running_environment(py: Path) -> None:
    """Make the venv whose python is ``py`` see the running environment's packages (see the caller):
    site.addsitedir also reads the .pth files there (editable installs, namespace packages)."""
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    # One line that starts with "import" (site executes it); exec'd in a function's scope, so no
    # comprehension (it could not see the imported names): map/filter with a default-bound lambda.
    line = (f"import site, sys; list(map(site.addsitedir, filter(lambda p, s=sys: p not in s.path, "
            f"{running_site_dirs()!r})))\n")
    Path(purelib, "_running_environment.pth").write_text(line)


# Run inside the venv: where the package, the pipeline file and the page come from, and that the page serves.
PROBE = r"""
import http.client, json, sys, threading
import chorushead
from chorushead.runner import Pipeline, default_pipeline_path
from chorushead.review.server import STATIC, make_server
srv = make_server(sys.argv[1], port=0)
threading.Thread(target=srv.serve_forever, daemon=True).start()
c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
pages = {}
for path in ("/", "/static/app.js", "/api/segments"):
    c.request("GET", path, headers={"Host": f"127.0.0.1:{srv.port}"})
    r = c.getresponse()
    pages[path] = [r.status, len(r.read())]
srv.shutdown()
print(json.dumps({"package": chorushead.__file__, "pipeline": str(default_pipeline_path()),
                  "stages": Pipeline.load().stages, "static": str(STATIC), "pages": pages}))
"""


@pytest.mark.slow
def test_wheel_installs_and_runs_the_demo_outside_the_checkout(tmp_path):
    src, dist, venv, work = tmp_path / "src", tmp_path / "dist", tmp_path / "venv", tmp_path / "elsewhere"
    work.mkdir()
    # Build from a copy of the files git would ship: setuptools leaves build/ in the source folder, and
    # a stale build/lib there could put modules deleted since into the wheel.
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           check=True, capture_output=True, text=True).stdout.split("\0")
    for rel in filter(None, files):
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(dist), str(src)], check=True, cwd=work)
    wheel = next(dist.glob("chorushead-*.whl"))
    # every file of the packages git tracks is in the wheel (code, the page, data files), pipelines/ included
    with zipfile.ZipFile(wheel) as z:
        shipped = set(z.namelist())
    wanted = {rel for rel in filter(None, files) if rel.split("/")[0] in ("chorushead", "pachorus")}
    wanted |= {f"chorushead/{rel}" for rel in filter(None, files) if rel.startswith("pipelines/")
               and rel.endswith(".toml")}
    assert wanted - shipped == set(), f"missing from the wheel: {sorted(wanted - shipped)}"
    # torch and friends come from the environment running these tests, nothing is downloaded. Not
    # `venv --system-site-packages`: run from inside a venv, that inherits the BASE interpreter's
    # site-packages (venv always builds on sys._base_executable), not the running venv's, where typer &c.
    # are. Instead a .pth in the new venv adds the running environment's site folders (in its own order,
    # after the venv's own site-packages, so the wheel installed there wins): the same packages whether
    # the suite runs in a plain install or in a venv (with or without system site-packages).
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py, exe = venv / "bin" / "python", venv / "bin" / "chorushead"
    inherit_running_environment(py)
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, cwd=work)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}    # the checkout must not leak in

    out = work / "demo"
    # The demo fits with the landmark backend. Installed elsewhere, the package cannot see the checkout's
    # envs/landmarks (built by scripts/setup.sh), so it is named the documented way.
    landmarks = ROOT / "envs" / "landmarks" / "bin" / "python"
    assert landmarks.exists(), "run `bash scripts/setup.sh` first: it builds envs/landmarks for the demo's fit"
    demo = subprocess.run([str(exe), "demo", "--out", str(out), "--seconds", "8", "--videos", "1"], cwd=work,
                          env=dict(env, CHORUSHEAD_LANDMARKS_PYTHON=str(landmarks)),
                          capture_output=True, text=True, timeout=600)
    assert (out / "build" / "manifests").is_dir(), demo.stdout + demo.stderr
    assert demo.returncode == 0, demo.stdout + demo.stderr
    # every stage ran, from the installed package, to a packed LMDB
    ran = {json.loads(line)["stage"]: json.loads(line)["status"]
           for stage in ("ingest", "bgm_split", "duet_split", "vad", "crop", "contiguity", "fit", "smooth",
                         "assign", "pack")
           for line in (out / "build" / "manifests" / f"{stage}.jsonl").read_text().splitlines()[-1:]}
    assert ran == {"ingest": "done", "bgm_split": "skipped", "duet_split": "skipped", "vad": "done",
                   "crop": "done", "contiguity": "done", "fit": "done", "smooth": "done", "assign": "done",
                   "pack": "done"}, demo.stdout + demo.stderr
    assert (out / "build" / "windows.lmdb" / "data.mdb").is_file()
    assert "pipelines/chorushead.toml not found" not in demo.stdout + demo.stderr

    probe = subprocess.run([str(py), "-c", PROBE, str(out / "build")], cwd=work, env=env,
                           capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr
    got = json.loads(probe.stdout.strip().splitlines()[-1])
    site = str(venv / "lib")
    assert got["package"].startswith(site), f"the venv imported {got['package']}, not the wheel"
    assert got["pipeline"].startswith(site) and got["pipeline"].endswith("chorushead/pipelines/chorushead.toml")
    assert got["stages"][:4] == ["ingest", "screen", "fingerprint", "bgm_split"] and got["stages"][-1] == "pack"
    assert got["static"].startswith(site)
    assert got["pages"]["/"][0] == 200 and got["pages"]["/"][1] > 1000
    assert got["pages"]["/static/app.js"][0] == 200 and got["pages"]["/api/segments"][0] == 200
