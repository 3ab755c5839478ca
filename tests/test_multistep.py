"""UniPC, DPM-Solver++(3M), DEIS, iPNDM and LMS (nbs/13_multistep.ipynb): parity with diffusers, orders, NFE, no syncs.

Parity uses the harness of tests/test_diffusers_parity.py (the exact mixture as a VP ε-model evaluated at the σ̃
diffusers itself uses; our grid is the scheduler's own σ̃, then 0) and runs diffusers in float64 on its own
(float32-rounded) table values, so that agreement is to float64 rounding (tolerance 1e-10 on samples of scale ~3):
- UniPCMultistepScheduler: `step` keeps the sample's dtype.
- DPMSolverMultistepScheduler casts the sample to float32 inside `step`; the test lets that cast produce float64 by
  handing the scheduler's module a `torch` whose `float32` is `float64` (nothing else changes).
- DEISMultistepScheduler and LMSDiscreteScheduler keep the dtype.
Where diffusers' final step differs from the sampler here, the test drives diffusers' own code into the sampler's rule
for that one call and asserts the difference separately, so a change in diffusers shows up:
- UniPC with `solver_type='bh1'` and `final_sigmas_type='zero'` returns NaN: the first-order step into σ = 0 computes
  B(h)·0 with B(h) = h = −∞. Its last call is made with 'bh2' (the step into 0 is x = D, free of B(h)).
- UniPC with `lower_order_final=False` extrapolates to λ = ∞ on its last call (NaN/inf, or a singular solve at order 3);
  its last call is made with `lower_order_final=True` (first order: x = D), which is the rule here.
- DEIS never steps to 0: its default grid ends at σ̃(t=0) ≈ 0.01 with the sample there not denoised, so it is compared
  with our state at that σ (the callback at our step N, before our denoising step). With `use_karras_sigmas` its grid
  repeats the last σ (a zero-length last step), which matches here only with `lower_order_final=False`.
"""
import math
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")
from diffusers import DEISMultistepScheduler, DPMSolverMultistepScheduler, LMSDiscreteScheduler, UniPCMultistepScheduler
import diffusers.schedulers.scheduling_dpmsolver_multistep as dpm_mod

from test_diffusers_parity import BETAS, gmm_model, k_grid, model_sigma, ours, to_float64
from dmlearn.core import CountNFE, Recorder, append_zero, deferred_checks, sigma_to_alpha
from dmlearn.gmm import get_gmm, gmm_gaussian
from dmlearn.metrics import fit_order, gaussian_flow, ode_reference
from dmlearn.samplers import SAMPLERS, HostSyncCounter, load_samplers, steps_for_nfe
from dmlearn.schedules import get_sigmas_exponential, get_sigmas_karras
import dmlearn.multistep  # registers the samplers even before load_samplers() lists the module
from dmlearn.multistep import (IPNDM_COEFFS, MULTISTEP, lms_coeffs, sample_deis, sample_dpmpp_3m, sample_ipndm, sample_lms,
                               sample_unipc, step_dpmpp_3m)

load_samplers()
TOL64 = 1e-10
N_SAMPLES = 512
RESULTS = {}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def z():
    return torch.randn(N_SAMPLES, 2, generator=torch.Generator().manual_seed(0))


def maxdiff(a, b): return (a - b).abs().max().item()


def check(name, a, b, tol=TOL64):
    d = maxdiff(a, b); RESULTS[name] = d
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    assert a.abs().max() > 0.5
    assert d <= tol, f"{name}: max |ours - diffusers| = {d:.2e} > {tol:g}"


def run_sched(sched, fn, z, dtype=torch.float64, last_call=None, step_kw=None):
    "diffusers' loop from z·init_noise_sigma; `last_call(sched)` may change its config just before its final call."
    x = z.to(dtype) * sched.init_noise_sigma
    ts = sched.timesteps
    for i, t in enumerate(ts):
        if last_call is not None and i == len(ts) - 1: last_call(sched)
        out = fn(sched.scale_model_input(x, t), model_sigma(sched, t)).to(dtype)
        x = sched.step(out, t, x, **(step_kw or {})).prev_sample
    return x.double()


