"""Hostile input, table-driven: every public entry point gets bad arguments and faults, and must fail fast (a per-case
time limit turns a hang into a failure) with the right error type and a message that names what was wrong.

`CASES` is the table: (entry point, bad call, expected error type, text the message must contain). `test_table_covers`
keeps it complete: a new public name in a module's `__all__` must join the table (or `EXEMPT`, with a reason)."""
import contextlib, importlib, io, json, math, os, signal, stat, subprocess, sys, time
from pathlib import Path
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st, HealthCheck

from dmlearn import core, gmm, schedules, metrics, models2d, viz, samplers, bench, scire, ddim_gmm, starts, difftime, dmcmc, cli
from dmlearn import checkpoint, multistep, kdiff
from dmlearn.multistep import *
from dmlearn.kdiff import *
from dmlearn.core import *
from dmlearn.gmm import *
from dmlearn.schedules import *
from dmlearn.metrics import *
from dmlearn.models2d import *
from dmlearn.viz import *
from dmlearn.samplers import *
from dmlearn.bench import bench_overhead, time_ours, time_diffusers, time_calls, near_free_denoiser, format_overhead
from dmlearn.bench import (threads, time_threads, thread_table, peer_grids, run_peer, sampling_floor, sweep_ours, sweep_peers,
                           tune_best, frontier, evaluate, goal_benchmark, format_goals, plot_frontier)
from dmlearn.scire import *
from dmlearn.ddim_gmm import *
from dmlearn.starts import *
from dmlearn.difftime import *
from dmlearn.dmcmc import *
from dmlearn.cli import compare, format_table, plot_compare
from dmlearn.checkpoint import save_checkpoint, load_checkpoint, atomic_write, CheckpointError

load_samplers()
ROOT = Path(__file__).resolve().parent.parent
MODULES = [core, gmm, schedules, metrics, models2d, viz, samplers, bench, scire, ddim_gmm, starts, difftime, dmcmc, cli, multistep, kdiff]
LIMIT_S = 10         # per case: a hang fails the case instead of stalling CI

class Hang(BaseException):
    "Raised by the alarm; a BaseException, so library code that catches Exception cannot swallow it."

@contextlib.contextmanager
def time_limit(seconds=LIMIT_S):
    def _alarm(signum, frame): raise Hang(f"no answer within {seconds} s")
    old = signal.signal(signal.SIGALRM, _alarm); signal.setitimer(signal.ITIMER_REAL, seconds)
    try: yield
    finally: signal.setitimer(signal.ITIMER_REAL, 0); signal.signal(signal.SIGALRM, old)

# ---------------------------------------------------------------------------------------------------------------------
RING = get_gmm('ring')
G = lambda s=0: torch.Generator().manual_seed(s)
X = RING.sample(8, G())                                    # [8, 2] float64
SIG = get_sigmas_karras(4, 0.002, 80.)                     # [5]
NAN, INF = float('nan'), float('inf')
POST = ExactNoisePosterior(RING, noise_grid(20))
MLP = pretrained_denoiser('ring')
KERN = make_gmm_kernel(2, 4, 0.1, generator=G())
RES = {'target': 'ring', 'n': 10, 'seed': 0, 'schedule': 'karras', 'metric': 'sw', 'metric_name': 'sw', 'sigma_min': 0.002,
       'sigma_max': 80., 'nfe': [5], 'floor': 0.1, 'rows': {'euler': {5: {'value': 0.2, 'nfe': 5}}}}
V = ValueError; T = TypeError; VT = (ValueError, TypeError); FNF = FileNotFoundError

def _model_returning(out):
    "A denoiser that returns `out(x)`: the fault injection for what a model hands back."
    return lambda x, s, **kw: out(x)

def _nan_at(k):
    "A denoiser that is exact except at call k, where it returns NaN."
    calls = [0]
    def m(x, s, **kw):
        calls[0] += 1
        return RING(x, s) * (float('nan') if calls[0] == k else 1.)
    return m

def _raises(x, s, **kw): raise RuntimeError('model exploded')

C = []  # (entry point, case label, thunk, exception type(s), text)
def case(name, label, fn, exc, text): C.append((name, label, fn, exc, text))

# core ----------------------------------------------------------------------------------------------------------------
case('core.sigma_to_alpha', 'string', lambda: sigma_to_alpha('a'), VT, '')
case('core.sigma_to_vp', 'string', lambda: sigma_to_vp('a'), VT, '')
case('core.vp_to_sigma', 'string', lambda: vp_to_sigma('a', 1.), VT, '')
case('core.alphas_cumprod_to_sigmas', 'string', lambda: alphas_cumprod_to_sigmas('a'), VT, '')
case('core.sigmas_to_alphas_cumprod', 'string', lambda: sigmas_to_alphas_cumprod('a'), VT, '')
case('core.append_dims', 'fewer dims', lambda: append_dims(X, 1), V, 'target_dims')
case('core.append_zero', 'not a tensor', lambda: append_zero([1., 2.]), T, 'append_zero needs a tensor')
case('core.batch_sigma', 'wrong length', lambda: batch_sigma(torch.ones(3), X), V, 'sigma has shape (3,)')
for _f in ('denoised_to_eps', 'eps_to_denoised', 'denoised_to_score', 'score_to_denoised', 'denoised_to_v', 'v_to_denoised', 'to_d'):
    case(f'core.{_f}', 'sigma of the wrong length', (lambda f: lambda: getattr(core, f)(X, torch.ones(3), X))(_f), V, 'sigma has shape')
case('core.as_denoiser', 'unknown prediction_type', lambda: as_denoiser(RING, 'noise'), V, 'prediction_type')
case('core.check_int', '2.5', lambda: check_int(2.5, 'n'), V, 'n must be an integer')
case('core.check_int', 'True', lambda: check_int(True, 'n', lo=1), V, 'n must be a positive integer')
case('core.check_real', 'NaN', lambda: check_real(NAN, 'snr'), V, 'snr must be a finite number')
case('core.check_real', 'complex', lambda: check_real(1j, 'snr'), V, 'snr must be')
case('core.check_model_output', 'None', lambda: check_model_output(None, X), T, "the model's output must be a torch.Tensor")
case('core.CountNFE', 'model returns a list', lambda: CountNFE(_model_returning(lambda x: x.tolist()))(X, 1.), T, 'got list')
case('core.check_finite', 'NaN', lambda: check_finite(torch.tensor([NAN]), 'the batch'), FloatingPointError, 'the batch has 1 non-finite')
case('core.Recorder', 'every=0', lambda: Recorder(every=0), V, 'every must be a positive integer')
def _deferred_nan():
    with deferred_checks(): check_finite(torch.tensor([NAN]), 'the batch')
def _flush_nan():
    with deferred_checks():
        check_finite(torch.tensor([NAN]), 'the batch'); flush_checks(); raise AssertionError('flush_checks did not raise')
def _queued_nan():
    dc = DeferredChecks(); dc.add(torch.tensor([1., NAN]), lambda: 'the lazy batch'); dc.raise_if_bad()
case('core.deferred_checks', 'NaN inside the block', _deferred_nan, FloatingPointError, 'the batch has non-finite values')
case('core.flush_checks', 'NaN before the flush', _flush_nan, FloatingPointError, 'the batch has non-finite values')
case('core.DeferredChecks', 'NaN queued', _queued_nan, FloatingPointError, 'the lazy batch has non-finite values')
case('core.Recorder', 'every=2.5', lambda: Recorder(every=2.5), V, 'every must be a positive integer')
case('core.randn_like', 'not a tensor', lambda: randn_like([1.]), (AttributeError, TypeError), '')
case('core.default_noise_sampler', 'not a tensor', lambda: default_noise_sampler([1.])(1., 0.), (AttributeError, TypeError), '')
case('core.check_sigmas', 'increasing', lambda: check_sigmas(torch.tensor([1., 2., 0.])), V, 'strictly decreasing')
case('core.check_sigmas', 'NaN', lambda: check_sigmas(torch.tensor([NAN, 0.])), V, 'NaN')

# gmm -----------------------------------------------------------------------------------------------------------------
case('gmm.GMM', 'weights do not sum to 1', lambda: GMM([0.5, 0.6], torch.zeros(2, 2), torch.eye(2).expand(2, 2, 2)), V, 'weights must sum to 1')
case('gmm.GMM', 'NaN mean', lambda: GMM([1.], [[NAN, 0.]], torch.eye(2)[None]), V, 'finite')
case('gmm.GMM.log_prob', 'negative sigma', lambda: RING.log_prob(X, -0.5), V, 'sigma must be finite and >= 0')
case('gmm.GMM.denoiser', 'NaN sigma', lambda: RING.denoiser(X, NAN), V, 'sigma must be finite')
case('gmm.GMM.score', '3-D points', lambda: RING.score(torch.zeros(4, 3), 1.), V, 'x must have shape [B, 2]')
case('gmm.GMM.sample', 'n=2.5', lambda: RING.sample(2.5), V, 'n must be a positive integer')
case('gmm.GMM.sample', 'n=True', lambda: RING.sample(True), V, 'n must be a positive integer')
case('gmm.GMM.noised', 'negative sigma', lambda: RING.noised(-1.), V, 'sigma must be')
case('gmm.gmm_ring', 'n_modes=0', lambda: gmm_ring(n_modes=0), V, 'n_modes must be a positive integer')
case('gmm.gmm_ring', 'std < 0', lambda: gmm_ring(std=-0.1), V, 'std must be')
case('gmm.gmm_grid', 'n=0', lambda: gmm_grid(n=0), V, 'n must be a positive integer')
case('gmm.gmm_hard', 'an argument', lambda: gmm_hard(1), T, 'takes 0 positional')
case('gmm.gmm_gaussian', 'singular cov', lambda: gmm_gaussian(cov=((1., 1.), (1., 1.))), V, 'not positive definite')
case('gmm.get_gmm', 'unknown', lambda: get_gmm('moons'), V, 'choose one of ring')
case('gmm.plot_density', 'negative sigma', lambda: plot_density(RING, -1.), V, 'sigma must be')

