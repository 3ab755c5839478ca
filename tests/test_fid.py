"""dmlearn.fid: the Fréchet formula against closed forms, and the statistics path with a small injected feature network.

The standard Inception weights are never loaded: every statistic here is computed by the same code path
(`iter_batches` -> uint8 -> feature network -> float64 sums) with `TinyFeatures` or an identity-like network.
"""
import json
import pickle

import numpy as np
import pytest
import torch
from torch import nn

scipy_linalg = pytest.importorskip("scipy.linalg")
from dmlearn.fid import (FeatureStats, TinyFeatures, fid, fid_card, fid_from_stats, fid_stats, inception,
                         inception_weights_path, iter_batches, load_stats, reference_stats, save_stats, to_uint8)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def rand_spd(rng, d, floor=0.05):
    a = rng.normal(size=(d, d)); return a @ a.T / d + floor * np.eye(d)


# ------------------------------------------------------------------------------------------------ the formula
def test_diagonal_closed_form():
    rng = np.random.default_rng(0)
    for d in (1, 3, 10):
        a, b, m1, m2 = rng.uniform(0.01, 5, d), rng.uniform(0.01, 5, d), rng.normal(size=d), rng.normal(size=d)
        want = ((m1 - m2)**2).sum() + ((np.sqrt(a) - np.sqrt(b))**2).sum()
        assert fid_from_stats(m1, np.diag(a), m2, np.diag(b)) == pytest.approx(want, rel=1e-10, abs=1e-12)


def test_general_gaussians_against_sqrtm_and_2x2_identity():
    rng = np.random.default_rng(1)
    for d in (2, 5, 16):
        s1, s2, m1, m2 = rand_spd(rng, d), rand_spd(rng, d), rng.normal(size=d), rng.normal(size=d)
        want = ((m1 - m2)**2).sum() + np.trace(s1 + s2) - 2 * np.trace(scipy_linalg.sqrtm(s1 @ s2)).real
        assert fid_from_stats(m1, s1, m2, s2) == pytest.approx(want, rel=1e-8)
        assert fid_from_stats(m1, s1, m2, s2) == pytest.approx(fid_from_stats(m2, s2, m1, s1), rel=1e-9)   # symmetric
    s1, s2 = rand_spd(rng, 2), rand_spd(rng, 2); M = s1 @ s2           # tr √M = √(tr M + 2√det M) for 2×2
    want = np.trace(s1 + s2) - 2 * np.sqrt(np.trace(M) + 2 * np.sqrt(np.linalg.det(M)))
    assert fid_from_stats([0, 0], s1, [0, 0], s2) == pytest.approx(want, rel=1e-10)


def test_same_gaussian_is_zero_and_singular_covariances():
    rng = np.random.default_rng(2)
    s = rand_spd(rng, 8)
    assert abs(fid_from_stats(np.ones(8), s, np.ones(8), s)) < 1e-9
    v = rng.normal(size=(8, 3)); low = v @ v.T                           # rank 3: 5 eigenvalues at rounding level (~1e-15)
    assert abs(fid_from_stats(np.zeros(8), low, np.zeros(8), low)) < 1e-6    # whose square roots (~3e-8 each) remain
    assert fid_from_stats(np.zeros(8), low, np.zeros(8), np.zeros((8, 8))) == pytest.approx(np.trace(low), rel=1e-10)


def test_against_torchmetrics_formula():
    tm = pytest.importorskip("torchmetrics.image.fid")
    rng = np.random.default_rng(3)
    s1, s2, m1, m2 = rand_spd(rng, 12), rand_spd(rng, 12), rng.normal(size=12), rng.normal(size=12)
    theirs = tm._compute_fid(*(torch.from_numpy(a) for a in (m1, s1, m2, s2))).item()
    assert fid_from_stats(m1, s1, m2, s2) == pytest.approx(theirs, rel=1e-8)


def test_shape_errors():
    with pytest.raises(ValueError, match="sigma2 has shape"):
        fid_from_stats(np.zeros(3), np.eye(3), np.zeros(3), np.eye(2))


