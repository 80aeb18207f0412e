"""A build on a multi-node Ray cluster (issue 21, part 5): two raylets on this machine
(``ray.cluster_utils.Cluster``: a head and a worker node, one CPU each, each with a custom resource that
names it), everything on 127.0.0.1, the output folder on the filesystem both nodes share — what a real
cluster's shared output folder is. ``chorushead build --backend ray --address <the head's GCS>`` must
give the LMDB a local build gives, key for key, with tasks run on both nodes; a second build on the
cluster redoes nothing.

Which node ran a task is recorded by wrapping the runner's task function (the executor's ``ray_map``
is patched here, nothing in the project's code changes): the wrapper runs inside the Ray worker and
appends ``ray.get_runtime_context().get_node_id()`` to a file in the shared folder.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from chorushead.core.manifest import Manifest
from chorushead.runner import Pipeline, build
from chorushead.sample import write_sample
from packfixture import lmdb_content
from test_build import SIZE, _fit_sets

pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")   # a dependency of Ray

LOOPBACK = "127.0.0.1"


@pytest.fixture
def ray_cluster(monkeypatch):
    """A head node ("node_a") and a worker node ("node_b") on loopback, one CPU each; every process they
    started is gone after the test, whatever its outcome."""
    from chorushead.executors import ray as ray_engine
    # As for a local Ray (executors.ray.local_ray_env): loopback, no usage stats, no outbound proxy calls,
    # no token. The raylets and every process they start inherit this environment.
    for k, v in ray_engine.local_ray_env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    ray = ray_engine.import_ray(local=True)
    # A connection left by another test would take the build's tasks (the engine uses one that exists).
    assert not ray.is_initialized(), "a Ray connection is still open in this process"
    # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 is read when ray is first imported: an earlier test may have
    # imported it already, so this process is told again (the node address guess: loopback, no 8.8.8.8).
    from ray._private import ray_constants
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
    from ray.cluster_utils import Cluster
    node = {"num_cpus": 1, "node_ip_address": LOOPBACK}
    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={**node, "resources": {"node_a": 1}, "include_dashboard": False,
                                      "dashboard_host": LOOPBACK})
    try:
        cluster.add_node(**node, resources={"node_b": 1})
        cluster.wait_for_nodes()
        yield cluster
    finally:
        procs = _processes(cluster)
        if ray.is_initialized():   # a build that failed midway may not have disconnected
            ray.shutdown()
        cluster.shutdown()
        gone, alive = psutil.wait_procs(procs, timeout=20)
        for p in alive:            # kill what is left (then fail): no raylet or worker outlives the test
            p.kill()
        assert not alive, f"left running after the cluster shut down: {[p.pid for p in alive]}"


def _processes(cluster) -> list:
    """Every live process the cluster's nodes started (GCS, raylets, agents, ...) and their children
    (Ray's worker processes)."""
    procs = {}
    for node in cluster.list_all_nodes():
        for infos in node.all_processes.values():
            for info in infos:
                try:
                    p = psutil.Process(info.process.pid)
                    procs[p.pid] = p
                    procs.update((c.pid, c) for c in p.children(recursive=True))
                except psutil.NoSuchProcess:
                    pass
    return list(procs.values())


def _record_nodes(monkeypatch, log: Path) -> None:
    """Every task sent to Ray appends the id of the node it runs on to ``log`` (then runs as before)."""
    from chorushead.executors import ray as ray_engine
    real = ray_engine.ray_map

    def ray_map(ray, fn, tasks, *args, **kwargs):
        path = str(log)

        def on_node(task):   # a closure: pickled by value, so the workers need not import this test module
            import os
            import ray as ray_here
            with open(path, "a") as f:   # O_APPEND: lines from several processes do not interleave
                f.write(json.dumps({"node": ray_here.get_runtime_context().get_node_id(), "pid": os.getpid(),
                                    "stage": getattr(task, "stage", None)}) + "\n")
            return fn(task)

        return real(ray, on_node, tasks, *args, **kwargs)

    monkeypatch.setattr(ray_engine, "ray_map", ray_map)


@pytest.mark.slow   # two 6 s videos through every stage: a local build, then the cluster's (35-45 s on 2 busy cores)
def test_build_on_a_two_node_ray_cluster_equals_a_local_build_and_resumes(tmp_path, monkeypatch, ray_cluster):
    import ray
    monkeypatch.setattr(sys, "path", list(sys.path))
    raw = tmp_path / "raw"
    for k in range(2):
        write_sample(raw, seconds=6.0, size=SIZE, name=f"clip {k}", absent_s=None, seed=40 + k)
    pl = Pipeline.load(overrides=_fit_sets(tmp_path))
    local, shared = tmp_path / "local", tmp_path / "shared"
    build(raw / "videos", local, pl, stems=raw / "stems", progress=False)

    log = tmp_path / "nodes.jsonl"
    _record_nodes(monkeypatch, log)
    address = ray_cluster.address
    assert address.startswith(f"{LOOPBACK}:")
    summ = {s.stage: s for s in build(raw / "videos", shared, pl, stems=raw / "stems", progress=False,
                                      backend="ray", scheduler=address, jobs=2)}
    assert all(s.failed == 0 and s.done + s.skipped == 2 for s in summ.values()), summ
    for stage in pl.stages:
        recs = Manifest(shared, stage).latest()
        assert len(recs) == 2 and all(r.ok for r in recs.values()), (stage, recs)
    a, b = lmdb_content(local / "windows.lmdb"), lmdb_content(shared / "windows.lmdb")
    assert any(k.startswith(b"w/") for k in a)
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)

    # Tasks ran on both nodes: the node ids the workers saw are the cluster's two nodes.
    ran = [json.loads(line) for line in log.read_text().splitlines()]
    assert ran and all(r["pid"] for r in ran)
    ray.init(address=address, logging_level="WARNING")
    try:
        named = {n["NodeID"]: next(r for r in n["Resources"] if r.startswith("node_"))
                 for n in ray.nodes() if n["Alive"]}
    finally:
        ray.shutdown()
    assert sorted(named.values()) == ["node_a", "node_b"]
    per_node = {name: sum(named[r["node"]] == name for r in ran) for name in ("node_a", "node_b")}
    print(f"tasks per node: {per_node} ({ {named[r['node']]: r['node'][:12] for r in ran} })")
    assert all(per_node.values()), ran

    # Resume on the cluster: everything reused, no task sent, the LMDB file untouched.
    before = (shared / "windows.lmdb" / "data.mdb").read_bytes()
    n_tasks = len(ran)
    summ = {s.stage: s for s in build(raw / "videos", shared, pl, stems=raw / "stems", progress=False,
                                      backend="ray", scheduler=address, jobs=2)}
    assert all(s.reused == 2 and s.done == s.failed == 0 for s in summ.values()), summ
    assert (shared / "windows.lmdb" / "data.mdb").read_bytes() == before
    assert len(log.read_text().splitlines()) == n_tasks
    for name in [m for m in sys.modules if m.split(".")[0] in ("gdl", "gdl_apps")]:
        del sys.modules[name]
