"""The zoo checkpoint format: one folder, ``config.json`` + ``model.safetensors``, read and written here only.

``config.json`` holds ``{"name", "task", "init_args", "format_version"}``: the registry name of the method,
its task (informative: the class's own task is the one used), its constructor arguments as plain JSON, and
the version of this layout. ``model.safetensors`` holds the state dict, less the frozen pretrained weights a
method loads from a pinned reference (``reference_state_keys``). ``zoo fit`` writes the folder as
``<log dir>/zoo`` (``EXPORT_DIR``).

A checkpoint is data, never code: only a method registered in ``zoo.methods`` is built, by its registry name,
with ``init_args`` checked against its constructor's signature; nothing the file names is imported, and
weights are read without unpickling (safetensors, or ``torch.load(weights_only=True)`` for a Lightning
``.ckpt``).

Format versions (``FORMAT_VERSION`` is the newest this code reads and the one it writes):
    1: the layout above. A ``config.json`` without ``format_version`` (written by hand, or before the field
       was read) has this layout and is read as version 1. State keys added to version 1 later
       (``OPTIONAL_STATE_KEYS``, and a method's ``optional_state_keys``) may be missing from an older file;
       they load at their empty defaults.
A version newer than ``FORMAT_VERSION`` is refused with one line that says to upgrade, and one that is not a
whole number from 1 is refused too, whether it comes from a folder or from a Lightning ``.ckpt``.

Example:
    >>> model = load_folder(newest_export(Path("runs/pdf")))  # the newest export of a `zoo fit` run
    >>> convert_checkpoint("runs/pdf/lightning_logs/version_0/checkpoints/last.ckpt", "exports/pdf")
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from zoo import backbones
from zoo.errors import ZooError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FILES = (CONFIG_NAME, WEIGHTS_NAME)  # a checkpoint folder's files, config first
EXPORT_DIR = "zoo"  # the export folder in a run's log folder (``zoo fit``)
FORMAT_VERSION = 1
THRESHOLD_KEY = "threshold"  # the state key of a binary method's decision threshold
# state a checkpoint written before it existed lacks: loaded when present, left at its empty default when not
OPTIONAL_STATE_KEYS = frozenset({"val_score_counts", "val_score_quantiles"})
# the entry of a Lightning ``.ckpt`` that holds what config.json will (``ZooModule.on_save_checkpoint``)
CKPT_ENTRY = "zoo"


def load_folder(directory: str | Path, expect: type | None = None, *, trusted: Any = None,
                **overrides: Any) -> Any:
    """Build the method (a ZooModule) a ``save_pretrained`` folder describes and load its weights strictly.

    ``overrides`` replace init arguments of ``config.json`` (e.g. another fine-tuned model); their names and
    types are checked like the file's own, and a path among them, named by the caller, may lie outside the
    folder. ``trusted``: init arguments of the caller's own config (a benchmark reloading the export of a job
    it fitted), whose paths may do the same.
    """
    directory = Path(directory)
    config = read_config(directory / CONFIG_NAME)
    if overrides:
        config = {**config, "init_args": {**config["init_args"], **overrides}}
    method_class(config, str(directory / CONFIG_NAME), expect)  # a wrong name fails before anything is read
    state = _folder_weights(directory)
    # a path the config names (an encoder's weights file, a local-dir:) must lie inside this folder
    with backbones.from_checkpoint(directory, trusted=backbones.strings([overrides, trusted or {}])):
        model = build_method(config, str(directory / CONFIG_NAME), expect=expect)
        load_checkpoint_state(model, state, str(directory / WEIGHTS_NAME))
    return model.eval()


def load_weights(model: Any, directory: str | Path) -> None:
    """Load the weights of a checkpoint folder into ``model``, built by the caller (``zoo test --model ...``)."""
    directory = Path(directory)
    load_checkpoint_state(model, _folder_weights(directory), str(directory / WEIGHTS_NAME))


def _folder_weights(directory: Path) -> dict[str, Tensor]:
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise ZooError(f"{directory} has no {WEIGHTS_NAME}: a zoo checkpoint is a folder with {CONFIG_NAME} and "
                       f"{WEIGHTS_NAME}")
    return read_weights(weights)


def load_checkpoint_state(model: Any, state: Mapping[str, Tensor], source: str) -> None:
    """Load a checkpoint's ``state`` strictly, less what an older or leaner checkpoint may leave out.

    Frozen reference weights it leaves out come from their pin; ``OPTIONAL_STATE_KEYS`` and the method's own
    ``optional_state_keys`` it leaves out (written before they existed) stay at their empty defaults.
    """
    reference = model.reference_state_keys()
    optional = (OPTIONAL_STATE_KEYS | model.optional_state_keys) & set(model.state_dict())
    load_state(model, state, source, reference=reference | optional)
    if reference - set(state):
        model.load_reference_weights()


# keys jsonargparse and other config loaders treat as "import this and call it"
_CODE_KEYS = frozenset({"class_path", "init_args", "__path__", "_target_", "__class__"})


def check_init_args(cls: type, init_args: Any, where: str) -> dict[str, Any]:
    """``init_args`` read from a file, checked as data against ``cls``'s constructor.

    Every key must be a constructor argument, every value of the type its annotation names, and no value
    may name a class to import: a checkpoint is data, never code.
    """
    import inspect

    if not isinstance(init_args, dict):
        raise ZooError(f"{where}: 'init_args' must be a JSON object, got {type(init_args).__name__}")
    params = inspect.signature(cls.__init__).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    allowed = [n for n, p in params.items() if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    hints = _init_hints(cls)
    for key, value in init_args.items():
        if not accepts_any and key not in allowed:
            raise ZooError(f"{where}: {key!r} is not an argument of {cls.__name__} "
                           f"(its arguments: {', '.join(allowed)})")
        _refuse_code(value, f"{where}: init argument {key!r}")
        if key in hints and not _matches(value, hints[key]):
            shown = params[key].annotation if isinstance(params[key].annotation, str) else hints[key]
            raise ZooError(f"{where}: init argument {key!r} must be {shown}, got {_json_kind(value)} "
                           f"{json.dumps(value)[:60]}")
    return dict(init_args)


_HINTS: dict[type, dict[str, Any]] = {}


def _init_hints(cls: type) -> dict[str, Any]:
    """The evaluated annotations of ``cls.__init__``: the class's own source, evaluated once per class."""
    import typing

    if cls not in _HINTS:
        try:
            _HINTS[cls] = typing.get_type_hints(cls.__init__)
        except Exception:  # an annotation only a type checker resolves: the constructor checks its own types
            _HINTS[cls] = {}
    return _HINTS[cls]


