"""Offline image-classification datasets as normalised tensors, and the attack data splits.

Nothing here downloads anything. Sources:

* ``fashion_mnist``: the gzip IDX files of Debian's ``dataset-fashion-mnist`` package
  (``/usr/share/datasets/fashion-mnist``), or any directory holding the same four files.
* ``digits``: scikit-learn's bundled 8x8 digits (``sklearn.datasets.load_digits``).
* ``glyphs``: synthetic character images rendered from the system's fonts (Debian font
  packages, :data:`FONT_PACKAGES`); see :mod:`taoism.data.glyphs`. It stands in for CIFAR,
  which has no offline copy.
* ``cifar10`` / ``cifar100``: a local directory in the standard "python version" pickle
  layout, read with a restricted unpickler that only rebuilds numpy arrays.

>>> from taoism import data
>>> ds = data.load_dataset("digits")
>>> ds.x_train.shape, ds.x_train.dtype, ds.y_train.dtype
(torch.Size([1400, 1, 8, 8]), torch.float32, torch.int64)
>>> sp = data.attack_splits(len(ds.y_train), seed=0)   # public / members / non-members / shadow
"""

from taoism.data.datasets import (
    DATASETS,
    DEFAULT_FASHION_MNIST_ROOT,
    DatasetNotFoundError,
    ImageDataset,
    canonical_name,
    cifar10,
    cifar100,
    digits,
    fashion_mnist,
    list_datasets,
    load_dataset,
    read_idx,
)
from taoism.data.glyphs import FONT_PACKAGES, FontNotFoundError, GlyphConfig, glyphs
from taoism.data.splits import SPLIT_NAMES, AttackSplits, attack_splits, group_splits

__all__ = [
    "DATASETS",
    "DEFAULT_FASHION_MNIST_ROOT",
    "DatasetNotFoundError",
    "FONT_PACKAGES",
    "FontNotFoundError",
    "GlyphConfig",
    "ImageDataset",
    "AttackSplits",
    "SPLIT_NAMES",
    "attack_splits",
    "group_splits",
    "canonical_name",
    "cifar10",
    "cifar100",
    "digits",
    "fashion_mnist",
    "glyphs",
    "list_datasets",
    "load_dataset",
    "read_idx",
]
