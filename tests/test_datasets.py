"Image data loaders on tiny files written in the real formats (always run), and on the Debian Fashion-MNIST files (skipped if absent)."
import gzip, pickle
from pathlib import Path
import numpy as np
import pytest
import torch
from PIL import Image
from dmlearn.datasets import (DataNotFoundError, DataFormatError, DATASETS, DEBIAN_FASHION, load_digits,
                              load_fashion_mnist, load_cifar10, load_image_folder, get_dataset, read_idx, write_idx,
                              image_grid, save_image_grid, fashion_mnist_dirs)


def _pixels(x):
    "[-1,1] floats back to uint8 pixels (the inverse of the loaders' map)."
    return ((x + 1) * 127.5).round().to(torch.uint8).numpy()


def _idx_bytes(a, code=8):
    return bytes([0, 0, code, a.ndim]) + np.array(a.shape, '>u4').tobytes() + a.tobytes()


def _fashion_dir(d, n=6, seed=0, gz=True):
    rng = np.random.default_rng(seed)
    imgs, labels = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)
    sfx = '.gz' if gz else ''
    for pre, a, b in [('train', imgs, labels), ('t10k', imgs[:2], labels[:2])]:
        for kind, arr in [('images-idx3', a), ('labels-idx1', b)]:
            raw = _idx_bytes(arr)          # written by hand here, not by write_idx, so the reader is checked independently
            (d / f'{pre}-{kind}-ubyte{sfx}').write_bytes(gzip.compress(raw) if gz else raw)
    return imgs, labels


@pytest.mark.parametrize('gz', [True, False])
def test_fashion_roundtrip(tmp_path, gz):
    imgs, labels = _fashion_dir(tmp_path, gz=gz)
    x, y = load_fashion_mnist(tmp_path, 'train')
    assert x.shape == (6, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.min() >= -1 and x.max() <= 1
    np.testing.assert_array_equal(_pixels(x)[:, 0], imgs)
    np.testing.assert_array_equal(y.numpy(), labels)
    x0 = torch.from_numpy(imgs[:1].astype(np.float32)) / 127.5 - 1            # the documented map, p/255*2-1
    torch.testing.assert_close(x[:1, 0], x0)
    assert load_fashion_mnist(tmp_path, 'test')[0].shape == (2, 1, 28, 28)


def test_fashion_torchvision_layout_and_env(tmp_path, monkeypatch):
    raw = tmp_path / 'FashionMNIST' / 'raw'; raw.mkdir(parents=True)
    imgs, _ = _fashion_dir(raw, gz=False)
    np.testing.assert_array_equal(_pixels(load_fashion_mnist(tmp_path)[0])[:, 0], imgs)
    monkeypatch.setenv('DMLEARN_FASHION_MNIST', str(raw))
    assert fashion_mnist_dirs()[0] == raw                                         # the env var is searched first
    np.testing.assert_array_equal(_pixels(load_fashion_mnist()[0])[:, 0], imgs)


def test_fashion_missing(tmp_path):
    with pytest.raises(DataNotFoundError, match='apt-get install dataset-fashion-mnist') as e:
        load_fashion_mnist(tmp_path / 'nope')
    assert str(tmp_path / 'nope') in str(e.value) and 'download=True' in str(e.value)
    assert isinstance(e.value, FileNotFoundError)
    _fashion_dir(tmp_path)
    (tmp_path / 'train-labels-idx1-ubyte.gz').unlink()                            # images without labels
    with pytest.raises(DataNotFoundError, match='found only'):
        load_fashion_mnist(tmp_path)


def test_idx_errors(tmp_path):
    a = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    good = _idx_bytes(a)
    cases = {'magic.idx': (b'\x12\x34\x08\x03' + good[4:], 'magic number 12340803'),
             'type.idx': (b'\x00\x00\x07\x03' + good[4:], 'magic number 00000703'),
             'short.idx': (good[:-1], 'truncated'),
             'long.idx': (good + b'\x00', 'longer than its header'),
             'header.idx': (good[:6], 'truncated inside its header'),
             'empty.idx': (b'', 'empty file'),
             'bad.gz': (gzip.compress(good)[:50], 'cannot be decompressed')}
    for name, (data, msg) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DataFormatError, match=msg) as e: read_idx(tmp_path / name)
        assert name in str(e.value)
    (tmp_path / 'lab.idx').write_bytes(_idx_bytes(np.arange(3, dtype=np.uint8)))
    with pytest.raises(DataFormatError, match='expected 3 dimensions'): read_idx(tmp_path / 'lab.idx', ndim=3)
    np.testing.assert_array_equal(read_idx(tmp_path / 'lab.idx', ndim=1), [0, 1, 2])
    w = write_idx(np.arange(12, dtype=np.int32).reshape(3, 4), tmp_path / 'w.gz')
    np.testing.assert_array_equal(read_idx(w), np.arange(12).reshape(3, 4))