def _matches(value: Any, hint: Any) -> bool:
    """Whether a JSON ``value`` fits the annotation ``hint`` (a hint it cannot judge passes)."""
    import types
    import typing
    from collections.abc import Sequence

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if hint is None or hint is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in args)
    if origin is typing.Literal:
        return value in args
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if origin in (list, tuple, Sequence):  # JSON has arrays only
        if not isinstance(value, list):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(map(_matches, value, args))
        return all(_matches(item, args[0]) for item in value) if args else True
    if origin in (dict, Mapping):
        if not isinstance(value, dict):
            return False
        return all(_matches(k, args[0]) and _matches(v, args[1]) for k, v in value.items()) if args else True
    if isinstance(hint, type) and hint in (str, list, dict):
        return isinstance(value, hint)
    return True


def _json_kind(value: Any) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array",
             dict: "an object", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _refuse_code(value: Any, where: str) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ZooError(f"{where}: keys must be strings")
            if key in _CODE_KEYS:
                raise ZooError(f"{where} holds {key!r}: a checkpoint or gallery file may not name code to import; "
                               "only registered methods are built, from plain values")
            _refuse_code(item, where)
    elif isinstance(value, list | tuple):
        for item in value:
            _refuse_code(item, where)
    elif not (value is None or isinstance(value, str | int | float | bool)):
        raise ZooError(f"{where}: {type(value).__name__} is not a plain JSON value")


