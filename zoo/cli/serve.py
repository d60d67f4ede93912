"""``zoo serve``: a local HTTP server and web pages for one or more models (``zoo.serve``)."""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import sys
from pathlib import Path
from typing import Any

from zoo.errors import ZooError

LOOPBACK_NAMES = ("localhost",)
GALLERY_NAME = "gallery"  # the URL name of a served gallery (a method's name is its class's: no clash)


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (127.0.0.0/8, ::1, localhost)."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name, or 0.0.0.0: reachable from elsewhere


def _whole(least: int) -> Any:
    def parse(text: str) -> int:
        try:
            number = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if number < least:
            raise argparse.ArgumentTypeError(f"expected a whole number of at least {least}, got {text}")
        return number

    return parse


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        raise ZooError(f"{message} (see {self.prog} --help)")


def parser() -> argparse.ArgumentParser:
    from zoo.serve.app import Limits

    limits = Limits()
    p = _Parser(prog="zoo serve", allow_abbrev=False,
                description="Serve models over HTTP: an API that answers with zoo predict's rows, and a web page "
                "per model at http://HOST:PORT/. Override a method argument with --model.<arg> VALUE.")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--ckpt_path", action="append", help="a zoo checkpoint folder, a run folder of zoo fit, "
                       "hf-hub:org/name, or a short name of `zoo list --pretrained`; repeat it to serve several")
    which.add_argument("--model", help="a registered method by name (a method that trains is refused unless "
                       "--untrained)")
    p.add_argument("--gallery", help="a gallery folder of zoo embed + zoo index: served as the model named "
                   "'gallery', scored by the gallery's own method, it shows a generated image's best gallery matches")
    p.add_argument("--gallery_k", type=_whole(1), default=10, help="gallery candidates per image (zoo match --k)")
    p.add_argument("--variant", help="a named variant of --model (e.g. tiny)")
    p.add_argument("--untrained", action="store_true", help="with --model: serve a method that trains, unfitted, "
                   "on purpose; every row and page then says untrained")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only); "
                   "any other needs --api_key or --insecure")
    p.add_argument("--port", type=_whole(0), default=8000, help="port (0: any free one, printed)")
    p.add_argument("--api_key", help="a key every request must carry (Authorization: Bearer KEY)")
    p.add_argument("--insecure", action="store_true", help="bind a non-loopback --host without an API key")
    p.add_argument("--max_upload_bytes", type=_whole(1), default=limits.max_upload_bytes,
                   help="largest file accepted, in bytes")
    p.add_argument("--max_pixels", type=_whole(1), default=limits.max_pixels, help="largest image, in pixels")
    p.add_argument("--max_files", type=_whole(1), default=limits.max_files, help="most files in one request")
    p.add_argument("--batch_size", type=_whole(1), default=8, help="most inputs scored in one forward")
    p.add_argument("--keep_uploads", help="a folder to keep every upload in (default: nothing is kept)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda when available)")
    return p


