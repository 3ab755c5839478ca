"""Better starts (dmlearn.starts, dmlearn.difftime) composed with the samplers of dmlearn.samplers.

- A point-mass prior at σ_max consumes the generator exactly as `GaussianStart` does, so `generate` must reproduce the
  standard run bit for bit, for every registered sampler (stochastic ones included).
- A perfect prior + the exact denoiser + a deterministic path return the data from any σ', within the baseline's own error.
- KL(p_T ‖ N(0, σ_T² I)) decreases with T; an auxiliary model fitted by `fit_aux` is never worse than that Gaussian start.
- The ELBO identity E[L] = −H(p0) − KL(p_T‖ν) − G holds in closed form on a single Gaussian.
- Bad σ', a prior whose samples have the wrong shape, and similar mistakes give clear ValueErrors.
"""
import math

import pytest
import torch

from dmlearn.gmm import get_gmm, gmm_gaussian
from dmlearn.samplers import SAMPLERS, GaussianStart, generate
from dmlearn.starts import (AuxStart, PointMass, PriorStart, Start, StartOut, defective_prior, fit_aux, gauss_kl,
                            gaussian_prior, kl_contraction, kl_mc)
from dmlearn.difftime import ScoreErrorDenoiser, elbo_gaussian, elbo_terms, prior_kl_curve, aux_kl_curve

torch.set_num_threads(1)
RING = get_gmm('ring')


def seeded(s=0): return torch.Generator().manual_seed(s)


def test_reexports():
    import dmlearn.samplers as S
    assert Start is S.Start and StartOut is S.StartOut
    from dmlearn.starts import GaussianStart as G
    assert G is S.GaussianStart


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_point_mass_prior_reproduces_standard_sampler(name):
    # PointMass draws no random numbers, so PriorStart makes the same single randn call as GaussianStart
    # (0 + σ·ε == σ·ε exactly), the sampler then sees the same generator state, and every later draw matches.
    a = generate(RING, 32, name, nfe=12, generator=seeded(3))
    b = generate(RING, 32, name, nfe=12, start=PriorStart(PointMass(torch.zeros(2)), 80.), generator=seeded(3))
    assert torch.equal(a.x, b.x) and a.nfe == b.nfe and torch.equal(a.sigmas, b.sigmas)
    assert b.start_cost == {'prior_calls': 1, 'prior_samples': 32} and b.total_nfe == b.nfe


def test_tiny_variance_prior_does_not_share_the_stream():
    # the converse, to show why the point mass is needed: a prior that draws its own noise shifts the stream
    tiny = gmm_gaussian((0., 0.), ((1e-24, 0.), (0., 1e-24)))
    a = generate(RING, 32, 'ddpm', nfe=12, generator=seeded(3))
    b = generate(RING, 32, 'ddpm', nfe=12, start=PriorStart(tiny, 80.), generator=seeded(3))
    assert not torch.allclose(a.x, b.x)


def test_perfect_prior_returns_the_data():
    from dmlearn.metrics import energy_distance
    n, nfe = 1500, 19
    ref = RING.sample(n, seeded(100))
    floor = torch.tensor([energy_distance(RING.sample(n, seeded(200 + s)), ref) for s in range(4)])
    base = energy_distance(generate(RING, n, 'heun', nfe, generator=seeded(0)).x, ref)
    tol = abs(base) + 3 * floor.std().item()             # the baseline's own error at this NFE, plus the metric's noise
    perfect = defective_prior(RING, 'perfect')
    for sp in [0.1, 1., 10.]:
        out = generate(RING, n, 'heun', nfe, start=PriorStart(perfect, sp), generator=seeded(0))
        assert out.nfe == nfe and energy_distance(out.x, ref) <= tol, sp


def test_kl_contraction_monotone():
    sig = [0., 0.25, 1., 4.]
    for kind in ['blur', 'drop', 'weights', 'gauss']:
        m, se = kl_contraction(RING, defective_prior(RING, kind), sig, n=1000)
        assert (m.diff() < 3 * (se[1:]**2 + se[:-1]**2).sqrt()).all(), kind
    A, B = gmm_gaussian(), gmm_gaussian((0., 0.), ((1., 0.), (0., 2.)))
    I = torch.eye(2, dtype=torch.float64)
    kls = torch.stack([gauss_kl(A.mean, A.cov + s**2 * I, B.mean, B.cov + s**2 * I) for s in [0., 0.5, 1., 3., 10.]])
    assert (kls.diff() < 0).all()
    est, se = kl_mc(A, B, 50_000, seeded(1))
    assert abs(est - kls[0].item()) < 4 * se


