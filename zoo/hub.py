"""Checkpoints on the Hugging Face Hub: publish, download by short name, load offline, model cards.

A zoo checkpoint is a folder with ``config.json`` and ``model.safetensors`` (``zoo.checkpoint``).
It is named by its folder, by ``hf-hub:org/name[@revision]`` or plainly ``org/name`` (as
``ModelHubMixin`` takes it), or by a short name from the registry of known checkpoints (declared by each
plugin beside its methods, plus the JSON file that ``$ZOO_PRETRAINED`` names), like timm's pretrained tags:
``pdf_embedding.exponential_drep`` -> repo id, revision, sha256. Checkpoints released by a paper's
authors in their own format are converted on download by the method's importer (``convert_released``)
and kept, converted, in the Hugging Face cache.

Everything goes through ``huggingface_hub``, so ``HF_ENDPOINT``, ``HF_HUB_OFFLINE``, ``HF_HUB_CACHE``
and ``HF_TOKEN`` behave as everywhere else. Only JSON and safetensors are downloaded for zoo checkpoints,
and a downloaded ``config.json`` is checked as data (registered method, known arguments, no class
paths) before anything is built from it. A token is passed to the client and never printed.

Example:
    >>> url = publish("runs/pdf/version_0/zoo", "org/pdf-embedding-tiny", metrics={"test/accuracy": 0.9})
    >>> model = ZooModule.from_pretrained("org/pdf-embedding-tiny")
    >>> model = ZooModule.from_pretrained("pdf_embedding.exponential_drep")
"""

from __future__ import annotations

import csv
import hashlib
import inspect
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from zoo.checkpoint import (
    CONFIG_NAME,
    FILES,
    THRESHOLD_KEY,
    check_config,
    check_init_args,
    newest_export,
    read_config,
    read_json,
    read_threshold,
)
from zoo.errors import ZooError, redact

HUB_PREFIX = "hf-hub:"
CARD_NAME = "README.md"
LIBRARY_NAME = "provenance-zoo"
REGISTRY_ENV = "ZOO_PRETRAINED"  # a JSON file of more known checkpoints, e.g. an organisation's own
CONVERTED_DIR = "provenance-zoo"  # released checkpoints, converted, under the Hugging Face cache
ZOO_BIBTEX = """@software{provenance_zoo,
  title = {provenance-zoo: a PyTorch Lightning model zoo for the provenance of images},
  url = {https://pypi.org/project/provenance-zoo/},
  year = {2026}
}"""
_COMMIT = re.compile(r"[0-9a-f]{40}")
REPO_TYPES = ("model", "dataset", "space", "github", "url")
# files the authors release outside the Hub (a GitHub repository, a download URL): fetched by hand and
# turned into a zoo checkpoint by `zoo convert --released`
BY_HAND = ("github", "url")


@dataclass(frozen=True)
class Pretrained:
    """One known checkpoint: a plugin's declaration, or an entry of the ``$ZOO_PRETRAINED`` file."""

    name: str
    method: str
    repo_id: str
    revision: str = "main"
    # a Hub repo type, "github" for a file the authors release only in their GitHub repository, or "url"
    # for one they serve from a download address (``repo_id`` is then that address's folder)
    repo_type: str = "model"
    # a file released by the paper's authors, converted by the method's importer (None: a zoo checkpoint)
    filename: str | None = None
    sha256: dict[str, str] = field(default_factory=dict)  # file name -> pinned digest
    init_args: dict[str, Any] = field(default_factory=dict)  # constructor arguments for the importer
    description: str = ""
    source: str = ""

    @property
    def files(self) -> tuple[str, ...]:
        """The files fetched from the Hub for this checkpoint."""
        return (self.filename,) if self.filename else FILES

    @property
    def verified(self) -> bool:
        """Whether every fetched file has a pinned sha256, so that nothing else is ever loaded under this name."""
        return all(name in self.sha256 for name in self.files)

    def verification(self) -> str:
        """The verification state, in words."""
        branch = "" if _COMMIT.fullmatch(self.revision) else f"revision {self.revision!r} is a branch, not a commit"
        if self.repo_type == "url":  # a download address has no revision
            if self.verified:
                return f"sha256 pinned; check the file you download: sha256 {self.sha256[self.filename]}"
            return (f"UNVERIFIED: no sha256 pinned for {self.filename}; a file served at an address can change, "
                    "and nothing checks the one you download")
        if self.verified and self.repo_type == "github":  # downloaded by hand: the digest is for the user to check
            return ("sha256 pinned" + (f" ({branch})" if branch else f" at commit {self.revision[:12]}")
                    + f"; check the file you download: sha256 {self.sha256[self.filename]}")
        if self.verified:
            return "verified: sha256 pinned" + (f" ({branch})" if branch else f" at commit {self.revision[:12]}")
        unpinned = ", ".join(name for name in self.files if name not in self.sha256)
        return (f"UNVERIFIED: no sha256 pinned for {unpinned}" + (f", {branch}" if branch else "")
                + "; whatever the repo holds now is loaded")


