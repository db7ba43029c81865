"""Offline datasets (taoism.data): loaders, validation, and the attack splits."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from taoism import data
from taoism.errors import ConfigError, TaoismError

FMNIST_INSTALLED = (data.DEFAULT_FASHION_MNIST_ROOT / "train-images-idx3-ubyte.gz").is_file()


def _write_idx(path: Path, arr: np.ndarray, gz: bool = True) -> None:
    code = {np.dtype(np.uint8): 0x08}[arr.dtype]
    blob = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(blob)
    else:
        path.write_bytes(blob)


def _fake_fmnist(root: Path, n_train: int = 40, n_test: int = 10) -> None:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    _write_idx(
        root / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
    )
    _write_idx(root / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, n_train, dtype=np.uint8))
    _write_idx(
        root / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8)
    )
    _write_idx(root / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, n_test, dtype=np.uint8))


def _check_tensors(ds: data.ImageDataset, shape: tuple[int, int, int], classes: int) -> None:
    assert ds.x_train.dtype == torch.float32 and ds.x_test.dtype == torch.float32
    assert ds.y_train.dtype == torch.int64 and ds.y_test.dtype == torch.int64
    assert tuple(ds.x_train.shape[1:]) == shape and tuple(ds.x_test.shape[1:]) == shape
    assert len(ds.x_train) == len(ds.y_train) and len(ds.x_test) == len(ds.y_test)
    assert ds.num_classes == classes
    assert int(ds.y_train.min()) >= 0 and int(ds.y_train.max()) < classes
    # normalised with the training split's own statistics
    assert abs(float(ds.x_train.mean())) < 1e-3
    assert abs(float(ds.x_train.std()) - 1.0) < 1e-2


def test_digits_offline():
    ds = data.load_dataset("digits")
    _check_tensors(ds, (1, 8, 8), 10)
    assert len(ds.y_train) + len(ds.y_test) == 1797 and len(ds.y_test) == 397
    assert ds.shape == "digits"
    again = data.digits()
    assert torch.equal(again.x_train, ds.x_train) and again.fingerprint == ds.fingerprint
    lo, hi = ds.pixel_bounds()
    assert float(ds.x_train.min()) >= float(lo.min()) - 1e-5
    assert float(ds.x_train.max()) <= float(hi.max()) + 1e-5


@pytest.mark.skipif(
    not FMNIST_INSTALLED, reason="Debian package dataset-fashion-mnist not installed"
)
def test_fashion_mnist_system_copy():
    ds = data.load_dataset("Fashion-MNIST")
    _check_tensors(ds, (1, 28, 28), 10)
    assert len(ds.y_train) == 60000 and len(ds.y_test) == 10000
    assert ds.shape == "mnist"
    assert torch.bincount(ds.y_test).tolist() == [1000] * 10


def test_fashion_mnist_custom_root(tmp_path):
    _fake_fmnist(tmp_path / "fm")
    ds = data.fashion_mnist(root=tmp_path / "fm")
    _check_tensors(ds, (1, 28, 28), 10)
    assert len(ds.y_train) == 40 and len(ds.y_test) == 10


def test_fashion_mnist_missing_dir_says_how_to_fix(tmp_path):
    with pytest.raises(data.DatasetNotFoundError) as ei:
        data.fashion_mnist(root=tmp_path / "nowhere")
    msg = str(ei.value)
    assert "apt-get install dataset-fashion-mnist" in msg and "root=" in msg
    assert isinstance(ei.value, TaoismError) and isinstance(ei.value, ConfigError)
    (tmp_path / "partial").mkdir()
    _write_idx(tmp_path / "partial" / "train-images-idx3-ubyte.gz", np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(data.DatasetNotFoundError, match="t10k-labels-idx1-ubyte.gz"):
        data.fashion_mnist(root=tmp_path / "partial")


def test_read_idx_validates_header(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "ok.gz", arr)
    _write_idx(tmp_path / "ok", arr, gz=False)
    assert np.array_equal(data.read_idx(tmp_path / "ok.gz"), arr)
    assert np.array_equal(data.read_idx(tmp_path / "ok"), arr)
    good = (tmp_path / "ok").read_bytes()
    (tmp_path / "trunc").write_bytes(good[:-3])
    with pytest.raises(ConfigError, match="truncated"):
        data.read_idx(tmp_path / "trunc")
    (tmp_path / "magic").write_bytes(b"\x01\x02" + good[2:])
    with pytest.raises(ConfigError, match="magic"):
        data.read_idx(tmp_path / "magic")
    (tmp_path / "dtype").write_bytes(good[:2] + b"\x42" + good[3:])
    with pytest.raises(ConfigError, match="dtype"):
        data.read_idx(tmp_path / "dtype")


def _cifar_batch(
    path: Path, n: int, label_key: str, classes: int, seed: int, protocol: int = 2
) -> None:
    rng = np.random.default_rng(seed)
    obj = {
        b"batch_label": b"fake",
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        label_key.encode(): [int(v) for v in rng.integers(0, classes, n)],
    }
    path.write_bytes(pickle.dumps(obj, protocol=protocol))


def test_cifar10_local_pickle_layout(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    for i in range(1, 6):
        _cifar_batch(d / f"data_batch_{i}", 8, "labels", 10, i)
    _cifar_batch(d / "test_batch", 6, "labels", 10, 9)
    for root in (tmp_path, d):  # the parent or the batches directory itself
        ds = data.load_dataset("cifar10", root=root)
        _check_tensors(ds, (3, 32, 32), 10)
        assert len(ds.y_train) == 40 and len(ds.y_test) == 6 and ds.shape == "cifar"
        assert len(ds.mean) == 3


def test_cifar100_local_pickle_layout(tmp_path):
    _cifar_batch(tmp_path / "train", 30, "fine_labels", 100, 1, protocol=pickle.HIGHEST_PROTOCOL)
    _cifar_batch(tmp_path / "test", 5, "fine_labels", 100, 2)
    ds = data.cifar100(tmp_path)
    _check_tensors(ds, (3, 32, 32), 100)


def test_cifar_never_downloads_and_explains(tmp_path):
    with pytest.raises(data.DatasetNotFoundError, match="never downloads"):
        data.cifar10(None)
    with pytest.raises(data.DatasetNotFoundError, match="data_batch_1"):
        data.cifar10(tmp_path)


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch evil_ran",))


def test_cifar_pickle_refuses_foreign_globals(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for i in range(1, 6):
        _cifar_batch(tmp_path / f"data_batch_{i}", 4, "labels", 10, i)
    (tmp_path / "test_batch").write_bytes(
        pickle.dumps({b"data": _Evil(), b"labels": [0]}, protocol=2)
    )
    with pytest.raises(ConfigError, match="not allowed"):
        data.cifar10(tmp_path)
    assert not (tmp_path / "evil_ran").exists()


def test_unknown_dataset():
    with pytest.raises(ConfigError, match="unknown dataset"):
        data.load_dataset("imagenet")
    assert set(data.list_datasets()) == {"fashion_mnist", "digits", "glyphs", "cifar10", "cifar100"}


def test_attack_splits_disjoint_and_deterministic():
    sp = data.attack_splits(1000, seed=3)
    parts = [sp[n] for n in data.SPLIT_NAMES]
    allidx = torch.cat(parts)
    assert len(torch.unique(allidx)) == len(allidx)  # pairwise disjoint
    assert sp.sizes() == {
        "public": 500,
        "target_train": 125,
        "target_test": 125,
        "shadow_train": 125,
        "shadow_test": 125,
    }
    again = data.attack_splits(1000, seed=3)
    assert all(torch.equal(a, again[n]) for a, n in zip(parts, data.SPLIT_NAMES))
    other = data.attack_splits(1000, seed=4)
    assert not torch.equal(other.public, sp.public)
    capped = data.attack_splits(1000, seed=3, split_size=50, public_size=100)
    assert capped.sizes()["target_train"] == 50 and capped.sizes()["public"] == 100
    # caps only shorten: the same samples head each part
    assert torch.equal(capped.target_train, sp.target_train[:50])
    with pytest.raises(ConfigError):
        data.attack_splits(6, seed=0)
    with pytest.raises(ConfigError):
        data.attack_splits(1000, seed=0, public_fraction=1.0)


# -- glyphs (synthetic, rendered from the system's fonts) --------------------------------------

GLYPH_TINY = dict(max_classes=8, renders=2, max_fonts_per_family=1)


@pytest.fixture(scope="module")
def glyph_set(tmp_path_factory):
    cache = tmp_path_factory.mktemp("glyph-cache")
    return data.load_dataset("glyphs", cache_dir=cache, **GLYPH_TINY), cache


def test_glyphs_classes_fonts_and_splits(glyph_set):
    ds, _ = glyph_set
    meta = ds.meta
    # the full class list: Latin, digits, Greek and Cyrillic minus look-alikes, >= 100 classes
    assert len(meta["distinct_classes"]) >= 100
    assert ds.num_classes == 8 and meta["classes"] == "01234567"
    assert "Α" not in meta["public_classes"] and "А" not in meta["public_classes"]  # = Latin A
    assert set(meta["classes"]).isdisjoint(meta["public_classes"])
    # font families are disjoint between the four groups
    fams = meta["families"]
    for a in fams:
        for b in fams:
            if a != b:
                assert not set(fams[a]) & set(fams[b]), (a, b)
    assert all(len(f) >= 1 for f in fams.values())
    # shapes, labels, every class present in every split; the public set has its own classes
    assert ds.x_train.shape[1:] == (1, 28, 28) and ds.shape == "mnist"
    n_priv = len(meta["groups"]["private"])
    assert n_priv == len(meta["fonts"]["private"]) * 8 * 2
    assert len(meta["groups"]["attacker"]) == len(meta["fonts"]["attacker"]) * 8 * 2
    assert set(ds.y_test.tolist()) == set(range(8))
    pub = meta["public"]
    assert pub["num_classes"] == len(meta["public_classes"]) and set(pub["y"].tolist()) == set(
        range(pub["num_classes"])
    )
    # not near-constant: every rendering has ink, and the distortions differ between renders
    lo = ds.pixel_bounds()[0].item()
    assert bool(((ds.x_train > lo + 0.5).flatten(1).sum(1) > 5).all())
    assert not torch.equal(ds.x_train[0], ds.x_train[1])


def test_glyphs_group_splits_follow_the_fonts(glyph_set):
    ds, _ = glyph_set
    sp = data.group_splits(ds.meta["groups"], seed=3)
    priv, att = (
        set(ds.meta["groups"]["private"].tolist()),
        set(ds.meta["groups"]["attacker"].tolist()),
    )
    assert set(sp.target_train.tolist()) | set(sp.target_test.tolist()) <= priv
    assert set(sp.shadow_train.tolist()) | set(sp.shadow_test.tolist()) <= att
    assert not set(sp.target_train.tolist()) & set(sp.target_test.tolist())
    assert len(sp.public) == 0
    assert torch.equal(sp.target_train, data.group_splits(ds.meta["groups"], seed=3).target_train)


def test_glyphs_cached_and_deterministic(glyph_set):
    ds, cache = glyph_set
    files = list((cache / "glyphs").glob("*.npz"))
    assert len(files) == 1
    again = data.load_dataset("glyphs", cache_dir=cache, **GLYPH_TINY)
    assert again.fingerprint == ds.fingerprint and torch.equal(again.x_train, ds.x_train)
    other = data.load_dataset("glyphs", cache_dir=cache, **{**GLYPH_TINY, "seed": 1})
    assert other.fingerprint != ds.fingerprint
    assert len(list((cache / "glyphs").glob("*.npz"))) == 2


def test_glyphs_without_fonts_names_the_packages(tmp_path):
    (tmp_path / "fonts").mkdir()
    with pytest.raises(data.FontNotFoundError, match="fonts-noto-core") as exc:
        data.load_dataset("glyphs", root=tmp_path / "fonts")
    assert isinstance(exc.value, ConfigError) and str(tmp_path / "fonts") in str(exc.value)
    with pytest.raises(ConfigError, match="unknown script"):
        data.GlyphConfig(private_scripts=("klingon",))
    with pytest.raises(ConfigError, match="takes no options"):
        data.load_dataset("digits", renders=3)
