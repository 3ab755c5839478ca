"""dmlearn.hub: diffusers checkpoints as denoisers, tested offline on tiny random models of the published classes.

Every UNet here is a random `UNet2DModel` built by `tiny_config` from the published configurations (same block types,
time embedding and keys; small channels and images). Random weights test the algebra: a wrong input scale, timestep,
sign or data range changes any network's output. Nothing touches the network: hub ids are read from cache
directories laid out as `huggingface_hub` lays them out (`models--owner--name/refs/main`, `snapshots/<commit>/`).
"""
import json

import pytest
import torch
from torch import nn

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")
from diffusers import DDIMScheduler, DDPMScheduler, ScoreSdeVePipeline, ScoreSdeVeScheduler, UNet2DModel

from dmlearn.core import denoised_to_eps, denoised_to_v
from dmlearn.hub import (DDPM_CIFAR10_SCHEDULER, DDPM_CIFAR10_UNET, NCSNPP_SCHEDULER, NCSNPP_UNET, DiscreteEpsDenoiser,
                         VEScoreDenoiser, diffusers_loop, file_sha256, gpu_check, load_pretrained, main, parity,
                         tiny_config, ve_parity, vp_sigmas)
from dmlearn.samplers import sample_ddim
from dmlearn.schedules import ddpm_alphas_cumprod

diffusers.utils.logging.set_verbosity_error()
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def unets():
    torch.manual_seed(0)
    return UNet2DModel(**tiny_config(DDPM_CIFAR10_UNET)).eval(), UNet2DModel(**tiny_config(NCSNPP_UNET)).eval()


def save(root, unet, sched, layout):
    "Write a checkpoint folder: 'pipeline' (unet/, scheduler/, model_index.json), 'flat' (google/ddpm-* style) or 'bare'."
    root.mkdir(parents=True, exist_ok=True)
    if layout == "pipeline":
        unet.save_pretrained(root / "unet"); sched.save_pretrained(root / "scheduler")
        (root / "model_index.json").write_text(json.dumps({"_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DModel"]}))
    else:
        unet.save_pretrained(root)
        if layout == "flat":
            sched.save_pretrained(root); (root / "model_index.json").write_text(json.dumps({"_class_name": "DDPMPipeline"}))
    return root


def cache_entry(cache, repo_id, unet, sched, layout="flat", weights=True):
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True); (repo / "refs" / "main").write_text(COMMIT)
    snap = save(repo / "snapshots" / COMMIT, unet, sched, layout)
    if not weights:
        for f in snap.rglob("diffusion_pytorch_model.*"): f.unlink()
    return snap


