"Denoising MCMC (dmlearn.dmcmc) against closed forms, brute force and the samplers' registry."
import math
import pytest
import torch
from scipy.stats import multivariate_normal
from dmlearn.core import CountNFE
from dmlearn.gmm import GMM, get_gmm, gmm_gaussian
from dmlearn.samplers import SAMPLERS, Start, StartOut, generate, get_sampler, make_sigmas, steps_for_nfe
from dmlearn.dmcmc import (DLGStart, ExactNoisePosterior, ClassifierNoisePosterior, NoisePosterior, noise_grid, level_prior,
                           run_dlg, ula_step, ula_stationary_var, generate_tweedie, vanilla_at_equal_nfe, tweedie_step)

torch.set_num_threads(1)
G = lambda s: torch.Generator().manual_seed(s)


class Replay(Start):
    def __init__(self, so): self.so = so
    def __call__(self, n, shape, generator=None, dtype=torch.float64, device='cpu'): return self.so


@pytest.fixture(scope='module')
def ring(): return get_gmm('ring')


@pytest.fixture(scope='module')
def post(ring): return ExactNoisePosterior(ring, noise_grid(60, 0.01, 10.))


def test_ula_fixed_level_stationary_law():
    "x-chain at a fixed level on one Gaussian: mean m, variances v/(1 - η/(2v)) per eigen-direction, within MC error."
    gauss = gmm_gaussian(mean=(-0.5, 2.), cov=((0.3, -0.1), (-0.1, 0.2)))
    lam, U = torch.linalg.eigh(gauss.covs[0]); m = gauss.means[0]
    ep = ExactNoisePosterior(gauss, noise_grid(20, 0.05, 5.))
    lev = 12; s = ep.sigmas[lev].item(); v = lam + s**2
    n, eta = 20_000, 0.15
    x, _, calls = run_dlg(gauss, ep, gauss.noised(s).sample(n, G(0)), torch.full((n,), lev), 80, eta, 'fixed', generator=G(1))
    V = torch.tensor([ula_stationary_var(vi.item(), eta) for vi in v], dtype=torch.float64)
    var = ((x - m) @ U).var(0)
    assert calls == 0
    assert ((x.mean(0) - m).abs() < 4 * (V.max() / n).sqrt()).all()
    assert ((var - V).abs() < 4 * V * math.sqrt(2 / n)).all(), (var, V)
    assert ((var - v).abs() > 6 * v * math.sqrt(2 / n)).all()          # the unadjusted bias is resolved, not hidden by noise


def test_ula_step_and_divergence():
    x, d, z = torch.randn(3, 5, 2, generator=G(0), dtype=torch.float64)
    s = torch.tensor([0.1, 0.5, 1., 2., 4.], dtype=torch.float64)
    torch.testing.assert_close(ula_step(x, d, s, 0.02, z), x + 0.02 * (d - x) / s[:, None]**2 + math.sqrt(0.04) * z)
    with pytest.raises(ValueError, match='0 < step_size < 2v'): ula_stationary_var(0.5, 1.0)


def test_exact_posterior_is_bayes_by_brute_force():
    "Posterior over a small grid = prior · p_σ(x) / Σ, with p_σ from scipy (closed form) and from quadrature of p0 * N(0, σ²)."
    gm = get_gmm('hard')
    sig = torch.tensor([2., 0.9, 0.4, 0.2, 0.1], dtype=torch.float64)
    xs = torch.tensor([[-0.5, -0.5], [1.5, 1.5], [-1.5, 1.8], [0.3, 0.9], [-2., -2.5]], dtype=torch.float64)
    prior = torch.tensor([0.1, 0.2, 0.3, 0.25, 0.15], dtype=torch.float64)
    p_sc = torch.tensor([[sum(w * multivariate_normal(mu.numpy(), (C + s**2 * torch.eye(2, dtype=torch.float64)).numpy()).pdf(x.numpy())
                              for w, mu, C in zip(gm.weights.tolist(), gm.means, gm.covs)) for s in sig.tolist()] for x in xs], dtype=torch.float64)
    bf = prior * p_sc / (prior * p_sc).sum(-1, keepdim=True)
    torch.testing.assert_close(ExactNoisePosterior(gm, sig, prior).probs(xs), bf, rtol=1e-9, atol=1e-12)
    # quadrature of the convolution for the ring (isotropic modes, quadrature spacing well below every σ)
    ring = get_gmm('ring'); sig2 = torch.tensor([1.5, 0.6, 0.25, 0.12], dtype=torch.float64)
    h = 0.01; t = torch.arange(-3.2, 3.2, h, dtype=torch.float64); Y = torch.cartesian_prod(t, t); p0 = ring.log_prob(Y).exp()
    d2 = torch.cdist(xs, Y)**2
    pq = torch.stack([(p0 * torch.exp(-d2 / (2 * s**2)) / (2 * math.pi * s**2)).sum(-1) * h**2 for s in sig2], -1)
    w = level_prior(sig2)                                     # not geometric: log-cell widths
    bfq = w * pq / (w * pq).sum(-1, keepdim=True)
    torch.testing.assert_close(ExactNoisePosterior(ring, sig2).probs(xs), bfq, rtol=1e-7, atol=1e-10)
    lw = sig2.log(); e = torch.cat([lw[:1] + (lw[0] - lw[1]) / 2, (lw[1:] + lw[:-1]) / 2, lw[-1:] - (lw[-2] - lw[-1]) / 2])
    torch.testing.assert_close(w, (e[:-1] - e[1:]) / (e[0] - e[-1]))


