"""Our samplers against diffusers' scheduler loops, with the exact Gaussian mixture as the model (offline).

The exact GMM is wrapped as a *discrete* model of the VP point, `fn(x_vp, sigma) -> ε̂ | x̂0 | v̂`, evaluated at the
timesteps diffusers picks and at the noise level σ̃ = √((1-ᾱ)/ᾱ) diffusers itself uses for that call
(`alphas_cumprod[t]` for DDIM/DDPM; `sigmas[step_index]`, or `sigmas_interpol` for KDPM2's second stage, for the
others). Taking σ̃ from the scheduler, not from a rounded timestep, is the pitfall of methods/baselines.md §5.
The same function drives both sides: diffusers calls it in its own loop; our samplers call it through
`core.as_denoiser(fn, prediction_type, vp_input=True)`.

Our σ grid is the scheduler's own σ̃ at its timesteps, then 0 (float32 values, as diffusers holds them, read in float64).
Starts: VP-state schedulers (DDIM, DDPM, DPM-Solver) start from z ~ N(0, I), so our σ-coordinate start is z/α_T =
z·√(1+σ̃_T²); k-style schedulers (Euler, Heun, KDPM2) hold x̃ and start at `init_noise_sigma`·z (= √(σ̃_max²+1)·z for
`leading` spacing, σ̃_max·z otherwise). Every run ends at σ = 0, where x̃ = x, and the final samples are compared.
diffusers computes in float32 (we feed it float32 like a pipeline would), our samplers in float64: tolerance 1e-4
with data of scale ~2. Where diffusers' `step` keeps the sample's dtype (DDIM, DDPM, Heun, KDPM2) we also run it in
float64 on the same table values (`to_float64`); then the two agree to ~1e-14 (DDPM: 4e-10, see `test_ddpm`), which
shows the agreement is the algorithm's and the float32 differences (up to ~7e-5, largest for samples that end near a
boundary between modes, where the flow amplifies rounding) are diffusers' rounding.

DPM-Solver++(2M): diffusers' `DPMSolverMultistepScheduler(algorithm_type='dpmsolver++', solver_order=2,
solver_type='midpoint', final_sigmas_type='zero')`. Its step is first order when there is no history (step 0, as ours)
and on the last step whenever `final_sigmas_type='zero'` (the `lower_order_final` flag is OR-ed with that condition),
which is ours too: the step into σ = 0 returns D. With solver_order=2, `lower_order_final` only affects that same last
step (`lower_order_second` is used by order 3 only), so True (the default) and False are the same algorithm — the test
runs both. `final_sigmas_type='sigma_min'` is a different algorithm (it stops at σ̃_min ≈ 0.01 after a second-order
step and never denoises), so it is not compared. `euler_at_final` stays False (irrelevant with 'zero').
"""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")   # numpy 2 notices from inside diffusers
from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler,
                       HeunDiscreteScheduler, KDPM2DiscreteScheduler)
import diffusers.schedulers.scheduling_ddpm as ddpm_mod

from dmlearn.core import alphas_cumprod_to_sigmas, append_zero, as_denoiser, sigma_to_alpha, denoised_to_v
from dmlearn.gmm import get_gmm
from dmlearn.samplers import (sample_ddim, sample_ddpm, sample_dpm_solver, sample_dpmpp_2m, sample_euler,
                              sample_heun)

BETAS = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")   # DDPM's linear β
TOL = 1e-4
N_SAMPLES = 512


# ---------------------------------------------------------------------------------------------------- the model
def gmm_model(gm, prediction_type="epsilon"):
    "The exact mixture as a model of the VP point: `fn(x_vp [B,2], sigma [B]) -> ε̂ | x̂0 | v̂`, all in float64."
    def fn(x_vp, sigma):
        x_vp, sigma = x_vp.double(), torch.as_tensor(sigma, dtype=torch.float64).expand(x_vp.shape[0])
        s = sigma[:, None]
        x = x_vp / sigma_to_alpha(s)                      # σ-coordinates: x̃ = x_vp/α = x_vp·√(1+σ̃²)
        D = gm(x, sigma)
        if prediction_type == "epsilon": return (x - D) / s
        if prediction_type == "sample": return D
        if prediction_type == "v_prediction": return denoised_to_v(x, sigma, D)
        raise ValueError(prediction_type)
    return fn