# schedules -----------------------------------------------------------------------------------------------------------
case('schedules.get_sigmas_linear', 'n=0', lambda: get_sigmas_linear(0, 0.1, 1.), V, 'n (the number of steps)')
case('schedules.get_sigmas_exponential', 'sigma_min=0', lambda: get_sigmas_exponential(5, 0., 1.), V, 'sigma_min must be > 0')
case('schedules.get_sigmas_karras', 'rho NaN', lambda: get_sigmas_karras(5, 0.1, 1., rho=NAN), V, 'rho')
case('schedules.get_sigmas_karras', 'n=2.5', lambda: get_sigmas_karras(2.5, 0.1, 1.), V, 'n (the number of steps)')
case('schedules.get_sigmas_ve', 'eps_s=1', lambda: get_sigmas_ve(5, 0.1, 1., eps_s=1.), V, 'eps_s')
case('schedules.check_steps', 'True', lambda: check_steps(True), V, 'n (the number of steps) must be an integer')
case('schedules.check_steps', '0', lambda: check_steps(0), V, 'must be >= 1')
case('schedules.check_sigma_range', 'reversed', lambda: check_sigma_range(2., 1.), V, 'sigma_min must be < sigma_max')
case('schedules.check_sigma_range', 'NaN', lambda: check_sigma_range(NAN, 1.), V, 'must be finite')
case('schedules.finish_grid', 'a list', lambda: finish_grid([1., 2.], 'cpu', torch.float64), T, 'append_zero needs a tensor')
case('schedules.get_sigmas_vp', 'beta_d<0', lambda: get_sigmas_vp(5, beta_d=-1.), V, 'beta_d')
case('schedules.get_sigmas_vp_time', 'sigma_min > sigma_max', lambda: get_sigmas_vp_time(4, 2., 1.), V, 'sigma_min must be < sigma_max')
case('schedules.get_sigmas_vp_time', 'n=0', lambda: get_sigmas_vp_time(0, .002, 80.), V, 'must be >= 1')
case('schedules.ddpm_alphas_cumprod', 'unknown schedule', lambda: ddpm_alphas_cumprod(beta_schedule='cos'), V, 'beta_schedule')
case('schedules.ddpm_timesteps', 'n > T', lambda: ddpm_timesteps(2000), V, 'cannot be more than')
case('schedules.get_sigmas_ddpm', 'zero terminal SNR', lambda: get_sigmas_ddpm(5, torch.linspace(0.99, 0., 100)), V, 'alphas_cumprod must lie')
case('schedules.ddpm_sigma_range', 'not a table', lambda: ddpm_sigma_range('a'), VT, '')
case('schedules.get_sigmas', 'unknown', lambda: get_sigmas('cosine', 5), V, 'unknown schedule')
case('schedules.plot_sigmas', 'not a dict', lambda: plot_sigmas([1, 2]), T, 'grids must be a dict')
case('schedules.plot_sigma_density', 'not a dict', lambda: plot_sigma_density([1, 2]), T, 'grids must be a dict')

# metrics -------------------------------------------------------------------------------------------------------------
case('metrics.cross_entropy', 'wrong dim', lambda: cross_entropy(torch.zeros(5, 3), RING), V, 'dimension 3 but 2')
case('metrics.gm_entropy', 'n=0', lambda: gm_entropy(RING, n=0), V, 'n')
case('metrics.energy_distance', 'one sample', lambda: energy_distance(X[:1], X), V, 'at least 2')
case('metrics.sliced_wasserstein', 'n_projections=0', lambda: sliced_wasserstein(X, X, n_projections=0), V, 'n_projections')
case('metrics.mode_weight_error', '1-D', lambda: mode_weight_error(torch.zeros(5), RING), V, 'shape [n, d]')
case('metrics.ode_reference', 'sigma_end=0', lambda: ode_reference(RING, X, 1., 0.), V, 'sigma_start and sigma_end must be finite and > 0')
case('metrics.gaussian_flow', 'bad cov', lambda: gaussian_flow(X, 1., 0.5, torch.zeros(2), torch.eye(3)), V, 'cov must have shape')
case('metrics.fit_order', 'one size', lambda: fit_order([5, 5], [1., 1.]), V, 'two different')
case('metrics.compare_samples', 'NaN samples', lambda: compare_samples(X * NAN, RING), V, 'NaN')

# models2d ------------------------------------------------------------------------------------------------------------
case('models2d.EDMDenoiser', '3-D points', lambda: MLP(torch.zeros(4, 3, dtype=torch.float64), 0.5), V, 'x must have shape [B, 2]')
case('models2d.EDMDenoiser', 'integer x', lambda: MLP(torch.zeros(4, 2, dtype=torch.long), 0.5), T, 'x must be a real floating-point tensor')
case('models2d.EDMDenoiser', 'negative sigma', lambda: MLP(X, -0.5), V, 'sigma must be finite and >= 0')
case('models2d.EDMDenoiser', 'NaN sigma', lambda: MLP(X, NAN), V, 'sigma must be finite')
case('models2d.MLP2d', 'hidden=0', lambda: MLP2d(hidden=0), V, 'hidden must be a positive integer')
case('models2d.sample_sigmas', 'unknown dist', lambda: sample_sigmas(4, dist='uniform'), V, "'loguniform' or 'lognormal'")
case('models2d.sample_sigmas', 'n=2.5', lambda: sample_sigmas(2.5), V, 'n must be a positive integer')
case('models2d.train_denoiser', 'steps=-1', lambda: train_denoiser(RING, steps=-1, progress=False), V, 'steps must be a positive integer')
case('models2d.train_denoiser', 'sigma_min=0', lambda: train_denoiser(RING, steps=2, sigma_min=0, progress=False), V, 'sigma_min must be')
case('models2d.train_denoiser', 'warmup=0', lambda: train_denoiser(RING, steps=2, warmup=0, progress=False), V, 'warmup must be a positive integer')
case('models2d.train_denoiser', 'lr NaN', lambda: train_denoiser(RING, steps=2, lr=NAN, progress=False), V, 'lr must be')
case('models2d.train_denoiser', 'data a string', lambda: train_denoiser('ring', steps=2, progress=False), T, 'data must be a GMM')
case('models2d.save_denoiser', 'not a model', lambda: save_denoiser(RING, '/tmp/x.safetensors'), T, 'model must be an EDMDenoiser')
case('models2d.save_denoiser', 'missing folder', lambda: save_denoiser(MLP, '/nonexistent/dir/m.safetensors'), FNF, "'/nonexistent/dir' does not exist")
case('models2d.load_denoiser', 'missing file', lambda: load_denoiser('/nonexistent/m.safetensors'), FNF, '/nonexistent/m.safetensors')
case('models2d.linear_denoiser', 'cov of the wrong shape', lambda: linear_denoiser(torch.zeros(2), torch.eye(3))(X, 1.), V, 'cov must have shape [2, 2]')
case('models2d.compare_denoisers', 'n=0', lambda: compare_denoisers(MLP, RING, [0.5], n=0), V, 'n must be a positive integer')
case('models2d.pretrained_denoiser', 'unknown', lambda: pretrained_denoiser('moons'), V, 'choose one of ring, grid, hard')

# viz -----------------------------------------------------------------------------------------------------------------
case('viz.plot_samples', '3-D points', lambda: plot_samples(torch.zeros(4, 3)), V, 'x must have shape [N, 2]')
case('viz.plot_noised', 'negative sigma', lambda: plot_noised(RING, -1.), V, 'sigma must be')
case('viz.plot_trajectories', '2-D', lambda: plot_trajectories(torch.zeros(4, 2)), V, '[S, B, 2]')
case('viz.explore_noised', 'unknown gm', lambda: explore_noised(gm='moons'), V, 'unknown target')
case('viz.plot_start_path', 'n_paths=0', lambda: plot_start_path(n_paths=0), V, 'n_paths must be a positive integer')
case('viz.animate', 'no frames', lambda: animate(lambda ax, f: None, []), V, 'frames is empty')

# samplers ------------------------------------------------------------------------------------------------------------
B = lambda: (X, X, torch.tensor(1., dtype=torch.float64), torch.tensor(0.5, dtype=torch.float64))
case('samplers.step_ddpm', 'variance', lambda: step_ddpm(*B(), variance='big'), V, 'variance must be')
case('samplers.step_ddim', 'eta NaN', lambda: step_ddim(*B(), eta=NAN), V, 'eta')
case('samplers.step_euler', 'not tensors', lambda: step_euler(X, X, 1., 0.5), (AttributeError, TypeError), '')
case('samplers.step_euler_maruyama', 'noise missing', lambda: step_euler_maruyama(*B(), None), T, '')
case('samplers.langevin_step', 'norm', lambda: langevin_step(X, X, X, norm='l2'), V, 'norm must be')
case('samplers.langevin_step', 'snr NaN', lambda: langevin_step(X, X, X, snr=NAN), V, 'snr must be a finite number > 0')
case('samplers.step_dpm_solver', 'order=True', lambda: step_dpm_solver(RING, X, SIG[0], SIG[1], order=True), V, 'order must be 1, 2 or 3')
case('samplers.step_dpmpp_2m', 'not tensors', lambda: step_dpmpp_2m(X, X, 1., 0.5), (AttributeError, TypeError), '')
for _name in ('ddpm', 'ddim', 'euler', 'euler_maruyama', 'pc', 'heun', 'dpm_solver', 'dpmpp_2m'):
    _fn = getattr(samplers, f'sample_{_name}')
    case(f'samplers.sample_{_name}', 'model returns None', (lambda f: lambda: f(_model_returning(lambda x: None), X, SIG))(_fn), T, 'got NoneType')
