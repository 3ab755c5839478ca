#!/usr/bin/env bash
# Developer tool: re-execute notebooks in place so their saved outputs are current (slow cells included), then
# nbdev_export + nbdev_clean.  Usage: .ci/run_nb.sh 10_samplers [11_sampler_zoo ...]   (names without .ipynb)
# Editing tip: `jupytext --to py:percent nbs/NAME.ipynb -o /tmp/NAME.py`, edit, then
# `jupytext --to ipynb --update -o nbs/NAME.ipynb /tmp/NAME.py` (keeps outputs) and run this script.
# Seen here: nbconvert occasionally hangs at an ipywidgets.interact cell with an idle kernel; the per-cell timeout
# below turns that into an error instead of a silent wait (nbdev_test, which CI runs, is not affected).
set -e
cd "$(dirname "$0")/.."
[ -d .venv ] && export PATH="$PWD/.venv/bin:$PATH"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
for n in "$@"; do
  (cd nbs && jupyter nbconvert --log-level WARN --to notebook --execute --inplace --ExecutePreprocessor.timeout=900 "$n.ipynb")
done
nbdev_export
nbdev_clean
