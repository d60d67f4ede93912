"""The small CPU gallery of ``configs/gallery/cpu_example.yaml``: scikit-image photographs, written offline.

``python -m zoo.gallery.example data/cpu_gallery`` writes ``gallery/`` (the photographs that scikit-image
ships inside its wheel, no download) and ``generated/``, a stand-in generator's output: an identical copy
and a lossless re-encode of one gallery photograph (exact copies), a JPEG q90 re-encode, a half-size copy
and a crop of others (edited copies, not exact), and a photograph the gallery lacks.
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

from zoo.data import mini

GALLERY = ("astronaut", "camera", "chelsea", "coffee", "coins", "moon", "clock", "brick")
SIDE = 128  # pixels: small enough for seconds on a CPU


def write_example(root: str | Path) -> dict[str, Path]:
    """Write the example's ``gallery/`` and ``generated/`` folders under ``root``; their paths."""
    root = Path(root)
    gallery, generated = root / "gallery", root / "generated"
    gallery.mkdir(parents=True, exist_ok=True)
    generated.mkdir(parents=True, exist_ok=True)
    photos = {name: mini.photo(name).resize((SIDE, SIDE), Image.Resampling.BICUBIC) for name in GALLERY}
    for name, image in photos.items():
        image.save(gallery / f"{name}.png")
    (generated / "identical_astronaut.png").write_bytes((gallery / "astronaut.png").read_bytes())
    photos["chelsea"].save(generated / "lossless_chelsea.webp", lossless=True)
    photos["coffee"].save(generated / "jpeg90_coffee.jpg", quality=90)
    photos["camera"].resize((SIDE // 2, SIDE // 2), Image.Resampling.BICUBIC).save(generated / "half_camera.png")
    photos["coins"].crop((16, 16, 112, 112)).save(generated / "crop_coins.png")
    mini.photo("rocket").resize((SIDE, SIDE), Image.Resampling.BICUBIC).save(generated / "unrelated_rocket.png")
    return {"gallery": gallery, "generated": generated}


if __name__ == "__main__":
    folders = write_example(sys.argv[1] if len(sys.argv) > 1 else "data/cpu_gallery")
    print(f"wrote {folders['gallery']} and {folders['generated']}")
