"""Shared fixtures: a persistent cache for the mini sets, offline Hugging Face, small thread counts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# no test may reach the network; the Hub tests point the client at their own local server
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# CGI-DM's ``zoo-mini`` models in their test setting: seconds to train instead of minutes (zoo_cgi_dm.finetune)
os.environ.setdefault("ZOO_CGI_DM_MINI", "test")
# one thread: the tests' models are tiny, and on a busy machine a second thread mostly spins waiting for a core.
# tests/test_every_method.py -k "CGIDM or SSCD" on 2 shared cores (load average 4): 14 CPU s on one
# thread against 31 to 127 CPU s on two
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def zoo_cache() -> Path:
    """The mini sets and mini models, built once and reused by every later session.

    A read-through cache: each build is deterministic and keyed by its builder's version and seed
    (``zoo.data.mini.ensure``), and is written under a file lock and renamed into place when complete, so
    concurrent sessions share it safely. ``$ZOO_TEST_CACHE`` moves it; deleting the folder rebuilds it.
    """
    cache = Path(os.environ.get("ZOO_TEST_CACHE") or Path.home() / ".cache" / "provenance-zoo-tests")
    os.environ["ZOO_CACHE"] = str(cache)
    return cache


def fast_trainer(**overrides):
    """A CPU Trainer for tests: no logger, no checkpoints, no progress bar."""
    import lightning.pytorch as pl

    kwargs = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                  enable_progress_bar=False, enable_model_summary=False, max_epochs=1)
    kwargs.update(overrides)
    return pl.Trainer(**kwargs)


@pytest.fixture(scope="session")
def example_plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The third-party example plugin, installed with pip into a temporary target folder.

    The folder is put on ``sys.path`` of this process (and returned for subprocesses' PYTHONPATH), and
    the registries are refreshed, exactly as after a ``pip install`` of the plugin.
    """
    import subprocess
    import sys

    from zoo import registry

    target = tmp_path_factory.mktemp("example-plugin")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
         str(target), str(ROOT / "tests" / "plugins" / "zoo_example_plugin")],
        check=True,
    )
    sys.path.insert(0, str(target))
    registry.methods.refresh()
    registry.datamodules.refresh()
    return target


def tiny_unets(root: Path) -> Path:
    """Two random tiny pixel-space UNets (a "pretrained" and a "fine-tuned"), saved as CGI-DM reads them."""
    from zoo.diffusion import tiny_scheduler, tiny_unet

    torch.manual_seed(0)
    for name in ("pre", "ft"):
        unet = tiny_unet(conditional=False, in_channels=3, sample_size=8, block_out_channels=(8, 16), attention=False)
        unet.save_pretrained(root / name / "unet")
        tiny_scheduler().save_pretrained(root / name / "scheduler")
    return root


def subprocess_env(*paths: Path) -> dict[str, str]:
    """The environment of a ``zoo`` subprocess with ``paths`` on its PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*map(str, paths), env.get("PYTHONPATH", "")]).strip(os.pathsep)
    return env