def build_method(config: Mapping[str, Any], where: str, expect: type | None = None,
                 pretrained_download: bool = False) -> Any:
    """The registered method ``config`` names (``{"name", "init_args"}``, read from a file), built as data.

    Only a method registered in ``zoo.methods`` is built, by its registry name; its ``init_args`` are
    checked against its constructor (see ``check_init_args``); nothing named in the file is imported.
    Pretrained encoders are not downloaded (the caller loads the checkpoint's weights next) unless
    ``pretrained_download``.
    """
    cls = method_class(config, where, expect)
    init_args = check_init_args(cls, config.get("init_args", {}), where)
    guard = contextlib.nullcontext() if pretrained_download else backbones.no_pretrained_download()
    try:
        with guard:
            return cls(**init_args)
    except ZooError as err:
        raise ZooError(f"{where}: {err}") from err
    except Exception as err:  # values of the right types that the constructor cannot use (a size of -1, ...)
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
        raise ZooError(f"{where}: {cls.__name__} refused its init_args ({type(err).__name__}: {first})") from err


def method_class(config: Mapping[str, Any], where: str, expect: type | None = None) -> type:
    """The registered class ``config["name"]`` names (its entry point is the only code it can reach)."""
    from zoo import registry

    name = config.get("name")
    if not isinstance(name, str) or not name.isidentifier():
        raise ZooError(f"{where}: 'name' must be the registry name of a method, got {name!r}")
    cls = registry.methods.load(name)
    if expect is not None and not issubclass(cls, expect):
        raise ZooError(f"{where} holds a {cls.__name__}, not a {expect.__name__}")
    return cls


def read_weights(path: Path) -> dict[str, Tensor]:
    """A ``model.safetensors`` file, or a ZooError naming it (missing, truncated or corrupt)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise ZooError(f"{path} not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise ZooError(f"{path} is not a readable safetensors file (truncated or corrupt?): {err}") from err


def read_config(path: Path) -> dict[str, Any]:
    """Read and check a ``config.json``: a JSON object with ``name`` and ``init_args``, in UTF-8."""
    if not path.is_file():
        raise ZooError(f"{path} not found: a zoo checkpoint is a folder with {CONFIG_NAME} and {WEIGHTS_NAME}")
    config = read_json(path)
    if not isinstance(config, dict):
        raise ZooError(f"{path} must hold a JSON object with 'name' and 'init_args', not {_json_kind(config)}")
    for key in ("name", "init_args"):
        if key not in config:
            raise ZooError(f"{path} has no {key!r} entry")
    if not isinstance(config["init_args"], dict):
        raise ZooError(f"{path}: 'init_args' must be a JSON object, not {_json_kind(config['init_args'])}")
    return {**config, "format_version": format_version(config, str(path))}


def format_version(config: Mapping[str, Any], where: str) -> int:
    """The format version of a config read from ``where``: 1 where it names none (see the module doc).

    Raises:
        ZooError: the version is not a whole number of at least 1, or is newer than this code reads.
    """
    version = config.get("format_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ZooError(f"{where}: format_version {json.dumps(version)[:40]} is not a format version (a whole "
                       "number from 1)")
    if version > FORMAT_VERSION:
        raise ZooError(f"{where} was written by a newer provenance-zoo (format {version}); this one reads up to "
                       f"{FORMAT_VERSION}: upgrade")
    return version


def read_json(path: Path) -> Any:
    """A JSON file's value, or a ZooError naming the file (unreadable, not UTF-8, not JSON, NaN or Infinity)."""

    def refuse_constant(name: str) -> None:
        raise ValueError(f"{name} is not a JSON number")

    try:
        return json.loads(path.read_bytes().decode("utf-8"), parse_constant=refuse_constant)
    except OSError as err:
        raise ZooError(f"{path} cannot be read: {err.strerror or err}") from err
    except UnicodeDecodeError as err:
        raise ZooError(f"{path} is not UTF-8 text (byte {err.start}): not a JSON file") from err
    except RecursionError as err:
        raise ZooError(f"{path} is nested too deeply to read") from err
    except ValueError as err:  # json.JSONDecodeError, or a NaN / Infinity
        raise ZooError(f"{path} is not valid JSON: {err}") from err


