"""A language model shaped like Lightning's transformer example: no ``forward``, the network in
``self.model``, dict batches of token ids, its own datamodule; no ``test_step``."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset


class TinyTransformer(nn.Module):
    def __init__(self, vocab: int, dim: int = 32, heads: int = 4, layers: int = 1) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=64, batch_first=True, dropout=0.0)
        self.encoder = nn.TransformerEncoder(layer, layers)
        self.head = nn.Linear(dim, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        size = tokens.size(1)
        mask = torch.triu(torch.full((size, size), float("-inf"), device=tokens.device), diagonal=1)
        return self.head(self.encoder(self.embedding(tokens), mask=mask, is_causal=True))


class Sequences(Dataset[dict[str, torch.Tensor]]):
    """Counting sequences modulo ``vocab``: a pattern a small model learns in a few steps."""

    def __init__(self, count: int, length: int, vocab: int, seed: int) -> None:
        starts = torch.randint(0, vocab, (count, 1), generator=torch.Generator().manual_seed(seed))
        self.tokens = (starts + torch.arange(length + 1)) % vocab

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        row = self.tokens[index]
        return {"input_ids": row[:-1], "labels": row[1:]}


class CountingData(L.LightningDataModule):
    def __init__(self, batch_size: int = 20, length: int = 12, vocab: int = 50) -> None:
        super().__init__()
        self.batch_size, self.length, self.vocab = batch_size, length, vocab

    def setup(self, stage: str) -> None:
        self.train_set = Sequences(400, self.length, self.vocab, seed=0)
        self.val_set = Sequences(80, self.length, self.vocab, seed=1)

    def train_dataloader(self) -> DataLoader[Any]:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader[Any]:
        return DataLoader(self.val_set, batch_size=self.batch_size)


class LanguageModel(L.LightningModule):
    def __init__(self, vocab_size: int = 50, lr: float = 3e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = TinyTransformer(vocab_size)

    def _loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = self.model(batch["input_ids"])
        return nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten())

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.log("val_loss", self._loss(batch), prog_bar=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.model.parameters(), lr=self.hparams.lr)