def known_checkpoints(path: str | Path | None = None) -> dict[str, Pretrained]:
    """The known checkpoints: those the plugins declare, then the file ``$ZOO_PRETRAINED`` names (it wins on a
    clash); with ``path``, that file's only."""
    from zoo import registry as zoo_registry

    found: dict[str, Pretrained] = {}
    if path is None:  # declared beside each method and copied into its plugin's manifest (zoo.registry)
        for name, (entry, manifest) in zoo_registry.pretrained().items():
            found[name] = _entry(manifest, name, entry)
    files = [Path(path)] if path is not None else []
    if path is None and os.environ.get(REGISTRY_ENV):
        files.append(Path(os.environ[REGISTRY_ENV]))
    for file in files:
        entries = _json_object(file, "registry of pretrained checkpoints", "must be a JSON object of name -> entry")
        for name, entry in entries.items():
            found[name] = _entry(file, name, entry)
    return found


# an entry's fields and the JSON types they take (``note`` is a comment for the file's readers)
_ENTRY_TYPES: dict[str, type | tuple[type, ...]] = {
    "method": str, "repo_id": str, "revision": str, "repo_type": str, "filename": (str, type(None)),
    "sha256": dict, "init_args": dict, "description": str, "source": str, "note": object,
}
_ENTRY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _entry(file: Path, name: str, entry: Any) -> Pretrained:
    """One entry of a registry file, checked as data: its name and file name are used in cache paths."""
    where = f"{file}: entry {name!r}"
    if not _ENTRY_NAME.fullmatch(name):
        raise ZooError(f"{where}: a name is letters, digits, '.', '_' and '-' (no path separators), "
                       "starting with a letter or digit")
    if not isinstance(entry, dict):
        raise ZooError(f"{where} must be a JSON object, not {type(entry).__name__}")
    for key in ("method", "repo_id"):
        if key not in entry:
            raise ZooError(f"{where} has no {key!r}")
    for key, value in entry.items():
        if key not in _ENTRY_TYPES:
            raise ZooError(f"{where}: unknown field {key!r} (fields: {', '.join(_ENTRY_TYPES)})")
        if not isinstance(value, _ENTRY_TYPES[key]):
            raise ZooError(f"{where}: {key!r} has the wrong type ({type(value).__name__})")
    if entry.get("repo_type", "model") not in REPO_TYPES:
        raise ZooError(f"{where} has repo_type {entry['repo_type']!r}; it must be one of {', '.join(REPO_TYPES)}")
    filename = entry.get("filename")
    if filename is not None:
        parts = Path(filename).parts
        if not parts or Path(filename).is_absolute() or ".." in parts or "\\" in filename:
            raise ZooError(f"{where}: filename {filename!r} must be a relative path inside the repo, without '..'")
    for key, digest in entry.get("sha256", {}).items():
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", digest):
            raise ZooError(f"{where}: sha256 of {key!r} must be 64 hexadecimal digits")
    return Pretrained(name=name, **{k: v for k, v in entry.items() if k != "note"})


