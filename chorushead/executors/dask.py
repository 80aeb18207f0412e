"""``dask``: a ``distributed`` scheduler at an address, or a LocalCluster of one-thread worker processes
started here (on loopback) and closed afterwards. ``pip install "dask[distributed]"``.

On a cluster started here each worker is given one task at a time, so a death implicates nobody
else, and ``allowed-failures=0`` drops that task the first time its worker dies. A cluster at an
address gets every task at once and applies its own retry policy (Dask's default: a task that was
running on 4 workers that died is failed).

GPU stages get a pool of their own where the cluster has one: when some workers advertise a ``GPU``
resource (``dask worker SCHEDULER --resources GPU=1`` on the GPU machines), a GPU stage's task asks
for ``GPU=1`` and runs only there, one per GPU, while the CPU stages run anywhere.
"""
from __future__ import annotations

from collections import deque
from contextlib import ExitStack
from typing import Any, Callable, Iterator

from chorushead.executors.base import (CONNECT_TIMEOUT, LOOPBACK, Follow, Gpu, check_reachable, forkserver, label,
                                       lost, one_line, queue_follow_ups, thread_env)


def connect(stack: ExitStack, jobs: int, address: str | None, preload: tuple[str, ...] = ()) -> Any:
    """A Client of the scheduler at ``address``, or of a LocalCluster of ``jobs`` workers started
    here; both closed by ``stack``."""
    try:
        import dask
        from distributed import Client, LocalCluster
    except ImportError as e:
        raise ImportError('backend "dask" needs Dask\'s distributed scheduler: '
                          'pip install "dask[distributed]"') from e
    if address:
        check_reachable("Dask scheduler", address)
        try:
            return stack.enter_context(Client(address, timeout=CONNECT_TIMEOUT))
        except (OSError, TimeoutError) as e:   # reachable but not a Dask scheduler, or it did not answer
            raise RuntimeError(f"cannot connect to the Dask scheduler at {address}: {one_line(e)}") from None
    # Workers fork from our forkserver (with the preloaded modules, Dask's own among them).
    forkserver(("distributed",) + preload, thread_env(jobs))
    # allowed-failures: read by the scheduler when it is created (it runs in this process), see module
    # docstring. The multiprocessing method is read by each nanny when it starts its worker; the rest
    # travels to the workers with the nanny's config. profile: the worker's sampling profiler walks
    # every thread's stack each 10 ms, holding the GIL: crop (Python per frame, three threads) ran
    # ~40 % slower on a Dask worker than on a local one.
    # worker.preload: each worker imports them as it starts (a no-op for what the forkserver has).
    with dask.config.set({"distributed.scheduler.allowed-failures": 0,
                          "distributed.worker.preload": list(preload),
                          "distributed.worker.multiprocessing-method": "forkserver",
                          "distributed.worker.profile.enabled": False}):
        # host: scheduler, workers and nannies listen on loopback only (and Dask does not look
        # up this machine's public address, which it does by a UDP connect to 8.8.8.8).
        cluster = stack.enter_context(LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True,
                                                   host=LOOPBACK, dashboard_address=None))
    return stack.enter_context(Client(cluster))


def gpu_workers(client: Any) -> int:
    """How many of the cluster's workers advertise a ``GPU`` resource."""
    workers = client.scheduler_info().get("workers", {})
    return sum(1 for w in workers.values() if (w.get("resources") or {}).get("GPU", 0) >= 1)


def dask_map(client: Any, fn: Callable[[Any], Any], tasks: list[Any], window: int | None,
              follow: Follow = None, gpu: Gpu = False) -> Iterator[Any]:
    """At most ``window`` tasks in flight. On a cluster started here window = its worker count: one
    task per worker at a time (Dask would otherwise queue several on one worker, and a worker's death
    fails every task it holds). A scheduler at an address (window None) gets them all (it queues them,
    and an adaptive cluster scales on the queue). ``gpu(task)``: the task is a GPU stage's; it asks for
    a GPU worker when the cluster has any (see the module doc)."""
    import uuid

    from distributed import KilledWorker, as_completed
    name = getattr(fn, "__name__", "task")
    run = uuid.uuid4().hex[:8]       # keys unique across calls on one session's cluster
    todo: deque[Any] = deque(tasks)
    in_flight: dict[Any, Any] = {}
    finished = as_completed()
    submitted = 0
    needs_gpu = gpu if callable(gpu) else (lambda _task: gpu)
    on_gpu = {"GPU": 1} if gpu and gpu_workers(client) else None

    def fill() -> None:
        nonlocal submitted
        while todo and (window is None or len(in_flight) < window):
            task = todo.popleft()
            # A key that names the item makes Dask's own logs ("task ... marked as failed") readable too.
            fut = client.submit(fn, task, key=f"{name}-{run}-{submitted}-{label(task)}", pure=False,
                                resources=on_gpu if on_gpu and needs_gpu(task) else None)
            submitted += 1
            in_flight[fut] = task
            finished.add(fut)

    fill()
    try:
        for fut in finished:
            task = in_flight.pop(fut)
            try:
                result = fut.result()
            except KilledWorker:
                lost(task, "its Dask worker died while running it")
                fill()
                continue
            finally:
                fut.release()   # drop the result from the worker's memory once we hold it
            yield result
            queue_follow_ups(todo, follow, result)
            fill()
    finally:
        for fut in in_flight:   # the caller stopped early: the session's workers must not keep at it
            fut.cancel()
