"""Loaders for offline datasets; every one returns an :class:`ImageDataset` of tensors.

Images come back as ``float32`` tensors of shape ``(N, C, H, W)``, scaled to [0, 1] and then
normalised per channel with the mean and standard deviation of the *training* split (kept on
the dataset as ``mean`` / ``std``); labels are ``int64``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from taoism.errors import ConfigError

__all__ = [
    "DATASETS",
    "DEFAULT_FASHION_MNIST_ROOT",
    "DatasetNotFoundError",
    "ImageDataset",
    "cifar10",
    "cifar100",
    "digits",
    "fashion_mnist",
    "list_datasets",
    "load_dataset",
    "read_idx",
]

DEFAULT_FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")

#: sklearn digits has no official split: a fixed permutation (seed 0) keeps this many for test.
DIGITS_TEST_SIZE = 397


class DatasetNotFoundError(ConfigError, FileNotFoundError):
    """A dataset's files are not where the loader was told to look."""


@dataclass(frozen=True, eq=False)
class ImageDataset:
    """A train/test image-classification dataset held as tensors.

    ``shape`` is the :mod:`taoism.zoo` ``dataset_shape`` the images fit (``mnist``, ``digits``,
    ``cifar``). ``fingerprint`` is a content hash of the raw images and labels, used in cache keys.
    """

    name: str
    shape: str
    num_classes: int
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    fingerprint: str
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def channels(self) -> int:
        return int(self.x_train.shape[1])

    def pixel_bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The normalised values of pixel 0 and pixel 1, shaped ``(1, C, 1, 1)`` for clamping."""
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return (0.0 - mean) / std, (1.0 - mean) / std

    def pixel_scale(self) -> torch.Tensor:
        """``1 / std`` shaped ``(1, C, 1, 1)``: multiply a pixel-space step by it to normalise it."""
        return 1.0 / torch.tensor(self.std).view(1, -1, 1, 1)

    def __repr__(self) -> str:
        return (
            f"ImageDataset({self.name!r}, train={tuple(self.x_train.shape)}, "
            f"test={tuple(self.x_test.shape)}, classes={self.num_classes})"
        )


# -- helpers ------------------------------------------------------------------------------------


def _fingerprint(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()[:20]


def _normalise(
    train_u8: np.ndarray, test_u8: np.ndarray, scale: float
) -> tuple[torch.Tensor, torch.Tensor, tuple[float, ...], tuple[float, ...]]:
    """uint8-like NCHW arrays -> normalised float tensors, with the train split's channel stats."""
    xtr = torch.from_numpy(np.ascontiguousarray(train_u8)).to(torch.float32).div_(scale)
    xte = torch.from_numpy(np.ascontiguousarray(test_u8)).to(torch.float32).div_(scale)
    mean = xtr.mean(dim=(0, 2, 3), dtype=torch.float64)
    std = xtr.std(dim=(0, 2, 3)).to(torch.float64).clamp_min(1e-6)
    m, s = mean.to(torch.float32).view(1, -1, 1, 1), std.to(torch.float32).view(1, -1, 1, 1)
    xtr.sub_(m).div_(s)
    xte.sub_(m).div_(s)
    return xtr, xte, tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _labels(a: Any, n: int, num_classes: int, where: str) -> torch.Tensor:
    y = torch.as_tensor(np.asarray(a, dtype=np.int64))
    if y.dim() != 1 or y.numel() != n:
        raise ConfigError(f"{where}: expected {n} labels, got shape {tuple(y.shape)}")
    if n and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ConfigError(
            f"{where}: labels must lie in [0, {num_classes}), got [{int(y.min())}, {int(y.max())}]"
        )
    return y


# -- IDX (MNIST-style) ---------------------------------------------------------------------------

