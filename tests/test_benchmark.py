"""The benchmark harness: suites, grids, resumption, failures, third-party plugins, the report, the perf table."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image

from zoo import registry
from zoo.bench.suite import load_suite, parse_suite
from zoo.cli.benchmark import cmd_benchmark
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
MANIFEST = {"zoo.methods": {"EdgeEnergy": {"class": "zoo_bench_fixture:EdgeEnergy"},
                            "PixelDistance": {"class": "zoo_bench_fixture:PixelDistance"},
                            "BrokenMethod": {"class": "zoo_bench_broken:BrokenMethod"}}}


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
    (info / "entry_points.txt").write_text("[zoo.plugins]\nzoo_bench_plugin = zoo_bench_plugin\n")
    (site / "zoo_bench_plugin").mkdir()
    (site / "zoo_bench_plugin" / "__init__.py").write_text("")
    (site / "zoo_bench_plugin" / "zoo_plugin.json").write_text(json.dumps(MANIFEST))
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
    # 'all' and a method listed by name: the named entry replaces that method's 'all' row
    both = parse_suite({"tasks": {"fake_detection": {"data": "MiniFakeDetection", "methods": [
        "all", {"name": "EdgeEnergy", "init_args": {"scale": 5.0}}]}}}, "all.yaml")
    edge = [j for j in both.jobs if j.method == "EdgeEnergy"]
    assert len(edge) == 1 and edge[0].config["model"]["init_args"] == {"scale": 5.0}
    assert {"ImageStatsDetector", "CNNDetector"} <= {j.method for j in both.jobs}
    # a method's own seed argument follows the job's seed, unless the suite fixes it
    seeded = parse_suite({"seeds": [0, 3], "tasks": {"copyright": {"data": "MiniCopyright", "methods": [
        "CGIDM", {"name": "CGIDM", "label": "fixed", "init_args": {"seed": 9}}]}}}, "seeded.yaml")
    assert sorted((j.label, j.seed, j.config["model"]["init_args"]["seed"]) for j in seeded.jobs) == [
        ("CGIDM-tiny", 0, 0), ("CGIDM-tiny", 3, 3), ("fixed", 0, 9), ("fixed", 3, 9)]
    assert "seed" not in job.config["model"]["init_args"]  # EdgeEnergy takes no seed
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
    ({"notes": ["EdgeEnergy is at chance"], "tasks": {"fake_detection": {"data": "MiniFakeDetection"}}},
     "key 'notes' must be a mapping"),
    ({"notes": {"EdgeEnergy": 0.5}, "tasks": {"fake_detection": {"data": "MiniFakeDetection"}}},
     "key 'notes.EdgeEnergy' must be a sentence"),
])
def test_suite_errors_name_the_file_and_key(plugins, tmp_path, change, message):
    path = _write_suite(tmp_path / "bad.yaml", {"name": "bad", **change})
    with pytest.raises(ZooError, match=message) as err:
        load_suite(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("task", [
    {"data": "MiniFakeDetection", "methods": ["EdgeEnergy"], "grid": {"model.class_path": ["zoo_marker.Zen"]}},
    {"data": "MiniFakeDetection", "methods": ["EdgeEnergy"], "grid": {"model": [{"class_path": "zoo_marker.Zen"}]}},
    {"data": "MiniFakeDetection", "methods": ["EdgeEnergy"], "grid": {"data.class_path": ["zoo_marker.Zen"]}},
    {"data": "zoo_marker.Zen", "methods": ["EdgeEnergy"]},
    {"data": {"class_path": "MiniFakeDetection", "init_args": {"x": {"class_path": "zoo_marker.Zen"}}},
     "methods": ["EdgeEnergy"]},
    {"data": "MiniFakeDetection", "methods": [{"name": "EdgeEnergy", "init_args": {"scale": {
        "class_path": "zoo_marker.Zen"}}}]},
    {"data": "MiniFakeDetection", "methods": ["EdgeEnergy"], "trainer": {"callbacks": [
        {"class_path": "zoo_marker.Zen"}]}},
    {"data": "MiniFakeDetection", "methods": ["EdgeEnergy"], "grid": {"trainer.logger": ["zoo_marker.Zen"]}},
])
def test_a_suite_names_registered_classes_only(plugins, tmp_path, monkeypatch, task):
    """Nothing a suite names is imported: its grid, data, init_args and trainer cannot name a class."""
    (tmp_path / "zoo_marker.py").write_text(
        f"open({str(tmp_path / 'imported')!r}, 'w').close()\nclass Zen:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    suite = _write_suite(tmp_path / "evil.yaml", {"name": "evil", "tasks": {"fake_detection": task}})
    with pytest.raises(ZooError, match=f"{re.escape(str(suite))}: key .*(class|registry name|Trainer)"):
        cmd_benchmark(["--config", str(suite), "--output", str(tmp_path / "report")])
    assert not (tmp_path / "imported").exists() and not (tmp_path / "report").exists()
    # a method's own config file may name classes, as a --config file may (its callbacks, here)
    config = tmp_path / "edge.yaml"
    config.write_text(yaml.safe_dump({"model": {"class_path": "EdgeEnergy"}, "trainer": {"callbacks": [
        {"class_path": "lightning.pytorch.callbacks.EarlyStopping", "init_args": {"monitor": "val/auroc"}}]}}))
    (job,) = parse_suite({"tasks": {"fake_detection": {"data": "MiniFakeDetection", "methods": [
        {"config": str(config)}]}}}, "ok.yaml").jobs
    assert job.config["trainer"]["callbacks"][0]["class_path"].endswith("EarlyStopping")


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
    from zoo.data import mini

    mini.ensure("fake_detection")  # built once and cached, so that the killed run is killed inside its jobs
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
    # the wall time counts the job of the killed run too
    total = sum(r["wall_s"] for r in rows) / 60
    assert f"The jobs took {total:.1f} min of wall time in all" in readme

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
            probability, logit = row["metrics"]["threshold"], row["metrics"]["threshold_logit"]
            assert (f"Decision threshold: a probability generated of {probability:.4f} (logit {logit:.4f}"
                    in files["README.md"].decode())
            assert "threshold_logit" not in files["README.md"].decode()
        assert not server.unknown

    # a Hub that cannot be reached, named with credentials: the push fails, the run says so and exits non-zero,
    # and the secret is neither stored nor printed
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://user:s3cret-pw@127.0.0.1:9")
    assert cmd_benchmark(["--config", str(suite), "--output", str(out), "--publish", "org/bench"]) == 1
    printed = " ".join(capsys.readouterr().out.split())  # as one line, whatever the console wrapped
    stored = (out / "results.json").read_text()
    assert "2 checkpoint(s) not published" in printed and '"publish_error"' in stored
    assert "s3cret" not in printed + stored
    assert "s3cret" not in "".join(p.read_text(errors="replace") for p in out.rglob("*") if p.is_file()
                                   and p.suffix in (".json", ".md", ".csv", ".txt"))


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
    # a refused config is stored as one line, its reason, without the parser's usage
    assert "\n" not in bad["error"] and len(bad["error"]) < 500 and "usage:" not in bad["error"], bad["error"]
    assert "expected float, got 'steep'" in bad["error"]
    ok = [r for r in results if r["status"] == "ok"]
    assert len(ok) == 5
    for r in ok:
        predictions = (out / "jobs" / r["id"] / "predictions.csv").read_text().splitlines()
        assert len(predictions) > 10
        if r["task"] == "fake_detection":
            assert predictions[0].split(",")[:2] == ["score", "decision"]
            assert {"auroc", "acc", "threshold"} <= set(r["metrics"]) and r["epochs"] == 0
            # the threshold is a probability, as zoo predict prints it, with its logit in a column of its own
            logit, probability = r["metrics"]["threshold_logit"], r["metrics"]["threshold"]
            assert 0 <= probability <= 1 and probability == pytest.approx(1 / (1 + math.exp(-logit)))
        else:
            assert "true_level" in predictions[0] and 0 <= r["metrics"]["rd"] <= 1

    header = (out / "results.csv").read_text().splitlines()[0].split(",")
    for column in ("task", "method", "variant", "dataset", "seed", "auroc", "acc", "threshold", "threshold_logit",
                   "pcc", "rd", "fit_s", "test_s",
                   "peak_rss_mb", "params", "epochs", "steps", "error"):
        assert column in header
    readme = (out / "README.md").read_text()
    assert "## fake_detection" in readme and "## copy_detection" in readme and "## Failed jobs" in readme
    assert readme.startswith("# Benchmark report: mixed")
    assert "**" in readme and "| params | epochs | steps | labels used |" in readme
    # like for like: the copy-detection method again after the same isotonic map fitted on train
    assert "PixelDistance-tiny · iso(train)" in readme and "## Glossary" in readme and "| `pcc` |" in readme
    with (out / "summary.csv").open() as f:
        summary = list(csv.DictReader(f))
    assert list(summary[0]) == ["task", "method", "setting", "metric", "mean", "std", "ci_low", "ci_high", "seeds",
                                "n_test"]
    chance = [r for r in summary if r["method"] == "chance"]
    assert {r["task"] for r in chance} == {"fake_detection", "copy_detection"}
    assert len({r["setting"] for r in chance if r["task"] == "fake_detection"}) == 4  # one per setting
    auroc = next(r for r in summary if r["method"] == "EdgeEnergy-tiny" and r["metric"] == "auroc")
    assert float(auroc["ci_low"]) < float(auroc["mean"]) < float(auroc["ci_high"]) and int(auroc["n_test"]) > 10
    iso = [r for r in summary if r["method"] == "PixelDistance-tiny · iso(train)"]
    assert {r["metric"] for r in iso} == {"pcc", "rd", "muap", "auroc"}

    plots = sorted((out / "plots").glob("*.png"))
    names = " ".join(p.name for p in plots)
    assert "roc_fake_detection" in names and "levels_copy_detection" in names and "cross_fake_detection" in names
    for png in plots:
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


# ------------------------------------------------------------------------------------------ packaging
def test_every_plugin_is_one_folder_and_one_entry_point_line_and_the_suites_and_configs_ship_inside_zoo():
    """pyproject.toml finds every package itself: a plugin costs its folder and its one zoo.plugins line."""
    import tomllib

    from setuptools import find_namespace_packages

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    tool = project["tool"]["setuptools"]
    assert list(tool["packages"]) == ["find"], "list no packages by hand: [tool.setuptools.packages.find] finds them"
    find = tool["packages"]["find"]
    found = {name for where in find["where"]
             for name in find_namespace_packages(str(ROOT / where), include=find["include"])}
    for init in [*ROOT.glob("zoo/**/*.py"), *ROOT.glob("zoo/**/*.json"), *ROOT.glob("plugins/*/**/*.py")]:
        folder = init.parent.relative_to(ROOT)
        name = ".".join(folder.parts[1:]) if folder.parts[0] == "plugins" else ".".join(folder.parts)
        assert name in found, f"{folder} is not found by [tool.setuptools.packages.find] of pyproject.toml"
    plugins = project["project"]["entry-points"]["zoo.plugins"]
    folders = {path.name for path in (ROOT / "plugins").iterdir() if path.is_dir() and path.name != "__pycache__"}
    assert plugins == {"zoo": "zoo", **{name: name for name in folders}}, "each plugin has one zoo.plugins line"
    for name in ("zoo", *folders):
        assert (ROOT / ("" if name == "zoo" else "plugins") / name / "zoo_plugin.json").is_file(), name
    assert tool["package-dir"] == {"zoo.suites": "benchmarks", "zoo.configs": "configs"}


def test_every_library_the_code_imports_is_declared_and_every_installed_requirement_is_pinned():
    """A module that zoo/ or a plugin imports comes from a distribution in pyproject.toml's dependencies (not only
    through another one's), and constraints.txt pins every distribution the dependencies and the test extra pull in."""
    import ast
    import importlib.metadata as md
    import tomllib

    from packaging.requirements import Requirement

    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {norm(Requirement(r).name) for r in project["dependencies"]}
    imported: set[str] = set()
    for path in [*ROOT.glob("zoo/**/*.py"), *ROOT.glob("plugins/*/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    ours = {"zoo"} | {p.name for p in ROOT.glob("plugins/*")}
    providers = md.packages_distributions()
    undeclared = {m: providers.get(m) for m in imported - set(sys.stdlib_module_names) - ours
                  if not {norm(d) for d in providers.get(m, [])} & declared}
    assert not undeclared, f"imported, but not in pyproject.toml's dependencies: {undeclared}"

    pinned = {norm(line.split("==")[0]) for line in (ROOT / "constraints.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")}
    todo = [Requirement(r) for r in [*project["dependencies"], *project["optional-dependencies"]["test"]]]
    needed: set[str] = set()
    while todo:
        requirement = todo.pop()
        name = norm(requirement.name)
        if name in needed or (requirement.marker and not requirement.marker.evaluate({"extra": ""})):
            continue
        needed.add(name)
        todo += [Requirement(r) for r in md.requires(requirement.name) or []]
    needed -= {"pip", "setuptools", "wheel"}  # what `pip freeze` leaves out, as the file's header says it is made
    assert not needed - pinned, f"installed with the project, but not pinned in constraints.txt: {needed - pinned}"


def test_a_wheel_holds_the_suites_and_every_config_they_name(tmp_path):
    import zipfile

    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md", "zoo", "plugins", "benchmarks", "configs"):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(ROOT / name, source / name, **({"ignore": shutil.ignore_patterns("__pycache__", "*.egg-info", "build")}
                                            if (ROOT / name).is_dir() else {}))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "wheel"), str(source)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    suites = sorted(ROOT.glob("benchmarks/*.yaml"))
    assert {f"zoo/suites/{p.name}" for p in suites} <= names
    assert {"zoo/configs/" + p.relative_to(ROOT / "configs").as_posix() for p in ROOT.glob("configs/**/*.yaml")} <= names
    for suite in suites:  # a config named by a shipped suite sits where the installed suite resolves it
        for config in re.findall(r"config: (configs/\S+\.yaml)", suite.read_text()):
            assert "zoo/" + config in names


def test_shipped_suites_resolve_by_name_from_any_folder(plugins, tmp_path, monkeypatch, capsys):
    from zoo.bench.suite import find_suite, shipped

    monkeypatch.chdir(tmp_path)  # no benchmarks/ or configs/ here
    assert find_suite("mini") == shipped("suites") / "mini.yaml"
    assert find_suite("benchmarks/fake_detection_cross.yaml").name == "fake_detection_cross.yaml"
    with pytest.raises(ZooError, match="shipped suites: .*mini"):
        find_suite("minii")
    # a suite of the user's own, elsewhere, may name the shipped configs
    suite = _write_suite(tmp_path / "mine.yaml", {"tasks": {"fake_detection": {
        "methods": [{"config": "configs/cnn_detector/mini.yaml"}]}}})
    (job,) = load_suite(suite).jobs
    assert job.method == "CNNDetector"
    # --list prints the jobs and runs nothing
    assert cmd_benchmark(["--list", "--config", "mini", "--output", str(tmp_path / "never")]) == 0
    printed = capsys.readouterr().out
    assert "mini:" in printed and "ImageStatsDetector-tiny" in printed and "fit + test" in printed
    assert not (tmp_path / "never").exists() and not (tmp_path / "reports").exists()


# ------------------------------------------------------------------------------------------ one output folder
def test_a_second_run_into_one_folder_is_refused_and_a_killed_runs_lock_is_free(tmp_path, capsys):
    from zoo.bench.runner import HOLDER_NAME, output_lock

    out = tmp_path / "report"
    # a run that holds the folder (the lock module alone: it starts in a second, not the whole zoo)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from zoo.bench.runner import output_lock\n"
        f"with output_lock(Path({str(out)!r})):\n    print('held', flush=True); time.sleep(120)\n")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ZooError, match=f"in use by another zoo benchmark \\(pid {holder.pid} on"):
            cmd_benchmark(["--config", "mini", "--output", str(out), "--tasks", "fake_detection"])
        assert not (out / "jobs").exists()
    finally:
        holder.kill()  # SIGKILL: no clean-up runs, its note stays behind
        holder.wait()
    assert json.loads((out / HOLDER_NAME).read_text())["pid"] == holder.pid
    # the kernel released the killed run's lock: the next run takes the folder, and says from whom
    from rich.console import Console

    with output_lock(out, Console(width=1000)):  # one line, however long the temporary path
        assert json.loads((out / HOLDER_NAME).read_text())["pid"] == os.getpid()
        with pytest.raises(ZooError, match=f"pid {os.getpid()}"), output_lock(out):
            pass
    assert f"took over {out} from pid {holder.pid}, which has ended" in capsys.readouterr().out
    assert not (out / HOLDER_NAME).exists()


