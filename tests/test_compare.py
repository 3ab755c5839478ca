"`dmlearn compare` over the whole space: a user's mixture file, several metrics, starts, fitted grids, saved samples, threads."
import io, json, contextlib, shutil, subprocess, sys
from pathlib import Path
import numpy as np
import pytest
import torch

from dmlearn import cli
from dmlearn.cli import compare, load_mixture, main
from dmlearn.gmm import GMM
from dmlearn.metrics import energy_distance, mode_weight_error

EXE = shutil.which('dmlearn') or str(Path(sys.executable).parent / 'dmlearn')
GOOD = {'weights': [3, 1], 'means': [[0, 0], [2.5, 1]], 'covariances': [[[0.5, 0.1], [0.1, 0.3]], [[0.02, 0], [0, 0.01]]]}


def write(tmp_path, content, name='m.json'):
    p = tmp_path / name
    p.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(p)


def usage_error(*args):
    "stderr of an in-process `dmlearn compare ...` that must stop with one line and exit status 2."
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), pytest.raises(SystemExit) as e:
        main(['compare', '--n', '40', '--nfe', '3', '--samplers', 'euler', *args])
    assert e.value.code == 2
    lines = err.getvalue().strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_mixture_file_loads_and_normalises(tmp_path):
    gm = load_mixture(write(tmp_path, {**GOOD, 'name': 'mine'}))
    assert isinstance(gm, GMM) and gm.name == 'mine' and (gm.n_components, gm.dim) == (2, 2)
    assert torch.allclose(gm.weights, torch.tensor([0.75, 0.25], dtype=torch.float64))
    assert torch.equal(gm.covs, torch.tensor(GOOD['covariances'], dtype=torch.float64))
    one_d = load_mixture(write(tmp_path, {'weights': [1], 'means': [[0.5]], 'covariances': [[[2.0]]]}, 'one.json'))
    assert one_d.dim == 1 and abs(one_d.cov.item() - 2.0) < 1e-12


@pytest.mark.parametrize('content,msg', [
    ('{"weights": [1], ', 'is not valid JSON'),
    ('"a string"', 'must hold a JSON object'),
    ({'weights': [1], 'means': [[0, 0]]}, 'lacks covariances'),
    ({**GOOD, 'covariance': []}, "unknown key(s) 'covariance'"),
    ({**GOOD, 'weights': [1, 1, 1]}, '3 weights but 2 means'),
    ({**GOOD, 'weights': [1, True]}, 'non-number'),
    ({**GOOD, 'means': [[0, 0, 0], [1, 1, 1]]}, 'covariances must have shape [2][3][3]'),
    ({**GOOD, 'means': [[0, 0], [1]]}, 'different lengths'),
    ({**GOOD, 'weights': []}, 'weights is empty'),
    ({**GOOD, 'weights': [0.5, -0.5]}, 'weights[1] = -0.5 is not positive'),
    ({**GOOD, 'covariances': [[[1, 0.3], [0, 1]], [[1, 0], [0, 1]]]}, 'covariances[0] is not symmetric'),
    ({**GOOD, 'covariances': [[[1, 0], [0, 1]], [[1, 0], [0, 0]]]}, 'covariances[1] is not positive definite'),
    ({**GOOD, 'covariances': [[[1, 0], [0, 1]], [[-1, 0], [0, -2]]]}, 'covariances[1] is not positive definite'),
    ('{"weights": [1], "means": [[Infinity, 0]], "covariances": [[[1, 0], [0, 1]]]}', 'NaN or infinite'),
])
def test_bad_mixture_file_one_line(tmp_path, content, msg):
    path = write(tmp_path, content)
    with pytest.raises(ValueError) as e: load_mixture(path)
    assert msg in str(e.value) and path in str(e.value), str(e.value)
    line = usage_error('--target', path)
    assert msg in line and path in line


def test_unreadable_and_unknown_targets(tmp_path):
    assert 'cannot read mixture file' in usage_error('--target', str(tmp_path / 'absent.json'))
    (tmp_path / 'bin.json').write_bytes(b'\xff\xfe\x00')
    assert 'not UTF-8' in usage_error('--target', str(tmp_path / 'bin.json'))
    assert 'a mixture JSON file' in usage_error('--target', 'moons')