case('samplers.sample_euler', 'model returns ndarray', lambda: sample_euler(_model_returning(lambda x: x.numpy()), X, SIG), T, 'got ndarray')
case('samplers.sample_euler', 'model returns complex', lambda: sample_euler(_model_returning(lambda x: x.to(torch.complex128)), X, SIG), T, 'real floating-point')
case('samplers.sample_euler', 'model returns float16', lambda: sample_euler(_model_returning(lambda x: x.half()), X, SIG), T, 'less precise')
case('samplers.sample_euler', 'model returns a float', lambda: sample_euler(_model_returning(lambda x: 0.5), X, SIG), T, 'got float')
case('samplers.sample_euler', 'model returns wrong shape', lambda: sample_euler(_model_returning(lambda x: x[:2]), X, SIG), V, 'has shape (2, 2)')
case('samplers.sample_euler', 'model raises', lambda: sample_euler(_raises, X, SIG), RuntimeError, 'model exploded')

# starts and dmcmc helpers made public ---------------------------------------------------------------------------
case('starts.draw_samples', 'no .sample', lambda: draw_samples(object(), 3), V, 'has no .sample(n) method')
case('starts.check_start_batch', 'wrong shape', lambda: check_start_batch(torch.zeros(3, 4), 3, (2,), 'the prior', torch.float64, 'cpu'), V, 'the prior returned samples of shape (3, 4)')
case('starts.check_start_sigma', 'above sigma_max', lambda: check_start_sigma(100., 80., "σ'"), V, "σ' must be in (0, sigma_max=80]")
case('starts.single_thread', 'argument', lambda: single_thread(1), T, 'positional argument')
case('starts.run_path', 'unknown sampler', lambda: run_path(RING, torch.zeros(3, 2, dtype=torch.float64), 1., 'nope'), (KeyError, ValueError), 'nope')
case('starts.gaussian_reverse_kernel', 'singular', lambda: gaussian_reverse_kernel(torch.zeros(2, dtype=torch.float64), -torch.eye(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64), 1.), (RuntimeError, torch.linalg.LinAlgError), 'singular')
case('starts.reverse_kernel_sample', 'negative sigma', lambda: reverse_kernel_sample(RING, torch.zeros(3, 2, dtype=torch.float64), -1.), V, 'sigma must be finite and >= 0')
case('starts.path_kls', 'n=1', lambda: path_kls(RING, RING, 0.5, n=1), V, 'n must be')
case('dmcmc.NoiseMLP', 'n_levels=0', lambda: NoiseMLP(2, 0), V, 'n_levels must be a positive integer')
case('dmcmc.train_noise_mlp', 'steps=0', lambda: train_noise_mlp(RING, noise_grid(5), steps=0), V, 'steps must be a positive integer')
case('dmcmc.posterior_agreement', 'grids', lambda: posterior_agreement(ExactNoisePosterior(RING, noise_grid(5)), ExactNoisePosterior(RING, noise_grid(6)), RING), V, 'share one σ grid')
case('dmcmc.save_noise_mlp', 'grid size', lambda: save_noise_mlp(NoiseMLP(2, 5), noise_grid(6), '/tmp/c.safetensors'), V, 'the grid has 6 levels')
case('dmcmc.load_noise_posterior', 'missing', lambda: load_noise_posterior('/nonexistent/c.safetensors'), FNF, '/nonexistent/c.safetensors')
case('dmcmc.pretrained_noise_posterior', 'unknown', lambda: pretrained_noise_posterior('moons'), V, 'no shipped noise classifier')
case('dmcmc.dlg_init', 'unknown sampler', lambda: dlg_init(RING, ExactNoisePosterior(RING, noise_grid(5)), 4, (2,), init_sampler='nope'), (KeyError, ValueError), 'nope')
case('dmcmc.dlg_blocks', 'step_size=0', lambda: dlg_blocks(RING, ExactNoisePosterior(RING, noise_grid(5)), torch.zeros(4, 2, dtype=torch.float64), torch.zeros(4, dtype=torch.long), 1, 2, 0.), V, 'step_size must be a positive')

# compare over start × path × schedule ------------------------------------------------------------------------------
from dmlearn.cli import load_mixture, mixture_spec, get_target, parse_starts, make_start, start_label, fit_grid
case('cli.load_mixture', 'missing file', lambda: load_mixture('/nonexistent/m.json'), V, "cannot read mixture file '/nonexistent/m.json'")
case('cli.mixture_spec', 'not a GMM', lambda: mixture_spec(3), T, 'mixture_spec needs a GMM')
case('cli.get_target', 'unknown', lambda: get_target('moons'), V, "unknown target 'moons'")
case('cli.parse_starts', 'unknown kind', lambda: parse_starts('nope@1'), V, "unknown start 'nope'")
case('cli.parse_starts', 'negative sigma', lambda: parse_starts('mm@-1'), V, 'needs a finite sigma > 0')
case('cli.make_start', 'unknown kind', lambda: make_start('nope', 1., RING, 10), V, "unknown start 'nope'")
case('cli.start_label', 'unknown kind', lambda: start_label('nope', 1.), V, "unknown start 'nope'")
case('cli.fit_grid', 'unknown sampler', lambda: fit_grid(RING, 'nope', 5, None), V, "unknown sampler 'nope'")

# multistep and k-diffusion's family ----------------------------------------------------------------------------------
_t = lambda v: torch.tensor(v, dtype=torch.float64)
case('multistep.lagrange_basis', 'a list', lambda: lagrange_basis([1., 2.]), T, 'must be Tensor')
case('multistep.solve_vandermonde', 'mismatched lengths', lambda: solve_vandermonde(_t([1., 2.]), _t([1., 2., 3.])), V, 'as many right-hand sides as nodes')
case('multistep.step_dpmpp_3m', 'variant', lambda: step_dpmpp_3m(X, X, _t(1.), _t(.5), variant='x'), V, "variant must be 'diffusers' or 'taylor'")
case('multistep.unipc_b', 'variant', lambda: unipc_b(_t(.5), 1, variant='bh3'), V, "variant must be 'bh1' or 'bh2'")
case('multistep.step_unipc', 'variant', lambda: step_unipc(X, X, _t(1.), _t(.5), variant='bh3'), V, "variant must be 'bh1'")
case('multistep.deis_coeffs', 'numbers', lambda: deis_coeffs(1., .5), T, 'must be Tensor')
case('multistep.lms_coeffs', 'numbers', lambda: lms_coeffs(1., .5), (TypeError, AttributeError), '')
case('multistep.sample_unipc', 'order 5', lambda: sample_unipc(RING, X, SIG, order=5), V, 'UniPC order must be 1, 2 or 3')
case('multistep.sample_dpmpp_3m', 'variant', lambda: sample_dpmpp_3m(RING, X, SIG, variant='x'), V, 'variant must be')
case('multistep.sample_deis', 'order 4', lambda: sample_deis(RING, X, SIG, order=4), V, 'DEIS order must be an integer from 1 to 3')
case('multistep.sample_lms', 'order 0', lambda: sample_lms(RING, X, SIG, order=0), V, 'LMS order must be an integer from 1 to 4')
case('multistep.sample_ipndm', 'order 5', lambda: sample_ipndm(RING, X, SIG, order=5), V, 'iPNDM order must be an integer from 1 to 4')
case('kdiff.ancestral_step', 'eta NaN', lambda: ancestral_step(_t(1.), _t(.5), eta=NAN), V, 'eta must be a finite number')
case('kdiff.ancestral_step', 'eta < 0', lambda: ancestral_step(_t(1.), _t(.5), eta=-1), V, 'eta must be in [0, 1]')
case('kdiff.sample_euler_ancestral', 'eta 2', lambda: sample_euler_ancestral(RING, X, SIG, eta=2.), V, 'eta must be in [0, 1]')
case('kdiff.sample_dpm_2', 's_churn NaN', lambda: sample_dpm_2(RING, X, SIG, s_churn=NAN), V, 's_churn must be a finite number')
case('kdiff.sample_dpm_2_ancestral', 's_noise < 0', lambda: sample_dpm_2_ancestral(RING, X, SIG, s_noise=-1.), V, 's_noise must be')
case('kdiff.sample_dpmpp_2s_ancestral', 'eta NaN', lambda: sample_dpmpp_2s_ancestral(RING, X, SIG, eta=NAN), V, 'eta must be a finite number')
case('kdiff.sample_dpmpp_sde', 'r 0', lambda: sample_dpmpp_sde(RING, X, SIG, r=0.), V, 'r must be a finite number > 0')
case('kdiff.sample_dpmpp_2m_sde', 'solver_type', lambda: sample_dpmpp_2m_sde(RING, X, SIG, solver_type='euler'), V, "solver_type must be 'midpoint' or 'heun'")
case('kdiff.sample_dpmpp_3m_sde', 'eta < 0', lambda: sample_dpmpp_3m_sde(RING, X, SIG, eta=-1.), V, 'eta must be in [0, 1]')
case('kdiff.BrownianTreeNoiseSampler', 'sigma_min > sigma_max', lambda: BrownianTreeNoiseSampler(X, 2., 1., seed=0), V, 'sigma_min must be < sigma_max')
case('kdiff.dpm_fast_orders', 'n 0', lambda: dpm_fast_orders(0), V, 'n must be a positive integer')
case('kdiff.dpm_solver_step', 'order 4', lambda: dpm_solver_step(lambda x, t: x, X, _t(0.), _t(1.), 4), V, 'order must be 1, 2 or 3')
case('kdiff.sample_dpm_fast', 'eta NaN', lambda: sample_dpm_fast(RING, X, SIG, eta=NAN), V, 'eta must be a finite number')
case('kdiff.sample_dpm_adaptive', 'rtol < 0', lambda: sample_dpm_adaptive(RING, X, SIG, rtol=-1.), V, 'rtol must be a finite number >= 0')
case('kdiff.sample_dpm_adaptive', 'order 4', lambda: sample_dpm_adaptive(RING, X, SIG, order=4), V, 'order must be 2 or 3')
for _name in ('unipc', 'dpmpp_3m', 'deis', 'lms', 'ipndm'):
    _fn = getattr(multistep, f'sample_{_name}')
    case(f'multistep.sample_{_name}', 'model returns None', (lambda f: lambda: f(_model_returning(lambda x: None), X, SIG))(_fn), T, 'got NoneType')
    case(f'multistep.sample_{_name}', 'NaN at step 3', (lambda f: lambda: f(_nan_at(3), X, SIG))(_fn), FloatingPointError, 'non-finite')