def _race_for_the_lock(out: Path, barrier: Any, results: Any) -> None:
    from zoo.bench.runner import output_lock

    barrier.wait()
    try:
        with output_lock(out):
            results.put("won")
            time.sleep(0.3)  # held while the other one tries
    except ZooError:
        results.put("refused")


def test_two_runs_started_at_once_against_a_stale_lock_exactly_one_wins(tmp_path):
    """A killed run's lock left behind, then two runs started at the same moment, 40 times: one wins each time."""
    import multiprocessing
    import socket

    from zoo.bench.runner import HOLDER_NAME, LOCK_NAME

    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    stale = json.dumps({"pid": ended.pid, "host": socket.gethostname(), "started_at": "then"})
    context = multiprocessing.get_context("fork")  # both start in milliseconds, with the zoo imported
    outcomes = []
    for trial in range(40):
        out = tmp_path / f"report{trial}"
        out.mkdir()
        (out / LOCK_NAME).write_text(stale)  # what a killed run leaves
        (out / HOLDER_NAME).write_text(stale)
        barrier, results = context.Barrier(2), context.Queue()
        racers = [context.Process(target=_race_for_the_lock, args=(out, barrier, results)) for _ in range(2)]
        for racer in racers:
            racer.start()
        for racer in racers:
            racer.join(60)
        outcomes.append(sorted(results.get(timeout=10) for _ in racers))
    assert outcomes == [["refused", "won"]] * 40