def test_prior_kl_decreases_with_T_and_aux_never_worse():
    T = torch.tensor([0.25, 0.5, 1., 2., 4., 80.], dtype=torch.float64)
    kl = prior_kl_curve(RING, T, 've', n=2000)
    assert (kl[0].diff() < 3 * (kl[1, 1:]**2 + kl[1, :-1]**2).sqrt()).all()
    assert kl[0, 0] > 10 and kl[0, -1] < 1e-4
    for K in (1, 8):
        c = aux_kl_curve(RING, T, K, n_fit=2000, n=2000)
        assert (c[2] <= 3 * c[3]).all(), K                # KL(p‖aux) − KL(p‖N(0,σ²I)) ≤ 0 within Monte Carlo error
        assert (c[0] <= kl[0] + 3 * kl[1] + 3 * c[1]).all(), K


def test_fit_aux_and_aux_start():
    aux = fit_aux(RING, 1., n_components=8, n=4000, seed=0)
    assert aux.sigma_T == 1. and aux.info['fallback'] is False
    again = fit_aux(RING, 1., n_components=8, n=4000, seed=0)
    assert torch.equal(aux.means, again.means)
    assert torch.equal(aux.sample(10, seeded(0)), again.sample(10, seeded(0)))
    assert kl_mc(RING.noised(1.), aux, 10_000, seeded(1))[0] < 0.02
    assert fit_aux(RING, 80., n_components=2, n=2000).info['fallback'] is True
    out = generate(RING, 200, 'heun', 19, start=AuxStart(aux), generator=seeded(0))
    assert out.start_cost == {'aux_calls': 1, 'aux_samples': 200} and out.sigmas[0] == 1.


def test_perfect_aux_is_stationary_for_any_T():
    # exact score + exact p_T as the start: the output is the data whatever T (moments within Monte Carlo error)
    for sT in [0.3, 3.]:
        out = generate(RING, 4000, 'heun', 39, start=AuxStart(RING.noised(sT), sT), generator=seeded(0)).x
        assert (out.mean(0) - RING.mean).abs().max() < 0.08 and (out.T.cov() - RING.cov).abs().max() < 0.12


def test_elbo_identity_single_gaussian():
    mu, Sig = torch.tensor([1., 0.5], dtype=torch.float64), torch.tensor([[0.5, 0.2], [0.2, 0.3]], dtype=torch.float64)
    for sT in [0.3, 1., 80.]:
        for kw in [{}, dict(mu_s=[0.8, 0.7], Sigma_s=[[0.6, 0.], [0., 0.2]]), dict(nu=([0.5, 0.], torch.eye(2) * (1 + sT**2)))]:
            r = elbo_gaussian(mu, Sig, sT, **kw)
            assert abs(r['elbo'] - r['rhs']) < 1e-9, (sT, kw)
            assert r['G'] >= 0 and r['KL'] >= 0
    # terms a reader can check by hand
    r = elbo_gaussian(mu, Sig, 1.)
    assert math.isclose(r['H0'], 0.5 * math.log((2 * math.pi * math.e)**2 * 0.11), rel_tol=1e-12) and r['G'] == 0.
    # the Monte Carlo estimator agrees with the closed form
    mc = elbo_terms(gmm_gaussian((1., 0.5), ((0.5, 0.2), (0.2, 0.3))), 1., n=4000, n_nodes=32)
    assert abs(mc['elbo'][0] - r['elbo']) < 4 * mc['elbo'][1]


def test_elbo_identity_mixture_with_known_score_error():
    err = ScoreErrorDenoiser(RING, 0.05)
    r = elbo_terms(RING, 2., score=err.score, n=3000, n_nodes=32)
    assert abs(r['G'][0] - err.gap(2.)) < 1e-6
    assert abs(r['diff'][0]) < 4 * r['diff'][1]