# ------------------------------------------------------------------------------------------------ the σ <-> t table
def test_sigma_t_maps():
    ac = ddpm_alphas_cumprod(1000)
    d = DiscreteEpsDenoiser(nn.Identity(), ac)
    assert d.sigmas.shape == (1000,) and d.sigma_min == pytest.approx(float(d.sigmas[0])) and d.sigma_max == pytest.approx(float(d.sigmas[-1]))
    t = torch.arange(1000, dtype=torch.float64)
    assert (d.sigma_to_t(d.sigmas) - t).abs().max() < 1e-6                  # the trained levels give integer t back
    tf = torch.rand(50, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 999
    assert (d.sigma_to_t(d.t_to_sigma(tf)) - tf).abs().max() < 1e-8          # inverse maps
    ls = d.log_sigmas
    for i in (0, 17, 998):                                                    # linear in log σ between neighbours
        for w in (0.25, 0.45, 0.9):
            s = torch.exp((1 - w) * ls[i] + w * ls[i + 1])[None]
            assert d.sigma_to_t(s).item() == pytest.approx(i + w, abs=1e-8)
            assert d.sigma_to_t(s, quantize=True).item() == (i + 1 if w > 0.5 else i)
    assert d.sigma_to_t(torch.tensor([1e-6, 1e6], dtype=torch.float64)).tolist() == [0., 999.]
    g = d.get_sigmas(10)
    assert g[-1] == 0 and len(g) == 11 and torch.isclose(g[0], d.sigmas[-1].double()) and (g[:-1].diff() < 0).all()


def test_bad_tables():
    with pytest.raises(ValueError, match="strictly decreasing"):
        DiscreteEpsDenoiser(nn.Identity(), ddpm_alphas_cumprod(10).flip(0))
    with pytest.raises(ValueError, match="prediction_type"):
        DiscreteEpsDenoiser(nn.Identity(), ddpm_alphas_cumprod(10), prediction_type="score")


class ExactVP(nn.Module):
    "The exact prediction (ε, v or x0) of a VP model when the data is one image c, reading ᾱ at t like the table does."
    def __init__(self, c, table, kind):
        super().__init__(); self.c, self.table, self.kind = c, table, kind
        self.w = nn.Parameter(torch.zeros(1, dtype=torch.float64))
    def forward(self, x_t, t):
        s = self.table.t_to_sigma(t.double())[:, None, None, None]
        a = (1 + s**2).rsqrt()
        x = x_t / a                                                           # back to σ-coordinates
        D = self.c.expand_as(x)
        if self.kind == "epsilon": return denoised_to_eps(x, s.flatten(), D)
        if self.kind == "v_prediction": return denoised_to_v(x, s.flatten(), D)
        return D


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("quantize", [False, True])
def test_discrete_denoiser_exact(kind, quantize):
    ac = ddpm_alphas_cumprod(1000)
    table = DiscreteEpsDenoiser(nn.Identity(), ac)
    g = torch.Generator().manual_seed(1)
    c = torch.rand(1, 3, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    d = DiscreteEpsDenoiser(ExactVP(c, table, kind), ac, quantize=quantize, prediction_type=kind)
    sig = table.sigmas[[0, 5, 400, 999]] if quantize else torch.tensor([0.013, 0.7, 9., 140.], dtype=torch.float64)
    x = c + sig[:, None, None, None] * torch.randn(4, 3, 4, 4, generator=g, dtype=torch.float64)
    assert (d(x, sig) - c).abs().max() < 1e-8
    # a wrong timestep would be visible: evaluate the stand-in one step off
    off = DiscreteEpsDenoiser(ExactVP(c, DiscreteEpsDenoiser(nn.Identity(), ac[1:]), kind), ac, prediction_type=kind)
    if kind != "sample": assert (off(x, sig) - c).abs().max() > 1e-4


def test_follows_model_dtype(unets):
    "A bfloat16 UNet gets bfloat16 input; the denoiser answers in the batch's dtype."
    unet = UNet2DModel(**tiny_config(DDPM_CIFAR10_UNET)).eval().to(torch.bfloat16)
    seen = {}
    unet.register_forward_pre_hook(lambda m, a: seen.update(dtype=a[0].dtype, t=a[1].dtype))
    d = DiscreteEpsDenoiser(unet, ddpm_alphas_cumprod(1000))
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad(): out = d(x, torch.tensor([1., 5.]))
    assert out.dtype == torch.float32 and seen == {"dtype": torch.bfloat16, "t": torch.float32}
    assert torch.isfinite(out).all()


# ------------------------------------------------------------------------------------------------ VE NCSN++
class PointScore(nn.Module):
    def __init__(self, y0): super().__init__(); self.y0 = y0; self.w = nn.Parameter(torch.zeros(1, dtype=torch.float64))
    def forward(self, y, s): return (self.y0 - y) / s[:, None, None, None]**2


def test_ve_denoiser_point_mass():
    g = torch.Generator().manual_seed(2)
    y0 = torch.rand(1, 3, 4, 4, generator=g, dtype=torch.float64)
    sig = torch.tensor([0.02, 0.3, 30., 690.], dtype=torch.float64)
    x = (2 * y0 - 1) + sig[:, None, None, None] * torch.randn(4, 3, 4, 4, generator=g, dtype=torch.float64)
    assert (VEScoreDenoiser(PointScore(y0))(x, sig) - (2 * y0 - 1)).abs().max() < 1e-9
    # the data-range map matters: treating a [0, 1] model as centred is wrong by the affine map
    assert (VEScoreDenoiser(PointScore(y0), centered=True)(x, sig) - (2 * y0 - 1)).abs().max() > 0.1
    d = VEScoreDenoiser(PointScore(y0), sigma_min=0.01, sigma_max=50.)
    assert (d.sigma_min, d.sigma_max) == (0.02, 100.)


def test_ve_fourier_unet_returns_score(unets):
    "diffusers' Fourier UNet divides its output by σ: the adapter's D is Tweedie's formula on that output."
    ve_unet = unets[1]
    assert ve_unet.config.time_embedding_type == "fourier"
    d = VEScoreDenoiser(ve_unet)
    x, sig = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3)), torch.tensor([0.1, 40.])
    with torch.no_grad():
        raw = ve_unet((x + 1) / 2, sig / 2).sample
        assert torch.allclose(d(x, sig), 2 * ((x + 1) / 2 + (sig / 2)[:, None, None, None]**2 * raw) - 1, rtol=1e-5, atol=1e-5)


