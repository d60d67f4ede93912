"""Datamodules of the mini suite: the real-layout datamodules pointed at a freshly built mini set."""

from __future__ import annotations

from typing import Any

from zoo.data import mini
from zoo.data.copy_detection import DRepParquet
from zoo.data.folders import CopyrightFolders, FakeImageFolders


class MiniCopyDetection(DRepParquet):
    """Mini copy detection: 17 scikit-image photographs, pairs graded 0..5 by a ladder of transformations.

    Read through the D-Rep parquet reader. See ``zoo.data.mini.LADDER`` for what each level is.
    """

    description = "mini copy detection (scikit-image photographs, level ladder)"

    def __init__(self, root: str | None = None, batch_size: int = 16, image_size: int = 64, **kwargs: Any) -> None:
        folder = mini.ensure("copy_detection", root) / "drep"
        super().__init__(
            train=str(folder / "train.parquet"), val=str(folder / "val.parquet"), test=str(folder / "test.parquet"),
            batch_size=batch_size, image_size=image_size, **kwargs,
        )


class MiniFakeDetection(FakeImageFolders):
    """Mini fake detection: native-scale photograph windows against two stand-ins and a learned generator.

    ``generators`` picks the training generators (default all of ``zoo.data.mini.FAKE_GENERATORS``) and
    ``test_generators`` the test ones, for the cross-generator matrix.
    """

    description = "mini fake detection (real vs stand-ins 'upsampler', 'smoother' and a learned 'autoencoder')"

    def __init__(self, root: str | None = None, generators: list[str] | None = None,
                 test_generators: list[str] | None = None, batch_size: int = 16, image_size: int = 64,
                 **kwargs: Any) -> None:
        super().__init__(
            str(mini.ensure("fake_detection", root)), generators=generators or list(mini.FAKE_GENERATORS),
            test_generators=test_generators, batch_size=batch_size, image_size=image_size, **kwargs,
        )


class MiniCopyright(CopyrightFolders):
    """Mini copyright: regions of four photographs as members and hold-outs, and a pretraining set."""

    description = "mini copyright (members vs hold-outs of four photographs)"

    def __init__(self, root: str | None = None, batch_size: int = 8, image_size: int = 32, **kwargs: Any) -> None:
        super().__init__(str(mini.ensure("copyright", root)), batch_size=batch_size, image_size=image_size, **kwargs)