def test_user_mixture_end_to_end(tmp_path):
    "The console script on a user's file with several metrics, starts and saved samples: the JSON says everything."
    mix = write(tmp_path, GOOD)
    out, res_path = tmp_path / 'samples', tmp_path / 'r.json'
    r = subprocess.run([EXE, 'compare', '--target', mix, '--nfe', '3,6', '--n', '300', '--samplers', 'euler,dpmpp_2m',
                        '--metric', 'energy,modes', '--starts', 'gauss@2,mm@2,dlg@5', '--save-samples', str(out),
                        '--json', str(res_path)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    res = json.loads(res_path.read_text())
    assert res['target'] == mix and res['metrics'] == ['energy', 'modes'] and res['samples_dir'] == str(out)
    assert res['mixture']['weights'] == [0.75, 0.25]
    gm = load_mixture(mix)
    ref = torch.from_numpy(np.load(out / 'reference.npy'))
    expected_rows = {'euler', 'dpmpp_2m'} | {f"{s} @ {k}" for s in ('euler', 'dpmpp_2m') for k in ('gauss@2', 'dlg@5')}
    mm = 'mm@2' in res['starts']
    if mm: expected_rows |= {'euler @ mm@2', 'dpmpp_2m @ mm@2'}
    else: assert any('moment-matched' in n for n in res['notes'])
    assert set(res['rows']) == expected_rows
    files = set()
    for label, row in res['rows'].items():
        assert res['row_info'][label]['sampler'] in ('euler', 'dpmpp_2m')
        for b, c in row.items():
            assert c['nfe'] == int(b) and abs(c['total_nfe'] - c['nfe'] - c['start_nfe']) < 1e-12 and c['fit_nfe'] == 0
            assert (c['start_nfe'] > 4) == ('dlg' in label)           # DLG's chain calls are counted per output
            x = torch.from_numpy(np.load(out / c['samples']))
            assert x.shape == (300, 2) and x.dtype == torch.float64
            assert abs(energy_distance(x, ref) - c['values']['energy']) < 1e-12
            assert abs(mode_weight_error(x, gm) - c['values']['modes']) < 1e-12
            assert c['value'] == c['values']['energy']
            files.add(c['samples'])
    assert len(files) == sum(len(r) for r in res['rows'].values())     # one file per row and budget
    assert sorted(p.name for p in out.iterdir()) == sorted(files | {'reference.npy'})
    assert 'mode-weight total variation' in r.stdout and 'energy distance' in r.stdout and 'start NFE per output' in r.stdout


def test_starts_change_the_result_and_costs():
    "A start at a small sigma helps Euler at 10 NFE on the hard mixture; a start that costs nothing adds no NFE."
    res = compare('hard', nfe=(10,), n=1500, samplers=['euler'], metric='energy', starts='gauss@3,aux@3')
    plain, small = res['rows']['euler'][10], res['rows']['euler @ gauss@3'][10]
    assert small['value'] < 0.8 * plain['value']
    for c in (plain, small, res['rows']['euler @ aux@3'][10]): assert c['total_nfe'] == c['nfe'] == 10


def test_missing_tuning_module_is_a_note(monkeypatch):
    monkeypatch.setitem(sys.modules, 'dmlearn.tuning', None)         # import dmlearn.tuning now fails
    res = compare('ring', nfe=(4,), n=100, samplers=['euler'], metric='modes', starts='mm@2,gauss@2', tune=True)
    assert set(res['rows']) == {'euler', 'euler @ gauss@2'}
    assert any('moment-matched start skipped' in n for n in res['notes'])
    assert any('fitted schedules skipped' in n for n in res['notes'])
    assert 'note: moment-matched start skipped' in cli.format_table(res)


def test_fitted_rows():
    pytest.importorskip('dmlearn.tuning')
    res = compare('hard', nfe=(4,), n=400, samplers=['dpmpp_2m', 'euler_ancestral'] if 'euler_ancestral' in cli.SAMPLERS else ['dpmpp_2m'],
                  metric='energy', starts='gauss@3', tune='gits')
    fitted = {k: v for k, v in res['rows'].items() if k.endswith('fitted')}
    assert set(fitted) == {'dpmpp_2m fitted', 'dpmpp_2m @ gauss@3 fitted'}      # no fitted rows for a stochastic sampler
    for label, row in fitted.items():
        c = row[4]
        g = torch.tensor(c['sigmas'])
        first = 80. if '@' not in label else 3.
        assert abs(g[0].item() - first) < 1e-9 and g[-1].item() == 0 and len(g) == 5 and (g[1:] < g[:-1]).all()
        assert c['fit_nfe'] > 0 and c['total_nfe'] == c['nfe'] == 4   # the one-off fit is beside the cell, not in it
        assert res['row_info'][label]['schedule'] == 'fitted'
    assert fitted['dpmpp_2m fitted'][4]['value'] < res['rows']['dpmpp_2m'][4]['value']


def test_threads_policy(monkeypatch):
    "The run happens at --threads; the caller's setting is back afterwards, also after a failure."
    seen = []
    real = cli.generate
    def spy(*a, **k): seen.append(torch.get_num_threads()); return real(*a, **k)
    monkeypatch.setattr(cli, 'generate', spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(['compare', '--n', '50', '--nfe', '3', '--samplers', 'euler', '--threads', '1']) == 0
        assert seen == [1] and torch.get_num_threads() == 2
        usage_error('--metric', 'fid')
        assert torch.get_num_threads() == 2
    finally: torch.set_num_threads(before)
