"""What the server says about a model it serves: its flags, its card and the evidence a page draws a row on
(``ZooModule.evidence``: the distributions the model was calibrated on)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from zoo.errors import ZooError

# what any score does not establish, for a task that does not say (``Task.caveat``)
NOT_MEANT_ANY = "A score is evidence to weigh, not proof; measure the model on your own data before relying on it."


@dataclass
class Served:
    """A loaded model and how it was asked for.

    Args:
        name: its name in the URLs (``/models/<name>``).
        model: the ZooModule, loaded once.
        variant: the named variant it was built from (``--model``/``--variant``), or None for a checkpoint.
        gallery: a ``zoo.serve.gallery.Gallery`` whose method ``model`` is: one generated image is then searched
            in the gallery instead of compared with a real image.
    """

    name: str
    model: Any
    variant: str | None = None
    gallery: Any = None

    @property
    def pairs(self) -> bool:
        return self.gallery is None and self.model.task_spec.inputs == "pairs"

    def tiny(self) -> bool:
        """A ``tiny`` variant, asked for by name or recognised by its arguments in a checkpoint."""
        if self.variant is not None:
            return self.variant == "tiny"
        tiny = type(self.model).variants.get("tiny") or {}
        args = self.model.zoo_config()["init_args"]
        return bool(tiny) and all(args.get(k) == v for k, v in tiny.items())

    def describe(self) -> dict[str, Any]:
        """The model as ``GET /models`` lists it (JSON)."""
        model, task = self.model, self.model.task_spec
        cls = type(model)
        return {
            "name": self.name,
            "method": cls.__name__,
            "display_name": cls.display_name or cls.__name__,
            "paper": cls.paper,
            "task": task.name,
            "question": ("which images of the gallery does this generated image replicate, and how much?"
                         if self.gallery is not None else task.question),
            "inputs": ["generated", "real"] if self.pairs else ["images"],
            "positive": task.positive or None,
            "negative": task.negative or None,
            "tiny": self.tiny(),
            "untrained": bool(getattr(model, "untrained", False)),
            "uncalibrated": not model.is_calibrated(),
            "calibrates_threshold": bool(task.binary and model.calibrates_threshold),
            "card": self.card(),
            "not_meant": task.caveat or NOT_MEANT_ANY,
            "score_unit": f"probability {task.positive}" if task.score_is_logit else "score",
            "evidence": self.model.evidence(),
            # what is searched: the number of images and of candidates (never the server's folder)
            "gallery": {"images": self.gallery.size, "k": self.gallery.k} if self.gallery is not None else None,
        }

    def card(self) -> str:
        """The model card ``zoo publish`` would write (Markdown), or one line saying why there is none."""
        from zoo import hub

        model = self.model
        threshold = None
        if model.task_spec.binary and model.calibrates_threshold and model.is_calibrated():
            threshold = float(model.threshold)
        try:
            return hub.model_card(model.zoo_config(), self.name, threshold=threshold)
        except ZooError as err:
            return f"(no card: {err})"