def check_repo_id(repo_id: str, where: str = "repo id") -> str:
    """``repo_id`` if the Hub accepts it as ``org/name``; a one-line ZooError otherwise."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ZooError(f"{where} {repo_id!r} is not a valid Hub repo id (org/name): {err}") from err
    return repo_id


def looks_like_repo_id(text: str) -> bool:
    """Whether ``text`` has the form ``org/name`` of a Hub repo id (it may still be a missing local path)."""
    if text.count("/") != 1 or text.startswith((".", "/", "~")):
        return False
    try:
        check_repo_id(text)
    except ZooError:
        return False
    return True


# ------------------------------------------------------------------------------------------- loading
def resolve(source: str | Path, revision: str | None = None, cache_dir: str | None = None,
            local_files_only: bool | None = None, token: str | None = None, endpoint: str | None = None) -> Path:
    """The local folder of a zoo checkpoint: a folder, ``hf-hub:org/name[@rev]``, ``org/name`` or a short name.

    A local folder is the checkpoint itself or a run folder of ``zoo fit`` (``runs/cnn``, its ``lightning_logs``
    or a version folder), whose newest export is used (``zoo.checkpoint.newest_export``).

    A string that is not an existing path nor a known short name, and has the form ``org/name``, is a
    Hub repo id. Hub checkpoints come from the Hugging Face cache when present; with ``HF_HUB_OFFLINE=1``
    or ``local_files_only=True`` nothing is asked of the network. Pinned sha256 digests are verified.
    """
    return _fetch(source, revision=revision, cache_dir=cache_dir, local_files_only=bool(local_files_only),
                  token=token, endpoint=endpoint)


def download(source: str, revision: str | None = None, cache_dir: str | None = None, token: str | None = None,
             endpoint: str | None = None, force: bool = False) -> Path:
    """Fetch a checkpoint (short name, ``hf-hub:org/name`` or ``org/name``) into the cache; its local folder."""
    return _fetch(source, revision=revision, cache_dir=cache_dir, local_files_only=False, token=token,
                  endpoint=endpoint, force=force, command=True)


def _fetch(source: str | Path, *, revision: str | None, cache_dir: str | None, local_files_only: bool,
           token: str | None, endpoint: str | None, force: bool = False, command: bool = False) -> Path:
    text = str(source)
    hub = dict(cache_dir=cache_dir, local_files_only=local_files_only, token=token, endpoint=endpoint, force=force,
               command=command)
    if text.startswith(HUB_PREFIX):
        repo_id, _, at = text[len(HUB_PREFIX):].partition("@")
        return _snapshot(check_repo_id(repo_id, text), revision or at or None, label=text, **hub)
    path = Path(text)
    if path.is_dir():  # a checkpoint folder, or a run folder of `zoo fit` (its newest export), as zoo predict takes
        return newest_export(path)
    known = known_checkpoints()
    if text in known:
        entry = known[text]
        if entry.repo_type in BY_HAND:
            where = "on GitHub" if entry.repo_type == "github" else "at a download address"
            raise ZooError(redact(
                f"{text} is released {where}, not on the Hugging Face Hub: download {entry.filename} from "
                f"{entry.source or 'github.com/' + entry.repo_id} and convert it with `zoo convert --released "
                f"{entry.method} <file> <folder>`"
            ))
        if entry.filename is not None:
            return _released(entry, revision, **hub)
        return _snapshot(entry.repo_id, revision or entry.revision, label=text, entry=entry, **hub)
    if not path.exists() and looks_like_repo_id(text):
        return _snapshot(text, revision, label=text, bare=True, **hub)
    raise ZooError(
        f"checkpoint {text!r} is not a folder, an 'org/name' or 'hf-hub:org/name' repo id, nor a known short "
        f"name (`zoo list --pretrained` shows them)"
    )


def _snapshot(repo_id: str, revision: str | None, *, label: str, cache_dir: str | None, local_files_only: bool,
              token: str | None, endpoint: str | None, force: bool, command: bool,
              entry: Pretrained | None = None, bare: bool = False) -> Path:
    from huggingface_hub import snapshot_download

    if force:
        _evict(repo_id, FILES, revision=revision, repo_type="model", cache_dir=cache_dir)
    with _hub_errors(label, endpoint=endpoint, asked_offline=local_files_only, command=command, bare=bare):
        folder = Path(snapshot_download(
            repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=list(FILES),
            local_files_only=local_files_only, token=token, endpoint=endpoint, force_download=force,
        ))
    for name in FILES:
        if not (folder / name).is_file():
            raise ZooError(f"{label} ({repo_id}) has no {name}: it is not a zoo checkpoint")
    for name, digest in (entry.sha256 if entry else {}).items():
        verify(folder / name, digest, label)
    check_config(folder, label, method=entry.method if entry else None)
    return folder


def _released(entry: Pretrained, revision: str | None, *, cache_dir: str | None, local_files_only: bool,
              token: str | None, endpoint: str | None, force: bool, command: bool) -> Path:
    """Download a file released by the paper's authors and convert it once with the method's importer."""
    from huggingface_hub import constants, hf_hub_download

    from zoo import registry as zoo_registry

    cls = zoo_registry.methods.load(entry.method)
    init_args = check_init_args(cls, entry.init_args, f"known checkpoint {entry.name!r}")
    if force:
        _evict(entry.repo_id, entry.files, revision=revision or entry.revision, repo_type=entry.repo_type,
               cache_dir=cache_dir)
    with _hub_errors(entry.name, endpoint=endpoint, asked_offline=local_files_only, command=command):
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
    model = cls.convert_released(raw, **init_args)
    staging = Path(tempfile.mkdtemp(prefix=".converting-", dir=_mkdir(target.parent)))
    model.save_pretrained(staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)  # atomic: a half-written conversion is never taken for a finished one
    return target


def _evict(repo_id: str, files: tuple[str, ...], *, revision: str | None, repo_type: str,
           cache_dir: str | None) -> None:
    """Remove cached copies of ``files``, so that a forced download replaces them.

    The Hub client downloads a new blob on ``force_download`` but keeps an existing snapshot link, which
    would still point at the old (possibly bad) copy.
    """
    from huggingface_hub import try_to_load_from_cache

    for name in files:
        cached = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir, revision=revision, repo_type=repo_type)
        if isinstance(cached, str):
            _remove_cached(Path(cached))


def _remove_cached(path: Path) -> None:
    """Remove a cached file: the snapshot's link and the blob it points at."""
    blob = path.resolve()
    path.unlink(missing_ok=True)
    if blob != path.absolute():
        blob.unlink(missing_ok=True)