def test_ve_pipeline_parity(unets):
    "sample_pc on the adapter = ScoreSdeVePipeline's predictor-corrector loop; the harness loop = the pipeline's output."
    d, ref = ve_parity(unets[1], steps=5, batch=2, seed=4)
    assert d < 1e-5 * ref.abs().max()
    pipe = ScoreSdeVePipeline(unets[1], ScoreSdeVeScheduler(sigma_min=0.01, sigma_max=348., snr=0.16))
    pipe.set_progress_bar_config(disable=True)
    img = pipe(batch_size=2, num_inference_steps=5, generator=torch.Generator().manual_seed(4), output_type="np").images
    assert (torch.from_numpy(img) - ref.clamp(0, 1).permute(0, 2, 3, 1)).abs().max() < 1e-6


# ------------------------------------------------------------------------------------------------ parity
def test_parity_with_diffusers_loops(unets):
    res = parity(unets[0], steps=10, euler_steps=12, batch=3, seed=5)
    assert set(res) == {"ddim trailing float32", "ddim trailing float64", "euler trailing float32", "euler leading float32",
                        "euler karras float32", "euler linspace float32"}
    print("\nmax |ours - diffusers| (relative to the samples' scale):")
    for k, (d, sc) in res.items():
        print(f"  {k:<24} {d:.2e}  ({d / sc:.1e})")
        assert sc > 10                                                  # a real run, not a collapse
        assert d < (1e-10 if "float64" in k else 1e-5) * sc, (k, d, sc)


def test_parity_v_prediction(unets):
    "A v-prediction network through DDIM in float64: our loop and diffusers' agree to rounding."
    unet = unets[0].double()
    try:
        sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False, set_alpha_to_one=True,
                              timestep_spacing="trailing", prediction_type="v_prediction")
        sched.alphas_cumprod = sched.alphas_cumprod.double(); sched.final_alpha_cumprod = sched.final_alpha_cumprod.double()
        z = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
        ref = diffusers_loop(unet, sched, z, 10)
        sig = vp_sigmas(sched)
        ours = sample_ddim(DiscreteEpsDenoiser(unet, sched.alphas_cumprod, prediction_type="v_prediction"),
                           z / (1 + sig[0]**2).rsqrt(), sig)
        eps_ours = sample_ddim(DiscreteEpsDenoiser(unet, sched.alphas_cumprod), z / (1 + sig[0]**2).rsqrt(), sig)
    finally:
        unets[0].float()
    assert (ours - ref).abs().max() < 1e-10 * ref.abs().max()
    assert (eps_ours - ref).abs().max() > 1e-3 * ref.abs().max()           # reading v as ε is visibly wrong


def test_parity_detects_unscaled_input(unets):
    "The comparison is sharp: an adapter that forgets the VP input scale misses diffusers' DDIM by far more than the tolerance."
    class NoScale(DiscreteEpsDenoiser):
        def forward(self, x, sigma):
            s = sigma.expand(x.shape[0]) if sigma.ndim == 0 else sigma
            return x - s[:, None, None, None] * self.inner_model(x, self.sigma_to_t(s).float()).sample
    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False, set_alpha_to_one=True,
                          timestep_spacing="trailing")
    z = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(7))
    ref = diffusers_loop(unets[0], sched, z, 10)
    sig = vp_sigmas(sched).float()
    bad = sample_ddim(NoScale(unets[0], sched.alphas_cumprod), z / (1 + sig[0]**2).rsqrt(), sig)
    assert (bad - ref).abs().max() > 1e-2 * ref.abs().max()


# ------------------------------------------------------------------------------------------------ loading
@pytest.mark.parametrize("layout", ["pipeline", "flat"])
def test_load_local_layouts(tmp_path, unets, layout):
    sched = DDPMScheduler(**DDPM_CIFAR10_SCHEDULER)
    d = load_pretrained(save(tmp_path / layout, unets[0], sched, layout))
    assert isinstance(d, DiscreteEpsDenoiser) and d.config["unet_subfolder"] == ("unet" if layout == "pipeline" else "")
    assert d.config["kind"] == "discrete" and d.config["prediction_type"] == "epsilon" and d.config["revision"] is None
    assert d.config["weights_sha256"] == file_sha256(d.config["weights"])
    x, s = torch.randn(2, 3, 8, 8), torch.tensor([0.5, 50.])
    with torch.no_grad():
        assert torch.allclose(d(x, s), DiscreteEpsDenoiser(unets[0], sched.alphas_cumprod)(x, s), atol=1e-6)
    assert not d.inner_model.training and not any(p.requires_grad for p in d.inner_model.parameters())


def test_load_table_follows_scheduler_config(tmp_path, unets):
    "The table comes from the saved scheduler config (here a cosine schedule and v-prediction), not a default."
    sched = DDIMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")
    d = load_pretrained(save(tmp_path / "cos", unets[0], sched, "pipeline"), quantize=True)
    assert d.prediction_type == "v_prediction" and d.quantize
    assert torch.allclose(d.sigmas.float(), ((1 - sched.alphas_cumprod) / sched.alphas_cumprod).sqrt(), rtol=1e-5)