def build(argv: list[str]) -> tuple[Any, argparse.Namespace]:
    """The app and the parsed arguments: every refusal (a bad flag, an exposed host, a model) before binding."""
    from zoo.cli.predict import model_overrides
    from zoo.serve.app import Limits, create_app

    args, rest = parser().parse_known_args(argv)
    overrides = model_overrides(rest)
    if not is_loopback(args.host):
        if args.api_key is None and not args.insecure:
            raise ZooError(f"--host {args.host} can be reached from other machines: give --api_key KEY (checked on "
                           "every request), or --insecure to serve without one on purpose")
        if args.api_key is None:
            print(f"zoo serve: WARNING: --insecure: anyone who can reach {args.host}:{args.port} can use these "
                  "models and send them files", file=sys.stderr)
    if args.api_key is not None and not args.api_key.strip():
        raise ZooError("--api_key is empty")
    if not (args.ckpt_path or args.model or args.gallery):
        raise ZooError("give --ckpt_path, --model or --gallery: what to serve (see zoo serve --help)")
    device = _device(args.device) if args.device else None
    served = []
    if args.ckpt_path:
        served += _from_checkpoints(args.ckpt_path, overrides, args)
    elif args.model:
        served.append(_from_name(args, overrides))
    elif args.variant is not None or args.untrained or overrides:
        raise ZooError("--variant, --untrained and --model.<arg> go with --model")
    if args.gallery:
        served.append(_from_gallery(args.gallery, args.gallery_k))
    for s in served:
        untrained = getattr(s.model, "untrained", False)
        if untrained or not s.model.is_calibrated():
            said = "its page says so" if s.gallery is not None else "its page and rows say so"  # zoo match's rows don't
            print(f"zoo serve: {s.name} is {'untrained' if untrained else 'uncalibrated'}: {said}", file=sys.stderr)
    limits = Limits(args.max_upload_bytes, args.max_pixels, args.max_files)
    app = create_app(served, limits=limits, api_key=args.api_key, device=device, batch_size=args.batch_size,
                     keep_uploads=Path(args.keep_uploads) if args.keep_uploads else None)
    return app, args


def _from_checkpoints(paths: list[str], overrides: dict[str, Any], args: argparse.Namespace) -> Any:
    from zoo.predict import load_model
    from zoo.serve.models import Served

    if args.variant is not None or args.untrained:
        raise ZooError("--variant and --untrained go with --model; a checkpoint carries its own arguments")
    seen: dict[str, int] = {}
    for path in paths:
        model = load_model(path, None, None, overrides)
        name = type(model).__name__
        seen[name] = seen.get(name, 0) + 1
        yield Served(name if seen[name] == 1 else f"{name}-{seen[name]}", model)


def _from_name(args: argparse.Namespace, overrides: dict[str, Any]) -> Any:
    from zoo.module import seeded
    from zoo.predict import check_untrained, load_model
    from zoo.serve.models import Served

    check_untrained(args.model, args.variant, args.untrained)
    with seeded():  # the same command builds the same model, as zoo predict does
        model = load_model(None, args.model, args.variant, overrides)
    if args.untrained:
        model.untrained = True
    return Served(args.model, model, variant=args.variant)


def _from_gallery(folder: str, k: int) -> Any:
    """The gallery, served under its own name and scored by its own method.

    Its descriptors were made by the weights in its ``model/`` folder (checked against its fingerprint): only
    that method can embed an image into the same space, whatever other models are served beside it.
    """
    from zoo.serve.gallery import Gallery
    from zoo.serve.models import Served

    gallery = Gallery(folder, k)
    return Served(GALLERY_NAME, gallery.method, gallery=gallery)


def _device(text: str) -> Any:
    from zoo.cli.predict import _device as check

    try:
        return check(text)
    except argparse.ArgumentTypeError as err:
        raise ZooError(f"--device {err}") from None


def cmd_serve(argv: list[str]) -> int:
    """Serve models over HTTP: zoo predict's rows as an API, and a web page per model."""
    import uvicorn

    app, args = build(argv)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    with contextlib.suppress(KeyboardInterrupt):
        _announce(server, args)
        server.run()
    return 0


def _announce(server: Any, args: argparse.Namespace) -> None:
    """Say where the pages are once the socket listens (with --port 0, the port the system gave)."""
    import threading
    import time

    def wait() -> None:
        while not server.started:
            if server.should_exit:
                return
            time.sleep(0.05)
        port = next((s.getsockname()[1] for srv in server.servers for s in srv.sockets), args.port)
        host = f"[{args.host}]" if ":" in args.host else args.host
        print(f"zoo serve: serving on http://{host}:{port}/ (API schema: /openapi.json); Ctrl+C stops",
              file=sys.stderr, flush=True)

    threading.Thread(target=wait, daemon=True).start()
