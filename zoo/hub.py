"""Checkpoints on the Hugging Face Hub: publish, download by short name, load offline, model cards.

A zoo checkpoint is a folder with ``config.json`` and ``model.safetensors`` (``ZooModule.save_pretrained``).
It is named by its folder, by ``hf-hub:org/name[@revision]``, or by a short name from the registry of
known checkpoints (``zoo/pretrained.json``, plus the JSON file that ``$ZOO_PRETRAINED`` names), like
timm's pretrained tags: ``pdf_embedding.exponential_drep`` -> repo id, revision, sha256. Checkpoints
released by a paper's authors in their own format are converted on download by the method's importer
(``convert_released``) and kept, converted, in the Hugging Face cache.

Everything goes through ``huggingface_hub``, so ``HF_ENDPOINT``, ``HF_HUB_OFFLINE``, ``HF_HUB_CACHE``
and ``HF_TOKEN`` behave as everywhere else. Only JSON and safetensors are downloaded for zoo checkpoints;
a token is passed to the client and never printed.

Example:
    >>> url = publish("runs/pdf/version_0/zoo", "org/pdf-embedding-tiny", metrics={"test/accuracy": 0.9})
    >>> model = ZooModule.from_pretrained("hf-hub:org/pdf-embedding-tiny")
    >>> model = ZooModule.from_pretrained("pdf_embedding.exponential_drep")
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from zoo.errors import ZooError

HUB_PREFIX = "hf-hub:"
FILES = ("config.json", "model.safetensors")
CARD_NAME = "README.md"
LIBRARY_NAME = "provenance-zoo"
# the zoo's own license; a method class may declare ``license`` for weights under other terms
DEFAULT_LICENSE = "apache-2.0"
REGISTRY_FILE = Path(__file__).with_name("pretrained.json")
REGISTRY_ENV = "ZOO_PRETRAINED"  # a JSON file of more known checkpoints, e.g. an organisation's own
CONVERTED_DIR = "provenance-zoo"  # released checkpoints, converted, under the Hugging Face cache


@dataclass(frozen=True)
class Pretrained:
    """One known checkpoint of the registry file."""

    name: str
    method: str
    repo_id: str
    revision: str = "main"
    repo_type: str = "model"
    # a file released by the paper's authors, converted by the method's importer (None: a zoo checkpoint)
    filename: str | None = None
    sha256: dict[str, str] = field(default_factory=dict)  # file name -> pinned digest
    init_args: dict[str, Any] = field(default_factory=dict)  # constructor arguments for the importer
    description: str = ""
    source: str = ""


def known_checkpoints(path: str | Path | None = None) -> dict[str, Pretrained]:
    """The known checkpoints: the built-in file, then the one ``$ZOO_PRETRAINED`` names (it wins on a clash)."""
    files = [Path(path)] if path is not None else [REGISTRY_FILE]
    if path is None and os.environ.get(REGISTRY_ENV):
        files.append(Path(os.environ[REGISTRY_ENV]))
    found: dict[str, Pretrained] = {}
    for file in files:
        try:
            entries = json.loads(file.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ZooError(f"registry of pretrained checkpoints {file} cannot be read: {err}") from err
        for name, entry in entries.items():
            try:
                found[name] = Pretrained(name=name, **{k: v for k, v in entry.items() if k != "note"})
            except TypeError as err:
                raise ZooError(f"{file}: entry {name!r} is malformed: {err}") from err
    return found


# ------------------------------------------------------------------------------------------- loading
def resolve(source: str | Path, revision: str | None = None, cache_dir: str | None = None,
            local_files_only: bool | None = None, token: str | None = None, endpoint: str | None = None) -> Path:
    """The local folder of a zoo checkpoint: a folder, ``hf-hub:org/name[@rev]`` or a registry short name.

    Hub checkpoints come from the Hugging Face cache when present; with ``HF_HUB_OFFLINE=1`` or
    ``local_files_only=True`` nothing is asked of the network. Pinned sha256 digests are verified.
    """
    return _fetch(source, revision=revision, cache_dir=cache_dir, local_files_only=bool(local_files_only),
                  token=token, endpoint=endpoint)


def download(source: str, revision: str | None = None, cache_dir: str | None = None, token: str | None = None,
             endpoint: str | None = None, force: bool = False) -> Path:
    """Fetch a checkpoint (short name, ``hf-hub:org/name`` or ``org/name``) into the cache; its local folder."""
    bare_repo_id = "/" in source and not Path(source).exists() and source not in known_checkpoints()
    if bare_repo_id and not source.startswith(HUB_PREFIX):
        source = HUB_PREFIX + source
    return _fetch(source, revision=revision, cache_dir=cache_dir, local_files_only=False, token=token,
                  endpoint=endpoint, force=force)


def _fetch(source: str | Path, *, revision: str | None, cache_dir: str | None, local_files_only: bool,
           token: str | None, endpoint: str | None, force: bool = False) -> Path:
    text = str(source)
    hub = dict(cache_dir=cache_dir, local_files_only=local_files_only, token=token, endpoint=endpoint, force=force)
    if text.startswith(HUB_PREFIX):
        repo_id, _, at = text[len(HUB_PREFIX):].partition("@")
        return _snapshot(repo_id, revision or at or None, label=text, sha256={}, **hub)
    path = Path(text)
    if path.is_dir():
        return path
    known = known_checkpoints()
    if text in known:
        entry = known[text]
        if entry.filename is not None:
            return _released(entry, revision, **hub)
        return _snapshot(entry.repo_id, revision or entry.revision, label=text, sha256=entry.sha256, **hub)
    raise ZooError(
        f"checkpoint {text!r} is not a folder, an 'hf-hub:org/name' id or a known short name "
        f"(`zoo list --pretrained` shows them)"
    )


def _snapshot(repo_id: str, revision: str | None, *, label: str, sha256: dict[str, str], cache_dir: str | None,
              local_files_only: bool, token: str | None, endpoint: str | None, force: bool) -> Path:
    from huggingface_hub import snapshot_download

    with _hub_errors(label):
        folder = Path(snapshot_download(
            repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=list(FILES),
            local_files_only=local_files_only, token=token, endpoint=endpoint, force_download=force,
        ))
    for name in FILES:
        if not (folder / name).is_file():
            raise ZooError(f"{label} ({repo_id}) has no {name}: it is not a zoo checkpoint")
    for name, digest in sha256.items():
        verify(folder / name, digest, label)
    return folder


def _released(entry: Pretrained, revision: str | None, *, cache_dir: str | None, local_files_only: bool,
              token: str | None, endpoint: str | None, force: bool) -> Path:
    """Download a file released by the paper's authors and convert it once with the method's importer."""
    from huggingface_hub import constants, hf_hub_download

    from zoo import registry as zoo_registry

    with _hub_errors(entry.name):
        raw = Path(hf_hub_download(
            entry.repo_id, entry.filename, repo_type=entry.repo_type, revision=revision or entry.revision,
            cache_dir=cache_dir, local_files_only=local_files_only, token=token, endpoint=endpoint,
            force_download=force,
        ))
    commit = raw.parents[len(Path(entry.filename).parts) - 1].name  # .../snapshots/<commit>/<filename>
    target = Path(cache_dir or constants.HF_HUB_CACHE) / CONVERTED_DIR / entry.name / commit
    if not force and all((target / name).is_file() for name in FILES):
        return target
    if entry.filename in entry.sha256:
        verify(raw, entry.sha256[entry.filename], entry.name)
    cls = zoo_registry.methods.load(entry.method)
    model = cls.convert_released(raw, **entry.init_args)
    staging = Path(tempfile.mkdtemp(prefix=".converting-", dir=_mkdir(target.parent)))
    model.save_pretrained(staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)  # atomic: a half-written conversion is never taken for a finished one
    return target


def verify(path: Path, expected: str, label: str) -> None:
    """Refuse ``path`` unless its sha256 is ``expected``."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected.lower():
        raise ZooError(
            f"{path.name} of {label} has sha256 {digest.hexdigest()}, the registry pins {expected}: it is not the "
            f"published file and was not loaded; fetch it again with `zoo download {label} --force`"
        )


