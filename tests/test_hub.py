"""zoo.hub through the real ``huggingface_hub`` client against the local Hub-protocol server of ``hub_server``.

Nothing of ``huggingface_hub`` is monkeypatched: the client is configured (endpoint, offline switch, cache)
the way a user configures it, and every request it makes is answered, and counted, by the server.

The method used is the example third-party plugin (``tests/plugins/zoo_example_plugin``), made
discoverable without installing anything: a ``dist-info`` with its entry point is written to a temporary
folder put on ``sys.path``; ``ReleasedStats`` below is registered the same way to exercise the importer
of released checkpoints.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import io
import json
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
import safetensors.torch
import torch
from conftest import ROOT, fast_trainer, subprocess_env
from hub_server import HubServer
from huggingface_hub import ModelCard, metadata_load
from huggingface_hub.repocard_data import model_index_to_eval_results
from rich.console import Console
from torch import nn

from zoo import hub, registry
from zoo.checkpoint import read_weights_only
from zoo.cli import main
from zoo.cli.hub import print_pretrained
from zoo.errors import ZooError
from zoo.module import ZooModule

PLUGIN_DIR = ROOT / "tests" / "plugins" / "zoo_example_plugin"


class ReleasedStats(ZooModule):
    """A method whose authors released a DataParallel ``.pth.tar``; its importer loads it weights-only."""

    task = "fake_detection"
    paper = "(test method)"
    variants = {"tiny": {}}

    def __init__(self, width: int = 3, options: dict | None = None) -> None:
        super().__init__()
        self.head = nn.Linear(width, 1)

    def predict_batch(self, batch):
        return {"score": self.head(batch["image"].mean(dim=(-1, -2))).squeeze(1)}

    @classmethod
    def convert_released(cls, path, **init_args):
        state = read_weights_only(path)["state_dict"]
        model = cls(**init_args)
        model.head.load_state_dict({k.removeprefix("module.head."): v for k, v in state.items()})
        return model


@pytest.fixture(scope="module")
def plugins(tmp_path_factory):
    """ImageStatsDetector and ReleasedStats in the method registry, for this module only."""
    site = tmp_path_factory.mktemp("site")
    info = site / "zoo_hub_test_methods-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: zoo-hub-test-methods\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[zoo.plugins]\nzoo_hub_test_methods = zoo_hub_test_methods\n")
    package = site / "zoo_hub_test_methods"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "zoo_plugin.json").write_text(json.dumps({"zoo.methods": {
        "ImageStatsDetector": {"class": "zoo_example_plugin:ImageStatsDetector"},
        "ReleasedStats": {"class": f"{__name__}:ReleasedStats"},
    }}))
    sys.path[:0] = [str(site), str(PLUGIN_DIR)]
    registry.methods.refresh()
    yield site
    sys.path.remove(str(site))
    sys.path.remove(str(PLUGIN_DIR))
    registry.methods.refresh()


@pytest.fixture(scope="module")
def server():
    with HubServer() as hub_server:
        yield hub_server
    assert not hub_server.unknown, f"the client used routes the test server does not speak: {hub_server.unknown}"


@pytest.fixture
def online(server, monkeypatch, tmp_path):
    """The client configured as by HF_ENDPOINT / HF_HUB_OFFLINE=0 / HF_HUB_CACHE (read once at its import)."""
    constants = huggingface_hub.constants
    cache = tmp_path / "hf-cache"
    for env, name, value in (("HF_ENDPOINT", "ENDPOINT", server.url), ("HF_HUB_OFFLINE", "HF_HUB_OFFLINE", False),
                             ("HF_HUB_CACHE", "HF_HUB_CACHE", str(cache))):
        monkeypatch.setenv(env, str(int(value)) if isinstance(value, bool) else value)
        monkeypatch.setattr(constants, name, value)
    template = server.url + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    return cache


def go_offline(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def trained(plugins, tmp_path_factory):
    """ImageStatsDetector trained one epoch on the mini fake-detection set, its folder, test metrics, a batch."""
    from zoo.data.mini_datamodules import MiniFakeDetection

    torch.manual_seed(0)
    model = registry.methods.load("ImageStatsDetector").from_variant("tiny")
    data = MiniFakeDetection(batch_size=16, image_size=32)
    trainer = fast_trainer(max_epochs=1)
    trainer.fit(model, datamodule=data)
    metrics = {k: float(v) for k, v in trainer.test(model, datamodule=data, verbose=False)[0].items()}
    folder = model.save_pretrained(tmp_path_factory.mktemp("ckpt") / "stats")
    batch = next(iter(data.test_dataloader()))
    return model.eval(), folder, metrics, batch


def predictions(model: ZooModule, batch) -> torch.Tensor:
    with torch.no_grad():
        return model.predictions(batch)["score"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_publish_download_and_offline_load(trained, server, online, monkeypatch, tmp_path):
    model, folder, metrics, batch = trained
    url = hub.publish(folder, "org/stats", endpoint=server.url, metrics=metrics, dataset="MiniFakeDetection",
                      training_config={"trainer": {"max_epochs": 1}})
    assert url.startswith(f"{server.url}/org/stats/commit/")
    published = server.files("org/stats")
    for name in hub.FILES:
        assert published[name] == (folder / name).read_bytes()

    cache = tmp_path / "empty-cache"
    before = len(server.requests)
    local = hub.download("org/stats", cache_dir=str(cache), endpoint=server.url)
    assert len(server.requests) > before and local.is_relative_to(cache)
    assert sorted(p.name for p in local.iterdir()) == sorted(hub.FILES)  # JSON and safetensors only

    # offline: HF_HUB_OFFLINE=1, and separately local_files_only=True while online; no request either way
    seen = len(server.requests)
    assert ZooModule.from_pretrained("hf-hub:org/stats", cache_dir=str(cache), local_files_only=True) is not None
    go_offline(monkeypatch)
    loaded = ZooModule.from_pretrained("hf-hub:org/stats", cache_dir=str(cache), endpoint=server.url)
    assert len(server.requests) == seen
    assert type(loaded).__name__ == "ImageStatsDetector"
    assert torch.equal(predictions(loaded, batch), predictions(model, batch))
    assert float(loaded.threshold) == float(model.threshold)

    with pytest.raises(ZooError, match="zoo download hf-hub:org/never-fetched"):
        ZooModule.from_pretrained("hf-hub:org/never-fetched", cache_dir=str(cache))
    assert len(server.requests) == seen


def test_push_to_hub_commits_on_top(trained, server, online):
    model, *_ = trained
    first = model.push_to_hub("org/twice", endpoint=server.url)
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.head.bias.add_(1.0)
    again = changed.push_to_hub("org/twice", endpoint=server.url)  # as the Hub client does: a new commit
    assert again != first
    old, new = (server.files("org/twice", url.rsplit("/", 1)[1])["model.safetensors"] for url in (first, again))
    assert old != new and server.files("org/twice")["model.safetensors"] == new  # the first stays in history
    with pytest.raises(ZooError, match=r"org/twice@main already has README.md, config.json, model.safetensors"):
        model.push_to_hub("org/twice", endpoint=server.url, overwrite=False)
    # another revision is another branch, so nothing is overwritten there
    branch = model.push_to_hub("org/twice", endpoint=server.url, revision="v2")
    assert server.repos[("model", "org/twice")].branches["v2"] == branch.rsplit("/", 1)[1]


def test_private_repo_needs_the_token(trained, server, online, tmp_path, capsys):
    _, folder, _, _ = trained
    token = "hf_test_secret_token_value"
    hub.publish(folder, "org/private", endpoint=server.url, private=True, token=token)
    with pytest.raises(ZooError, match="private and no valid token"):
        hub.download("org/private", cache_dir=str(tmp_path / "a"), endpoint=server.url)
    local = hub.download("org/private", cache_dir=str(tmp_path / "b"), endpoint=server.url, token=token)
    assert (local / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()
    out = capsys.readouterr()
    assert token not in out.out + out.err


def test_short_name_pins_sha256_and_rejects_a_tampered_file(trained, server, online, monkeypatch, tmp_path):
    _, folder, _, batch = trained
    hub.publish(folder, "org/pinned", endpoint=server.url)
    known = tmp_path / "pretrained.json"
    known.write_text(json.dumps({"stats.mini": {
        "method": "ImageStatsDetector", "repo_id": "org/pinned", "revision": "main",
        "sha256": {name: sha256(folder / name) for name in hub.FILES}, "description": "test entry",
    }}))
    monkeypatch.setenv(hub.REGISTRY_ENV, str(known))
    assert "stats.mini" in hub.known_checkpoints() and "pdf_embedding.exponential_drep" in hub.known_checkpoints()

    good = hub.download("stats.mini", cache_dir=str(tmp_path / "good"), endpoint=server.url)
    assert sha256(good / "model.safetensors") == sha256(folder / "model.safetensors")

    weights = bytearray(server.files("org/pinned")["model.safetensors"])
    weights[-1] ^= 0xFF  # one flipped bit in the last tensor
    server.tamper("org/pinned", "model.safetensors", bytes(weights))
    with pytest.raises(ZooError, match="model.safetensors of stats.mini has sha256 .* the registry pins"):
        hub.download("stats.mini", cache_dir=str(tmp_path / "bad"), endpoint=server.url)
    # the copy already in the cache was verified and stays usable offline, by its short name
    go_offline(monkeypatch)
    model = ZooModule.from_pretrained("stats.mini", cache_dir=str(tmp_path / "good"))
    assert predictions(model, batch).shape == (len(batch["id"]),)


def test_released_checkpoint_converted_by_the_importer(trained, server, online, monkeypatch, tmp_path):
    batch = trained[3]
    torch.manual_seed(1)
    reference = ReleasedStats(width=3)
    released = tmp_path / "stats_released.pth.tar"
    torch.save({"state_dict": {f"module.head.{k}": v for k, v in reference.head.state_dict().items()}}, released)
    server.add_commit("dataset", "authors/release", "main", {"stats_released.pth.tar": released.read_bytes()}, "r")
    known = tmp_path / "pretrained.json"
    known.write_text(json.dumps({"released.stats": {
        "method": "ReleasedStats", "repo_id": "authors/release", "repo_type": "dataset",
        "filename": "stats_released.pth.tar", "sha256": {"stats_released.pth.tar": sha256(released)},
        "init_args": {"width": 3},
    }}))
    monkeypatch.setenv(hub.REGISTRY_ENV, str(known))
    cache = tmp_path / "cache"
    folder = hub.download("released.stats", cache_dir=str(cache), endpoint=server.url)
    assert sorted(p.name for p in folder.iterdir()) == sorted(hub.FILES) and folder.is_relative_to(cache)
    go_offline(monkeypatch)
    seen = len(server.requests)
    loaded = ZooModule.from_pretrained("released.stats", cache_dir=str(cache))
    assert len(server.requests) == seen
    assert torch.equal(predictions(loaded, batch), predictions(reference.eval(), batch))


def card_metrics(card: ModelCard) -> dict[str, float]:
    """The metrics table of a card's text."""
    rows = re.findall(r"^\| ((?:val|test)/\S+) \| ([-\d.]+) \|$", card.text, re.MULTILINE)
    return {key: float(value) for key, value in rows}