def test_a_suite_name_cannot_lead_the_report_out_of_reports_and_bad_workers_are_one_line(plugins, tmp_path,
                                                                                          monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "README.md").write_text("mine")
    for name in ("..", ".", ".hidden", "-x"):
        suite = _write_suite(tmp_path / "s.yaml", {"name": name, "tasks": {"fake_detection": {
            "data": "MiniFakeDetection", "methods": ["EdgeEnergy"]}}})
        with pytest.raises(ZooError, match="key 'name' must be a plain name"):
            cmd_benchmark(["--config", str(suite)])
    # a report folder that resolves elsewhere (a link under reports/) is refused too, unless named with --output
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "linked").symlink_to(tmp_path / "elsewhere")
    suite = _write_suite(tmp_path / "linked.yaml", {"name": "linked", "tasks": {"fake_detection": {
        "data": "MiniFakeDetection", "methods": ["EdgeEnergy"]}}})
    with pytest.raises(ZooError, match="outside .*reports; give --output"):
        cmd_benchmark(["--config", str(suite)])
    assert (tmp_path / "README.md").read_text() == "mine" and not any((tmp_path / "elsewhere").iterdir())
    for workers in ("-2", "0"):
        with pytest.raises(ZooError, match=f"^--workers {workers}: give at least 1"):
            cmd_benchmark(["--config", str(suite), "--workers", workers])


