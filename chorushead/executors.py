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

Backends:

- ``local``: worker processes on this machine (the standard library's ProcessPoolExecutor).
- ``dask``: a ``distributed`` scheduler at ``address``, or a LocalCluster of ``jobs`` one-thread
  worker processes started here and closed afterwards. ``pip install "dask[distributed]"``.
- ``ray``: a Ray cluster at ``address``, or a local Ray instance with ``jobs`` CPUs started here and
  shut down afterwards. Tasks of a GPU stage ask Ray for one GPU each when the cluster has GPUs.
  ``pip install ray``.

Nothing leaves this machine when the engine is started here: the LocalCluster binds 127.0.0.1 (its
scheduler, workers and nannies), and the local Ray instance runs on 127.0.0.1 with no dashboard and
no usage stats (see :func:`_local_ray_env` for the outbound calls Ray 2.60 makes otherwise).

A worker process that dies mid-task (segfault, OOM killer, ``kill -9``) costs that task only: it is
not yielded, a :class:`WorkerLost` warning names it, and every other task still completes. For the
runner this means the item has no new record, so it stays pending and the next build redoes it. How
each engine gets there:

- local: a dead worker breaks the whole pool, and every task in flight fails with it, so the
  culprit is not known. Tasks that were in flight are retried one at a time in a fresh pool; one that
  kills its worker while running alone is the culprit and is dropped. (At most ``jobs`` tasks are in
  flight, so at most ``jobs`` innocent tasks run twice.)
- dask: on a cluster started here, each worker is given one task at a time, so a death implicates
  nobody else, and ``allowed-failures=0`` drops that task the first time its worker dies. A cluster
  at ``address`` gets every task at once and applies its own retry policy (Dask's default: a task
  that was running on 4 workers that died is failed).
- ray: each task has its own worker process. On an instance started here, ``max_retries=0`` drops a
  task the first time its worker dies; on a cluster at ``address`` Ray's default retries apply (they
  cover lost nodes).