def model_sigma(sched, t):
    "The σ̃ diffusers evaluates the model at for this call (float32 in the scheduler, returned as float64)."
    if isinstance(sched, (DDIMScheduler, DDPMScheduler)):
        return alphas_cumprod_to_sigmas(sched.alphas_cumprod[int(t)].double())
    i = sched.step_index or 0
    if isinstance(sched, KDPM2DiscreteScheduler) and not sched.state_in_first_order:
        return sched.sigmas_interpol[i].double()
    return sched.sigmas[i].double()


def to_float64(sched):
    """Make a scheduler compute in float64 with the *same* (float32-rounded) table values, where its `step` keeps the
    sample's dtype (DDIM, DDPM, Heun, KDPM2; Euler and DPMSolverMultistep cast the sample to float32 inside `step`)."""
    for a in ("alphas_cumprod", "final_alpha_cumprod", "one", "sigmas"):
        if torch.is_tensor(getattr(sched, a, None)): setattr(sched, a, getattr(sched, a).double())
    if isinstance(sched, KDPM2DiscreteScheduler):   # its log-midpoints σ_s1 = √(σ_i σ_i+1), recomputed by its own formula in float64
        s = torch.unique_consecutive(sched.sigmas)
        si = s.log().lerp(s.roll(1).log(), 0.5).exp()
        sched.sigmas_interpol = torch.cat([si[:1], si[1:].repeat_interleave(2), si[-1:]])
    return sched


def run_diffusers(sched, fn, z, step_kw=None, noises=None, dtype=torch.float32):
    """diffusers' own loop from the state `z·init_noise_sigma` (VP schedulers: init_noise_sigma = 1), in `dtype`
    (float32 as in a pipeline; float64 after `to_float64`). `noises[i]` goes in as `variance_noise` at step i (DDIM)."""
    x = z.to(dtype) * sched.init_noise_sigma
    for i, t in enumerate(sched.timesteps):
        x_in = sched.scale_model_input(x, t)             # the VP point α·x̃ (a no-op for DDIM/DDPM/DPM)
        out = fn(x_in, model_sigma(sched, t)).to(dtype)
        kw = dict(step_kw or {})
        if noises is not None: kw["variance_noise"] = noises[i].to(dtype)
        x = sched.step(out, t, x, **kw).prev_sample
    assert x.dtype == dtype
    return x.double()


DTYPES = [pytest.param(torch.float32, 1e-4, id="f32"), pytest.param(torch.float64, 1e-8, id="f64")]


def vp_grid(sched):
    "σ̃ at a DDIM/DDPM scheduler's timesteps, then 0 (its last step lands on ᾱ = 1)."
    return append_zero(alphas_cumprod_to_sigmas(sched.alphas_cumprod.double()[sched.timesteps]))


def k_grid(sched):
    "A k-style scheduler's σ̃ with the Heun/KDPM2 interleaving removed (one final 0)."
    return torch.unique_consecutive(sched.sigmas.double())


def noise_stream(Z):
    it = iter(Z)
    return lambda s, sn: next(it).double()


def ours(sampler, gm, x_start, sigmas, prediction_type="epsilon", **kw):
    return sampler(as_denoiser(gmm_model(gm, prediction_type), prediction_type, vp_input=True), x_start, sigmas, **kw)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    "Small batches on 2 shared cores: torch's thread pool only adds contention (30x slower here under load)."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def z():
    return torch.randn(N_SAMPLES, 2, generator=torch.Generator().manual_seed(0))


def maxdiff(a, b): return (a - b).abs().max().item()


RESULTS = {}   # name -> max abs diff, printed at the end (pytest -s)


def check(name, a, b, tol=TOL):
    "Assert the max abs difference of two runs' final samples is within `tol`; keep it for the report."
    d = maxdiff(a, b); RESULTS[name] = d
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    assert a.abs().max() > 0.5                                     # a real run, not a collapse to 0
    assert d <= tol, f"{name}: max |ours - diffusers| = {d:.2e} > {tol:g}"