def test_an_unwritable_report_folder_is_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ZooError, match=f"cannot write the report folder {blocker / 'report'}"):
        cmd_benchmark(["--config", "mini", "--output", str(blocker / "report"), "--tasks", "copyright"])
    if os.geteuid() != 0:  # root writes through permission bits
        folder = tmp_path / "read-only"
        folder.mkdir(mode=0o555)
        with pytest.raises(ZooError, match="cannot write the report folder .*: Permission denied"):
            cmd_benchmark(["--config", "mini", "--output", str(folder), "--tasks", "copyright"])


def test_file_names_that_are_not_utf8_do_not_fail_a_job(plugins, tmp_path):
    root = tmp_path / "data"
    for split in ("train", "val", "test"):
        for i, source in enumerate(("gen", "real")):
            folder = root / split / source
            folder.mkdir(parents=True)
            for j in range(3):
                Image.new("RGB", (16, 16), (40 * j + 100 * i, 80, 20)).save(folder / f"{j}.png")
    bad = os.fsencode(root / "test" / "gen") + b"/caf\xe9.png"
    Image.new("RGB", (16, 16), (1, 2, 3)).save(os.fsdecode(bad))
    suite = _write_suite(tmp_path / "latin1.yaml", {"tasks": {"fake_detection": {
        "data": {"class_path": "FakeImageFolders", "init_args": {"root": str(root), "generators": ["gen"],
                                                                 "batch_size": 4, "image_size": 16}},
        "methods": ["EdgeEnergy"]}}})
    out = tmp_path / "report"
    assert cmd_benchmark(["--config", str(suite), "--output", str(out)]) == 0
    (result,) = json.loads((out / "results.json").read_text())
    predictions = (out / "jobs" / result["id"] / "predictions.csv").read_text(encoding="utf-8")
    # the undecodable byte is written escaped, so the file stays UTF-8
    assert "caf\\udce9.png" in predictions and len(predictions.splitlines()) == 8


