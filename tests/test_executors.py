"""Executors: every backend yields each task's result once, in completion order, back to the caller;
a worker killed mid-task costs that task only; a build on Dask or Ray equals a local build.

The Dask and Ray tests are skipped (with the reason) only when the package is not installed:
CI installs both (`pip install "dask[distributed]" ray`).
"""
from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path

import pytest

from chorushead.executors import WorkerLost, parallel_map, session

HAVE_DASK = importlib.util.find_spec("distributed") is not None
HAVE_RAY = importlib.util.find_spec("ray") is not None

BACKENDS = [
    "local",
    pytest.param("dask", marks=pytest.mark.skipif(not HAVE_DASK, reason='dask.distributed not installed '
                                                  '(pip install "dask[distributed]")')),
    # Ray needs ~10 s to start on 2 busy cores.
    pytest.param("ray", marks=[pytest.mark.slow,
                               pytest.mark.skipif(not HAVE_RAY, reason="ray not installed (pip install ray)")]),
]


@pytest.fixture(autouse=True)
def _ray_local_env(monkeypatch):
    # A throwaway local Ray instance needs no token (and should not write one to ~/.ray).
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")


# Module-level, so every engine can pickle them by reference (workers import this module: the local pool and
# Dask inherit sys.path, the Ray executor hands it over).
def slow_first(x: int) -> int:
    """Task 0 takes long, the rest are quick: with two workers task 0 must come out last."""
    time.sleep(3.0 if x == 0 else 0.05)   # 3 s: margin for a busy machine starting workers unevenly
    return x * x


def dies_on_three(x: int) -> int:
    """Task 3 kills its own worker process, as a segfault or the OOM killer would."""
    if x == 3:
        time.sleep(0.3)   # let the other tasks get going, so some are in flight beside it
        os._exit(13)
    time.sleep(0.1)
    return x * x


@pytest.mark.parametrize("backend", BACKENDS)
def test_parallel_map_completion_order_and_completeness(backend):
    results = list(parallel_map(slow_first, range(6), jobs=2, backend=backend))
    assert sorted(results) == [x * x for x in range(6)]          # each exactly once
    assert results[-1] == 0                                       # the slow one overtaken by all others


@pytest.mark.parametrize("backend", BACKENDS)
def test_killed_worker_costs_only_its_task(backend):
    with pytest.warns(WorkerLost, match=r"^3: its .*worker.* died") as caught:
        results = list(parallel_map(dies_on_three, range(8), jobs=2, backend=backend))
    assert sorted(results) == [x * x for x in range(8) if x != 3]
    assert len([w for w in caught if issubclass(w.category, WorkerLost)]) == 1


def test_local_single_worker_crash_is_dropped_at_once():
    # With one worker the task was alone when it died: no retry needed to name the culprit.
    with pytest.warns(WorkerLost, match="^3:"):
        results = list(parallel_map(dies_on_three, [1, 3, 5], jobs=1, backend="local"))
    assert sorted(results) == [1, 25]


def test_unknown_backend_and_missing_packages(monkeypatch):
    with pytest.raises(ValueError, match="available: local, dask, ray"):
        parallel_map(slow_first, [1], backend="spark")
    monkeypatch.setitem(__import__("sys").modules, "distributed", None)   # import now fails
    monkeypatch.setitem(__import__("sys").modules, "ray", None)
    with pytest.raises(ImportError, match=r'pip install "dask\[distributed\]"'):
        list(parallel_map(slow_first, [1], backend="dask"))
    with pytest.raises(ImportError, match="pip install ray"):
        list(parallel_map(slow_first, [1], backend="ray"))


def chain_step(task: tuple[str, int]) -> tuple[str, int]:
    """("slow", 0) takes long; ("fast", k) is quick. Returns the task (its follow-ups depend on it)."""
    time.sleep(3.0 if task[0] == "slow" else 0.05)
    return task


@pytest.mark.parametrize("backend", BACKENDS)
def test_follow_ups_stream_past_a_slow_task(backend):
    """Streaming: a result's follow-up tasks are queued as soon as it is back, so a chain of quick
    steps (an item moving through its stages) finishes while a slow task (another item's long stage)
    still runs; nothing waits for a whole 'stage' to end."""
    def follow(done: tuple[str, int]) -> list[tuple[str, int]]:
        kind, k = done
        return [("fast", k + 1)] if kind == "fast" and k < 4 else []

    with session(backend, jobs=2) as engine:
        results = list(parallel_map(chain_step, [("slow", 0), ("fast", 0)], jobs=2, backend=backend,
                                    engine=engine, follow=follow))
    assert results == [("fast", k) for k in range(5)] + [("slow", 0)]


