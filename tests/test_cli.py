"The console script as a new user runs it: installed entry point, default job, outputs, bad input."
import json, runpy, shutil, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
EXE = shutil.which('dmlearn') or str(Path(sys.executable).parent / 'dmlearn')

def run(*args):
    return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=600)

def test_entry_point_installed():
    assert Path(EXE).exists(), "the dmlearn console script is not installed (settings.ini console_scripts)"

def test_default_main_job(tmp_path):
    "`dmlearn compare` with its defaults: every registered sampler at 5, 10, 20, 50 NFE on the ring."
    r = run('compare', '--json', str(tmp_path / 'r.json'), '--plot', str(tmp_path / 'r.png'))
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / 'r.json').read_text())
    assert res['target'] == 'ring' and res['nfe'] == [5, 10, 20, 50] and res['n'] == 2000
    from dmlearn.samplers import load_samplers
    assert set(res['rows']) == set(load_samplers())
    for name in ('euler', 'heun', 'dpmpp_2m'): assert name in r.stdout
    # exact denoiser: at 50 NFE a second-order ODE solver is within 3x the noise floor; at 5 NFE Euler is far above it
    assert res['rows']['dpmpp_2m']['50']['value'] < 3 * res['floor']
    assert res['rows']['euler']['5']['value'] > 3 * res['floor']
    assert (tmp_path / 'r.png').stat().st_size > 1000

@pytest.mark.parametrize('args,msg', [
    (['--samplers', 'eulr'], 'choose from'), (['--target', 'moons'], 'choose one of'), (['--nfe', '-3'], 'positive'),
    (['--n', '1'], 'n must be'), (['--schedule', 'cosine'], 'choose one of'), (['--plot', 'x.jpg'], '.png')])
def test_bad_input_one_line(args, msg):
    r = run('compare', '--n', '50', '--nfe', '5', *args) if '--nfe' not in args else run('compare', '--n', '50', *args)
    assert r.returncode == 2 and msg in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr

def test_existing_output_kept_on_failure(tmp_path):
    "A run that fails on bad input does not touch an earlier result."
    out = tmp_path / 'r.json'; out.write_text('{"earlier": true}')
    r = run('compare', '--samplers', 'nope', '--json', str(out))
    assert r.returncode == 2 and out.read_text() == '{"earlier": true}'

def test_readme_in_sync_with_index():
    "README.md is generated from nbs/index.ipynb by .ci/readme.py."
    render = runpy.run_path(str(ROOT / '.ci' / 'readme.py'))['render']
    assert (ROOT / 'README.md').read_text(encoding='utf-8') == render(), "README.md is stale: run python .ci/readme.py"

def test_ci_runs_the_readme_test_command():
    readme = (ROOT / 'README.md').read_text(encoding='utf-8')
    assert 'pip install -e . && dmlearn compare' in readme
    assert any(l.startswith('pip install -e ".[dev]"') and 'nbdev_test' in l and 'pytest' in l for l in readme.splitlines())