# ------------------------------------------------------------------------------------------ statistics
def test_report_metrics_match_the_tasks_and_intervals_cover_them():
    import numpy as np
    import torch

    from zoo.bench import stats
    from zoo.tasks import get_task
    from zoo.tasks.binary import array_scorer
    from zoo.tasks.copy_detection import isotonic_levels, level_scorer

    rng = np.random.default_rng(3)
    n = 80
    score = np.round(rng.normal(size=n), 1)  # ties on purpose
    label = (rng.random(n) < 0.4).astype(int)
    decision = (score > 0.2).astype(int)
    task = get_task("fake_detection")
    metrics = task.make_metrics()
    task.update(metrics, {"score": torch.tensor(score, dtype=torch.float32), "decision": torch.tensor(decision)},
                {"label": torch.tensor(label)})
    expected = {k: float(v) for k, v in metrics.compute().items()}
    scorer = array_scorer(score, decision, label)
    got = stats.point(scorer, n)
    assert got == pytest.approx({k: expected[k] for k in got}, abs=1e-6)
    true = rng.integers(0, 6, n)
    level = np.clip(true + rng.normal(size=n) * 2, 0, 5).round()
    task = get_task("copy_detection")
    metrics = task.make_metrics()
    task.update(metrics, {"level": torch.tensor(level, dtype=torch.float32)}, {"level": torch.tensor(true)})
    expected = {k: float(v) for k, v in metrics.compute().items()}
    assert stats.point(level_scorer(level, true), n) == pytest.approx(expected, abs=1e-5)
    # the interval holds the estimate, and narrows with four times the test samples
    ci = stats.bootstrap_ci([scorer] * 3, [n] * 3, shared=True)
    assert ci["auroc"][0] < got["auroc"] < ci["auroc"][1]
    big = array_scorer(np.tile(score, 4), np.tile(decision, 4), np.tile(label, 4))
    wide = stats.bootstrap_ci([big] * 3, [4 * n] * 3, shared=True)["auroc"]
    assert wide[1] - wide[0] < 0.7 * (ci["auroc"][1] - ci["auroc"][0])
    # the isotonic map fitted on train is monotone, in [0, 5], and reproduces a monotone relation
    mapped = isotonic_levels([0.1, 0.2, 0.3, 0.9], [0, 1, 4, 5], [0.0, 0.25, 0.95])
    assert list(mapped) == pytest.approx([0.0, 2.5, 5.0])