# ----------------------------------------------------------------------------- a build per backend
@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    from chorushead.sample import write_sample
    root = tmp_path_factory.mktemp("raw")
    for k in range(3):
        write_sample(root, seconds=6, size=(96, 192), name=f"clip{k}", seed=k)
    return root / "videos"


def _ingest(videos: Path, out: Path, backend: str, jobs: int) -> tuple[dict, dict]:
    """Build the ingest stage; return {item: comparable record} and {relative path: bytes}."""
    from chorushead.core.manifest import Manifest
    from chorushead.runner import Pipeline, build
    [summary] = build(videos, out, Pipeline.load(), stages=["ingest"], jobs=jobs, backend=backend,
                      progress=False, log=lambda _: None)
    assert summary.done == 3 and summary.failed == 0, summary.failures
    records = {}
    for rec in Manifest(out, "ingest").read_all():
        outputs = {k: v for k, v in rec.outputs.items() if not (isinstance(v, str) and os.path.isabs(v))}
        records[rec.item] = {"status": rec.status, "fingerprint": rec.fingerprint, "outputs": outputs,
                             "metrics": rec.metrics}
    files = {p.relative_to(out).as_posix(): p.read_bytes()
             for p in sorted((out / "items").rglob("*")) if p.is_file()}
    return records, files


@pytest.fixture(scope="module")
def reference(videos, tmp_path_factory):
    """The in-process build (local, jobs=1) everything else must equal."""
    return _ingest(videos, tmp_path_factory.mktemp("ref"), "local", 1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_build_matches_in_process_build(backend, videos, reference, tmp_path):
    records, files = _ingest(videos, tmp_path / "out", backend, jobs=2)
    ref_records, ref_files = reference
    assert len(records) == 3 and json.dumps(records, sort_keys=True) == json.dumps(ref_records, sort_keys=True)
    assert files.keys() == ref_files.keys() and any(k.endswith("mix_44k.wav") for k in files)
    assert all(files[k] == ref_files[k] for k in files), [k for k in files if files[k] != ref_files[k]]


# ----------------------------------------------------------------------------- one engine per build
_CALLS = 0


def count_calls(_: int) -> tuple[int, int]:
    """(worker pid, how many tasks this worker process has run so far): proves workers persist."""
    global _CALLS
    _CALLS += 1
    return os.getpid(), _CALLS


@pytest.mark.parametrize("backend", BACKENDS[1:])
def test_session_starts_the_engine_once_and_keeps_its_workers(backend):
    with session(backend, jobs=2) as engine:
        assert engine.started == 0                                     # lazy: nothing started yet
        first = list(parallel_map(count_calls, range(4), jobs=2, backend=backend, engine=engine))
        second = list(parallel_map(count_calls, range(4), jobs=2, backend=backend, engine=engine))
        assert engine.started == 1
    assert len(first) == len(second) == 4
    if backend == "dask":   # the same worker processes, their state (e.g. a loaded model) kept between maps
        last = {}
        for pid, n in first:
            last[pid] = max(n, last.get(pid, 0))
        assert all(pid in last and n > last[pid] for pid, n in second), (first, second)


_HELD: list = []
_TASKS = 0


def hold_a_model(_: int) -> int:
    """From its second task on, a worker keeps ~350 MB alive, as a model loaded by a later stage does;
    returns the worker's pid. Each task takes 0.6 s, so checks that run at most once a second see it."""
    import numpy as np
    global _TASKS
    _TASKS += 1
    if _TASKS >= 2 and not _HELD:
        _HELD.append(np.ones(350 << 20, np.uint8))
    time.sleep(0.6)
    return os.getpid()


def test_local_workers_keep_what_they_loaded():
    """A worker whose memory grew by a model's size since its first task serves every later task.
    (joblib's loky retires such a worker: this very test gave 4 worker pids for 10 tasks on it, and
    in a build each replacement re-imported torch and reloaded the model.)"""
    with session("local", jobs=2) as engine:
        pids = list(engine.map(hold_a_model, list(range(10))))
    assert len(pids) == 10 and len(set(pids)) <= 2, pids


def imported(name: str) -> tuple[str, bool]:
    import sys
    return name, name in sys.modules       # before this task imports anything


@pytest.mark.parametrize("backend", BACKENDS[:2])
def test_workers_start_with_the_preloaded_modules(backend):
    # Two standard modules nothing here imports: the one preloaded is there, the other (control) not.
    with session(backend, jobs=2, preload=["tabnanny"]) as engine:
        assert dict(engine.map(imported, ["tabnanny", "pyclbr"])) == {"tabnanny": True, "pyclbr": False}


def test_session_refuses_another_backend():
    with session("dask", jobs=1) as engine:
        with pytest.raises(ValueError, match="'dask' engine"):
            parallel_map(count_calls, [1], backend="ray", engine=engine)
        assert engine.started == 0


def test_local_workers_from_a_script_on_stdin_fail_with_one_clear_error(tmp_path):
    """Worker processes re-run the main script's module; one read from stdin has none to re-run."""
    import subprocess
    import sys
    script = "from chorushead.executors import parallel_map\nprint(list(parallel_map(abs, [-1, -2], jobs=2)))\n"
    proc = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True, cwd=tmp_path,
                          timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "RuntimeError: worker processes started here cannot start from a script read from '<stdin>': save it "
        "to a file and run that, or use the local backend with jobs=1")