_IDX_DTYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (gzip-compressed when the name ends in ``.gz``) into a numpy array.

    The header is validated before the payload is used: magic, dtype code, rank and a payload
    size that matches the declared dimensions exactly.
    """
    p = Path(path)
    opener: Callable[..., Any] = gzip.open if p.suffix == ".gz" else open
    try:
        with opener(p, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise ConfigError(f"cannot read IDX file {p}: {exc}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ConfigError(f"{p} is not an IDX file (bad magic {raw[:4]!r})")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise ConfigError(f"{p}: unknown IDX dtype code 0x{code:02x}")
    if not 1 <= ndim <= 4 or len(raw) < 4 + 4 * ndim:
        raise ConfigError(f"{p}: IDX header declares {ndim} dimensions; expected 1 to 4")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[code])
    count = int(np.prod(dims, dtype=np.int64))
    payload = memoryview(raw)[4 + 4 * ndim :]
    if len(payload) != count * dtype.itemsize:
        raise ConfigError(
            f"{p}: IDX payload is {len(payload)} bytes, the header {dims} needs "
            f"{count * dtype.itemsize}; the file is truncated or corrupt"
        )
    return np.frombuffer(payload, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


_FMNIST_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def _find(root: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    return None


def fashion_mnist(root: str | os.PathLike | None = None) -> ImageDataset:
    """Fashion-MNIST (60k train / 10k test, 1x28x28, 10 classes) from gzip IDX files in ``root``.

    ``root`` defaults to ``/usr/share/datasets/fashion-mnist``, where Debian's
    ``dataset-fashion-mnist`` package installs them.
    """
    root_p = Path(root) if root is not None else DEFAULT_FASHION_MNIST_ROOT
    missing = [stem for stem in _FMNIST_FILES.values() if _find(root_p, stem) is None]
    if missing:
        where = (
            "does not exist"
            if not root_p.is_dir()
            else f"lacks {', '.join(m + '.gz' for m in missing)}"
        )
        raise DatasetNotFoundError(
            f"Fashion-MNIST directory {root_p} {where}. Install the offline copy with "
            f"`apt-get install dataset-fashion-mnist` (it provides {DEFAULT_FASHION_MNIST_ROOT}), "
            "or pass root= a directory holding train-images-idx3-ubyte.gz, "
            "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz"
        )
    arr = {k: read_idx(_find(root_p, stem)) for k, stem in _FMNIST_FILES.items()}  # type: ignore[arg-type]
    for split in ("train", "test"):
        x, y = arr[f"x_{split}"], arr[f"y_{split}"]
        if x.ndim != 3 or x.dtype != np.uint8 or y.ndim != 1 or len(x) != len(y):
            raise ConfigError(
                f"Fashion-MNIST {split} files in {root_p} have unexpected shapes "
                f"{x.shape} / {y.shape}; expected (N, 28, 28) uint8 and (N,)"
            )
    xtr, xte, mean, std = _normalise(arr["x_train"][:, None], arr["x_test"][:, None], 255.0)
    return ImageDataset(
        "fashion_mnist",
        "mnist",
        10,
        xtr,
        _labels(arr["y_train"], len(xtr), 10, f"Fashion-MNIST train labels in {root_p}"),
        xte,
        _labels(arr["y_test"], len(xte), 10, f"Fashion-MNIST test labels in {root_p}"),
        mean,
        std,
        _fingerprint(*arr.values()),
        source=str(root_p),
    )


def digits() -> ImageDataset:
    """scikit-learn's 8x8 digits (1,797 images, 10 classes) as 1x8x8 tensors.

    There is no official split: a fixed permutation (numpy seed 0) keeps 397 images for test and
    1,400 for training. Pixel values 0..16 are scaled to [0, 1] before normalisation.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise ConfigError(
            "the digits dataset needs scikit-learn: pip install 'taoism[data]'"
        ) from exc
    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float32)[:, None]  # (1797, 1, 8, 8), 0..16
    target = np.asarray(bunch.target, dtype=np.int64)
    perm = np.random.default_rng(0).permutation(len(target))
    test, train = perm[:DIGITS_TEST_SIZE], perm[DIGITS_TEST_SIZE:]
    xtr, xte, mean, std = _normalise(images[train], images[test], 16.0)
    return ImageDataset(
        "digits",
        "digits",
        10,
        xtr,
        _labels(target[train], len(train), 10, "digits"),
        xte,
        _labels(target[test], len(test), 10, "digits"),
        mean,
        std,
        _fingerprint(images, target),
        source="sklearn.datasets.load_digits",
    )


# -- CIFAR (python pickle layout) ----------------------------------------------------------------


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Rebuilds dicts, lists, bytes and numpy arrays; refuses every other global.

    Allowed: numpy's array reconstructors (pickle protocols 2 and 5, numpy 1 and 2 module paths),
    ``numpy.dtype`` / ``numpy.ndarray``, and ``_codecs.encode`` (how Python 3 writes bytes at
    protocol 2): pure data constructors with no side effects.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch file")