def test_fashion_count_mismatch_and_swapped_files(tmp_path):
    _fashion_dir(tmp_path, gz=False)
    (tmp_path / 'train-labels-idx1-ubyte').write_bytes(_idx_bytes(np.zeros(5, np.uint8)))
    with pytest.raises(DataFormatError, match='6 images but .* 5 labels'): load_fashion_mnist(tmp_path)
    (tmp_path / 'train-labels-idx1-ubyte').write_bytes(_idx_bytes(np.zeros((6, 28, 28), np.uint8)))
    with pytest.raises(DataFormatError, match='expected 1 dimensions'): load_fashion_mnist(tmp_path)


def _cifar(root, n=3, seed=0, str_keys=False):
    f = root / 'cifar-10-batches-py'; f.mkdir(parents=True, exist_ok=True)
    rng, out = np.random.default_rng(seed), {}
    for b in [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']:
        data, labels = rng.integers(0, 256, (n, 3072), dtype=np.uint8), [int(v) for v in rng.integers(0, 10, n)]
        d = {'data': data, 'labels': labels} if str_keys else {b'data': data, b'labels': labels, b'batch_label': b.encode()}
        with open(f / b, 'wb') as fh: pickle.dump(d, fh, protocol=2)
        out[b] = (data, labels)
    return out


@pytest.mark.parametrize('str_keys', [False, True])
def test_cifar_roundtrip(tmp_path, str_keys):
    ref = _cifar(tmp_path, str_keys=str_keys)
    x, y = load_cifar10(tmp_path, 'train')
    assert x.shape == (15, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    want = np.concatenate([ref[f'data_batch_{i}'][0] for i in range(1, 6)]).reshape(-1, 3, 32, 32)
    np.testing.assert_array_equal(_pixels(x), want)
    # channel planes: the first 1024 bytes of a row are the red plane, row-major
    np.testing.assert_array_equal(_pixels(x[0, 0]).ravel(), ref['data_batch_1'][0][0, :1024])
    np.testing.assert_array_equal(y.numpy(), sum((ref[f'data_batch_{i}'][1] for i in range(1, 6)), []))
    xt, yt = load_cifar10(tmp_path, 'test')
    np.testing.assert_array_equal(_pixels(xt), ref['test_batch'][0].reshape(-1, 3, 32, 32))
    xg, _ = get_dataset('cifar10', tmp_path, 'test')
    torch.testing.assert_close(xg, xt)


def test_cifar_errors(tmp_path):
    with pytest.raises(DataNotFoundError, match='download=True') as e: load_cifar10(tmp_path)
    assert 'cifar-10-batches-py' in str(e.value)
    with pytest.raises(DataNotFoundError, match='needs root'): load_cifar10(None)
    _cifar(tmp_path)
    f = tmp_path / 'cifar-10-batches-py'
    (f / 'data_batch_4').unlink()
    with pytest.raises(DataNotFoundError, match='data_batch_4'): load_cifar10(tmp_path)
    assert load_cifar10(tmp_path, 'test')[0].shape == (3, 3, 32, 32)            # the other split still loads
    (f / 'data_batch_4').write_bytes(b'not a pickle')
    with pytest.raises(DataFormatError, match='data_batch_4 is not a readable'): load_cifar10(tmp_path)
    with open(f / 'data_batch_4', 'wb') as fh: pickle.dump({b'data': np.zeros((2, 100), np.uint8), b'labels': [0, 1]}, fh)
    with pytest.raises(DataFormatError, match=r'expected uint8 \[n, 3072\]'): load_cifar10(tmp_path)
    with open(f / 'data_batch_4', 'wb') as fh: pickle.dump({b'data': np.zeros((2, 3072), np.uint8), b'labels': [0]}, fh)
    with pytest.raises(DataFormatError, match='2 images but 1 labels'): load_cifar10(tmp_path)
    with open(f / 'data_batch_4', 'wb') as fh: pickle.dump({b'pixels': 1}, fh)
    with pytest.raises(DataFormatError, match="expected 'data' and 'labels'"): load_cifar10(tmp_path)
    with open(f / 'data_batch_4', 'wb') as fh: pickle.dump(Path('x'), fh)    # any class but numpy's is refused
    with pytest.raises(DataFormatError, match='refusing to load'): load_cifar10(tmp_path)


def test_image_folder(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / 'a' / 'b').mkdir(parents=True)
    exact = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(exact).save(tmp_path / '0.png')                              # already the target size
    tall = rng.integers(0, 256, (24, 16, 3), dtype=np.uint8)
    Image.fromarray(tall).save(tmp_path / 'a' / '1.PNG')                         # H > W, shorter side already 16
    Image.fromarray(rng.integers(0, 256, (40, 64, 3), dtype=np.uint8)).save(tmp_path / 'a' / 'b' / '2.jpg', quality=95)
    Image.fromarray(rng.integers(0, 256, (33, 33), dtype=np.uint8)).save(tmp_path / 'a' / '3.jpeg')   # greyscale
    Image.fromarray(np.full((8, 8, 4), 200, np.uint8)).save(tmp_path / 'a' / '4.png')                # RGBA, smaller
    (tmp_path / 'readme.md').write_text('skip me')
    x, y = load_image_folder(tmp_path, 16)
    assert y is None and x.shape == (5, 3, 16, 16) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    np.testing.assert_array_equal(_pixels(x[0]).transpose(1, 2, 0), exact)
    np.testing.assert_array_equal(_pixels(x[1]).transpose(1, 2, 0), tall[4:20])                      # centre crop
    # sorted path order: 0.png, a/1.PNG, a/3.jpeg, a/4.png, a/b/2.jpg
    np.testing.assert_array_equal(_pixels(x[3]), np.full((3, 16, 16), 200, np.uint8))               # upscaled flat
    assert (x[2, 0] == x[2, 1]).all() and (x[2, 1] == x[2, 2]).all()                                 # grey → RGB
    g, _ = load_image_folder(tmp_path, 16, channels=1, limit=2)
    assert g.shape == (2, 1, 16, 16)
    xs, _ = get_dataset('folder', tmp_path, size=8, limit=3)
    assert xs.shape == (3, 3, 8, 8)


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataNotFoundError, match='does not exist'): load_image_folder(tmp_path / 'no', 8)
    with pytest.raises(DataNotFoundError, match='holds no'): load_image_folder(tmp_path, 8)
    (tmp_path / 'x.jpg').write_bytes(b'\xff\xd8\xff\xe0 not really a jpeg')
    with pytest.raises(DataFormatError, match='x.jpg is not a readable image'): load_image_folder(tmp_path, 8)
    with pytest.raises(ValueError, match='channels must be 1 or 3'): load_image_folder(tmp_path, 8, channels=2)


def test_digits():
    x, y = load_digits('all')
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    from sklearn.datasets import load_digits as sk
    d = sk()
    torch.testing.assert_close(x[:, 0], torch.from_numpy(d.images).float() / 8 - 1)
    xtr, ytr = load_digits('train'); xte, yte = load_digits('test')
    assert (len(xtr), len(xte)) == (1500, 297)
    assert sorted(map(tuple, torch.cat([xtr, xte]).flatten(1).tolist())) == sorted(map(tuple, x.flatten(1).tolist()))
    assert set(ytr.tolist()) == set(yte.tolist()) == set(range(10))
    with pytest.raises(ValueError, match='split'): load_digits('validation')


def test_get_dataset_names():
    assert DATASETS == ('digits', 'fashion', 'cifar10', 'folder')
    torch.testing.assert_close(get_dataset('digits', split='test')[0], load_digits('test')[0])
    with pytest.raises(ValueError, match='unknown data set'): get_dataset('mnist')


def test_grid_and_png(tmp_path):
    x = torch.linspace(-1, 1, 5 * 3 * 4 * 6).reshape(5, 3, 4, 6)
    g = image_grid(x, nrow=2, padding=1)
    assert g.shape == (3, 3 * 5 + 1, 2 * 7 + 1)
    torch.testing.assert_close(g[:, 1 + 2 * 5:1 + 2 * 5 + 4, 1:7], (x[4] + 1) / 2)   # image 4: row 2, column 0
    assert (g[:, -5:, 8:] == 1).all()                                                   # the empty slot is padding
    p = save_image_grid(x, tmp_path / 'g.png', nrow=2)
    back = torch.from_numpy(np.array(Image.open(p))).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(back, g, atol=0.5 / 255 + 1e-6, rtol=0)
    with pytest.raises(ValueError, match='C = 1 or 3'): image_grid(torch.zeros(1, 4, 2, 2))


@pytest.mark.skipif(not (DEBIAN_FASHION / 't10k-images-idx3-ubyte.gz').is_file(),
                    reason='Debian package dataset-fashion-mnist not installed')
def test_debian_fashion_mnist():
    x, y = load_fashion_mnist(DEBIAN_FASHION, 'test')
    assert x.shape == (10000, 1, 28, 28) and torch.bincount(y).tolist() == [1000] * 10
    assert x.min() == -1 and x.max() == 1
    raw = gzip.decompress((DEBIAN_FASHION / 't10k-images-idx3-ubyte.gz').read_bytes())
    assert raw[:4] == b'\x00\x00\x08\x03'
    np.testing.assert_array_equal(_pixels(x).ravel(), np.frombuffer(raw, np.uint8, offset=16))   # the file's bytes
