#!/usr/bin/env python
"""Developer tool: re-execute notebooks in place but keep the saved outputs of `#| slow` cells without running them.

For a change that adds or edits fast cells only: every other cell runs; a slow cell's code is unchanged, so its
saved output is still what that code printed. A later cell that needs a slow cell's variables fails loudly; then run
the whole notebook with .ci/run_nb.sh.  Usage: python .ci/run_nb_keep_slow.py [--run-slow TEXT] 31_diffusion_time [...]
(then nbdev_clean); `--run-slow TEXT` also runs the slow cells whose source contains TEXT (new or edited slow cells).
"""
import sys, os, nbformat
from pathlib import Path
from nbconvert.preprocessors import ExecutePreprocessor

RUN = []
args = sys.argv[1:]
while args and args[0] == '--run-slow': RUN.append(args[1]); args = args[2:]

class KeepSlow(ExecutePreprocessor):
    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type == 'code' and any(l.strip().replace(' ', '') == '#|slow' for l in cell.source.splitlines()[:5]) \
                and not any(t in cell.source for t in RUN):
            return cell, resources
        return super().preprocess_cell(cell, resources, index)

os.environ.setdefault('OMP_NUM_THREADS', '1')
nbs = Path(__file__).resolve().parent.parent / 'nbs'
for name in args:
    p = nbs / f'{name}.ipynb'
    nb = nbformat.read(p, as_version=4)
    KeepSlow(timeout=900, kernel_name='python3').preprocess(nb, {'metadata': {'path': str(nbs)}})
    nbformat.write(nb, p)
    print('executed (slow cells kept):', p.name)
