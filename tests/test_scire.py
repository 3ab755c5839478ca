"SciRE-Solver / SciREI (nbs/20_scire.ipynb): DDIM identity, NFE accounting, measured orders, bad input."
import math
import pytest, torch
from dmlearn.core import CountNFE, Recorder
from dmlearn.gmm import GMM, get_gmm, gmm_gaussian
from dmlearn.samplers import SAMPLERS, load_samplers, sample_ddim, steps_for_nfe
from dmlearn.schedules import get_sigmas_exponential, get_sigmas_karras
from dmlearn.metrics import fit_order, gaussian_flow, ode_reference
from dmlearn.scire import (sample_scire, sample_scirei, step_scire, step_scirei, step_scire_multistep, get_sigmas_nsr,
                           resolve_phi, phi1, phi2)

load_samplers()
SCIRE = ['scire_2', 'scire_3', 'scire_2_fd', 'scire_3_fd', 'scirei_2', 'scire_2m']
ring = get_gmm('ring')
SMAX, SMIN = 80., 0.002

@pytest.fixture
def one_thread():
    "Small tensors: one torch thread is several times faster on a busy machine (restored afterwards)."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

def x_start(n=64, d=2, seed=0): return SMAX * torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)

def test_registered():
    assert set(SCIRE) <= set(SAMPLERS)
    for name in SCIRE: assert SAMPLERS[name].min_steps == 2 and not SAMPLERS[name].stochastic

@pytest.mark.parametrize('grid', [get_sigmas_karras(12, SMIN, SMAX), get_sigmas_nsr(12, SMIN, SMAX)])
def test_first_order_is_ddim(grid):
    x = x_start(500)
    ddim = sample_ddim(ring, x, grid, eta=0.)
    for out in [sample_scire(ring, x, grid, order=1), sample_scire(ring, x, grid, order=1, method='multistep'),
                sample_scirei(ring, x, grid, order=1)]:
        assert (out - ddim).abs().max() < 1e-12

@pytest.mark.parametrize('name', SCIRE)
def test_nfe_counted_equals_registry(name):
    info = SAMPLERS[name]
    overs = [{}, {'order': 1}] + ([{'order': 3}, {'method': 'multistep'}, {'method': 'multistep', 'order': 3}, {'order': 3, 'r2': 'taylor'}]
                                  if info.fn is sample_scire else [])
    for steps in [2, 3, 7]:
        for over in overs:
            hp = {**info.defaults, **over}
            m = CountNFE(ring)
            info.fn(m, x_start(8), get_sigmas_nsr(steps, SMIN, SMAX), **hp)
            assert m.nfe == info.nfe(steps, **hp), (name, steps, over)
            k = hp.get('order', 2)
            assert m.nfe == (steps if hp.get('method') == 'multistep' else k * (steps - 1) + 1)

def test_steps_for_nfe():
    assert steps_for_nfe('scire_3', 10) == 4 and steps_for_nfe('scire_2', 10) == 5 and steps_for_nfe('scire_2m', 10) == 10
    with pytest.raises(ValueError, match='needs at least 4 NFE'): steps_for_nfe('scire_3', 3)

def _errors(model, xT, ref, fn, Ns, **hp):
    nfe, err = [], []
    for N in Ns:
        m, rec = CountNFE(model), Recorder(keys=('x',))
        fn(m, xT, get_sigmas_nsr(N + 1, SMIN, SMAX), callback=rec, **hp)
        nfe.append(m.nfe - 1); err.append((rec.steps[N]['x'] - ref).norm(dim=-1).mean().item())
    return fit_order(nfe, err)

def test_orders_gaussian(one_thread):
    "Closed-form Gaussian flow: φ=1 second order ≥ 1.8 (it super-converges), Taylor-corrected third order ≥ 2.7; RD ≈ 1."
    g = gmm_gaussian(); xT = x_start(32)
    ref = gaussian_flow(xT, SMAX, SMIN, g.means[0], g.covs[0])
    assert _errors(g, xT, ref, sample_scire, (16, 32, 64), order=2, phi='fd') >= 1.8
    assert _errors(g, xT, ref, sample_scire, (16, 32, 64), order=3, phi='fd', r2='taylor') >= 2.7
    assert 0.8 <= _errors(g, xT, ref, sample_scire, (16, 32, 64), order=2) <= 1.2

def test_orders_mixture_regression(one_thread):
    "Non-Gaussian two-mode 1-D mixture: with the paper's φ the measured order is ≈ 1 (notes §7.5); with φ = 1 it is ≈ 2."
    mix = GMM(torch.tensor([.3, .7]), torch.tensor([[-1.], [1.]]), torch.tensor([[[.1]], [[.05]]]))
    xT = x_start(32, 1)
    ref = ode_reference(mix, xT, SMAX, SMIN, rtol=1e-12, atol=1e-12)
    Ns = (32, 64, 128)
    for fn, hp in [(sample_scire, {'order': 2}), (sample_scire, {'order': 3}), (sample_scirei, {})]:
        assert 0.75 <= _errors(mix, xT, ref, fn, Ns, **hp) <= 1.25, hp
    assert _errors(mix, xT, ref, sample_scire, Ns, order=2, phi='fd') >= 1.7
    assert _errors(mix, xT, ref, sample_scirei, Ns, phi='fd') >= 1.7

def test_phi():
    assert resolve_phi('rd3') == 2 / 3 and resolve_phi('fd') == 1. and abs(resolve_phi('rd_inf') - (1 - math.exp(-1))) < 1e-15
    for m in range(1, 10): assert abs(phi1(m) + phi2(m) - 1) < 1e-15

@pytest.mark.parametrize('kw,msg', [({'phi': 0.}, 'phi must be a positive number'), ({'phi': -1}, 'phi must be a positive number'),
                                    ({'phi': 'rd'}, 'phi must be a positive number'), ({'order': 4}, 'SciRE order must be 1 or 2 or 3'),
                                    ({'order': 0}, 'SciRE order must be'), ({'method': 'adaptive'}, "method must be 'singlestep' or 'multistep'"),
                                    ({'r2': 'exact'}, "r2 must be 'paper' or 'taylor'")])
def test_bad_input_scire(kw, msg):
    with pytest.raises(ValueError, match=msg): sample_scire(ring, x_start(4), torch.tensor([10., 1., 0.], dtype=torch.float64), **kw)

def test_bad_input_scirei_and_grid():
    sig = torch.tensor([10., 1., 0.], dtype=torch.float64)
    with pytest.raises(ValueError, match='plain DPM-Solver-3'): sample_scirei(ring, x_start(4), sig, order=3)
    with pytest.raises(ValueError, match='phi must be a positive number'): sample_scirei(ring, x_start(4), sig, phi=float('nan'))
    with pytest.raises(ValueError, match='kappa must be'): get_sigmas_nsr(10, SMIN, SMAX, kappa=-1.)
    with pytest.raises(ValueError, match='same length'):
        step_scire_multistep(x_start(4), x_start(4), torch.tensor(2.), torch.tensor(1.), [x_start(4)], [])

def test_nsr_grid():
    g = get_sigmas_nsr(10, SMIN, SMAX)
    assert len(g) == 11 and g[0] == SMAX and g[-2] == SMIN and g[-1] == 0 and (g.diff() < 0).all()
    assert (get_sigmas_nsr(10, SMIN, SMAX, kappa=0) - get_sigmas_exponential(10, SMIN, SMAX)).abs().max() < 1e-12
