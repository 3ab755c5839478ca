"""The sampler step loop never makes the host wait for the device.

Every registered sampler runs on a denoiser that itself converts nothing. Syncs are counted from the first model call
(after the grid's validation) to the sampler's return, with the finiteness checks held by an outer `deferred_checks`
block (an inner block joins it), so only the loop is measured: it must make no tensor → Python conversion at all.
On a CUDA machine the same window runs under `torch.cuda.set_sync_debug_mode('error')` (flag `gpu`)."""
import pytest
import torch
from dmlearn.core import append_dims, deferred_checks
from dmlearn.samplers import HostSyncCounter, load_samplers, steps_for_nfe
from dmlearn.schedules import get_sigmas

SYNCING = {   # samplers that synchronise by their nature, and why (each says so in its docstring)
    'dpm_adaptive': 'an adaptive step size is accepted or rejected on the host',
}

def std_normal(x, s):
    "E[x0 | x] for x0 ~ N(0, I): a denoiser that converts nothing."
    return x / (1 + append_dims(s, x.ndim)**2)

class FromFirstCall:
    "Wrap a model: start `begin()` at its first call (after the sampler's setup)."
    def __init__(self, model, begin): self.model, self.begin, self.started = model, begin, False
    def __call__(self, x, s, **kw):
        if not self.started: self.started = True; self.begin()
        return self.model(x, s, **kw)

def loop_window(name, nfe, device='cpu', begin=None, end=None):
    "Run sampler `name` at budget `nfe`, calling `begin()` at the first model call and `end()` when it returns."
    info = load_samplers()[name]
    steps = steps_for_nfe(name, nfe)
    sig = get_sigmas('karras', steps, sigma_min=0.002, sigma_max=80.).to(device)
    x = 80 * torch.randn(8, 2, generator=torch.Generator(device).manual_seed(0), dtype=torch.float64, device=device)
    gen = torch.Generator(device).manual_seed(1)
    model = FromFirstCall(std_normal, begin)
    with deferred_checks():                       # the checks resolve here, outside the measured window
        try: out = info.fn(model, x, sig, generator=gen, **info.defaults)
        finally: end()
    assert model.started and torch.isfinite(out).all()
    return out

def names(): return sorted(load_samplers())

@pytest.mark.parametrize('name', names())
def test_loop_makes_no_host_sync(name):
    counter, entered = HostSyncCounter(), []
    def begin(): counter.__enter__(); entered.append(1)
    def end():
        if entered: counter.__exit__(None, None, None)
    loop_window(name, 12, begin=begin, end=end)
    if name in SYNCING:
        info = load_samplers()[name]
        assert 'synchronis' in (info.fn.__doc__ or '') + info.description, f"{name} must say that it synchronises"
        return
    assert counter.count == 0, f"{name}: {counter.count} host syncs inside the loop: {sorted(set(counter.calls))}"

def test_counter_sees_a_sync():
    "The check can fail: a loop that reads `(sigma_next == 0).all()` per step is caught."
    from dmlearn.samplers import setup_sampler, sampler_loop
    @sampler_loop
    def sample_naive(model, x, sigmas, extra_args=None, callback=None, disable=None, *, generator=None):
        sigmas, D, _ = setup_sampler(model, x, sigmas)
        for i in range(len(sigmas) - 1):
            s, sn = sigmas[i], sigmas[i + 1]; den = D(x, s)
            x = den if (sn == 0).all() else x + (sn - s) * (x - den) / s
        return x
    counter = HostSyncCounter(); model = FromFirstCall(std_normal, counter.__enter__)
    sig = get_sigmas('karras', 6, sigma_min=0.002, sigma_max=80.)
    with deferred_checks():
        try: sample_naive(model, 80 * torch.randn(4, 2, dtype=torch.float64), sig)
        finally: counter.__exit__(None, None, None)
    assert counter.count == 6 and set(counter.calls) == {'__bool__'}

@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
@pytest.mark.parametrize('name', [n for n in names() if n not in SYNCING])
def test_loop_passes_cuda_sync_debug_error(name):
    "gpu: the same window under the driver's own check."
    loop_window(name, 12, device='cuda', begin=lambda: torch.cuda.set_sync_debug_mode('error'),
                end=lambda: torch.cuda.set_sync_debug_mode(0))
