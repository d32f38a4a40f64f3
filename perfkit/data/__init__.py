"""LightningDataModules for perfkit's bundled data and the user's own images."""

from perfkit.data.base import ClassificationDataModule, split_indices
from perfkit.data.imagefolder import ImageFolderDataModule
from perfkit.data.mnist import DigitsDataModule, MNISTDataModule
from perfkit.data.resident import TensorImageDataset
from perfkit.data.synthetic import SyntheticDataModule, SyntheticImages

__all__ = [
    "ClassificationDataModule",
    "DigitsDataModule",
    "ImageFolderDataModule",
    "MNISTDataModule",
    "SyntheticDataModule",
    "SyntheticImages",
    "TensorImageDataset",
    "split_indices",
]
