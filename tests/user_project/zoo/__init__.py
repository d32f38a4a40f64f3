"""Real-world LightningModule shapes, written here in the style of popular open-source projects (a
Hydra project template, Lightning's own examples), not perfkit's: every perfkit command must run them.

- :mod:`zoo.template`: ``net: nn.Module`` plus optimizer/scheduler partials in ``save_hyperparameters``,
  ``configure_optimizers`` reading ``self.trainer``, a datamodule with ``data_dir`` and a ``Tuple`` split;
- :mod:`zoo.gan`: manual optimization, two optimizers, no ``validation_step``/``test_step``;
- :mod:`zoo.autoencoder`: ``(x, _)`` batches flattened in ``training_step``, its own datamodule (batch 32),
  ``val_loss`` (lower is better);
- :mod:`zoo.lm`: no ``forward``, dict batches of token tensors, the network in ``self.model``, its own
  datamodule (batch 20), no ``test_step``.
"""