for _name in ('euler_ancestral', 'dpm_2', 'dpm_2_ancestral', 'dpmpp_2s_ancestral', 'dpmpp_sde', 'dpmpp_2m_sde', 'dpmpp_3m_sde', 'dpm_fast', 'dpm_adaptive'):
    _fn = getattr(kdiff, f'sample_{_name}')
    case(f'kdiff.sample_{_name}', 'model returns None', (lambda f: lambda: f(_model_returning(lambda x: None), X, SIG))(_fn), T, 'got NoneType')
    case(f'kdiff.sample_{_name}', 'NaN at step 3', (lambda f: lambda: f(_nan_at(3), X, SIG))(_fn), FloatingPointError, 'non-finite')
case('samplers.sample_heun', 'NaN at step 3', lambda: sample_heun(_nan_at(3), X, SIG), FloatingPointError, 'non-finite')
case('samplers.sample_euler', 'integer x', lambda: sample_euler(RING, torch.zeros(4, 2, dtype=torch.long), SIG), T, 'x must be a real floating-point tensor')
case('samplers.sample_euler', 'NaN x', lambda: sample_euler(RING, X * NAN, SIG), FloatingPointError, 'the starting batch x')
case('samplers.sample_ddim', 'eta=2', lambda: sample_ddim(RING, X, SIG, eta=2.), V, 'eta must be in [0, 1]')
case('samplers.sample_pc', 'n_corrector=-1', lambda: sample_pc(RING, X, SIG, n_corrector=-1), V, 'n_corrector must be a non-negative integer')
case('samplers.sample_pc', 'n_corrector=2.5', lambda: sample_pc(RING, X, SIG, n_corrector=2.5), V, 'n_corrector must be')
case('samplers.sample_pc', 'snr NaN', lambda: sample_pc(RING, X, SIG, snr=NAN), V, 'snr must be a finite number > 0')
case('samplers.check_churn', 's_churn < 0', lambda: check_churn(s_churn=-1.), V, 's_churn must be')
case('samplers.churn', 'noise_sampler not callable', lambda: churn(X, torch.tensor(1., dtype=torch.float64), 4, None, s_churn=1.), T, 'not callable')
case('samplers.sample_heun', 's_churn NaN', lambda: sample_heun(RING, X, SIG, s_churn=NAN), V, 's_churn must be a finite number')
case('samplers.sample_heun', 's_noise < 0', lambda: sample_heun(RING, X, SIG, s_noise=-1.), V, 's_noise must be')
case('samplers.sample_heun', 's_tmax NaN', lambda: sample_heun(RING, X, SIG, s_tmax=NAN), V, 's_tmax must be')
case('samplers.sample_dpm_solver', 'order=0', lambda: sample_dpm_solver(RING, X, SIG, order=0), V, 'order must be 1, 2 or 3')
case('samplers.SamplerInfo', 'no arguments', lambda: SamplerInfo(), T, "'fn', 'nfe', 'order', and 'stochastic'")
case('samplers.register_sampler', 'missing arguments', lambda: register_sampler('x'), T, "'fn', 'nfe', 'order', and 'stochastic'")
case('samplers.load_samplers', 'an argument', lambda: load_samplers(1), T, 'takes 0 positional')
case('samplers.get_sampler', 'unknown', lambda: get_sampler('euler_a'), V, 'unknown sampler')
case('samplers.steps_for_nfe', 'nfe=True', lambda: steps_for_nfe('euler', True), V, 'nfe must be a positive integer')
case('samplers.steps_for_nfe', 'nfe=2.5', lambda: steps_for_nfe('euler', 2.5), V, 'nfe must be a positive integer')
case('samplers.steps_for_nfe', 'absurd budget', lambda: steps_for_nfe('heun', 10**9), V, 'max_steps=10000')
case('samplers.steps_for_nfe', 'pc n_corrector=-1', lambda: steps_for_nfe('pc', 10, n_corrector=-1), V, 'n_corrector')
for _s in ('dpm_solver_2', 'dpm_solver_3', 'scire_2', 'scire_3', 'scire_2_fd', 'scire_3_fd', 'scirei_2', 'scire_2m'):
    for _o in (0, -1):
        case('samplers.steps_for_nfe', f'{_s} order={_o}', (lambda s, o: lambda: steps_for_nfe(s, 10, order=o))(_s, _o), V, 'order must be')
case('samplers.steps_for_nfe', 'ddim_gmm n_components=0', lambda: steps_for_nfe('ddim_gmm', 10, n_components=0), V, 'n_components')
case('samplers.steps_for_nfe', 'too small', lambda: steps_for_nfe('dpm_solver_3', 3), BudgetError, 'needs at least 4 NFE')
case('samplers.GaussianStart', 'sigma_max=-1', lambda: GaussianStart(-1.), V, 'sigma_max must be')
case('samplers.GaussianStart', 'n=2.5', lambda: GaussianStart()(2.5, (2,)), V, 'n must be a positive integer')
case('samplers.make_sigmas', 'start below sigma_min', lambda: make_sigmas('karras', 5, 0.1, 0.05), V, 'must exceed sigma_min')
_G = torch.tensor([80., 10., 1., 0.], dtype=torch.float64)
case('samplers.generate', 'explicit grid increasing', lambda: generate(RING, 4, schedule=torch.tensor([80., 1., 10., 0.])), V, 'strictly decreasing')
case('samplers.generate', 'explicit grid without 0', lambda: generate(RING, 4, schedule=_G[:-1]), V, 'must end in 0')
case('samplers.generate', 'explicit grid 2-D', lambda: generate(RING, 4, schedule=_G[:, None]), V, '1-D σ grid')
case('samplers.generate', 'explicit grid over budget', lambda: generate(RING, 4, 'heun', nfe=3, schedule=_G), BudgetError, 'over the budget nfe=3')
case('samplers.generate', 'explicit grid vs start', lambda: generate(RING, 4, schedule=_G, start=GaussianStart(5.)), V, 'starts at 80')
case('samplers.generate', 'explicit grid of strings', lambda: generate(RING, 4, schedule=['a', 'b']), V, 'explicit decreasing σ grid')
case('samplers.setup_sampler', 'x a list', lambda: setup_sampler(RING, [[1., 2.]], _G), V, 'x must be a batch tensor')
case('samplers.setup_sampler', 'NaN start', lambda: setup_sampler(RING, torch.full((2, 2), NAN), _G), FloatingPointError, 'the starting batch x has 4 non-finite')
case('samplers.sigma_like', 'a list', lambda: sigma_like([1.], X), AttributeError, 'ndim')
case('samplers.generate', 'n=2.5', lambda: generate(RING, 2.5), V, 'n must be a positive integer')
case('samplers.generate', 'n=0', lambda: generate(RING, 0), V, 'n must be a positive integer')
case('samplers.generate', 'nfe=True', lambda: generate(RING, 4, nfe=True), V, 'nfe must be a positive integer')
case('samplers.generate', 'pc n_corrector=-1 (hung)', lambda: generate(RING, 4, 'pc', 10, n_corrector=-1), V, 'n_corrector')
case('samplers.generate', 'dpm_solver_2 order=0 (hung)', lambda: generate(RING, 4, 'dpm_solver_2', 10, order=0), V, 'order must be')
case('samplers.generate', 'scire_2 order=-1 (hung)', lambda: generate(RING, 4, 'scire_2', 10, order=-1), V, 'order must be')
case('samplers.generate', 'heun s_churn NaN', lambda: generate(RING, 4, 'heun', 10, s_churn=NAN), V, 's_churn')
case('samplers.generate', 'shape of zeros', lambda: generate(RING, 4, shape=(0,)), V, 'shape must be')
case('samplers.generate', 'integer dtype', lambda: generate(RING, 4, dtype=torch.long), V, 'dtype must be')
case('samplers.generate', 'sigma_min NaN', lambda: generate(RING, 4, sigma_min=NAN), V, 'sigma_min must be')
case('samplers.generate', 'start not a Start', lambda: generate(RING, 4, start='gauss'), V, 'start must be')

