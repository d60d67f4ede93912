"""Regenerate the example rows of README.md's "Use it on your images" by running the commands printed there.

In a temporary folder it writes ``my_images/`` (three scikit-image photographs and a corrupt file), ``pairs.csv``,
``generated.png`` (a lossless copy of the astronaut) and ``generated_q90.jpg`` (a JPEG q90 copy), runs each
block's ``zoo fit`` commands, then its ``zoo predict`` command twice: the two runs must give the same rows.
The rows replace the code block between ``<!-- rows:NAME -->`` and ``<!-- /rows:NAME -->`` in README.md; every
command must appear verbatim in the README, so that what the README shows is what it runs.

Usage:
    python tools/readme_rows.py                       # every block (CGI-DM's first run builds its mini models)
    python tools/readme_rows.py --only attribution    # some blocks
    python tools/readme_rows.py --check               # exit 1 if README.md differs, write nothing
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


@dataclass(frozen=True)
class Block:
    """One task's example: commands that fit (none for methods with nothing to train), one predict command."""

    fit: tuple[str, ...]
    predict: str
    output: str
    inputs: int  # rows the output holds


BLOCKS = {
    "fake_detection": Block(
        fit=("zoo fit --model CNNDetector --variant tiny --data MiniFakeDetection --trainer.max_epochs 3 "
             "--trainer.default_root_dir runs/cnn --seed_everything 0",),
        predict="zoo predict --ckpt_path runs/cnn --inputs my_images --output fake.csv", output="fake.csv", inputs=4),
    "copy_detection": Block(
        fit=("zoo fit --model PDFEmbedding --variant tiny --data MiniCopyDetection "
             "--trainer.default_root_dir runs/pdf --seed_everything 0",),
        predict="zoo predict --ckpt_path runs/pdf --pairs pairs.csv --output levels.csv", output="levels.csv",
        inputs=3),
    "attribution": Block(
        fit=(), predict="zoo predict --model InversionAttribution --variant tiny --inputs my_images "
        "--output attribution.csv", output="attribution.csv", inputs=4),
    "copyright": Block(
        fit=(), predict="zoo predict --model CGIDM --variant mini --inputs my_images --output copyright.csv",
        output="copyright.csv", inputs=4),
}
# a lossless copy (an exact copy), a JPEG q90 copy (a near copy, not exact) and two different photographs
PAIRS = "generated,real\ngenerated.png,my_images/astronaut.png\ngenerated_q90.jpg,my_images/astronaut.png\n" \
        "my_images/coffee.jpg,my_images/rocket.webp\n"


def write_inputs(folder: Path) -> None:
    """``my_images/`` (PNG, JPEG, WebP and a corrupt JPEG), the two copies and ``pairs.csv`` in ``folder``."""
    from PIL import Image
    from skimage import data

    images = folder / "my_images"
    images.mkdir(parents=True, exist_ok=True)
    astronaut = Image.fromarray(data.astronaut()).resize((128, 128), Image.Resampling.BICUBIC)
    astronaut.save(images / "astronaut.png")
    Image.fromarray(data.coffee()).resize((150, 100), Image.Resampling.BICUBIC).save(images / "coffee.jpg",
                                                                                      quality=90)
    Image.fromarray(data.rocket()).resize((150, 100), Image.Resampling.BICUBIC).save(images / "rocket.webp",
                                                                                      quality=90)
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    astronaut.save(folder / "generated.png", compress_level=9)  # the same pixels in another file
    astronaut.save(folder / "generated_q90.jpg", quality=90)
    (folder / "pairs.csv").write_text(PAIRS)


def zoo_command() -> list[str]:
    """The ``zoo`` console script of this Python."""
    found = shutil.which("zoo", path=str(Path(sys.executable).parent)) or shutil.which("zoo")
    if found is None:
        raise SystemExit("readme_rows: no `zoo` command; install the project first (pip install -e .)")
    return [found]


def run(command: str, folder: Path) -> None:
    """Run one README command in ``folder``; stop with its stderr if it fails."""
    argv = shlex.split(command)
    assert argv[0] == "zoo", command
    # the README shows the models a user gets: not the test suite's quicker CGI-DM mini models
    env = {**{k: v for k, v in os.environ.items() if k != "ZOO_CGI_DM_MINI"}, "COLUMNS": "200"}
    done = subprocess.run([*zoo_command(), *argv[1:]], cwd=folder, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"readme_rows: `{command}` failed:\n{done.stderr[-3000:]}")


def rows(name: str, folder: Path) -> str:
    """The rows block ``name``'s predict command writes in ``folder`` (fits run first), run twice to agree."""
    block = BLOCKS[name]
    if not (folder / "my_images").is_dir():
        write_inputs(folder)
    for command in block.fit:
        run(command, folder)
    outputs = []
    for _ in range(2):
        run(block.predict, folder)
        outputs.append((folder / block.output).read_text())
    if outputs[0] != outputs[1]:
        raise SystemExit(f"readme_rows: two runs of `{block.predict}` gave different rows:\n{outputs[0]}\n{outputs[1]}")
    return outputs[0]


def marked(name: str) -> re.Pattern[str]:
    """The README region of block ``name``: its markers and the code block between them."""
    return re.compile(rf"(<!-- rows:{name} -->\n)```\n(.*?)```\n(<!-- /rows:{name} -->)", re.DOTALL)


def readme_rows(text: str, name: str) -> str:
    """The rows README ``text`` shows for block ``name``."""
    found = marked(name).search(text)
    if found is None:
        raise SystemExit(f"readme_rows: README.md has no <!-- rows:{name} --> ... <!-- /rows:{name} --> block")
    return found.group(2)


def check_commands(text: str, name: str) -> None:
    """Every command of block ``name`` is printed in the README."""
    for command in (*BLOCKS[name].fit, BLOCKS[name].predict):
        if command not in text:
            raise SystemExit(f"readme_rows: README.md does not show the command `{command}` of block {name}")


def replace_rows(text: str, name: str, csv: str) -> str:
    """README ``text`` with block ``name``'s rows replaced by ``csv``."""
    readme_rows(text, name)
    return marked(name).sub(lambda m: f"{m.group(1)}```\n{csv}```\n{m.group(3)}", text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(BLOCKS), default=list(BLOCKS))
    parser.add_argument("--check", action="store_true", help="compare with README.md; write nothing")
    args = parser.parse_args(argv)
    for name in args.only:
        check_commands(README.read_text(), name)
    found = {}
    with tempfile.TemporaryDirectory(prefix="readme-rows-") as tmp:
        for name in args.only:
            print(f"readme_rows: {name} ...", file=sys.stderr, flush=True)
            found[name] = rows(name, Path(tmp))
    text = README.read_text()  # read again: only the marked blocks change, whatever else was edited meanwhile
    new = text
    for name, csv in found.items():
        new = replace_rows(new, name, csv)
    if args.check:
        if new != text:
            print("readme_rows: README.md's rows differ from what the commands give", file=sys.stderr)
            return 1
        return 0
    README.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
