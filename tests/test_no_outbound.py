"""Nothing leaves this machine: a local Ray and a local Dask cluster, and a build on each, make no
connection to any address but loopback.

Two layers, both needed:

- a guard (``sitecustomize.py`` on PYTHONPATH, so every Python process of the run loads it: the
  driver, Ray's workers and its API-server process, Dask's scheduler, nannies and workers) records
  each non-loopback connect/sendto/name lookup to a log and refuses it. The log is the evidence that
  nothing even TRIED. The guard sees Python only;
- a network namespace that has nothing but loopback (``unshare --net``): the guarantee, covering
  Ray's C++ processes too (raylet, GCS), where no Python hook reaches.

The Ray 2.60 calls this caught before the executors were fixed: TCP to 169.254.169.254:80 and a
lookup of metadata.google.internal (the API server asking which cloud it runs on), a UDP connect to
8.8.8.8:53 (the node-address guess), then every Ray process talking over the host's public address.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from test_executors import videos  # noqa: F401  (the fixture: three short sample videos)

ROOT = Path(__file__).resolve().parents[1]
HAVE_DASK = importlib.util.find_spec("distributed") is not None
HAVE_RAY = importlib.util.find_spec("ray") is not None

GUARD = textwrap.dedent('''
    """Test guard: record and refuse every connection to a non-loopback address (see test_no_outbound)."""
    import ipaddress, json, os, socket, sys

    _LOG = os.environ["NO_OUTBOUND_LOG"]
    _LOCAL_NAMES = {"localhost", "", socket.gethostname()}


    def _loopback(host):
        try:
            return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
        except ValueError:
            return str(host).lower() in _LOCAL_NAMES   # a name: only this machine's own resolve locally


    def _record(call, address):
        with open(_LOG, "a") as f:   # O_APPEND: lines from many processes do not interleave
            f.write(json.dumps({"pid": os.getpid(), "call": call, "address": repr(address),
                                "argv0": sys.argv[0] if sys.argv else ""}) + "\\n")


    def _check(sock, call, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple) \\
                and not _loopback(address[0]):
            _record(call, address)
            raise OSError(101, f"no_outbound guard: {call} to {address!r} refused")


    _connect, _connect_ex, _sendto = socket.socket.connect, socket.socket.connect_ex, socket.socket.sendto
    _getaddrinfo = socket.getaddrinfo


    def connect(self, address):
        _check(self, "connect", address)
        return _connect(self, address)


    def connect_ex(self, address):
        _check(self, "connect_ex", address)
        return _connect_ex(self, address)


    def sendto(self, data, *args):
        _check(self, "sendto", args[-1])
        return _sendto(self, data, *args)


    def getaddrinfo(host, *args, **kwargs):
        if host is not None and not _loopback(host):
            try:
                ipaddress.ip_address(str(host).split("%")[0])
            except ValueError:   # a name that is not this machine's: resolving it asks a DNS server
                _record("getaddrinfo", host)
                raise socket.gaierror(socket.EAI_NONAME, f"no_outbound guard: lookup of {host!r} refused")
        return _getaddrinfo(host, *args, **kwargs)


    socket.socket.connect, socket.socket.connect_ex, socket.socket.sendto = connect, connect_ex, sendto
    socket.getaddrinfo = getaddrinfo
    connect.no_outbound_guard = True
''')

PROBE = textwrap.dedent('''
    """Functions the workers run (importable by every engine: this folder is on PYTHONPATH)."""
    import socket


    def guarded(x):
        """True when the guard is active in the worker that runs this."""
        return x, getattr(socket.socket.connect, "no_outbound_guard", False)
''')

CHILD = textwrap.dedent('''
    import json, socket, sys
    from pathlib import Path

    from chorushead.executors import parallel_map
    from chorushead.runner import Pipeline, build
    from outbound_probe import guarded

    def main():
        videos, out = Path(sys.argv[1]), Path(sys.argv[2])
        # The guard's own self-test: one refused attempt, which the parent expects to find in the log.
        try:
            socket.create_connection(("203.0.113.7", 80), timeout=2)
            sys.exit("the control connection to 203.0.113.7 was not refused")
        except OSError:
            pass
        report = {}
        for backend in sys.argv[3:]:
            results = sorted(parallel_map(guarded, range(4), jobs=2, backend=backend))
            [summary] = build(videos, out / backend, Pipeline.load(), stages=["ingest"], jobs=2,
                              backend=backend, progress=False, log=lambda _: None)
            report[backend] = {"results": results, "done": summary.done, "failed": summary.failed,
                               "failures": summary.failures}
        print("REPORT " + json.dumps(report))

    if __name__ == "__main__":
        main()
''')


def _netns_prefix() -> list[str] | None:
    """The command prefix that runs a program in a new network namespace with only loopback up."""
    if not (shutil.which("unshare") and shutil.which("ip")):
        return None
    prefix = ["unshare", "--net", "--map-root-user", "sh", "-c", 'ip link set lo up && exec "$@"', "netns"]
    try:
        ok = subprocess.run(prefix + ["true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    return prefix if ok else None


@pytest.mark.slow
@pytest.mark.skipif(not (HAVE_DASK and HAVE_RAY), reason='needs both dask.distributed and ray '
                    '(pip install "dask[distributed]" ray)')
def test_local_ray_and_dask_make_no_outbound_connection(videos, tmp_path):   # noqa: F811
    guard_dir = tmp_path / "guard"
    guard_dir.mkdir()
    (guard_dir / "sitecustomize.py").write_text(GUARD)
    (guard_dir / "outbound_probe.py").write_text(PROBE)
    (guard_dir / "child.py").write_text(CHILD)
    log = tmp_path / "outbound.jsonl"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env |= {"PYTHONPATH": os.pathsep.join([str(guard_dir), str(ROOT)]), "NO_OUTBOUND_LOG": str(log),
            "RAY_AUTH_MODE": "disabled"}   # a throwaway local instance needs no token
    prefix = _netns_prefix()
    if prefix is None:   # the guard alone still shows whether anything tried; say so in the output
        print("no network namespace available (unshare/ip): running with the socket guard only")
    cmd = (prefix or []) + [sys.executable, str(guard_dir / "child.py"), str(videos), str(tmp_path / "out"),
                            "dask", "ray"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout.split("REPORT ", 1)[1])
    for backend, r in report.items():
        assert r["results"] == [[x, True] for x in range(4)], (backend, r)   # the guard ran in the workers
        assert r["done"] == 3 and r["failed"] == 0, (backend, r["failures"])
    attempts = [json.loads(line) for line in log.read_text().splitlines()]
    control = [a for a in attempts if "203.0.113.7" in a["address"]]
    assert len(control) == 1, "the guard did not record its own control attempt"
    others = [a for a in attempts if a not in control]
    assert others == [], f"{len(others)} outbound attempt(s): {others[:5]}"
