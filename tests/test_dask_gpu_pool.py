"""Dask: a GPU stage's tasks run only on workers that advertise a GPU, the others anywhere
(executors/dask.py). No GPU is needed: a worker's resources are what it says it has."""
from __future__ import annotations

import importlib.util

import pytest

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("distributed") is None, reason="dask not installed")]


def where(task: int) -> tuple[int, str]:
    import time

    from distributed import get_worker
    time.sleep(0.05)          # long enough that the scheduler spreads the CPU tasks over both workers
    return task, get_worker().name


def test_gpu_tasks_go_to_the_gpu_worker_and_the_rest_anywhere():
    from contextlib import ExitStack

    from distributed import Client, Nanny, Scheduler, SpecCluster

    from chorushead.executors.dask import dask_map, gpu_workers
    host = "127.0.0.1"
    workers = {"cpu": {"cls": Nanny, "options": {"nthreads": 1, "host": host}},
               "gpu": {"cls": Nanny, "options": {"nthreads": 1, "host": host, "resources": {"GPU": 1}}}}
    with ExitStack() as stack:
        cluster = stack.enter_context(SpecCluster(workers=workers, asynchronous=False, scheduler={
            "cls": Scheduler, "options": {"host": host, "dashboard_address": None}}))
        client = stack.enter_context(Client(cluster))
        client.wait_for_workers(2)
        assert gpu_workers(client) == 1
        tasks = list(range(12))
        follow_ups = {t: [t + 100] for t in tasks[:3]}          # follow-ups keep their pool too
        got = dict(dask_map(client, where, tasks, window=None, gpu=lambda t: t % 2 == 0,
                            follow=lambda res: follow_ups.get(res[0], [])))
        assert sorted(got) == tasks + [100, 101, 102]
        assert {got[t] for t in got if t % 2 == 0} == {"gpu"}   # every GPU task on the GPU worker
        assert "cpu" in {got[t] for t in got if t % 2}          # the others also ran on the CPU worker
        # a cluster without GPU workers runs GPU stages anywhere (no resource asked: nothing would run)
        stack.close()
    with Client(n_workers=1, threads_per_worker=1, processes=True, host=host, dashboard_address=None) as c2:
        assert gpu_workers(c2) == 0
        assert dict(dask_map(c2, where, [0, 1], window=None, gpu=True)).keys() == {0, 1}
