"""``zoo serve``: the use road over HTTP, with a web page per model that draws the evidence behind a verdict.

``create_app`` builds the FastAPI app (``zoo.serve.app``); ``zoo.cli.serve`` is its command line.

Example:
    >>> from zoo.serve import Served, create_app
    >>> app = create_app([Served("cnn", ZooModule.from_pretrained("runs/cnn"))])  # run it with uvicorn
"""

from zoo.serve.app import Limits, create_app
from zoo.serve.models import Served

__all__ = ["Limits", "Served", "create_app"]