def load_state(model: torch.nn.Module, state: Mapping[str, Tensor], source: str,
               reference: set[str] | frozenset[str] = frozenset()) -> None:
    """Load ``state`` strictly, naming the first missing, unexpected or mis-shaped key.

    Keys in ``reference`` may be absent: the constructor loaded them from a pinned pretrained reference.
    """
    own = model.state_dict()
    for key, value in own.items():
        if key not in state:
            if key in reference:
                continue
            raise ZooError(f"{source}: missing key {key!r} (expected shape {tuple(value.shape)})")
        if tuple(state[key].shape) != tuple(value.shape):
            raise ZooError(
                f"{source}: key {key!r} has shape {tuple(state[key].shape)}, the model expects {tuple(value.shape)}"
            )
    for key in state:
        if key not in own:
            raise ZooError(f"{source}: unexpected key {key!r}")
    model.load_state_dict(dict(state), strict=not (reference - set(state)))


def convert_checkpoint(ckpt_path: str | Path, directory: str | Path) -> Path:
    """Convert a Lightning ``.ckpt`` written by ``zoo fit`` into a ``save_pretrained`` folder, losslessly."""
    ckpt_path = Path(ckpt_path)
    checkpoint = read_weights_only(ckpt_path)
    if not isinstance(checkpoint, dict) or CKPT_ENTRY not in checkpoint or "state_dict" not in checkpoint:
        raise ZooError(f"{ckpt_path} was not written by a ZooModule (no {CKPT_ENTRY!r} entry)")
    config = checkpoint[CKPT_ENTRY]
    where = f"{ckpt_path} (its {CKPT_ENTRY!r} entry)"
    if not isinstance(config, dict):
        raise ZooError(f"{where} is not a mapping")
    config = {**config, "format_version": format_version(config, where)}
    check_init_args(method_class(config, where), config.get("init_args", {}), where)
    state = checkpoint["state_dict"]
    if not isinstance(state, dict):
        raise ZooError(f"{ckpt_path}: 'state_dict' is {type(state).__name__}, not a mapping of names to tensors")
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise ZooError(f"{ckpt_path}: 'state_dict' entry {key!r} is {type(value).__name__}, not a tensor")
    config = {k: config[k] for k in ("name", "task", "init_args", "format_version") if k in config}
    return write_checkpoint(config, {k: v.contiguous() for k, v in state.items()}, directory, str(ckpt_path))


