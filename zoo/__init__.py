"""provenance-zoo: models for the provenance of images in the diffusion era."""

from zoo.errors import ZooError

__version__ = "0.1.0"
__all__ = ["ZooError", "__version__"]
