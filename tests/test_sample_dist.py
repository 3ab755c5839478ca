"`dmlearn sample --out DIR` under torchrun: 2 CPU processes (gloo) write the same files as 1 process; --batch does not change the samples."
import os, subprocess, sys, shutil
from pathlib import Path
import pytest, torch
from dmlearn.checkpoint import sha256_file
from dmlearn.models2d import EDMDenoiser
from dmlearn.unet import UNet, save_unet
from dmlearn.images import load_samples

ENV = {**os.environ, 'OMP_NUM_THREADS': '1'}

@pytest.fixture(scope='module')
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp('model')
    with torch.random.fork_rng():
        torch.manual_seed(0)
        m = EDMDenoiser(UNet(1, 8, (1, 2), image_size=8), 0.75)
        for p in m.parameters(): p.data.normal_(0, 0.05)
    return save_unet(m, d / 'tiny.safetensors')

def _args(ckpt, out, batch):
    return ['sample', '--model', str(ckpt), '--sampler', 'euler_maruyama', '--nfe', '4', '-n', '10',
            '--shard-size', '3', '--batch', str(batch), '--out', str(out), '--no-progress']

def _run(cmd):
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    return r

def _files(d): return {p.name: sha256_file(p) for p in sorted(Path(d).iterdir())}

def test_torchrun_two_processes_match_one(ckpt, tmp_path):
    torchrun = shutil.which('torchrun') or str(Path(sys.executable).parent / 'torchrun')
    _run([sys.executable, '-m', 'dmlearn.cli', *_args(ckpt, tmp_path / 'one', 2)])
    r = _run([torchrun, '--standalone', '--nproc_per_node=2', '-m', 'dmlearn.cli', *_args(ckpt, tmp_path / 'two', 2)])
    assert 'rank 0 of 2' in r.stdout
    one, two = _files(tmp_path / 'one'), _files(tmp_path / 'two')
    assert sorted(one) == ['run.json'] + [f'shard_{k:06d}.safetensors' for k in range(4)]
    assert one == two                                   # byte-identical shards and settings
    _run([sys.executable, '-m', 'dmlearn.cli', *_args(ckpt, tmp_path / 'b5', 5)])
    x1, _ = load_samples(tmp_path / 'one'); x5, _ = load_samples(tmp_path / 'b5')
    assert x1.shape == (10, 1, 8, 8)
    torch.testing.assert_close(x1, x5, rtol=0, atol=1e-5)   # another batch size: the same samples (to conv rounding)

def test_restart_skips_finished_shards(ckpt, tmp_path):
    _run([sys.executable, '-m', 'dmlearn.cli', *_args(ckpt, tmp_path / 'r', 2)])
    before = _files(tmp_path / 'r')
    (tmp_path / 'r' / 'shard_000002.safetensors').write_bytes(b'broken')
    r = _run([sys.executable, '-m', 'dmlearn.cli', *_args(ckpt, tmp_path / 'r', 2)])
    assert 'wrote 1, skipped 3' in r.stdout
    assert _files(tmp_path / 'r') == before