def test_model_card_parses_with_huggingface_hub(trained, server):
    _, folder, metrics, _ = trained
    assert "test/threshold" in metrics  # logged by the run; a setting of the model, not a metric
    config = json.loads((folder / "config.json").read_text())
    text = hub.model_card(config, "org/stats", metrics=metrics, dataset="MiniFakeDetection", threshold=0.25,
                          training_config={"trainer": {"max_epochs": 1}, "data": {"class_path": "MiniFakeDetection"}})
    card = ModelCard(text)
    assert card.data.library_name == "provenance-zoo" and card.data.pipeline_tag == "image-classification"
    assert {"provenance-zoo", "fake-detection", "ImageStatsDetector"} <= set(card.data.tags)
    assert card.data.license == "apache-2.0"
    # a mini set is no Hub dataset: described in the text, absent from the metadata and its model-index
    meta = card.data.to_dict()
    assert card.data.datasets is None and "model-index" not in meta and "base_model" not in meta
    assert "`MiniFakeDetection` (mini fake detection" in card.text and "not a dataset on the Hub" in card.text
    shown = {k: v for k, v in metrics.items() if not k.endswith("/threshold")}
    assert card_metrics(card) == pytest.approx(shown, abs=1e-4)
    # fake detection's threshold is shown as zoo predict shows it: a probability (sigmoid(0.25)), its logit beside it
    assert "a probability generated of 0.5622 (logit 0.2500" in card.text
    for section in ("## Limitations", "## Citation", "```bibtex", "@software{provenance_zoo"):
        assert section in card.text
    path = Path(folder.parent / "README.md")
    path.write_text(text)
    assert metadata_load(path)["library_name"] == "provenance-zoo"
    assert 'ZooModule.from_pretrained("hf-hub:org/stats")' in card.text
    assert "(example plugin)" in card.text and "max_epochs: 1" in card.text

    # a Hub dataset id is named in the metadata, with the results on it (the threshold still left out)
    card = ModelCard(hub.model_card(config, "org/stats", metrics=metrics, dataset="org/real-images"))
    assert card.data.datasets == ["org/real-images"]
    name, results = model_index_to_eval_results(card.data.to_dict()["model-index"])
    assert name == "stats"
    assert {r.metric_name: r.metric_value for r in results} == pytest.approx(shown)
    assert {r.dataset_split for r in results} == {"test"} and {r.dataset_type for r in results} == {"org/real-images"}


