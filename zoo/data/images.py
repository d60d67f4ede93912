"""Reading images safely (every failure names the file, every mode becomes 8-bit RGB), and the one rule of which
files in a folder are images, that every command and datamodule follows."""

from __future__ import annotations

import functools
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from zoo.errors import ZooError

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


@functools.cache
def image_suffixes() -> frozenset[str]:
    """The lower-case extensions of every format this PIL decodes (``.jfif``, and ``.avif`` where PIL has it).

    Formats PIL only identifies (its stubs, MPEG) are left out, and EPS when Ghostscript is missing.
    """
    from PIL import EpsImagePlugin, Image, ImageFile

    Image.init()
    usable = {fmt for fmt, (factory, _) in Image.OPEN.items()
              if not (isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile))} - {"MPEG"}
    if not EpsImagePlugin.has_ghostscript():
        usable.discard("EPS")
    return frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in usable)


@dataclass
class FolderImages:
    """What ``image_files`` found below a folder: the images and every entry it skipped, by reason."""

    images: list[Path]  # image files by extension, sorted; a broken link among them is in ``broken`` instead
    hidden: list[Path]  # hidden files and hidden folders (a name starting with "."), not entered
    others: list[Path]  # files whose extension is not an image format PIL decodes
    broken: list[Path]  # broken or looping links, unreadable folders, a folder reached a second time

    def skipped(self) -> str:
        """The skips counted for a summary line (``"2 hidden, 1 not an image"``), or ``""`` when none."""
        parts = [f"{len(self.hidden)} hidden" if self.hidden else "",
                 f"{len(self.others)} not an image" if len(self.others) == 1 else
                 f"{len(self.others)} not images" if self.others else ""]
        return ", ".join(p for p in parts if p)


def image_files(root: Path) -> FolderImages:
    """The image files below ``root``, by the one rule every command follows.

    Hidden files and hidden folders are skipped (and counted); a file is an image when its extension is one
    of ``image_suffixes()``, in any case. Links are followed; a folder reached twice (a link loop, or two
    links to one folder) is reported as broken rather than listed again.
    """
    found = FolderImages([], [], [], [])
    visited: set[str] = set()
    suffixes = image_suffixes()
    for folder, dirs, names in os.walk(root, followlinks=True, onerror=lambda err: found.broken.append(
            Path(err.filename))):
        real = os.path.realpath(folder)
        if real in visited:
            found.broken.append(Path(folder))
            dirs[:] = []
            continue
        visited.add(real)
        found.hidden += [Path(folder, d) for d in dirs if d.startswith(".")]
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in names:
            path = Path(folder, name)
            if name.startswith("."):
                found.hidden.append(path)
            elif path.suffix.lower() not in suffixes:
                found.others.append(path)
            elif not path.is_file():  # a link to nothing, to itself, or to something not a file
                found.broken.append(path)
            else:
                found.images.append(path)
    for entries in (found.images, found.hidden, found.others, found.broken):
        entries.sort()
    return found