# ---------------------------------------------------------------------------------------------------- DDIM / DDPM
def noises(n, shape, seed=1):
    "A fixed noise stream: float32 draws (what diffusers would see) held in float64 (what our samplers use)."
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed)).double()


@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize("gmm_name", ["ring", "hard"])
@pytest.mark.parametrize("eta", [0., 1.])
@pytest.mark.parametrize("n", [10, 25])
def test_ddim(z, gmm_name, eta, n, dtype, tol):
    gm = get_gmm(gmm_name); fn = gmm_model(gm)
    sched = DDIMScheduler(**BETAS, clip_sample=False, set_alpha_to_one=True, timestep_spacing="trailing")
    sched.set_timesteps(n)
    if dtype == torch.float64: to_float64(sched)
    Z = noises(n, z.shape)
    ref = run_diffusers(sched, fn, z, step_kw={"eta": eta}, noises=Z if eta > 0 else None, dtype=dtype)
    sig = vp_grid(sched)
    x = ours(sample_ddim, gm, z.double() / sigma_to_alpha(sig[0]), sig, eta=eta, noise_sampler=noise_stream(Z))
    check(f"DDIM eta={eta:g} n={n} {gmm_name} {str(dtype)[6:]}", x, ref, tol)


@pytest.mark.parametrize("dtype,tol,n", [pytest.param(torch.float32, 1e-4, 10, id="f32-10"), pytest.param(torch.float32, 1e-4, 25, id="f32-25"),
                                         pytest.param(torch.float64, 1e-8, 10, id="f64-10"), pytest.param(torch.float64, 1e-8, 100, id="f64-100")])
@pytest.mark.parametrize("gmm_name", ["ring", "hard"])
def test_ddpm(z, gmm_name, n, dtype, tol, monkeypatch):
    gm = get_gmm(gmm_name); fn = gmm_model(gm)
    sched = DDPMScheduler(**BETAS, clip_sample=False, variance_type="fixed_small", timestep_spacing="trailing")
    sched.set_timesteps(n)
    if dtype == torch.float64: to_float64(sched)
    Z = noises(n, z.shape)
    it = iter(Z)      # diffusers draws its noise with randn_tensor inside step(); hand it our stream instead
    monkeypatch.setattr(ddpm_mod, "randn_tensor", lambda shape, **kw: next(it).to(kw.get("dtype") or torch.float32).reshape(shape))
    ref = run_diffusers(sched, fn, z, dtype=dtype)
    # diffusers also "adds noise" on the last step (t > 0) with its variance clamped to 1e-20, i.e. std 1e-10: harmless
    sig = vp_grid(sched)
    x = ours(sample_ddpm, gm, z.double() / sigma_to_alpha(sig[0]), sig, noise_sampler=noise_stream(Z))
    check(f"DDPM n={n} {gmm_name} {str(dtype)[6:]}", x, ref, tol)


# ---------------------------------------------------------------------------------------------------- k-style
@pytest.mark.parametrize("gmm_name", ["ring", "hard"])
@pytest.mark.parametrize("spacing,karras", [("linspace", False), ("leading", False), ("trailing", False), ("linspace", True)])
def test_euler(z, gmm_name, spacing, karras):
    "EulerDiscreteScheduler casts the sample to float32 inside step(): float32 only."
    gm = get_gmm(gmm_name); fn = gmm_model(gm)
    sched = EulerDiscreteScheduler(**BETAS, timestep_spacing=spacing, use_karras_sigmas=karras)
    sched.set_timesteps(12)
    ref = run_diffusers(sched, fn, z)
    x = ours(sample_euler, gm, z.double() * float(sched.init_noise_sigma), k_grid(sched))
    check(f"Euler {spacing}{' karras' if karras else ''} {gmm_name}", x, ref)


