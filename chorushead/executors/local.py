"""``local``: tasks in this process (one job) or on worker processes on this machine (the standard
library's ProcessPoolExecutor, forked from a forkserver that preloaded the heavy modules).

A dead worker breaks the whole pool, and every task in flight fails with it, so the culprit is not
known. Tasks that were in flight are retried one at a time in a fresh pool; one that kills its worker
while running alone is the culprit and is dropped. (At most ``jobs`` tasks are in flight, so at most
``jobs`` innocent tasks run twice.)
"""
from __future__ import annotations

import importlib
import os
import sys
from collections import deque
from typing import Any, Callable, Iterator

from chorushead.executors.base import Follow, forkserver, lost, queue_follow_ups, thread_env


def inline_map(fn: Callable[[Any], Any], tasks: list[Any], follow: Follow) -> Iterator[Any]:
    """One job: no pool, ``fn`` runs here (the models it loads stay in this process for every call)."""
    todo: deque[Any] = deque(tasks)
    while todo:
        result = fn(todo.popleft())
        yield result
        queue_follow_ups(todo, follow, result)


def _init_worker(env: dict[str, str], preload: tuple[str, ...]) -> None:
    os.environ.update(env)
    for name in preload:          # a no-op for what the forkserver imported; the rest imports now
        try:
            importlib.import_module(name)
        except ImportError:       # as the forkserver does: the task that needs it will say so
            pass
    threads = env.get("OMP_NUM_THREADS", "")
    if "torch" in sys.modules and threads.isdigit() and int(threads) > 0:
        # preloaded: its pool size was fixed in the server, maybe for another number of jobs
        sys.modules["torch"].set_num_threads(int(threads))


class LocalPool:
    """``jobs`` worker processes on this machine, made when first needed and made anew after one died
    (a dead worker breaks the whole pool). The standard library's ProcessPoolExecutor, not joblib's
    loky: loky retires a worker whose memory grew by 300 MB since its first task (its leak guard), and
    a loaded model (torch + MTCNN) is that much, so every few items a worker re-imported torch and
    reloaded its model: 4 of 8 crops took 12-14 s instead of 2 s in a 2-job build."""

    def __init__(self, jobs: int, preload: tuple[str, ...] = ()):
        self.jobs, self.preload = jobs, preload
        self._pool: Any = None

    def get(self) -> Any:
        if self._pool is None:
            from concurrent.futures import ProcessPoolExecutor
            env = thread_env(self.jobs)
            # Workers fork from the forkserver (never from this process, which runs threads), with the
            # preloaded modules already imported.
            self._pool = ProcessPoolExecutor(self.jobs, mp_context=forkserver(self.preload, env),
                                             initializer=_init_worker, initargs=(env, self.preload))
        return self._pool

    def drop(self, wait: bool = False) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=True)
            self._pool = None


def pool_map(fn: Callable[[Any], Any], tasks: list[Any], jobs: int, follow: Follow = None,
           pool: LocalPool | None = None) -> Iterator[Any]:
    """On ``pool`` (a session's, kept), or on a pool of ``jobs`` workers made for this call."""
    from concurrent.futures import FIRST_COMPLETED, Future, wait
    # Raised for every task in flight when a worker dies; other errors (a task that cannot be
    # unpickled in the worker...) are not crashes and propagate.
    from concurrent.futures.process import BrokenProcessPool

    own = pool is None
    pool = pool or LocalPool(jobs)
    todo: deque[Any] = deque(tasks)
    suspects: deque[Any] = deque()        # in flight when a pool broke: retried one at a time
    running: dict[Future, tuple[Any, bool]] = {}   # future -> (task, ran alone)
    try:
        while todo or suspects or running:
            # While suspects remain, nothing runs beside them, so a suspect that breaks the pool again is
            # certainly the culprit.
            if suspects:
                if not running:
                    task = suspects.popleft()
                    running[pool.get().submit(fn, task)] = (task, True)
            else:
                while todo and len(running) < pool.jobs:   # bounded, so a crash implicates <= jobs tasks
                    task = todo.popleft()
                    running[pool.get().submit(fn, task)] = (task, pool.jobs == 1)
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                task, alone = running.pop(fut)
                try:
                    result = fut.result()
                except BrokenProcessPool:
                    pool.drop()                   # the next submit makes a fresh pool
                    if alone:
                        lost(task, "its worker process died while running it (local pool)")
                    else:
                        suspects.append(task)
                    continue
                yield result
                queue_follow_ups(todo, follow, result)
    finally:
        for fut in running:   # the caller stopped early or fn raised: do not start what is queued
            fut.cancel()
        if own:
            pool.drop(wait=True)
