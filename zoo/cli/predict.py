"""``zoo predict``: the command line of the use road (``zoo.predict``), options parsed, then the library.

Example:
    zoo predict --ckpt_path runs/fake/zoo --inputs my_images/ --output predictions.csv
    zoo predict --ckpt_path pdf_embedding.exponential_drep --pairs pairs.csv --output levels.parquet
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any, NoReturn

import torch

from zoo.errors import ZooError
from zoo.predict import (
    OUTPUT_FORMATS,
    check_untrained,
    expand,
    load_model,
    pair_items,
    predict,
    read_captions,
    read_pairs,
    with_caption,
    write_predictions,
)


def _boolean(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _positive(text: str) -> int:
    number = _whole(text)
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text}")
    return number


def _count(text: str) -> int:
    number = _whole(text)
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {text}")
    return number


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _device(text: str) -> torch.device:
    """A device this machine has: ``cpu``, ``cuda``, ``cuda:N`` (an existing GPU) or ``mps``."""
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device; use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            raise argparse.ArgumentTypeError(f"{text}: this machine has no CUDA GPU that torch can use; use cpu")
        if device.index is not None and device.index >= count:
            raise argparse.ArgumentTypeError(f"{text}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise argparse.ArgumentTypeError(f"{text}: this machine has no MPS device; use cpu")
    elif device.type != "cpu":
        raise argparse.ArgumentTypeError(f"{text}: zoo predict runs on cpu, cuda, cuda:N or mps")
    return device


class _Parser(argparse.ArgumentParser):
    """A parser whose refusals are one ``zoo: error:`` line (a ZooError), not usage and a second line."""

    def error(self, message: str) -> NoReturn:
        raise ZooError(f"{message} (see {self.prog} --help)")


def model_overrides(rest: list[str]) -> dict[str, Any]:
    """``--model.<arg> VALUE`` pairs of the command line as init arguments (values read as YAML scalars)."""
    import yaml

    out: dict[str, Any] = {}
    i = 0
    while i < len(rest):
        arg = rest[i]
        if not arg.startswith("--model."):
            raise ZooError(f"unrecognized argument {arg!r} (see zoo predict --help)")
        key, sep, value = arg[len("--model."):].partition("=")
        if not sep:
            if i + 1 >= len(rest):
                raise ZooError(f"{arg} needs a value")
            value, i = rest[i + 1], i + 1
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            out[key] = value
        i += 1
    return out


def cmd_predict(argv: list[str]) -> int:
    """Score your own images (--inputs) or pairs (--pairs) with a checkpoint; one row per input."""
    parser = _Parser(
        prog="zoo predict", allow_abbrev=False,
        description="Score your own images or pairs; writes one row per input, in input order. "
        "Override a method argument with --model.<arg> VALUE (e.g. --model.finetuned path/to/model).")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--ckpt_path", help="a zoo checkpoint folder, hf-hub:org/name, or a short name of "
                       "`zoo list --pretrained`")
    which.add_argument("--model", help="a registered method by name (built from its arguments, seeded); a method "
                       "that trains is refused unless --untrained")
    parser.add_argument("--variant", help="a named variant of --model (e.g. tiny)")
    parser.add_argument("--untrained", action="store_true",
                        help="with --model: score with a method that trains, unfitted, on purpose; every row then "
                        "says untrained = true")
    given = parser.add_mutually_exclusive_group(required=True)
    given.add_argument("--inputs", nargs="+", help="image files, folders or globs (copy detection: GENERATED REAL)")
    given.add_argument("--pairs", help="copy detection: a CSV with the columns generated,real (relative paths)")
    parser.add_argument("--output", default="predictions.csv", help="predictions file: .csv, .jsonl or .parquet")
    parser.add_argument("--captions", help="a CSV with the columns file,caption, for methods that read captions")
    parser.add_argument("--artifacts", help="folder for the pictures a method writes (copyright); "
                        "default: <output>_artifacts beside the output")
    parser.add_argument("--batch_size", type=_positive, default=8)
    parser.add_argument("--num_workers", type=_count, default=0, help="image-decoding worker processes")
    parser.add_argument("--device", type=_device, default=None,
                        help="cpu, cuda, cuda:1, mps (default: cuda when available)")
    parser.add_argument("--skip_bad_images", type=_boolean, default=True,
                        help="true (default): an unreadable input gets a row with an error; false: stop the run")
    args, rest = parser.parse_known_args(argv)
    overrides = model_overrides(rest)
    output = Path(args.output)
    if output.suffix.lower() not in OUTPUT_FORMATS:
        raise ZooError(f"--output {output}: the format follows the extension; use one of {', '.join(OUTPUT_FORMATS)}")
    from zoo.module import seeded

    check_untrained(args.model, args.variant, args.untrained)
    with seeded() if args.model else contextlib.nullcontext():  # the same command builds the same model
        model = load_model(args.ckpt_path, args.model, args.variant, overrides)
    if args.untrained:
        model.untrained = True
        print(f"zoo predict: {args.model} is not trained (--untrained): its scores come from its initial weights "
              "and say nothing about your images; every row says untrained = true", file=sys.stderr)
    task = model.task_spec
    from zoo.data.images import FolderImages

    skips = FolderImages([], [], [], [])  # what the folders and globs of --inputs left out, for the last line
    if args.pairs is not None:
        if task.inputs != "pairs":
            raise ZooError(f"{type(model).__name__} is a {task.name} method: give its images with --inputs, not "
                           "--pairs")
        items = read_pairs(args.pairs)
    elif task.inputs == "pairs":
        if len(args.inputs) != 2:
            raise ZooError(f"{type(model).__name__} is a {task.name.replace('_', '-')} method: give --pairs pairs.csv "
                           "(columns "
                           "generated,real), or exactly two --inputs GENERATED REAL")
        items = pair_items(*args.inputs)
    else:
        items = [item for spec in args.inputs for item in expand(spec, skips)]
    if args.captions:
        captions = read_captions(args.captions)
        items = [with_caption(item, captions) for item in items]
    model.artifact_root = Path(args.artifacts) if args.artifacts else output.with_name(output.stem + "_artifacts")
    frame = predict(model, items, batch_size=args.batch_size, num_workers=args.num_workers, device=args.device,
                    skip_bad_images=args.skip_bad_images, progress=sys.stderr.isatty())
    write_predictions(frame, output)
    failed = int(frame["error"].notna().sum())
    skipped = f"; skipped {skips.skipped()}" if skips.skipped() else ""
    print(f"zoo predict: {type(model).__name__} scored {len(frame) - failed} of {len(frame)} inputs, {failed} failed"
          f"{' (see the error column)' if failed else ''}{skipped}{_threshold_note(model)}; wrote {output}",
          file=sys.stderr)
    return 0


def _threshold_note(model: Any) -> str:
    if model.is_calibrated():
        return ""
    said = ("the decision threshold is the method's default, so the rows state no decision" if model.task_spec.binary
            else "the levels come from the unfitted default map")
    return f"; {said} and say uncalibrated = true: fit or validate it first"
