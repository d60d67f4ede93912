"""Image encoders by name, from timm or open_clip, pretrained or randomly initialised.

A spec names the library and the model:
    ``timm:<model name>[.<pretrained tag>]``  e.g. ``timm:vit_small_patch16_224.dino``, ``timm:resnet50.a1_in1k``
    ``open_clip:<architecture>[@<pretrained tag>]``  e.g. ``open_clip:ViT-B-32@openai``, ``open_clip:RN50@openai``

``open_clip:zoo-tiny-clip`` is a tiny CLIP architecture shipped with the zoo for offline tests.
Libraries are imported only when an encoder is built.

An encoder's spec and ``model_kwargs`` are often read from a checkpoint, so they are treated as data: only the
keys of ``MODEL_KWARGS`` reach the library's constructor, and inside ``from_checkpoint(folder)`` a file path
they name (``@/path/weights.bin``, ``local-dir:``) must lie inside that folder.

Example:
    >>> enc = Encoder("open_clip:ViT-L-14@openai")           # downloads the weights once
    >>> enc = Encoder("timm:vit_tiny_patch16_224", pretrained=False, image_size=32)
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from zoo.errors import ZooError

_SKIP_DOWNLOAD = contextvars.ContextVar("zoo_skip_pretrained_download", default=False)
_CHECKPOINT = contextvars.ContextVar[Path | None]("zoo_checkpoint_folder", default=None)
# values the caller named itself (an override on the command line, the user's own config), not read from the file
_TRUSTED = contextvars.ContextVar[frozenset[str]]("zoo_checkpoint_trusted", default=frozenset())
_ASSETS = Path(__file__).parent / "assets"
LIBRARIES = ("timm", "open_clip")
# The model_kwargs keys the zoo vouches for, per library: sizes and rates of an architecture, nothing that
# names a file or changes how one is read. Both libraries take other keys that load a file
# (open_clip's ``pretrained_image_path`` with ``weights_only=False`` unpickles it; timm's ``checkpoint_path``,
# ``pretrained_cfg_overlay``), so any key not listed here is refused, whoever passes it.
MODEL_KWARGS: dict[str, frozenset[str]] = {
    "timm": frozenset({"layers", "channels", "stem_width", "global_pool", "img_size", "patch_size", "embed_dim",
                       "depth", "num_heads", "mlp_ratio", "drop_rate", "drop_path_rate"}),
    "open_clip": frozenset({"force_image_size", "force_quick_gelu", "force_patch_dropout", "force_context_length",
                            "device"}),
}


@contextlib.contextmanager
def no_pretrained_download() -> Iterator[None]:
    """Build encoders without their pretrained weights: the caller loads weights of its own next."""
    token = _SKIP_DOWNLOAD.set(True)
    try:
        yield
    finally:
        _SKIP_DOWNLOAD.reset(token)


def want_pretrained(pretrained: bool) -> bool:
    """Whether pretrained weights should be fetched now (False inside ``no_pretrained_download``)."""
    return bool(pretrained) and not _SKIP_DOWNLOAD.get()


@contextlib.contextmanager
def from_checkpoint(folder: str | Path, trusted: Iterable[str] = ()) -> Iterator[None]:
    """Build from values read from the checkpoint in ``folder``: a file they name must lie inside it.

    ``trusted`` are values the caller named itself (``--model.finetuned /models/ft`` on the command line, the
    paths of the config a benchmark job was fitted from): those are the user's, and pass unchecked.
    """
    token = _CHECKPOINT.set(Path(folder).resolve())
    trust = _TRUSTED.set(frozenset(trusted))
    try:
        yield
    finally:
        _TRUSTED.reset(trust)
        _CHECKPOINT.reset(token)


def strings(value: Any) -> set[str]:
    """Every string inside ``value`` (a dict, list or scalar of init arguments), and the part after a
    ``kind:`` prefix (``diffusers:/models/sd15`` names the folder ``/models/sd15``)."""
    if isinstance(value, str):
        return {value, value.partition(":")[2]} - {""}
    if isinstance(value, dict):
        return set().union(*(strings(v) for v in value.values()))
    if isinstance(value, list | tuple):
        return set().union(*(strings(v) for v in value))
    return set()


def checkpoint_path(value: str, what: str) -> str:
    """``value``, a file or folder path, as the code may open it.

    Outside ``from_checkpoint`` it is returned unchanged (the user named it). Inside, it is resolved against the
    checkpoint's folder, links followed, and refused unless it stays inside: a checkpoint may not point at
    ``/etc``, at a home folder, or at a file planted beside it with ``../``.
    """
    root = _CHECKPOINT.get()
    if root is None or value in _TRUSTED.get():
        return value
    path = (root / value).resolve()
    if not path.is_relative_to(root):
        raise ZooError(f"{what} {value!r} is outside the checkpoint folder {root}: a path read from a checkpoint "
                       "must lie inside the checkpoint's own folder")
    return str(path)


def checkpoint_folder() -> Path | None:
    """The folder of the checkpoint being loaded (inside ``from_checkpoint``), else None."""
    return _CHECKPOINT.get()


def checkpoint_source(value: str, what: str) -> str:
    """``value``, a Hub id or a local folder, as diffusers or transformers may load it.

    Outside ``from_checkpoint`` it is returned unchanged. Inside, a folder must lie in the checkpoint's folder
    (see ``checkpoint_path``) and is returned resolved; a Hub id stays a Hub id, unless a folder of that name
    exists in the working folder, which the libraries would open instead of the Hub.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    root = _CHECKPOINT.get()
    if root is None or value in _TRUSTED.get():
        return value
    inside = Path(checkpoint_path(value, what))  # refuses a path that leaves the folder
    if inside.exists():
        return str(inside)
    try:
        validate_repo_id(value)
    except HFValidationError:
        return str(inside)  # a missing folder: the loader says so
    if Path(value).exists():
        raise ZooError(f"{what} {value!r} is a folder outside the checkpoint folder {root}: a path read from a "
                       "checkpoint must lie inside the checkpoint's own folder")
    return value


