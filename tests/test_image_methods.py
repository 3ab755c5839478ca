"Tests of dmlearn.image_methods: the shipped noise-level classifier and VAE, the Gaussian image model, image_start."
import math
import shutil
import pytest
import torch
from dmlearn.checkpoint import CheckpointError, sha256_file
from dmlearn.datasets import get_dataset
from dmlearn.samplers import GaussianStart, generate
from dmlearn.starts import PriorStart
from dmlearn.difftime import AuxStart
from dmlearn.dmcmc import DLGStart
from dmlearn.unet import pretrained_unet
from dmlearn import image_methods as IM


@pytest.fixture(scope='module')
def model(): return pretrained_unet('digits')


def test_shipped_files_pinned():
    for ds, d in IM.SHIPPED.items():
        for what, (f, sha) in d.items():
            p = IM._data_path(f)
            assert p.is_file(), p
            assert sha256_file(p) == sha, (ds, what)
            assert p.stat().st_size < 2_500_000        # small checkpoints: at most the size of a shipped UNet


def test_classifier_reads_noise_levels():
    post = IM.pretrained_noise_posterior('digits')
    x, _ = get_dataset('digits', split='test')
    j, jh, p = IM.level_errors(post.net, x, post.sigmas, seed=5)
    err = (jh - j).abs().double().mean().item()
    const = (j - len(post.sigmas) // 2).abs().double().mean().item()
    assert err < 2.5 and err < 0.25 * const, (err, const)
    lp = post.log_probs(x[:4] + 0.5 * torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0)))
    assert lp.shape == (4, len(post.sigmas))
    # noisier inputs must read as noisier (monotone on average)
    g = torch.Generator().manual_seed(1)
    lo = post.sigmas[post.update(x[:64] + 0.1 * torch.randn(64, 1, 8, 8, generator=g))].median()
    hi = post.sigmas[post.update(x[:64] + 3.0 * torch.randn(64, 1, 8, 8, generator=g))].median()
    assert hi > 5 * lo


def test_damaged_checkpoint_is_refused(tmp_path):
    p, sha = IM._shipped('digits', 'noise_classifier')
    q = tmp_path / 'c.safetensors'; shutil.copy(p, q)
    b = bytearray(q.read_bytes()); b[-10] ^= 0xFF; q.write_bytes(bytes(b))
    with pytest.raises(CheckpointError, match='sha256'): IM.load_level_classifier(q, sha)
    with pytest.raises(CheckpointError): IM.load_level_classifier(q)         # the tensors' own hash catches it too
    with pytest.raises(CheckpointError, match='not a SmallNoiseCNN'): IM.load_level_classifier(IM._shipped('digits', 'vae')[0])


def test_classifier_and_vae_roundtrip(tmp_path):
    net = IM.SmallNoiseCNN(7, 1, 8)
    sig = IM.image_levels(7, 0.1, 10.)
    IM.save_level_classifier(net, sig, tmp_path / 'n.safetensors', {'a': 1})
    net2, sig2 = IM.load_level_classifier(tmp_path / 'n.safetensors')
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(net(x), net2(x)); torch.testing.assert_close(sig2, sig)
    vae = IM.pretrained_vae('digits')
    IM.save_vae(vae, tmp_path / 'v.safetensors', vae.info)
    v2 = IM.load_vae(tmp_path / 'v.safetensors')
    g = lambda: torch.Generator().manual_seed(0)
    torch.testing.assert_close(vae.sample(5, g()), v2.sample(5, g()))
    assert vae.sample(50, g()).abs().max() <= 1


def test_gaussian_images_exact():
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(500, 4, generator=g) @ torch.randn(4, 4, generator=g)).reshape(500, 1, 2, 2)
    gi = IM.GaussianImages.fit(x)
    f = x.flatten(1).double()
    mvn = torch.distributions.MultivariateNormal(f.mean(0), torch.cov(f.T, correction=0) + 0.49 * torch.eye(4, dtype=torch.float64))
    torch.testing.assert_close(gi.noised(0.7).log_prob(x[:10]), mvn.log_prob(f[:10]))
    assert gi.sigma_T is None and gi.noised(0.7).sigma_T == 0.7
    with pytest.raises(ValueError, match='images must be'): IM.GaussianImages.fit(torch.zeros(5, 4))


def test_image_start_names(model):
    with pytest.raises(ValueError, match="unknown start 'vae'"): IM.image_start('vae', model, 'digits')
    with pytest.raises(ValueError, match='unknown settings for the dlg start: sigma_T'): IM.image_start('dlg', model, 'digits', sigma_T=1.)
    with pytest.raises(ValueError, match='takes no settings'): IM.image_start('gaussian', model, 'digits', sigma_T=1.)
    with pytest.raises(ValueError, match='no shipped noise_classifier'): IM.image_start('dlg', model, 'cifar10')
    st = IM.image_start('gaussian', model, 'digits'); assert isinstance(st, GaussianStart) and st.sigma_max == 80.
    assert IM.image_start('gaussian', model, 'digits', sigma_max=20.).sigma_max == 20.
    st = IM.image_start('prior', model, 'digits', sigma_start=2.); assert isinstance(st, PriorStart) and st.sigma_start == 2.
    st = IM.image_start('prior', model, 'digits', prior='gaussian'); assert isinstance(st.prior.gen, IM.GaussianImages)
    st = IM.image_start('aux', model, 'digits', sigma_T=3.); assert isinstance(st, AuxStart) and st.sigma_T == 3.