def verify(path: Path, expected: str, label: str) -> None:
    """Refuse ``path`` unless its sha256 is ``expected``; a refused file is removed from the cache."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected.lower():
        _remove_cached(path)
        raise ZooError(
            f"{path.name} of {label} has sha256 {digest.hexdigest()}, the registry pins {expected}: it is not the "
            f"published file and was not loaded; fetch it again with `zoo download {label} --force`"
        )


def _unreachable(err: BaseException) -> bool:
    """Whether ``err`` (or what caused it) is a failed connection, whatever HTTP library the client uses."""
    from huggingface_hub.errors import OfflineModeIsEnabled

    seen = 0
    while err is not None and seen < 10:
        names = {klass.__name__ for klass in type(err).__mro__}
        if isinstance(err, OfflineModeIsEnabled | ConnectionError | TimeoutError) or names & {
                "TransportError", "ConnectionError", "Timeout", "NetworkError"}:
            return True
        err, seen = err.__cause__ or err.__context__, seen + 1
    return False


class _hub_errors:  # noqa: N801 - used as a context manager, reads like one
    """Turn the client's errors into one-line ZooErrors that say what to do.

    Args:
        label: what was asked for, as the user named it.
        endpoint: the Hub asked (default ``HF_ENDPOINT``).
        asked_offline: the caller asked for the cache only (``local_files_only``).
        command: the network was the point (``zoo download``, ``zoo publish``): never suggest running it again.
        bare: ``label`` is an ``org/name`` that is no local folder, taken as a Hub repo id (said, for typos).
    """

    def __init__(self, label: str, *, endpoint: str | None = None, asked_offline: bool = False,
                 command: bool = True, bare: bool = False) -> None:
        self.label, self.endpoint, self.asked_offline, self.command = label, endpoint, asked_offline, command
        self.what = f"{label} (no such local folder, so a Hub repo id)" if bare else label

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type | None, err: BaseException | None, tb: Any) -> bool:
        from huggingface_hub import constants
        from huggingface_hub.errors import (
            EntryNotFoundError,
            HfHubHTTPError,
            LocalEntryNotFoundError,
            OfflineModeIsEnabled,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        if err is None:
            return False
        hub = self.endpoint or constants.ENDPOINT
        offline = self.asked_offline or constants.HF_HUB_OFFLINE
        if self.command and (isinstance(err, OfflineModeIsEnabled) or
                             isinstance(err, LocalEntryNotFoundError) and constants.HF_HUB_OFFLINE):
            message = f"{self.what}: HF_HUB_OFFLINE=1 is set, so the Hub was not asked; unset it to reach the Hub"
        elif isinstance(err, LocalEntryNotFoundError) and offline:
            message = (f"{self.what} is not in the Hugging Face cache and the Hub was not asked (offline mode, "
                       f"HF_HUB_OFFLINE=1 or local_files_only); fetch it once while online with "
                       f"`zoo download {self.label}`")
        elif isinstance(err, LocalEntryNotFoundError) or _unreachable(err):
            message = (f"{self.what}: the Hugging Face Hub ({hub}) is unreachable and nothing usable is in the "
                       f"cache; check the network connection or HF_ENDPOINT")
        elif isinstance(err, RevisionNotFoundError):
            message = f"{self.what}: the revision does not exist on the Hub"
        elif isinstance(err, RepositoryNotFoundError):
            message = (f"{self.what}: no such repository on the Hub, or it is private and no valid token was "
                       f"given (--token, HF_TOKEN or `hf auth login`)")
        elif isinstance(err, EntryNotFoundError):
            message = f"{self.what}: a file is missing on the Hub: {_one_line(err)}"
        elif isinstance(err, HfHubHTTPError):
            message = f"{self.what}: the Hub answered {_one_line(err)}"
        else:
            return False
        raise ZooError(redact(message)) from err  # an endpoint or the client's message may hold credentials


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


# ------------------------------------------------------------------------------------------ publishing
def publish(directory: str | Path, repo_id: str, *, revision: str | None = None, private: bool = False,
            token: str | None = None, endpoint: str | None = None, metrics: dict | None = None,
            dataset: str | None = None, training_config: dict | None = None, overwrite: bool = True) -> str:
    """Upload a zoo checkpoint folder with a generated model card; the commit URL.

    Creates the repo (and the ``revision`` branch) when absent, then uploads ``model.safetensors``,
    ``config.json`` and ``README.md`` in one commit on top of what the revision holds, as the Hub client
    does. With ``overwrite=False`` (``zoo publish`` without ``--overwrite``) files already on that
    revision are not replaced.

    Args:
        directory: a folder written by ``save_pretrained``.
        repo_id: ``org/name`` on the Hub.
        revision: the branch to publish to (default ``main``).
        private: create the repo private.
        token: a Hub token (default: ``HF_TOKEN`` or the saved login); never printed.
        endpoint: another Hub (default: ``HF_ENDPOINT``).
        metrics: ``{"test/accuracy": 0.91, ...}`` from the run that produced the checkpoint; a logged
            decision threshold is a setting of the model, not a metric, and is left out.
        dataset: the data it was trained and evaluated on: a Hub dataset id, or a datamodule name.
        training_config: the run's configuration (e.g. LightningCLI's ``config.yaml``).
        overwrite: replace files that already exist on the revision.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RevisionNotFoundError

    check_repo_id(repo_id, "--repo_id")
    directory = Path(directory)
    for name in FILES:
        if not (directory / name).is_file():
            raise ZooError(f"{directory} has no {name}: give a folder written by save_pretrained or `zoo fit`")
    check_config(directory, str(directory))  # as data: a registered method and its arguments
    config = read_config(directory / CONFIG_NAME)
    card = model_card(config, repo_id, revision=revision, metrics=metrics, dataset=dataset,
                      training_config=training_config, threshold=read_threshold(directory))
    branch = revision or "main"
    api = HfApi(endpoint=endpoint, token=token)
    with _hub_errors(repo_id, endpoint=endpoint):
        api.create_repo(repo_id, private=private, exist_ok=True)
        try:
            existing = set(api.list_repo_files(repo_id, revision=branch))
        except RevisionNotFoundError:
            api.create_branch(repo_id, branch=branch, exist_ok=True)
            existing = set()
        clash = sorted(existing & {*FILES, CARD_NAME})
        if clash and not overwrite:
            raise ZooError(
                f"{repo_id}@{branch} already has {', '.join(clash)}, so nothing was uploaded; to commit on top "
                f"(the old files stay in the repo's history) add --overwrite, or publish beside them with "
                f"--revision <new branch>"
            )
        with tempfile.TemporaryDirectory() as staging:
            for name in FILES:
                shutil.copyfile(directory / name, Path(staging) / name)
            (Path(staging) / CARD_NAME).write_text(card)
            commit = api.upload_folder(repo_id=repo_id, folder_path=staging, revision=branch,
                                       commit_message=f"Publish {config['name']} with {LIBRARY_NAME}")
    return redact(commit.commit_url)  # printed by `zoo publish`: the endpoint's credentials are not


