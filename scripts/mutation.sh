#!/usr/bin/env bash
# Mutation score of one module with its fast tests (mutmut 3; see docs/mutation-survivors.md).
#
#   scripts/mutation.sh MODULE [SCRATCH]     MODULE: losses | metrics | decisions | manifest | contiguity | smooth | selection | openhead | vertices | vad | assign | checkpoint | data | fingerprint | screen
#
# mutmut 3 reads one [tool.mutmut] section, so this copies the checkout (without envs/, .git/, mutants/)
# to SCRATCH (default: a new temp folder), writes that module's section into the COPY's pyproject.toml,
# and runs mutmut there: the checkout is never touched. Prints the survivors and the score.
# Time on 2 cores: about 1 minute each (contiguity, smooth, selection, vad, checkpoint: under 1 min; openhead: about 3 min;
# assign: about 2.5 min; data: about 4 min; fingerprint: about 35 s; screen: about 1 min).
# A TESTS entry is a file ("test_x") or one test of it ("test_x::test_y").
set -euo pipefail
module=${1:?usage: scripts/mutation.sh losses|metrics|decisions|manifest|contiguity|smooth|selection|openhead|vertices|vad|assign|checkpoint|data|fingerprint|screen [SCRATCH]}
root=$(cd "$(dirname "$0")/.." && pwd)
scratch=${2:-$(mktemp -d "${TMPDIR:-/tmp}/mutation-$module.XXXXXX")}

# module -> the file it mutates and the fast tests that should kill its mutants
case $module in
  losses)     only=pachorus/losses.py
              tests="test_pachorus_model test_objective" ;;
  metrics)    only=pachorus/metrics.py
              tests="test_pachorus_metrics test_paper_metrics test_identity test_mutants_metrics" ;;
  decisions)  only=chorushead/core/decisions.py
              tests="test_pack test_boundaries test_review_server test_schemas test_report test_mutants_decisions" ;;
  manifest)   only=chorushead/core/manifest.py
              tests="test_manifest test_properties test_fingerprints test_data_safety test_schemas test_mutants_manifest" ;;
  contiguity) only=chorushead/stages/contiguity.py
              tests="test_core_stages test_boundaries test_mutants_contiguity" ;;
  smooth)     only=chorushead/stages/smooth.py
              tests="test_core_stages test_payloads test_mutants_smooth" ;;
  selection)  only=chorushead/stages/selection.py
              tests="test_pack test_properties test_boundaries test_mutants_selection" ;;
  openhead)   only=chorushead/core/openhead.py
              tests="test_openhead test_landmarks test_export test_mutants_openhead" ;;
  vertices)   only=pachorus/vertices.py
              tests="test_openhead test_export test_identity test_mutants_vertices" ;;
  vad)        only=chorushead/stages/vad.py
              tests="test_core_stages test_boundaries test_mutants_vad" ;;
  assign)     only=chorushead/stages/assign.py
              tests="test_assign test_mutants_assign" ;;
  checkpoint) only=pachorus/checkpoint.py
              tests="test_mutants_checkpoint" ;;   # the CLI/trainer tests train a model per mutant: >40 min
  data)       only=pachorus/data.py
              tests="test_data_batches test_lmdb_readers test_mutants_data" ;;
  fingerprint) only=chorushead/stages/fingerprint.py   # test_duplicates' real-video tests: ~20 min
              tests="test_duplicates::test_a_missing_fpcalc_is_one_clear_error test_duplicates::test_fingerprint_payloads_are_typed test_mutants_fingerprint" ;;
  screen)     only=chorushead/stages/screen.py   # test_screen's measured clips (6 s a mutant): ~60 min
              tests="test_screen::test_a_face_turned_towards_profile_fails_frontality test_screen::test_yaw_from_landmarks_is_signed_and_zero_for_a_symmetric_face test_screen::test_a_rejected_video_stops_at_the_screen_and_a_threshold_reruns_the_screen_only test_mutants_screen" ;;
  *) echo "unknown module: $module (losses | metrics | decisions | manifest | contiguity | smooth | selection | openhead | vertices | vad | assign | checkpoint | data | fingerprint | screen)" >&2; exit 2 ;;
esac
# mutmut mutates the module's package; the other package and the data folders come along unmutated
package=${only%%/*}
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
only_mutate = {json.dumps([e["ONLY"]])}
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
# OMP_NUM_THREADS=1: forked children of a process that already ran torch hang otherwise
OMP_NUM_THREADS=1 mutmut run --max-children "${MUTMUT_CHILDREN:-2}" >"$scratch/mutmut-run.log" 2>&1 || true
mutmut results 2>/dev/null | grep -v ': killed' || true
mutmut results --all true 2>/dev/null | awk -F': ' '
  /: / {n++; if ($2 == "killed") k++}
  END {if (n) printf "'"$module"': %d of %d mutants killed (%.1f %%)\n", k, n, 100 * k / n; else print "no mutants: see '"$scratch"'/mutmut-run.log"}'
echo "scratch copy: $scratch (mutmut show <id> there)"
