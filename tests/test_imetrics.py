"Classifier-feature distances: torchmetrics parity, closed forms, sensitivity to degradation, the shipped classifiers."
import shutil
import numpy as np
import pytest
import torch
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance
from dmlearn.checkpoint import CheckpointError, sha256_file
from dmlearn.datasets import DEBIAN_FASHION, load_digits, load_fashion_mnist
from dmlearn.imetrics import (CLASSIFIER_SHA256, ClassifierFeatures, ImageMetric, FeatureCNN, accuracy, classifier_features,
                              degrade, frechet_distance, frechet_from_stats, kernel_distance, load_classifier,
                              train_classifier, CLASSIFIER_CONFIGS, _classifier_path)

HAVE_FASHION = (DEBIAN_FASHION / 't10k-images-idx3-ubyte.gz').is_file()


@pytest.fixture(scope='module')
def digits():
    return load_digits('train'), load_digits('test'), ClassifierFeatures('digits')


def test_torchmetrics_agrees_with_direct(digits):
    (xtr, _), (xte, _), fm = digits
    a, b = xte, xtr[:297]
    fid = FrechetInceptionDistance(feature=fm)
    kid = KernelInceptionDistance(feature=fm, subsets=2, subset_size=len(a))
    for m in (fid, kid):
        m.update(a, real=True); m.update(b, real=False)
    fa, fb = classifier_features(a, fm), classifier_features(b, fm)
    fd = frechet_distance(fa, fb)
    assert fd > 0.1                                                    # a non-trivial value is compared
    np.testing.assert_allclose(fid.compute().item(), fd, rtol=1e-6)
    np.testing.assert_allclose(kid.compute()[0].item(), kernel_distance(fa, fb, subsets=1, subset_size=len(a))[0], rtol=1e-8)
    # a subset estimate of our own differs from the full-set value by less than its spread allows
    kd_sub, kd_std = kernel_distance(fa, fb, subsets=100, subset_size=100, seed=1)
    assert abs(kd_sub - kernel_distance(fa, fb, 1, len(a))[0]) < 3 * kd_std / 10 + 1e-4


def test_closed_form_gaussian():
    d = 7
    mu1, mu2 = torch.zeros(d, dtype=torch.float64), torch.arange(d, dtype=torch.float64) / d
    q, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    c1 = q @ torch.diag(torch.linspace(0.5, 3, d, dtype=torch.float64)) @ q.T
    c2 = q @ torch.diag(torch.linspace(1, 2, d, dtype=torch.float64)) @ q.T     # commuting: tr sqrt = Σ sqrt(λ1 λ2)
    want = (mu1 - mu2).square().sum() + sum((a.sqrt() - b.sqrt())**2 for a, b in
                                            zip(torch.linspace(0.5, 3, d, dtype=torch.float64), torch.linspace(1, 2, d, dtype=torch.float64)))
    np.testing.assert_allclose(frechet_from_stats(mu1, c1, mu2, c2), want.item(), rtol=1e-10)
    # and on samples: two large samples of the same Gaussian are close, of shifted Gaussians ≈ ‖Δμ‖²
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(20000, 3, generator=g), torch.randn(20000, 3, generator=g)
    assert frechet_distance(x, y) < 0.01
    np.testing.assert_allclose(frechet_distance(x, y + torch.tensor([1., 0, 0])), 1., atol=0.03)


def test_self_distance_zero(digits):
    _, (xte, _), fm = digits
    f = classifier_features(xte, fm)
    assert abs(frechet_distance(f, f)) < 1e-8
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(20000, 6, generator=g), torch.randn(20000, 6, generator=g)
    kd, kd_std = kernel_distance(a, b, subsets=200, subset_size=100)
    assert abs(kd) < 4 * kd_std / 200**0.5                              # unbiased: averages to 0
    assert kernel_distance(a, b + 0.3, subsets=200, subset_size=100)[0] > 10 * kd_std / 200**0.5
    m = ImageMetric('digits')
    assert abs(m.score(xte)['fd']) < 1e-8 and m.score(xte)['n'] == len(xte)


@pytest.mark.parametrize('kind, levels', [('noise', (0., 0.1, 0.3, 0.6)), ('blur', (0., 0.5, 0.8, 1.2))])
def test_distance_grows_with_degradation(digits, kind, levels):
    (xtr, _), _, _ = digits
    m = ImageMetric('digits')
    scores = [m.score(degrade(xtr[:297], kind, s)) for s in levels]
    fd, kd = [s['fd'] for s in scores], [s['kd'] for s in scores]
    assert all(a < b for a, b in zip(fd, fd[1:])), fd
    assert all(a < b for a, b in zip(kd, kd[1:])), kd
    assert fd[-1] > 5 * fd[0]


def test_shipped_hashes_and_damage(tmp_path):
    for name, h in CLASSIFIER_SHA256.items():
        p = _classifier_path(name)
        assert sha256_file(p) == h and p.stat().st_size < 1 << 20
    bad = tmp_path / 'c.safetensors'
    shutil.copy(_classifier_path('digits'), bad)
    b = bytearray(bad.read_bytes()); b[len(b) // 2] ^= 0x10; bad.write_bytes(bytes(b))
    with pytest.raises(CheckpointError, match='c.safetensors'): load_classifier(path=bad)
    with pytest.raises(ValueError, match='no shipped classifier'): load_classifier('cifar10')


def test_digits_classifier_accuracy(digits):
    _, (xte, yte), fm = digits
    assert accuracy(fm.model, xte, yte) > 0.95


@pytest.mark.skipif(not HAVE_FASHION, reason='Debian package dataset-fashion-mnist not installed')
def test_fashion_classifier_accuracy():
    x, y = load_fashion_mnist(split='test')
    assert accuracy(load_classifier('fashion'), x[:2000], y[:2000]) > 0.85


def test_feature_module_contract(digits):
    _, (xte, _), fm = digits
    assert fm.num_features == 64
    f = fm(xte[:3])
    assert f.shape == (3, 64) and f.dtype == torch.float64
    with pytest.raises(ValueError, match=r'\[N, 1, 8, 8\]'): fm(torch.zeros(3, 3, 8, 8))
    with pytest.raises(ValueError, match='subset_size'): kernel_distance(f, f, subset_size=5)


def test_training_loss_falls():
    (x, y), (xte, yte) = load_digits('train'), load_digits('test')
    m, losses = train_classifier(x, y, CLASSIFIER_CONFIGS['digits'], epochs=100 * 128 / 1500, progress=False)
    assert losses[-10:].mean() < 0.5 * losses[:10].mean()
    assert accuracy(m, xte, yte) > 0.5
    assert isinstance(m, FeatureCNN) and not any(p.requires_grad for p in m.parameters())
