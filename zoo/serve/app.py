"""The HTTP app of ``zoo serve``: the API that mirrors ``zoo predict``, the pages, and the pictures they show.

Endpoints:
    GET  /health                      {"status": "ok", "models": [names]}
    GET  /models                      every loaded model: its task, flags, card and evidence (``ZooModule.evidence``)
    GET  /models/<name>               one of them
    POST /models/<name>/predict       multipart: ``images`` (one or more files), or ``generated`` and ``real``
                                      (one real per generated, in order) for copy detection; optional
                                      ``captions`` (one text per image); answers {"model", "rows"}, the rows
                                      and columns ``zoo predict`` writes for the same inputs; for a gallery
                                      (``--gallery``): ``images`` only, answered {"model", "rows",
                                      "candidates"}, the rows ``zoo match`` writes and each image's top-k
    GET  /openapi.json                the schema
    GET  /  and  /ui/<name>           the pages (plain HTML, CSS and JS shipped in the package)
    GET  /artifacts/<token>/<k>.png   a picture a method drew for a request (copyright's CGI-DM), or a
                                      thumbnail of a gallery image a request matched

A request never names a path on the server: an upload is decoded in memory, scored under a name the server
makes up, and the pictures a method writes are served by a random token of the request that made them. The
row's ``path`` (``generated``/``real``) is the file name the client sent, as text.
"""

from __future__ import annotations

import contextlib
import hmac
import io
import re
import secrets
import shutil
import tempfile
import threading
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from zoo.errors import ZooError
from zoo.serve.models import Served

ARTIFACT_NAME = re.compile(r"(\d{1,6})\.png")
TOKEN = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class Limits:
    """What one request may send: bytes per file, pixels per image, files per request."""

    max_upload_bytes: int = 20_000_000
    max_pixels: int = 40_000_000
    max_files: int = 32