# ------------------------------------------------------------------------------------------------ statistics
def test_feature_stats_estimates_gaussians():
    "Samples of two known Gaussians through FeatureStats: the FD of the estimates approaches the closed form."
    rng = np.random.default_rng(4)
    m1, m2 = np.array([0., 1., -1.]), np.array([0.5, 1., 0.])
    s1, s2 = rand_spd(rng, 3), rand_spd(rng, 3)
    want = fid_from_stats(m1, s1, m2, s2)
    est = []
    for m, s in ((m1, s1), (m2, s2)):
        f = rng.multivariate_normal(m, s, size=40_000)
        st = FeatureStats()
        for part in np.array_split(f, 7): st.update(torch.from_numpy(part))
        assert np.allclose(st.sigma.numpy(), np.cov(f.T), atol=1e-10) and np.allclose(st.mu.numpy(), f.mean(0), atol=1e-12)
        est.append((st.mu.numpy(), st.sigma.numpy()))
    got = fid_from_stats(*est[0], *est[1])
    assert got == pytest.approx(want, rel=0.05, abs=5e-3)
    with pytest.raises(ValueError, match="at least 2 samples"):
        FeatureStats().update(torch.zeros(1, 3)).sigma


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return torch.rand(120, 3, 8, 8, generator=g) * 2 - 1, (torch.rand(90, 3, 8, 8, generator=g) * 2 - 1) * 0.7 + 0.2


def test_fid_stats_matches_torchmetrics(images):
    tm = pytest.importorskip("torchmetrics.image.fid")
    real, fake = images
    net = TinyFeatures()
    ours = fid(fid_stats(real, net), fid_stats(fake, net, batch_size=17))
    m = tm.FrechetInceptionDistance(feature=net)
    m.update(to_uint8(real), real=True); m.update(to_uint8(fake), real=False)
    assert ours > 0.01 and ours == pytest.approx(m.compute().item(), rel=1e-5)


def test_sources_and_batch_size_invariance(images):
    real = images[0]
    net = TinyFeatures()
    ref = fid_stats(real, net, batch_size=200)
    ds = torch.utils.data.TensorDataset(real, torch.zeros(len(real)))
    for src in (list(real.split(11)), ds, torch.utils.data.DataLoader(ds, batch_size=13), real.numpy(), to_uint8(real)):
        st = fid_stats(src, net, batch_size=23)
        assert st["n"] == 120 and np.allclose(st["mu"], ref["mu"], atol=1e-12) and np.allclose(st["sigma"], ref["sigma"], atol=1e-12)
    assert fid_stats(real, net, limit=40)["n"] == 40 and fid_stats(list(real.split(11)), net, limit=40)["n"] == 40
    grey = real[:, :1]
    assert [tuple(b.shape) for b in iter_batches(grey, 100)] == [(100, 3, 8, 8), (20, 3, 8, 8)]
    assert ref["feature"] == "TinyFeatures"


def test_quantised_like_a_png():
    x = torch.tensor([-1., -0.999, 0., 0.999, 1.]).reshape(1, 1, 1, 5).expand(1, 3, 1, 5)
    assert to_uint8(x)[0, 0, 0].tolist() == [0, 0, 128, 255, 255]


def test_fid_orders_distortions(images):
    real = images[0]; net = TinyFeatures()
    sr = fid_stats(real, net)
    vals = [fid(sr, fid_stats((real * (1 - a)).clamp(-1, 1), net)) for a in (0., 0.2, 0.5, 0.9)]
    assert vals[0] < 1e-9 and all(a < b for a, b in zip(vals, vals[1:]))


def test_bad_input(images):
    net = TinyFeatures()
    with pytest.raises(ValueError, match=r"\[-1, 1\]"): fid_stats(images[0] * 2, net)
    with pytest.raises(ValueError, match="C = 1 or 3"): fid_stats(torch.zeros(4, 2, 8, 8), net)
    with pytest.raises(TypeError, match="expected an image tensor"): fid_stats(["not an image"], net)
    a = fid_stats(images[0], net)
    with pytest.raises(ValueError, match="different feature networks"): fid(a, {**a, "feature": "inception-v3-compat-2048"})