@pytest.mark.parametrize(("method", "init_args", "base_model"), [
    ("SSCD", {"encoder": "timm:resnet18", "pretrained": False}, None),  # random init claims nothing
    ("SSCD", {"encoder": "timm:resnet18.a1_in1k", "pretrained": True}, ["timm/resnet18.a1_in1k"]),
    ("CNNDetector", {}, ["timm/resnet50.tv2_in1k"]),  # the class default, timm:resnet50.tv2_in1k
    ("PDFEmbedding", {"encoder": "deit_base_patch16_224.fb_in1k", "pretrained": True},
     ["timm/deit_base_patch16_224.fb_in1k"]),  # a bare timm name
    ("DescriptorSimilarity", {"encoder": "open_clip:ViT-B-32@openai", "pretrained": True},
     ["timm/vit_base_patch32_clip_224.openai"]),  # where open_clip fetches these weights from
    ("DescriptorSimilarity", {"encoder": "open_clip:zoo-tiny-clip", "pretrained": True}, None),
    ("CGIDM", {"encoder": "open_clip:ViT-B-32@openai", "encoder_pretrained": False}, None),
])
def test_model_card_base_model_is_the_pretrained_encoder_really_loaded(method, init_args, base_model):
    cls = registry.methods.load(method)
    card = ModelCard(hub.model_card({"name": method, "task": cls.task, "init_args": init_args}, "org/m"))
    assert card.data.base_model == base_model
    # the task's tag (Task.pipeline_tag): copyright and attribution take a model pair, no Hub pipeline fits
    tags = {"fake_detection": "image-classification", "copy_detection": "image-feature-extraction"}
    assert card.data.pipeline_tag == tags.get(cls.task)