def timm_name(name: str, spec: str) -> str:
    """A timm model name as ``timm.create_model`` may take it: a ``local-dir:`` folder via ``checkpoint_path``."""
    if name.startswith("local-dir:"):
        return "local-dir:" + checkpoint_path(name.removeprefix("local-dir:"), f"encoder {spec!r}:")
    return name


def _weights_file(tag: str, spec: str) -> str:
    """An open_clip tag it does not know, which it opens as a file when one exists at that path."""
    if _CHECKPOINT.get() is None or tag in _TRUSTED.get():
        return tag
    inside = checkpoint_path(tag, f"encoder {spec!r}: weights file")  # refuses a path that leaves the folder
    if Path(inside).is_file():
        return inside
    if Path(tag).is_file():  # a file relative to the working folder, not the checkpoint's
        raise ZooError(f"encoder {spec!r}: weights file {tag!r} is outside the checkpoint folder: a path read from "
                       "a checkpoint must lie inside the checkpoint's own folder")
    return tag  # neither a tag nor a file: open_clip says so


def check_model_kwargs(library: str, model_kwargs: Any, spec: str) -> dict[str, Any]:
    """``model_kwargs`` if every key is one the zoo vouches for (``MODEL_KWARGS``) and every value plain data."""
    if model_kwargs is None:
        return {}
    if not isinstance(model_kwargs, dict):
        raise ZooError(f"model_kwargs of {spec!r} must be a mapping, got {type(model_kwargs).__name__}")
    allowed = MODEL_KWARGS[library]
    for key, value in model_kwargs.items():
        if key not in allowed:
            raise ZooError(f"model_kwargs of {spec!r}: {key!r} is not among the {library} arguments the zoo passes on "
                           f"(allowed: {', '.join(sorted(allowed))})")
        items = value if isinstance(value, list | tuple) else [value]
        if not all(item is None or isinstance(item, str | int | float | bool) for item in items):
            raise ZooError(f"model_kwargs of {spec!r}: {key!r} must be a number, a string or a list of them")
    return dict(model_kwargs)


def parse_spec(spec: str) -> tuple[str, str, str | None]:
    """``"open_clip:ViT-B-32@openai"`` -> ``("open_clip", "ViT-B-32", "openai")``."""
    if not isinstance(spec, str):
        raise ZooError(f"an encoder spec must be a string, got {type(spec).__name__}")
    library, sep, rest = spec.partition(":")
    if not sep or library not in LIBRARIES or not rest:
        raise ZooError(f"encoder spec {spec!r} must look like 'timm:<name>' or 'open_clip:<arch>[@<tag>]'")
    name, _, tag = rest.partition("@")
    return library, name, tag or None


