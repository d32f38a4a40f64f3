"""Code the tests share; fixtures stay in tests/conftest.py."""

from tests.helpers.fakes import (
    CHECKPOINT_MESSAGES,
    CHECKPOINTS,
    FakeClock,
    attach_trainer,
    broken_checkpoint,
    make_image_folder,
)
from tests.helpers.runs import CLI, FAST, ComposeTrain, free_port, run_cli, run_failure

__all__ = [
    "CHECKPOINTS",
    "CHECKPOINT_MESSAGES",
    "CLI",
    "FAST",
    "ComposeTrain",
    "FakeClock",
    "attach_trainer",
    "broken_checkpoint",
    "free_port",
    "make_image_folder",
    "run_cli",
    "run_failure",
]