def read_metrics(root: Path) -> dict[str, str]:
    (path,) = root.rglob("metrics.csv")
    rows = list(csv.DictReader(path.open()))
    return {k: v for row in rows for k, v in row.items() if k.startswith("test/") and v}


def test_cli_publish_download_test_round_trip(plugins, server, online, monkeypatch, tmp_path, capsys):
    quiet = ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.enable_progress_bar", "false",
             "--trainer.enable_model_summary", "false"]
    data = ["--data", "MiniFakeDetection", "--data.image_size", "32", "--data.batch_size", "16"]
    assert main(["fit", "--model", "ImageStatsDetector", *data, "--trainer.max_epochs", "1",
                 "--trainer.default_root_dir", str(tmp_path / "fit"), "--seed_everything", "0", *quiet]) == 0
    (run_dir,) = (tmp_path / "fit" / "lightning_logs").iterdir()
    assert main(["publish", str(run_dir), "--repo_id", "org/cli"]) == 0
    capsys.readouterr()
    assert main(["publish", str(run_dir), "--repo-id", "org/cli"]) == 2  # refused: already there
    refusal = capsys.readouterr().err
    assert "org/cli@main already has" in refusal and "--overwrite" in refusal and "--revision" in refusal
    # a Lightning .ckpt of the same run converts to the same checkpoint
    (ckpt,) = (run_dir / "checkpoints").glob("*.ckpt")
    assert main(["publish", str(ckpt), "--repo-id", "org/cli", "--revision", "from-ckpt"]) == 0
    exported, converted = server.files("org/cli"), server.files("org/cli", "from-ckpt")
    assert converted["config.json"] == exported["config.json"]
    exported_state = safetensors.torch.load(exported["model.safetensors"])
    converted_state = safetensors.torch.load(converted["model.safetensors"])
    assert converted_state.keys() == exported_state.keys()
    assert all(torch.equal(value, exported_state[key]) for key, value in converted_state.items())
    capsys.readouterr()
    assert main(["download", "org/cli"]) == 0
    downloaded = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert downloaded.is_relative_to(online)
    card = ModelCard(server.files("org/cli")["README.md"].decode())
    assert card.data.datasets is None and "`MiniFakeDetection`" in card.text
    logged = hub.run_metadata(run_dir)[0]  # the run's last val/* values in its metrics.csv
    assert logged and not any(key.endswith("threshold") for key in logged)
    assert card_metrics(card) == pytest.approx(logged, abs=1e-4)

    go_offline(monkeypatch)
    seen = len(server.requests)
    for name, ckpt in (("local", run_dir / "zoo"), ("hub", "hf-hub:org/cli")):
        assert main(["test", "--ckpt_path", str(ckpt), *data, *quiet, "--trainer.logger", "CSVLogger",
                     "--trainer.logger.save_dir", str(tmp_path / name)]) == 0
    assert len(server.requests) == seen
    local, remote = read_metrics(tmp_path / "local"), read_metrics(tmp_path / "hub")
    assert local and local == remote

    monkeypatch.setenv("COLUMNS", "200")
    assert main(["list", "--pretrained"]) == 0
    assert "pdf_embedding.exponential_drep" in capsys.readouterr().out


