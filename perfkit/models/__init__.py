"""perfkit's networks and the LightningModule that trains them."""

from perfkit.models.classifier import ImageClassifier
from perfkit.models.nets import MLP, SmallCNN, resnet18, vit

__all__ = ["MLP", "ImageClassifier", "SmallCNN", "resnet18", "vit"]
