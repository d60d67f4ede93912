"""Datamodules for the users' own data layouts, and the mini suite built from scikit-image's photographs."""

from zoo.data.base import ZooDataModule
from zoo.data.images import ImageLimits, open_image

__all__ = ["ImageLimits", "ZooDataModule", "open_image"]
