#!/usr/bin/env bash
# Mutation score of one module with its fast tests (mutmut 3; see docs/mutation-survivors.md).
#
#   scripts/mutation.sh MODULE [SCRATCH]     MODULE: a file name in scripts/mutation.d/ (ls it)
#   MUTANTS="chorushead.stages.screen.x_f__mutmut_3 …" scripts/mutation.sh MODULE   only those mutants
#
# scripts/mutation.d/MODULE says which file is mutated (only=) and which fast tests should kill its
# mutants (tests=; an entry is a file "test_x" or one test of it "test_x::test_y"), with a comment on
# what was left out and why; the time each takes on 2 cores is in docs/mutation-survivors.md.
# mutmut 3 reads one [tool.mutmut] section, so this copies the checkout (without envs/, .git/, mutants/)
# to SCRATCH (default: a new temp folder), writes that module's section into the COPY's pyproject.toml,
# and runs mutmut there: the checkout is never touched. Prints the survivors and the score.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
modules=$(ls "$root/scripts/mutation.d" | tr '\n' ' ')
module=${1:?usage: scripts/mutation.sh MODULE [SCRATCH]   (MODULE: $modules)}
if [ ! -f "$root/scripts/mutation.d/$module" ]; then
  echo "unknown module: $module (one of: $modules)" >&2; exit 2
fi
scratch=${2:-$(mktemp -d "${TMPDIR:-/tmp}/mutation-$module.XXXXXX")}
only= tests=
# shellcheck source=/dev/null
. "$root/scripts/mutation.d/$module"
: "${only:?scripts/mutation.d/$module sets no only=}" "${tests:?scripts/mutation.d/$module sets no tests=}"
# mutmut mutates the module's package; the other package and the data folders come along unmutated
package=${only%%/*}   # only= may name several files of one package
other=$([ "$package" = pachorus ] && echo chorushead || echo pachorus)

mkdir -p "$scratch"
tar -C "$root" --exclude=./envs --exclude=./.git --exclude=./mutants -cf - . | tar -C "$scratch" -xf -
rm -rf "$scratch/mutants"

PACKAGE=$package OTHER=$other ONLY=$only TESTS=$tests python - "$scratch/pyproject.toml" <<'EOF'
import json, os, re, sys
p = sys.argv[1]
e = os.environ
copy = [e["OTHER"] + "/", "pipelines/", "manifests/", "benchmarks/"]
# "file" or "file::test" (one test of a file); a test file not written yet is left out
tests = [f"tests/{f}.py" + (f"::{t}" if t else "") for f, _, t in (x.partition("::") for x in e["TESTS"].split())
         if os.path.exists(os.path.join(os.path.dirname(p), f"tests/{f}.py"))]
section = f'''[tool.mutmut]
source_paths = {json.dumps([e["PACKAGE"] + "/"])}
only_mutate = {json.dumps(e["ONLY"].split())}
also_copy = {json.dumps(copy)}
pytest_add_cli_args_test_selection = {json.dumps(tests)}
pytest_add_cli_args = ["-m", "not slow", "-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning"]
'''
text = open(p).read()
text, n = re.subn(r"\[tool\.mutmut\]\n(?:[^\[\n].*\n|\n)*", section + "\n", text)
if not n:
    text += "\n" + section
open(p, "w").write(text)
EOF

cd "$scratch"
# pytest's tmp_path folders go under the scratch copy and are removed as they age: mutmut's forked
# children end without pytest's exit hook, so pytest never reclaims them (tens of GB over a long run)
export TMPDIR="$scratch/tmp"
export CHORUSHEAD_MUTATION=1   # tests/conftest.py: no tqdm monitor thread in forked children
mkdir -p "$TMPDIR"
( while sleep 60; do find "$TMPDIR" -mindepth 2 -maxdepth 2 -name 'pytest-*' -mmin +10 -exec rm -rf {} + 2>/dev/null; done ) &
sweeper=$!
trap 'kill "$sweeper" 2>/dev/null; rm -rf "$TMPDIR"' EXIT
# OMP_NUM_THREADS=1: forked children of a process that already ran torch hang otherwise
# MUTANTS="name …" (mutmut's names, globs allowed) runs only those: a check of new tests against the
# survivors of an earlier run, which prints each one's status, not a score
# shellcheck disable=SC2086
OMP_NUM_THREADS=1 mutmut run --max-children "${MUTMUT_CHILDREN:-2}" ${MUTANTS:-} >"$scratch/mutmut-run.log" 2>&1 || true
if [ -n "${MUTANTS:-}" ]; then
  mutmut results --all true 2>/dev/null | grep -v ': not checked' || true
  echo "scratch copy: $scratch (only the mutants named in MUTANTS were run)"; exit 0
fi
mutmut results 2>/dev/null | grep -v ': killed' || true
mutmut results --all true 2>/dev/null | awk -F': ' '
  /: / {n++; if ($2 == "killed") k++}
  END {if (n) printf "'"$module"': %d of %d mutants killed (%.1f %%)\n", k, n, 100 * k / n; else print "no mutants: see '"$scratch"'/mutmut-run.log"}'
echo "scratch copy: $scratch (mutmut show <id> there)"