def _is_threshold(key: str) -> bool:
    """Whether a logged metric is the decision threshold: a setting stored with the weights, not a metric."""
    return key.rpartition("/")[2] == THRESHOLD_KEY


def model_card(config: dict[str, Any], repo_id: str, *, revision: str | None = None, metrics: dict | None = None,
               dataset: str | None = None, training_config: dict | None = None,
               threshold: float | None = None) -> str:
    """The README of a published checkpoint: YAML front-matter with ``model-index`` and a body.

    The front-matter is written by ``huggingface_hub.ModelCardData`` so that the Hub reads it as its own.
    It names only what is on the Hub: ``datasets`` and ``model-index`` only for a Hub dataset id (a
    datamodule of the zoo is described in the text), ``base_model`` only for pretrained encoder weights
    that the method really loads from the Hub.
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    from zoo import registry as zoo_registry
    from zoo.tasks import get_task

    cls = zoo_registry.methods.load(config["name"])
    task = cls.task  # the class's own task: a config.json's "task" entry is informative only
    spec = get_task(task)
    task_tag = task.replace("_", "-")
    metrics = {k: _number(v, k) for k, v in (metrics or {}).items() if not _is_threshold(k)}
    hub_dataset = dataset if dataset and looks_like_repo_id(dataset) else None
    eval_results = []
    for key, value in sorted(metrics.items()) if hub_dataset else ():
        split, _, metric = key.rpartition("/")
        eval_results.append(EvalResult(
            task_type=task_tag, task_name=task.replace("_", " "), dataset_type=hub_dataset,
            dataset_name=hub_dataset, dataset_split={"val": "validation"}.get(split, split) or None,
            metric_type=metric, metric_name=key, metric_value=value,
        ))
    data = ModelCardData(
        library_name=LIBRARY_NAME, tags=[LIBRARY_NAME, task_tag, config["name"]],
        license=cls.license, datasets=[hub_dataset] if hub_dataset else None,
        base_model=base_models(cls, config["init_args"]) or None, model_name=repo_id.split("/")[-1],
        pipeline_tag=spec.pipeline_tag, eval_results=eval_results or None,
    )
    ref = f"{HUB_PREFIX}{repo_id}" + (f"@{revision}" if revision else "")
    title = cls.display_name or config["name"]
    lines = [
        f"# {repo_id.split('/')[-1]}", "",
        f"**{title}** for {task.replace('_', ' ')}: {spec.question} "
        f"Published with [{LIBRARY_NAME}](https://pypi.org/project/{LIBRARY_NAME}/).", "",
        "## Load", "", "```python",
        f'from zoo.module import ZooModule; model = ZooModule.from_pretrained("{ref}")', "```", "",
        f"or `zoo test --ckpt_path {ref} --data <datamodule>` from the command line.", "",
    ]
    if metrics:
        lines += ["## Metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {key} | {value:.4f} |" for key, value in sorted(metrics.items())] + [""]
    if threshold is not None and spec.score_is_logit:  # shown as zoo predict shows it
        import torch

        probability = float(torch.sigmoid(torch.tensor(float(threshold))))
        lines += [f"Decision threshold: a probability generated of {probability:.4f} (logit {threshold:.4f}; a "
                  "setting stored with the weights, calibrated on validation data; not a metric).", ""]
    elif threshold is not None:
        lines += [f"Decision threshold on the score: {threshold:.4f} (a setting stored with the weights, "
                  f"calibrated on validation data when the method calibrates one; not a metric).", ""]
    lines += ["## Data", "", _data_text(dataset, hub_dataset)]
    data_config = (training_config or {}).get("data")
    if data_config:
        lines += ["", "```yaml", yaml.safe_dump({"data": data_config}, sort_keys=False).rstrip(), "```"]
    lines += ["", "## Method arguments", "", "```json", json.dumps(config["init_args"], indent=2, sort_keys=True),
              "```", ""]
    rest = {k: v for k, v in (training_config or {}).items() if k != "data"}
    if rest:
        lines += ["## Training config", "", "```yaml", yaml.safe_dump(rest, sort_keys=False).rstrip(), "```", ""]
    lines += ["## Limitations", "",
              f"- The scores hold for data like the data above. On other image sources, generators, fine-tuning "
              f"methods or post-processing, {task.replace('_', ' ')} scores can be much worse; measure on your "
              f"own data before relying on a decision.",
              "- A score is evidence to weigh, not proof: it does not establish on its own that an image was "
              "generated, copied or used for training.",
              "- Numbers on the zoo's mini sets only show that the method learns what such a set encodes; they "
              "are not paper-scale results.", ""]
    citation = cls.bibtex.strip()
    lines += ["## Citation", "", f"The method: {cls.paper or '(the method declares no paper)'}.", "",
              "```bibtex", *([citation, ""] if citation else []), ZOO_BIBTEX, "```", ""]
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))  # parses it back: a bad card fails here
    return str(card)


def _number(value: Any, key: str, where: str = "") -> float:
    import math

    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError) as err:
        raise ZooError(f"{where + ': ' if where else ''}metric {key!r} = {value!r:.60} is not a number") from err
    if isinstance(value, bool) or not math.isfinite(number):
        raise ZooError(f"{where + ': ' if where else ''}metric {key!r} = {value!r:.60} is not a finite number")
    return number


def _json_object(path: Path, what: str, shape: str) -> dict[str, Any]:
    """The JSON object in ``path``; anything else is one ZooError that names ``what`` and the file."""
    try:
        data = read_json(path)
    except ZooError as err:
        raise ZooError(f"{what}: {err}") from err
    if not isinstance(data, dict):
        raise ZooError(f"{what} {path} {shape}")
    return data


def read_metrics(path: Path) -> dict[str, float]:
    """A ``--metrics`` JSON file: an object of metric name -> finite number."""
    metrics = _json_object(path, "--metrics", "must hold a JSON object of metric name -> number")
    return {key: _number(value, key, f"--metrics {path}") for key, value in metrics.items()}


def _read_yaml(path: Path) -> dict[str, Any]:
    """A run's ``config.yaml`` as plain data (safe_load: a ``!!python`` tag is refused, not run)."""
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        first = " ".join(str(err).split())[:200]
        raise ZooError(f"{path} is not a readable YAML file of plain data: {first}") from err
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise ZooError(f"{path} must hold a YAML mapping, not {type(config).__name__}")
    return config