@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize("gmm_name", ["ring", "hard"])
@pytest.mark.parametrize("karras", [False, True])
def test_heun(z, gmm_name, karras, dtype, tol):
    gm = get_gmm(gmm_name); fn = gmm_model(gm)
    sched = HeunDiscreteScheduler(**BETAS, use_karras_sigmas=karras)     # NB: its default betas are Stable Diffusion's
    sched.set_timesteps(10)
    assert len(sched.timesteps) == 19                                     # NFE = 2N - 1
    sig = k_grid(sched); assert len(sig) == 11
    if dtype == torch.float64: to_float64(sched)
    ref = run_diffusers(sched, fn, z, dtype=dtype)
    x = ours(sample_heun, gm, z.double() * float(sched.init_noise_sigma), sig)
    check(f"Heun{' karras' if karras else ''} {gmm_name} {str(dtype)[6:]}", x, ref, tol)


@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize("gmm_name", ["ring", "hard"])
@pytest.mark.parametrize("karras", [False, True])
def test_kdpm2(z, gmm_name, karras, dtype, tol):
    "KDPM2 = DPM-Solver-2 (r1 = 1/2, midpoint σ_s1 = √(σ_i σ_i+1)), last step first order: NFE 2N - 1."
    gm = get_gmm(gmm_name); fn = gmm_model(gm)
    sched = KDPM2DiscreteScheduler(**BETAS, use_karras_sigmas=karras)    # NB: its default betas are Stable Diffusion's
    sched.set_timesteps(10)
    assert len(sched.timesteps) == 19
    sig = k_grid(sched); assert len(sig) == 11
    if dtype == torch.float64: to_float64(sched)
    ref = run_diffusers(sched, fn, z, dtype=dtype)
    x = ours(sample_dpm_solver, gm, z.double() * float(sched.init_noise_sigma), sig, order=2)
    check(f"KDPM2{' karras' if karras else ''} {gmm_name} {str(dtype)[6:]}", x, ref, tol)


# ---------------------------------------------------------------------------------------------------- DPM-Solver++(2M)
@pytest.mark.parametrize("gmm_name", ["ring", "hard"])
@pytest.mark.parametrize("karras", [False, True])
@pytest.mark.parametrize("lower_order_final", [True, False])
def test_dpmpp_2m(z, gmm_name, karras, lower_order_final):
    "DPMSolverMultistepScheduler casts the sample to float32 inside step(): float32 only."
    gm = get_gmm(gmm_name); fn = gmm_model(gm)
    sched = DPMSolverMultistepScheduler(**BETAS, algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
                                        lower_order_final=lower_order_final, final_sigmas_type="zero",
                                        use_karras_sigmas=karras)
    sched.set_timesteps(12)
    ref = run_diffusers(sched, fn, z)
    sig = sched.sigmas.double(); assert sig[-1] == 0 and len(sig) == 13
    x = ours(sample_dpmpp_2m, gm, z.double() / sigma_to_alpha(sig[0]), sig)
    check(f"DPM++2M{' karras' if karras else ''} lof={lower_order_final} {gmm_name}", x, ref)


# ---------------------------------------------------------------------------------------------------- prediction types
@pytest.mark.parametrize("sched_name", ["dpmpp_2m", "ddim", "euler"])
def test_prediction_types(z, sched_name):
    "The exact model returning ε̂, x̂0 or v̂: our trajectories through `as_denoiser` agree to 1e-10, diffusers' to 1e-4."
    gm = get_gmm("ring")
    outs = {}
    for pt in ["epsilon", "sample", "v_prediction"]:
        if sched_name == "dpmpp_2m":
            sched = DPMSolverMultistepScheduler(**BETAS, algorithm_type="dpmsolver++", solver_order=2, prediction_type=pt,
                                                use_karras_sigmas=True)
            sched.set_timesteps(12); sig = sched.sigmas.double(); x0 = z.double() / sigma_to_alpha(sig[0]); f = sample_dpmpp_2m
        elif sched_name == "ddim":
            sched = DDIMScheduler(**BETAS, clip_sample=False, set_alpha_to_one=True, timestep_spacing="trailing", prediction_type=pt)
            sched.set_timesteps(10); sig = vp_grid(sched); x0 = z.double() / sigma_to_alpha(sig[0]); f = sample_ddim
        else:
            sched = EulerDiscreteScheduler(**BETAS, prediction_type=pt, use_karras_sigmas=True)
            sched.set_timesteps(12); sig = k_grid(sched); x0 = z.double() * float(sched.init_noise_sigma); f = sample_euler
        ref = run_diffusers(sched, gmm_model(gm, pt), z)
        outs[pt] = ours(f, gm, x0, sig, prediction_type=pt)
        check(f"{sched_name} prediction_type={pt}", outs[pt], ref)
    assert maxdiff(outs["epsilon"], outs["sample"]) < 1e-10
    assert maxdiff(outs["epsilon"], outs["v_prediction"]) < 1e-10