class Refused(Exception):
    """A request the server answers with a 4xx and one line of JSON: ``{"error": reason}``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


class Artifacts:
    """Pictures methods wrote for recent requests, each request's in a temporary folder of its own.

    Only the newest ``keep`` requests' folders are kept; all are removed when the server stops.
    """

    def __init__(self, keep: int = 256) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="zoo-serve-"))
        self.keep = keep
        self.folders: OrderedDict[str, Path] = OrderedDict()
        self.lock = threading.Lock()

    def add(self, token: str, index: int, picture: Path) -> str:
        """Move ``picture`` in as the ``index``-th picture of request ``token``; its URL."""
        with self.lock:
            folder = self.folders.get(token)
            if folder is None:
                folder = self.folders[token] = Path(tempfile.mkdtemp(dir=self.root, prefix="request-"))
                while len(self.folders) > self.keep:
                    shutil.rmtree(self.folders.popitem(last=False)[1], ignore_errors=True)
        shutil.move(picture, folder / f"{index}.png")
        return f"/artifacts/{token}/{index}.png"

    def path(self, token: str, name: str) -> Path | None:
        match = ARTIFACT_NAME.fullmatch(name)
        if not TOKEN.fullmatch(token) or match is None:
            return None
        with self.lock:
            folder = self.folders.get(token)
        path = folder / f"{int(match.group(1))}.png" if folder is not None else None
        return path if path is not None and path.is_file() else None

    def scratch(self, model_name: str) -> Path:
        """The folder a model writes one forward's pictures to before they are moved to their requests."""
        folder = self.root / f"forward-{re.sub(r'[^A-Za-z0-9_-]', '_', model_name)}"
        folder.mkdir(exist_ok=True)
        return folder

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def create_app(served: list[Served], *, limits: Limits | None = None, api_key: str | None = None,
               keep_uploads: Path | None = None, device: Any = None, batch_size: int = 8) -> FastAPI:
    """The FastAPI app serving ``served`` (each model loaded once, its requests batched).

    Args:
        served: the models, by unique name.
        limits: caps on what one request may send.
        api_key: when set, every request must carry it (``Authorization: Bearer KEY``, ``X-API-Key: KEY``, or
            HTTP basic authentication with the key as the password, which a browser asks for); else 401.
        keep_uploads: a folder to keep each upload in, under a name the server makes up; None keeps nothing.
        device: where the models run (``zoo.predict.predict``'s argument).
        batch_size: the most inputs scored in one forward.
    """
    from zoo import __version__
    from zoo.serve.batcher import Batcher

    limits = limits or Limits()
    models = {s.name: s for s in served}
    if len(models) != len(served):
        raise ZooError("two served models have the same name")
    artifacts = Artifacts()
    batchers = {s.name: Batcher(_scorer(s, artifacts, device), batch_size) for s in served}
    descriptions = {s.name: s.describe() for s in served}  # each model's card, read once

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        yield
        for batcher in batchers.values():
            batcher.close()
        for s in served:
            if s.gallery is not None:
                s.gallery.close()
        artifacts.close()

    app = FastAPI(title="zoo serve", version=__version__, docs_url=None, redoc_url=None, lifespan=lifespan,
                  description="Provenance answers for images: the rows `zoo predict` writes, over HTTP.")
    app.state.batchers, app.state.artifacts = batchers, artifacts

    def refusal(status: int, reason: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"error": " ".join(str(reason).split())}, status_code=status, headers=headers)

    @app.middleware("http")
    async def authorize(request: Request, call_next: Any) -> Any:
        if api_key is not None and not _authorized(request.headers, api_key):
            return refusal(401, "missing or wrong API key: send Authorization: Bearer KEY or X-API-Key: KEY",
                           {"WWW-Authenticate": 'Basic realm="zoo serve"'})
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    @app.exception_handler(Refused)
    async def refused(request: Request, err: Refused) -> JSONResponse:
        return refusal(err.status, err.reason)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        return refusal(err.status_code, err.detail if isinstance(err.detail, str) else "refused")

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {}
        return refusal(422, f"{'.'.join(map(str, first.get('loc', ())))}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(Exception)
    async def internal(request: Request, err: Exception) -> JSONResponse:
        # the server's log has the traceback; the client gets one line that names no file
        return refusal(500, f"internal error ({type(err).__name__})")

    def described(name: str) -> dict[str, Any]:
        # the evidence is read again: a model that calibrates on its first input holds it from then on
        return {**descriptions[name], "evidence": models[name].model.evidence()}

    @app.get("/health", summary="The server is up, and which models it serves")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": list(models)}

    @app.get("/models", summary="The loaded models: task, flags (tiny, untrained, uncalibrated), card, evidence")
    async def list_models() -> list[dict[str, Any]]:
        return [described(name) for name in models]

    @app.get("/models/{name}", summary="One loaded model")
    async def one_model(name: str) -> dict[str, Any]:
        return described(_served(models, name).name)

    @app.post("/models/{name}/predict", summary="Score images (or pairs): the rows zoo predict writes",
              openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                  "type": "object", "properties": {
                      "images": {"type": "array", "items": {"type": "string", "format": "binary"},
                                 "description": "one or more images (every task but copy detection; the "
                                                "generated images a gallery is searched for)"},
                      "generated": {"type": "array", "items": {"type": "string", "format": "binary"},
                                    "description": "copy detection: the generated images"},
                      "real": {"type": "array", "items": {"type": "string", "format": "binary"},
                               "description": "copy detection: one real image per generated, in order"},
                      "captions": {"type": "array", "items": {"type": "string"},
                                   "description": "one caption per image, for methods that read captions"}}}}}}})
    async def predict(name: str, request: Request) -> dict[str, Any]:
        import asyncio

        model = _served(models, name)
        items, keep = await _read_request(request, model, limits)
        if keep_uploads is not None:
            _keep(keep_uploads, keep)
        frame = await asyncio.wrap_future(batchers[model.name].submit(items))
        if model.gallery is not None:  # the rows zoo match writes, and beside them each image's candidates
            candidates = frame.pop("candidates").tolist()
            return {"model": model.name, "rows": _records(frame), "candidates": candidates}
        return {"model": model.name, "rows": _records(frame)}

    @app.get("/artifacts/{token}/{file}", summary="A picture a method drew for a request")
    async def artifact(token: str, file: str) -> Any:
        path = artifacts.path(token, file)
        if path is None:
            raise Refused(404, "no such picture (pictures are kept for the most recent requests only)")
        return FileResponse(path, media_type="image/png")

    static = resources.files("zoo.serve") / "static"

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> str:
        return static.joinpath("index.html").read_text(encoding="utf-8")

    @app.get("/ui/{name}", response_class=HTMLResponse, include_in_schema=False)
    async def page(name: str) -> str:
        _served(models, name)
        return static.joinpath("page.html").read_text(encoding="utf-8")

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        return Response(status_code=204)

    with resources.as_file(static) as folder:
        app.mount("/static", StaticFiles(directory=folder), name="static")
    return app