def test_load_ve_and_bare(tmp_path, unets):
    d = load_pretrained(save(tmp_path / "ve", unets[1], ScoreSdeVeScheduler(**NCSNPP_SCHEDULER), "flat"))
    assert isinstance(d, VEScoreDenoiser) and (d.sigma_min, d.sigma_max) == (0.02, 696.) and d.config["kind"] == "ve_score"
    bare_ve = load_pretrained(save(tmp_path / "ve_bare", unets[1], None, "bare"))       # a Fourier UNet alone is VE
    assert isinstance(bare_ve, VEScoreDenoiser)
    with pytest.raises(ValueError, match="no scheduler_config.json.*DiscreteEpsDenoiser"):
        load_pretrained(save(tmp_path / "bare", unets[0], None, "bare"))
    with pytest.raises(FileNotFoundError, match="holds no UNet"):
        (tmp_path / "empty").mkdir(); load_pretrained(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="neither a local folder nor a hub id"):
        load_pretrained(tmp_path / "does" / "not" / "exist")


def test_load_by_id_offline_from_cache_env(tmp_path, unets, monkeypatch):
    "HF_HUB_OFFLINE=1 and HF_HUB_CACHE=<dir>, read when load_pretrained is called: no network, weights from the cache."
    cache = tmp_path / "hub"
    sched = DDPMScheduler(**DDPM_CIFAR10_SCHEDULER)
    snap = cache_entry(cache, "google/ddpm-cifar10-32", unets[0], sched, "flat")
    cache_entry(cache, "someone/pipeline-layout", unets[0], sched, "pipeline")
    cache_entry(cache, "google/ddpm-ema-celebahq-256", unets[0], sched, "flat", weights=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache)); monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    d = load_pretrained("google/ddpm-cifar10-32")
    assert d.config["revision"] == COMMIT and d.config["cache_dir"] == str(cache)
    assert d.config["weights_sha256"] == file_sha256(snap / "diffusion_pytorch_model.safetensors")
    assert load_pretrained("someone/pipeline-layout").config["unet_subfolder"] == "unet"
    with pytest.raises(FileNotFoundError) as e:
        load_pretrained("google/ncsnpp-celebahq-256")
    assert "'google/ncsnpp-celebahq-256'" in str(e.value) and str(cache) in str(e.value) and "offline" in str(e.value)
    with pytest.raises(FileNotFoundError, match="no UNet weights for 'google/ddpm-ema-celebahq-256'"):
        load_pretrained("google/ddpm-ema-celebahq-256")


# ------------------------------------------------------------------------------------------------ the GPU check
def test_gpu_check_tiny_smoke():
    rows = gpu_check(tiny=True, dtypes=("float32",), repeats=1, print_fn=lambda *a: None)
    assert [r["sampler"] for r in rows] == ["euler", "heun", "dpmpp_2m", "ddim"]
    for r in rows:
        assert "error" not in r, r
        assert r["finite"] and r["images_per_s"] > 0 and r["nfe"] == 4 and r["batch"] == 4


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_gpu_check_refuses_without_cuda(capsys):
    with pytest.raises(RuntimeError, match="needs a CUDA GPU.*--tiny"):
        gpu_check()
    assert main(["gpu-check"]) == 2 and "needs a CUDA GPU" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_adapter_is_sync_free_on_gpu():
    "gpu: the adapter's forward makes no host-device synchronisation."
    unet = UNet2DModel(**tiny_config(DDPM_CIFAR10_UNET)).eval().cuda()
    d = DiscreteEpsDenoiser(unet, ddpm_alphas_cumprod(1000)).cuda()
    x, s = torch.randn(4, 3, 8, 8, device="cuda"), torch.full((4,), 2., device="cuda")
    with torch.no_grad():
        d(x, s); torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try: d(x, s)
        finally: torch.cuda.set_sync_debug_mode(0)


def test_table_stays_float64_when_cast():
    "Casting the wrapper (to bf16, half) casts the UNet but keeps the σ table in float64, so t(σ) stays exact."
    d = DiscreteEpsDenoiser(nn.Linear(2, 2), ddpm_alphas_cumprod(1000)).to(torch.bfloat16)
    assert d.inner_model.weight.dtype == torch.bfloat16 and d.sigmas.dtype == d.log_sigmas.dtype == torch.float64
    assert abs(d.sigma_to_t(d.sigmas[500:501]).item() - 500) < 1e-9
    d.half(); assert d.sigmas.dtype == torch.float64
