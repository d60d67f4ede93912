"""The zoo command: listing, help, configs, and a third-party plugin installed with pip."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, subprocess_env

from zoo import registry
from zoo.cli import COMMANDS, TRAINER_SUBCOMMANDS, main

CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))
# configs/gallery/<command>.yaml belong to `zoo <command>` and are parsed in test_gallery.py
CLI_CONFIGS = [p for p in CONFIGS if p.parent.name != "gallery"]


def _zoo(*args: str, env=None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zoo.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


def test_list_prints_methods_datamodules_and_tasks(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in registry.datamodules.names():
        assert name in out
    for name in registry.methods.names():
        assert name in out
    tasks = out[out.index(" tasks "):]
    for name in registry.tasks.names():
        assert name in tasks and registry.tasks.describe(name)["question"] in tasks


def test_help_works_for_every_subcommand(capsys):
    for sub in (*TRAINER_SUBCOMMANDS, *COMMANDS):
        with pytest.raises(SystemExit) as exit_:
            main([sub, "--help"])
        assert exit_.value.code == 0, sub
        assert "usage" in capsys.readouterr().out.lower(), sub
    assert main(["--help"]) == 0


def test_unknown_model_is_a_clear_error(capsys):
    assert main(["fit", "--model", "PDFEmbeding", "--print_config"]) == 2
    err = capsys.readouterr().err
    assert "unknown method 'PDFEmbeding'" in err


def test_print_config_works_for_every_method_that_imports(capsys):
    methods, _ = registry.methods.load_all()
    assert methods, "no method imports"
    for name in methods:
        with pytest.raises(SystemExit) as exit_:
            main(["fit", "--model", name, "--print_config"])
        assert exit_.value.code == 0, name
        printed = yaml.safe_load(capsys.readouterr().out)
        assert printed["model"]["class_path"].endswith(f".{name}"), name


@pytest.mark.parametrize("config", CLI_CONFIGS, ids=[str(p.relative_to(ROOT / "configs")) for p in CLI_CONFIGS])
def test_every_config_parses(config, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_.value.code == 0, capsys.readouterr().err
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] and printed["data"]["class_path"]


def test_every_config_is_valid_yaml():
    for config in CONFIGS:
        assert isinstance(yaml.safe_load(config.read_text()), dict), config


def test_third_party_plugin_installed_with_pip_is_listed_and_trains(example_plugin, tmp_path):
    env = subprocess_env(example_plugin)
    listed = _zoo("list", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "ImageStatsDetector" in listed.stdout and "zoo-example-plugin" in listed.stdout
    fit = _zoo("fit", "--model", "ImageStatsDetector", "--data", "MiniFakeDetection",
               "--trainer.max_steps", "3", "--trainer.enable_progress_bar", "false",
               "--trainer.default_root_dir", str(tmp_path), env=env, cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr[-3000:]
    export = next(Path(tmp_path).rglob("zoo/config.json")).parent
    assert (export / "model.safetensors").is_file()
    test = _zoo("test", "--data", "MiniFakeDetection", "--ckpt_path", str(export),
                "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path),
                env=env, cwd=tmp_path)
    assert test.returncode == 0, test.stderr[-3000:]
    assert "test/auroc" in test.stdout


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    command = next(line for line in ci.splitlines() if line.startswith("python3 -m venv"))
    assert command in (ROOT / "README.md").read_text()


def test_convert_released_needs_the_methods_importer(example_plugin, tmp_path, capsys):
    released = tmp_path / "weights.pth.tar"
    released.write_bytes(b"")
    assert main(["convert", str(released), str(tmp_path / "out"), "--released", "ImageStatsDetector"]) == 2
    assert "ImageStatsDetector has no importer for released checkpoints" in capsys.readouterr().err
