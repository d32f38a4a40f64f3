"""The four networks and the LightningModule, on every bundled input shape."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from perfkit.models import MLP, ImageClassifier, SmallCNN, resnet18, vit

SHAPES = [(1, 28, 28), (1, 8, 8), (3, 32, 32)]
NETS = {"cnn": SmallCNN, "mlp": MLP, "resnet18": resnet18, "vit": vit}


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", NETS)
def test_nets_map_images_to_logits(name: str, shape: tuple[int, int, int]) -> None:
    net = NETS[name](shape, 7)
    assert net(torch.randn(3, *shape)).shape == (3, 7)


def test_linear_heavy_and_conv_heavy_models_are_what_they_claim() -> None:
    def count(net: nn.Module, kind: type[nn.Module]) -> int:
        return sum(
            p.numel() for m in net.modules() if isinstance(m, kind) for p in m.parameters(recurse=False)
        )

    shape = (1, 28, 28)
    mlp, cnn, resnet = MLP(shape, 10), SmallCNN(shape, 10), resnet18(shape, 10)
    assert count(mlp, nn.Linear) == sum(p.numel() for p in mlp.parameters())
    assert count(resnet, nn.Conv2d) > 0.9 * sum(p.numel() for p in resnet.parameters())
    assert count(cnn, nn.Conv2d) > 0
    transformer = vit(shape, 10)
    assert count(transformer, nn.Linear) > count(transformer, nn.Conv2d)


def test_resnet18_keeps_small_images_large_enough() -> None:
    net = resnet18((1, 28, 28), 10)
    assert net.conv1.stride == (1, 1) and isinstance(net.maxpool, nn.Identity)


def test_vit_patch_size() -> None:
    assert vit((1, 28, 28), 10).patch_size == 7  # type: ignore[union-attr]
    assert vit((1, 8, 8), 10).patch_size == 2  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="does not divide"):
        vit((1, 28, 28), 10, patch_size=5)
    with pytest.raises(ValueError, match="square"):
        vit((1, 28, 20), 10)


def test_cnn_rejects_inputs_too_small_for_its_pooling() -> None:
    with pytest.raises(ValueError, match="too small"):
        SmallCNN((1, 2, 2), 10, channels=(8, 8, 8))


def test_classifier_builds_net_from_factory_and_learns() -> None:
    torch.manual_seed(0)
    model = ImageClassifier(MLP, (1, 8, 8), 3, optimizer=lambda p: torch.optim.SGD(p, lr=0.5))
    assert isinstance(model.net, MLP)
    images, labels = torch.randn(24, 1, 8, 8), torch.arange(24) % 3
    optimizer = model.configure_optimizers()
    losses = []
    for _ in range(30):
        loss = nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]


def test_classifier_accepts_a_ready_module_and_schedulers() -> None:
    net = SmallCNN((1, 8, 8), 4)
    model = ImageClassifier(
        net, (1, 8, 8), 4, scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=1)
    )
    assert model.net is net
    configured = model.configure_optimizers()
    assert isinstance(configured["optimizer"], torch.optim.AdamW)
    assert isinstance(configured["lr_scheduler"], torch.optim.lr_scheduler.StepLR)


def test_epoch_loss_is_the_mean_over_samples_whatever_the_batch_sizes() -> None:
    """Batches of 5 and 1 samples: the logged loss weighs each sample once (DDP shards are uneven)."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = ImageClassifier(MLP, (1, 4, 4), 3)
    images, labels = torch.randn(6, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    for batch in ((images[:5], labels[:5]), (images[5:], labels[5:])):
        model.test_step(batch, 0)
    expected = F.cross_entropy(model(images), labels)
    torch.testing.assert_close(model.test_loss.compute(), expected.detach())


def test_training_accuracy_and_loss_are_over_every_sample_of_the_epoch() -> None:
    """The per-step sums (no torchmetrics update per step) give the epoch's exact mean: with a zero
    learning rate the weights never move, so they equal a plain evaluation of the training set."""
    import lightning as L
    import torch.nn.functional as F

    from perfkit.data import DigitsDataModule

    torch.manual_seed(0)
    model = ImageClassifier(MLP, (1, 8, 8), 10, optimizer=lambda p: torch.optim.SGD(p, lr=0.0))
    datamodule = DigitsDataModule(batch_size=50)  # 1,437 training samples: the last batch is short
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=datamodule)
    images = torch.stack([image for image, _ in datamodule.train_set])
    labels = torch.tensor([label for _, label in datamodule.train_set])
    with torch.no_grad():
        logits = model(images)
    metrics = trainer.callback_metrics
    assert metrics["train/acc"].item() == pytest.approx((logits.argmax(1) == labels).float().mean().item())
    assert metrics["train/loss_epoch"].item() == pytest.approx(
        F.cross_entropy(logits, labels).item(), rel=1e-5
    )
