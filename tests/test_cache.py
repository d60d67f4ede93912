"""The read-through cache of the mini sets and models: built once, said when built, safe across processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from zoo.data import mini
from zoo.errors import ZooError

ROOT = Path(__file__).resolve().parents[1]


def _counting_build(log: Path):
    def build(folder: Path, seed: int) -> None:
        with log.open("a") as f:
            f.write(f"{seed}\n")
        (folder / "data.txt").write_text(f"seed {seed}\n")

    return build


def test_a_build_is_announced_on_stderr_once_and_then_read_back(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path / "cache"))
    log = tmp_path / "builds.log"
    first = mini.ensure("toy", seed=3, build=_counting_build(log), version=7, estimate="about 1 CPU second")
    err = capsys.readouterr().err
    assert first == tmp_path / "cache" / "mini" / "toy-v7-seed3"
    assert err.count("\n") == 1 and "building toy (v7, seed 3)" in err and "about 1 CPU second" in err
    again = mini.ensure("toy", seed=3, build=_counting_build(log), version=7)
    assert again == first and capsys.readouterr().err == ""
    assert log.read_text() == "3\n"  # built once
    # another version or seed is another folder
    assert mini.ensure("toy", seed=3, build=_counting_build(log), version=8) != first
    assert log.read_text() == "3\n3\n"


def test_a_build_left_incomplete_is_rebuilt_and_a_failed_one_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path))
    target = mini.cache_root() / "toy-v1-seed0"
    (target / "half").mkdir(parents=True)  # a killed build of an older layout: no .complete
    log = tmp_path / "builds.log"
    assert mini.ensure("toy", build=_counting_build(log)) == target
    assert not (target / "half").exists() and (target / "data.txt").is_file()

    def broken(folder: Path, seed: int) -> None:
        (folder / "partial").write_text("x")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        mini.ensure("broken", build=broken)
    assert [p.name for p in mini.cache_root().iterdir() if p.is_dir() and "broken" in p.name] == []


BUILDER = """
import sys, time
from pathlib import Path
from zoo.data import mini

def build(folder, seed):
    with open(sys.argv[1], "a") as f:
        f.write("built\\n")
    time.sleep(1.0)  # long enough for the other process to arrive while this one builds
    (folder / "data.txt").write_text("ok")

print(mini.ensure("race", build=build))
"""


def test_concurrent_processes_build_once_and_both_read_the_complete_folder(tmp_path):
    log = tmp_path / "builds.log"
    script = tmp_path / "builder.py"
    script.write_text(BUILDER)
    env = {**os.environ, "ZOO_CACHE": str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, str(script), str(log)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    folders = {out.strip() for out, _ in outs}
    assert len(folders) == 1 and (Path(folders.pop()) / "data.txt").read_text() == "ok"
    assert log.read_text() == "built\n"
    assert sum("building race" in err for _, err in outs) == 1


def test_cgi_dm_mini_models_have_named_settings_and_the_suite_uses_the_test_one(monkeypatch):
    from zoo_cgi_dm import finetune

    assert set(finetune.SETTINGS) == {"mini", "test"}
    total = {name: sum(s[stage]["steps"] for stage in ("pretrain", "full", "lora"))
             for name, s in finetune.SETTINGS.items()}
    assert total["test"] * 3 < total["mini"]
    assert os.environ["ZOO_CGI_DM_MINI"] == "test"  # conftest: the tests never wait for the mini suite's models
    monkeypatch.setenv("ZOO_CGI_DM_MINI", "bogus")
    with pytest.raises(ZooError, match="ZOO_CGI_DM_MINI='bogus'.*mini, test"):
        finetune.ensure_mini_models()