# ----------------------------------------------------------------------------- an address that is not there
def closed_loopback_port() -> int:
    """A loopback port nothing listens on (bound, then released): connecting is refused at once."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("backend,address", [
    pytest.param("dask", "tcp://127.0.0.1:{port}", marks=pytest.mark.skipif(not HAVE_DASK, reason="no dask")),
    pytest.param("ray", "127.0.0.1:{port}", marks=pytest.mark.skipif(not HAVE_RAY, reason="no ray")),
    pytest.param("ray", "ray://127.0.0.1:{port}", marks=pytest.mark.skipif(not HAVE_RAY, reason="no ray")),
])
def test_unreachable_address_fails_at_once_in_one_line(backend, address):
    address = address.format(port=closed_loopback_port())
    t0 = time.monotonic()
    with pytest.raises(RuntimeError) as err:
        list(parallel_map(abs, [1, 2], backend=backend, address=address))
    assert time.monotonic() - t0 < 10
    msg = str(err.value)
    assert address in msg and "\n" not in msg and len(msg) < 300, msg


def test_address_parsing():
    from chorushead.executors.base import host_port
    assert host_port("tcp://127.0.0.1:8786") == ("127.0.0.1", 8786)
    assert host_port("ray://head:10001") == ("head", 10001)
    assert host_port("10.0.0.5:6379") == ("10.0.0.5", 6379)
    assert host_port("tcp://[::1]:8786") == ("::1", 8786)
    assert host_port("auto") is None and host_port("inproc://x/1") is None


@pytest.mark.skipif(not HAVE_DASK, reason="no dask")
def test_cli_build_with_an_unreachable_scheduler_prints_one_line(videos, tmp_path):
    """`chorushead build --backend dask --scheduler tcp://127.0.0.1:<closed>`: exit 2, one line naming it."""
    import subprocess
    import sys
    address = f"tcp://127.0.0.1:{closed_loopback_port()}"
    proc = subprocess.run([sys.executable, "-m", "chorushead.cli", "build", "--videos", str(videos), "--out",
                           str(tmp_path / "out"), "--stages", "ingest", "-q", "--backend", "dask",
                           "--scheduler", address], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and address in lines[0], proc.stderr


def test_a_local_ray_is_our_own_even_beside_a_running_cluster(monkeypatch):
    """Without an address, ray.init joins the newest cluster on the machine (RAY_ADDRESS or
    /tmp/ray/ray_current_cluster) and then refuses num_cpus; a local build asks for a new instance."""
    from chorushead.executors import ray as ray_engine
    seen = {}

    class FakeRay:
        @staticmethod
        def init(**kwargs):
            seen.update(kwargs)

    ray_engine.init(FakeRay, 3, None)
    assert seen["address"] == "local" and seen["num_cpus"] == 3 and seen["_node_ip_address"] == "127.0.0.1"
    seen.clear()
    ray_engine.init(FakeRay, 3, "10.0.0.5:6379")
    assert seen == {"address": "10.0.0.5:6379", "logging_level": "WARNING"}
