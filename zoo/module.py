"""``ZooModule``: the LightningModule every method derives from.

A method implements ``predict_batch`` (a batch of its task in, predictions of its task out) and, if it
trains, ``training_step`` and ``configure_optimizers``. The ZooModule does the rest the same way for
every method: batch and prediction checks, the task's metrics, threshold calibration on validation for
the binary tasks, and saving as ``config.json`` + ``model.safetensors``.

Example:
    >>> model = ZooModule.from_pretrained("runs/pdf/export")        # folder written by save_pretrained
    >>> model = registry.load_method("PDFEmbedding").from_variant("tiny")
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch
from torch import Tensor

from zoo.checkpoint import (
    CKPT_ENTRY,
    FORMAT_VERSION,
    load_folder,
    write_checkpoint,
)
from zoo.errors import ZooError
from zoo.tasks import Task, get_task, task_names
from zoo.tasks.metrics import best_accuracy_threshold

VAL_SCORE_QUANTILES = 33  # the stored validation score distributions: min, every 1/32 of the way, max


class ZooModule(pl.LightningModule):
    """Base class of every method.

    Class attributes a method declares:
        task: the name of a registered task (``zoo list`` shows them; the zoo's own four are ``copy_detection``,
            ``fake_detection``, ``copyright`` and ``attribution``).
        paper: the paper it implements, as "Title (Venue Year)".
        variants: named sets of constructor arguments; ``tiny`` is the offline test variant every method has.
        trains: False for methods with nothing to learn by gradient descent (the harness then skips ``fit``).
        license: the license of its weights, on the model card (the zoo's own, Apache-2.0, unless the
            weights come under other terms, e.g. a paper's released checkpoint).
        bibtex: the BibTeX entry of its paper, cited on the model card beside the zoo's ("" for none).
    """

    task: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    variants: ClassVar[dict[str, dict[str, Any]]] = {}
    trains: ClassVar[bool] = True
    # binary tasks: the decision threshold before any calibration (for logits, 0)
    default_threshold: ClassVar[float] = 0.0
    # binary tasks: set False when the method decides by a rule of its own
    calibrates_threshold: ClassVar[bool] = True
    # Trainer arguments for the ``tiny`` variant on the mini suite (the benchmark and the tests use them)
    tiny_trainer: ClassVar[dict[str, Any]] = {"max_epochs": 2}
    # a short human name shown in ``zoo list`` beside the registry name, e.g. "UniversalFakeDetect"
    display_name: ClassVar[str] = ""
    license: ClassVar[str] = "apache-2.0"  # a Hub license id
    bibtex: ClassVar[str] = ""
    # state keys a method added after checkpoints of it were written: a file without them still loads, and they
    # keep their defaults (``zoo.checkpoint.OPTIONAL_STATE_KEYS`` holds the base class's own)
    optional_state_keys: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.task and cls.task not in task_names():  # the registered tasks, a plugin's among them
            raise ZooError(f"{cls.__name__}.task is {cls.task!r}; it must be one of {', '.join(task_names())}")

    def __init__(self) -> None:
        super().__init__()
        if not self.task:
            raise ZooError(f"{type(self).__name__} declares no task")
        # records the subclass's constructor arguments (Lightning walks up to the subclass __init__)
        self.save_hyperparameters()
        spec = self.task_spec
        self.metrics = torch.nn.ModuleDict({"val": spec.make_metrics(), "test": spec.make_metrics()})
        if spec.binary:
            self.register_buffer("threshold", torch.tensor(float(self.default_threshold)))
        if spec.binary and self.calibrates_threshold:
            # the validation scores the threshold was calibrated on, kept so that a reader (zoo serve's page)
            # can draw a score against them: per class (row 0 = label 0), the count and the scores at
            # VAL_SCORE_QUANTILES evenly spaced quantiles; a count of 0 means not stored (an older checkpoint)
            self.register_buffer("val_score_counts", torch.zeros(2))
            self.register_buffer("val_score_quantiles", torch.zeros(2, VAL_SCORE_QUANTILES))
        self._val_scores: list[Tensor] = []
        self._val_labels: list[Tensor] = []
        # where pictures a method shows its users go outside a Lightning run (``artifact_dir``)
        self.artifact_root: str | Path | None = None

    # ----------------------------------------------------------------- what a method implements
    def predict_batch(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """Predictions of the task's schema for one batch of the task's contract."""
        raise NotImplementedError(f"{type(self).__name__} must implement predict_batch")

    # Copy-detection methods also offer, for retrieval at gallery scale:
    #   embed(images) -> (B, D) descriptors, cosine-comparable;
    #   pair_from_embeddings(generated_emb, real_emb) -> predictions of the task schema, so that
    #   candidate pairs are re-ranked from stored descriptors without running the encoder again.

    def image_transform(self) -> Callable[[Any], Tensor] | None:
        """PIL image -> tensor pre-processing the datamodule applies for this method (None: its default)."""
        return None

    @classmethod
    def convert_released(cls, path: str | Path, **init_args: Any) -> ZooModule:
        """Build the method from a checkpoint file released by the paper's authors (methods that have one)."""
        raise ZooError(f"{cls.__name__} has no importer for released checkpoints")

    # ----------------------------------------------------------------- shared behaviour
    @property
    def task_spec(self) -> Task:
        return get_task(self.task)

    @classmethod
    def from_variant(cls, variant: str, **overrides: Any) -> ZooModule:
        """Build the named variant, with ``overrides`` on top of its arguments.

        A method that trains is built untrained (random or pretrained-encoder weights): fit it before trusting
        its predictions. Random-init weights are drawn from a fixed seed, so that two builds are the same
        model; the global random state is left as it was.
        """
        if variant not in cls.variants:
            raise ZooError(
                f"{cls.__name__} has no variant {variant!r}; its variants are {', '.join(cls.variants) or 'none'}"
            )
        with seeded():
            return cls(**{**cls.variants[variant], **overrides})

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is None:
            return
        data_task = getattr(datamodule, "task", None)
        if data_task and data_task != self.task:
            raise ZooError(
                f"{type(self).__name__} is a {self.task} method but {type(datamodule).__name__} "
                f"gives {data_task} batches"
            )
        transform = self.image_transform()
        if transform is not None and hasattr(datamodule, "transform"):
            datamodule.transform = transform

    def artifact_dir(self) -> Path | None:
        """A folder for images a method wants users to see (e.g. recovered images), or None.

        ``zoo predict`` sets ``artifact_root``; in a Lightning run it is ``<log dir>/artifacts``; a run
        without a logger writes nothing.
        """
        if self.artifact_root is not None:
            path = Path(self.artifact_root)
        elif self._trainer is None or self.trainer.logger is None or not self.trainer.log_dir:
            return None
        else:
            path = Path(self.trainer.log_dir) / "artifacts"
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ZooError(f"cannot write the pictures of {type(self).__name__} to {path}: {err}") from err
        return path

    def artifact_paths(self, names: list[str], suffix: str = ".png") -> list[Path] | None:
        """A file in ``artifact_dir()`` for each input name, or None where there is no folder.

        The file is named after the input's last three path parts, extension kept (``photo.png`` and
        ``photo.jpg`` differ), plus a digest of the whole name, so that inputs whose last parts agree do not
        share a file, and a re-run writes the same files again. A name is data (an absolute path, ``..``):
        each file is checked to lie in the folder once resolved.
        """
        import hashlib
        import re
        from pathlib import PurePath

        folder = self.artifact_dir()
        if folder is None:
            return None
        root = folder.resolve()
        paths = []
        for name in names:
            parts = [p for p in PurePath(name).parts if p not in ("..", ".") and not p.endswith(("/", "\\"))]
            readable = re.sub(r"[^\w.+-]+", "_", "-".join(parts[-3:]), flags=re.ASCII).lstrip(".-")[-80:]
            digest = hashlib.sha256(name.encode("utf-8", "backslashreplace")).hexdigest()[:8]
            path = folder / f"{readable or 'image'}-{digest}{suffix}"
            if path.resolve().parent != root:  # e.g. a link planted in the folder
                raise ZooError(f"the picture of {name!r} would be written outside {folder} (to {path.resolve()}); "
                               "not written")
            paths.append(path)
        return paths

    def predictions(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """``predict_batch`` checked against the task, completed by it; labels not needed.

        The task completes what it owns: the binary decision from the calibrated threshold, and copy
        detection's ``exact_copy`` from the pixels (level 5 where the two images are the same pixels).
        """
        spec = self.task_spec
        spec.check_batch(batch, labelled=False)
        pred = dict(self.predict_batch(batch))
        if spec.binary and "score" in pred and "decision" not in pred:
            pred["decision"] = (pred["score"].detach() >= self.threshold).long()
        spec.check_prediction(pred, type(self).__name__)
        if spec.complete is not None:
            spec.complete(batch, pred)
        return pred

    def forward(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """The task's predictions for a batch of pre-processed tensors (see ``predictions``), without gradients.

        The images must be what ``preprocess`` gives (the method's own ``image_transform``); images in another
        range (0-255 pixels, say) are refused. Runs in inference mode; the tensors returned are detached.

        Raises:
            ZooError: the batch breaks the task's contract, or its images lie outside the pre-processing's range.

        Example:
            >>> model = ZooModule.from_pretrained("runs/fake/zoo")
            >>> model({"image": model.preprocess(["a.png", "b.jpg"]), "id": ["a", "b"]})["score"].shape
            torch.Size([2])
        """
        self._check_input_range(batch)
        with torch.inference_mode():
            pred = self.predictions(batch)
        # clones made outside inference mode: plain tensors a caller may modify in place
        return {k: v.detach().clone() if isinstance(v, Tensor) else v for k, v in pred.items()}

    def preprocessing(self) -> Callable[[Any], Tensor]:
        """PIL image -> tensor: the method's ``image_transform``, or a plain 224 x 224 resize to [0, 1]."""
        from zoo.data.base import default_transform

        return self.image_transform() or default_transform(224)

    def preprocess(self, images: Any) -> Tensor:
        """Paths or PIL images (one, or a list) -> the ``(B, 3, H, W)`` tensor ``model(batch)`` expects.

        Example:
            >>> copies = ZooModule.from_pretrained("runs/pdf/zoo")
            >>> copies({"generated": copies.preprocess("gen.png"), "real": copies.preprocess("real.jpg"), "id": ["p"]})
        """
        from zoo.data.images import open_image, to_rgb

        values = images if isinstance(images, list | tuple) else [images]
        transform = self.preprocessing()
        return torch.stack([transform(to_rgb(v) if hasattr(v, "convert") and hasattr(v, "size") and
                                      not isinstance(v, str | Path) else open_image(v)) for v in values])

    def _check_input_range(self, batch: Mapping[str, Any]) -> None:
        """Refuse image tensors outside the range the pre-processing gives (found by probing it)."""
        for name, field in self.task_spec.batch.items():
            value = batch.get(name) if isinstance(batch, Mapping) else None
            if field.shape[:2] != ("B", 3) or not isinstance(value, Tensor) or value.numel() == 0 or value.dim() < 3:
                continue
            bounds = self._input_range(tuple(value.shape[-2:]))
            if bounds is None:
                continue
            low, high = bounds
            margin = 0.1 * (high - low)  # resampling may overshoot a little
            got_low, got_high = float(value.detach().min()), float(value.detach().max())
            if got_low < low - margin or got_high > high + margin:
                raise ZooError(
                    f"{type(self).__name__}(batch): {name!r} holds values in [{got_low:.4g}, {got_high:.4g}], but "
                    f"its pre-processing gives images in [{low:.4g}, {high:.4g}] (0-255 pixels?): build the tensor "
                    f"with model.preprocess(paths or PIL images), or score files with model.predict_images(...) / "
                    "model.compare(...)")

    def _input_range(self, size: tuple[int, int]) -> tuple[float, float] | None:
        """The lowest and highest value the pre-processing gives a black and a white image of ``size``."""
        cache = self.__dict__.setdefault("_input_ranges", {})
        if size not in cache:
            from PIL import Image

            transform = self.preprocessing()
            try:
                out = [transform(Image.new("RGB", (size[1], size[0]), (v, v, v))).float() for v in (0, 255)]
                cache[size] = (min(float(t.min()) for t in out), max(float(t.max()) for t in out))
            except Exception:  # noqa: BLE001 - a transform that cannot take a plain image: no check
                cache[size] = None
        return cache[size]

    def is_calibrated(self) -> bool:
        """False when the decision this model states rests on a default rather than on data it was fitted to.

        Binary tasks: whether the threshold was calibrated (a method with a rule of its own always is). A
        method whose output needs another fit (a level map, say) overrides this. ``zoo predict`` marks every
        row of an uncalibrated model and states no decision for it.
        """
        if self.task_spec.binary and self.calibrates_threshold:
            return float(self.threshold) != float(self.default_threshold)
        return True

    def probability(self, score: Tensor) -> Tensor:
        """The probability of the positive class of a score: by default the sigmoid of a logit score.

        Fake-detection methods output logits; a method whose score is already a probability returns it.
        """
        return torch.sigmoid(score.float())

    def evidence(self) -> dict[str, Any]:
        """The distributions a reader draws a row's value against (JSON-able); ``{}`` where the model keeps none.

        The keys: ``column`` (the row's column the values are in the units of), ``label`` (what that value is),
        ``about`` (what the distributions are, in a few words), ``scale`` (``linear`` or ``log``),
        ``distributions`` (name -> ``count``, ``quantile_levels`` and ``quantiles``, evenly spaced from the lowest
        to the highest) and, where the decision is a cut on that value and the row does not carry it,
        ``threshold`` (``value`` and ``label``).

        By default: the validation scores of each class stored when the threshold was calibrated, as a row's
        ``score`` (a logit becomes the probability a row states). A method that decides against a reference of
        its own (an attribution test's calibration losses) overrides it.
        """
        from zoo.predict import readable

        task = self.task_spec
        if not (task.binary and self.calibrates_threshold) or float(self.val_score_counts.min()) <= 0:
            return {}  # no threshold calibrated, or a checkpoint written before the scores were stored
        quantiles = self.val_score_quantiles.detach().cpu()
        # the same conversion a row's score gets
        scores = [r["score"] for r in readable(self, {"score": quantiles.flatten()}, quantiles.numel())]
        width = quantiles.shape[1]
        levels = [k / (width - 1) for k in range(width)]
        return {
            "column": "score",
            "label": f"probability {task.positive}" if task.score_is_logit else "score",
            "about": "the validation scores the threshold was calibrated on",
            "scale": "linear",
            "distributions": {
                label: {"count": int(count), "quantile_levels": levels,
                        "quantiles": [_finite(v) for v in scores[row * width:(row + 1) * width]]}
                for row, (label, count) in enumerate(zip((task.negative, task.positive),
                                                         self.val_score_counts.tolist(), strict=True))
            },
        }

    def predict_images(self, images: Any, **kwargs: Any) -> Any:
        """Score images (paths, a folder, a glob, or PIL images): a pandas DataFrame, one row per image.

        Keyword arguments are those of ``zoo.predict.predict`` (``batch_size``, ``device``, ...).

        Example:
            >>> model = ZooModule.from_pretrained("hf-hub:org/cnn-detector")
            >>> model.predict_images(["photo.jpg", "render.png"])[["path", "score", "verdict"]]
        """
        from zoo.predict import image_items, predict

        return predict(self, image_items(images), **kwargs)

    def compare(self, generated: Any, real: Any, **kwargs: Any) -> Any:
        """Copy detection of ``generated`` against ``real`` (a path or PIL image each, or equal-length lists).

        Example:
            >>> model = ZooModule.from_pretrained("pdf_embedding.exponential_drep")
            >>> model.compare("generated.png", "original.jpg")[["level_argmax", "level_expected"]]
        """
        from zoo.predict import pair_items, predict

        return predict(self, pair_items(generated, real), **kwargs)

    def _evaluate(self, stage: str, batch: Mapping[str, Any]) -> dict[str, Any]:
        self.task_spec.check_batch(batch, labelled=True)
        pred = self.predictions(batch)
        self.task_spec.update(self.metrics[stage], pred, batch)
        if stage == "val" and self.task_spec.binary:
            self._val_scores.append(pred["score"].detach().float().cpu())
            self._val_labels.append(batch["label"].detach().cpu())
        out: dict[str, Any] = _to_cpu(pred)
        out["id"] = list(batch["id"])
        out.update(self.task_spec.truth(batch))
        return out

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> dict[str, Any]:
        return self._evaluate("val", batch)

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> dict[str, Any]:
        return self._evaluate("test", batch)

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int) -> dict[str, Any]:
        return {**_to_cpu(self.predictions(batch)), "id": list(batch["id"])}

    def calibrate_threshold(self, scores: Tensor, labels: Tensor) -> float:
        """The decision threshold from validation scores; the default maximises validation accuracy."""
        return best_accuracy_threshold(scores, labels)

    def on_validation_epoch_end(self) -> None:
        if self.task_spec.binary and self.calibrates_threshold and self._val_scores:
            scores, labels = torch.cat(self._val_scores), torch.cat(self._val_labels)
            if labels.min() != labels.max():
                self.threshold.fill_(self.calibrate_threshold(scores, labels))
                levels = torch.linspace(0, 1, VAL_SCORE_QUANTILES)
                for label in (0, 1):
                    mine = scores[labels == label].double()
                    self.val_score_counts[label] = len(mine)
                    self.val_score_quantiles[label] = torch.quantile(mine, levels.double()).float()
        self._val_scores.clear()
        self._val_labels.clear()
        self._log_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def _log_metrics(self, stage: str) -> None:
        values = self.metrics[stage].compute()
        self.metrics[stage].reset()
        logged = {f"{stage}/{k}": float(v) for k, v in values.items()}
        if self.task_spec.binary and self.calibrates_threshold:  # a method deciding by its own rule has none
            logged[f"{stage}/threshold"] = float(self.threshold)
        self.log_dict(logged, prog_bar=stage == "val", sync_dist=False)

    # ----------------------------------------------------------------- persistence
    def reference_state_keys(self) -> set[str]:
        """State keys not saved: frozen pretrained weights the constructor loads from a pinned reference.

        A method whose frozen encoder is named by a pinned tag (``open_clip:ViT-L-14@openai``) returns
        that encoder's keys, so that its checkpoint holds only what was trained.
        """
        return set()

    def load_reference_weights(self) -> None:
        """Load the frozen weights of ``reference_state_keys`` from their pinned reference (a download once)."""
        raise ZooError(f"{type(self).__name__} names reference weights but cannot load them")

    def zoo_config(self) -> dict[str, Any]:
        """What ``config.json`` holds: the registry name and the constructor arguments."""
        return {
            "name": type(self).__name__,
            "task": self.task,
            # LightningCLI adds "_class_path" and "_instantiator"; they are not constructor arguments
            "init_args": _jsonable(
                {k: v for k, v in self.hparams.items() if not k.startswith("_")}, type(self).__name__
            ),
            "format_version": FORMAT_VERSION,
        }

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` to ``directory``."""
        config = self.zoo_config()
        skip = self.reference_state_keys()
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items() if k not in skip}
        return write_checkpoint(config, state, directory)

    @classmethod
    def from_pretrained(cls, source: str | Path, **kwargs: Any) -> ZooModule:
        """Load a saved method from a folder, or from the Hub as ``hf-hub:org/name`` (see ``zoo.hub``).

        A folder is an export, or a run folder of ``zoo fit`` (``runs/cnn``), whose newest export is loaded, as
        ``zoo predict --ckpt_path`` takes it.

        Nothing is unpickled: the config is JSON and the weights are safetensors.
        """
        from zoo import hub

        return load_folder(hub.resolve(source, **kwargs), expect=cls)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> str:
        """Publish this model with a model card; the commit URL (arguments as ``zoo.hub.publish``)."""
        import tempfile

        from zoo import hub

        with tempfile.TemporaryDirectory() as tmp:
            return hub.publish(self.save_pretrained(tmp), repo_id, **kwargs)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # plain data beside Lightning's own keys, so a .ckpt converts with weights_only=True
        checkpoint[CKPT_ENTRY] = self.zoo_config()


@contextlib.contextmanager
def seeded(seed: int = 0) -> Iterator[None]:
    """Draw random-init weights from ``seed`` (CPU generator) and restore the global random state after."""
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)  # models are built on the CPU; CUDA's state is untouched
        yield


def _to_cpu(pred: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v.detach().cpu() if isinstance(v, Tensor) else list(v) for k, v in pred.items()}


def _finite(value: float) -> float | None:
    """A value JSON can carry: an infinite or NaN quantile becomes null."""
    return value if math.isfinite(value) else None


def _jsonable(args: dict[str, Any], owner: str) -> dict[str, Any]:
    out = {}
    for key, value in args.items():
        try:
            json.dumps(value)
        except TypeError as err:
            raise ZooError(
                f"{owner} argument {key!r} = {value!r} is not JSON: constructor arguments must be plain data"
            ) from err
        if isinstance(value, float) and not math.isfinite(value):
            raise ZooError(f"{owner} argument {key!r} is not finite")
        out[key] = value
    return out
