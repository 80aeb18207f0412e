"""Executors by name: where a stage's items run. Stages never know which one is used.

``parallel_map(fn, tasks, jobs, backend, address, gpu, follow)`` yields ``fn(task)`` results in
completion order, back in the calling process, which alone appends to the manifests (so records are
neither lost nor duplicated, whatever order workers finish in). ``follow(result)`` (optional) returns
the tasks that result makes possible; they are queued at once, so work streams: the runner gives an
item's next stage as soon as its previous one is back, with no barrier between stages.

``session(backend, jobs, address)`` keeps one engine for many calls (``parallel_map(..., engine=e)``):
the runner opens one per build, so a Dask cluster or Ray instance starts (or connects) at most once
per build, on first use, and its worker processes keep what they loaded (the runner's per-process
model cache) from stage to stage. Without a session each call starts and stops its own engine.

One module per engine, each saying how it starts, where it listens and what a crash costs:

- ``local`` (:mod:`.local`): in this process with one job, else worker processes on this machine
  (the standard library's ProcessPoolExecutor).
- ``dask`` (:mod:`.dask`): a ``distributed`` scheduler at ``address``, or a LocalCluster of ``jobs``
  one-thread worker processes started here. ``pip install "dask[distributed]"``.
- ``ray`` (:mod:`.ray`): a Ray cluster at ``address``, or a local Ray instance with ``jobs`` CPUs
  started here. ``pip install ray``.

What they share (:mod:`.base`): nothing leaves this machine when the engine is started here (every
process listens and talks on 127.0.0.1); a worker process that dies mid-task (segfault, OOM killer,
``kill -9``) costs that task only: it is not yielded, a :class:`WorkerLost` warning names it, and
every other task still completes. For the runner this means the item has no new record, so it stays
pending and the next build redoes it.

An exception raised by ``fn`` itself is not a crash and propagates, as it would in-process (the
runner's ``run_task`` never raises; anything that does is a bug or a broken worker environment).
"""
from __future__ import annotations

import os
from contextlib import ExitStack, contextmanager
from typing import Any, Callable, Iterable, Iterator

from chorushead.executors import dask as dask_engine, local, ray as ray_engine
from chorushead.executors.base import Follow, Gpu, WorkerLost, check_reachable

__all__ = ["BACKENDS", "Engine", "Follow", "Gpu", "WorkerLost", "check_reachable", "parallel_map", "session"]

BACKENDS = ("local", "dask", "ray")


def parallel_map(fn: Callable[[Any], Any], tasks: Iterable[Any], jobs: int = 1, backend: str = "local",
                 address: str | None = None, gpu: Gpu = False, engine: "Engine | None" = None,
                 follow: Follow = None) -> Iterator[Any]:
    """Yield ``fn(task)`` for each task, and for each task ``follow`` adds, in completion order (see the
    module docstring). With ``engine`` (a :func:`session` of this backend) the tasks run on that
    session's cluster, started once for many calls; without, a Dask or Ray engine is started for this
    call and stopped after it (local: a pool of ``jobs`` processes; only a session's runs in this
    process when ``jobs == 1``)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; available: {', '.join(BACKENDS)}")
    tasks = list(tasks)
    if not tasks:
        return iter(())
    if engine is not None:
        if engine.backend != backend:
            raise ValueError(f"parallel_map(backend={backend!r}) given a {engine.backend!r} engine session")
        return engine.map(fn, tasks, gpu, follow)
    # Without follow-ups, never start workers that would idle.
    jobs = _jobs(jobs) if follow is not None else min(_jobs(jobs), len(tasks))
    if backend == "local":
        return local.pool_map(fn, tasks, jobs, follow)
    return _one_shot(fn, tasks, backend, jobs, address, gpu, follow)


def _jobs(jobs: int) -> int:
    return jobs if jobs > 0 else (os.cpu_count() or 1)   # jobs <= 0: one worker per core


def _one_shot(fn: Callable[[Any], Any], tasks: list[Any], backend: str, jobs: int, address: str | None,
              gpu: Gpu, follow: Follow) -> Iterator[Any]:
    with session(backend, jobs, address) as engine:
        yield from engine.map(fn, tasks, gpu, follow)


@contextmanager
def session(backend: str, jobs: int = 1, address: str | None = None,
            preload: Iterable[str] = ()) -> Iterator["Engine"]:
    """One engine for a whole build: the Dask cluster or Ray instance starts (or connects to
    ``address``) on the first :meth:`Engine.map` and stops (or disconnects) when the block ends, so
    its worker processes, and the models they loaded, serve every stage in between. ``local`` keeps
    one pool of ``jobs`` worker processes the same way (with ``jobs == 1``, tasks run in this process).

    ``preload``: modules the tasks will import (torch, the stage modules...). Worker processes started
    here (the local pool, a Dask LocalCluster) fork from a server process that imported them once, so
    each worker starts with them in memory instead of spending seconds of CPU importing them itself.
    (Python keeps one such server per process and the first session that starts it fixes its modules;
    a later session's workers import what the server lacks as they start.)"""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; available: {', '.join(BACKENDS)}")
    engine = Engine(backend, _jobs(jobs), address, tuple(preload))
    try:
        yield engine
    finally:
        engine.close()


class Engine:
    """A started (or connected) engine; made by :func:`session`. Starts lazily: a build whose stages
    are all reused never pays for a cluster."""

    def __init__(self, backend: str, jobs: int, address: str | None, preload: tuple[str, ...] = ()):
        self.backend, self.jobs, self.address, self.preload = backend, jobs, address, preload
        self.started = 0            # how many times an engine was started or connected (tests: 1 per build)
        self._stack = ExitStack()
        self._client: Any = None    # dask
        self._ray_here = False      # ray: this session called ray.init, so it shuts Ray down
        self._pool = local.LocalPool(jobs, preload) if backend == "local" and jobs > 1 else None

    def map(self, fn: Callable[[Any], Any], tasks: list[Any], gpu: Gpu = False, follow: Follow = None) -> Iterator[Any]:
        if not tasks:
            return iter(())
        if self.backend == "local":
            if self._pool is None:
                return local.inline_map(fn, tasks, follow)
            return local.pool_map(fn, tasks, self.jobs, follow, self._pool)
        if self.backend == "dask":
            return dask_engine.dask_map(self._dask_client(), fn, tasks, None if self.address else self.jobs, follow,
                                        gpu)
        ray = self._ray()
        return ray_engine.ray_map(ray, fn, tasks, gpu, retries=not (self._ray_here and not self.address), follow=follow)

    def close(self) -> None:
        try:
            if self._pool is not None:
                self._pool.drop(wait=True)
            self._stack.close()
        finally:
            self._client = None
            if self._ray_here:
                import ray
                ray.shutdown()
                self._ray_here = False

    def _dask_client(self) -> Any:
        if self._client is None:
            self._client = dask_engine.connect(self._stack, self.jobs, self.address, self.preload)
            self.started += 1
        return self._client

    def _ray(self) -> Any:
        if self.address:
            check_reachable("Ray cluster", self.address)
        ray = ray_engine.import_ray(local=not self.address)
        if not ray.is_initialized():   # someone else's ray.init() is theirs to shut down
            ray_engine.init(ray, self.jobs, self.address)
            self._ray_here = True
            self.started += 1
        return ray
