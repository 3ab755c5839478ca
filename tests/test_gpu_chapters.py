"""`dmlearn.gpu_chapters` without diffusers: `start_to_dir` on an exact Gaussian denoiser (a property a wrong start
or grid breaks), sharding as torchrun would split it, the classifier and priors' contracts, and bad input."""
import math
import pytest
import torch
from torch import nn
from dmlearn.gpu_chapters import (start_to_dir, image_model, NoiseLevelCNN, train_noise_classifier, ImagePrior, RowsPrior,
                                  vp_nsr, run_card, paper_vs_ours)
from dmlearn.images import load_samples
from dmlearn.starts import PriorStart


class GaussDenoiser(nn.Module):
    "The exact denoiser of data N(0, s² I): D(x; σ) = x s²/(s² + σ²)."
    def __init__(self, s=0.5, shape=(3, 4, 4)):
        super().__init__(); self.s2, self.sample_shape, self.sha256 = s * s, shape, 'test'
    def forward(self, x, sigma):
        sig = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        return x * self.s2 / (self.s2 + sig**2)


def test_gaussian_start_reaches_the_data_std(tmp_path):
    den = GaussDenoiser(0.5)
    start_to_dir(den, tmp_path / 'r', 400, None, 'heun', 159, 'karras', batch_size=128, shard_size=200, sigma_max=80.,
                 dtype=torch.float64, progress=False)
    x, settings = load_samples(tmp_path / 'r')
    assert x.shape == (400, 3, 4, 4) and settings['start'].startswith('gaussian')
    assert abs(x.std().item() - 0.5) < 0.02                # N(0, 0.25): 6400 values, se of the std ≈ 0.0044; Heun's own error at 80 steps ≈ 0.001


def test_prior_start_exact_path(tmp_path):
    "From x0 = 0 noised to σ' the exact PF-ODE map of N(0, s²) is linear: x(0) = x(σ') s/√(s² + σ'²)."
    den = GaussDenoiser(0.5)
    class Zero:
        def sample(self, n, generator=None): return torch.zeros(n, 3, 4, 4, dtype=torch.float64)
    mk = lambda lo, hi: PriorStart(Zero(), 2.0)
    r = start_to_dir(den, tmp_path / 'p', 300, mk, 'heun', 79, 'karras', shard_size=100, start_id='zeros', sigma_max=80.,
                     sigma_min=1e-3, dtype=torch.float64, progress=False)
    x = load_samples(tmp_path / 'p')[0]
    assert r['last']['start_cost'] == {'prior_calls': 1, 'prior_samples': 100}
    assert abs(x.std().item() - 2.0 * 0.5 / math.sqrt(0.25 + 4.0)) < 0.02


def test_torchrun_split_matches_one_process(tmp_path, monkeypatch):
    den = GaussDenoiser(0.5)
    mk = lambda lo, hi: PriorStart(ImagePrior(_Flat(), (3, 4, 4), clamp=1.), 1.0)
    kw = dict(sampler='ddpm', nfe=5, schedule='karras', seed=3, shard_size=4, start_id='flat', dtype=torch.float64, progress=False)
    start_to_dir(den, tmp_path / 'one', 10, mk, batch_size=3, **kw)
    for rank in (0, 1):                                    # what torchrun's two processes see
        monkeypatch.setenv('RANK', str(rank)); monkeypatch.setenv('WORLD_SIZE', '2'); monkeypatch.setenv('LOCAL_RANK', str(rank))
        r = start_to_dir(den, tmp_path / 'two', 10, mk, batch_size=2, **kw)
        assert r['written'] == (2 if rank == 0 else 1)     # shards 0, 2 on rank 0; shard 1 on rank 1
    monkeypatch.delenv('RANK'); monkeypatch.delenv('WORLD_SIZE'); monkeypatch.delenv('LOCAL_RANK')
    assert torch.equal(load_samples(tmp_path / 'one')[0], load_samples(tmp_path / 'two')[0])


class _Flat:
    def sample(self, n, generator=None): return torch.randn(n, 48, generator=generator, dtype=torch.float64)


def test_nsr_grid_and_card_fields(tmp_path):
    from dmlearn.fid import TinyFeatures, fid_stats
    den = GaussDenoiser(0.5)
    start_to_dir(den, tmp_path / 's', 6, None, 'scire_3', 7, 'nsr', sigma_min=vp_nsr(1e-4), sigma_max=vp_nsr(1.),
                 schedule_kw={'kappa': 3.1}, dtype=torch.float64, progress=False)
    f = TinyFeatures()
    ref = fid_stats(torch.rand(8, 3, 4, 4) * 2 - 1, f)
    card = run_card(tmp_path / 's', ref, f, {'source': 'test', 'fid': 1.0, 'nfe': 7})
    assert card['nfe']['path'] == 7 and card['settings']['schedule'] == 'nsr' and card['paper']['fid'] == 1.0
    assert 'not an FID' in paper_vs_ours(card) and 'paper 1.0 FID at 7 NFE' in paper_vs_ours(card)


def test_bad_input(tmp_path):
    den = GaussDenoiser()
    with pytest.raises(ValueError, match='start_id'): start_to_dir(den, tmp_path / 'a', 4, lambda lo, hi: None)
    with pytest.raises(ValueError, match='make_start must be callable'): start_to_dir(den, tmp_path / 'a', 4, 3, start_id='x')
    with pytest.raises(ValueError, match='n must be a positive integer'): start_to_dir(den, tmp_path / 'a', 0)
    with pytest.raises(ValueError, match="unknown schedule 'cosine'"): start_to_dir(den, tmp_path / 'a', 4, schedule='cosine')
    with pytest.raises(ValueError, match='sample_shape'): start_to_dir(nn.Identity(), tmp_path / 'a', 4)
    with pytest.raises(ValueError, match='pass shape'): image_model(nn.Identity())
    with pytest.raises(ValueError, match='holds 3 samples'): RowsPrior(torch.zeros(3, 1, 2, 2)).rows(2, 5)
    with pytest.raises(ValueError, match='grid has 5 levels'):
        train_noise_classifier(NoiseLevelCNN(4, 3, 8), torch.zeros(2, 3, 8, 8), torch.linspace(1, 5, 5), steps=1)
    bad = lambda lo, hi: PriorStart(ImagePrior(_Flat(), (3, 4, 4)), 1.0)
    with pytest.raises(ValueError, match='shape'):        # the prior's images are 3×4×4, the model wants 1×4×4
        start_to_dir(GaussDenoiser(shape=(1, 4, 4)), tmp_path / 'b', 4, bad, start_id='bad', progress=False)


def test_classifier_shapes():
    net = NoiseLevelCNN(7, 1, 16)
    assert net(torch.zeros(2, 1, 16, 16)).shape == (2, 7)
    assert NoiseLevelCNN(1000)(torch.zeros(1, 3, 32, 32)).shape == (1, 1000)   # the paper's 256·2·2 features at 32×32
