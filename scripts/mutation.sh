#!/usr/bin/env bash
# Mutation score of one module with its fast tests (mutmut 3; see docs/mutation-survivors.md).
#
#   scripts/mutation.sh MODULE [SCRATCH]     MODULE: losses | metrics | decisions | manifest | contiguity | smooth | selection
#
# mutmut 3 reads one [tool.mutmut] section, so this copies the checkout (without envs/, .git/, mutants/)
# to SCRATCH (default: a new temp folder), writes that module's section into the COPY's pyproject.toml,
# and runs mutmut there: the checkout is never touched. Prints the survivors and the score.
# Time on 2 cores: about 1 minute each (contiguity, smooth, selection: under 40 s).
set -euo pipefail
module=${1:?usage: scripts/mutation.sh losses|metrics|decisions|manifest|contiguity|smooth|selection [SCRATCH]}
root=$(cd "$(dirname "$0")/.." && pwd)
scratch=${2:-$(mktemp -d "${TMPDIR:-/tmp}/mutation-$module.XXXXXX")}

case $module in
  losses)
    src='["pachorus/"]'; only='["pachorus/losses.py"]'
    copy='["chorushead/", "pipelines/", "manifests/"]'
    tests='["tests/test_pachorus_model.py", "tests/test_objective.py"]' ;;
  metrics)
    src='["pachorus/"]'; only='["pachorus/metrics.py"]'
    copy='["chorushead/", "pipelines/", "manifests/", "benchmarks/"]'
    tests='["tests/test_pachorus_metrics.py", "tests/test_paper_metrics.py", "tests/test_identity.py", "tests/test_mutants_metrics.py"]' ;;
  decisions)
    src='["chorushead/"]'; only='["chorushead/core/decisions.py"]'
    copy='["pachorus/", "pipelines/", "manifests/", "benchmarks/"]'
    tests='["tests/test_pack.py", "tests/test_boundaries.py", "tests/test_review_server.py", "tests/test_schemas.py", "tests/test_report.py", "tests/test_mutants_decisions.py"]' ;;
  manifest)
    src='["chorushead/"]'; only='["chorushead/core/manifest.py"]'
    copy='["pachorus/", "pipelines/", "manifests/", "benchmarks/"]'
    tests='["tests/test_manifest.py", "tests/test_properties.py", "tests/test_fingerprints.py", "tests/test_data_safety.py", "tests/test_schemas.py", "tests/test_mutants_manifest.py"]' ;;
  contiguity)
    src='["chorushead/"]'; only='["chorushead/stages/contiguity.py"]'
    copy='["pachorus/", "pipelines/", "manifests/", "benchmarks/"]'
    tests='["tests/test_core_stages.py", "tests/test_boundaries.py", "tests/test_mutants_contiguity.py"]' ;;
  smooth)
    src='["chorushead/"]'; only='["chorushead/stages/smooth.py"]'
    copy='["pachorus/", "pipelines/", "manifests/", "benchmarks/"]'
    tests='["tests/test_core_stages.py", "tests/test_payloads.py", "tests/test_mutants_smooth.py"]' ;;
  selection)
    src='["chorushead/"]'; only='["chorushead/stages/selection.py"]'
    copy='["pachorus/", "pipelines/", "manifests/", "benchmarks/"]'
    tests='["tests/test_pack.py", "tests/test_properties.py", "tests/test_boundaries.py", "tests/test_mutants_selection.py"]' ;;
  *) echo "unknown module: $module (losses | metrics | decisions | manifest | contiguity | smooth | selection)" >&2; exit 2 ;;
esac

mkdir -p "$scratch"
tar -C "$root" --exclude=./envs --exclude=./.git --exclude=./mutants -cf - . | tar -C "$scratch" -xf -
rm -rf "$scratch/mutants"

SRC=$src ONLY=$only COPY=$copy TESTS=$tests python - "$scratch/pyproject.toml" <<'EOF'
import os, re, sys
p = sys.argv[1]
section = f'''[tool.mutmut]
source_paths = {os.environ["SRC"]}
only_mutate = {os.environ["ONLY"]}
also_copy = {os.environ["COPY"]}
pytest_add_cli_args_test_selection = {os.environ["TESTS"]}
pytest_add_cli_args = ["-m", "not slow", "-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning"]
'''
text = open(p).read()
text, n = re.subn(r"\[tool\.mutmut\]\n(?:[^\[\n].*\n|\n)*", section + "\n", text)
if not n:
    text += "\n" + section
open(p, "w").write(text)
EOF

cd "$scratch"
# OMP_NUM_THREADS=1: forked children of a process that already ran torch hang otherwise
OMP_NUM_THREADS=1 mutmut run --max-children "${MUTMUT_CHILDREN:-2}" >"$scratch/mutmut-run.log" 2>&1 || true
mutmut results 2>/dev/null | grep -v ': killed' || true
mutmut results --all true 2>/dev/null | awk -F': ' '
  /: / {n++; if ($2 == "killed") k++}
  END {if (n) printf "'"$module"': %d of %d mutants killed (%.1f %%)\n", k, n, 100 * k / n; else print "no mutants: see '"$scratch"'/mutmut-run.log"}'
echo "scratch copy: $scratch (mutmut show <id> there)"