# ---------------------------------------------------------------------------------------------------- UniPC
@pytest.mark.parametrize("gmm_name", ["ring", "hard"])
@pytest.mark.parametrize("karras", [False, True])
@pytest.mark.parametrize("mode", ["default", "disable_final_corrector", "lower_order_final=False"])
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("variant", ["bh1", "bh2"])
def test_unipc(z, gmm_name, karras, mode, order, variant):
    gm = get_gmm(gmm_name); fn = gmm_model(gm); n = 10
    lof = mode != "lower_order_final=False"
    sched = UniPCMultistepScheduler(**BETAS, solver_order=order, solver_type=variant, use_karras_sigmas=karras, lower_order_final=lof,
                                    disable_corrector=[n - 2] if mode == "disable_final_corrector" else [])
    sched.set_timesteps(n); to_float64(sched)
    def last_call(s):
        if variant == "bh1": s.register_to_config(solver_type="bh2")
        if not lof: s.register_to_config(lower_order_final=True)
    ref = run_sched(sched, fn, z, last_call=last_call)
    sig = sched.sigmas.double(); assert sig[-1] == 0 and len(sig) == n + 1
    x = ours(sample_unipc, gm, z.double() / sigma_to_alpha(sig[0]), sig, order=order, variant=variant, lower_order_final=lof)
    check(f"UniPC {variant} p={order} {mode}{' karras' if karras else ''} {gmm_name}", x, ref)


@pytest.mark.parametrize("order", [2, 3])
def test_unipc_float32(z, order):
    "As a pipeline runs it (float32 throughout): rounding-level agreement."
    gm = get_gmm("ring"); fn = gmm_model(gm)
    sched = UniPCMultistepScheduler(**BETAS, solver_order=order); sched.set_timesteps(12)
    ref = run_sched(sched, fn, z, dtype=torch.float32)
    sig = sched.sigmas.double()
    check(f"UniPC bh2 p={order} ring float32", ours(sample_unipc, gm, z.double() / sigma_to_alpha(sig[0]), sig, order=order), ref, 1e-4)


def test_unipc_diffusers_final_step_quirks(z):
    "What the parity runs work around, asserted: if one of these fails, diffusers changed and the test above can be simplified."
    gm = get_gmm("ring"); fn = gmm_model(gm); n = 10
    def run(**kw):
        s = UniPCMultistepScheduler(**BETAS, **kw); s.set_timesteps(n); to_float64(s)
        return run_sched(s, fn, z)
    assert torch.isnan(run(solver_order=2, solver_type="bh1")).all()                    # B(h)·0 with B = −∞
    assert not torch.isfinite(run(solver_order=2, lower_order_final=False)).all()       # extrapolation to λ = ∞
    with pytest.raises(Exception, match="singular"): run(solver_order=3, lower_order_final=False)
    # the corrector at the last σ > 0 does not reach the output: the step into 0 keeps only D at the predicted point
    assert maxdiff(run(solver_order=3), run(solver_order=3, disable_corrector=[n - 2])) == 0


