"""SSCD's released descriptors (facebookresearch/sscd-copy-detection), read as data only.

``.torchvision.pt`` files are state dicts (read with ``torch.load(weights_only=True)``). ``.torchscript.pt``
files are TorchScript archives: ``torch.jit.load`` would run the TorchScript code they carry, so they are
never loaded that way. Their ``data.pkl`` is the same pickle format as a ``torch.save`` file, with the
module objects named ``__torch__.<class>``: torch's weights-only unpickler reads it with an inert
stand-in class for each such name (it holds the attribute dict and runs nothing), and the parameters and
buffers are collected from the attribute tree. The ``code/`` folder of the archive is never read.
"""

from __future__ import annotations

import pickletools
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from zoo.checkpoint import read_weights_only
from zoo.errors import ZooError


class _ScriptObject:
    """Inert stand-in for a TorchScript module of the archive: keeps its attributes, runs nothing."""

    def __setstate__(self, state: Any) -> None:
        self.__dict__.update(state if isinstance(state, dict) else {"state": state})


def _tensors(obj: _ScriptObject, prefix: str = "") -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for key, value in vars(obj).items():
        if isinstance(value, Tensor):
            out[prefix + key] = value
        elif isinstance(value, _ScriptObject):
            out.update(_tensors(value, f"{prefix}{key}."))
    return out


def read_torchscript_state(path: str | Path) -> dict[str, Tensor]:
    """The parameters and buffers of a TorchScript archive, by module path, without executing its code."""
    import torch.serialization as serialization
    from torch.jit._pickle import build_intlist

    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1), None)
            if name is None:
                raise ZooError(f"{path} is a zip archive without data.pkl: not a TorchScript file")
            data = archive.read(name)
        names = {arg.replace(" ", ".") for op, arg, _ in pickletools.genops(data)
                 if op.name == "GLOBAL" and str(arg).startswith("__torch__")}
        stand_ins = [(type(n.rpartition(".")[2], (_ScriptObject,), {}), n) for n in sorted(names)]
        with serialization.safe_globals([*stand_ins, build_intlist]):
            root = serialization._load(torch._C.PyTorchFileReader(str(path)), "cpu",
                                       torch._weights_only_unpickler, pickle_file="data.pkl")
    except ZooError:
        raise
    except Exception as err:  # a bad zip, or a pickle that asks for anything beyond tensors and plain data
        raise ZooError(f"{path} cannot be read as TorchScript weights (data only): {err}") from err
    if not isinstance(root, _ScriptObject):
        raise ZooError(f"{path}: data.pkl holds a {type(root).__name__}, not a TorchScript module")
    return _tensors(root)


def _is_torchscript(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive (a zip with ``constants.pkl``); a broken zip is a ZooError."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return any(n.endswith("/constants.pkl") for n in archive.namelist())
    except (zipfile.BadZipFile, OSError) as err:
        raise ZooError(f"{path} is a damaged zip archive ({err}): not a readable checkpoint") from err


def read_sscd_state(path: str | Path) -> dict[str, Tensor]:
    """An SSCD release file (``.torchscript.pt`` or ``.torchvision.pt``) as a torchvision-layout state dict.

    Returns keys of the torchvision ResNet (``conv1.weight`` ... ``fc.weight``, with ``fc`` SSCD's
    projection), whatever the file's ``backbone.`` / ``module.`` prefixes.
    """
    path = Path(path)
    if not path.is_file():
        raise ZooError(f"checkpoint {path} not found")
    if _is_torchscript(path):
        state = read_torchscript_state(path)
    else:
        state = read_weights_only(path)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        if not isinstance(state, dict):
            raise ZooError(f"{path} holds a {type(state).__name__}, not a state dict")
    out = {}
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise ZooError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor: not a state dict")
        for prefix in ("module.", "model.", "backbone."):
            key = key.removeprefix(prefix)
        out[key] = value
    if "fc.weight" not in out or "conv1.weight" not in out:
        first = next(iter(state), None)
        raise ZooError(f"{path}: not SSCD's torchvision layout (no conv1.weight / fc.weight; first key {first!r}); "
                       "Classy Vision trunks (.classy.pt, sscd_disc_large) are not supported")
    return out