class _hub_errors:  # noqa: N801 - used as a context manager, reads like one
    """Turn the client's errors into ZooErrors that say what to do."""

    def __init__(self, label: str) -> None:
        self.label = label

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type | None, err: BaseException | None, tb: Any) -> bool:
        from huggingface_hub.errors import (
            EntryNotFoundError,
            HfHubHTTPError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        if err is None:
            return False
        if isinstance(err, LocalEntryNotFoundError):
            message = (f"{self.label} is not in the Hugging Face cache and the Hub was not asked (offline mode, "
                       f"HF_HUB_OFFLINE=1 or local_files_only) or cannot be reached; fetch it once while online "
                       f"with `zoo download {self.label}`")
        elif isinstance(err, RevisionNotFoundError):
            message = f"{self.label}: the revision does not exist on the Hub"
        elif isinstance(err, RepositoryNotFoundError):
            message = (f"{self.label}: the repository does not exist on the Hub, or it is private and no valid "
                       f"token was given (set HF_TOKEN or run `hf auth login`)")
        elif isinstance(err, EntryNotFoundError):
            message = f"{self.label}: a file is missing on the Hub: {err}"
        elif isinstance(err, HfHubHTTPError):
            message = f"{self.label}: the Hub answered {err}"
        else:
            return False
        raise ZooError(message) from err


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


# ------------------------------------------------------------------------------------------ publishing
def publish(directory: str | Path, repo_id: str, *, revision: str | None = None, private: bool = False,
            token: str | None = None, endpoint: str | None = None, metrics: dict | None = None,
            dataset: str | None = None, training_config: dict | None = None, overwrite: bool = False) -> str:
    """Upload a zoo checkpoint folder with a generated model card; the commit URL.

    Creates the repo (and the ``revision`` branch) when absent, then uploads ``model.safetensors``,
    ``config.json`` and ``README.md`` in one commit. Refuses to replace files already on that revision
    unless ``overwrite``.

    Args:
        directory: a folder written by ``save_pretrained``.
        repo_id: ``org/name`` on the Hub.
        revision: the branch to publish to (default ``main``).
        private: create the repo private.
        token: a Hub token (default: ``HF_TOKEN`` or the saved login); never printed.
        endpoint: another Hub (default: ``HF_ENDPOINT``).
        metrics: ``{"test/accuracy": 0.91, ...}`` from the run that produced the checkpoint.
        dataset: the data it was trained and evaluated on.
        training_config: the run's configuration (e.g. LightningCLI's ``config.yaml``).
        overwrite: replace files that already exist on the revision.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RevisionNotFoundError

    from zoo.module import CONFIG_NAME, read_config

    directory = Path(directory)
    for name in FILES:
        if not (directory / name).is_file():
            raise ZooError(f"{directory} has no {name}: give a folder written by save_pretrained or `zoo fit`")
    config = read_config(directory / CONFIG_NAME)
    card = model_card(config, repo_id, revision=revision, metrics=metrics, dataset=dataset,
                      training_config=training_config)
    branch = revision or "main"
    api = HfApi(endpoint=endpoint, token=token)
    with _hub_errors(repo_id):
        api.create_repo(repo_id, private=private, exist_ok=True)
        try:
            existing = set(api.list_repo_files(repo_id, revision=branch))
        except RevisionNotFoundError:
            api.create_branch(repo_id, branch=branch, exist_ok=True)
            existing = set()
        clash = sorted(existing & {*FILES, CARD_NAME})
        if clash and not overwrite:
            raise ZooError(
                f"{repo_id}@{branch} already has {', '.join(clash)}; publish to another --revision, or pass "
                f"overwrite=True (`zoo publish --overwrite`) to replace them"
            )
        with tempfile.TemporaryDirectory() as staging:
            for name in FILES:
                shutil.copyfile(directory / name, Path(staging) / name)
            (Path(staging) / CARD_NAME).write_text(card)
            commit = api.upload_folder(repo_id=repo_id, folder_path=staging, revision=branch,
                                       commit_message=f"Publish {config['name']} with {LIBRARY_NAME}")
    return commit.commit_url


def model_card(config: dict[str, Any], repo_id: str, *, revision: str | None = None, metrics: dict | None = None,
               dataset: str | None = None, training_config: dict | None = None) -> str:
    """The README of a published checkpoint: YAML front-matter with ``model-index`` and a body.

    The front-matter is written by ``huggingface_hub.ModelCardData`` so that the Hub reads it as its own.
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    from zoo import registry as zoo_registry
    from zoo.tasks import get_task

    cls = zoo_registry.methods.load(config["name"])
    task = config.get("task") or cls.task
    task_tag = task.replace("_", "-")
    eval_results = []
    for key, value in sorted((metrics or {}).items()):
        split, _, metric = key.rpartition("/")
        eval_results.append(EvalResult(
            task_type=task_tag, task_name=task.replace("_", " "), dataset_type=dataset or "unspecified",
            dataset_name=dataset or "unspecified", dataset_split={"val": "validation"}.get(split, split) or None,
            metric_type=metric, metric_name=key, metric_value=float(value),
        ))
    data = ModelCardData(
        library_name=LIBRARY_NAME, tags=[LIBRARY_NAME, task_tag, config["name"]],
        license=getattr(cls, "license", DEFAULT_LICENSE), datasets=[dataset] if dataset else None,
        base_model=_base_models(config["init_args"]) or None, model_name=repo_id.split("/")[-1],
        eval_results=eval_results or None,
    )
    ref = f"{HUB_PREFIX}{repo_id}" + (f"@{revision}" if revision else "")
    title = cls.display_name or config["name"]
    lines = [
        f"# {repo_id.split('/')[-1]}", "",
        f"**{title}** for {task.replace('_', ' ')}: {get_task(task).question} "
        f"Published with [{LIBRARY_NAME}](https://pypi.org/project/{LIBRARY_NAME}/).", "",
        "## Load", "", "```python",
        f'from zoo.module import ZooModule; model = ZooModule.from_pretrained("{ref}")', "```", "",
        f"or `zoo test --ckpt_path {ref} --data <datamodule>` from the command line.", "",
    ]
    if metrics:
        lines += ["## Metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {key} | {float(value):.4f} |" for key, value in sorted(metrics.items())] + [""]
    lines += ["## Data", "", f"Trained and evaluated on: {dataset or 'not recorded'}."]
    data_config = (training_config or {}).get("data")
    if data_config:
        lines += ["", "```yaml", yaml.safe_dump({"data": data_config}, sort_keys=False).rstrip(), "```"]
    lines += ["", "## Method arguments", "", "```json", json.dumps(config["init_args"], indent=2, sort_keys=True),
              "```", ""]
    rest = {k: v for k, v in (training_config or {}).items() if k != "data"}
    if rest:
        lines += ["## Training config", "", "```yaml", yaml.safe_dump(rest, sort_keys=False).rstrip(), "```", ""]
    lines += ["## Paper to cite", "", cls.paper or "(the method declares no paper)", ""]
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))  # parses it back: a bad card fails here
    return str(card)


