"""The user's own images on disk, one sub-folder per class (torchvision ``ImageFolder`` layout)."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from perfkit.data.base import ClassificationDataModule
from perfkit.errors import ConfigError


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
            return ImageFolder(str(self.root), transform=transform, loader=load_image)
        except FileNotFoundError as error:  # a class folder without a single image file
            raise ConfigError(f"data.root={str(self.root)!r}: {str(error).strip()}") from None


def load_image(path: str) -> Any:
    """Open an image file; a file that is not one stops the run with its path (training on silently
    fewer images would change the result)."""
    from PIL import Image

    try:
        with open(path, "rb") as file:
            image = Image.open(file)
            image.load()
            return image
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise ConfigError(
            f"data: {path} cannot be read as an image ({error}); remove or replace it"
        ) from None


def _to_rgb(image: Any) -> Any:
    return image.convert("RGB")
