"Learned 2D denoisers: the CI-sized MLP must beat the best linear denoiser; checkpoints load, and bad files fail clearly."
import pytest, torch
from safetensors.torch import save_file
from dmlearn.gmm import get_gmm
from dmlearn.models2d import (train_denoiser, compare_denoisers, linear_denoiser, save_denoiser, load_denoiser,
                              pretrained_denoiser)

SIGMAS = [0.1, 0.3, 1.]

def _check(model, gm, sigma_ratio, max_ratio, min_gap, n=20_000):
    "MLP loss ≤ `max_ratio` × linear loss at `sigma_ratio`, and ≥ `min_gap` of the linear→exact gap closed at every σ."
    c = compare_denoisers(model, gm, SIGMAS, n=n, generator=torch.Generator().manual_seed(123))
    gap = (c['loss_linear'] - c['loss']) / (c['loss_linear'] - c['loss_exact'])
    i = SIGMAS.index(sigma_ratio)
    ratio = (c['loss'][i] / c['loss_linear'][i]).item()
    assert ratio < max_ratio, f"{gm.name}: MLP/linear loss at σ={sigma_ratio} is {ratio:.3f} (want < {max_ratio})"
    assert (gap > min_gap).all(), f"{gm.name}: gap closed {gap.tolist()} (want > {min_gap} at every σ in {SIGMAS})"
    return ratio, gap

# The best possible (exact) loss is 64% below linear at σ=0.3 on the ring and 48% below at σ=0.1 on the grid.
# Measured with the CI-sized default (seed 0): ring 0.39 × linear, gap closed 0.98/0.94/0.90;
# grid 0.53 × linear, gap closed 0.96/0.98/0.89. A network stuck on the linear plateau scores 1.0 × and 0.
@pytest.mark.parametrize('name,sigma_ratio,max_ratio', [('ring', 0.3, 0.6), ('grid', 0.1, 0.7)])
def test_ci_sized_mlp_beats_linear(name, sigma_ratio, max_ratio):
    gm = get_gmm(name)
    model, losses = train_denoiser(gm, progress=False)
    assert torch.isfinite(losses).all()
    _check(model, gm, sigma_ratio, max_ratio, min_gap=0.7)

def test_linear_plateau_fails_the_check():
    "The check must reject a model that only knows the Gaussian (linear) denoiser."
    gm = get_gmm('ring')
    with pytest.raises(AssertionError): _check(linear_denoiser(gm.mean, gm.cov), gm, 0.3, 0.6, 0.7)

@pytest.mark.parametrize('name', ['ring', 'grid', 'hard'])
def test_pretrained_checkpoints(name):
    gm, model = get_gmm(name), pretrained_denoiser(name)
    assert model.info['steps'] == 8000 and model.info['data'] == name
    c = compare_denoisers(model, gm, SIGMAS, n=10_000, generator=torch.Generator().manual_seed(0))
    gap = (c['loss_linear'] - c['loss']) / (c['loss_linear'] - c['loss_exact'])
    assert (gap > 0.9).all(), gap
    assert c['rel_err'].max() < 0.05, c['rel_err']

def test_deterministic_under_seed():
    gm = get_gmm('ring')
    a, la = train_denoiser(gm, steps=20, progress=False, seed=7)
    b, lb = train_denoiser(gm, steps=20, progress=False, seed=7)
    assert torch.equal(la, lb)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))

def test_float64_contract():
    model = pretrained_denoiser('ring')
    x = torch.randn(7, 2, dtype=torch.float64)
    out = model(x, torch.full((7,), 0.5, dtype=torch.float64))
    assert out.dtype == torch.float64 and out.shape == (7, 2)
    assert torch.allclose(model(x, 0.5), out)

def test_save_load_roundtrip_and_bad_files(tmp_path):
    model, _ = train_denoiser(get_gmm('ring'), steps=10, progress=False)
    p = save_denoiser(model, tmp_path / 'm.safetensors')
    x = torch.randn(5, 2, dtype=torch.float64)
    assert torch.equal(load_denoiser(p)(x, 0.3), model(x, 0.3))
    with pytest.raises(FileNotFoundError, match='nope.safetensors'): load_denoiser(tmp_path / 'nope.safetensors')
    bad = tmp_path / 'garbage.safetensors'; bad.write_bytes(b'\xff' * 64 + b'definitely not safetensors')
    with pytest.raises(ValueError, match='garbage.safetensors is not a readable safetensors file'): load_denoiser(bad)
    cut = tmp_path / 'cut.safetensors'; cut.write_bytes(p.read_bytes()[:3000])
    with pytest.raises(ValueError, match='cut.safetensors'): load_denoiser(cut)
    other = tmp_path / 'other.safetensors'; save_file({'w': torch.zeros(3)}, str(other))
    with pytest.raises(ValueError, match='not a dmlearn denoiser'): load_denoiser(other)
