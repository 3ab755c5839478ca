"""DDIM with a moment-matched Gaussian-mixture kernel (dmlearn.ddim_gmm, nbs/21_ddim_gmm.ipynb).

- One component, or s = 0, is `sample_ddim` with the same η and the same noise stream, bit for bit.
- Wherever σ_↑² I ⪰ Δ̃_k, the kernel has DDIM's first two moments: exactly from (π, δ, Δ), and by Monte Carlo.
- The offsets are centred (Σ π δ = 0) to float precision.
- Where matching is impossible the step is well defined ('shrink' / 'gaussian' keep the moments, 'clip' inflates them
  by the reported amount), never with a negative variance, and the infeasible steps are counted.
- Bad K, negative s, η outside [0, 1] → clear ValueErrors; the NFE counted equals the registry's claim.
"""
import math

import pytest
import torch

from dmlearn.core import CountNFE
from dmlearn.gmm import get_gmm
from dmlearn.samplers import SAMPLERS, load_samplers, sample_ddim, step_ddim
from dmlearn.schedules import get_sigmas_karras
from dmlearn.ddim_gmm import (GMMKernel, draw_components, ddim_sigma_up, kernel_moments, make_gmm_kernel, make_offsets,
                              max_scale, sample_ddim_gmm, step_ddim_gmm)

torch.set_num_threads(1)
RING = get_gmm('ring')
SIG = get_sigmas_karras(8, 0.002, 80.)
F64 = dict(dtype=torch.float64)


def seeded(s=0): return torch.Generator().manual_seed(s)


def start(n=200, d=2, seed=0): return 80 * torch.randn(n, d, generator=seeded(seed), **F64)


@pytest.mark.parametrize('eta', [0., 0.2, 0.5, 1.])
@pytest.mark.parametrize('hp', [{'n_components': 1}, {'scale': 0.}, {'n_components': 1, 'scale': 5., 'infeasible': 'clip'}])
def test_one_component_or_zero_scale_is_ddim(eta, hp):
    x = start()
    assert torch.equal(sample_ddim_gmm(RING, x, SIG, eta=eta, generator=seeded(1), **hp), sample_ddim(RING, x, SIG, eta=eta, generator=seeded(1)))
    Z = torch.randn(40, 200, 2, generator=seeded(2), **F64)
    def ns():
        it = iter(range(40))
        return lambda s, sn: Z[next(it)]
    assert torch.equal(sample_ddim_gmm(RING, x, SIG, eta=eta, noise_sampler=ns(), **hp), sample_ddim(RING, x, SIG, eta=eta, noise_sampler=ns()))


def test_shrink_at_eta_zero_is_ddim():
    st = {}
    x = start()
    assert torch.equal(sample_ddim_gmm(RING, x, SIG, eta=0., scale=0.5, generator=seeded(1), stats=st), sample_ddim(RING, x, SIG))
    assert st['n_infeasible'] == st['n_steps'] == 8 and all(r['rho'] == 0 for r in st['steps'])


@pytest.mark.parametrize('kind,D,K', [('random', 2, 8), ('random', 32, 8), ('svd', 32, 8), ('svd', 5, 5), ('random', 3, 1)])
def test_offsets_centred(kind, D, K):
    g = seeded(3)
    for priors in [None, torch.linspace(1, 3, K, **F64) / torch.linspace(1, 3, K, **F64).sum()]:
        for _ in range(5):
            d = make_offsets(D, K, 2.5, kind, priors=priors, generator=g)
            pi = torch.full((K,), 1 / K, **F64) if priors is None else priors
            assert (pi @ d).abs().max().item() < 1e-14


@pytest.mark.parametrize('kind,D,K,form', [('random', 2, 8, 'B'), ('svd', 6, 4, 'B'), ('random', 6, 4, 'A'), ('svd', 8, 8, 'A')])
def test_kernel_moments_exact(kind, D, K, form):
    g = seeded(4)
    for priors in [None, torch.linspace(1, 2, K, **F64) / torch.linspace(1, 2, K, **F64).sum()]:
        k = make_gmm_kernel(D, K, 0.7, kind, priors=priors, form=form, generator=g)
        M = torch.einsum('k,kd,ke->de', k.pi, k.delta, k.delta)
        assert torch.allclose(torch.einsum('k,kde->de', k.pi, k.Delta()), M, atol=1e-14, rtol=0)     # Eq. 8
        a = 0.6
        su = (k.lam_max.sqrt() / a).item() * 1.001                                                  # just feasible
        for pol in ['shrink', 'gaussian', 'clip']:
            m, C = kernel_moments(k, su, a, pol)
            assert m.abs().max() < 1e-14 and (C - su**2 * torch.eye(D, **F64)).abs().max() < 1e-14
        for pol in ['shrink', 'gaussian']:                                                          # infeasible: still DDIM's
            m, C = kernel_moments(k, su / 2, a, pol)
            assert m.abs().max() < 1e-14 and (C - su**2 / 4 * torch.eye(D, **F64)).abs().max() < 1e-14
        m, C = kernel_moments(k, su / 2, a, 'clip')                                                  # the paper: inflated
        excess = (k.pi[:, None] * (k.lam / a**2 - su**2 / 4).clamp_min(0)).sum()
        assert excess > 0 and abs(C.trace() - D * su**2 / 4 - excess) < 1e-13
        assert torch.linalg.eigvalsh(C).min() > 0


