"""The use road: a method's predictions on your own files, one row per input, in input order.

``zoo predict`` (``zoo.cli.predict``) and ``ZooModule.predict_images`` / ``ZooModule.compare`` share this
module; it takes any model with the ZooModule's prediction interface and imports no command line. Inputs need
no labels; every input gets a row, and an input that cannot be read gets its reason in the ``error``
column (or, with ``skip_bad_images=False``, stops the run with its path).

The columns are the task's prediction schema in units a person reads, as the task writes them
(``Task.readable``, ``Task.first_columns``; each task module's docstring lists its own): a binary task's
score, decision, verdict and threshold, with the score and threshold as probabilities and their logits in
``logit`` and ``threshold_logit`` where the score is a logit (fake detection); copy detection's level,
exact_copy, level_argmax and level_expected, pdf_0 .. pdf_5 and similarity. Any other prediction a method
returns is written too. A task whose ``inputs`` are pairs scores (generated, real) pairs, the others images.

Example:
    zoo predict --ckpt_path runs/fake/zoo --inputs my_images/ --output predictions.csv
    zoo predict --ckpt_path pdf_embedding.exponential_drep --pairs pairs.csv --output levels.parquet
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from zoo.errors import ZooError

if TYPE_CHECKING:
    from zoo.data.images import FolderImages

OUTPUT_FORMATS = (".csv", ".jsonl", ".parquet")
PAIR_COLUMNS = ("generated", "real")


@dataclass(frozen=True)
class Item:
    """One input: an image, or a generated/real pair; each source is a path or a PIL image."""

    names: tuple[str, ...]
    sources: tuple[Any, ...]
    error: str | None = None  # known unreadable before decoding (a missing file, a broken link)
    caption: str | None = None


# ------------------------------------------------------------------------------------------ inputs
def __getattr__(name: str) -> Any:
    # the one rule of which files are images lives in zoo.data.images, imported on first use so that
    # `zoo predict --help` does not import the datamodules (and Lightning) with it
    if name in ("FolderImages", "image_files", "image_suffixes"):
        from zoo.data import images

        return getattr(images, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _is_image(value: Any) -> bool:
    return hasattr(value, "convert") and hasattr(value, "size") and not isinstance(value, str | Path)


def expand(spec: str | Path, skips: FolderImages | None = None) -> list[Item]:
    """The images a file, folder (recursive) or glob names, sorted; broken links are items with an error.

    Folders and globs follow ``image_files``' rule; what they skip is counted in one line on stderr, and added
    to ``skips`` when given (for a command's summary line).
    """
    from zoo.data.images import FolderImages, image_files, image_suffixes

    text = os.fspath(spec)
    path = Path(text)
    if not path.is_dir() and (path.exists() or path.is_symlink() or not glob.has_magic(text)):
        return [_item(path)]  # a file named on purpose is scored (or reported) whatever its suffix
    if path.is_dir():
        found, what = image_files(path), f"folder {_printable(path)}"
    else:
        found, what = FolderImages([], [], [], []), f"glob {text!r}"
        suffixes = image_suffixes()
        for match in sorted(Path(p) for p in glob.glob(text, recursive=True)):
            if match.is_dir():
                inner = image_files(match)
                for mine, theirs in zip(vars(found).values(), vars(inner).values(), strict=True):
                    mine += theirs
            elif match.name.startswith(".") or any(part.startswith(".") for part in match.parent.parts
                                                   if part not in (".", "..")):
                found.hidden.append(match)
            elif match.suffix.lower() not in suffixes:
                found.others.append(match)
            else:
                (found.images if match.is_file() else found.broken).append(match)
    items = [_item(p) for p in sorted(found.images + found.broken)]
    if skips is not None:
        skips.hidden += found.hidden
        skips.others += found.others
    if found.skipped():
        from zoo.data.base import report

        report(f"{what}: skipped {found.skipped()} ({_printable((found.hidden + found.others)[0])} ...)")
    if not items:
        raise ZooError(f"{what} holds no images{' (skipped ' + found.skipped() + ')' if found.skipped() else ''}: "
                       "an image is a file, not hidden, with an extension PIL decodes (.png, .jpg, .webp, ...)")
    return items


def _item(path: Path) -> Item:
    name = _printable(path)
    if path.is_symlink() and not path.exists():
        return Item((name,), (path,), error=f"{name}: broken or looping symbolic link")
    if not path.exists():
        return Item((name,), (path,), error=f"{name}: file not found")
    if path.is_dir():
        return Item((name,), (path,), error=f"{name}: folder cannot be read (no permission, a link loop, or "
                    "reached twice through links)")
    return Item((name,), (path,))


def _printable(path: Path) -> str:
    # a file name that is not UTF-8 stays readable and writable (its bytes shown as escapes)
    return os.fsencode(path).decode("utf-8", errors="backslashreplace")


def image_items(inputs: Any) -> list[Item]:
    """Items of paths, folders, globs or PIL images (one, or a list of them)."""
    values = inputs if isinstance(inputs, list | tuple) else [inputs]
    items: list[Item] = []
    for i, value in enumerate(values):
        if _is_image(value):
            items.append(Item((f"<image {i}>",), (value,)))
        else:
            items += expand(value)
    if not items:
        raise ZooError("no images were given")
    return items


def pair_items(generated: Any, real: Any) -> list[Item]:
    """Pairs of ``generated`` and ``real`` (a path or PIL image each, or two lists of the same length)."""
    gen = list(generated) if isinstance(generated, list | tuple) else [generated]
    ref = list(real) if isinstance(real, list | tuple) else [real]
    if len(gen) != len(ref):
        raise ZooError(f"{len(gen)} generated images against {len(ref)} real ones: give one real image per generated")
    items = []
    for i, (g, r) in enumerate(zip(gen, ref, strict=True)):
        names = tuple(f"<{what} {i}>" if _is_image(v) else _printable(Path(v)) for what, v in
                      (("generated", g), ("real", r)))
        missing = [n for n, v in zip(names, (g, r), strict=True) if not _is_image(v) and not Path(v).is_file()]
        items.append(Item(names, (g, r), error=f"{missing[0]}: file not found" if missing else None))
    return items


def read_pairs(csv_path: str | Path) -> list[Item]:
    """Pairs listed in a CSV with the columns ``generated,real`` (paths relative to the CSV)."""
    import pandas as pd

    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise ZooError(f"pairs file {csv_path} not found")
    try:
        frame = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise ZooError(f"{csv_path}: not a readable CSV ({str(err).splitlines()[0]})") from err
    missing = [c for c in PAIR_COLUMNS if c not in frame.columns]
    if missing:
        raise ZooError(f"{csv_path}: missing column(s) {', '.join(map(repr, missing))}; a pairs file has the "
                       f"columns generated,real (found: {', '.join(frame.columns) or 'none'})")
    if frame.empty:
        raise ZooError(f"{csv_path} lists no pairs")
    items = []
    for row, record in enumerate(frame.to_dict("records"), start=2):  # row 1 is the header
        paths = tuple(csv_path.parent / record[c] if record[c] else None for c in PAIR_COLUMNS)
        names = tuple(_printable(p) if p is not None else "" for p in paths)
        error = None
        for column, path in zip(PAIR_COLUMNS, paths, strict=True):
            if path is None:
                error = error or f"{csv_path} row {row}: no {column} image"
            elif not path.is_file():
                error = error or f"{csv_path} row {row}: {column} image {_printable(path)} not found"
        items.append(Item(names, paths, error=error))
    return items


def read_captions(csv_path: str | Path) -> dict[str, str]:
    """Captions from a CSV with the columns ``file,caption`` (files relative to the CSV)."""
    import pandas as pd

    csv_path = Path(csv_path)
    try:
        frame = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise ZooError(f"{csv_path}: not a readable captions CSV ({str(err).splitlines()[0]})") from err
    for column in ("file", "caption"):
        if column not in frame.columns:
            raise ZooError(f"{csv_path}: missing column {column!r}; a captions file has the columns file,caption")
    try:
        return {_printable((csv_path.parent / f).resolve()): c for f, c in zip(frame["file"], frame["caption"],
                                                                              strict=True)}
    except ValueError as err:  # a file name with a NUL byte
        raise ZooError(f"{csv_path}: a file name is not a path ({err})") from err


# ------------------------------------------------------------------------------------------ scoring
class _Inputs(torch.utils.data.Dataset):
    """Decodes and pre-processes items; a failure is returned as the item's error, never raised."""

    def __init__(self, items: Sequence[Item], transform: Callable[[Any], Tensor], limits: Any) -> None:
        self.items, self.transform, self.limits = items, transform, limits

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[int, list[Tensor] | None, str | None]:
        from zoo.data.images import open_image, to_rgb

        item = self.items[index]
        if item.error:
            return index, None, item.error
        try:
            tensors = []
            for name, source in zip(item.names, item.sources, strict=True):
                image = to_rgb(source) if _is_image(source) else open_image(source, name, self.limits)
                tensors.append(self.transform(image))
            return index, tensors, None
        except ZooError as err:
            return index, None, str(err)
        except Exception as err:  # noqa: BLE001 - a transform's failure on one image is that image's row
            return index, None, f"{item.names[0]}: {type(err).__name__}: {err}"


def predict(
    model: Any,
    items: Sequence[Item],
    batch_size: int = 8,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    skip_bad_images: bool = True,
    progress: bool = False,
) -> Any:
    """Score ``items`` with ``model``: a pandas DataFrame, one row per item, in order (see the module doc).

    Raises:
        ZooError: ``batch_size`` or ``num_workers`` is not a whole number in range, the inputs do not fit the
            model's task, or, with ``skip_bad_images=False``, an input cannot be read.
    """
    import pandas as pd

    from zoo.data.base import default_transform
    from zoo.data.images import ImageLimits

    for name, value, least in (("batch_size", batch_size, 1), ("num_workers", num_workers, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:  # as zoo predict checks them
            raise ZooError(f"{name}={value!r}: expected a whole number of at least {least}")
    task = model.task_spec
    pairs = task.inputs == "pairs"
    width = {len(item.sources) for item in items}
    if pairs and width != {2}:
        raise ZooError(f"{type(model).__name__} is a {task.name.replace('_', '-')} method: it scores pairs "
                       "(--pairs pairs.csv with "
                       "the columns generated,real, or --inputs GENERATED REAL)")
    if not pairs and width != {1}:
        raise ZooError(f"{type(model).__name__} is a {task.name} method: it scores images (--inputs), not pairs")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = model.to(device).eval()
    transform = model.image_transform() or default_transform(224)
    loader = torch.utils.data.DataLoader(
        _Inputs(items, transform, ImageLimits()), batch_size=batch_size, num_workers=num_workers,
        collate_fn=list, shuffle=False)
    rows: list[dict[str, Any]] = [{} for _ in items]
    bar = _progress(len(items)) if progress else None
    try:
        for samples in loader:
            good = [(i, t) for i, t, err in samples if err is None]
            for i, _, err in samples:
                if err is not None:
                    if not skip_bad_images:
                        raise ZooError(f"{err} (skip_bad_images is off)")
                    rows[i]["error"] = err
            if good:
                _score(model, items, good, rows, pairs, device)
            if bar is not None:
                bar.advance(bar.task_ids[0], len(samples))
    finally:
        if bar is not None:
            bar.stop()
    frame = pd.DataFrame([{**_input_columns(item, pairs), **row} for item, row in zip(items, rows, strict=True)])
    if "error" not in frame.columns:
        frame["error"] = None
    if getattr(model, "untrained", False):  # said in every row, so that no row can be read as a verdict
        frame.insert(frame.columns.get_loc("error"), "untrained", True)
    if not model.is_calibrated():  # a decision at a default threshold (or an unfitted level map) is no verdict
        for column in ("decision", "verdict"):
            if column in frame.columns:
                frame[column] = None
        frame.insert(frame.columns.get_loc("error"), "uncalibrated", True)
    # integers (decisions, argmax levels) stay integers beside the empty cells of failed rows
    integers = {k for row in rows for k, v in row.items() if isinstance(v, int) and not isinstance(v, bool)}
    for column in integers:
        frame[column] = frame[column].astype("Int64")
    return frame


def _score(model: Any, items: Sequence[Item], good: list[tuple[int, list[Tensor]]], rows: list[dict[str, Any]],
           pairs: bool, device: torch.device) -> None:
    index = [i for i, _ in good]
    batch: dict[str, Any] = {"id": [items[i].names[0] for i in index]}
    if pairs:
        batch["generated"] = torch.stack([t[0] for _, t in good]).to(device)
        batch["real"] = torch.stack([t[1] for _, t in good]).to(device)
    else:
        batch["image"] = torch.stack([t[0] for _, t in good]).to(device)
        captions = [items[i].caption for i in index]
        if any(c is not None for c in captions):
            batch["caption"] = [c or "" for c in captions]
    with torch.no_grad():
        pred = model.predictions(batch)
    for j, record in enumerate(readable(model, pred, len(index))):
        rows[index[j]].update(record)


def readable(model: Any, pred: dict[str, Any], size: int) -> list[dict[str, Any]]:
    """One record per sample of a prediction, in the units the module docstring lists."""
    task = model.task_spec
    columns: dict[str, list[Any]] = {}
    for key, value in pred.items():
        if isinstance(value, Tensor):
            value = value.detach().cpu()
            value = value.float() if value.is_floating_point() else value
            if value.dim() == 1:
                columns[key] = value.tolist()
            elif value.dim() == 2:
                for j in range(value.shape[1]):
                    columns[f"{key}_{j}"] = value[:, j].tolist()
        else:
            columns[key] = list(value)
    if task.readable is not None:  # the task's own columns: a verdict in its words, levels read from a PDF, ...
        task.readable(model, pred, columns, size)
    first = task.first_columns
    order = [*(c for c in first if c in columns), *(c for c in columns if c not in first)]
    return [{c: columns[c][j] for c in order} for j in range(size)]


def _input_columns(item: Item, pairs: bool) -> dict[str, str]:
    if pairs:
        return dict(zip(PAIR_COLUMNS, item.names, strict=True))
    return {"path": item.names[0]}


def _progress(total: int) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   console=Console(stderr=True), transient=True)
    bar.add_task("scoring", total=total)
    bar.start()
    return bar


def write_predictions(frame: Any, output: str | Path) -> Path:
    """Write ``frame`` as CSV, JSON lines or parquet by ``output``'s extension, atomically."""
    output = Path(output)
    suffix = output.suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise ZooError(f"--output {output}: the format follows the extension; use one of {', '.join(OUTPUT_FORMATS)}")
    tmp = output.with_name(f".{output.name}.tmp")
    if "error" in frame.columns:  # one order in every format: the error column last
        frame = frame[[c for c in frame.columns if c != "error"] + ["error"]]
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        if suffix == ".csv":
            frame.to_csv(tmp, index=False, float_format="%.6g")  # float32 precision, not float64 noise
        elif suffix == ".jsonl":
            records = frame.astype(object).where(frame.notna(), None).to_dict("records")
            tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
        else:
            frame.to_parquet(tmp, index=False)
        tmp.replace(output)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise ZooError(f"cannot write {output}: {err.strerror or err}") from err
    return output


# ------------------------------------------------------------------------------------------ the model
def load_model(ckpt_path: str | None, name: str | None, variant: str | None, overrides: dict[str, Any]) -> Any:
    """The method to predict with: a zoo checkpoint, or a registered method by name (and variant)."""
    from zoo import registry
    from zoo.checkpoint import build_method, load_folder, newest_export

    if ckpt_path is not None:
        if variant is not None:
            raise ZooError("--variant goes with --model; a checkpoint carries its own arguments")
        if ckpt_path.endswith(".ckpt") and Path(ckpt_path).is_file():
            raise ZooError(f"{ckpt_path} is a Lightning checkpoint: convert it first with "
                           f"`zoo convert {ckpt_path} <folder>`, then predict with --ckpt_path <folder>")
        from zoo import hub

        folder = Path(ckpt_path)
        return load_folder(newest_export(folder) if folder.is_dir() else hub.resolve(ckpt_path), **overrides)
    cls = registry.methods.load(name)
    if variant is not None and variant not in cls.variants:
        raise ZooError(f"{name} has no variant {variant!r}; its variants are {', '.join(cls.variants) or 'none'}")
    init_args = {**(cls.variants[variant] if variant else {}), **overrides}
    return build_method({"name": name, "init_args": init_args}, "the command line", pretrained_download=True).eval()


def check_untrained(name: str | None, variant: str | None, untrained: bool) -> None:
    """Refuse an unfitted method that trains unless ``--untrained`` says it is on purpose."""
    if name is None:
        if untrained:
            raise ZooError("--untrained goes with --model: a checkpoint holds trained weights")
        return
    from zoo import registry
    from zoo.tasks import get_task

    cls = registry.methods.load(name)
    if not cls.trains:
        if untrained:
            raise ZooError(f"{name} has nothing to train: drop --untrained")
        return
    if not untrained:
        fit = f"zoo fit --model {name}{f' --variant {variant}' if variant else ''} --data " + (
            get_task(cls.task).mini_datamodule if variant == "tiny" else "<your datamodule>")
        raise ZooError(f"{name} trains and --model builds it unfitted: fit it first ({fit}) and predict with "
                       "--ckpt_path <its run folder>, or pass --untrained to score with its initial weights on purpose")


def with_caption(item: Item, captions: dict[str, str]) -> Item:
    """``item`` with its caption from ``captions`` (``read_captions``), or with an error where it has none."""
    from dataclasses import replace

    key = _printable(Path(item.sources[0]).resolve()) if not _is_image(item.sources[0]) else ""
    if key not in captions:
        return replace(item, error=item.error or f"{item.names[0]}: no caption in the captions file")
    if not captions[key].strip():
        return replace(item, error=item.error or f"{item.names[0]}: empty caption in the captions file")
    return replace(item, caption=captions[key])