An exception raised by ``fn`` itself is not a crash and propagates, as it would in-process (the
runner's ``run_task`` never raises; anything that does is a bug or a broken worker environment).
"""
from __future__ import annotations

import importlib
import os
import sys
import warnings
from collections import deque
from contextlib import ExitStack, contextmanager
from typing import Any, Callable, Iterable, Iterator, Optional, Union

BACKENDS = ("local", "dask", "ray")
LOOPBACK = "127.0.0.1"   # where engines started here listen and talk (see the module docstring)
# How long to wait for a scheduler / cluster at an address before saying it cannot be reached (Dask's own
# default is 30 s, followed by a long traceback; Ray retries for a minute or more).
CONNECT_TIMEOUT = 10.0

# Native thread pools each worker may use, so `jobs` workers do not each grab every core.
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
                "VECLIB_MAXIMUM_THREADS", "NUMBA_NUM_THREADS", "NUMEXPR_NUM_THREADS")


class WorkerLost(RuntimeWarning):
    """A task's worker process died while running it; the task was not done and gives no result."""


# Whether a task needs a GPU: one answer for all tasks, or asked per task (a build streams many stages).
Gpu = Union[bool, Callable[[Any], bool]]
# follow(result) -> the tasks that result makes possible (queued as soon as it is back).
Follow = Optional[Callable[[Any], Iterable[Any]]]


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
        return _local(fn, tasks, jobs, follow)
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
        self._pool = _LocalPool(jobs, preload) if backend == "local" and jobs > 1 else None

    def map(self, fn: Callable[[Any], Any], tasks: list[Any], gpu: Gpu = False, follow: Follow = None) -> Iterator[Any]:
        if not tasks:
            return iter(())
        if self.backend == "local":
            if self._pool is None:
                return _inline(fn, tasks, follow)
            return _local(fn, tasks, self.jobs, follow, self._pool)
        if self.backend == "dask":
            return _dask_map(self._dask_client(), fn, tasks, None if self.address else self.jobs, follow)
        ray = self._ray()
        return _ray_map(ray, fn, tasks, gpu, retries=not (self._ray_here and not self.address), follow=follow)

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
            self._client = _dask_connect(self._stack, self.jobs, self.address, self.preload)
            self.started += 1
        return self._client

    def _ray(self) -> Any:
        if self.address:
            check_reachable("Ray cluster", self.address)
        ray = _ray_import(local=not self.address)
        if not ray.is_initialized():   # someone else's ray.init() is theirs to shut down
            _ray_init(ray, self.jobs, self.address)
            self._ray_here = True
            self.started += 1
        return ray


# ----------------------------------------------------------------------------- helpers
def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of a ``[scheme://]host:port`` address; None when it names no TCP endpoint
    ("auto", "inproc://...", a bare host)."""
    rest = address.split("://", 1)[1] if "://" in address else address
    if "://" in address and address.split("://", 1)[0] not in ("tcp", "tls", "ray", "ws", "wss"):
        return None
    rest = rest.split("/", 1)[0]
    if rest.startswith("["):                          # [ipv6]:port
        host, _, port = rest[1:].partition("]:")
    else:
        host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        return None
    return host, int(port)


def check_reachable(what: str, address: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """Raise RuntimeError (one line, naming ``address``) unless a TCP connection to it opens within
    ``timeout`` seconds: a scheduler or cluster that is not there fails the build at once, instead of
    after Dask's 30 s wait and a 100-line traceback (or Ray's minute of retries)."""
    import socket
    hp = _host_port(address)
    if hp is None:
        return
    try:
        with socket.create_connection(hp, timeout=timeout):
            pass
    except OSError as e:
        why = "timed out" if isinstance(e, (socket.timeout, TimeoutError)) else (e.strerror or str(e))
        raise RuntimeError(f"cannot reach the {what} at {address}: {why} (after at most {timeout:g} s); "
                           f"is it running and is the address right?") from None


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]

def _label(task: Any) -> str:
    """How a warning names a task: the runner's ``Task`` as ``stage:item``, anything else by repr."""
    item_id = getattr(getattr(task, "item", None), "id", None)
    if item_id is not None:
        stage = getattr(task, "stage", None)
        return f"{stage}:{item_id}" if stage else str(item_id)
    text = repr(task)
    return text if len(text) <= 80 else text[:77] + "..."


def _lost(task: Any, how: str) -> None:
    warnings.warn(f"{_label(task)}: {how}; it was not done and stays pending (a rerun retries it)",
                  WorkerLost, stacklevel=3)


def _queue_follow_ups(todo: deque, follow: Follow, result: Any) -> None:
    """Called once the caller has taken ``result`` (it resumes the generator after handling it, e.g.
    appending the record ``follow`` then reads), so follow-ups see what the caller made of it. They go
    to the FRONT of the queue: an item's next stage runs before the next new item starts, so items
    finish one after another (their files still in the page cache) instead of every item's first
    stage running before any second stage, which on a large batch would be a stage barrier again."""
    if follow is not None:
        todo.extendleft(reversed(list(follow(result))))


# ----------------------------------------------------------------------------- in this process
def _inline(fn: Callable[[Any], Any], tasks: list[Any], follow: Follow) -> Iterator[Any]:
    """One job: no pool, ``fn`` runs here (the models it loads stay in this process for every call)."""
    todo: deque[Any] = deque(tasks)
    while todo:
        result = fn(todo.popleft())
        yield result
        _queue_follow_ups(todo, follow, result)


# ----------------------------------------------------------------------------- local processes
def _thread_env(jobs: int) -> dict[str, str]:
    """Native thread pools per worker, so ``jobs`` workers do not each grab every core (a value the
    user set wins)."""
    threads = str(max(1, (os.cpu_count() or 1) // jobs))
    return {var: os.environ.get(var, threads) for var in _THREAD_VARS}


def _forkserver(preload: tuple[str, ...], env: dict[str, str]) -> Any:
    """multiprocessing's forkserver context, its server started (if it is not yet) with ``preload``
    imported and ``env`` set: processes of this context fork from it, with those modules in memory
    and those thread limits (native libraries read them when first loaded, i.e. in the server). A
    forked worker still gets this process's sys.path and working folder (multiprocessing sends them)."""
    import multiprocessing
    from multiprocessing import forkserver
    _check_main_importable()
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(list(dict.fromkeys(("chorushead.executors",) + preload)))
    with _environ(env):
        forkserver.ensure_running()   # a no-op once running
    return ctx


def _check_main_importable() -> None:
    """A worker process re-runs the main script's module (multiprocessing does, to find functions
    defined there); a script read from standard input has no file to re-run, and every worker would
    die at start. Say so instead."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if getattr(main, "__spec__", None) is None and path and not os.path.exists(path):
        raise RuntimeError(f"worker processes started here cannot start from a script read from {path!r}: "
                           "save it to a file and run that, or use the local backend with jobs=1")


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


class _LocalPool:
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
            env = _thread_env(self.jobs)
            # Workers fork from the forkserver (never from this process, which runs threads), with the
            # preloaded modules already imported.
            self._pool = ProcessPoolExecutor(self.jobs, mp_context=_forkserver(self.preload, env),
                                             initializer=_init_worker, initargs=(env, self.preload))
        return self._pool

    def drop(self, wait: bool = False) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=True)
            self._pool = None


def _local(fn: Callable[[Any], Any], tasks: list[Any], jobs: int, follow: Follow = None,
           pool: _LocalPool | None = None) -> Iterator[Any]:
    """On ``pool`` (a session's, kept), or on a pool of ``jobs`` workers made for this call."""
    from concurrent.futures import FIRST_COMPLETED, Future, wait
    # Raised for every task in flight when a worker dies; other errors (a task that cannot be
    # unpickled in the worker...) are not crashes and propagate.
    from concurrent.futures.process import BrokenProcessPool

    own = pool is None
    pool = pool or _LocalPool(jobs)
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
                        _lost(task, "its worker process died while running it (local pool)")
                    else:
                        suspects.append(task)
                    continue
                yield result
                _queue_follow_ups(todo, follow, result)
    finally:
        for fut in running:   # the caller stopped early or fn raised: do not start what is queued
            fut.cancel()
        if own:
            pool.drop(wait=True)


# ----------------------------------------------------------------------------- dask
def _dask_connect(stack: ExitStack, jobs: int, address: str | None, preload: tuple[str, ...] = ()) -> Any:
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
            raise RuntimeError(f"cannot connect to the Dask scheduler at {address}: {_one_line(e)}") from None
    # Workers fork from our forkserver (with the preloaded modules, Dask's own among them).
    _forkserver(("distributed",) + preload, _thread_env(jobs))
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


def _dask_map(client: Any, fn: Callable[[Any], Any], tasks: list[Any], window: int | None,
              follow: Follow = None) -> Iterator[Any]:
    """At most ``window`` tasks in flight. On a cluster started here window = its worker count: one
    task per worker at a time (Dask would otherwise queue several on one worker, and a worker's death
    fails every task it holds). A scheduler at an address (window None) gets them all (it queues them,
    and an adaptive cluster scales on the queue)."""
    import uuid

    from distributed import KilledWorker, as_completed
    name = getattr(fn, "__name__", "task")
    run = uuid.uuid4().hex[:8]       # keys unique across calls on one session's cluster
    todo: deque[Any] = deque(tasks)
    in_flight: dict[Any, Any] = {}
    finished = as_completed()
    submitted = 0

    def fill() -> None:
        nonlocal submitted
        while todo and (window is None or len(in_flight) < window):
            task = todo.popleft()
            # A key that names the item makes Dask's own logs ("task ... marked as failed") readable too.
            fut = client.submit(fn, task, key=f"{name}-{run}-{submitted}-{_label(task)}", pure=False)
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
                _lost(task, "its Dask worker died while running it")
                fill()
                continue
            finally:
                fut.release()   # drop the result from the worker's memory once we hold it
            yield result
            _queue_follow_ups(todo, follow, result)
            fill()
    finally:
        for fut in in_flight:   # the caller stopped early: the session's workers must not keep at it
            fut.cancel()


# ----------------------------------------------------------------------------- ray
# Proxy variables read by `requests` (upper and lower case): see _local_ray_env.
_PROXY_VARS = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY")


def _local_ray_env() -> dict[str, str]:
    """Environment of a Ray instance started here, so that it makes no outbound connection.

    What Ray 2.60 does otherwise (observed with strace, read in its source):

    - usage stats (reported to Anyscale): ``ray.init()`` turns them off itself for a local instance
      of a release wheel; ``RAY_USAGE_STATS_ENABLED=0`` keeps them off whatever the version or
      ``~/.ray/config.json`` says.
    - the node address is guessed by a UDP connect to 8.8.8.8 (``services.get_node_ip_address``),
      and then every Ray process listens and talks on the machine's public address. An explicit
      ``_node_ip_address="127.0.0.1"`` is routed through the same guess (it is "localhost");
      ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` makes Ray take loopback instead (on Linux that
      variable does nothing else). Ray reads it once, when ``ray`` is first imported.
    - the cloud metadata address 169.254.169.254 and metadata.google.internal, asked by the usage
      stats module of the API server process for the cloud provider, with usage stats off too and
      with ``include_dashboard=False`` (``UsageStatsHead.run`` calls ``get_cluster_config_to_report``
      before it checks). Those requests go through ``requests``, so a proxy at a closed loopback port
      (9, discard) makes them fail at once without leaving the machine. gRPC, which Ray's processes
      talk over, ignores proxy variables (Ray sets ``grpc.enable_http_proxy=0``) and loopback is
      exempted anyway. Workers get the caller's proxy settings back (see ``_ray``).
    """
    dead_proxy = f"http://{LOOPBACK}:9"
    return {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "http_proxy": dead_proxy, "HTTP_PROXY": dead_proxy, "https_proxy": dead_proxy,
            "HTTPS_PROXY": dead_proxy, "no_proxy": f"localhost,{LOOPBACK},::1", "NO_PROXY": f"localhost,{LOOPBACK},::1"}


@contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the processes started inside, then put the old values back."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _ray_import(local: bool) -> Any:
    # Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when first imported, so a local run imports it inside.
    with _environ(_local_ray_env() if local else {}):
        try:
            import ray
        except ImportError as e:
            raise ImportError('backend "ray" needs Ray: pip install ray') from e
    return ray


def _ray_init(ray: Any, jobs: int, address: str | None) -> None:
    from ray.job_config import JobConfig
    callers_proxies = {k: os.environ.get(k, "") for k in _PROXY_VARS}
    with _environ(_local_ray_env() if not address else {}):
        if address:
            try:
                ray.init(address=address, logging_level="WARNING")
            except (ConnectionError, TimeoutError, OSError) as e:
                raise RuntimeError(f"cannot connect to the Ray cluster at {address}: {_one_line(e)}") from None
        else:
            # Ray's workers do not inherit this process's sys.path (dask's and the local pool's do); hand it over
            # so whatever imports here (a source checkout, test helpers) also imports in the workers.
            # Workers get the caller's proxy settings back (an empty value means none to `requests`).
            ray.init(num_cpus=jobs, include_dashboard=False, logging_level="WARNING",
                     _node_ip_address=LOOPBACK, dashboard_host=LOOPBACK,
                     job_config=JobConfig(code_search_path=[p for p in sys.path if p],
                                          runtime_env={"env_vars": callers_proxies}))


def _ray_map(ray: Any, fn: Callable[[Any], Any], tasks: list[Any], gpu: Gpu, retries: bool,
             follow: Follow = None) -> Iterator[Any]:
    """``retries`` off on an instance started here: a crash is the item's doing, retrying only repeats it
    (a cluster at an address keeps Ray's default retries: they cover lost nodes). As many tasks in
    flight as the cluster has CPUs (Ray runs what it is given in submission order, so follow-ups kept
    here can still go first)."""
    from ray.exceptions import NodeDiedError, ObjectLostError, OutOfMemoryError, WorkerCrashedError
    died = (WorkerCrashedError, OutOfMemoryError, NodeDiedError, ObjectLostError)
    options: dict[str, Any] = {"num_cpus": 1}
    if not retries:
        options["max_retries"] = 0
    remote = ray.remote(**options)(fn)
    needs_gpu = gpu if callable(gpu) else (lambda _task: gpu)
    resources = ray.cluster_resources()
    # A GPU stage batches inside its task, on a GPU of its own (when the cluster has one).
    on_gpu = remote.options(num_gpus=1) if resources.get("GPU", 0) >= 1 else remote
    todo: deque[Any] = deque(tasks)
    refs: dict[Any, Any] = {}
    pending: list[Any] = []
    window = max(1, int(resources.get("CPU", 1)))

    def submit() -> None:
        while todo and len(pending) < window:
            task = todo.popleft()
            ref = (on_gpu if needs_gpu(task) else remote).remote(task)
            refs[ref] = task
            pending.append(ref)

    try:
        while True:
            submit()
            if not pending:
                return
            done, pending[:] = ray.wait(pending, num_returns=1)
            for ref in done:
                task = refs.pop(ref)
                try:
                    result = ray.get(ref)
                except died:
                    _lost(task, "its Ray worker died while running it")
                    continue
                yield result
                _queue_follow_ups(todo, follow, result)
    finally:
        for ref in pending:   # the caller stopped early: free the session's workers
            ray.cancel(ref)