def _base_models(init_args: dict[str, Any]) -> list[str]:
    """Hub ids of the pretrained weights a method starts from (timm tags live under ``timm/`` on the Hub)."""
    found = []
    for value in init_args.values():
        if isinstance(value, str) and value.startswith("timm:"):
            found.append("timm/" + value[len("timm:"):])
        elif isinstance(value, str) and value.startswith(HUB_PREFIX):
            found.append(value[len(HUB_PREFIX):].partition("@")[0])
    return found


def run_metadata(run_dir: Path) -> tuple[dict[str, float], str | None, dict | None]:
    """Metrics (last logged ``val/*`` and ``test/*`` of ``metrics.csv``), data name and config of a run dir."""
    metrics: dict[str, float] = {}
    if (run_dir / "metrics.csv").is_file():
        with open(run_dir / "metrics.csv", newline="") as handle:
            for row in csv.DictReader(handle):
                for key, value in row.items():
                    if key.startswith(("val/", "test/")) and value not in ("", None):
                        metrics[key] = float(value)
    config = None
    dataset = None
    if (run_dir / "config.yaml").is_file():
        config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
        data = config.get("data")
        name = data.get("class_path") if isinstance(data, dict) else data
        dataset = str(name).rpartition(".")[2] if name else None
    return metrics, dataset, config