def test_dlg_start_counts_every_call(model):
    st = IM.image_start('dlg', model, 'digits', n_chains=4, burn_in=3, init_nfe=5)
    assert isinstance(st, DLGStart)
    s = generate(model, 8, 'euler', 3, start=st, shape=model.sample_shape, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    c = s.start_cost
    assert c['nfe'] == st.n_skip                                   # K chain steps per output
    assert c['chain_nfe_total'] == c['init_nfe'] + c['burn_in_nfe'] + c['main_nfe']
    assert c['init_nfe'] == 5 and c['burn_in_nfe'] == 3
    assert math.isclose(c['nfe_with_init'], (4 * (5 + 3) + 8 * st.n_skip) / 8)   # rows: 4 chains × (init + burn-in) + K per output
    assert s.nfe == 3 and torch.isfinite(s.x).all()
    assert (torch.as_tensor(s.sigmas[0]) < 80).all()               # the path starts at each output's own σ̂


def test_method_row_counts(model):
    r = IM.method_row(model, 16, GaussianStart(80.), 'heun', 7, 'x', tweedie_eps=0.002)
    assert r['path_nfe'] == 7 + 1 and r['start_nfe'] == 0 and r['nfe'] == r['nfe_full'] == 8   # heun: 4 steps = 2·4 − 1 calls, + Tweedie
    assert 'fd' in r and r['x'].shape == (16, 1, 8, 8)


def test_image_start_prior_defaults(model):
    st = IM.image_start('prior', model, 'digits')
    assert isinstance(st.prior.gen, IM.VAE2d) and st.sigma_start == IM.START_DEFAULTS['prior']['sigma_start']
    with pytest.raises(ValueError, match="prior must be 'vae' or 'gaussian'"): IM.image_start('prior', model, 'digits', prior='gan')


HAVE_FASHION = (__import__('pathlib').Path('/usr/share/datasets/fashion-mnist') / 't10k-images-idx3-ubyte.gz').is_file()

@pytest.mark.skipif(not HAVE_FASHION, reason='Debian package dataset-fashion-mnist not installed')
def test_fashion_classifier_and_vae():
    post = IM.pretrained_noise_posterior('fashion')
    x, _ = get_dataset('fashion', split='test')
    j, jh, p = IM.level_errors(post.net, x[:1000], post.sigmas, seed=5)
    err = (jh - j).abs().double().mean().item()
    const = (j - len(post.sigmas) // 2).abs().double().mean().item()
    assert err < 1.0 and err < 0.1 * const, (err, const)
    vae = IM.pretrained_vae('fashion')
    a, b = vae.sample(6, torch.Generator().manual_seed(2)), vae.sample(6, torch.Generator().manual_seed(2))
    assert a.shape == (6, 1, 28, 28) and torch.equal(a, b) and a.abs().max() <= 1
    # the VAE's samples are images of the data's kind, not noise: nearer the data's mean image than Gaussian noise is
    m = x[:2000].mean(0)
    assert (vae.sample(200, torch.Generator().manual_seed(0)) - m).pow(2).mean() < 0.5 * (torch.randn(200, 1, 28, 28).clamp(-1, 1) - m).pow(2).mean()


def test_bpd_rows_digits(model):
    x, _ = get_dataset('digits', split='test'); xt, _ = get_dataset('digits', split='train')
    gi = IM.GaussianImages.fit(xt)
    rows = IM.bpd_rows(model, x[:16], gi, 17, sigma_Ts=(0.5, 2., 80.), steps=8, batch_size=8)
    by = {(r['method'], r['sigma']): r for r in rows}
    assert len(rows) == 6
    assert by[('aux ν_φ', 0.5)]['bpd'] < by[('N(0, σ_T²I)', 0.5)]['bpd']           # the textbook start is wrong at σ_T = 0.5
    assert abs(by[('aux ν_φ', 80.)]['bpd'] - by[('N(0, σ_T²I)', 80.)]['bpd']) < 0.02
    assert by[('aux ν_φ', 80.)]['nfe'] == 2 * 10 and by[('aux ν_φ', 0.5)]['nfe'] < by[('aux ν_φ', 2.)]['nfe'] < 20   # 8 steps + 2 nodes
    assert all(0 < r['bpd'] < math.log2(17) for r in rows)
    again = IM.bpd_rows(model, x[:16], gi, 17, sigma_Ts=(0.5, 2., 80.), steps=8, batch_size=16)   # batching does not change the numbers
    assert [r['bpd'] for r in again] != [] and abs(again[-1]['bpd'] - rows[-1]['bpd']) < 0.5


def test_seed_table_is_paired(model):
    rows = IM.seed_table(model, [('a', None, 'euler', 3, None), ('b', None, 'euler', 3, None), ('c', None, 'euler', 5, None)],
                         seeds=(0, 1, 2), n=24)
    assert rows[1]['diff'] == 0 and rows[1]['diff_se'] == 0          # the same configuration at the same seeds: no difference
    assert rows[0]['fds'] == rows[1]['fds'] and len(set(rows[0]['fds'])) == 3   # seeds differ from one another
    assert rows[2]['diff'] < 0                                        # more Euler steps: closer to the data
    assert 'diff to row 1' in IM.format_seeds(rows)


def test_seed_table_refuses_too_little(model):
    with pytest.raises(ValueError, match='at least one configuration and two seeds'): IM.seed_table(model, [], seeds=(0, 1))
    with pytest.raises(ValueError, match='two seeds'): IM.seed_table(model, [('a', None, 'euler', 3, None)], seeds=(0,))