def test_bold_marks_one_best_value_above_chance_only():
    from dataclasses import replace

    from zoo.bench.report.tables import CHANCE, _best
    from zoo.tasks import get_task

    # the task says which metric is lower-better and on how few negatives a metric is unreliable
    task = replace(get_task("fake_detection"), lower_is_better=frozenset({"rd"}))

    def row(label, kind="method", negatives=500, **metrics):
        return {"setting": "s", "label": label, "kind": kind, "negatives": negatives,
                "metrics": {k: (v, None, None, None) for k, v in metrics.items()}}

    rows = [row("a", acc=0.667, auroc=0.81, rd=0.2, tpr_at_1fpr=0.3), row("b", acc=0.6, auroc=0.81, rd=0.1,
                                                                           tpr_at_1fpr=0.2),
            row(CHANCE, kind=CHANCE, acc=0.667, auroc=0.5, tpr_at_1fpr=0.01)]
    best = _best(rows, ["acc", "auroc", "rd", "tpr_at_1fpr"], task)
    # acc equal to the majority rate and a tie on auroc are not bold; the lower rd and the higher TPR are
    assert best == {("s", "b", "rd"), ("s", "a", "tpr_at_1fpr")}
    for r in rows:
        r["negatives"] = 40  # too few negatives for a TPR at 1% FPR
    assert ("s", "a", "tpr_at_1fpr") not in _best(rows, ["tpr_at_1fpr"], task)


# ------------------------------------------------------------------------------------------ report
def _fake_job(out: Path, job_id: str, task: str, label: str, rows: list[dict], seed: int = 0) -> dict:
    """A finished job as the runner leaves it: its predictions file and its result entry."""
    folder = out / "jobs" / job_id
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "predictions.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return {"id": job_id, "task": task, "method": label.split("-")[0], "label": label, "variant": "tiny",
            "dataset": "Synthetic", "setting": "Synthetic", "seed": seed, "status": "ok", "metrics": {},
            "data_args": {}}


def test_rows_at_chance_are_listed_with_the_suites_note(tmp_path, monkeypatch, capsys):
    import numpy as np

    from zoo.bench import runner, stats
    from zoo.bench.report import AT_CHANCE, NO_NOTE
    from zoo.tasks.binary import array_scorer

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 30)
    out = tmp_path / "report"
    results = []
    for label, score in (("Good-tiny", labels + rng.normal(0, 0.3, 60)), ("Coin-tiny", rng.normal(size=60)),
                         ("Noise-tiny", rng.normal(size=60))):
        rows = [{"score": f"{v:.4f}", "decision": int(v > 0.5), "id": f"img{i}.png", "true_label": int(y)}
                for i, (v, y) in enumerate(zip(score, labels, strict=True))]
        results.append(_fake_job(out, f"fake_detection--{label}-s0", "fake_detection", label, rows))
        # the metrics the job logged: the same as the predictions give
        results[-1]["metrics"] = stats.point(array_scorer(score, score > 0.5, labels), len(labels))
    # the suite's notes reach the report: the jobs' results stand in for a run
    suite = _write_suite(tmp_path / "synthetic.yaml", {
        "name": "synthetic", "tasks": {"fake_detection": {"data": "MiniFakeDetection", "methods": ["CNNDetector"]}},
        "notes": {"Noise": "the score is drawn at random, by construction.", "Good-tiny": "never shown"}})
    monkeypatch.setattr(runner, "run_suite", lambda *args, **kwargs: results)
    assert cmd_benchmark(["--config", str(suite), "--output", str(out)]) == 0
    readme = (out / "README.md").read_text()
    section = readme.split("## At chance", 1)[1].split("\n## ", 1)[0]
    flagged = {line.split(" | ")[1]: line for line in section.splitlines() if line.startswith("| fake_detection")}
    assert set(flagged) == {"Coin-tiny", "Noise-tiny"}  # the separating score is not at chance
    assert flagged["Noise-tiny"].endswith("| the score is drawn at random, by construction. |")  # by method name
    assert flagged["Coin-tiny"].endswith(f"| {NO_NOTE} |")
    with (out / "summary.csv").open() as f:
        auroc = {r["method"]: r for r in csv.DictReader(f) if r["metric"] == "auroc"}
    for label, line in flagged.items():
        row = auroc[label]
        assert float(row["ci_low"]) <= 0.5 <= float(row["ci_high"])
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[3:9] == ["`auroc`", f"{float(row['mean']):.3f}",
                              f"[{float(row['ci_low']):.2f}, {float(row['ci_high']):.2f}]", "0.5", "1", "60"]
    assert float(auroc["Good-tiny"]["ci_low"]) > 0.5
    # the tables mark the same rows: in the README's primary cell, on the terminal beside the interval
    marked = [line.split(" | ")[0].strip("| ") for line in readme.splitlines() if f" {AT_CHANCE} |" in line]
    assert sorted(marked) == ["Coin-tiny", "Noise-tiny"]
    terminal = capsys.readouterr().out
    assert sorted(line.split()[1] for line in terminal.splitlines() if line.rstrip(" │").endswith(AT_CHANCE)) == [
        "Coin-tiny", "Noise-tiny"]
    assert "the auroc interval includes chance" in terminal


