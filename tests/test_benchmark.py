"""The benchmark harness: suites, grids, resumption, failures, third-party plugins, the report, the perf table."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from PIL import Image

from zoo import registry
from zoo.bench import cmd_benchmark
from zoo.bench.suite import load_suite, parse_suite
from zoo.errors import ZooError

ROOT = Path(__file__).resolve().parents[1]

# A second third-party distribution, written as files: a method that does not train (it is validated,
# which calibrates its threshold, then tested), a copy-detection rule, and a plugin that fails to import.
FIXTURE_PLUGIN = '''
import torch
from PIL import Image
from zoo.module import ZooModule


class EdgeEnergy(ZooModule):
    """Smooth images score as generated: minus the mean absolute horizontal pixel difference."""

    task = "fake_detection"
    paper = "(benchmark test fixture)"
    variants = {"tiny": {}}
    trains = False

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale

    def predict_batch(self, batch):
        image = batch["image"]
        return {"score": -self.scale * (image[..., 1:] - image[..., :-1]).abs().mean(dim=(1, 2, 3))}

    def on_test_epoch_end(self):
        super().on_test_epoch_end()
        folder = self.artifact_dir()
        if folder is not None:
            Image.new("RGB", (8, 8), (200, 10, 10)).save(folder / "grid.png")


class PixelDistance(ZooModule):
    """The closer the pixels of the pair, the higher the level."""

    task = "copy_detection"
    paper = "(benchmark test fixture)"
    variants = {"tiny": {}}
    trains = False

    def predict_batch(self, batch):
        distance = (batch["generated"] - batch["real"]).abs().mean(dim=(1, 2, 3))
        return {"level": (5 * (1 - 4 * distance)).clamp(0, 5)}
'''
ENTRY_POINTS = """[zoo.methods]
EdgeEnergy = zoo_bench_fixture:EdgeEnergy
PixelDistance = zoo_bench_fixture:PixelDistance
BrokenMethod = zoo_bench_broken:BrokenMethod
"""


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example plugin pip-installed into a folder of its own, beside the fixture distribution."""
    base = tmp_path_factory.mktemp("bench-plugins")
    source = base / "src"
    shutil.copytree(ROOT / "tests/plugins/zoo_example_plugin", source,
                    ignore=shutil.ignore_patterns("build", "*.egg-info"))
    site = base / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(source)], check=True, capture_output=True)
    (site / "zoo_bench_fixture.py").write_text(FIXTURE_PLUGIN)
    (site / "zoo_bench_broken.py").write_text("raise ImportError('zoo_bench_broken needs a missing library')\n")
    info = site / "zoo_bench_fixture-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: zoo-bench-fixture\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    return site