def test_from_pretrained_takes_a_bare_repo_id(trained, server, online, monkeypatch, tmp_path):
    model, folder, _, batch = trained
    hub.publish(folder, "org/bare", endpoint=server.url)
    cache = str(tmp_path / "cache")
    loaded = ZooModule.from_pretrained("org/bare", cache_dir=cache, endpoint=server.url)
    assert torch.equal(predictions(loaded, batch), predictions(model, batch))
    with pytest.raises(ZooError, match=r"^runs/typo \(no such local folder, so a Hub repo id\): no such repo"):
        ZooModule.from_pretrained("runs/typo", cache_dir=cache, endpoint=server.url)
    go_offline(monkeypatch)  # and from the cache, by the same name
    assert type(ZooModule.from_pretrained("org/bare", cache_dir=cache)).__name__ == "ImageStatsDetector"
    with pytest.raises(ZooError, match=r"^runs/typo \(no such local folder, so a Hub repo id\) is not in the"):
        ZooModule.from_pretrained("runs/typo", cache_dir=cache)
    # an existing folder of that form is still a folder
    monkeypatch.chdir(folder.parent.parent)
    assert ZooModule.from_pretrained(f"{folder.parent.name}/{folder.name}") is not None
    with pytest.raises(ZooError, match=r"^checkpoint 'not a/repo' is not a folder"):
        ZooModule.from_pretrained("not a/repo")
    for bad in ("hf-hub:org//bad", "hf-hub:org/bad--name"):
        with pytest.raises(ZooError, match="is not a valid Hub repo id"):
            ZooModule.from_pretrained(bad)