def _served(models: dict[str, Served], name: str) -> Served:
    if name not in models:
        raise Refused(404, f"no model named {name!r} is served (GET /models lists them)")
    return models[name]


def _authorized(headers: Any, key: str) -> bool:
    import base64

    given = headers.get("x-api-key")
    scheme, _, value = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        given = value.strip()
    elif scheme.lower() == "basic":
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            given = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")[2]
    return given is not None and hmac.compare_digest(given.encode("utf-8"), key.encode("utf-8"))


async def _read_request(request: Any, served: Served, limits: Limits) -> tuple[list[Any], list[tuple[bytes, str]]]:
    """The request's inputs as ``zoo.predict`` items, each image decoded and checked against ``limits``."""
    from dataclasses import replace

    from starlette.datastructures import UploadFile

    from zoo.predict import Item

    length = request.headers.get("content-length")
    if length is None:
        raise Refused(411, "send a Content-Length (a multipart/form-data body of images)")
    body_cap = limits.max_files * limits.max_upload_bytes + 1_000_000  # the files and the multipart framing
    if not length.isdigit() or int(length) > body_cap:
        raise Refused(413, f"request of {length} bytes is over the limit of {body_cap} bytes ({limits.max_files} "
                      f"files of at most {limits.max_upload_bytes} bytes)")
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise Refused(415, "send the images as multipart/form-data (curl -F images=@photo.png)")
    try:
        form = await request.form(max_files=limits.max_files, max_fields=2 * limits.max_files + 8)
    except Exception as err:  # noqa: BLE001 - a malformed body, or over the files or fields limit
        raise Refused(400, f"unreadable multipart body ({' '.join(str(getattr(err, 'detail', err)).split())})")\
            from err
    try:
        fields = ("generated", "real") if served.pairs else ("images",)
        captioned = served.gallery is None  # a gallery search reads no caption: one sent is refused, not dropped
        unknown = sorted(set(form.keys()) - {*fields, *(("captions",) if captioned else ())})
        if unknown:
            raise Refused(400, f"unknown form field(s) {', '.join(map(repr, unknown))}; {served.name} takes "
                          f"{' and '.join(fields)}" + ("" if served.pairs or not captioned else
                                                        " (and optional captions)"))
        uploads = [form.getlist(f) for f in fields]
        if not uploads[0]:
            raise Refused(400, f"no {fields[0]} uploaded; {served.name} takes "
                          + ("pairs: form fields generated and real, one real per generated" if served.pairs
                             else "one or more images in the form field images"))
        if served.pairs and len(uploads[0]) != len(uploads[1]):
            raise Refused(400, f"{len(uploads[0])} generated images against {len(uploads[1])} real ones: send one "
                          "real image per generated, in the same order")
        for upload in (u for group in uploads for u in group):
            if not isinstance(upload, UploadFile):
                raise Refused(400, f"form field {fields[0]!r} holds text, not a file")
        token = secrets.token_hex(16)
        items, kept = [], []
        for k, group in enumerate(zip(*uploads, strict=True)):
            names, images = [], []
            for upload in group:
                data = await upload.read(limits.max_upload_bytes + 1)
                label = upload.filename or f"upload {k}"
                images.append(_decode(data, label, limits))
                names.append(label)
                kept.append((data, images[-1].format_ext))
            # the server's own name for the input: a method that writes pictures names them after it
            items.append(Item(tuple(f"{token}-{k}-{i}" for i in range(len(group))),
                              tuple(image.picture for image in images), caption=None))
            items[-1] = _Named(items[-1], tuple(names))
        captions = form.getlist("captions")
        if captions:
            if len(captions) != len(items) or not all(isinstance(c, str) for c in captions):
                raise Refused(400, f"{len(captions)} captions for {len(items)} images: send one caption per image")
            items = [_Named(replace(item.item, caption=c), item.client) for item, c in zip(items, captions,
                                                                                          strict=True)]
    finally:
        await form.close()  # the spooled upload files are deleted: nothing is kept unless --keep_uploads
    return items, kept


@dataclass(frozen=True)
class _Named:
    """An item scored under the server's name, with the file names the client sent (for its row)."""

    item: Any
    client: tuple[str, ...]


@dataclass(frozen=True)
class _Decoded:
    picture: Any
    format_ext: str