@pytest.fixture
def plugins(plugin_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The two third-party distributions, importable and registered in this process."""
    monkeypatch.syspath_prepend(str(plugin_path))
    registry.methods.refresh()
    yield plugin_path
    monkeypatch.undo()
    registry.methods.refresh()


def _write_suite(path: Path, suite: dict) -> Path:
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


def test_suite_expands_grids_seeds_and_overrides(plugins, tmp_path):
    raw = {
        "name": "grid",
        "seeds": [0, 1],
        "trainer": {"max_epochs": 1},
        "tasks": {"fake_detection": {
            "data": {"class_path": "MiniFakeDetection", "init_args": {"batch_size": 8}},
            "methods": ["ImageStatsDetector", {"name": "EdgeEnergy", "init_args": {"scale": 2.0}, "label": "edge2"}],
            "grid": [
                {"data.init_args.generators": [["upsampler"], ["smoother"]],
                 "data.init_args.test_generators": [["upsampler"], ["smoother"]]},
                {"data.init_args.perturb": ["jpeg75"]},
            ],
        }},
    }
    suite = parse_suite(raw, "grid.yaml")
    # 2 methods x (2 x 2 + 1) grid points x 2 seeds
    assert len(suite.jobs) == 20
    assert len({job.id for job in suite.jobs}) == 20
    cross = [j for j in suite.jobs if j.label == "edge2" and j.grid.get("data.init_args.generators") == ["smoother"]
             and j.grid.get("data.init_args.test_generators") == ["upsampler"] and j.seed == 1]
    assert len(cross) == 1
    job = cross[0]
    assert job.config["data"]["init_args"] == {"batch_size": 8, "generators": ["smoother"],
                                               "test_generators": ["upsampler"]}
    assert job.config["model"]["init_args"] == {"scale": 2.0}
    assert job.config["model"]["class_path"] == "zoo_bench_fixture.EdgeEnergy"
    assert job.config["seed_everything"] == 1 and job.config["trainer"]["max_epochs"] == 1
    assert not job.trains
    stats = next(j for j in suite.jobs if j.method == "ImageStatsDetector")
    assert stats.trains and stats.variant == "tiny" and stats.label == "ImageStatsDetector-tiny"
    # a method given by its LightningCLI config file brings its model, trainer and (here) data sections
    config = tmp_path / "configs" / "edge" / "steep.yaml"
    config.parent.mkdir(parents=True)
    config.write_text(yaml.safe_dump({"model": {"class_path": "EdgeEnergy", "init_args": {"scale": 3.0}},
                                      "data": {"class_path": "MiniFakeDetection", "init_args": {"perturb": "half"}},
                                      "trainer": {"max_epochs": 4}}))
    (tmp_path / "benchmarks").mkdir()
    by_config = load_suite(_write_suite(tmp_path / "benchmarks/c.yaml", {
        "tasks": {"fake_detection": {"methods": [{"config": "configs/edge/steep.yaml"}]}}}))
    (job,) = by_config.jobs
    assert by_config.name == "c" and job.label == "EdgeEnergy-steep" and job.variant == "steep"
    assert job.config["model"]["init_args"] == {"scale": 3.0} and job.config["trainer"]["max_epochs"] == 4
    assert job.config["data"]["init_args"] == {"perturb": "half"}
    # filters
    assert {j.method for j in parse_suite(raw, "grid.yaml", methods=["edge2"]).jobs} == {"EdgeEnergy"}
    assert {j.seed for j in parse_suite(raw, "grid.yaml", seeds=[7]).jobs} == {7}


@pytest.mark.parametrize("change, message", [
    ({"tasks": {"fake_detection": {"data": "MiniFakeDetection", "methodz": []}}}, "unknown key 'tasks.fake_detection.methodz'"),
    ({"tasks": {"fake_detect": {"data": "MiniFakeDetection"}}}, "tasks.fake_detect"),
    ({"tasks": {"fake_detection": {"data": "MiniFakeDetection", "methods": ["EdgeEnergi"]}}}, "did you mean EdgeEnergy"),
    ({"tasks": {"copy_detection": {"data": "MiniCopyDetection", "methods": ["EdgeEnergy"]}}},
     "EdgeEnergy is a fake_detection method"),
    ({"tasks": {"fake_detection": {"data": "MiniFakeDetection", "methods": ["EdgeEnergy"],
                                   "grid": {"init_args.scale": [1, 2]}}}}, "grid key is a dotted path"),
    ({"tasks": {"fake_detection": {"data": "MiniFakeDetection", "methods": [{"name": "EdgeEnergy", "variant": "xl"}]}}},
     "no variant 'xl'"),
    ({"seeds": "zero", "tasks": {"fake_detection": {"data": "MiniFakeDetection"}}}, "key 'seeds'"),
    ({"tasks": {"fake_detection": {"data": "MiniFakeDetectoin", "methods": ["EdgeEnergy"]}}},
     "did you mean MiniFakeDetection"),
])
def test_suite_errors_name_the_file_and_key(plugins, tmp_path, change, message):
    path = _write_suite(tmp_path / "bad.yaml", {"name": "bad", **change})
    with pytest.raises(ZooError, match=message) as err:
        load_suite(path)
    assert str(path) in str(err.value)


def test_mini_suite_lists_every_task_and_runs_every_method(plugins):
    suite = load_suite(ROOT / "benchmarks/mini.yaml")
    assert suite.budget_minutes == 15
    raw = yaml.safe_load((ROOT / "benchmarks/mini.yaml").read_text())
    assert set(raw["tasks"]) == {"copy_detection", "fake_detection", "copyright", "attribution"}
    # every registered method is a job (or a failed job naming its import error), with its tiny budget
    loaded, failed = registry.methods.load_all()
    assert {j.method for j in suite.jobs} == set(loaded) | set(failed)
    stats = next(j for j in suite.jobs if j.method == "ImageStatsDetector")
    assert stats.variant == "tiny" and stats.config["trainer"]["max_epochs"] == loaded["ImageStatsDetector"].tiny_trainer["max_epochs"]
    broken = next(j for j in suite.jobs if j.method == "BrokenMethod")
    assert "needs a missing library" in broken.error
    cross = load_suite(ROOT / "benchmarks/fake_detection_cross.yaml", methods=["EdgeEnergy"])
    assert len(cross.jobs) == 7  # 2 x 2 cross-generator points + 3 robustness rows


def test_interrupted_benchmark_resumes_without_rerunning_finished_jobs(plugins, tmp_path, capsys, monkeypatch):
    """A third-party plugin's method is benchmarked in a fresh process, killed after job 1, then resumed."""
    suite = _write_suite(tmp_path / "two.yaml", {
        "name": "two", "seeds": [0, 1],
        "tasks": {"fake_detection": {"data": {"class_path": "MiniFakeDetection", "init_args": {"batch_size": 16}},
                                     "methods": ["ImageStatsDetector"], "trainer": {"max_epochs": 1}}},
    })
    out = tmp_path / "report"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugins), os.environ.get("PYTHONPATH", "")])}
    # what the `zoo` console script runs
    command = [sys.executable, "-c", "import sys; from zoo.cli import main; sys.exit(main())"]
    proc = subprocess.Popen([*command, "benchmark", "--config", str(suite), "--output", str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    first = out / "jobs/fake_detection--ImageStatsDetector-tiny-MiniFakeDetection-s0/result.json"
    second = out / "jobs/fake_detection--ImageStatsDetector-tiny-MiniFakeDetection-s1/result.json"
    deadline = time.monotonic() + 240  # a bound for a loaded machine
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()
    log = proc.communicate()[0].decode()
    assert first.exists(), log
    assert not second.exists(), "the run was meant to be killed during its second job"
    before = json.loads(first.read_text())
    assert before["status"] == "ok" and before["metrics"]["auroc"] >= 0, before
    mtime = first.stat().st_mtime_ns

    restarted = time.time()
    code = cmd_benchmark(["--config", str(suite), "--output", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "1 finished job(s) kept, 1 to run" in printed
    assert first.stat().st_mtime_ns == mtime and json.loads(first.read_text()) == before
    after = json.loads(second.read_text())
    assert after["status"] == "ok", after["error"]
    from datetime import datetime

    assert datetime.fromisoformat(after["started_at"]).timestamp() >= int(restarted)
    rows = json.loads((out / "results.json").read_text())
    assert [r["seed"] for r in rows] == [0, 1] and all(r["method"] == "ImageStatsDetector" for r in rows)
    assert all(r["params"] > 0 and r["epochs"] == 1 and r["steps"] > 0 for r in rows)
    readme = (out / "README.md").read_text()
    assert "ImageStatsDetector-tiny" in readme and " ± " in readme  # two seeds: mean ± std

    # a third run re-runs nothing and publishes both exported checkpoints with their measured metrics
    import huggingface_hub
    from hub_server import HubServer

    with HubServer() as server:
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", server.url)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        assert cmd_benchmark(["--config", str(suite), "--output", str(out), "--publish", "org/bench"]) == 0
        assert "2 finished job(s) kept, 0 to run" in capsys.readouterr().out
        assert first.stat().st_mtime_ns == mtime
        for row in rows:
            files = server.files(f"org/bench-ImageStatsDetector-tiny-MiniFakeDetection-s{row['seed']}")
            assert {"config.json", "model.safetensors", "README.md"} <= set(files)
            assert f"{row['metrics']['auroc']:.4f}" in files["README.md"].decode()
        assert not server.unknown


def test_failed_jobs_are_recorded_and_the_report_is_complete(plugins, tmp_path):
    suite = _write_suite(tmp_path / "mixed.yaml", {
        "name": "mixed",
        "tasks": {
            "fake_detection": {
                "data": {"class_path": "MiniFakeDetection", "init_args": {"batch_size": 32}},
                "methods": ["BrokenMethod", {"name": "EdgeEnergy", "init_args": {"scale": "steep"}, "label": "bad"},
                            "EdgeEnergy"],
                "grid": {"data.init_args.generators": [["upsampler"], ["smoother"]],
                         "data.init_args.test_generators": [["upsampler"], ["smoother"]]},
            },
            "copy_detection": {"data": {"class_path": "MiniCopyDetection", "init_args": {"batch_size": 32}},
                               "methods": ["PixelDistance"]},
        },
    })
    out = tmp_path / "report"
    assert cmd_benchmark(["--config", str(suite), "--output", str(out)]) == 1  # some jobs failed
    results = json.loads((out / "results.json").read_text())
    status = {r["id"]: r["status"] for r in results}
    assert len(results) == 10  # 2 labels x 4 grid points, 1 copy-detection job, 1 plugin that fails to import
    failed = [r for r in results if r["status"] == "failed"]
    assert {r["label"] for r in failed} == {"bad", "BrokenMethod"}, status
    assert all(r["label"] != "bad" or "scale" in r["error"] for r in failed)
    assert any("needs a missing library" in r["error"] for r in failed)
    bad = next(r for r in failed if r["label"] == "bad")
    assert (out / "jobs" / bad["id"] / "error.txt").read_text().startswith("Traceback")
    ok = [r for r in results if r["status"] == "ok"]
    assert len(ok) == 5
    for r in ok:
        predictions = (out / "jobs" / r["id"] / "predictions.csv").read_text().splitlines()
        assert len(predictions) > 10
        if r["task"] == "fake_detection":
            assert predictions[0].split(",")[:2] == ["score", "decision"]
            assert {"auroc", "acc", "threshold"} <= set(r["metrics"]) and r["epochs"] == 0
        else:
            assert "true_level" in predictions[0] and 0 <= r["metrics"]["rd"] <= 1

    header = (out / "results.csv").read_text().splitlines()[0].split(",")
    for column in ("task", "method", "variant", "dataset", "seed", "auroc", "acc", "pcc", "rd", "fit_s", "test_s",
                   "peak_rss_mb", "params", "epochs", "steps", "error"):
        assert column in header
    readme = (out / "README.md").read_text()
    assert "## fake_detection" in readme and "## copy_detection" in readme and "## Failed jobs" in readme
    assert readme.startswith("# Benchmark report: mixed")
    assert "**" in readme and "| params | epochs | steps | train size |" in readme

    plots = sorted((out / "plots").glob("*.png"))
    names = " ".join(p.name for p in plots)
    assert "roc_fake_detection" in names and "levels_copy_detection" in names and "cross_fake_detection" in names
    artifacts = sorted((out / "artifacts").glob("*/*.png"))
    assert len(artifacts) == 4  # one per EdgeEnergy job
    for png in [*plots, *artifacts]:
        with Image.open(png) as image:
            image.verify()
            assert image.format == "PNG"
        assert png.relative_to(out).as_posix() in readme
    env = json.loads((out / "environment.json").read_text())
    assert env["packages"]["torch"] and env["packages"]["lightning"] and env["cpu_count"] >= 1


def test_perf_run_all_writes_one_table(tmp_path):
    scripts = tmp_path / "perf"
    scripts.mkdir()
    (scripts / "fast_thing.py").write_text(
        "import argparse\n"
        "from zoo.bench.perf import write_result\n"
        "p = argparse.ArgumentParser(); p.add_argument('--out'); a = p.parse_args()\n"
        "write_result(a.out, 'fast thing', {'images_per_s': 12.0, 'seconds': 3.0}, ratio=2.5, mfu=0.01,\n"
        "             targets={'ratio': 2.0, 'mfu': 0.3, 'seconds_max': 5, 'batch': 64, 'note': 'on CUDA'})\n"
    )
    (scripts / "broken_thing.py").write_text("import sys\nprint('no GPU luck')\nsys.exit(3)\n")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks/perf/run_all.py"), "--scripts-dir", str(scripts),
                           "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # one script failed
    rows = {r["script"]: r for r in json.loads((out / "perf.json").read_text())}
    assert rows["fast_thing.py"]["ratio"] == 2.5 and rows["fast_thing.py"]["met"] is False  # mfu 0.01 < 0.3
    assert rows["broken_thing.py"]["status"] == "failed" and "exit code 3" in rows["broken_thing.py"]["error"]
    from importlib.util import module_from_spec, spec_from_file_location

    spec = spec_from_file_location("run_all", ROOT / "benchmarks/perf/run_all.py")
    run_all = module_from_spec(spec)
    spec.loader.exec_module(run_all)
    result = {"ratio": 2.5, "mfu": 0.5, "figures": {"seconds": 3.0}}
    assert run_all.target_met({**result, "targets": {"ratio": 2.0, "mfu": 0.3, "seconds_max": 5}}) is True
    assert run_all.target_met({**result, "targets": {"seconds_max": 2}}) is False
    assert run_all.target_met({**result, "targets": {"batch": 64, "note": "text"}}) is None
    table = (out / "perf.md").read_text()
    assert "| fast thing | cpu |" in table and "**no**" in table and "failed: exit code 3" in table