# ---------------------------------------------------------------------------------------------------- sanity of the harness
def test_harness_detects_a_wrong_sampler(z):
    "The comparison is sharp: Euler against diffusers' DPM-Solver++(2M) on the same grid differs by far more than TOL."
    gm = get_gmm("ring"); fn = gmm_model(gm)
    sched = DPMSolverMultistepScheduler(**BETAS, algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=True)
    sched.set_timesteps(12)
    ref = run_diffusers(sched, fn, z)
    sig = sched.sigmas.double()
    assert maxdiff(ours(sample_euler, gm, z.double() / sigma_to_alpha(sig[0]), sig), ref) > 100 * TOL


def test_rounded_timestep_pitfall(z):
    """Why the model takes σ̃ from the scheduler: with Karras σ̃ the timestep diffusers passes is rounded, and a model
    that reads ᾱ = alphas_cumprod[t] at that timestep is evaluated at the wrong noise level (baselines.md §5: ~3e-3)."""
    gm = get_gmm("ring"); fn = gmm_model(gm)
    sched = DPMSolverMultistepScheduler(**BETAS, algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=True)
    sched.set_timesteps(12)
    sig = sched.sigmas.double()
    x = ours(sample_dpmpp_2m, gm, z.double() / sigma_to_alpha(sig[0]), sig)
    ac = sched.alphas_cumprod.double()
    rounded = lambda x_vp, s: fn(x_vp, alphas_cumprod_to_sigmas(ac[int(sched.timesteps[sched.step_index or 0])]))
    d = maxdiff(run_diffusers(sched, rounded, z), x); RESULTS["DPM++2M karras, model at rounded t (pitfall)"] = d
    assert d > 10 * TOL


def test_ddim_stride_quirk(z):
    """Known diffusers behaviour (issues #9261, #11347, #12633): `DDIMScheduler.step` goes to t - T//n, not to the next
    scheduled timestep. With 'trailing' that is the same thing only when n divides T = 1000 (hence n = 10, 25 above).
    For n = 7 it steps 999 → 857 but evaluates the model next at 856, and its last step lands on t = 0 (σ̃ = 0.01),
    not on ᾱ = 1: it is no longer DDIM on its own timesteps, and no σ grid reproduces it. If this test fails,
    diffusers has fixed it and n = 7 can join `test_ddim`."""
    sched = DDIMScheduler(**BETAS, clip_sample=False, set_alpha_to_one=True, timestep_spacing="trailing")
    sched.set_timesteps(7)
    ts = sched.timesteps.tolist()
    assert [t - 1000 // 7 for t in ts[:-1]] != ts[1:] and ts[-1] - 1000 // 7 == 0
    gm = get_gmm("ring"); to_float64(sched)
    ref = run_diffusers(sched, gmm_model(gm), z, dtype=torch.float64)
    sig = vp_grid(sched)
    d = maxdiff(ours(sample_ddim, gm, z.double() / sigma_to_alpha(sig[0]), sig), ref); RESULTS["DDIM n=7 trailing (diffusers stride quirk)"] = d
    assert d > 1e-3


def test_report():
    "Print the max differences (run with -s)."
    if RESULTS:
        w = max(map(len, RESULTS))
        print("\nmax |ours - diffusers| per run:")
        for k, v in RESULTS.items(): print(f"  {k:<{w}}  {v:.2e}")