def _load_batch(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            obj = _ArrayOnlyUnpickler(io.BufferedReader(f), encoding="bytes").load()  # type: ignore[arg-type]
    except (
        pickle.UnpicklingError,
        EOFError,
        OSError,
        ValueError,
        TypeError,
        AttributeError,
    ) as exc:
        raise ConfigError(f"cannot read CIFAR batch {path}: {exc}") from exc
    if not isinstance(obj, dict):
        raise ConfigError(f"CIFAR batch {path} holds a {type(obj).__name__}, expected a dict")
    return {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def _cifar(
    root: str | os.PathLike | None,
    *,
    name: str,
    subdir: str,
    train_files: list[str],
    test_file: str,
    label_key: str,
    num_classes: int,
) -> ImageDataset:
    hint = (
        f"put the {name} 'python version' files ({', '.join(train_files)}, {test_file}) in a "
        f"local directory (or its {subdir}/ subdirectory) and pass root=; taoism never "
        "downloads datasets"
    )
    if root is None:
        raise DatasetNotFoundError(f"{name} has no offline system copy: {hint}")
    base = Path(root)
    for cand in (base, base / subdir):
        if all((cand / f).is_file() for f in [*train_files, test_file]):
            break
    else:
        raise DatasetNotFoundError(f"{name} files not found in {base}: {hint}")

    def read(files: list[str]) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for fn in files:
            d = _load_batch(cand / fn)
            if "data" not in d or label_key not in d:
                raise ConfigError(f"{cand / fn} lacks the 'data' or '{label_key}' entry")
            x = np.asarray(d["data"])
            if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32:
                raise ConfigError(
                    f"{cand / fn}: 'data' is {x.dtype} {x.shape}, expected uint8 (N, 3072)"
                )
            y = np.asarray(d[label_key], dtype=np.int64)
            if y.shape != (x.shape[0],):
                raise ConfigError(f"{cand / fn}: {len(y)} labels for {x.shape[0]} images")
            xs.append(x.reshape(-1, 3, 32, 32))
            ys.append(y)
        return np.concatenate(xs), np.concatenate(ys)

    xtr_u8, ytr = read(train_files)
    xte_u8, yte = read([test_file])
    xtr, xte, mean, std = _normalise(xtr_u8, xte_u8, 255.0)
    return ImageDataset(
        name,
        "cifar",
        num_classes,
        xtr,
        _labels(ytr, len(ytr), num_classes, name),
        xte,
        _labels(yte, len(yte), num_classes, name),
        mean,
        std,
        _fingerprint(xtr_u8, ytr, xte_u8, yte),
        source=str(cand),
    )


def cifar10(root: str | os.PathLike | None = None) -> ImageDataset:
    """CIFAR-10 from ``root`` (``data_batch_1..5`` and ``test_batch``, or ``cifar-10-batches-py/``)."""
    return _cifar(
        root,
        name="cifar10",
        subdir="cifar-10-batches-py",
        train_files=[f"data_batch_{i}" for i in range(1, 6)],
        test_file="test_batch",
        label_key="labels",
        num_classes=10,
    )


def cifar100(root: str | os.PathLike | None = None) -> ImageDataset:
    """CIFAR-100 (fine labels) from ``root`` (``train`` and ``test``, or ``cifar-100-python/``)."""
    return _cifar(
        root,
        name="cifar100",
        subdir="cifar-100-python",
        train_files=["train"],
        test_file="test",
        label_key="fine_labels",
        num_classes=100,
    )


def _glyphs(
    root: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    **overrides: Any,
) -> ImageDataset:
    from taoism.data.glyphs import DEFAULT_FONT_DIRS, GlyphConfig, glyphs

    dirs = (os.fspath(root),) if root is not None else DEFAULT_FONT_DIRS
    return glyphs(
        GlyphConfig(
            font_dirs=dirs, cache_dir=os.fspath(cache_dir) if cache_dir else None, **overrides
        )
    )


DATASETS: dict[str, Callable[..., ImageDataset]] = {
    "fashion_mnist": fashion_mnist,
    "digits": lambda root=None: digits(),
    "glyphs": _glyphs,
    "cifar10": cifar10,
    "cifar100": cifar100,
}

_ALIASES = {
    "fashionmnist": "fashion_mnist",
    "fmnist": "fashion_mnist",
    "digits": "digits",
    "sklearndigits": "digits",
    "cifar10": "cifar10",
    "cifar100": "cifar100",
    "glyphs": "glyphs",
    "glyph": "glyphs",
}


def list_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`."""
    return list(DATASETS)


def canonical_name(name: str) -> str:
    """``"Fashion-MNIST"``, ``"fmnist"`` ... -> ``"fashion_mnist"``; unknown names raise ConfigError."""
    if not isinstance(name, str):
        raise ConfigError(f"dataset name must be a string, got {type(name).__name__}")
    key = _ALIASES.get(name.strip().lower().replace("-", "").replace("_", ""))
    if key is None:
        raise ConfigError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")
    return key


def load_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    **options: Any,
) -> ImageDataset:
    """Load dataset ``name`` (see :func:`list_datasets`) from ``root`` (ignored for ``digits``).

    For ``glyphs``, ``root`` is the font directory (default ``/usr/share/fonts``), ``cache_dir``
    where renderings are cached (None: not cached) and ``options`` are
    :class:`~taoism.data.glyphs.GlyphConfig` fields; other data sets take neither.
    """
    key = canonical_name(name)
    if key == "glyphs":
        return _glyphs(root, cache_dir, **options)
    if options:
        raise ConfigError(f"dataset {key!r} takes no options, got {', '.join(options)}")
    return DATASETS[key](root)
