"Image models end to end: every shipped UNet checkpoint loads, verifies and samples images the classifier recognises; `dmlearn train` / `dmlearn sample`."
import json, os, shutil, stat
from pathlib import Path
import pytest, torch
from dmlearn.cli import main
from dmlearn.checkpoint import CheckpointError, sha256_file
from dmlearn.unet import PRETRAINED, pretrained_path, pretrained_unet, load_unet
from dmlearn.images import sample_images

def _cli(*args):
    try: return main(list(args))
    except SystemExit as e: return e.code

def test_every_checkpoint_is_shipped_and_pinned():
    assert set(PRETRAINED) == {'digits', 'fashion'}
    for name, (fn, sha) in PRETRAINED.items():
        p = pretrained_path(name)
        assert p.is_file() and p.stat().st_size < 5e6, (p, p.stat().st_size if p.exists() else None)
        assert sha256_file(p) == sha

@pytest.mark.parametrize('name', sorted(PRETRAINED))
def test_shipped_model_samples_recognisable_images(name):
    from dmlearn.imetrics import load_classifier
    torch.manual_seed(0); before = torch.rand(1)
    torch.manual_seed(0); m = pretrained_unet(name); after = torch.rand(1)
    assert torch.equal(before, after)                                    # loading leaves the global RNG alone
    r = sample_images(m, 64, 'dpmpp_2m', 10, batch_size=64)
    assert r.x.shape == (64, *m.sample_shape) and r.nfe == 10
    clf = load_classifier(name)
    with torch.no_grad():
        p = clf(r.x.clamp(-1, 1)).softmax(-1)
        pn = clf(torch.randn(64, *m.sample_shape).clamp(-1, 1)).softmax(-1)
    share = lambda q: q.argmax(-1).bincount(minlength=q.shape[-1]).max().item() / len(q)
    classes = p.argmax(-1).unique().numel()
    # the training sets are class-balanced: samples must spread over the classes, where noise piles into one or two
    assert classes >= 8 and share(p) <= 0.3, (classes, share(p))
    assert share(pn) > 0.3, share(pn)                                    # the control: the check can fail