def test_unipc_final_corrector_costs_one_nfe_and_changes_the_output():
    gm = get_gmm("hard"); x = 80 * torch.randn(64, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sig = get_sigmas_karras(10, 0.002, 80.)
    a, b = CountNFE(gm), CountNFE(gm)
    xa, xb = sample_unipc(a, x, sig), sample_unipc(b, x, sig, final_corrector=True)
    assert (a.nfe, b.nfe) == (10, 11) and SAMPLERS["unipc"].nfe(10, final_corrector=True) == 11
    assert maxdiff(xa, xb) > 1e-6


# ---------------------------------------------------------------------------------------------------- DPM-Solver++(3M)
class _Float64Torch:
    "The `torch` module with `float32` spelled `float64` (for DPMSolverMultistepScheduler's cast inside `step`)."
    def __getattr__(self, k): return torch.float64 if k == "float32" else getattr(torch, k)


@pytest.mark.parametrize("gmm_name", ["ring", "hard"])
@pytest.mark.parametrize("karras", [False, True])
@pytest.mark.parametrize("lof", [True, False])
@pytest.mark.parametrize("n", [10, 20])
def test_dpmpp_3m(z, gmm_name, karras, lof, n, monkeypatch):
    gm = get_gmm(gmm_name); fn = gmm_model(gm)
    sched = DPMSolverMultistepScheduler(**BETAS, algorithm_type="dpmsolver++", solver_order=3, solver_type="midpoint",
                                        lower_order_final=lof, final_sigmas_type="zero", use_karras_sigmas=karras)
    sched.set_timesteps(n); to_float64(sched)
    monkeypatch.setattr(dpm_mod, "torch", _Float64Torch())
    ref = run_sched(sched, fn, z)
    monkeypatch.undo()
    sig = sched.sigmas.double()
    x = ours(sample_dpmpp_3m, gm, z.double() / sigma_to_alpha(sig[0]), sig, lower_order_final=lof)
    check(f"DPM++3M{' karras' if karras else ''} lof={lof} n={n} {gmm_name}", x, ref)


def test_dpmpp_3m_flags_matter(z):
    "lower_order_final changes a 10-step run (not a 20-step one: diffusers' < 15 rule); the Taylor weight changes any run."
    gm = get_gmm("hard"); x = 80 * torch.randn(64, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    s10, s20 = get_sigmas_karras(10, 0.002, 80.), get_sigmas_karras(20, 0.002, 80.)
    assert maxdiff(sample_dpmpp_3m(gm, x, s10), sample_dpmpp_3m(gm, x, s10, lower_order_final=False)) > 1e-6
    assert maxdiff(sample_dpmpp_3m(gm, x, s20), sample_dpmpp_3m(gm, x, s20, lower_order_final=False)) == 0
    assert maxdiff(sample_dpmpp_3m(gm, x, s20), sample_dpmpp_3m(gm, x, s20, variant="taylor")) > 1e-6


def test_dpmpp_3m_weights_on_a_quadratic():
    "D(λ) = quadratic: the Taylor weight integrates one step exactly, diffusers' formula (φ3·D2) misses by ~1e-2."
    from scipy.integrate import quad
    q = lambda l: 0.3 + 0.7 * l - 0.4 * l**2
    T = lambda v: torch.tensor(v, dtype=torch.float64)
    for s2, s1, s0, t in [(3., 2., 1.2, 0.7), (10., 4., 3., 1.)]:
        exact = t / s0 * 0.5 + t * quad(lambda l: math.exp(l) * q(l), -math.log(s0), -math.log(t), epsabs=1e-14)[0]
        m = [T(q(-math.log(s))) for s in (s0, s1, s2)]
        got = {v: step_dpmpp_3m(T(0.5), m[0], T(s0), T(t), m[1:], [T(s1), T(s2)], v).item() for v in ("diffusers", "taylor")}
        assert abs(got["taylor"] - exact) < 1e-12 and abs(got["diffusers"] - exact) > 1e-3


# ---------------------------------------------------------------------------------------------------- DEIS
@pytest.mark.parametrize("gmm_name", ["ring", "hard"])
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("lof,n,karras", [(lof, n, k) for lof in (True, False) for n in (10, 20) for k in (False, True)
                                          if not (k and lof and n < 15)])   # that one: test_deis_karras_quirk
def test_deis(z, gmm_name, order, lof, n, karras):
    gm = get_gmm(gmm_name); fn = gmm_model(gm)
    sched = DEISMultistepScheduler(**BETAS, solver_order=order, lower_order_final=lof, use_karras_sigmas=karras)
    sched.set_timesteps(n); to_float64(sched)
    ref = run_sched(sched, fn, z)
    sig = sched.sigmas.double()
    if karras: assert sig[-1] == sig[-2]; grid = append_zero(sig[:-1])
    else: assert 0.009 < sig[-1] < 0.011; grid = append_zero(sig)
    rec = Recorder(keys=("x",))
    ours(sample_deis, gm, z.double() / sigma_to_alpha(sig[0]), grid, order=order, lower_order_final=lof, callback=rec)
    check(f"DEIS k={order} lof={lof} n={n}{' karras' if karras else ''} {gmm_name}", rec.steps[-1]["x"], ref / sigma_to_alpha(grid[-2]))


def test_deis_karras_quirk(z):
    "With Karras σ and < 15 steps diffusers' last call is a zero-length step after a second-order one: it differs from ours."
    gm = get_gmm("ring"); fn = gmm_model(gm)
    sched = DEISMultistepScheduler(**BETAS, solver_order=3, use_karras_sigmas=True); sched.set_timesteps(10); to_float64(sched)
    ref = run_sched(sched, fn, z)
    sig = sched.sigmas.double(); grid = append_zero(sig[:-1])
    rec = Recorder(keys=("x",))
    ours(sample_deis, gm, z.double() / sigma_to_alpha(sig[0]), grid, order=3, callback=rec)
    assert sig[-1] == sig[-2] and maxdiff(rec.steps[-1]["x"], ref / sigma_to_alpha(grid[-2])) > 1e-3


# ---------------------------------------------------------------------------------------------------- LMS
@pytest.mark.parametrize("gmm_name", ["ring", "hard"])
@pytest.mark.parametrize("karras", [False, True])
@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_lms(z, gmm_name, karras, order):
    gm = get_gmm(gmm_name); fn = gmm_model(gm)
    sched = LMSDiscreteScheduler(**BETAS, use_karras_sigmas=karras); sched.set_timesteps(12); to_float64(sched)
    ref = run_sched(sched, fn, z, step_kw={"order": order})
    x = ours(sample_lms, gm, z.double() * float(sched.init_noise_sigma), k_grid(sched), order=order)
    check(f"LMS order={order}{' karras' if karras else ''} {gmm_name}", x, ref)


def test_lms_float32_and_harness_is_sharp(z):
    gm = get_gmm("hard"); fn = gmm_model(gm)
    sched = LMSDiscreteScheduler(**BETAS); sched.set_timesteps(12)
    ref = run_sched(sched, fn, z, dtype=torch.float32, step_kw={"order": 4})
    x0 = z.double() * float(sched.init_noise_sigma)
    check("LMS order=4 hard float32", ours(sample_lms, gm, x0, k_grid(sched), order=4), ref, 1e-4)
    assert maxdiff(ours(sample_lms, gm, x0, k_grid(sched), order=3), ref) > 100 * 1e-4      # order 3 is not order 4
    assert maxdiff(ours(sample_ipndm, gm, x0, k_grid(sched), order=4), ref) > 100 * 1e-4    # fixed weights are not LMS


# ---------------------------------------------------------------------------------------------------- iPNDM
def test_ipndm_coefficients():
    "The DEIS paper's fixed weights are the Adams–Bashforth (= LMS) integrals for equal steps, and on such a grid iPNDM is LMS."
    T = lambda v: torch.tensor(v, dtype=torch.float64)
    paper = {1: [1], 2: [3, -1], 3: [23, -16, 5], 4: [55, -59, 37, -9]}
    for k, w in paper.items():
        assert torch.allclose(torch.tensor(IPNDM_COEFFS[k], dtype=torch.float64), torch.tensor(w, dtype=torch.float64) / [1, 2, 12, 24][k - 1], atol=1e-15)
        lms = torch.stack(lms_coeffs(T(1.), T(0.9), [T(1. + 0.1 * j) for j in range(1, k)])) / -0.1
        assert torch.allclose(lms, torch.tensor(IPNDM_COEFFS[k], dtype=torch.float64), atol=1e-13)
    ring = get_gmm("ring"); x = 3 * torch.randn(100, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    lin = torch.linspace(3., 0., 13, dtype=torch.float64)
    for k in (2, 4): assert maxdiff(sample_ipndm(ring, x, lin, order=k), sample_lms(ring, x, lin, order=k)) < 1e-11


def test_ipndm_local_order():
    "One iPNDM-k step from exact history (closed-form Gaussian flow), equal steps δ: error O(δ^(k+1))."
    g = gmm_gaussian(); xg = 4 * torch.randn(64, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    flow = lambda s: gaussian_flow(xg, 4., s, g.means[0], g.covs[0])
    eps = lambda s: (flow(s) - g(flow(s), torch.tensor(s, dtype=torch.float64))) / s
    deltas = (0.05, 0.025, 0.0125)
    for k in (1, 2, 3, 4):
        errs = [(flow(1.) - d * sum(c * eps(1. + j * d) for j, c in enumerate(IPNDM_COEFFS[k])) - flow(1. - d)).norm(dim=-1).mean().item()
                for d in deltas]
        assert abs(fit_order([1 / d for d in deltas], errs) - (k + 1)) < 0.3, k


# ---------------------------------------------------------------------------------------------------- orders on the mixture
SMIN, SMAX, NS = 0.002, 80., (64, 128)
ORDER_RUNS = {   # label: (sampler, hp, the order the finest pair of Karras grids must show, why if not the claim)
    "unipc p=1": (sample_unipc, dict(order=1, final_corrector=True), 2),
    "unipc p=2": (sample_unipc, dict(order=2, final_corrector=True), 3),
    "unipc p=3 bh2": (sample_unipc, dict(order=3, final_corrector=True), 4),
    "unipc p=3 bh1": (sample_unipc, dict(order=3, variant="bh1", final_corrector=True), 4),
    "dpmpp_3m diffusers": (sample_dpmpp_3m, {}, 2),           # claim 3; the second difference has half its Taylor weight
    "dpmpp_3m taylor": (sample_dpmpp_3m, dict(variant="taylor"), 3),
    "deis k=2": (sample_deis, dict(order=2), 2),
    "deis k=3": (sample_deis, dict(order=3), 3),
    "lms k=4": (sample_lms, dict(order=4), 4),
    "ipndm k=4": (sample_ipndm, dict(order=4), 2),             # claim 4 for equal steps; a Karras grid's are not
}


@pytest.fixture(scope="module")
def ring_flow():
    gm = get_gmm("ring")
    xT = SMAX * torch.randn(32, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return gm, xT, ode_reference(gm, xT, SMAX, SMIN, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("label", list(ORDER_RUNS))
def test_measured_order(ring_flow, label):
    "The state at σ_min against the exact flow (DOP853, 1e-12) on Karras grids of 64 and 128 steps (as in the chapter)."
    gm, xT, ref = ring_flow
    fn, hp, expected = ORDER_RUNS[label]
    errs = []
    for N in NS:
        rec = Recorder(keys=("x",)); fn(gm, xT, get_sigmas_karras(N, SMIN, SMAX), callback=rec, **hp)
        errs.append((rec.steps[N - 1]["x"] - ref).norm(dim=-1).mean().item())
    o = fit_order(NS, errs); RESULTS[f"order {label}"] = o
    assert abs(o - expected) < 0.5, f"{label}: measured order {o:.2f}, expected {expected}"


# ---------------------------------------------------------------------------------------------------- contract
@pytest.mark.parametrize("name", MULTISTEP)
def test_registered_nfe_counted(name):
    info = SAMPLERS[name]; gm = get_gmm("ring")
    x = 80 * torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    extras = [{}, {"final_corrector": True}] if name.startswith("unipc") else [{}]
    for steps in (1, 2, 3, 7):
        for extra in extras:
            hp = {**info.defaults, **extra}; m = CountNFE(gm)
            info.fn(m, x, get_sigmas_karras(steps, SMIN, SMAX), **hp)
            assert m.nfe == info.nfe(steps, **hp), (name, steps, extra)
    assert steps_for_nfe(name, 10) == 10 and not info.stochastic


@pytest.mark.parametrize("name", MULTISTEP)
def test_per_sample_grid_equals_one_at_a_time(name):
    f, hp, gm = SAMPLERS[name].fn, SAMPLERS[name].defaults, get_gmm("hard")
    grids = torch.stack([get_sigmas_karras(9, 0.002, 80.), get_sigmas_karras(9, 0.01, 20.), get_sigmas_exponential(9, 0.002, 5.),
                         get_sigmas_karras(9, 0.05, 1.)], 1)
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * grids[0, :, None]
    assert maxdiff(f(gm, x, grids, **hp), torch.cat([f(gm, x[j:j + 1], grids[:, j], **hp) for j in range(4)])) < 1e-10


def _std_normal(x, s): return x / (1 + s[:, None]**2)


@pytest.mark.parametrize("name", MULTISTEP)
def test_no_host_sync_grows_with_steps(name):
    "Host syncs (tensor → Python conversions) over a whole run, finiteness checks deferred: the same for 4 and 16 steps."
    f, hp = SAMPLERS[name].fn, SAMPLERS[name].defaults
    counts = []
    for steps in (4, 16):
        x = 80 * torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        sig = get_sigmas_karras(steps, SMIN, SMAX)
        with deferred_checks():
            with HostSyncCounter() as c: f(_std_normal, x, sig, **hp)
        counts.append(c.count)
    assert counts[0] == counts[1], f"{name}: {counts} host syncs for 4 and 16 steps"


@pytest.mark.parametrize("fn,kw,msg", [
    (sample_unipc, {"order": 5}, "UniPC order must be 1, 2 or 3; got order=5"),
    (sample_unipc, {"variant": "bh3"}, "variant must be 'bh1'"),
    (sample_unipc, {"final_corrector": 1}, "final_corrector must be True or False"),
    (sample_dpmpp_3m, {"variant": "exact"}, "variant must be 'diffusers' or 'taylor'"),
    (sample_dpmpp_3m, {"lower_order_final": "yes"}, "lower_order_final must be True or False"),
    (sample_deis, {"order": 4}, "DEIS order must be an integer from 1 to 3; got order=4"),
    (sample_lms, {"order": 0}, "LMS order must be an integer from 1 to 4; got order=0"),
    (sample_lms, {"order": 2.0}, "LMS order must be an integer"),
    (sample_ipndm, {"order": 5}, "iPNDM order must be an integer from 1 to 4; got order=5"),
])
def test_bad_hyperparameters(fn, kw, msg):
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        fn(get_gmm("ring"), torch.ones(4, 2, dtype=torch.float64), torch.tensor([10., 1., 0.], dtype=torch.float64), **kw)
    name = {sample_unipc: "unipc", sample_dpmpp_3m: "dpmpp_3m", sample_deis: "deis", sample_lms: "lms", sample_ipndm: "ipndm"}[fn]
    with pytest.raises(ValueError, match=msg.split(";")[0].replace("(", r"\(").replace(")", r"\)")): steps_for_nfe(name, 10, **kw)


def test_bad_step_arguments():
    from dmlearn.multistep import step_unipc
    x = torch.ones(2, 2, dtype=torch.float64); s = torch.tensor(1., dtype=torch.float64); sn = torch.tensor(0.5, dtype=torch.float64)
    with pytest.raises(ValueError, match="same length"): step_unipc(x, x, s, sn, [x], [])
    with pytest.raises(ValueError, match="variant must be 'bh1'"): step_unipc(x, x, s, sn, variant="bh3")
    with pytest.raises(ValueError, match="at most 2 earlier outputs"): step_dpmpp_3m(x, x, s, sn, [x] * 3, [s * 2, s * 3, s * 4])
    with pytest.raises(ValueError, match="'diffusers' or 'taylor'"): step_dpmpp_3m(x, x, s, sn, variant="exact")


def test_report():
    "Print the max differences and orders (run with -s)."
    if RESULTS:
        w = max(map(len, RESULTS))
        print("\nmax |ours - diffusers| per run, and measured orders:")
        for k, v in RESULTS.items(): print(f"  {k:<{w}}  {v:.2e}" if not k.startswith("order") else f"  {k:<{w}}  {v:.2f}")
