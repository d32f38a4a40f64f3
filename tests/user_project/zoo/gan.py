"""A GAN shaped like Lightning's basic GAN example: manual optimization, no validation or test step."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import nn


class Generator(nn.Module):
    def __init__(self, latent_dim: int, features: int) -> None:
        super().__init__()
        self.model = nn.Sequential(
            nn.Linear(latent_dim, 64), nn.LeakyReLU(0.2), nn.Linear(64, features), nn.Tanh()
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.model(z)


class Discriminator(nn.Module):
    def __init__(self, features: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Linear(features, 64), nn.LeakyReLU(0.2), nn.Linear(64, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.view(x.size(0), -1))


class GAN(L.LightningModule):
    def __init__(self, latent_dim: int = 16, features: int = 64, lr: float = 0.0002) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.generator = Generator(latent_dim, features)
        self.discriminator = Discriminator(features)
        self.validation_z = torch.randn(8, latent_dim)
        self.example_input_array = torch.zeros(2, latent_dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator(z)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        images, _ = batch
        images = images.view(images.size(0), -1) * 2 - 1
        g_opt, d_opt = self.optimizers()  # type: ignore[misc]
        z = torch.randn(images.size(0), self.hparams.latent_dim, device=self.device)
        real = torch.ones(images.size(0), 1, device=self.device)
        fake = torch.zeros(images.size(0), 1, device=self.device)

        self.toggle_optimizer(g_opt)
        g_loss = nn.functional.binary_cross_entropy_with_logits(self.discriminator(self(z)), real)
        self.manual_backward(g_loss)
        g_opt.step()
        g_opt.zero_grad()
        self.untoggle_optimizer(g_opt)

        self.toggle_optimizer(d_opt)
        real_loss = nn.functional.binary_cross_entropy_with_logits(self.discriminator(images), real)
        fake_loss = nn.functional.binary_cross_entropy_with_logits(self.discriminator(self(z).detach()), fake)
        d_loss = (real_loss + fake_loss) / 2
        self.manual_backward(d_loss)
        d_opt.step()
        d_opt.zero_grad()
        self.untoggle_optimizer(d_opt)
        self.log_dict({"g_loss": g_loss, "d_loss": d_loss}, prog_bar=True)

    def configure_optimizers(self) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
        lr = self.hparams.lr
        return (
            torch.optim.Adam(self.generator.parameters(), lr=lr, betas=(0.5, 0.999)),
            torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=(0.5, 0.999)),
        )