def test_from_pretrained_does_not_import_the_cli(trained, server, online, plugins, tmp_path):
    _, folder, _, _ = trained
    hub.publish(folder, "org/no-cli", endpoint=server.url)
    code = (
        "import sys\n"
        "from zoo.module import ZooModule\n"
        f"ZooModule.from_pretrained('org/no-cli', cache_dir={str(tmp_path)!r}, endpoint={server.url!r})\n"
        "loaded = sorted(m for m in ('zoo.cli', 'lightning.pytorch.cli') if m in sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    env = subprocess_env(plugins, PLUGIN_DIR)
    env.update(HF_HUB_OFFLINE="0", HF_ENDPOINT=server.url)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_unreachable_hub_is_one_line(trained, online, monkeypatch, tmp_path, capsys):
    _, folder, _, _ = trained
    url = closed_port_url()
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", url)
    monkeypatch.setattr(huggingface_hub.constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        url + "/{repo_id}/resolve/{revision}/{filename}")
    capsys.readouterr()
    for argv in (["publish", str(folder), "--repo_id", "org/away"], ["download", "org/away"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert "Hub" in err and "unreachable" in err and "zoo download" not in err, err
    go_offline(monkeypatch)
    for argv in (["publish", str(folder), "--repo_id", "org/away"], ["download", "org/away"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "HF_HUB_OFFLINE=1" in err and "zoo download" not in err, err


def test_token_is_never_shown(trained, server, online, tmp_path, capsys):
    _, folder, _, _ = trained
    token = "hf_ZooSecretToken7Q2xW9"
    cache = tmp_path / "cache"
    assert main(["publish", str(folder), "--repo_id", "org/secret", "--private", "--token", token]) == 0
    assert server.authorized[-1]
    assert main(["download", "org/secret", "--cache_dir", str(cache)]) == 2  # private: no token, no repo
    assert main(["download", "org/secret", "--cache_dir", str(cache), "--token", token]) == 0
    assert main(["publish", str(folder), "--repo_id", "org/secret", "--token", token]) == 2  # refused, already there
    assert main(["publish", str(folder), "--repo_id", "bad repo", f"--token={token}"]) == 2
    for argv in (["publish", str(folder), "--token", token, "--no-such-option", token],
                 ["download", "org/secret", "--tokn", token], ["download", "--token"]):
        with pytest.raises(SystemExit):
            main(argv)
    out = capsys.readouterr()
    assert "unrecognized arguments" in out.err and "***" in out.err
    assert token not in out.out + out.err
    card = server.files("org/secret")["README.md"].decode()
    assert token not in card and "org/secret" in card
    for path in tmp_path.rglob("*"):
        assert not path.is_file() or token.encode() not in path.read_bytes(), path


def test_invalid_repo_id_is_one_line(trained, server, online, capsys):
    _, folder, _, _ = trained
    for argv in (["publish", str(folder), "--repo_id", "org/bad name"], ["download", "hf-hub:a/b/c"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "is not a valid Hub repo id" in err, err
    with pytest.raises(SystemExit):
        main(["publish", str(folder)])
    assert "required: --repo_id" in capsys.readouterr().err


def test_force_fetches_again_after_a_sha256_mismatch(trained, server, online, monkeypatch, tmp_path, capsys):
    _, folder, _, _ = trained
    hub.publish(folder, "org/mirror", endpoint=server.url)
    good = server.files("org/mirror")["model.safetensors"]
    known = tmp_path / "pretrained.json"
    known.write_text(json.dumps({"stats.mirror": {
        "method": "ImageStatsDetector", "repo_id": "org/mirror",
        "sha256": {name: sha256(folder / name) for name in hub.FILES},
    }}))
    monkeypatch.setenv(hub.REGISTRY_ENV, str(known))
    cache = str(tmp_path / "cache")
    server.tamper("org/mirror", "model.safetensors", good[:-1] + bytes([good[-1] ^ 0xFF]))
    assert main(["download", "stats.mirror", "--cache_dir", cache]) == 2
    assert "zoo download stats.mirror --force" in capsys.readouterr().err
    server.tamper("org/mirror", "model.safetensors", good)  # the mirror is repaired
    assert main(["download", "stats.mirror", "--cache_dir", cache, "--force"]) == 0
    local = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert (local / "model.safetensors").read_bytes() == good
    go_offline(monkeypatch)  # and the cache now points at the good copy
    assert ZooModule.from_pretrained("stats.mirror", cache_dir=cache) is not None


def poisoned_config(marker: Path) -> dict:
    """A ReleasedStats config.json whose dict-typed argument names code that would create ``marker``."""
    return {"name": "ReleasedStats", "task": "fake_detection", "format_version": 1, "init_args": {
        "width": 3, "options": {"x": {"class_path": "subprocess.Popen",
                                      "init_args": {"args": f"touch {marker}", "shell": True}}}}}


@pytest.mark.parametrize("how", ["from_pretrained hf-hub:", "from_pretrained org/name", "zoo download"])
def test_poisoned_hub_checkpoint_runs_no_code(how, trained, server, online, monkeypatch, tmp_path, capsys):
    marker = tmp_path / "marker"
    weights = tmp_path / "weights"
    ReleasedStats(width=3).save_pretrained(weights)
    repo = f"evil/{how.split()[-1].strip(':').replace('/', '-')}"
    server.add_commit("model", repo, "main", {
        "config.json": json.dumps(poisoned_config(marker)).encode(),
        "model.safetensors": (weights / "model.safetensors").read_bytes(),
    }, "poison")
    cache = str(tmp_path / "cache")
    if how == "zoo download":  # a known checkpoint, its files pinned: the publisher itself is hostile
        known = tmp_path / "pretrained.json"
        files = server.files(repo)
        known.write_text(json.dumps({"evil.known": {
            "method": "ReleasedStats", "repo_id": repo,
            "sha256": {name: hashlib.sha256(files[name]).hexdigest() for name in hub.FILES},
        }}))
        monkeypatch.setenv(hub.REGISTRY_ENV, str(known))
        assert main(["download", "evil.known", "--cache_dir", cache]) == 2
        err = capsys.readouterr().err.strip()
        assert "Traceback" not in err
        err = err.splitlines()[-1]  # after the client's progress bar
    else:
        name = f"hf-hub:{repo}" if "hf-hub" in how else repo
        with pytest.raises(ZooError) as caught:
            ZooModule.from_pretrained(name, cache_dir=cache, endpoint=server.url)
        err = str(caught.value)
    assert len(err.splitlines()) == 1 and "'class_path'" in err and "may not name code" in err, err
    assert not marker.exists()


def test_list_pretrained_shows_source_and_verification(plugins, monkeypatch, tmp_path, capsys):
    known = tmp_path / "pretrained.json"
    known.write_text(json.dumps({"stats.pinned": {
        "method": "ImageStatsDetector", "repo_id": "org/pinned", "revision": "a" * 40,
        "sha256": {name: "0" * 64 for name in hub.FILES}, "source": "https://example.org/stats",
    }, "stats.github": {
        "method": "ReleasedStats", "repo_id": "authors/stats", "repo_type": "github", "revision": "b" * 40,
        "filename": "weights/head.pth", "sha256": {"weights/head.pth": "1" * 64},
    }}))
    monkeypatch.setenv(hub.REGISTRY_ENV, str(known))
    capsys.readouterr()
    assert main(["list", "--pretrained"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in hub.known_checkpoints())
    assert listed.count("UNVERIFIED") == sum(not entry.verified for entry in hub.known_checkpoints().values())
    console = Console(width=500, file=io.StringIO())  # one line a row, to read each row's state
    print_pretrained(console)
    out = console.file.getvalue()
    rows = {name: line for name in hub.known_checkpoints() for line in out.splitlines() if f" {name} " in line}
    assert "verified: sha256 pinned at commit aaaaaaaaaaaa" in rows["stats.pinned"]
    for name in ("pdf_embedding.exponential_drep", "pdf_embedding.gaussian_drep"):  # ICDiff: nothing pinned
        assert "UNVERIFIED: no sha256 pinned for vit_" in rows[name], out
        assert "revision 'main' is a branch" in out
    assert "https://github.com/WangWenhao0716/PDF-Embedding" in out and "https://example.org/stats" in out
    assert "github.com/authors/stats@" in rows["stats.github"] and f"sha256 {'1' * 64}" in out
    capsys.readouterr()
    assert main(["download", "stats.github"]) == 2  # not on the Hub: says where it is and how to convert it
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "zoo convert --released ReleasedStats" in err, err
    # SSCD's files are served at a download address: listed unverified, with the address and the converter
    for name in ("sscd.disc_mixup", "sscd.disc_advanced", "sscd.disc_blur"):
        assert f"UNVERIFIED: no sha256 pinned for {name.replace('.', '_')}.torchscript.pt" in rows[name]
        assert "@" not in rows[name].split("│")[3]  # an address has no revision
    assert "https://dl.fbaipublicfiles.com/sscd-copy-detection/sscd_disc_mixup.torchscript.pt" in out
    assert main(["download", "sscd.disc_mixup"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "at a download address" in err and "zoo convert --released SSCD" in err


def test_credentials_in_hf_endpoint_are_never_shown(trained, online, monkeypatch, tmp_path, capsys):
    _, folder, _, _ = trained
    url = closed_port_url().replace("http://", "http://user:Sup3rSecret@") + "/api?token=Sup3rToken"
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", url)
    capsys.readouterr()
    for argv in (["publish", str(folder), "--repo_id", "org/away"], ["download", "hf-hub:org/away"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "unreachable" in err and "***@127.0.0.1" in err, err
        assert "Sup3rSecret" not in err and "Sup3rToken" not in err, err


@pytest.mark.parametrize(("name", "content", "message"), [
    ("metrics.csv", "epoch,test/accuracy\n0,notanumber\n", "metrics.csv line 2: metric 'test/accuracy'"),
    ("metrics.csv", b"epoch,test/accuracy\n0,\xff\n", "metrics.csv: not a readable CSV file"),
    ("config.yaml", "model: !!python/object/apply:os.system ['true']\n", "config.yaml is not a readable YAML"),
    ("config.yaml", "- 1\n- 2\n", "config.yaml must hold a YAML mapping"),
    ("metrics.json", "[1, 2]", "must hold a JSON object of metric name -> number"),
])
def test_publish_bad_run_files_are_one_line(name, content, message, trained, server, online, tmp_path, capsys):
    _, folder, _, _ = trained
    run = tmp_path / "run"
    shutil.copytree(folder, run / "zoo")
    (run / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    extra = ["--metrics", str(run / name)] if name.endswith(".json") else []
    capsys.readouterr()
    assert main(["publish", str(run), "--repo_id", "org/badrun", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("zoo: error:") and message in err, err
    assert ("model", "org/badrun") not in server.repos, "nothing is uploaded"


@pytest.mark.parametrize(("content", "message"), [
    ([1], "must be a JSON object of name -> entry"),
    ({"x": [1]}, "entry 'x' must be a JSON object"),
    ({"x": {"method": "SSCD"}}, "entry 'x' has no 'repo_id'"),
    ({"x": {"method": "SSCD", "repo_id": "a/b", "sha256": []}}, "'sha256' has the wrong type"),
    ({"x": {"method": "SSCD", "repo_id": "a/b", "sha256": {"f": "nothex"}}}, "must be 64 hexadecimal digits"),
    ({"x": {"method": "SSCD", "repo_id": "a/b", "filename": "../../../escape.pt"}}, "without '..'"),
    ({"x": {"method": "SSCD", "repo_id": "a/b", "filename": "/etc/passwd"}}, "without '..'"),
    ({"../x": {"method": "SSCD", "repo_id": "a/b"}}, "no path separators"),
    ({"x": {"method": "SSCD", "repo_id": "a/b", "weights": 1}}, "unknown field 'weights'"),
])
def test_a_bad_pretrained_list_is_one_line(content, message, monkeypatch, tmp_path, capsys):
    known = tmp_path / "pretrained.json"
    known.write_text(json.dumps(content))
    monkeypatch.setenv(hub.REGISTRY_ENV, str(known))
    assert main(["list", "--pretrained"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(known) in err and message in err, err
