"""The user's own images on disk, one sub-folder per class (torchvision ``ImageFolder`` layout)."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from perfkit.data.base import ClassificationDataModule


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
        if not self.root.is_dir():
            raise ValueError(f"data.root={str(root)!r} is not a directory (expected root/<class>/<image>)")
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
            raise ValueError(f"data.root={str(self.root)!r} has no class sub-folders") from None
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
        return ImageFolder(str(self.root), transform=transform)


def _to_rgb(image: Any) -> Any:
    return image.convert("RGB")
