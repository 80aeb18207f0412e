"""The parent's side of the JSON-lines worker protocol (chorushead.backends.worker), against tiny
worker scripts run by this interpreter."""
import sys
import textwrap
import time

import pytest

from chorushead.backends.worker import JsonLinesWorker
from chorushead.core.errors import StageError


def worker(script: str, **kw) -> JsonLinesWorker:
    return JsonLinesWorker([sys.executable, "-c", textwrap.dedent(script)], name="fake", **kw)


def test_lines_that_arrive_together_are_all_read():
    # Noise and the ready line in one write, then each reply in one write with noise before it: a
    # buffered readline() takes both lines off the pipe at once, and waiting on the pipe for the
    # second line stalled until the timeout.
    w = worker("""
        import json, sys
        sys.stdout.write("library noise\\n" + json.dumps({"ready": True}) + "\\n"); sys.stdout.flush()
        for line in sys.stdin:
            job = json.loads(line)
            sys.stdout.write("more noise\\n" + json.dumps({"ok": True, "twice": 2 * job["x"]}) + "\\n")
            sys.stdout.flush()
    """, start_timeout=20)
    try:
        assert w.ready == {"ready": True}
        t0 = time.monotonic()
        replies = [w.request({"x": x}, timeout=20)["twice"] for x in range(3)]
        assert replies == [0, 2, 4]
        assert time.monotonic() - t0 < 10
    finally:
        w.close()


def test_a_last_line_without_newline_is_read():
    w = worker("""
        import sys
        sys.stdout.write('{"ready": false, "error": "no model"}'); sys.stdout.flush()
    """, start_timeout=20)
    assert w.ready == {"ready": False, "error": "no model"}
    w.close()


def test_a_worker_that_dies_mid_request_is_reported_with_its_log():
    w = worker("""
        import sys
        print('{"ready": true}', flush=True)
        sys.stdin.readline()
        sys.stderr.write("out of memory, giving up\\n")
        sys.exit(7)
    """, start_timeout=20)
    with pytest.raises(StageError, match=r"(?s)fake worker died \(exit code 7\).*out of memory"):
        w.request({"x": 1}, timeout=20)
    w.close()


def test_a_silent_worker_times_out_and_is_stopped():
    w = worker("""
        import sys, time
        print('{"ready": true}', flush=True)
        sys.stdin.readline()
        time.sleep(60)
    """, start_timeout=20)
    t0 = time.monotonic()
    with pytest.raises(StageError, match="gave no answer in 1 s"):
        w.request({"x": 1}, timeout=1)
    assert time.monotonic() - t0 < 10
    assert w.proc.poll() is not None     # killed, not left running
