"""dmlearn.schedules against diffusers' schedulers (offline; nothing is downloaded).

What is matched (see nbs/02_schedules.ipynb, "Check against diffusers"):
- `DDIMScheduler.timesteps` == `ddpm_timesteps(n, spacing=...)` (integers, exactly), and DDIM's noise levels
  σ̃ = √((1-ᾱ)/ᾱ) of its own `alphas_cumprod` at those timesteps, then 0, == `get_sigmas_ddpm(n, ddim.alphas_cumprod, ...)`.
- `EulerDiscreteScheduler.timesteps` (fractional for 'linspace') == `ddpm_timesteps(..., integer=False)`, and its
  `sigmas` (σ̃ interpolated linearly at those timesteps, then 0) == `get_sigmas_ddpm(..., integer=False)`:
  to float32 rounding with diffusers' own float32 table, to rtol 2e-4 with our float64 table (diffusers loses ~4 digits
  of σ̃ at t=0 to float32 cancellation in 1-ᾱ).
- `EulerDiscreteScheduler(use_karras_sigmas=True).sigmas` == `get_sigmas_karras(n, σ̃_last, σ̃_first)` where the range is
  σ̃ at the first and last chosen timestep (for the default 'linspace' spacing: `ddpm_sigma_range()`).
- `ScoreSdeVeScheduler.sigmas` == `get_sigmas_ve(n, σ_min, σ_max, eps_s)`.
"""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from diffusers import DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler, ScoreSdeVeScheduler

from dmlearn.core import alphas_cumprod_to_sigmas, append_zero, check_sigmas
from dmlearn.schedules import (SPACINGS, ddpm_alphas_cumprod, ddpm_sigma_range, ddpm_timesteps, get_sigmas_ddpm,
                               get_sigmas_karras, get_sigmas_ve)

CFG = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
NS = [1, 5, 10, 50]


def rel(a, b):
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    return ((a - b).abs() / b.abs().clamp_min(1e-30)).max().item()


@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_alphas_cumprod_table(beta_schedule):
    sched = EulerDiscreteScheduler(**{**CFG, "beta_schedule": beta_schedule})
    ours = ddpm_alphas_cumprod(1000, 1e-4, 0.02, beta_schedule)
    assert ours.dtype == torch.float64 and ours.shape == (1000,)
    assert rel(ours, sched.alphas_cumprod) < 2e-5          # diffusers builds the table in float32


@pytest.mark.parametrize("steps_offset", [0, 1])
@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("spacing", SPACINGS)
def test_ddim_timesteps_and_sigmas(spacing, n, steps_offset):
    ddim = DDIMScheduler(**CFG, timestep_spacing=spacing, steps_offset=steps_offset, clip_sample=False)
    ddim.set_timesteps(n)
    ts = ddpm_timesteps(n, 1000, spacing, steps_offset)
    assert ts.dtype == torch.int64
    assert torch.equal(ts, ddim.timesteps)
    expected = append_zero(alphas_cumprod_to_sigmas(ddim.alphas_cumprod.double()[ddim.timesteps]))
    got = get_sigmas_ddpm(n, ddim.alphas_cumprod, spacing, steps_offset)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)
    check_sigmas(got)


@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("spacing", SPACINGS)
def test_ddpm_scheduler_timesteps(spacing, n):
    ddpm = DDPMScheduler(**CFG, timestep_spacing=spacing, clip_sample=False)
    ddpm.set_timesteps(n)
    assert torch.equal(ddpm_timesteps(n, 1000, spacing), ddpm.timesteps)


@pytest.mark.parametrize("steps_offset", [0, 1])
@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("spacing", SPACINGS)
def test_euler_timesteps_and_sigmas(spacing, n, steps_offset):
    euler = EulerDiscreteScheduler(**CFG, timestep_spacing=spacing, steps_offset=steps_offset)
    euler.set_timesteps(n)
    ts = ddpm_timesteps(n, 1000, spacing, steps_offset, integer=False)
    torch.testing.assert_close(ts, euler.timesteps.double(), rtol=0, atol=1e-4)   # diffusers' linspace is float32
    own_table = get_sigmas_ddpm(n, euler.alphas_cumprod, spacing, steps_offset, integer=False)
    f64_table = get_sigmas_ddpm(n, None, spacing, steps_offset, integer=False)
    assert len(own_table) == len(euler.sigmas) == n + 1
    assert own_table[-1] == 0 and euler.sigmas[-1] == 0
    assert rel(own_table[:-1], euler.sigmas[:-1]) < 1e-6
    assert rel(f64_table[:-1], euler.sigmas[:-1]) < 2e-4


# n=1 is left out: diffusers then picks a single timestep, so its Karras range is one point (σ_min == σ_max),
# which get_sigmas_karras refuses.
@pytest.mark.parametrize("n", [2, 5, 10, 50])
@pytest.mark.parametrize("spacing", SPACINGS)
def test_euler_karras_sigmas(spacing, n):
    ek = EulerDiscreteScheduler(**CFG, timestep_spacing=spacing, use_karras_sigmas=True)
    ek.set_timesteps(n)
    rng = get_sigmas_ddpm(n, None, spacing, integer=False)          # diffusers' range: σ̃ at its first/last timestep
    ours = get_sigmas_karras(n, rng[-2], rng[0])
    assert ours[-1] == 0 and ek.sigmas[-1] == 0
    assert rel(ours[:-1], ek.sigmas[:-1]) < 2e-4
    if spacing == "linspace":
        assert rel(get_sigmas_karras(n, *ddpm_sigma_range())[:-1], ek.sigmas[:-1]) < 2e-4


@pytest.mark.parametrize("n", NS)
def test_leading_pitfall(n):
    "diffusers' DDIM default 'leading' never visits the noisiest timesteps: for n=10 it starts at t=900."
    ddim = DDIMScheduler(**CFG, clip_sample=False)          # default timestep_spacing='leading'
    ddim.set_timesteps(n)
    assert ddim.config.timestep_spacing == "leading"
    assert int(ddim.timesteps[0]) == (n - 1) * (1000 // n) == int(ddpm_timesteps(n, spacing="leading")[0])
    if n == 10:
        assert int(ddim.timesteps[0]) == 900
        assert int(ddpm_timesteps(n, spacing="trailing")[0]) == 999
    if n == 1:   # one step with 'leading' (or 'linspace') starts at t=0, the clean end
        assert int(ddim.timesteps[0]) == 0


@pytest.mark.parametrize("n", [2, 5, 10, 50])
def test_score_sde_ve_sigmas(n):
    sde = ScoreSdeVeScheduler()            # sigma_min=0.01, sigma_max=1348, sampling_eps=1e-5
    sde.set_timesteps(n)
    sde.set_sigmas(n)
    ours = get_sigmas_ve(n, sde.config.sigma_min, sde.config.sigma_max, eps_s=sde.config.sampling_eps)
    assert rel(ours[:-1], sde.sigmas) < 1e-6