# bench ---------------------------------------------------------------------------------------------------------------
case('bench.near_free_denoiser', 'not a tensor', lambda: near_free_denoiser('x', 1.) + 1, TypeError, '')
case('bench.time_ours', 'unknown algorithm', lambda: time_ours('RK4', 5, X.float()), KeyError, 'RK4')
case('bench.time_diffusers', 'unknown algorithm', lambda: time_diffusers('RK4', 5, X.float()), KeyError, 'RK4')
case('bench.time_calls', 'repeats=0', lambda: time_calls(near_free_denoiser, X, 3, repeats=0), V, 'repeats must be a positive integer')
case('bench.bench_overhead', 'steps=1', lambda: bench_overhead(steps=1), V, 'steps must be an integer >= 2')
case('bench.bench_overhead', 'steps=5000', lambda: bench_overhead(steps=5000), V, 'steps must be <= 1000')
case('bench.bench_overhead', 'threads=0', lambda: bench_overhead(threads=0), V, 'threads must be a positive integer')
case('bench.bench_overhead', 'batch=0', lambda: bench_overhead(batch=0), V, 'batch must be a positive integer')
case('bench.bench_overhead', 'shape=(0,)', lambda: bench_overhead(shape=(0,)), V, 'shape must be')
case('bench.bench_overhead', 'unknown algorithm', lambda: bench_overhead(algorithms=['RK4']), V, 'unknown algorithm')
case('bench.format_overhead', 'not rows', lambda: format_overhead([1]), (TypeError, KeyError), '')
case('bench.threads', 'n=0', lambda: threads(0).__enter__(), V, 'threads must be a positive integer')
case('bench.threads', 'n=2.5', lambda: threads(2.5).__enter__(), V, 'threads must be a positive integer')
case('bench.time_threads', 'repeats=0', lambda: time_threads(lambda: None, repeats=0), V, 'repeats must be a positive integer')
case('bench.thread_table', 'no sizes', lambda: thread_table(sizes=()), V, 'sizes must list at least one')
case('bench.thread_table', 'unknown target', lambda: thread_table(sizes=(4,), target='moons'), V, "unknown target 'moons'")
case('bench.peer_grids', 'unknown peer', lambda: peer_grids('nope'), V, "unknown peer 'nope'")
case('bench.run_peer', 'unknown peer', lambda: run_peer(RING, 'nope', 10, 10), V, "unknown peer 'nope'")
case('bench.run_peer', 'n=0', lambda: run_peer(RING, 'Euler', 10, 0), V, 'n must be a positive integer')
case('bench.sampling_floor', 'n=1', lambda: sampling_floor(RING, n=1), V, 'n must be an integer >= 2')
case('bench.sampling_floor', 'no seeds', lambda: sampling_floor(RING, n=10, seeds=()), V, 'seeds must list at least one')
case('bench.sweep_ours', 'no budgets', lambda: sweep_ours(RING, budgets=(), n=10), V, 'list of NFE budgets')
case('bench.sweep_ours', 'unknown start', lambda: sweep_ours(RING, budgets=(5,), n=10, starts='nope@1'), V, "unknown start 'nope'")
case('bench.sweep_peers', 'unknown peer', lambda: sweep_peers(RING, budgets=(5,), n=10, peers=['nope']), V, "unknown peer 'nope'")
case('bench.tune_best', 'unknown method', lambda: tune_best(RING, [], (5,), n=10, method='nope'), V, "unknown method 'nope'")
case('bench.frontier', 'unknown key', lambda: frontier([], key='nope'), V, "key must be 'energy' or 'modes'")
case('bench.evaluate', 'n=0', lambda: evaluate(RING, [], n=0), V, 'n must be a positive integer')
case('bench.goal_benchmark', 'unknown target', lambda: goal_benchmark('moons'), V, "unknown target 'moons'")
case('bench.format_goals', 'not a result', lambda: format_goals({}), V, "res must be goal_benchmark's result")
case('bench.plot_frontier', 'not a result', lambda: plot_frontier({}), V, "res must be goal_benchmark's result")

# scire ---------------------------------------------------------------------------------------------------------------
case('scire.phi1', 'm=0', lambda: phi1(0), V, 'm (the number of terms')
case('scire.phi2', 'm=2.5', lambda: phi2(2.5), V, 'm (the number of terms')
case('scire.resolve_phi', 'NaN', lambda: resolve_phi(NAN), V, 'phi must be a positive number')
case('scire.step_scire', 'order=4', lambda: step_scire(RING, X, SIG[0], SIG[1], order=4), V, 'order must be')
case('scire.step_scire_multistep', 'mismatched history', lambda: step_scire_multistep(X, X, SIG[0], SIG[1], [X], []), V, 'same length')
case('scire.step_scirei', 'order=3', lambda: step_scirei(RING, X, SIG[0], SIG[1], order=3), V, 'SciREI order must be 1 or 2')
case('scire.sample_scire', 'method', lambda: sample_scire(RING, X, SIG, method='multi'), V, "method must be 'singlestep' or 'multistep'")
case('scire.sample_scire', 'model returns None', lambda: sample_scire(_model_returning(lambda x: None), X, SIG), T, 'got NoneType')
case('scire.sample_scirei', 'phi=-1', lambda: sample_scirei(RING, X, SIG, phi=-1.), V, 'phi must be a positive number')
case('scire.get_sigmas_nsr', 'kappa<0', lambda: get_sigmas_nsr(10, 0.002, 80., kappa=-1.), V, 'kappa must be')
case('scire.scire_grid', 'unknown', lambda: scire_grid('cosine', 5), V, 'unknown schedule')
case('scire.plot_scire', 'nfe=2 for order 3', lambda: plot_scire(order=3, nfe=3), V, 'too small for order 3')
case('scire.explore_scire', 'unknown keyword', lambda: explore_scire(colour='red'), TypeError, 'colour')

# ddim_gmm ------------------------------------------------------------------------------------------------------------
case('ddim_gmm.make_offsets', 'svd with K > D', lambda: make_offsets(2, 4, kind='svd'), V, 'use offsets=')
case('ddim_gmm.make_offsets', 'dim=0', lambda: make_offsets(0), V, 'dim must be a positive integer')
case('ddim_gmm.GMMKernel', 'offsets not centred', lambda: GMMKernel.from_offsets(torch.ones(2, 3, dtype=torch.float64)), V, 'offsets must be centred')
case('ddim_gmm.make_gmm_kernel', 'scale NaN', lambda: make_gmm_kernel(2, 4, NAN), V, 'scale must be a finite number >= 0')
case('ddim_gmm.ddim_sigma_up', 'eta=2', lambda: ddim_sigma_up(torch.tensor(1.), torch.tensor(0.5), 2.), V, 'eta must be in [0, 1]')
case('ddim_gmm.max_scale', 'eta NaN', lambda: max_scale(torch.tensor(1.), torch.tensor(0.5), NAN), V, 'eta must be')
case('ddim_gmm.kernel_moments', 'infeasible', lambda: kernel_moments(KERN, torch.tensor(0.1), infeasible='ignore'), V, 'infeasible must be one of')
case('ddim_gmm.draw_components', 'priors not normalised', lambda: draw_components(torch.tensor([0.5, 0.6]), X), V, 'priors must sum to 1')
case('ddim_gmm.step_ddim_gmm', 'wrong kernel dim', lambda: step_ddim_gmm(X, X, torch.tensor(1.), torch.tensor(0.5), 0.5, X, make_gmm_kernel(3, 2, 0.1, generator=G()), torch.zeros(8, dtype=torch.long)), V, 'kernel has dimension 3')
case('ddim_gmm.sample_ddim_gmm', 'n_components=True', lambda: sample_ddim_gmm(RING, X, SIG, n_components=True), V, 'n_components must be')
case('ddim_gmm.sample_ddim_gmm', 'model returns list', lambda: sample_ddim_gmm(_model_returning(lambda x: x.tolist()), X, SIG), T, 'got list')
case('ddim_gmm.plot_ddim_gmm', '3-D mixture', lambda: plot_ddim_gmm(GMM([1.], torch.zeros(1, 3), torch.eye(3)[None])), V, 'draws 2-D mixtures')
case('ddim_gmm.explore_ddim_gmm', 'not a mixture', lambda: explore_ddim_gmm(gm='moons'), V, 'unknown target')
case('ddim_gmm.animate_ddim_gmm', 'no scales', lambda: animate_ddim_gmm(scales=()), V, 'frames is empty')

