"""Every load path under a Python audit hook: no process, no code compiled or run, no pickle, no stray file.

``from_pretrained``, ``zoo predict``, ``zoo test``, ``zoo embed``, ``zoo match``, ``zoo download`` and ``zoo convert``
run in-process on a tiny checkpoint with the hook on. The hook records a violation on ``os.system``, a new process
(``subprocess.Popen``, ``os.exec*``, ``os.posix_spawn``, ``os.fork``), an ``exec`` or ``compile`` event, a
``pickle.find_class`` of a global outside torch's weights-only set, and an ``open`` of a file outside the checkpoint,
its caches (Hugging Face, ZOO_CACHE, the installed packages and this repository's sources, /proc, /sys, /dev) and
the test's own folders.

Audit hooks cannot be removed: one hook is installed once and checks ``_STATE["on"]``. Each path runs once with the
hook off first, so that the modules it imports lazily are imported (an import compiles and executes a module, which
is code the installation holds, not code from the checkpoint), then again with the hook on.
"""

from __future__ import annotations

import os
import sys
import sysconfig
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image
from test_hub import online, server  # noqa: F401 - the local Hub server and a client pointed at it

from zoo import registry
from zoo.checkpoint import CONFIG_NAME, WEIGHTS_NAME
from zoo.cli import main
from zoo.module import ZooModule

ROOT = Path(__file__).resolve().parents[1]
_STATE: dict = {"on": False, "roots": (), "violations": []}
DEBUG = os.environ.get("AUDIT_DEBUG")
_PROCESS_EVENTS = ("os.system", "subprocess.Popen", "os.exec", "os.posix_spawn", "os.spawn", "os.fork")


def _weights_only_globals() -> set[str]:
    from torch import _weights_only_unpickler
    from torch.serialization import get_safe_globals

    names = set(_weights_only_unpickler._get_allowed_globals())
    for item in get_safe_globals():
        item = item[0] if isinstance(item, tuple) else item
        names.add(f"{item.__module__}.{item.__qualname__}")
    return names


_SAFE_GLOBALS = _weights_only_globals()


# Code the Python library generates from names, not from files, allowed by the function that compiles it:
# typing's ForwardRef compiles and evaluates an annotation string of installed code (jsonargparse and the zoo read
# the signatures of the Trainer and of the method classes), and collections.namedtuple compiles a class from field
# names it has checked to be identifiers (pandas' itertuples over a CSV's columns, with rename=True).
_CODEGEN = {("typing", "__init__"), ("typing", "_evaluate"), ("collections", "namedtuple")}


def _library_codegen(frame) -> bool:
    return (frame.f_globals.get("__name__"), frame.f_code.co_name) in _CODEGEN


def _inside(path: str) -> bool:
    resolved = os.path.realpath(path)
    return any(resolved == root or resolved.startswith(root + os.sep) for root in _STATE["roots"])


def _hook(event: str, args: tuple) -> None:
    if not _STATE["on"]:
        return
    if event.startswith(_PROCESS_EVENTS):
        _STATE["violations"].append(f"{event} {args!r:.200}")
    elif event in ("exec", "compile") and not _library_codegen(sys._getframe(1)):
        _STATE["violations"].append(f"{event} {args[-1] if event == 'compile' else args[0]!r:.200}")
        if DEBUG:
            import traceback

            print("STACK", event, "|".join(f"{f.filename[-40:]}:{f.lineno}" for f in traceback.extract_stack()[-9:-1]))
    elif event == "pickle.find_class" and f"{args[0]}.{args[1]}" not in _SAFE_GLOBALS:
        _STATE["violations"].append(f"pickle.find_class {args[0]}.{args[1]}")
    elif (event == "open" and isinstance(args[0], str | bytes) and os.fsdecode(args[0]) not in sys.path
          and not _inside(os.fsdecode(args[0]))):  # the import system probes sys.path entries (an editable finder)
        _STATE["violations"].append(f"open {os.fsdecode(args[0])}")
        if DEBUG:
            import traceback

            print("STACK open", "|".join(f"{f.filename[-40:]}:{f.lineno}" for f in traceback.extract_stack()[-9:-1]))


sys.addaudithook(_hook)


def _roots(*folders: Path) -> tuple[str, ...]:
    from huggingface_hub import constants

    paths = {sysconfig.get_paths()[key] for key in ("purelib", "platlib", "stdlib", "platstdlib", "data")}
    paths |= {sys.prefix, sys.base_prefix, str(ROOT / "zoo"), str(ROOT / "plugins"), "/proc", "/sys", "/dev",
              constants.HF_HUB_CACHE, constants.HF_TOKEN_PATH, os.environ["ZOO_CACHE"], *map(str, folders)}
    return tuple(os.path.realpath(p) for p in paths)


