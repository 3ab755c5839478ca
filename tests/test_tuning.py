"""Fitted σ grids (GITS-style dynamic programme, AYS-style coordinate search) and the moment-matched start (nbs/15_tuning.ipynb).

Properties that a wrong implementation would break: the DP's grid has exactly the budgeted steps, is a valid grid and is the
optimum over every path; a fitted grid is never worse than the Karras grid on its calibration noises and is better on
held-out noises where that is measured; every fitting call is counted; grids round-trip through JSON and bad files are refused
by name; the moment-matched start has the right moments, matches the mixture's exact moments, and tends to GaussianStart."""
import itertools, json, math
import pytest
import torch
from dmlearn.core import CountNFE, check_sigmas
from dmlearn.gmm import get_gmm, gmm_gaussian
from dmlearn.samplers import SAMPLERS, GaussianStart, steps_for_nfe
from dmlearn.schedules import get_sigmas
from dmlearn.tuning import (MomentMatchedStart, FittedSigmas, dp_path, fine_nodes, fit_sigmas, gits_costs, grid_errors,
                            load_sigmas, reference_solve, sample_error, sample_grid, save_sigmas)

torch.set_num_threads(1)
GM = get_gmm('hard')

@pytest.fixture(scope='module')
def fitted():
    return fit_sigmas(GM, 'dpmpp_2m', 5, calib=96, heldout=384, sweeps=3, seed=3)