def test_classifier_interface(ring, post):
    x = ring.sample(50, G(3)) * 1.3
    cp = ClassifierNoisePosterior(lambda x: post.log_joint(x) - 7., post.sigmas)
    torch.testing.assert_close(cp.log_probs(x), post.log_probs(x))
    assert isinstance(cp, NoisePosterior)
    with pytest.raises(ValueError, match='expected'): ClassifierNoisePosterior(lambda x: torch.zeros(len(x), 2), post.sigmas).log_probs(x)


@pytest.mark.parametrize('name', list(SAMPLERS))
def test_per_sample_schedules_equal_alone(ring, post, name):
    "generate with DLG's per-sample σ̂ ([S+1, B] grids) = each sample denoised alone from its own σ̂ (given the same noise)."
    so = DLGStart(ring, post, step_size=0.01, n_chains=6, n_skip=2, burn_in=3)(12, (2,), generator=G(0))
    assert so.sigma.shape == (12,) and so.sigma.unique().numel() > 3
    info = get_sampler(name); hp = {**info.defaults, **({'norm': 'sample'} if name == 'pc' else {})}
    nfe = max(info.nfe(info.min_steps + 1, **hp), 4)
    steps = steps_for_nfe(name, nfe, **hp)
    Z = torch.randn(4 * steps + 4, 12, 2, generator=G(1), dtype=torch.float64)
    def noise(j=None):
        it = iter(range(len(Z)))
        return lambda s, sn: Z[next(it)] if j is None else Z[next(it)][j:j + 1]
    together = generate(ring, 12, sampler=name, nfe=nfe, start=Replay(so), noise_sampler=noise(), **hp).x
    alone = torch.cat([info.fn(ring, so.x[j:j + 1], make_sigmas('karras', steps, 0.002, so.sigma[j].item()), noise_sampler=noise(j), **hp)
                       for j in range(12)])
    torch.testing.assert_close(together, alone, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('n,chains,level_update', [(300, 100, 'argmax'), (250, 100, 'sample'), (40, 100, 'argmax')])
def test_nfe_accounting_matches_countnfe(ring, post, n, chains, level_update):
    outer = CountNFE(ring)
    st = DLGStart(outer, post, step_size=0.01, n_chains=chains, n_skip=3, burn_in=4, init_nfe=7, level_update=level_update)
    s = generate_tweedie(outer, n, start=st, sampler='dpmpp_2m', nfe=4, shape=(2,), generator=G(0))
    c = s.start_cost; C = min(chains, n); M = -(-n // C)
    assert c['n_chains'] == C and c['outputs_per_chain'] == M
    assert outer.nfe == c['chain_nfe_total'] + s.path_nfe + s.tweedie_nfe
    assert (c['init_nfe'], c['burn_in_nfe'], c['main_nfe']) == (7, 4, 3 * M)
    assert outer.n_evals == C * c['chain_nfe_total'] + n * (s.path_nfe + s.tweedie_nfe)
    assert math.isclose(c['nfe'], 3 * M * C / n) and math.isclose(c['nfe_with_init'], (7 + 4 + 3 * M) * C / n)
    assert c['posterior_calls'] == 1 + 4 + 3 * M
    assert (s.path_nfe, s.tweedie_nfe) == (4, 1) and math.isclose(s.total_nfe, c['nfe'] + 5)
    b = s.breakdown
    assert math.isclose(b['total'], b['chain'] + b['path'] + b['tweedie'])
    v = vanilla_at_equal_nfe(outer.reset(), n, s.total_nfe, 'dpmpp_2m', shape=(2,), generator=G(1))
    assert outer.nfe == v.total_nfe == math.floor(s.total_nfe + 1e-9)


def test_seeded_runs_repeat(ring, post):
    a = generate_tweedie(ring, 50, start=DLGStart(ring, post, n_chains=10, burn_in=2), sampler='heun', nfe=5, generator=G(4))
    b = generate_tweedie(ring, 50, start=DLGStart(ring, post, n_chains=10, burn_in=2), sampler='heun', nfe=5, generator=G(4))
    assert torch.equal(a.x, b.x) and torch.equal(a.sigmas, b.sigmas)


def test_bad_input(ring, post):
    for bad in [0., -0.1, float('nan'), float('inf'), True]:
        with pytest.raises(ValueError, match='step_size must be a positive'): DLGStart(ring, post, step_size=bad)
    with pytest.raises(ValueError, match='unstable at every level'): DLGStart(ring, post, step_size=1e3)
    for bad in [0, -2, 1.5]:
        with pytest.raises(ValueError, match='n_skip must be a positive integer'): DLGStart(ring, post, n_skip=bad)
    for grid in [[], torch.tensor([]), torch.zeros(0, dtype=torch.float64)]:
        with pytest.raises(ValueError, match='σ grid is empty'): ExactNoisePosterior(ring, grid)
    with pytest.raises(ValueError, match='σ grid is empty'): level_prior([])
    with pytest.raises(ValueError, match="'argmax' or 'sample'"): DLGStart(ring, post, level_update='icm')
    with pytest.raises(ValueError, match='must be a NoisePosterior'): DLGStart(ring, post.sigmas)
    with pytest.raises(ValueError, match='step_size must be a positive'):
        run_dlg(ring, post, ring.sample(4), torch.zeros(4, dtype=torch.long), 3, -1.)
    with pytest.raises(ValueError, match='tweedie eps'): tweedie_step(ring, ring.sample(4), -1.)


def test_noise_mlp_learns_well_separated_levels():
    "64-d Gaussian data, 6 levels a factor 3 apart: the posterior is sharp, so a briefly trained classifier's argmax matches it."
    from dmlearn.dmcmc import train_noise_mlp, posterior_agreement
    D = 64
    gD = GMM(torch.ones(1), torch.zeros(1, D), 0.1**2 * torch.eye(D)[None])
    sig = noise_grid(6, 0.03, 7.29)
    ep = ExactNoisePosterior(gD, sig)
    curve = []
    def rec(step, net):
        if step in (19, 299): curve.append(posterior_agreement(ClassifierNoisePosterior(net, sig), ep, gD, n=3000)['kl'])
    net = train_noise_mlp(gD, sig, steps=300, batch=256, seed=0, callback=rec)
    ag = posterior_agreement(ClassifierNoisePosterior(net, sig), ep, gD, n=4000)
    assert ag['argmax_agree'] > 0.95, ag
    assert curve[1] < 0.5 * curve[0], curve                                 # the KL to the exact posterior falls with training
    lp = ClassifierNoisePosterior(net, sig).log_probs(gD.sample(50, G(0)))
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(50, dtype=torch.float64))   # a posterior: sums to one


def test_noise_mlp_on_the_ring_and_checkpoint(ring, tmp_path):
    from dmlearn.dmcmc import train_noise_mlp, posterior_agreement, save_noise_mlp, load_noise_posterior, pretrained_noise_posterior
    ep = ExactNoisePosterior(ring, noise_grid(100, 0.01, 10.))
    flat = posterior_agreement(ClassifierNoisePosterior(lambda x: torch.zeros(len(x), 100), ep.sigmas), ep, ring, n=3000)
    net = train_noise_mlp(ring, ep.sigmas, steps=150, seed=1, scale=2.)
    ag = posterior_agreement(ClassifierNoisePosterior(net, ep.sigmas), ep, ring, n=3000)
    assert ag['kl'] < 0.5 * flat['kl'], (ag, flat)                          # far better than knowing nothing
    p = save_noise_mlp(net, ep.sigmas, tmp_path / 'c.safetensors')
    back = load_noise_posterior(p)
    x = ring.sample(20, G(0)) * 1.5
    torch.testing.assert_close(back.log_probs(x), ClassifierNoisePosterior(net, ep.sigmas).log_probs(x))
    shipped = posterior_agreement(pretrained_noise_posterior('ring'), ep, ring, n=3000)
    assert shipped['kl'] < ag['kl'] and shipped['within_3'] > 0.3, shipped


def test_noise_mlp_bad_input(ring, post):
    from dmlearn.dmcmc import NoiseMLP, train_noise_mlp, posterior_agreement, save_noise_mlp, pretrained_noise_posterior
    with pytest.raises(ValueError, match='takes points'): NoiseMLP(2, 5)(torch.zeros(3, 4))
    with pytest.raises(ValueError, match='steps must be a positive integer'): train_noise_mlp(ring, post.sigmas, steps=0)
    with pytest.raises(ValueError, match='points'): train_noise_mlp(torch.zeros(7), post.sigmas)
    with pytest.raises(ValueError, match='σ grid'): train_noise_mlp(ring, [1., 1.])
    with pytest.raises(ValueError, match='share one σ grid'):
        posterior_agreement(ExactNoisePosterior(ring, noise_grid(5)), post, ring)
    with pytest.raises(ValueError, match='grid has 60 levels'): save_noise_mlp(NoiseMLP(2, 5), post.sigmas, '/tmp/x.safetensors')
    with pytest.raises(ValueError, match='no shipped noise classifier'): pretrained_noise_posterior('moons')