# starts (ES-DDPM) ----------------------------------------------------------------------------------------------------
case('starts.gauss_kl', 'singular S1', lambda: gauss_kl(torch.zeros(2), torch.eye(2), torch.zeros(2), torch.zeros(2, 2)), (ValueError, RuntimeError, torch.linalg.LinAlgError), 'positive-definite')
case('starts.kl_mc', 'n=1', lambda: kl_mc(RING, RING, n=1), V, 'n must be')
case('starts.gaussian_prior', 'sigma=0', lambda: gaussian_prior(0.), V, 'sigma must be a finite number > 0')
case('starts.defective_prior', 'unknown kind', lambda: defective_prior(RING, 'gan'), V, 'unknown prior kind')
case('starts.kl_contraction', 'n=1', lambda: kl_contraction(RING, RING, [1.], n=1), V, 'n must be')
case('starts.PointMass', 'n=2.5', lambda: PointMass([0., 0.]).sample(2.5), V, 'n must be a positive integer')
case('starts.PriorStart', 'sigma_start NaN', lambda: PriorStart(RING, NAN), V, "the start's sigma")
case('starts.PriorStart', 'n=2.5', lambda: PriorStart(RING, 1.)(2.5, (2,)), V, 'n must be a positive integer')
case('starts.AuxGMM', 'sigma_T NaN', lambda: AuxGMM([1.], torch.zeros(1, 2), torch.eye(2)[None], NAN), V, 'sigma_T')
case('starts.fit_aux', 'sigma_T<0', lambda: fit_aux(RING, -1.), V, 'sigma_T must be positive')
case('starts.fit_aux', 'n_components=0', lambda: fit_aux(RING, 1., n_components=0), V, 'n_components must be a positive integer')
case('starts.AuxStart', 'sigma_T above sigma_max', lambda: AuxStart(RING, 1e3), V, 'must be in (0, sigma_max=80]')
case('starts.VAE2d', 'sample(2.5)', lambda: VAE2d().sample(2.5), V, 'n must be a positive integer')
case('starts.VAE2d', 'obs_std=0', lambda: VAE2d(obs_std=0.), V, 'obs_std must be')
case('starts.train_vae', 'steps=0', lambda: train_vae(RING, steps=0), V, 'steps must be a positive integer')
case('starts.sweep_sigma_start', 'n=2.5', lambda: sweep_sigma_start(RING, RING, [0.5], lambda x: (0.,), n=2.5), V, 'n must be a positive integer')
case('starts.plot_prior_start', 'negative sigma_start', lambda: plot_prior_start(RING, RING, RING, -0.5), V, "must be in (0, sigma_max=80]")

# difftime ------------------------------------------------------------------------------------------------------------
case('metrics.energy_distance_to', 'one reference sample', lambda: energy_distance_to(torch.zeros(1, 2)), V, 'at least 2')
case('metrics.energy_distance_to', 'NaN in x', lambda: energy_distance_to(X)(torch.full((3, 2), NAN)), V, 'NaN')
case('difftime.sigma_quadrature', 'sigma_T=0', lambda: sigma_quadrature(0.), V, 'sigma_T must be positive')
case('difftime.sigma_quadrature', 'n=2.5', lambda: sigma_quadrature(1., n=2.5), V, 'n must be an integer')
case('difftime.elbo_gaussian', 'sigma_T NaN', lambda: elbo_gaussian(torch.zeros(2), torch.eye(2), NAN), V, 'sigma_T must be')
case('difftime.elbo_terms', 'sigma_T<0', lambda: elbo_terms(RING, -1.), V, 'sigma_T must be')
case('difftime.ScoreErrorDenoiser', 'eps2<0', lambda: ScoreErrorDenoiser(RING, -1.), V, 'eps2 must be non-negative')
case('difftime.prior_kl_curve', 'unknown prior', lambda: prior_kl_curve(RING, [1.], prior='edm'), V, "prior must be 've'")
case('difftime.prior_kl_bounds', 'unknown prior', lambda: prior_kl_bounds(RING, 1., prior='edm'), V, "prior must be 've'")
case('difftime.optimal_T', 'shapes differ', lambda: optimal_T([1., 2.], [1.], 0.1), V, 'same shape')
case('difftime.aux_kl_curve', 'n_components=0', lambda: aux_kl_curve(RING, [1.], n_components=0), V, 'n_components must be a positive integer')
case('difftime.sweep_T', 'negative sigma_T', lambda: sweep_T(RING, RING, [-1.], lambda x: (0.,), n=10), V, 'sigmas_T must be')
case('difftime.score_error_profile', 'sigma=0', lambda: score_error_profile(RING, RING, [0.]), V, 'sigmas must be finite and > 0')
case('difftime.gap_curve', 'sigma_T below sigma_min', lambda: gap_curve(RING, RING, [0.001, 1.]), V, 'must exceed sigma_min=0.002')
case('difftime.plot_difftime', 'sigma_T<0', lambda: plot_difftime(RING, -1.), V, 'must be')
case('difftime.likelihood_grid', 'node above sigma_T', lambda: likelihood_grid(8, 1., nodes=[2.]), V, 'nodes must lie in')
case('difftime.likelihood_grid', 'steps=0', lambda: likelihood_grid(0, 1.), V, 'steps')
case('difftime.pf_ode_field', 'denoiser that is not differentiable', lambda: pf_ode_field(lambda x, s: x.detach() * 0.5, X, 1.), V, 'does not depend differentiably on x')
case('difftime.pf_ode_field', 'denoiser of the wrong shape', lambda: pf_ode_field(lambda x, s: x[:, :1], X, 1.), V, 'the denoiser returned shape')
case('difftime.ode_log_prob', 'decreasing grid', lambda: ode_log_prob(RING, X, torch.tensor([1., 0.5])), V, 'increasing grid')
case('difftime.ode_log_prob', 'NaN in x', lambda: ode_log_prob(RING, torch.full((2, 2), NAN, dtype=torch.float64), torch.tensor([0.5, 1.])), FloatingPointError, 'x')
case('difftime.ode_log_prob', 'unknown divergence', lambda: ode_log_prob(RING, X, torch.tensor([0.5, 1.]), divergence='trace'), V, "'exact' or 'hutchinson'")
case('difftime.ode_log_prob', 'record off the grid', lambda: ode_log_prob(RING, X, torch.tensor([0.5, 1.]), record=[0.7]), V, 'record values must be grid points')
case('difftime.ode_log_prob', 'integer x', lambda: ode_log_prob(RING, torch.zeros(2, 2, dtype=torch.long), torch.tensor([0.5, 1.])), V, 'float batch')
case('difftime.dequantize', 'off the grey-level grid', lambda: dequantize(torch.tensor([[0.1234]]), 256), V, 'not on a grid of 256')
case('difftime.dequantize', 'levels=1', lambda: dequantize(torch.zeros(1, 1), 1), V, 'levels')
case('difftime.isotropic_log_prob', 'sigma=0', lambda: isotropic_log_prob(X, 0.), V, 'sigma')
case('difftime.dequant_sigma', 'levels=1', lambda: dequant_sigma(1), V, 'levels')
case('difftime.bits_per_dim', 'dim=0', lambda: bits_per_dim(torch.zeros(1), 0, 256), V, 'dim')

# dmcmc ---------------------------------------------------------------------------------------------------------------
case('dmcmc.check_noise_grid', 'repeated', lambda: check_noise_grid([1., 1.]), V, 'repeated')
case('dmcmc.noise_grid', 'n_levels=0', lambda: noise_grid(0), V, 'n_levels must be a positive integer')
case('dmcmc.level_prior', 'unknown', lambda: level_prior([1., 2.], 'jeffreys'), V, "prior must be 'log-uniform'")
case('dmcmc.NoisePosterior', 'empty grid', lambda: NoisePosterior([]), V, 'σ grid is empty')
case('dmcmc.ExactNoisePosterior', 'negative level', lambda: ExactNoisePosterior(RING, [-1., 1.]), V, 'finite and positive')
case('dmcmc.ClassifierNoisePosterior', 'wrong logits', lambda: ClassifierNoisePosterior(lambda x: torch.zeros(len(x), 2), POST.sigmas).log_probs(X), V, 'expected (8, 20)')
case('dmcmc.ula_step', 'sigma of the wrong length', lambda: ula_step(X, X, torch.ones(3), 0.01, X), V, 'sigma has shape')
case('dmcmc.ula_stationary_var', 'step too large', lambda: ula_stationary_var(0.5, 1.), V, '0 < step_size < 2v')
case('dmcmc.run_dlg', 'step_size NaN', lambda: run_dlg(RING, POST, X, torch.zeros(8, dtype=torch.long), 2, NAN), V, 'step_size must be a positive')
case('dmcmc.run_dlg', 'model returns None', lambda: run_dlg(_model_returning(lambda x: None), POST, X, torch.zeros(8, dtype=torch.long), 2, 0.01), T, 'got NoneType')
case('dmcmc.DLGStart', 'n_skip=2.5', lambda: DLGStart(RING, POST, n_skip=2.5), V, 'n_skip must be a positive integer')
case('dmcmc.DLGStart', 'step unstable where the chains are', lambda: DLGStart(RING, POST, step_size=150., n_chains=8, burn_in=1)(16, (2,), generator=G(1)), V, 'unstable where the chains are')
case('dmcmc.tweedie_step', 'eps<0', lambda: tweedie_step(RING, X, -1.), V, 'tweedie eps must be a positive')
case('dmcmc.tweedie_step', 'model returns float16', lambda: tweedie_step(_model_returning(lambda x: x.half()), X), T, 'less precise')
case('dmcmc.generate_tweedie', 'tweedie_eps NaN', lambda: generate_tweedie(RING, 4, tweedie_eps=NAN), V, 'tweedie eps must be a positive')
case('dmcmc.vanilla_at_equal_nfe', 'no budget', lambda: vanilla_at_equal_nfe(RING, 4, 1), V, 'nfe must be a positive integer')
case('dmcmc.dlg_vs_path', 'step_size<0', lambda: dlg_vs_path(RING, RING, step_size=-1.), V, 'step_size must be a positive')
case('dmcmc.format_rows', 'not rows', lambda: format_rows([1]), (TypeError, AttributeError), '')
case('dmcmc.plot_dlg', 'chain_length=0', lambda: plot_dlg(chain_length=0), V, 'chain_length')
case('dmcmc.explore_dlg', 'n=0', lambda: explore_dlg(n=0), V, 'n')

