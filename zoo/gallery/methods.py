"""The copy-detection method that embeds a gallery: built by registry name, or loaded as data.

Gallery search needs a method of the ``Retrieval`` protocol: ``embed(images)`` and
``pair_from_embeddings(generated, real)``. It is
named by its registry name (built with a fixed seed, so that a random or noise-initialised model is the
same model when a killed ``zoo embed`` is run again), a zoo checkpoint folder or ``hf-hub:org/name``.
A checkpoint, and the ``model/`` folder of an embedded gallery, are read with
``zoo.checkpoint.load_folder``: only registered methods are built from them, nothing they name is imported.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from zoo.errors import ZooError

DEFAULT_SEED = 0


@runtime_checkable
class Retrieval(Protocol):
    """What gallery search needs of a copy-detection method: descriptors, and predictions from two of them.

    A method need not inherit from it: having both methods makes it one (``isinstance(method, Retrieval)``).
    """

    def embed(self, images: Tensor) -> Tensor:
        """(B, D) descriptors of pre-processed images, stored in the gallery's shards."""
        ...

    def pair_from_embeddings(self, generated_emb: Tensor, real_emb: Tensor) -> dict[str, Tensor]:
        """Predictions of the copy-detection schema from two rows of stored descriptors, without the encoder."""
        ...


def load_method(spec: str, variant: str | None = None, init_args: Mapping[str, Any] | None = None,
                seed: int = DEFAULT_SEED) -> Any:
    """A copy-detection method with descriptors.

    Args:
        spec: a registry name (``PDFEmbedding``), a zoo checkpoint folder or ``hf-hub:org/name``.
        variant: a named variant of a registry method.
        init_args: constructor arguments of a registry method, on top of the variant's.
        seed: seed of the initialisation of a registry method (random-init weights, token noise).

    Returns:
        the method, in eval mode.
    """
    from zoo import hub, registry
    from zoo.checkpoint import build_method, load_folder

    if spec.startswith(hub.HUB_PREFIX) or Path(spec).is_dir():
        if variant or init_args:
            raise ZooError(f"--variant and --model_args apply to a registry name, not to the checkpoint {spec}")
        method = load_folder(hub.resolve(spec))
    elif spec.isidentifier():
        cls = registry.methods.load(spec)
        args = dict(init_args or {})
        if variant is not None:
            if variant not in cls.variants:
                raise ZooError(f"{spec} has no variant {variant!r}; its variants are "
                               f"{', '.join(cls.variants) or 'none'}")
            args = {**cls.variants[variant], **args}
        with torch.random.fork_rng(devices=[]):  # the caller's random state is left as it was
            torch.manual_seed(seed)
            method = build_method({"name": spec, "init_args": args}, "--model_args", pretrained_download=True)
    else:
        raise ZooError(f"--model {spec!r}: give a registered method (see `zoo list`), a zoo checkpoint folder "
                       "or hf-hub:org/name")
    check_retrieval(method, spec)
    return method.eval()


def check_retrieval(method: Any, where: str) -> None:
    """Refuse a method that is not a ``Retrieval`` (no ``embed`` or no ``pair_from_embeddings``), in one line."""
    if not isinstance(method, Retrieval):
        raise ZooError(
            f"{where}: {type(method).__name__} has no embed() and pair_from_embeddings(): gallery search needs a "
            "copy-detection method with descriptors (the Retrieval protocol of zoo.gallery.methods)"
        )


def fingerprint(method: torch.nn.Module) -> str:
    """sha256 of the method's weights: descriptors of different weights are not comparable."""
    digest = hashlib.sha256(type(method).__name__.encode())
    for key, value in sorted(method.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