def test_a_job_with_a_picture_per_image_gets_one_labelled_contact_sheet(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from zoo.bench.report import SHEET_ROWS, write_report

    out = tmp_path / "report"
    pictures = out / "jobs" / "copyright--CGIDM-tiny-s0" / "lightning_logs" / "version_0" / "artifacts"
    pictures.mkdir(parents=True)
    rows = []
    for i in range(SHEET_ROWS + 6):
        member = i % 2
        strip = pictures / f"test-{'member' if member else 'holdout'}-{i:02d}.png"
        Image.new("RGB", (3 * 16 + 4, 18), (8 * i, 100, 200 * member)).save(strip)
        rows.append({"score": f"{0.01 * i if member else -0.01 * i:.4f}", "decision": member, "artifact": str(strip),
                     "id": f"/data/test/{'member' if member else 'holdout'}/{i:02d}.png", "true_label": member,
                     "source": "member" if member else "holdout"})
    results = [_fake_job(out, "copyright--CGIDM-tiny-s0", "copyright", "CGIDM-tiny", rows),
               _fake_job(out, "copyright--Other-tiny-s0", "copyright", "Other-tiny",  # predictions without pictures
                         [{k: v for k, v in r.items() if k != "artifact"} for r in rows])]
    drawn = []
    save = Figure.savefig

    def record(fig, path, *args, **kwargs):
        drawn.append((Path(path).name, fig.get_suptitle(), [t.get_text() for ax in fig.axes for t in ax.texts],
                      sum(bool(ax.images) for ax in fig.axes)))
        return save(fig, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record)
    write_report(results, out, "pictures")
    sheets = sorted((out / "sheets").glob("*.png"))
    assert [p.name for p in sheets] == ["sheet_copyright--CGIDM-tiny-s0.png"]  # one sheet, for the job with pictures
    with Image.open(sheets[0]) as image:
        image.verify()
        assert image.format == "PNG"
    assert "## Contact sheets" in (out / "README.md").read_text()
    assert "sheets/sheet_copyright--CGIDM-tiny-s0.png" in (out / "README.md").read_text()
    (name, title, texts, images), = [d for d in drawn if d[0].startswith("sheet_")]
    assert images == SHEET_ROWS and len(texts) == SHEET_ROWS
    assert "CGIDM-tiny" in title and f"{SHEET_ROWS} of {SHEET_ROWS + 6} images" in title
    assert "original / masked / recovered" in title  # the task's own words for the picture
    scores = [float(t.split("score ")[1].split(",")[0]) for t in texts]
    assert scores == sorted(scores, reverse=True) and scores[0] == 0.29 and scores[-1] == -0.28
    assert texts[0].splitlines() == ["#1 29.png", "member", "score 0.29, decided member"]
    assert texts[-1].splitlines() == [f"#{SHEET_ROWS + 6} 28.png", "hold-out", "score -0.28, decided hold-out"]
    assert len(list(pictures.glob("*.png"))) == SHEET_ROWS + 6  # the job keeps its pictures


def test_each_negative_source_gets_its_own_interval(tmp_path):
    """Attribution's per-source rows: the sibling that the score separates, and one it cannot, with intervals."""
    import numpy as np

    from zoo.bench import stats
    from zoo.bench.report import write_report
    from zoo.tasks.binary import array_scorer

    rng = np.random.default_rng(1)
    out = tmp_path / "report"
    sources = ["generated"] * 40 + ["sibling"] * 40 + ["lookalike"] * 40
    labels = np.array([1] * 40 + [0] * 80)
    score = np.concatenate([rng.normal(2, 1, 40), rng.normal(0, 1, 40), rng.normal(2, 1, 40)])
    rows = [{"score": f"{v:.4f}", "decision": int(v > 1), "id": f"{s}{i}.png", "true_label": int(y), "source": s}
            for i, (v, y, s) in enumerate(zip(score, labels, sources, strict=True))]
    result = _fake_job(out, "attribution--Inv-tiny-s0", "attribution", "Inv-tiny", rows)
    result["metrics"] = stats.point(array_scorer(score, score > 1, labels), len(labels))
    for source in ("sibling", "lookalike"):
        keep = (labels == 1) | (np.array(sources) == source)
        logged = stats.point(array_scorer(score[keep], score[keep] > 1, labels[keep]), int(keep.sum()))
        result["metrics"].update({f"{source}/auroc": logged["auroc"], f"{source}/acc": logged["acc"],
                                  f"{source}/auroc_raw": logged["auroc"]})
    write_report([result], out, "synthetic")
    with (out / "summary.csv").open() as f:
        summary = {r["metric"]: r for r in csv.DictReader(f)}
    assert float(summary["sibling/auroc"]["ci_low"]) > 0.5  # separated, and the interval says so
    assert float(summary["lookalike/auroc"]["ci_low"]) <= 0.5 <= float(summary["lookalike/auroc"]["ci_high"])
    assert summary["sibling/acc"]["ci_low"] and not summary["sibling/auroc_raw"]["ci_low"]  # not recomputable
    readme = (out / "README.md").read_text()
    sibling = next(line for line in readme.splitlines() if line.startswith("| Inv-tiny | sibling"))
    assert f"[{float(summary['sibling/auroc']['ci_low']):.2f}, {float(summary['sibling/auroc']['ci_high']):.2f}]" in sibling


def test_a_refused_or_failed_job_stores_one_line_without_credentials():
    from zoo.bench.runner import _error_text

    assert _error_text(RuntimeError("first line\nsecond line")) == "RuntimeError: first line ..."
    text = _error_text(OSError("cannot reach http://user:s3cret@hub.example/api?token=abc"))
    assert "s3cret" not in text and "abc" not in text and "http://***@hub.example" in text


def test_a_config_with_early_stopping_is_benchmarked_at_the_epoch_early_stopping_judged_best(tmp_path):
    """``configs/cnn_detector/resnet50.yaml`` (made tiny: the tiny variant's encoder on the mini set, a few short
    epochs) keeps its monitored ModelCheckpoint in a benchmark job: the checkpoint is written into the job folder,
    and the export that is tested holds the best epoch's weights, as ``zoo fit`` exports them."""
    import torch
    from safetensors.torch import load_file

    from zoo.bench.runner import run_job
    from zoo.checkpoint import read_weights_only

    tiny = {"encoder": "timm:test_resnet", "pretrained": False, "image_size": 64, "augment": False,
            # the rate rises a thousandfold over the run, so that the last epochs are worse than the best
            "min_lr_ratio": 1000}
    raw = {"name": "best", "seeds": [0],
           "trainer": {"accelerator": "cpu", "max_epochs": 5, "limit_train_batches": 3, "limit_val_batches": 3},
           "tasks": {"fake_detection": {
               "data": {"class_path": "MiniFakeDetection",
                        "init_args": {"generators": ["upsampler"], "test_generators": ["smoother"]}},
               "methods": [{"config": str(ROOT / "configs/cnn_detector/resnet50.yaml"), "init_args": tiny}]}}}
    (job,) = parse_suite(raw, "test").jobs
    assert job.config["trainer"]["enable_checkpointing"] is True
    result = run_job(job, tmp_path / job.id)
    assert result["status"] == "ok", result["error"]
    (checkpoint,) = (tmp_path / job.id).glob("lightning_logs/version_0/checkpoints/*.ckpt")
    state = read_weights_only(checkpoint)
    assert state["epoch"] < result["epochs"] - 1, "the run must end past its best epoch to tell them apart"
    exported = load_file(str(tmp_path / job.id / result["export"] / "model.safetensors"))
    assert exported.keys() <= state["state_dict"].keys()
    assert all(torch.equal(exported[k], state["state_dict"][k]) for k in exported)
    # a config without a ModelCheckpoint keeps the harness's default: no .ckpt, the export is the last epoch
    plain = {**raw, "tasks": {"fake_detection": {**raw["tasks"]["fake_detection"],
                                                 "methods": [{"config": str(ROOT / "configs/cnn_detector/mini.yaml")}]}}}
    (job,) = parse_suite(plain, "test").jobs
    assert job.config["trainer"]["enable_checkpointing"] is False
