"""``ZooDataModule``: the base of every datamodule, and the dataset classes they share."""

from __future__ import annotations

import io
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch
from PIL import Image
from rich.console import Console
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from zoo.data.images import DEFAULT_MAX_PIXELS, ImageLimits, open_image
from zoo.errors import ZooError

SPLITS = ("train", "val", "test")


def _jpeg75(image: Image.Image) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=75)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _half(image: Image.Image) -> Image.Image:
    return image.resize((max(1, image.width // 2), max(1, image.height // 2)), Image.Resampling.BICUBIC)


PERTURBATIONS: dict[str | None, Callable[[Image.Image], Image.Image] | None] = {
    None: None, "jpeg75": _jpeg75, "half": _half,
}
_console = Console(stderr=True, soft_wrap=True)


def report(message: str) -> None:
    """Tell the user about data that was left out (stderr, never wrapped, so paths stay whole)."""
    _console.print(message, markup=False, highlight=False)


def read_csv(path: Path) -> Any:
    """A CSV of strings (empty cells stay empty strings), or a ZooError naming the file and the problem."""
    import pandas as pd

    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as err:
        raise ZooError(f"{path}: not a readable CSV ({str(err).strip().splitlines()[0]})") from err
    except OSError as err:
        raise ZooError(f"{path}: cannot be read ({err.strerror or err})") from err


def default_transform(size: int) -> Callable[[Image.Image], Tensor]:
    """Plain resize to ``size`` x ``size`` and scaling to [0, 1]; used when a method gives none."""
    from torchvision.transforms import v2

    return v2.Compose(
        [v2.Resize((size, size), antialias=True), v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True)]
    )


@dataclass(frozen=True)
class ImageRecord:
    """One image of a binary task. ``data`` holds encoded bytes when the image has no file."""

    id: str
    label: int
    source: str
    path: str | None = None
    data: bytes | None = None
    caption: str | None = None


@dataclass(frozen=True)
class PairRecord:
    """One generated/real pair of copy detection; each image is a path or encoded bytes."""

    id: str
    level: int
    generated: str | bytes
    real: str | bytes


class ZooDataModule(pl.LightningDataModule):
    """Base of every datamodule: splits, loaders, the method's transform and the bad-image policy.

    Args:
        batch_size: images (or pairs) per batch.
        num_workers: DataLoader worker processes.
        image_size: the size of the default transform, when the method gives no transform of its own.
        max_pixels: images with more pixels are refused.
        skip_bad_images: False (default): the first unreadable image stops the run with its path (or its
            row). True: every image is checked at setup; missing, empty, truncated, corrupt or non-image
            files, broken links and empty parquet cells are left out, counted and printed.
        seed: seed of any split the datamodule draws itself.
        perturb: degrade the test images as images suffer in the wild, for robustness rows:
            ``jpeg75`` (JPEG re-compression at quality 75) or ``half`` (resized to half size). The
            train and validation images are left as they are.
        max_samples: keep at most this many samples of each split, a draw seeded by ``seed`` in the split's
            order (a quick run of a config on a slice of its data); None keeps them all.
    """

    task: ClassVar[str] = ""
    description: ClassVar[str] = ""

    def __init__(
        self,
        batch_size: int = 32,
        num_workers: int = 0,
        image_size: int = 224,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        skip_bad_images: bool = False,
        seed: int = 0,
        perturb: str | None = None,
        max_samples: int | None = None,
    ) -> None:
        super().__init__()
        for name, value, least in (("batch_size", batch_size, 1), ("num_workers", num_workers, 0),
                                   ("image_size", image_size, 1), ("max_pixels", max_pixels, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ZooError(f"{type(self).__name__}: {name}={value!r}: expected a whole number of at least {least}")
        if max_samples is not None and max_samples < 1:
            raise ZooError(f"max_samples={max_samples}: keep at least one sample of each split, or None for all")
        if perturb not in PERTURBATIONS:
            raise ZooError(f"perturb={perturb!r}: choose one of {', '.join(map(str, PERTURBATIONS))}")
        self.perturb = perturb
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.limits = ImageLimits(max_pixels=max_pixels)
        self.skip_bad_images = skip_bad_images
        self.seed = seed
        self.max_samples = max_samples
        self.transform: Callable[[Image.Image], Tensor] = default_transform(image_size)
        self.splits: dict[str, list[Any]] = {}
        self.skipped: dict[str, list[tuple[str, str]]] = {}

    # a subclass returns the records of a split (an empty list when the split does not exist)
    def load_split(self, split: str) -> list[Any]:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        for split in SPLITS:
            records = self.load_split(split)
            if self.skip_bad_images:
                records = self._drop_unreadable(split, records)
            if self.max_samples is not None and len(records) > self.max_samples:
                kept = sorted(random.Random(self.seed).sample(range(len(records)), self.max_samples))
                records = [records[i] for i in kept]
            self.splits[split] = records

    def _drop_unreadable(self, split: str, records: list[Any]) -> list[Any]:
        kept, skipped = [], []
        for record in records:
            try:
                for source, name in _sources(record):
                    open_image(source, name, self.limits)
                kept.append(record)
            except ZooError as err:
                skipped.append((record.id, str(err)))
        if skipped:
            self.skipped[split] = skipped
            report(f"{type(self).__name__}: skipped {len(skipped)} of {len(records)} {split} samples:")
            for _, reason in skipped:
                report(f"  {reason}")
        return kept

    def dataset(self, split: str) -> Dataset:
        self.setup()
        records = self.splits.get(split) or []
        if not records:
            raise ZooError(f"{type(self).__name__} has no {split} split")
        return RecordDataset(records, self, PERTURBATIONS[self.perturb] if split == "test" else None)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(
            self.dataset(split),
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(self.seed) if shuffle else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def sizes(self) -> dict[str, int]:
        """Number of samples of each split."""
        self.setup()
        return {split: len(self.splits.get(split) or []) for split in SPLITS}


def _sources(record: Any) -> list[tuple[str | bytes, str]]:
    if isinstance(record, PairRecord):
        return [
            (record.generated, f"{record.id} (generated)" if isinstance(record.generated, bytes) else record.generated),
            (record.real, f"{record.id} (real)" if isinstance(record.real, bytes) else record.real),
        ]
    if record.data is not None:
        return [(record.data, record.id)]
    return [(record.path, record.path)]


class RecordDataset(Dataset):
    """Turns records into samples of the task's batch contract, with the datamodule's current transform."""

    def __init__(self, records: Sequence[Any], owner: ZooDataModule,
                 perturb: Callable[[Image.Image], Image.Image] | None = None) -> None:
        self.records = records
        self.owner = owner
        self.perturb = perturb

    def __len__(self) -> int:
        return len(self.records)

    def _image(self, source: str | bytes, name: str) -> Tensor:
        image = open_image(source, name, self.owner.limits)
        if self.perturb is not None:
            image = self.perturb(image)
        return self.owner.transform(image)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        (first, first_name), *rest = _sources(record)
        if isinstance(record, PairRecord):
            second, second_name = rest[0]
            return {
                "generated": self._image(first, first_name),
                "real": self._image(second, second_name),
                "level": torch.tensor(record.level, dtype=torch.int64),
                "id": record.id,
            }
        sample = {
            "image": self._image(first, first_name),
            "label": torch.tensor(record.label, dtype=torch.int64),
            "id": record.id,
            "source": record.source,
        }
        if record.caption is not None:
            sample["caption"] = record.caption
        return sample