# ------------------------------------------------------------------------------------------ commands
def cmd_publish(argv: list[str]) -> int:
    """Publish a checkpoint or a run dir to the Hugging Face Hub, with a model card."""
    parser = argparse.ArgumentParser(
        prog="zoo publish",
        description="Upload model.safetensors, config.json and a generated model card to the Hub. The token "
                    "comes from HF_TOKEN or `hf auth login`; HF_ENDPOINT selects another Hub.",
    )
    parser.add_argument("path", help="a checkpoint folder, a run dir of `zoo fit` (holding zoo/), or a .ckpt")
    parser.add_argument("--repo-id", required=True, help="org/name on the Hub")
    parser.add_argument("--revision", help="the branch to publish to (default main)")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    parser.add_argument("--overwrite", action="store_true", help="replace files already on the revision")
    parser.add_argument("--metrics", help="a JSON file of metrics for the card (default: the run's metrics.csv)")
    parser.add_argument("--dataset", help="the data it saw (default: the run's datamodule)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder, run_dir = _checkpoint_of(Path(args.path), Path(tmp))
        metrics, dataset, config = run_metadata(run_dir) if run_dir is not None else ({}, None, None)
        if args.metrics:
            try:
                metrics = json.loads(Path(args.metrics).read_text())
            except (OSError, json.JSONDecodeError) as err:
                raise ZooError(f"--metrics {args.metrics} cannot be read as JSON: {err}") from err
        url = publish(folder, args.repo_id, revision=args.revision, private=args.private, metrics=metrics,
                      dataset=args.dataset or dataset, training_config=config, overwrite=args.overwrite)
    print(url)
    return 0


def _checkpoint_of(path: Path, tmp: Path) -> tuple[Path, Path | None]:
    """The checkpoint folder to publish and the run dir it came from (None when unknown)."""
    from zoo.module import convert_checkpoint

    if path.is_file() and path.suffix == ".ckpt":
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        return convert_checkpoint(path, tmp / "zoo"), run_dir
    if (path / FILES[0]).is_file():
        return path, path.parent if path.name == "zoo" else None
    if (path / "zoo" / FILES[0]).is_file():
        return path / "zoo", path
    raise ZooError(f"{path} is neither a checkpoint folder (config.json + model.safetensors), a run dir of "
                   f"`zoo fit` holding zoo/, nor a .ckpt")


def cmd_download(argv: list[str]) -> int:
    """Download a checkpoint by short name or repo id into the Hugging Face cache."""
    parser = argparse.ArgumentParser(
        prog="zoo download",
        description="Fetch a checkpoint (a short name of `zoo list --pretrained`, hf-hub:org/name or org/name) "
                    "into the Hugging Face cache and print its folder; later loads work offline.",
    )
    parser.add_argument("source", help="short name, hf-hub:org/name[@revision] or org/name")
    parser.add_argument("--revision", help="branch, tag or commit")
    parser.add_argument("--cache-dir", help="another cache (default HF_HUB_CACHE)")
    parser.add_argument("--force", action="store_true", help="download again even if cached")
    args = parser.parse_args(argv)
    print(download(args.source, revision=args.revision, cache_dir=args.cache_dir, force=args.force))
    return 0


def print_pretrained(console: Any) -> int:
    """Print the known pretrained checkpoints."""
    from rich.table import Table

    table = Table(title="pretrained checkpoints")
    table.add_column("name", no_wrap=True)
    for column in ("method", "source", "sha256", "description"):
        table.add_column(column)
    for name, entry in known_checkpoints().items():
        where = f"{entry.repo_type}s/" if entry.repo_type != "model" else ""
        source = f"{where}{entry.repo_id}@{entry.revision}"
        if entry.filename:
            source += f"/{entry.filename}\n(released; converted on download)"
        pinned = "pinned" if entry.sha256 else "[yellow]not pinned"
        table.add_row(name, entry.method, source, pinned, entry.description)
    console.print(table)
    return 0
