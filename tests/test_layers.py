"""The layers of zoo/: import-linter's contracts in pyproject.toml hold, and they fail on a module that breaks them.

``pytest`` runs ``lint-imports`` here, so that the README's test command catches an import that climbs a layer
or a library module that parses a command line, as CI does.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, subprocess_env

from zoo.cli import COMMANDS

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` on the package ``zoo`` under ``root``, with the contracts of ``root/pyproject.toml``."""
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, env=subprocess_env(root), capture_output=True,
                          text=True, timeout=300)


def test_the_import_contracts_hold():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(("module", "line", "broken"), [
    ("checkpoint.py", "from zoo import hub", "zoo.checkpoint is not allowed to import zoo.hub"),
    ("predict.py", "import zoo.module", "zoo.predict is not allowed to import zoo.module"),
    ("hub.py", "import argparse", "zoo.hub is not allowed to import argparse"),
    ("bench/__init__.py", "import zoo.gallery", "zoo.bench is not allowed to import zoo.gallery"),
])
def test_the_contracts_catch_a_module_that_breaks_a_layer(module, line, broken, tmp_path):
    """A copy of zoo/ with one import planted: the contract it breaks names it, and lint-imports fails."""
    shutil.copytree(ROOT / "zoo", tmp_path / "zoo", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    planted = tmp_path / "zoo" / module
    planted.write_text(planted.read_text() + f"\n{line}  # planted\n")
    result = _lint(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert broken in " ".join(result.stdout.split()), result.stdout


def test_every_command_line_lives_in_zoo_cli():
    """The subcommand table points into zoo.cli: no library module holds a ``cmd_`` front-end."""
    for name, target in COMMANDS.items():
        if isinstance(target, str):
            assert target.startswith("zoo.cli"), f"zoo {name} is {target}, outside zoo.cli"
    for path in (ROOT / "zoo").rglob("*.py"):
        if "cli" not in path.relative_to(ROOT / "zoo").parts:
            assert "def cmd_" not in path.read_text(), f"{path} defines a command line outside zoo/cli/"


def test_the_manifest_writer_names_a_missing_package_in_one_line():
    """``python -m zoo.cli.manifest`` (the manifest writer's command line, moved out of zoo.registry)."""
    result = subprocess.run([sys.executable, "-m", "zoo.cli.manifest", "no_such_plugin"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("zoo: error:") and "'no_such_plugin'" in lines[0], result.stderr