def _decode(data: bytes, label: str, limits: Limits) -> _Decoded:
    """One upload decoded in memory; over a cap, not an image or corrupt is a ``Refused`` naming it."""
    from PIL import Image, UnidentifiedImageError

    from zoo.data.images import ImageLimits, open_image

    if len(data) > limits.max_upload_bytes:
        raise Refused(413, f"{label}: over the upload limit of {limits.max_upload_bytes} bytes")
    if not data:
        raise Refused(422, f"{label}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            header = Image.open(io.BytesIO(data))  # reads the header only: the size, before any decoding
        width, height = header.size
        kind = (header.format or "png").lower()
    except Image.DecompressionBombError:
        raise Refused(413, f"{label}: over PIL's pixel limit") from None
    except UnidentifiedImageError:
        raise Refused(415, f"{label}: not an image format this server decodes (PNG, JPEG, WebP, ...)") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise Refused(422, f"{label}: truncated or corrupt image ({err})") from None
    if width * height > limits.max_pixels:
        raise Refused(413, f"{label}: {width}x{height} = {width * height} pixels is over the limit of "
                      f"{limits.max_pixels}")
    try:
        picture = open_image(data, label, ImageLimits(max_pixels=limits.max_pixels))
    except ZooError as err:
        raise Refused(422, str(err)) from None
    return _Decoded(picture, {"jpeg": "jpg"}.get(kind, kind))


def _keep(folder: Path, uploads: list[tuple[bytes, str]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    token = secrets.token_hex(4)
    for k, (data, ext) in enumerate(uploads):
        (folder / f"{stamp}-{token}-{k}.{re.sub(r'[^a-z0-9]', '', ext) or 'bin'}").write_bytes(data)


def _scorer(served: Served, artifacts: Artifacts, device: Any) -> Any:
    """What the model's batcher calls: ``zoo.predict.predict`` on the inputs of the requests it drew together."""
    if served.gallery is not None:
        return _gallery_scorer(served, artifacts)
    from zoo.predict import PAIR_COLUMNS, predict

    columns = PAIR_COLUMNS if served.pairs else ("path",)

    def score(named: list[_Named]) -> Any:
        model = served.model
        model.artifact_root = artifacts.scratch(served.name)
        frame = predict(model, [n.item for n in named], device=device, batch_size=max(1, len(named)))
        for column, values in zip(columns, zip(*(n.client for n in named), strict=True), strict=True):
            frame[column] = list(values)
        if "artifact" in frame.columns:
            urls = []
            for n, picture in zip(named, frame["artifact"], strict=True):
                token, k, _ = n.item.names[0].split("-")
                urls.append(artifacts.add(token, int(k), Path(picture)) if isinstance(picture, str) and picture
                            else None)
            frame["artifact"] = urls
        return frame

    return score


def _gallery_scorer(served: Served, artifacts: Artifacts) -> Any:
    """What a gallery's batcher calls: the row ``zoo match`` writes for each image, and its candidates.

    A candidate's picture is a thumbnail of the gallery image, read from where the gallery was embedded and
    served by the request's token, like a method's pictures.
    """
    import pandas as pd

    from zoo.serve.gallery import thumbnail

    gallery = served.gallery

    def score(named: list[_Named]) -> Any:
        rows, matches = gallery.search([_stem(n.client[0]) for n in named], [n.item.sources[0] for n in named])
        scratch = artifacts.scratch(served.name)
        for n, row, found in zip(named, rows, matches, strict=True):
            token, k, _ = n.item.names[0].split("-")
            row["candidates"] = []
            for j, match in enumerate(found):
                url = None
                if match.picture is not None:  # else it moved away since it was embedded: the id still says which
                    picture = scratch / f"{token}-{k}-{j}.png"
                    picture.write_bytes(thumbnail(match.picture))
                    url = artifacts.add(token, int(k) * gallery.k + j, picture)
                row["candidates"].append({"id": match.id, "similarity": match.similarity, "level": match.level,
                                          "exact_copy": int(match.exact_copy),
                                          "descriptor_identical": int(match.descriptor_identical), "thumbnail": url})
        return pd.DataFrame(rows)

    return score


def _stem(name: str) -> str:
    """A file name without its suffix: the id ``zoo match`` gives an image of a folder."""
    base, dot, suffix = name.rpartition(".")
    return base if dot and base and "/" not in suffix else name


def _records(frame: Any) -> list[dict[str, Any]]:
    """The rows as ``zoo predict --output x.jsonl`` writes them: the error column last, empty cells null."""
    if "error" in frame.columns:
        frame = frame[[c for c in frame.columns if c != "error"] + ["error"]]
    return frame.astype(object).where(frame.notna(), None).to_dict("records")
