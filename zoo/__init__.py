"""provenance-zoo: models for the provenance of images in the diffusion era."""

from importlib.metadata import PackageNotFoundError, version

from zoo.errors import ZooError

try:
    __version__ = version("provenance-zoo")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
__all__ = ["ZooError", "__version__"]