class Encoder(nn.Module):
    """A frozen-or-trainable image encoder returning one feature vector per image.

    Args:
        spec: library and model name, see the module docstring.
        pretrained: load the library's pretrained weights (network on first use, then the cache).
        image_size: input size; None keeps the model's own.
        model_kwargs: extra constructor arguments (timm) or config overrides, for tiny variants.
    """

    def __init__(
        self,
        spec: str,
        pretrained: bool = True,
        image_size: int | None = None,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.library, self.name, self.tag = parse_spec(spec)
        kwargs = check_model_kwargs(self.library, model_kwargs, spec)
        if self.library == "timm":
            self._build_timm(pretrained, image_size, kwargs)
        else:
            self._build_open_clip(pretrained, image_size, kwargs)

    def _build_timm(self, pretrained: bool, image_size: int | None, kwargs: dict[str, Any]) -> None:
        import timm
        from timm.data import create_transform, resolve_model_data_config

        name = timm_name(self.name if self.tag is None else f"{self.name}.{self.tag}", self.spec)
        if image_size is not None and "vit" in self.name:
            kwargs.setdefault("img_size", image_size)
        try:
            self.model = timm.create_model(name, pretrained=want_pretrained(pretrained), num_classes=0, **kwargs)
        except OSError as err:  # the Hub client's download and cache errors are OSErrors
            raise _unreachable(self.spec, err) from err
        except RuntimeError as err:
            raise ZooError(f"timm cannot build {name!r}: {err}") from err
        config = resolve_model_data_config(self.model)
        if image_size is not None:
            config["input_size"] = (3, image_size, image_size)
            config["crop_pct"] = 1.0
        self._transform = create_transform(**config, is_training=False)
        self.dim = int(self.model.num_features)
        self.image_size = int(config["input_size"][-1])
        self.text_model = None

    def _build_open_clip(self, pretrained: bool, image_size: int | None, kwargs: dict[str, Any]) -> None:
        import open_clip

        if self.name.startswith("zoo-tiny") and open_clip.get_model_config(self.name) is None:
            open_clip.add_model_config(_ASSETS)
        name = self.name
        if name.startswith("local-dir:"):
            name = "local-dir:" + checkpoint_path(name.removeprefix("local-dir:"), f"encoder {self.spec!r}:")
        tag = self.tag
        if tag is not None and not open_clip.get_pretrained_cfg(name, tag):  # not a tag: open_clip reads a file
            tag = _weights_file(tag, self.spec)
        tag = tag if want_pretrained(pretrained) else None
        if pretrained and self.tag is None:
            raise ZooError(f"open_clip encoder {self.spec!r} has no pretrained tag; write '{self.spec}@<tag>'")
        if image_size is not None:
            kwargs.setdefault("force_image_size", image_size)
        # A random-init tiny CLIP is one fixed model wherever it is built, from its own seed (the global random
        # state is left as it was). Without a tag open_clip warns that no weights were loaded: the weights are
        # random on purpose, or a checkpoint's come next, so the warning is not shown.
        seeded = _tiny_seed() if tag is None and self.name.startswith("zoo-tiny") else contextlib.nullcontext()
        try:
            with seeded, _without_no_weights_warning() if tag is None else contextlib.nullcontext():
                model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=tag, **kwargs)
        except OSError as err:
            raise _unreachable(self.spec, err) from err
        except RuntimeError as err:
            if tag is not None and "download" in str(err).lower():
                raise _unreachable(self.spec, err) from err
            raise ZooError(f"open_clip cannot build {self.spec!r}: {err}") from err
        self.model = model
        self._transform = preprocess
        self._tokenizer = open_clip.get_tokenizer(name)
        self.dim = int(model.visual.output_dim)
        size = model.visual.image_size
        self.image_size = int(size[0] if isinstance(size, tuple | list) else size)
        self.text_model = model

    @property
    def transform(self) -> Callable[[Any], Tensor]:
        """PIL image -> normalised tensor, the encoder's own pre-processing."""
        return self._transform

    def forward(self, images: Tensor) -> Tensor:
        if self.library == "open_clip":
            return self.model.encode_image(images)
        return self.model(images)

    @property
    def text_dim(self) -> int:
        """Size of the text embedding: CLIP embeds text and images in one space."""
        if self.text_model is None:
            raise ZooError(f"{self.spec} has no text encoder; use an open_clip encoder for captions")
        return self.dim

    def encode_text(self, captions: list[str]) -> Tensor:
        """CLIP text embeddings of ``captions`` (open_clip encoders only)."""
        if self.text_model is None:
            raise ZooError(f"{self.spec} has no text encoder; use an open_clip encoder for captions")
        device = next(self.model.parameters()).device
        return self.model.encode_text(self._tokenizer(captions).to(device))


TINY_SEED = 0  # the seed of every random-init zoo-tiny encoder


@contextlib.contextmanager
def _tiny_seed() -> Iterator[None]:
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(TINY_SEED)
        yield


class _NoWeightsFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No pretrained weights loaded for model")


@contextlib.contextmanager
def _without_no_weights_warning() -> Iterator[None]:
    # open_clip logs it on the root logger
    root, quiet = logging.getLogger(), _NoWeightsFilter()
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)


def _unreachable(spec: str, err: Exception) -> ZooError:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return ZooError(
        f"the pretrained weights of {spec} could not be fetched ({first[:200]}). Offline, put them in the "
        "Hugging Face cache first, name a local copy (open_clip: 'open_clip:<arch>@/path/to/weights.bin'; timm: "
        "an 'hf-hub:org/name' id already in the cache), or build the encoder with pretrained=False"
    )


def freeze(module: nn.Module) -> nn.Module:
    """Freeze ``module`` in eval mode and return it."""
    module.eval()
    for param in module.parameters():
        param.requires_grad_(False)
    return module


def count_parameters(module: nn.Module) -> int:
    """Number of parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())


__all__ = ["MODEL_KWARGS", "Encoder", "check_model_kwargs", "checkpoint_folder", "checkpoint_path", "checkpoint_source",
           "count_parameters", "freeze", "from_checkpoint", "no_pretrained_download", "parse_spec", "timm_name",
           "want_pretrained"]