def write_checkpoint(config: Mapping[str, Any], state: Mapping[str, Tensor], directory: str | Path,
                     source: str = "the model") -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``directory`` as ordinary files (umask-respecting)."""
    import os

    from safetensors.torch import save_file

    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ZooError(f"output {directory} is an existing file, not a folder")
    try:
        text = json.dumps(config, indent=2, sort_keys=True, allow_nan=False) + "\n"
    except (TypeError, ValueError) as err:
        raise ZooError(f"{source}: its config is not plain JSON data: {err}") from err
    try:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_NAME).write_text(text)
        save_file(_untie(dict(state)), str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
        # safetensors writes a private temporary file (0600) and renames it: give it a new file's mode
        mask = os.umask(0o022)
        os.umask(mask)
        (directory / WEIGHTS_NAME).chmod(0o666 & ~mask)
    except OSError as err:
        raise ZooError(f"cannot write the checkpoint into {directory}: {err.strerror or err}") from err
    return directory


def read_weights_only(path: str | Path) -> Any:
    """A torch checkpoint file read with ``weights_only=True`` (tensors and plain data, no code)."""
    import pickle
    import re
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise ZooError(f"checkpoint {path} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message advises weights_only=False, which would run the file's code: say what was refused
        with open(path, "rb") as handle:
            head = handle.read(2)
        if not zipfile.is_zipfile(path) and head[:1] != b"\x80":  # neither torch's zip nor a pickle
            raise ZooError(f"{path} is not a PyTorch checkpoint file") from None
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        what = f"it names {found[1]}, which is not" if found else "it holds more than"
        raise ZooError(f"{path} is refused: {what} tensors and plain data (a checkpoint is data, never code; "
                       "nothing in it was run)") from None
    except Exception as err:
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise ZooError(f"{path} cannot be read as a weights-only checkpoint: {first}") from None




def _untie(state: dict[str, Tensor]) -> dict[str, Tensor]:
    # safetensors refuses tensors that share memory; copies keep every key
    seen: set[int] = set()
    out = {}
    for key, value in state.items():
        ptr = value.untyped_storage().data_ptr() if value.numel() else -1
        out[key] = value.clone() if ptr in seen else value
        if ptr != -1:
            seen.add(ptr)
    return out


def check_config(folder: Path, label: str, method: str | None = None) -> None:
    """Check a checkpoint's ``config.json`` as data, without building anything: a registered method, its arguments.

    The same checks as ``build_method``, done where a checkpoint arrives (``zoo download``, ``zoo publish``) so
    that a poisoned one is refused before anything is built from it. ``method``: the registry name the
    checkpoint must hold (a known checkpoint's).
    """
    from zoo import registry

    where = f"{label}: {CONFIG_NAME}"
    config = read_config(folder / CONFIG_NAME)
    name = config["name"]
    if not isinstance(name, str) or not name.isidentifier():
        raise ZooError(f"{where}: 'name' must be the registry name of a method, got {name!r}")
    if method is not None and name != method:
        raise ZooError(f"{where} holds a {name}, but the registry of known checkpoints says {method}")
    check_init_args(registry.methods.load(name), config["init_args"], where)


def read_threshold(folder: Path) -> float | None:
    """The decision threshold stored with a binary method's weights (None when it has none)."""
    from safetensors import SafetensorError, safe_open

    weights = folder / WEIGHTS_NAME
    try:
        with safe_open(str(weights), framework="pt") as handle:
            return float(handle.get_tensor(THRESHOLD_KEY)) if THRESHOLD_KEY in handle.keys() else None
    except (SafetensorError, OSError) as err:
        raise ZooError(f"{weights} is not a readable safetensors file (truncated or corrupt?): {err}") from err


def newest_export(folder: Path) -> Path:
    """The zoo checkpoint a local folder names: itself, or the newest export of a run folder under it.

    ``zoo fit`` exports to ``<run>/lightning_logs/version_N/zoo``; given ``<run>``, its ``lightning_logs``
    or a version folder, the export of the highest version number is used, and said on stderr.

    Raises:
        ZooError: the folder holds no export.
    """
    if (folder / CONFIG_NAME).is_file():
        return folder
    # the export's folder, up to three levels below: <logger name>/version_N/zoo
    found = [c.parent for depth in range(3) for c in folder.glob("/".join(["*"] * depth + [EXPORT_DIR, CONFIG_NAME]))]
    if not found:
        raise ZooError(f"{folder}: no zoo checkpoint in this folder: looked for {CONFIG_NAME} in it and for "
                       f"{EXPORT_DIR}/{CONFIG_NAME} up to three levels below (zoo fit writes "
                       f"lightning_logs/version_N/{EXPORT_DIR})")

    def version(path: Path) -> list[tuple[int, str]]:
        # version_10 is newer than version_9: numbers compare as numbers, other names as text
        return [(int(p[len("version_"):]) if re.fullmatch(r"version_\d+", p) else -1, p)
                for p in path.relative_to(folder).parts]

    newest = max(found, key=version)
    print(f"zoo: {folder}: using its newest export, {newest} (of {len(found)})", file=sys.stderr)
    return newest