def test_ortho_eigenvalues():
    k = make_gmm_kernel(12, 8, 0.9, 'svd', generator=seeded(5))
    ev = torch.linalg.eigvalsh(k.Delta()[0])
    assert torch.allclose(ev[-7:], torch.full((7,), 0.81 / 8, **F64), atol=1e-14)
    assert ev[:-7].abs().max() < 1e-14
    assert torch.allclose(k.delta.norm(dim=1), torch.full((8,), 0.9 * math.sqrt(7 / 8), **F64), atol=1e-13)
    sig = get_sigmas_karras(10, 0.002, 80.)                                    # s_max = √K α_s σ_↑ is the feasibility edge
    smax = max_scale(sig[:-1], sig[1:], 1., 8)
    assert smax[-1] == 0 and (max_scale(sig[:-1], sig[1:], 0., 8) == 0).all()


@pytest.mark.parametrize('kind,form,pol,eta', [('svd', 'B', 'shrink', 1.), ('random', 'A', 'gaussian', 0.7), ('svd', 'B', 'clip', 0.)])
def test_step_moments_monte_carlo(kind, form, pol, eta):
    N, D, K = 200_000, 4, 3
    g = seeded(6)
    k = make_gmm_kernel(D, K, 0.5, kind, form=form, generator=g)
    s, sn = torch.tensor(2., **F64), torch.tensor(1.5, **F64)
    x = torch.randn(1, D, generator=g, **F64).expand(N, D)
    den = torch.randn(1, D, generator=g, **F64).expand(N, D)
    comp = draw_components(k.pi, torch.randn(N, D, generator=g, **F64))
    st = {}
    out = step_ddim_gmm(x, den, s, sn, eta, torch.randn(N, D, generator=g, **F64), k, comp, pol, st)
    su, a = ddim_sigma_up(s, sn, eta), (1 + sn**2).rsqrt()
    m, C = kernel_moments(k, su, a, pol)
    if st['steps'][0]['infeasible'] == 0:                                     # where feasible: DDIM's moments exactly
        assert m.abs().max() < 1e-14 and (C - su**2 * torch.eye(D, **F64)).abs().max() < 1e-13
    mu = step_ddim(x[:1], den[:1], s, sn, eta)[0]
    assert ((out.mean(0) - mu - m).abs() / (C.diagonal() / N).sqrt()).max() < 5
    se = ((C.diagonal()[:, None] * C.diagonal()[None] + C**2) / N).sqrt()
    assert ((out.T.cov() - C).abs() / se).max() < 5


def test_no_negative_variance_and_counts():
    x = start()
    for eta, pol in [(0., 'clip'), (0.3, 'clip'), (1., 'shrink'), (1., 'gaussian')]:
        st = {}
        out = sample_ddim_gmm(RING, x, SIG, eta=eta, scale=0.3, infeasible=pol, generator=seeded(1), stats=st)
        assert torch.isfinite(out).all() and st['n_steps'] == 8 and 1 <= st['n_infeasible'] <= 8
        assert all(0 <= r['rho'] <= 1 and r['excess_var'] >= 0 for r in st['steps'])
        assert (pol == 'clip') == any(r['excess_var'] > 0 for r in st['steps'])


def test_bad_input():
    x, sig = start(4), torch.tensor([10., 1., 0.], **F64)
    for hp, msg in [({'n_components': 0}, 'n_components must be a positive integer'), ({'n_components': 1.5}, 'n_components must be a positive integer'),
                    ({'scale': -1.}, 'scale must be a finite number >= 0'), ({'scale': float('inf')}, 'scale must be a finite number >= 0'),
                    ({'eta': 1.01}, r'eta must be in \[0, 1\]'), ({'eta': -0.5}, r'eta must be in \[0, 1\]'),
                    ({'offsets': 'svd'}, 'use offsets='), ({'offsets': 'gauss'}, 'offsets must be one of'),
                    ({'infeasible': 'none'}, 'infeasible must be one of'), ({'form': 'Z'}, 'form must be one of')]:
        with pytest.raises(ValueError, match=msg): sample_ddim_gmm(RING, x, sig, **hp)
    with pytest.raises(ValueError, match='offsets must be centred'): GMMKernel.from_offsets(torch.ones(2, 3, **F64))
    with pytest.raises(ValueError, match='eta must be'): sample_ddim_gmm(RING, x, sig, eta='1')
    with pytest.raises(ValueError, match='n_components must be'): sample_ddim_gmm(RING, x, sig, n_components=True)
    np = pytest.importorskip('numpy')                                        # numpy and 0-d tensor scalars are accepted
    a = sample_ddim_gmm(RING, x, sig, eta=np.float32(0.5), n_components=np.int64(3), scale=torch.tensor(0.25), generator=seeded(0))
    assert torch.equal(a, sample_ddim_gmm(RING, x, sig, eta=0.5, n_components=3, scale=0.25, generator=seeded(0)))


@pytest.mark.parametrize('name', ['ddim_gmm', 'ddim_gmm_clip'])
def test_registry_nfe_counted(name):
    load_samplers()
    info = SAMPLERS[name]
    assert info.stochastic and info.fn is sample_ddim_gmm
    for steps in [1, 3, 10]:
        m = CountNFE(RING)
        info.fn(m, start(64), get_sigmas_karras(steps, 0.002, 80.), generator=seeded(0), **info.defaults)
        assert m.nfe == info.nfe(steps, **info.defaults) == steps


def test_images_and_svd():
    model = lambda x, s: 0.5 * x
    out = sample_ddim_gmm(model, 80 * torch.randn(3, 1, 4, 4, generator=seeded(0), **F64), SIG, eta=0.5, scale=1., offsets='svd', generator=seeded(1))
    assert out.shape == (3, 1, 4, 4) and torch.isfinite(out).all()