@pytest.mark.parametrize('sampler,nfe', [('dpmpp_2m', 4), ('heun', 7), ('euler', 6)])
def test_dp_grid_has_the_budgeted_steps(sampler, nfe):
    x = 80 * torch.randn(32, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    nodes = fine_nodes(0.002, 80., 24)
    states = reference_solve(GM, x, nodes, substeps=2)
    steps = steps_for_nfe(sampler, nfe)
    path, v = dp_path(gits_costs(GM, sampler, nodes, states), steps)
    grid = nodes[path]
    assert len(grid) == steps + 1 and path[0] == 0 and path[-1] == len(nodes) - 1
    check_sigmas(grid)                                   # strictly decreasing, positive, ends in 0
    assert grid[0] == 80. and grid[-1] == 0. and math.isfinite(v)

def test_dp_is_the_optimum_over_all_paths():
    g = torch.Generator().manual_seed(4)
    C = torch.rand(8, 8, generator=g, dtype=torch.float64)
    C[torch.ones(8, 8).tril().bool()] = math.inf
    for K in range(1, 8):
        best = min(sum(C[a, b].item() for a, b in zip((0, *m), (*m, 7))) for m in itertools.combinations(range(1, 7), K - 1))
        assert abs(dp_path(C, K)[1] - best) < 1e-12

def test_batched_grids_equal_single_runs():
    x = 80 * torch.randn(40, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = SAMPLERS['heun'].fn(GM, x, get_sigmas('karras', 200, 0.002, 80.))
    grids = torch.stack([get_sigmas(s, 5, 0.002, 80.) for s in ('karras', 'logsnr', 'vp_time')])
    e = grid_errors(GM, 'heun', grids, x, ref)
    for g, ei in zip(grids, e): assert abs(ei.item() - sample_error(SAMPLERS['heun'].fn(GM, x, g), ref)) < 1e-10

def test_fitted_beats_karras_on_calibration_and_heldout(fitted):
    assert fitted.steps == steps_for_nfe('dpmpp_2m', 5) and len(fitted.sigmas) == fitted.steps + 1
    check_sigmas(fitted.sigmas); assert fitted.sigmas[0] == 80.
    assert fitted.calib['error'] <= fitted.calib['baselines']['karras']
    assert fitted.heldout['error'] < fitted.heldout['baselines']['karras']
    assert fitted.heldout['seed'] != fitted.calib['seed'] and 'different held-out noises' in fitted.summary()

def test_every_fitting_call_is_counted(fitted):
    c = fitted.fit_cost
    assert c['nfe'] == c['reference']['nfe'] + c['gits']['nfe'] + c['ays']['nfe'] > 0
    assert c['reference']['nfe'] == 2 * 4 * 63 + 1                          # 64 nodes, 4 Heun substeps, the Euler step into 0
    assert fitted.eval_cost['nfe'] > 0

def test_ays_alone_never_worse_than_its_start():
    f = fit_sigmas(GM, 'heun', 7, method='ays', init='karras', calib=64, heldout=0, sweeps=2, n_cand=4)
    assert f.calib['error'] <= f.calib['baselines']['karras'] and 'gits' not in f.fit_cost

def test_save_load_round_trip_and_refusals(fitted, tmp_path):
    p = save_sigmas(fitted, tmp_path / 'g.json')
    back = load_sigmas(p, model=GM, sampler='dpmpp_2m', nfe=5, shape=(2,))
    assert torch.equal(back.sigmas, fitted.sigmas) and back.hp == fitted.hp and back.calib == fitted.calib
    with pytest.raises(ValueError, match="not 'heun'"): load_sigmas(p, sampler='heun')
    with pytest.raises(ValueError, match='nfe 5, not 10'): load_sigmas(p, nfe=10)
    with pytest.raises(ValueError, match="not 'ring'"): load_sigmas(p, model=get_gmm('ring'))
    moved = get_gmm('hard'); moved.means[2] += 0.05
    with pytest.raises(ValueError, match='another model'): load_sigmas(p, model=moved)
    d = json.loads(p.read_text())
    (tmp_path / 'b.json').write_text(json.dumps({**d, 'sigmas': d['sigmas'][:-1] + [0.1]}))
    with pytest.raises(ValueError, match="b.json.*not a valid grid"): load_sigmas(tmp_path / 'b.json')
    with pytest.raises(FileNotFoundError, match='none.json'): load_sigmas(tmp_path / 'none.json')

def test_sample_grid_counts_and_checks_the_start(fitted):
    out = sample_grid(GM, 'dpmpp_2m', fitted, 100, generator=torch.Generator().manual_seed(0))
    assert out.nfe == 5 and out.total_nfe == 5
    with pytest.raises(ValueError, match='grid starts at 80'):
        sample_grid(GM, 'dpmpp_2m', fitted.sigmas, 10, start=MomentMatchedStart.from_gmm(GM, 2.))

def test_exact_moments_match_monte_carlo():
    x = GM.sample(300_000, torch.Generator().manual_seed(2))
    n = len(x); c = x - x.mean(0)
    assert ((x.mean(0) - GM.mean).abs() < 5 * x.std(0) / math.sqrt(n)).all()
    se = (c[:, :, None] * c[:, None, :]).flatten(1).std(0).reshape(2, 2) / math.sqrt(n)
    assert ((c.T @ c / (n - 1) - GM.cov).abs() < 5 * se).all()
    s = MomentMatchedStart.from_gmm(GM, 1.5)
    assert torch.equal(s.mean, GM.mean) and torch.equal(s.cov, GM.cov) and 'exact' in repr(s)

def test_start_draws_have_the_matched_moments():
    s = MomentMatchedStart.from_gmm(GM, 0.7)
    out = s(200_000, (2,), generator=torch.Generator().manual_seed(3))
    assert out.cost == {'nfe': 0} and out.sigma == 0.7
    assert torch.allclose(out.x.mean(0), GM.mean, atol=0.01)
    assert torch.allclose(torch.cov(out.x.T), GM.cov + 0.49 * torch.eye(2, dtype=torch.float64), atol=0.03)

def test_large_sigma_max_behaves_like_gaussian_start():
    S = 1e5
    a = MomentMatchedStart.from_gmm(GM, S)(50, (2,), torch.Generator().manual_seed(9)).x
    b = GaussianStart(S)(50, (2,), torch.Generator().manual_seed(9)).x
    assert ((a - b - GM.mean) / S).abs().max() < 1e-8
    g = get_sigmas('karras', 25, 0.002, S)
    ya, yb = SAMPLERS['heun'].fn(GM, a, g), SAMPLERS['heun'].fn(GM, b, g)
    assert (ya - yb).norm(dim=1).max() < 1e-3

def test_estimated_moments_and_bad_input():
    data = gmm_gaussian().sample(100_000, torch.Generator().manual_seed(4))
    s = MomentMatchedStart.from_data(data, 1.)
    assert torch.allclose(s.mean, gmm_gaussian().mean, atol=0.01) and torch.allclose(s.cov, gmm_gaussian().cov, atol=0.01)
    assert 'estimated from 100000 samples' in repr(s)
    with pytest.raises(ValueError, match='positive semi-definite'): MomentMatchedStart(torch.zeros(2), torch.diag(torch.tensor([1., -1.])))
    with pytest.raises(ValueError, match='sigma_max'): MomentMatchedStart(torch.zeros(2), torch.eye(2), sigma_max=float('nan'))
    with pytest.raises(ValueError, match='stochastic'): fit_sigmas(GM, 'ddpm', 5)