def test_bad_input():
    with pytest.raises(ValueError, match=r"must be in \(0, sigma_max=80\]"): PriorStart(RING, 0.)
    with pytest.raises(ValueError, match=r"must be in \(0, sigma_max=80\]"): PriorStart(RING, -0.5)
    with pytest.raises(ValueError, match=r"must be in \(0, sigma_max=80\]"): PriorStart(RING, 80.5)
    with pytest.raises(ValueError, match=r"must be in \(0, sigma_max=80\]"): AuxStart(RING, 1e3)
    with pytest.raises(ValueError, match=r"shape \(10, 3\); the start needs \(10, 2\)"):
        generate(RING, 10, start=PriorStart(PointMass(torch.zeros(3)), 1.))
    with pytest.raises(ValueError, match=r"the start needs \(10, 2\)"):
        generate(RING, 10, start=PriorStart(type('P', (), {'sample': lambda self, n: torch.zeros(n)})(), 1.))
    with pytest.raises(ValueError, match="has no .sample"): PriorStart(object(), 1.)(4, (2,))
    with pytest.raises(ValueError, match="fitted at sigma_T=1"): AuxStart(fit_aux(RING, 1., 2, n=500), 2.)
    with pytest.raises(ValueError, match="sigma_T must be positive"): fit_aux(RING, -1.)
    with pytest.raises(ValueError, match="unknown prior kind"): defective_prior(RING, 'gan')
    # a start below the sampler's sigma_min is refused by generate (make_sigmas), not silently run
    with pytest.raises(ValueError, match="must exceed sigma_min"): generate(RING, 4, start=PriorStart(RING, 0.001))


def test_aux_start_moved_but_importable():
    "The auxiliary-model start lives in dmlearn.difftime; the old import path still hands out the same objects."
    import dmlearn.difftime as D
    import dmlearn.starts as S
    assert AuxStart is D.AuxStart and fit_aux is D.fit_aux and S.AuxGMM is D.AuxGMM
    with pytest.raises(AttributeError, match='no attribute'): S.NoSuchStart


def test_ode_keeps_the_start_kl_sde_shrinks_it_gaussian():
    "Gaussian data and prior: every sampler's output is Gaussian, so its KL to the data is exact from the sample moments."
    from dmlearn.starts import run_path, gaussian_reverse_kernel
    data, prior = gmm_gaussian((1., 0.5), ((0.5, 0.2), (0.2, 0.3))), gmm_gaussian((0., 0.), ((1., 0.), (0., 2.)))
    I = torch.eye(2, dtype=torch.float64); sp, n = 1., 10_000
    g = seeded(0); y = prior.sample(n, g) + sp * torch.randn(n, 2, generator=g, dtype=torch.float64)
    kl0 = gauss_kl(prior.mean, prior.cov + sp**2 * I, data.mean, data.cov + sp**2 * I).item()
    kl = {s: gauss_kl((x := run_path(data, y, sp, s, nfe)).mean(0), x.T.cov(), data.mean, data.cov).item()
          for s, nfe in [('heun', 39), ('euler_maruyama', 40), ('ddpm', 40)]}
    kl_exact_sde = gauss_kl(*gaussian_reverse_kernel(data.mean, data.cov, prior.mean, prior.cov, sp), data.mean, data.cov).item()
    kl0_emp = gauss_kl(y.mean(0), y.T.cov(), data.mean, data.cov + sp**2 * I).item()   # the same start points' own KL
    assert abs(kl0_emp - kl0) < 0.05 * kl0
    assert abs(kl['heun'] - kl0_emp) < 0.02                                 # an affine, invertible map (to its discretisation): the KL is kept
    assert kl_exact_sde < 0.5 * kl0                                          # the exact reverse kernel forgets part of it
    for s in ('euler_maruyama', 'ddpm'): assert abs(kl[s] - kl_exact_sde) < 0.03 + 0.1 * kl_exact_sde, (s, kl)


def test_reverse_kernel_and_path_kls_on_the_ring():
    from dmlearn.starts import reverse_kernel_sample, path_kls
    from dmlearn.metrics import energy_distance
    y = RING.sample(3000, seeded(0)) + 0.5 * torch.randn(3000, 2, generator=seeded(1), dtype=torch.float64)
    x0 = reverse_kernel_sample(RING, y, 0.5, seeded(2))                     # p_σ through the exact kernel is p₀
    assert abs(energy_distance(x0, RING.sample(3000, seeded(3)))) < 0.003
    r = path_kls(defective_prior(RING, 'blur'), RING, 0.5, n=400, m=64)
    assert abs(r['ode-start'][0]) < 0.05 * r['start'][0] + 4 * r['ode-start'][1]
    assert r['sde-start'][0] < -3 * r['sde-start'][1] and r['start'][0] > 0.05
    r = path_kls(RING, RING, 0.5, n=300, m=32)                              # a perfect prior: nothing to keep or shrink
    assert abs(r['start'][0]) < 1e-12 and abs(r['sde'][0]) < 1e-12 and abs(r['ode'][0]) < 0.01