def run_audited(call: Callable[[], object], *folders: Path) -> list[str]:
    """``call()`` once to import what it imports, then again under the hook; the violations of the second run."""
    call()
    _STATE.update(roots=_roots(*folders), violations=[], on=True)
    try:
        call()
    finally:
        _STATE["on"] = False
    if DEBUG:
        print(*sorted(set(_STATE["violations"])), sep="\n")
    return list(_STATE["violations"])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    return registry.methods.load("DescriptorSimilarity").from_variant("tiny").save_pretrained(
        tmp_path_factory.mktemp("audit") / "ckpt")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    for i, color in enumerate(("red", "blue", "green")):
        Image.new("RGB", (32, 32), color).save(folder / f"{i}.png")
    return folder


def test_the_hook_sees_what_it_must_refuse(tmp_path):
    import pickle
    import subprocess

    marker = tmp_path / "x"
    violations = run_audited(lambda: (subprocess.run(["true"], check=True), pickle.loads(pickle.dumps(marker)),
                                      open("/etc/hostname").close(), compile("1", "<s>", "eval")), tmp_path)
    assert any(v.startswith("subprocess.Popen") for v in violations), violations
    assert any(v.startswith("pickle.find_class pathlib.") for v in violations), violations
    assert "open /etc/hostname" in violations and any(v.startswith("compile") for v in violations), violations


def test_from_pretrained(tiny):
    assert run_audited(lambda: ZooModule.from_pretrained(tiny), tiny) == []


def test_zoo_predict_and_test(tiny, images, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    argv = ["predict", "--ckpt_path", str(tiny), "--inputs", str(images / "0.png"), str(images / "1.png"),
            "--output", str(out / "p.csv")]
    assert run_audited(lambda: main(argv) == 0 or pytest.fail("zoo predict failed"), tiny, images, out) == []
    argv = ["test", "--ckpt_path", str(tiny), "--data", "MiniCopyDetection", "--trainer.logger", "false",
            "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(out)]
    assert run_audited(lambda: main(argv) == 0 or pytest.fail("zoo test failed"), tiny, out) == []


def test_zoo_embed_and_match(tiny, images, tmp_path):
    runs = iter(("first", "gallery"))  # a new gallery each run: a resumed embed of a finished one embeds nothing
    gallery = tmp_path / "gallery"

    def embed() -> None:
        assert main(["embed", "--gallery", str(images), "--output", str(tmp_path / next(runs)), "--model",
                     str(tiny)]) == 0

    assert run_audited(embed, tiny, images, gallery) == []
    assert main(["index", "--gallery", str(gallery), "--index_type", "flat"]) == 0

    outputs = iter(("m1", "m"))

    def match() -> None:
        assert main(["match", "--gallery", str(gallery), "--generated", f"g={images}", "--output",
                     str(tmp_path / next(outputs)), "--k", "2"]) == 0

    assert run_audited(match, gallery, images, tmp_path / "m") == []


def test_zoo_download_and_load_from_the_hub(tiny, tmp_path, request):
    hub = request.getfixturevalue("server")
    request.getfixturevalue("online")
    hub.add_commit("model", "org/audited", "main",
                   {name: (tiny / name).read_bytes() for name in (CONFIG_NAME, WEIGHTS_NAME)}, "upload")

    def download_and_load() -> None:
        assert main(["download", "hf-hub:org/audited"]) == 0
        ZooModule.from_pretrained("hf-hub:org/audited")

    assert run_audited(download_and_load, tmp_path) == []


def test_zoo_convert(tiny, tmp_path):
    model = ZooModule.from_pretrained(tiny)
    ckpt = tmp_path / "run.ckpt"
    torch.save({"state_dict": model.state_dict(), "zoo": model.zoo_config()}, ckpt)

    def convert() -> None:
        with tempfile.TemporaryDirectory(dir=tmp_path) as out:
            assert main(["convert", str(ckpt), out]) == 0

    assert run_audited(convert, tmp_path) == []


class _Payload:
    def __reduce__(self):
        return (print, ("unpickled",))


def test_a_checkpoint_whose_kwargs_name_a_pickle_unpickles_nothing(tiny, tmp_path):
    import json

    from zoo.errors import ZooError

    folder = tmp_path / "poisoned"
    folder.mkdir()
    (folder / WEIGHTS_NAME).write_bytes((tiny / WEIGHTS_NAME).read_bytes())
    torch.save({"x": _Payload()}, folder / "payload.pt")
    config = json.loads((tiny / CONFIG_NAME).read_text())
    config["init_args"]["model_kwargs"] = {"pretrained_image_path": str(folder / "payload.pt"), "weights_only": False}
    (folder / CONFIG_NAME).write_text(json.dumps(config))

    def load() -> None:
        with pytest.raises(ZooError):
            ZooModule.from_pretrained(folder)

    assert run_audited(load, folder) == []
