"""Checkpoints on the Hugging Face Hub (``hf-hub:org/name``) and on disk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zoo.errors import ZooError

HUB_PREFIX = "hf-hub:"
FILES = ("config.json", "model.safetensors")


def resolve(source: str | Path, revision: str | None = None, cache_dir: str | None = None,
            local_files_only: bool | None = None, token: str | None = None) -> Path:
    """The local folder of a zoo checkpoint: ``source`` itself, or its download from the Hub."""
    text = str(source)
    if text.startswith(HUB_PREFIX):
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        repo_id, _, at = text[len(HUB_PREFIX):].partition("@")
        try:
            return Path(snapshot_download(repo_id, revision=revision or at or None, cache_dir=cache_dir,
                                          allow_patterns=list(FILES), local_files_only=bool(local_files_only),
                                          token=token))
        except LocalEntryNotFoundError as err:
            raise ZooError(
                f"{text} is not in the Hugging Face cache and the Hub cannot be reached (offline mode?); "
                f"fetch it once with `zoo download {text}` while online"
            ) from err
    path = Path(text)
    if not path.is_dir():
        raise ZooError(f"checkpoint {path} is not a folder; give a zoo checkpoint folder or 'hf-hub:org/name'")
    return path


def print_pretrained(console: Any) -> int:
    """Print the known pretrained checkpoints."""
    console.print("no pretrained checkpoints are registered yet")
    return 0
