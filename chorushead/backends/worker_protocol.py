"""The worker side of the JSON-lines protocol (the parent side is :mod:`chorushead.backends.worker`).

Shared by every ``*_worker.py`` script. Those run under other interpreters (Spleeter's venv, EMOCA's
Python 3.8 environment, MediaPipe's venv) where chorushead is not installed, so a worker imports this
file as a top-level module from its own folder (``import worker_protocol`` inside ``main``, while
that folder is still ``sys.path[0]``). Standard library only, Python 3.8 syntax.

Protocol: the first line on the real stdout is ``{"ready": true, "python": ..., ...}`` or
``{"ready": false, "missing": ..., "error": ...}`` (exit 3 when an asset is missing, 4 otherwise); then
each request line gets exactly one reply line, ``{"ok": true, ..., "seconds": s}`` or
``{"ok": false, "error": ..., "traceback": ...}``. One bad request never kills the worker.
"""
import json
import os
import sys
import time
import traceback


def isolate(script):
    """Drop the script's folder from ``sys.path`` (our adapters there, e.g. ``spleeter.py``, would shadow
    the real packages) and return the protocol channel: the real stdout. Whatever the libraries print
    goes to stderr from now on, so the channel stays clean."""
    here = os.path.dirname(os.path.abspath(script))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    proto = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return proto


def send(proto, message):
    proto.write(json.dumps(message) + "\n")
    proto.flush()


def _error(e):
    return "%s: %s" % (type(e).__name__, e)


def start(proto, make_runner, describe, missing=lambda e: None):
    """Build the runner and announce it. ``describe(runner)`` adds fields to the ready line;
    ``missing(e)`` says what asset a construction error means is absent (None: not a missing asset)."""
    try:
        runner = make_runner()
    except Exception as e:
        what = missing(e)
        if what is not None:
            send(proto, {"ready": False, "missing": what, "error": str(e) or type(e).__name__})
            sys.exit(3)
        send(proto, {"ready": False, "missing": False, "error": _error(e),
                     "traceback": traceback.format_exc()[-2000:]})
        sys.exit(4)
    ready = {"ready": True, "python": sys.version.split()[0]}
    ready.update(describe(runner))
    send(proto, ready)
    return runner


def serve(handle, inp, proto):
    """One reply per request line: ``handle(job) -> dict`` of reply fields, or an error reply."""
    for line in inp:
        line = line.strip()
        if not line:
            continue
        t0 = time.time()
        try:
            reply = {"ok": True}
            reply.update(handle(json.loads(line)))
            reply["seconds"] = time.time() - t0
        except Exception as e:   # one bad item must not kill the worker
            reply = {"ok": False, "error": _error(e), "traceback": traceback.format_exc()[-2000:]}
        send(proto, reply)