# cli (the Python API; the console script below) ----------------------------------------------------------------------
case('cli.compare', 'samplers empty', lambda: compare(samplers=[]), V, 'samplers names no sampler')
case('cli.compare', 'nfe huge', lambda: compare(nfe=[10**6], samplers=['euler'], n=10), V, 'max_steps')
case('cli.compare', 'n=2.5', lambda: compare(n=2.5), V, 'n must be')
case('cli.compare', 'nfe=True', lambda: compare(nfe=[True]), V, 'NFE budgets (nfe) must be positive integers')
case('cli.compare', 'unknown metric', lambda: compare(metric='fid'), V, 'unknown metric')
case('cli.format_table', 'not a result', lambda: format_table({}), KeyError, 'nfe')
case('cli.plot_compare', 'not a result', lambda: plot_compare({}), V, 'res must be the dict returned by compare')
case('cli.main', 'unknown command', lambda: cli.main(['frobnicate']), SystemExit, '2')
case('bench.main', 'steps=1', lambda: bench.main(['overhead', '--steps', '1']), SystemExit, '2')

# checkpoint loaders --------------------------------------------------------------------------------------------------
case('checkpoint.load_checkpoint', 'missing file', lambda: load_checkpoint('/nonexistent/c.safetensors'), FNF, '/nonexistent/c.safetensors')
case('checkpoint.save_checkpoint', 'not tensors', lambda: save_checkpoint('/tmp/c.safetensors', {'w': 1}, {}), T, 'dict of name')
case('checkpoint.atomic_write', 'a directory', lambda: atomic_write('/tmp', lambda t: None), IsADirectoryError, "'/tmp'")

CASES = [pytest.param(fn, exc, text, id=f"{name}: {label}") for name, label, fn, exc, text in C]

@pytest.mark.parametrize('fn,exc,text', CASES)
def test_bad_input(fn, exc, text):
    "The bad call fails within the time limit, with the expected error type and a message naming what was wrong."
    t0 = time.perf_counter()
    with time_limit(), pytest.raises(exc) as e: fn()
    assert text in str(e.value), f"message {str(e.value)!r} does not contain {text!r}"
    assert time.perf_counter() - t0 < LIMIT_S

# ---------------------------------------------------------------------------------------------------------------------
EXEMPT = {   # public names without a bad-input case, and why
    'PREDICTION_TYPES': 'constant', 'PRESETS': 'constant', 'BETA_SCHEDULES': 'constant', 'SPACINGS': 'constant',
    'SCHEDULES': 'constant', 'HEADLINE': 'constant', 'FULL_SIZE': 'constant', 'PRETRAINED_SHA256': 'constant',
    'SAMPLERS': 'the registry (a dict)', 'START_KINDS': 'constant', 'StartUnavailable': 'an exception class', 'NOISE_MLP_SHA256': 'constant', 'PEERS': 'constant', 'PEER_GRIDS': 'constant', 'GOAL_STARTS': 'constant', 'GOALS': 'constant', 'IPNDM_COEFFS': 'constant', 'MULTISTEP': 'constant', 'KDIFF': 'constant', 'lazy_pyplot': 'matplotlib.pyplot itself, imported on first use', 'active_checks': 'a query without arguments', 'notify': 'calls the callback it is given', 'sampler_loop': 'a decorator', 'HostSyncCounter': 'a TorchFunctionMode without arguments', 'BASELINES': 'constant', 'MAX_STEPS': 'constant', 'BudgetError': 'an exception class',
    'StartOut': 'a plain dataclass of results', 'LikelihoodOut': 'a plain NamedTuple of results', 'OWN_RANGE': 'constant', 'start_nfe': "reads a start's own cost record (a dict)", 'tuning_module': 'takes no arguments (an optional module, or StartUnavailable)', 'Start': 'abstract base class', 'Samples': 'a plain dataclass of results',
    'DMCMCSamples': 'a plain dataclass of results', 'PAIRS': 'constant', 'BETAS': 'constant', 'TARGET_RATIO': 'constant',
    'PHIS': 'constant', 'OFFSETS': 'constant', 'INFEASIBLE': 'constant', 'FORMS': 'constant', 'PRIOR_KINDS': 'constant',
    'METRICS': 'constant', 'COMMAND_MODULES': 'constant (the plugin list)',
}

def test_table_covers_every_public_name():
    covered = {n.split('.')[1] for n, *_ in C}
    for m in MODULES:
        missing = [n for n in m.__all__ if n not in covered and n not in EXEMPT
                   and getattr(getattr(m, n), '__module__', m.__name__) == m.__name__]
        assert not missing, f"{m.__name__}: public names without a bad-input case: {missing}"

def test_table_summary():
    "The table's size and what it asserts, by error type (printed with `pytest -s`)."
    by = {}
    for _, _, _, exc, _ in C:
        k = exc.__name__ if isinstance(exc, type) else ' or '.join(e.__name__ for e in exc)
        by[k] = by.get(k, 0) + 1
    print(f"\nbad-input table: {len(C)} cases over {len({n for n, *_ in C})} entry points; by expected error: {by}")
    assert len(C) >= 250

# Hypothesis: numeric arguments over their whole range (few examples, so the suite stays fast) -------------------------
FEW = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
ANY_FLOAT = st.one_of(st.floats(-1e30, 1e30), st.sampled_from([NAN, INF, -INF, -0.0, 0.0, -1e-300, 1e-300]))   # beyond ~1e30, σ² overflows (a FloatingPointError)

@FEW
@given(name=st.sampled_from(sorted(SAMPLERS)), nfe=st.integers(1, 300))
def test_steps_for_nfe_is_the_largest_grid_that_fits(name, nfe):
    "The bisection gives what stepping one grid at a time gives, for every registered sampler."
    info = SAMPLERS[name]; cost = lambda s: info.nfe(s, **info.defaults)
    brute = 0
    while cost(brute + 1) <= nfe: brute += 1
    with time_limit():
        if brute < info.min_steps:
            with pytest.raises(BudgetError, match='needs at least'): steps_for_nfe(name, nfe)
        else: assert steps_for_nfe(name, nfe) == brute

@FEW
@given(nfe=st.one_of(st.integers(-10, 10**12), st.booleans(), st.floats(allow_nan=True), st.text(max_size=3)))
def test_budgets_answer_at_once(nfe):
    "Any budget gets a step count or a ValueError naming nfe / max_steps, within the time limit (no loop over steps)."
    with time_limit():
        try: s = steps_for_nfe('heun', nfe)
        except ValueError as e: assert 'nfe' in str(e) or 'max_steps' in str(e), str(e)
        else: assert isinstance(s, int) and 2 <= s <= MAX_STEPS and 2 * s - 1 <= nfe

@FEW
@given(sigma=ANY_FLOAT)
def test_sigma_is_a_noise_level(sigma):
    "Negative or non-finite σ is refused by the exact and the learned denoiser; any other σ gives finite output."
    for f in (RING.log_prob, RING.denoiser, MLP):
        with time_limit():
            if not (math.isfinite(sigma) and sigma >= 0):
                with pytest.raises(ValueError, match='sigma must be'): f(X, sigma)
            else: assert torch.isfinite(torch.as_tensor(f(X, sigma))).all()

@FEW
@given(grid=st.lists(ANY_FLOAT, min_size=0, max_size=6))
def test_sigma_grids(grid):
    "A σ grid is accepted by a sampler exactly when check_sigmas accepts it; otherwise the error says what is wrong."
    g = torch.tensor(grid + [0.], dtype=torch.float64)
    ok = len(g) >= 2 and bool(torch.isfinite(g).all()) and bool((g[:-1] > 0).all()) and bool((g[1:] < g[:-1]).all())
    with time_limit():
        if ok: assert torch.isfinite(sample_euler(RING, X[:2], g)).all()
        else:
            with pytest.raises(ValueError, match='sigmas'): sample_euler(RING, X[:2], g)

@FEW
@given(hp=st.sampled_from(['s_churn', 's_noise', 'snr', 'eta']), v=st.one_of(ANY_FLOAT, st.booleans(), st.complex_numbers()))
def test_hyperparameters(hp, v):
    "A hyperparameter is a number in its range or a ValueError that names it; never silently replaced."
    fn = {'s_churn': sample_heun, 's_noise': sample_heun, 'snr': sample_pc, 'eta': sample_ddim}[hp]
    valid = isinstance(v, float) and math.isfinite(v) and (v > 0 if hp == 'snr' else v >= 0) and (v <= 1 if hp == 'eta' else True)
    with time_limit():
        if valid:
            try: out = fn(RING, X[:4], SIG, generator=G(), **{hp: v})
            except FloatingPointError: return                 # a huge value may overflow: caught as non-finite, by name
            assert out.shape == (4, 2)
        else:
            with pytest.raises(ValueError, match=hp): fn(RING, X[:4], SIG, generator=G(), **{hp: v})

@FEW
@given(n=st.one_of(st.integers(-3, 3), st.floats(-3, 3), st.sampled_from([NAN, INF]), st.booleans()))
def test_counts(n):
    "Counts are integers: 2.5 is not 2, True is not 1."
    integral = not isinstance(n, bool) and (isinstance(n, int) or (isinstance(n, float) and math.isfinite(n) and n == int(n)))
    for f in (lambda: RING.sample(n), lambda: generate(RING, n, 'euler', 3).x, lambda: VAE2d().sample(n)):
        with time_limit():
            if integral and n >= 1: assert len(f()) == n
            else:
                with pytest.raises(ValueError, match='n must be a positive integer'): f()