def _data_text(dataset: str | None, hub_dataset: str | None) -> str:
    if hub_dataset:
        return f"Trained and evaluated on the Hub dataset [{hub_dataset}](https://huggingface.co/datasets/{hub_dataset})."
    if not dataset:
        return "The data it was trained and evaluated on was not recorded."
    from zoo import registry as zoo_registry

    described = ""
    if dataset in zoo_registry.datamodules.entries:
        with _quiet_errors():
            described = f" ({zoo_registry.datamodules.load(dataset).description})"
    return (f"Trained and evaluated on `{dataset}`{described}, a datamodule of the zoo, not a dataset on the Hub "
            f"(so the card's metadata names no dataset).")


class _quiet_errors:  # noqa: N801 - a context manager
    """A broken plugin only loses its description in the card."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type | None, err: BaseException | None, tb: Any) -> bool:
        return isinstance(err, ZooError)


def base_models(cls: type, init_args: dict[str, Any]) -> list[str]:
    """Hub ids of the pretrained encoder weights the method loads; none for a random-init encoder.

    An encoder is named by ``timm:name[.tag]`` (or a bare timm name in an ``encoder`` argument),
    ``open_clip:Arch@tag`` or ``hf-hub:org/name``; the library's own pretrained config
    says where on the Hub its weights live. An encoder is random-init when the method's ``pretrained``
    (or ``<arg>_pretrained``) argument is False.
    """
    params = inspect.signature(cls.__init__).parameters
    args = {n: p.default for n, p in params.items() if p.default is not inspect.Parameter.empty}
    args.update(init_args)
    found = []
    for key, value in args.items():
        if not isinstance(value, str) or args.get(f"{key}_pretrained", args.get("pretrained")) is False:
            continue
        hub_id = _encoder_hub_id(value, bare_timm=key == "encoder")
        if hub_id and hub_id not in found:
            found.append(hub_id)
    return found


def _encoder_hub_id(spec: str, bare_timm: bool) -> str | None:
    if spec.startswith(HUB_PREFIX):
        return spec[len(HUB_PREFIX):].partition("@")[0]
    library, sep, name = spec.partition(":")
    if not sep and bare_timm:
        library, name = "timm", spec
    if library == "timm" and name:
        import timm.models

        cfg = timm.models.get_pretrained_cfg(name)
        return cfg.hf_hub_id.rstrip("/") if cfg is not None and cfg.hf_hub_id else None
    if library == "open_clip" and "@" in name:
        import open_clip

        arch, _, tag = name.partition("@")
        return (open_clip.get_pretrained_cfg(arch, tag).get("hf_hub") or "").rstrip("/") or None
    return None


def run_metadata(run_dir: Path) -> tuple[dict[str, float], str | None, dict | None]:
    """Metrics (last logged ``val/*`` and ``test/*`` of ``metrics.csv``), data name and config of a run dir."""
    metrics: dict[str, float] = {}
    table = run_dir / "metrics.csv"
    if table.is_file():
        try:
            with open(table, newline="", encoding="utf-8") as handle:
                for line, row in enumerate(csv.DictReader(handle), start=2):
                    for key, value in row.items():
                        if (isinstance(key, str) and key.startswith(("val/", "test/")) and value not in ("", None)
                                and not _is_threshold(key)):
                            metrics[key] = _number(value, key, f"{table} line {line}")
        except (OSError, UnicodeDecodeError, csv.Error) as err:
            raise ZooError(f"{table}: not a readable CSV file: {err}") from err
    config = None
    dataset = None
    if (run_dir / "config.yaml").is_file():
        config = _read_yaml(run_dir / "config.yaml")
        data = config.get("data")
        name = data.get("class_path") if isinstance(data, dict) else data
        dataset = str(name).rpartition(".")[2] if name else None
    return metrics, dataset, config
