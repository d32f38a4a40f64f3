"""The user's own images on disk, one sub-folder per class (torchvision ``ImageFolder`` layout)."""

from __future__ import annotations

import logging
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from perfkit.data.base import ClassificationDataModule
from perfkit.errors import ConfigError

log = logging.getLogger(__name__)


class ImageFolderDataModule(ClassificationDataModule):
    """``root/<class name>/<image file>`` read with torchvision, resized to ``image_size`` squares."""

    def __init__(
        self,
        *,
        root: str,
        image_size: int = 64,
        color: Literal["rgb", "grayscale"] = "rgb",
        **loader_options: Any,
    ) -> None:
        super().__init__(**loader_options)
        self.root = Path(root).expanduser()
        try:
            is_dir, why = self.root.is_dir(), ""
        except OSError as error:  # e.g. a name longer than the file system allows
            is_dir, why = False, f" ({error.strerror})"
        if not is_dir:
            shown = str(root) if len(str(root)) <= 80 else f"{str(root)[:60]}...({len(str(root))} characters)"
            raise ValueError(f"data.root={shown!r} is not a directory{why} (expected root/<class>/<image>)")
        if image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        self.image_size = image_size
        self.color = color

    @cached_property
    def classes(self) -> list[str]:
        from torchvision.datasets.folder import find_classes

        try:
            classes, _ = find_classes(str(self.root))
        except FileNotFoundError:
            raise ConfigError(
                f"data.root={str(self.root)!r} has no class sub-folders (expected root/<class>/<image>)"
            ) from None
        return classes

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3 if self.color == "rgb" else 1, self.image_size, self.image_size)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def load_dataset(self) -> Any:
        from torchvision import transforms
        from torchvision.datasets import ImageFolder

        channels = self.input_shape[0]
        transform = transforms.Compose(
            [
                transforms.Grayscale(1) if channels == 1 else transforms.Lambda(_to_rgb),
                transforms.Resize((self.image_size, self.image_size), antialias=True),
                transforms.ToTensor(),
                transforms.Normalize([0.5] * channels, [0.5] * channels),
            ]
        )
        try:
            dataset = ImageFolder(str(self.root), transform=transform, loader=load_image)
        except FileNotFoundError as error:  # a class folder without a single image file
            raise ConfigError(f"data.root={str(self.root)!r}: {str(error).strip()}") from None
        if len(dataset.classes) < 2:
            raise ConfigError(
                f"data.root={str(self.root)!r} has one class folder ({dataset.classes[0]!r}): a classifier "
                "needs at least two (root/<class>/<image>), or it learns nothing and scores 100%"
            )
        dataset.samples = dataset.imgs = unique_samples(dataset.samples, dataset.classes, str(self.root))
        dataset.targets = [target for _, target in dataset.samples]
        return dataset


def unique_samples(samples: list[tuple[str, int]], classes: list[str], root: str) -> list[tuple[str, int]]:
    """Each image once: paths that lead to the same file (symlinks, a symlink loop) or files with the
    same bytes would otherwise be counted several times and land in train and test both. The same
    image under two classes is refused: its label is ambiguous."""
    import hashlib
    import os
    from collections import Counter

    sizes = [os.stat(path).st_size for path, _ in samples]
    same_size = Counter(sizes)

    def identity(path: str, size: int) -> str:
        if same_size[size] == 1:  # no other file has this size: no need to read it
            return os.path.realpath(path)
        with open(path, "rb") as file:
            return hashlib.blake2b(file.read(), digest_size=16).hexdigest()

    first: dict[str, tuple[str, int]] = {}
    kept, repeats = [], 0
    for (path, target), size in zip(samples, sizes, strict=True):
        key = identity(path, size)
        if key not in first:
            first[key] = (path, target)
            kept.append((path, target))
            continue
        repeats += 1
        seen_path, seen_target = first[key]
        if seen_target != target:
            raise ConfigError(
                f"data.root={root!r}: {path} is the same image as {seen_path} but under class "
                f"{classes[target]!r}, not {classes[seen_target]!r}: remove one"
            )
    if repeats:
        log.warning(
            "data.root=%r: %d of %d image paths repeat an image already seen (symlinks, a symlink loop "
            "or copied files); each image is used once, so none is in both the training and the test split",
            root,
            repeats,
            len(samples),
        )
    return kept


def load_image(path: str) -> Any:
    """Open an image file; a file that is not one stops the run with its path (training on silently
    fewer images would change the result)."""
    from PIL import Image

    try:
        with open(path, "rb") as file:
            image = Image.open(file)
            image.load()
            return _to_8_bits(image)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise ConfigError(
            f"data: {path} cannot be read as an image ({error}); remove or replace it"
        ) from None


def _to_8_bits(image: Any) -> Any:
    """16-bit (and 32-bit integer or float) grayscale as 8 bits: PIL's own conversion to RGB or L
    clips every value above 255 to white."""
    if image.mode not in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return image
    import numpy as np
    from PIL import Image

    values = np.asarray(image, dtype=np.float64)
    peak = float(values.max()) if values.size else 0.0
    full_scale = next(scale for scale in (1.0, 255.0, 65535.0, max(peak, 1.0)) if peak <= scale)
    if image.mode.startswith("I;16"):
        full_scale = 65535.0
    return Image.fromarray(np.clip(values / full_scale * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")


def _to_rgb(image: Any) -> Any:
    return image.convert("RGB")
