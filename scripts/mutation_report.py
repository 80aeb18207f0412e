"""Mutation scores of every module in scripts/mutation.d/, and of each package they make up.

    python scripts/mutation_report.py                   # every module, one after the other
    python scripts/mutation_report.py losses metrics    # some of them
    python scripts/mutation_report.py --jobs 2 --json /tmp/mutation.json

Each module runs through ``scripts/mutation.sh MODULE SCRATCH`` (a scratch copy per module under
``--scratch``, default a new temp folder; the checkout is never touched). A package's score is killed /
all over its modules' mutants, the same count as a module's ("no tests" and survivors are not killed).
On 2 cores the whole set takes about 40 minutes with ``--jobs 1``; docs/mutation-survivors.md has
each module's time and its triaged survivors.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "scripts" / "mutation.d"
# the packages the score is reported for (issue 23): a file belongs to the longest prefix it starts with
PACKAGES = ("chorushead/core/", "chorushead/stages/", "chorushead/runner.py", "chorushead/review/", "pachorus/")
SCORE = re.compile(r"^(\S+): (\d+) of (\d+) mutants killed")


def files_of(module: str) -> list[str]:
    """The files a module's config mutates (its ``only=`` line, quoted or not)."""
    for line in (CONFIGS / module).read_text().splitlines():
        if line.startswith("only="):
            return line.split("=", 1)[1].split("#")[0].strip().strip("\"'").split()
    raise SystemExit(f"scripts/mutation.d/{module}: no only= line")


def package_of(module: str) -> str:
    found = {max((p for p in PACKAGES if f.startswith(p)), key=len, default="other") for f in files_of(module)}
    if len(found) != 1:
        raise SystemExit(f"scripts/mutation.d/{module}: its files span packages {sorted(found)}")
    return found.pop()


def run(module: str, scratch: Path, children: int) -> tuple[int, int, float]:
    """(killed, total, seconds) of one module."""
    t0 = time.monotonic()
    out = subprocess.run(["bash", str(ROOT / "scripts" / "mutation.sh"), module, str(scratch / module)],
                         capture_output=True, text=True, env={**os.environ, "MUTMUT_CHILDREN": str(children)})
    for line in out.stdout.splitlines():
        if m := SCORE.match(line):
            return int(m[2]), int(m[3]), time.monotonic() - t0
    raise RuntimeError(f"{module}: no score (see {scratch / module}/mutmut-run.log)\n{out.stdout[-500:]}{out.stderr[-500:]}")


def main(argv: list[str] | None = None) -> int:
    known = sorted(p.name for p in CONFIGS.iterdir() if p.is_file())
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("modules", nargs="*", help=f"default: all ({', '.join(known)})")
    ap.add_argument("--jobs", type=int, default=1, help="modules at once (each runs mutmut with --children)")
    ap.add_argument("--children", type=int, default=2, help="mutmut's --max-children per module")
    ap.add_argument("--scratch", type=Path, help="where the scratch copies go (default: a new temp folder)")
    ap.add_argument("--json", type=Path, help="also write the scores to this file")
    a = ap.parse_args(argv)
    unknown = sorted(set(a.modules) - set(known))
    if unknown:
        print(f"unknown module(s) {', '.join(unknown)}; known: {', '.join(known)}", file=sys.stderr)
        return 2
    modules = a.modules or known
    scratch = a.scratch or Path(tempfile.mkdtemp(prefix="mutation-report."))
    scratch.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max(1, a.jobs)) as pool:
        results = dict(zip(modules, pool.map(lambda m: run(m, scratch, a.children), modules)))
    packages: dict[str, list[int]] = {}
    print(f"{'module':<22} {'package':<22} {'killed':>7} {'all':>6} {'score':>7} {'time':>7}")
    for m, (k, n, s) in results.items():
        p = package_of(m)
        packages.setdefault(p, [0, 0])
        packages[p][0] += k
        packages[p][1] += n
        print(f"{m:<22} {p:<22} {k:>7} {n:>6} {100 * k / n:>6.1f}% {s:>6.0f}s")
    print()
    for p, (k, n) in sorted(packages.items()):
        print(f"package {p:<22} {k:>5} of {n:>5} killed = {100 * k / n:5.1f} %")
    if a.json:
        a.json.write_text(json.dumps({"modules": {m: {"killed": k, "all": n, "seconds": round(s, 1),
                                                      "package": package_of(m)} for m, (k, n, s) in results.items()},
                                      "packages": {p: {"killed": k, "all": n} for p, (k, n) in packages.items()}},
                                     indent=1, sort_keys=True))
    print(f"scratch copies: {scratch}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