def test_damaged_shipped_checkpoint_is_refused(tmp_path):
    src = pretrained_path('digits'); dst = tmp_path / src.name
    b = bytearray(src.read_bytes()); b[len(b) // 2] ^= 0x01; dst.write_bytes(b)
    with pytest.raises(CheckpointError, match='damaged|does not match'): load_unet(dst, PRETRAINED['digits'][1])
    with pytest.raises(CheckpointError, match='weights are damaged|not a readable'): load_unet(dst)

def test_sample_cli_writes_png_and_tensors(tmp_path):
    out = tmp_path / 'grid.png'
    assert _cli('sample', '--model', 'digits', '--sampler', 'heun', '--nfe', '9', '-n', '12', '--out', str(out), '--no-progress') == 0
    from PIL import Image
    from safetensors import safe_open
    assert Image.open(out).size[0] > 8 * 4
    with safe_open(str(out.with_suffix('.safetensors')), 'pt') as f:
        assert f.get_tensor('samples').shape == (12, 1, 8, 8)
        meta = f.metadata()
    assert meta['model_sha256'] == PRETRAINED['digits'][1] and meta['nfe_path'] == '9'
    mode = stat.S_IMODE(out.stat().st_mode); um = os.umask(0); os.umask(um)
    assert mode == 0o666 & ~um                                            # not the temp file's 0600
    assert _cli('sample', '--model', 'digits', '--out', str(out), '--no-progress') == 2      # refuses to overwrite
    assert _cli('sample', '--model', 'digits', '--out', str(out), '--force', '-n', '4', '--no-progress') == 0

@pytest.mark.parametrize('args,msg', [
    (['--model', 'nope'], 'unknown model'),
    (['--model', 'digits', '--sampler', 'nope'], 'unknown sampler'),
    (['--model', 'digits', '--sampler', 'heun', '--nfe', '2'], 'needs at least'),
    (['--model', 'digits', '-n', '0'], 'positive integer'),
    (['--model', 'digits', '--sigma-max', '-1'], 'sigma-max'),
    (['--model', 'digits', '--sigma-min', '5', '--sigma-max', '1'], 'sigma-min'),
])
def test_sample_cli_bad_input(tmp_path, capsys, args, msg):
    assert _cli('sample', *args, '--out', str(tmp_path / 'x.png'), '--no-progress') == 2
    assert msg in capsys.readouterr().err
    assert not any(tmp_path.iterdir())                                   # nothing written

def test_train_cli_resumes(tmp_path):
    run = tmp_path / 'run'
    common = ['train', '--data', 'digits', '--out', str(run), '--ch', '8', '--ch-mult', '1,2', '--batch', '16',
              '--ckpt-every', '5', '--no-progress']
    assert _cli(*common, '--steps', '10') == 0
    assert _cli(*common, '--steps', '15') == 0                             # resumes at 10
    m = load_unet(run / 'model.safetensors')
    assert m.info['step'] == 15
    assert _cli(*common[:-1], '--lr', '0.01', '--steps', '20', '--no-progress') == 2   # other settings: refused
    assert _cli('train', '--data', 'nope', '--out', str(tmp_path / 'r2'), '--no-progress') == 2

def test_sample_cli_on_a_diffusers_checkpoint(tmp_path, monkeypatch):
    "A tiny random model of google/ddpm-cifar10-32's class and config, in the hub's flat layout, sampled by folder and by hub id."
    import diffusers
    from dmlearn.hub import tiny_config, DDPM_CIFAR10_UNET
    with torch.random.fork_rng():
        torch.manual_seed(0); unet = diffusers.UNet2DModel(**tiny_config(DDPM_CIFAR10_UNET))
    root = tmp_path / 'ddpm'; unet.save_pretrained(root); diffusers.DDPMScheduler().save_pretrained(root)
    (root / 'model_index.json').write_text(json.dumps({'_class_name': 'DDPMPipeline'}))
    out = tmp_path / 'g.png'
    assert _cli('sample', '--model', str(root), '--sampler', 'euler', '--nfe', '3', '-n', '2', '--out', str(out), '--no-progress') == 0
    from safetensors import safe_open
    with safe_open(str(out.with_suffix('.safetensors')), 'pt') as f:
        assert f.get_tensor('samples').shape == (2, 3, 8, 8)
        settings = json.loads(f.metadata()['settings'])
    assert settings['sigma_max'] == 80. and settings['sigma_min'] > 0.002     # the model's own sigma_min (DDPM table)
    monkeypatch.setenv('HF_HUB_OFFLINE', '1'); monkeypatch.setenv('HF_HUB_CACHE', str(tmp_path / 'empty-cache'))
    assert _cli('sample', '--model', 'google/ddpm-cifar10-32', '--out', str(tmp_path / 'h.png'), '--no-progress') == 2


def _run(capsys, *args):
    try: rc = main(['sample', *args])
    except SystemExit as e: rc = e.code
    return rc, capsys.readouterr()

def test_sample_cli_start_composes_with_any_path(tmp_path, capsys):
    "--start gaussian is the default run; --start dlg counts the chain's calls per output beside the path's."
    base = ['--model', 'digits', '--sampler', 'heun', '--nfe', '9', '-n', '8', '--no-progress']
    rc, _ = _run(capsys, *base, '--out', str(tmp_path / 'a.png')); assert rc == 0
    rc, _ = _run(capsys, *base, '--start', 'gaussian', '--out', str(tmp_path / 'b.png')); assert rc == 0
    from safetensors.torch import load_file
    assert torch.equal(load_file(tmp_path / 'a.safetensors')['samples'], load_file(tmp_path / 'b.safetensors')['samples'])
    rc, out = _run(capsys, *base, '--start', 'dlg', '--out', str(tmp_path / 'c.png')); assert rc == 0
    assert 'NFE 9 path + ' in out.out and 'start = ' in out.out and 'classifier calls' in out.out
    x = load_file(tmp_path / 'c.safetensors')['samples']
    assert x.shape == (8, 1, 8, 8) and torch.isfinite(x).all()
    rc, _ = _run(capsys, *base, '--start', 'prior', '--out', str(tmp_path / 'run'), '--shard-size', '4'); assert rc == 0
    assert json.loads((tmp_path / 'run' / 'run.json').read_text())['start'] == 'prior(data=digits)'

@pytest.mark.skipif(not Path('/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz').is_file(), reason='dataset-fashion-mnist not installed')
def test_sample_cli_fashion_starts(tmp_path, capsys):
    "The issue's command line: every start on the shipped Fashion-MNIST model (its own classifier and VAE)."
    from safetensors.torch import load_file
    base = ['--model', 'fashion', '--sampler', 'heun', '--nfe', '10', '-n', '4', '--no-progress']
    for st in ('dlg', 'prior', 'aux'):
        rc, out = _run(capsys, *base, '--start', st, '--out', str(tmp_path / f'{st}.png')); assert rc == 0, out.err
        assert f'--start {st} + heun: NFE 9' in out.out and (st != 'dlg' or 'classifier calls' in out.out)
        x = load_file(tmp_path / f'{st}.safetensors')['samples']
        assert x.shape == (4, 1, 28, 28) and torch.isfinite(x).all()

@pytest.mark.parametrize('args,msg', [(['--start', 'nope'], "unknown start 'nope'"),
                                      (['--model', 'X', '--start', 'dlg'], 'needs --data')])
def test_sample_cli_start_errors(tmp_path, capsys, args, msg):
    a = ['--model', 'digits', '--nfe', '9', '-n', '4', '--out', str(tmp_path / 'g.png'), *args]
    if 'X' in a:
        from dmlearn.unet import save_unet
        save_unet(pretrained_unet('digits'), tmp_path / 'm.safetensors')        # a model file: no dataset to fit a start to
        a[a.index('X')] = str(tmp_path / 'm.safetensors')                       # (the later --model wins)
    rc, out = _run(capsys, *a)
    assert rc == 2 and msg in out.err
