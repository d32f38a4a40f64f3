"""The first batch of each loader is checked: NaN/inf, float64 beside float32 weights, labels that
are not class indices; each is one line naming the loader, the tensor and the sample."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from perfkit.data.checks import DataError, check_batch, tensors
from perfkit.models import MLP
from perfkit.models.classifier import ImageClassifier
from tests.helpers import CLI, run_failure

PROJECT = Path(__file__).parent / "user_project"
USER = ("data._target_=userpkg.FlawedDigits", "model._target_=userpkg.DigitsNet", "monitor=val/accuracy")
QUICK = ("debug=fast", "logger=none", "trainer.enable_progress_bar=false", "accelerator=cpu")


@pytest.fixture
def classifier() -> ImageClassifier:
    return ImageClassifier(MLP, (1, 4, 4), 3)


def test_tensors_are_found_wherever_the_batch_keeps_them() -> None:
    batch = {"x": torch.zeros(2), "rest": [torch.ones(1), (torch.ones(3), "text")]}
    assert [where for where, _ in tensors(batch)] == ["batch['x']", "batch['rest'][0]", "batch['rest'][1][0]"]


def test_nan_is_named_with_its_sample(classifier: ImageClassifier) -> None:
    images = torch.zeros(8, 1, 4, 4)
    images[5, 0, 1, 1] = float("inf")
    with pytest.raises(
        DataError,
        match=r"batch\[0\] of the first validation batch \(float32 \[8, 1, 4, 4\]\) "
        r"holds 1 NaN/inf values, the first in sample 5",
    ):
        check_batch((images, torch.zeros(8, dtype=torch.long)), "validation", classifier)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (
            torch.tensor([0.0, 1.0]),
            "labels are float32: a classifier's labels are class indices .integers in 0..2.",
        ),
        (torch.tensor([0, 3]), "label 3 .sample 1. is outside 0..2: the model has 3 classes"),
        (torch.tensor([-1, 0]), "label -1 .sample 0. is outside 0..2"),
        ([0, 1], "labels are a list, not a tensor"),
    ],
)
def test_labels_must_be_class_indices(classifier: ImageClassifier, labels: object, message: str) -> None:
    with pytest.raises(DataError, match=message):
        check_batch((torch.zeros(2, 1, 4, 4), labels), "training", classifier)


def test_good_batches_and_float64_models_pass(classifier: ImageClassifier) -> None:
    assert check_batch((torch.zeros(2, 1, 4, 4), torch.tensor([0, 2])), "training", classifier) == []
    hints = check_batch((torch.zeros(2, 1, 4, 4).double(), torch.tensor([0, 2])), "training", classifier)
    assert hints and "is float64 but the model's weights are float32" in hints[0]
    assert (
        check_batch((torch.zeros(2, 1, 4, 4).double(), torch.tensor([0, 2])), "training", classifier.double())
        == []
    )


@pytest.fixture
def user_project(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(PROJECT))


@pytest.mark.usefixtures("user_project")
@pytest.mark.parametrize(
    ("flaw", "split", "line"),
    [
        (
            "corrupt",
            "val",
            "data: batch[0] of the first validation batch (float32 [180, 64]) holds 1 NaN/inf "
            "values, the first in sample 3",
        ),
        (
            "float64",
            "train",
            "data: batch[0] of the first training batch (float64 [64, 64]) is float64 but the "
            "model's weights are float32: convert it",
        ),
    ],
)
def test_a_users_flawed_data_is_one_line(cli: CLI, flaw: str, split: str, line: str) -> None:
    code, err = cli(*USER, *QUICK, f"+data.flaw={flaw}", f"+data.split={split}")
    assert code == 2, run_failure(err)
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"perfkit.train: error: {line}") and "Traceback" not in err


@pytest.mark.usefixtures("user_project")
def test_nan_data_can_be_allowed(cli: CLI) -> None:
    code, err = cli(*USER, *QUICK, "+data.flaw=corrupt", "+data.split=val", "check_data=false")
    assert code == 0, run_failure(err)


@pytest.mark.usefixtures("user_project")
def test_an_error_in_the_users_setup_names_its_line(cli: CLI) -> None:
    code, err = cli(*USER, *QUICK, "+data.flaw=setup")
    assert code == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("perfkit.train: error in your code, ") and "userpkg/__init__.py:" in last
    assert last.endswith("in setup: KeyError: 'images' (HYDRA_FULL_ERROR=1 shows the traceback)")


def test_constant_inputs_are_warned_about(
    classifier: ImageClassifier, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING"):
        check_batch((torch.ones(4, 1, 4, 4), torch.tensor([0, 1, 2, 0])), "training", classifier)
    assert (
        "batch[0] of the first training batch (float32 [4, 1, 4, 4]) is constant (every value 1)"
        in caplog.text
    )
