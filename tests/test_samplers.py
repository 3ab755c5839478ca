"Properties every registered sampler must have, including those registered by later chapters."
import inspect, math
import pytest, torch
from dmlearn.core import CountNFE
from dmlearn.gmm import get_gmm
from dmlearn.samplers import SAMPLERS, load_samplers, generate, steps_for_nfe

load_samplers()
NAMES = sorted(SAMPLERS)
ring = get_gmm('ring')

def grid(steps, smax=80., smin=0.01):
    return torch.cat([torch.exp(torch.linspace(math.log(smax), math.log(smin), steps, dtype=torch.float64)), torch.zeros(1, dtype=torch.float64)])

@pytest.mark.parametrize('name', NAMES)
def test_signature(name):
    "k-diffusion's signature: (model, x, sigmas, extra_args, callback, disable, *, generator, noise_sampler, ...)."
    ps = list(inspect.signature(SAMPLERS[name].fn).parameters.values())
    assert [p.name for p in ps[:6]] == ['model', 'x', 'sigmas', 'extra_args', 'callback', 'disable']
    kw = {p.name for p in ps if p.kind == p.KEYWORD_ONLY}
    assert {'generator', 'noise_sampler'} <= kw

@pytest.mark.parametrize('name', NAMES)
def test_seed_repeats_and_nfe_counted(name):
    info = SAMPLERS[name]
    runs = [generate(ring, 64, sampler=name, nfe=12, generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(runs[0].x, runs[1].x)
    assert runs[0].nfe == info.nfe(steps_for_nfe(name, 12), **info.defaults) <= 12
    if info.is_stochastic():
        other = generate(ring, 64, sampler=name, nfe=12, generator=torch.Generator().manual_seed(8))
        assert not torch.equal(runs[0].x, other.x)

@pytest.mark.parametrize('name', NAMES)
def test_callback_dict(name):
    seen = []
    SAMPLERS[name].fn(ring, 80 * torch.randn(8, 2, dtype=torch.float64), grid(4), callback=seen.append,
                      generator=torch.Generator().manual_seed(0), **SAMPLERS[name].defaults)
    assert len(seen) >= 1 and set(seen[0]) >= {'x', 'i', 'sigma', 'sigma_hat', 'denoised'}

@pytest.mark.parametrize('name', NAMES)
def test_per_sample_grid_equals_one_at_a_time(name):
    "A [S+1, B] grid equals running each sample alone on its column, for every sampler, with the same noise."
    if name == 'pc': hp = {'norm': 'sample'}        # Song's batch-averaged step size couples samples by design
    else: hp = {}
    hp = {**SAMPLERS[name].defaults, **hp}
    B = 4
    sig = torch.stack([grid(5, smax=m) for m in (80., 10., 3., 1.)], 1)
    x = sig[0][:, None] * torch.randn(B, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    Z = torch.randn(64, B, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    def ns(j=None):
        it = iter(range(64))
        return lambda s, sn: Z[next(it)] if j is None else Z[next(it)][j:j + 1]
    together = SAMPLERS[name].fn(ring, x, sig, noise_sampler=ns(), **hp)
    alone = torch.cat([SAMPLERS[name].fn(ring, x[j:j + 1], sig[:, j], noise_sampler=ns(j), **hp) for j in range(B)])
    assert (together - alone).abs().max() < 1e-9

@pytest.mark.parametrize('name', NAMES)
def test_nan_model_is_reported(name):
    bad = lambda x, s: torch.full_like(x, float('nan'))
    with pytest.raises(FloatingPointError, match='non-finite'):
        SAMPLERS[name].fn(bad, torch.ones(4, 2, dtype=torch.float64), grid(3), generator=torch.Generator().manual_seed(0), **SAMPLERS[name].defaults)

@pytest.mark.parametrize('name', NAMES)
def test_bad_grid_is_refused(name):
    for sig, msg in [(torch.tensor([1., 5., 0.]), 'decreasing'), (torch.tensor([5., 1.]), 'end in 0')]:
        with pytest.raises(ValueError, match=msg):
            SAMPLERS[name].fn(ring, torch.ones(4, 2, dtype=torch.float64), sig, **SAMPLERS[name].defaults)

def test_images_shape():
    "The same samplers run on [B, C, H, W] batches."
    model = lambda x, s: 0.5 * x
    for name in NAMES:
        out = generate(model, 3, sampler=name, nfe=8, shape=(1, 4, 4), generator=torch.Generator().manual_seed(0))
        assert out.x.shape == (3, 1, 4, 4) and torch.isfinite(out.x).all()
