"""``ray``: a Ray cluster at an address, or a local Ray instance started here (on loopback, no dashboard,
no usage stats, no outbound call: :func:`local_ray_env`) and shut down afterwards. Tasks of a GPU
stage ask Ray for one GPU each when the cluster has GPUs. ``pip install ray``.

Each task has its own worker process. On an instance started here, ``max_retries=0`` drops a task the
first time its worker dies; on a cluster at an address Ray's default retries apply (they cover lost
nodes).
"""
from __future__ import annotations

import os
import sys
from collections import deque
from typing import Any, Callable, Iterator

from chorushead.executors.base import LOOPBACK, Follow, Gpu, environ, lost, one_line, queue_follow_ups


# Proxy variables read by `requests` (upper and lower case): see local_ray_env.
PROXY_VARS = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY")


def local_ray_env() -> dict[str, str]:
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
      exempted anyway. Workers get the caller's proxy settings back (see :func:`init`).
    """
    dead_proxy = f"http://{LOOPBACK}:9"
    return {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "http_proxy": dead_proxy, "HTTP_PROXY": dead_proxy, "https_proxy": dead_proxy,
            "HTTPS_PROXY": dead_proxy, "no_proxy": f"localhost,{LOOPBACK},::1", "NO_PROXY": f"localhost,{LOOPBACK},::1"}


def import_ray(local: bool) -> Any:
    # Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when first imported, so a local run imports it inside.
    with environ(local_ray_env() if local else {}):
        try:
            import ray
        except ImportError as e:
            raise ImportError('backend "ray" needs Ray: pip install ray') from e
    return ray


def init(ray: Any, jobs: int, address: str | None) -> None:
    from ray.job_config import JobConfig
    callers_proxies = {k: os.environ.get(k, "") for k in PROXY_VARS}
    with environ(local_ray_env() if not address else {}):
        if address:
            try:
                ray.init(address=address, logging_level="WARNING")
            except (ConnectionError, TimeoutError, OSError) as e:
                raise RuntimeError(f"cannot connect to the Ray cluster at {address}: {one_line(e)}") from None
        else:
            # Ray's workers do not inherit this process's sys.path (dask's and the local pool's do); hand it over
            # so whatever imports here (a source checkout, test helpers) also imports in the workers.
            # Workers get the caller's proxy settings back (an empty value means none to `requests`).
            # address "local": a new instance of our own, even when this machine runs a Ray cluster
            # (without it ray.init joins the newest one, /tmp/ray/ray_current_cluster, and refuses num_cpus)
            ray.init(address="local", num_cpus=jobs, include_dashboard=False, logging_level="WARNING",
                     _node_ip_address=LOOPBACK, dashboard_host=LOOPBACK,
                     job_config=JobConfig(code_search_path=[p for p in sys.path if p],
                                          runtime_env={"env_vars": callers_proxies}))


def ray_map(ray: Any, fn: Callable[[Any], Any], tasks: list[Any], gpu: Gpu, retries: bool,
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
                    lost(task, "its Ray worker died while running it")
                    continue
                yield result
                queue_follow_ups(todo, follow, result)
    finally:
        for ref in pending:   # the caller stopped early: free the session's workers
            ray.cancel(ref)