# Faults: a model that raises, returns NaN at step k, or the wrong type, inside generate ------------------------------
@pytest.mark.parametrize('model,exc,text', [
    (_raises, RuntimeError, 'model exploded'), (_nan_at(2), FloatingPointError, 'at call 2'),
    (_model_returning(lambda x: None), TypeError, 'at call 1 must be a torch.Tensor'),
    (_model_returning(lambda x: x.float()), TypeError, 'less precise'),
    (_model_returning(lambda x: x.to(torch.complex128)), TypeError, 'real floating-point')], ids=['raises', 'nan@2', 'None', 'float32', 'complex'])
def test_model_faults_in_generate(model, exc, text):
    with time_limit(), pytest.raises(exc, match=text): generate(model, 4, 'heun', 9, shape=(2,))

# The console scripts: every bad path or argument is a one-line usage error before any work ---------------------------
def _main(argv, fn=cli.main):
    err = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), time_limit():
        try: rc = fn(argv)
        except SystemExit as e: rc = e.code
    return rc, err.getvalue(), time.perf_counter() - t0

@pytest.fixture
def existing_file(tmp_path):
    (tmp_path / 'dir.png').mkdir(); p = tmp_path / 'file'; p.write_text('x'); return p

CLI_CASES = [
    (['--json', '{tmp}'], 'is a directory'), (['--plot', '{tmp}/dir.png'], 'is a directory'),
    (['--json', '{file}/r.json'], 'is not a folder (it is a file)'), (['--plot', '{file}/r.png'], 'is not a folder'),
    (['--json', '/proc/r.json'], 'refuses new files'), (['--plot', '/proc/r.png'], 'refuses new files'),
    (['--json', '/nonexistent/dir/r.json'], 'does not exist'), (['--samplers', ''], 'names no sampler'),
    (['--samplers', ' , '], 'names no sampler'), (['--nfe', '1000000'], 'max_steps'), (['--nfe', '0'], 'positive'),
    (['--json', '{tmp}/a.json', '--plot', '{tmp}/a.json'], '.png'), (['--plot', '{tmp}/a.png', '--json', '{tmp}/a.png'], 'same file'),
    (['--n', '2.5'], 'invalid int'), (['--target', 'moons'], 'choose one of'), (['--metric', 'fid'], 'unknown metric'),
]

@pytest.mark.parametrize('args,msg', CLI_CASES, ids=[' '.join(a) for a, _ in CLI_CASES])
def test_cli_usage_errors(args, msg, tmp_path, existing_file):
    args = [a.format(tmp=tmp_path, file=existing_file) for a in args]
    rc, err, dt = _main(['compare', '--n', '50', '--nfe', '5', '--samplers', 'euler', *args] if '--nfe' not in args and '--samplers' not in args
                        else ['compare', '--n', '50', *args])
    assert rc == 2 and msg in err and len(err.strip().splitlines()) == 1, (rc, err)
    assert dt < LIMIT_S                                     # refused before the run, not after it
    assert sorted(p.name for p in tmp_path.iterdir()) == ['dir.png', 'file']   # nothing written, no stray temporary file

BENCH_CASES = [['--steps', '1'], ['--steps', '5000'], ['--threads', '0'], ['--batch', '0'], ['--shape', '0'], ['--repeats', '0'], ['--shape', 'x']]

@pytest.mark.parametrize('args', BENCH_CASES, ids=[' '.join(a) for a in BENCH_CASES])
def test_bench_usage_errors(args):
    rc, err, dt = _main(['overhead', *args], bench.main)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and 'error:' in err, (rc, err)

def test_cli_modes_and_atomic_replace(tmp_path):
    "New files get the umask's mode; a replaced file keeps its mode (not the temporary file's 0600)."
    old = os.umask(0o022)
    try:
        keep = tmp_path / 'keep.json'; keep.write_text('{}'); keep.chmod(0o640)
        rc, err, _ = _main(['compare', '--n', '50', '--nfe', '5', '--samplers', 'euler', '--json', str(tmp_path / 'new.json'), '--plot', str(tmp_path / 'new.png')])
        assert rc == 0, err
        rc, err, _ = _main(['compare', '--n', '50', '--nfe', '5', '--samplers', 'euler', '--json', str(keep)])
        assert rc == 0, err
        mode = lambda p: stat.S_IMODE(p.stat().st_mode)
        assert mode(tmp_path / 'new.json') == 0o644 and mode(tmp_path / 'new.png') == 0o644 and mode(keep) == 0o640
        assert json.loads(keep.read_text())['rows']['euler']['5']['nfe'] == 5
        m = save_denoiser(MLP, tmp_path / 'm.safetensors'); assert mode(m) == 0o644
        m.chmod(0o600); save_denoiser(MLP, m); assert mode(m) == 0o600
        assert sorted(p.name for p in tmp_path.iterdir()) == ['keep.json', 'm.safetensors', 'new.json', 'new.png']
    finally: os.umask(old)

# Checkpoints: verified, and a killed write leaves the old file -------------------------------------------------------
def test_flipped_bit_is_refused(tmp_path):
    src = models2d._pretrained_path('ring').read_bytes()
    for i in (len(src) - 100, len(src) // 2):               # inside the weights
        b = bytearray(src); b[i] ^= 1; p = tmp_path / 'flip.safetensors'; p.write_bytes(bytes(b))
        with pytest.raises(CheckpointError, match='flip.safetensors'): load_denoiser(p, models2d.PRETRAINED_SHA256['ring'])
        with pytest.raises(CheckpointError, match='weights are damaged'): load_denoiser(p)

def test_damaged_metadata_names_the_file(tmp_path):
    from safetensors.torch import save_file
    st_ = dict(MLP.state_dict())
    for meta, text in [({'format': 'dmlearn.models2d/1', 'config': '{not json'}, 'metadata is damaged'),
                       ({'format': 'dmlearn.models2d/1'}, 'metadata is damaged'),
                       ({'format': 'dmlearn.models2d/1', 'config': json.dumps({'inner': {'class': 'Nope'}, 'sigma_data': 0.5})}, 'model config is damaged')]:
        p = tmp_path / 'bad.safetensors'; save_file(st_, str(p), metadata=meta)
        with pytest.raises(ValueError, match=text) as e: load_denoiser(p)
        assert 'bad.safetensors' in str(e.value)

def test_loading_leaves_the_global_rng_alone():
    torch.manual_seed(0); a = torch.rand(3)
    torch.manual_seed(0); pretrained_denoiser('grid'); load_denoiser(models2d._pretrained_path('hard')); b = torch.rand(3)
    assert torch.equal(a, b)

KILL_WRITER = r'''
import os, signal, sys, safetensors.torch as S
import dmlearn.checkpoint as C
real = S.save_file
def half(tensors, path, metadata=None):
    real(tensors, path, metadata=metadata)
    with open(path, 'r+b') as f: f.truncate(os.path.getsize(path) // 2)    # half written ...
    os.kill(os.getpid(), signal.SIGKILL)                                     # ... and the process dies
C.save_file = half
from dmlearn.models2d import pretrained_denoiser, save_denoiser
save_denoiser(pretrained_denoiser('ring'), sys.argv[1])
'''

def test_checkpoint_write_killed_midway(tmp_path):
    p = save_denoiser(MLP, tmp_path / 'm.safetensors'); before = p.read_bytes()
    r = subprocess.run([sys.executable, '-c', KILL_WRITER, str(p)], capture_output=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert p.read_bytes() == before                          # the old file survives, whole
    load_denoiser(p)
    save_denoiser(MLP, p)                                    # the next write cleans up what the killed one left
    assert [q.name for q in tmp_path.iterdir()] == ['m.safetensors']

def test_checkpoint_write_that_raises_leaves_nothing(tmp_path, monkeypatch):
    p = save_denoiser(MLP, tmp_path / 'm.safetensors'); before = p.read_bytes()
    def boom(*a, **k): raise OSError('disk full')
    monkeypatch.setattr(checkpoint, 'save_file', boom)
    with pytest.raises(OSError, match='disk full'): save_denoiser(MLP, p)
    assert p.read_bytes() == before and [q.name for q in tmp_path.iterdir()] == ['m.safetensors']

# Global state: importing dmlearn, or running the CLI with --plot, leaves matplotlib as it was ------------------------
GLOBAL_STATE = r'''
import sys, matplotlib
matplotlib.use('svg')
import dmlearn.core, dmlearn.gmm, dmlearn.schedules, dmlearn.metrics, dmlearn.models2d, dmlearn.viz, dmlearn.samplers
import dmlearn.bench, dmlearn.scire, dmlearn.ddim_gmm, dmlearn.starts, dmlearn.difftime, dmlearn.dmcmc, dmlearn.cli
assert 'matplotlib.pyplot' not in sys.modules, 'importing dmlearn imported pyplot'
assert dmlearn.cli.main(['compare', '--n', '50', '--nfe', '5', '--samplers', 'euler', '--plot', sys.argv[1]]) == 0
assert matplotlib.get_backend() == 'svg', matplotlib.get_backend()   # the caller's backend, whatever the plugins import
print('ok')
'''

def test_global_state(tmp_path):
    r = subprocess.run([sys.executable, '-c', GLOBAL_STATE, str(tmp_path / 'f.png')], capture_output=True, text=True, timeout=300,
                       env={**os.environ, 'MPLBACKEND': ''})
    assert r.returncode == 0 and 'ok' in r.stdout, r.stderr[-2000:]
    assert (tmp_path / 'f.png').stat().st_size > 1000