def test_default_network_never_downloads_here(monkeypatch, tmp_path):
    "Without torch-fidelity: a clear install hint. With it, offline and no weights: the path that was searched."
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        with pytest.raises(ModuleNotFoundError, match=r"pip install torchmetrics\[image\]"): inception()
        return
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(FileNotFoundError, match=str(tmp_path)): inception(offline=True)
    assert inception_weights_path() == tmp_path / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth"


# ------------------------------------------------------------------------------------------------ files and data roots
def test_save_load_roundtrip(tmp_path, images):
    st = fid_stats(images[0], TinyFeatures())
    p = save_stats(tmp_path / "sub" / "s.npz", st, dataset="toy", note="x")
    back = load_stats(p)
    assert np.array_equal(back["mu"], st["mu"]) and np.array_equal(back["sigma"], st["sigma"]) and back["n"] == 120
    assert back["source"]["dataset"] == "toy" and back["source"]["feature"] == "TinyFeatures" and "torch" in back["source"]["versions"]
    assert sorted(x.name for x in (tmp_path / "sub").iterdir()) == ["s.npz"]            # no temporary left behind
    np.savez(tmp_path / "other.npz", a=np.zeros(2))
    with pytest.raises(ValueError, match="not a statistics file"): load_stats(tmp_path / "other.npz")
    with pytest.raises(FileNotFoundError, match="no FID statistics file"): load_stats(tmp_path / "none.npz")


def write_cifar(root, n_per_batch=8, seed=0):
    "A CIFAR-10 root in torchvision's layout (cifar-10-batches-py/, pickled uint8 rows)."
    d = root / "cifar-10-batches-py"; d.mkdir(parents=True)
    rng = np.random.default_rng(seed); rows = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8); rows.append(data)
        with open(d / name, "wb") as f: pickle.dump({b"data": data, b"labels": [1] * n_per_batch}, f)
    return np.concatenate(rows[:5]).reshape(-1, 3, 32, 32)


def test_reference_stats_cifar10(tmp_path):
    pytest.importorskip("dmlearn.datasets")
    train = write_cifar(tmp_path / "c")
    net = TinyFeatures()
    st = reference_stats("cifar10", tmp_path / "c", "train", out=tmp_path / "ref.npz", feature=net)
    direct = fid_stats(torch.from_numpy(train), net)                       # the uint8 rows, bypassing the loader
    assert st["n"] == 40 and np.allclose(st["mu"], direct["mu"], atol=1e-9) and np.allclose(st["sigma"], direct["sigma"], atol=1e-9)
    src = load_stats(tmp_path / "ref.npz")["source"]
    assert (src["dataset"], src["split"], src["n"], src["image_size"]) == ("cifar10", "train", 40, [3, 32, 32])
    assert src["root"] == str((tmp_path / "c").resolve())
    with pytest.raises(FileNotFoundError, match="not found"):
        reference_stats("cifar10", tmp_path / "missing", feature=net)
    with pytest.raises(ValueError, match="'cifar10' or 'folder'"):
        reference_stats("imagenet", tmp_path, feature=net)


def test_reference_stats_folder(tmp_path):
    pytest.importorskip("dmlearn.datasets")
    from PIL import Image
    (tmp_path / "f").mkdir()
    for i in range(5): Image.fromarray(np.random.default_rng(i).integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(tmp_path / "f" / f"{i}.png")
    st = reference_stats("folder", tmp_path / "f", size=12, feature=TinyFeatures())
    assert st["n"] == 5 and st["source"]["image_size"] == [3, 12, 12]
    with pytest.raises(ValueError, match="needs size"): reference_stats("folder", tmp_path / "f", feature=TinyFeatures())


def test_fid_card(images):
    net = TinyFeatures()
    g, r = fid_stats(images[1], net), fid_stats(images[0], net)
    card = fid_card(g, {**r, "source": {"dataset": "toy"}})
    assert card["fid"] == pytest.approx(fid(g, r)) and (card["n_samples"], card["n_reference"]) == (90, 120)
    assert card["reference_source"] == {"dataset": "toy"} and len(card["notes"]) == 2
    json.dumps(card)                                                      # serialisable as the JSON card
    ok = fid_card({**g, "feature": "inception-v3-compat-2048", "n": 50_000}, {**r, "feature": "inception-v3-compat-2048"})
    assert ok["notes"] == []
