"""Reading images safely: every failure names the file, every mode becomes 8-bit RGB."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from zoo.errors import ZooError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
DEFAULT_MAX_PIXELS = 50_000_000  # about 7000 x 7000; larger files are refused, not decoded


@dataclass(frozen=True)
class ImageLimits:
    """Limits applied when an image is opened."""

    max_pixels: int = DEFAULT_MAX_PIXELS


def open_image(source: str | Path | bytes, name: str | None = None, limits: ImageLimits | None = None) -> Image.Image:
    """Decode ``source`` (a path or encoded bytes) into an 8-bit RGB image.

    Grayscale, RGBA, palette, CMYK and 16/32-bit images are converted; alpha is dropped. ``name`` is
    what error messages call the image (default: the path).

    Raises:
        ZooError: the file is missing, empty, truncated, corrupt, not an image, or over the pixel limit.
    """
    limits = limits or ImageLimits()
    label = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
    if isinstance(source, bytes):
        data = source
    else:
        path = Path(source)
        if path.is_symlink() and not path.exists():
            raise ZooError(f"{label}: broken or looping symbolic link")
        if not path.is_file():
            raise ZooError(f"{label}: image file not found")
        data = path.read_bytes()
    if not data:
        raise ZooError(f"{label}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > limits.max_pixels:
                raise ZooError(
                    f"{label}: {width}x{height} = {width * height} pixels is over the limit of "
                    f"{limits.max_pixels} (raise max_pixels to accept it)"
                )
            image.load()
    except ZooError:
        raise
    except Image.DecompressionBombError as err:
        raise ZooError(f"{label}: over PIL's pixel limit ({err})") from err
    except UnidentifiedImageError as err:
        raise ZooError(f"{label}: not an image file PIL can read") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ZooError(f"{label}: truncated or corrupt image ({err})") from err
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB, scaling high bit depths instead of clipping them."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        if image.mode == "F" and array.max() <= 1.0:
            top = 1.0
        array = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(array, mode="L").convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA")
    return image.convert("RGB")


def list_images(folder: Path) -> tuple[list[Path], list[Path]]:
    """Image files below ``folder`` (sorted) and the other files found there.

    A broken or looping symbolic link with an image's extension is listed as an image, so that reading it
    fails with its path (or, with ``skip_bad_images``, is counted and reported) instead of vanishing.
    """
    images, others = [], []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() or (p.is_symlink() and not p.exists())):
        if path.name.startswith("."):
            others.append(path)
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            images.append(path)
        elif path.name != "captions.csv":
            others.append(path)
    return images, others
