"""``zoo embed`` -> ``zoo index`` -> ``zoo match`` on mini data, DDP sharding, resume and bad input."""

from __future__ import annotations

import io
import json
import os
import runpy
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import zoo.gallery as gallery
from zoo import cli, registry
from zoo.data import mini
from zoo.errors import ZooError

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
METHOD = "GalleryFixtureMethod"
ENTRY = registry.Entry(METHOD, "gallery_fixture_method:GalleryFixtureMethod", "tests")
FAST = ["--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false"]


@pytest.fixture(scope="module")
def mini_gallery(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A gallery of photo regions, and two generators: one replicates gallery regions, one does not."""
    root = tmp_path_factory.mktemp("gallery-data")
    rng = np.random.default_rng(0)
    photos = {name: mini.photo(name) for name in mini.PHOTOS}
    train = {name: mini.band(image, "train") for name, image in photos.items()}
    test = {name: mini.band(image, "test") for name, image in photos.items()}
    (root / "gallery" / "sub").mkdir(parents=True)
    (root / "copier").mkdir()
    (root / "styler").mkdir()
    boxes = []
    for i in range(60):
        name = list(mini.PHOTOS)[i % len(mini.PHOTOS)]
        box = mini.random_box(train[name], rng)
        boxes.append((name, box))
        folder = root / "gallery" / ("sub" if i % 2 else "")
        mini.square(train[name], box).save(folder / f"g{i:03d}_{name}.png")
    # the copier replicates gallery regions down the level ladder: mostly total or near-total copies
    for i, level in enumerate([5, 5, 5, 4, 4, 4, 3, 2, 1, 0] * 2):
        name, box = boxes[i]
        mini.replicate(level, train, name, box, rng).save(root / "copier" / f"c{i:03d}_L{level}.png")
    # the styler applies the stand-in generators to regions of the test band, which the gallery lacks
    for i in range(20):
        name = list(mini.PHOTOS)[i % len(mini.PHOTOS)]
        region = mini.square(test[name], mini.random_box(test[name], rng))
        generator = list(mini.GENERATORS)[i % 2]
        mini.GENERATORS[generator](region, rng).save(root / "styler" / f"s{i:03d}_{generator}.png")
    return {"root": root, "gallery": root / "gallery", "copier": root / "copier", "styler": root / "styler"}


@pytest.fixture(autouse=True)
def fixture_method_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    """``GalleryFixtureMethod`` registered, as an installed plugin's method would be."""
    monkeypatch.setitem(registry.methods.entries, METHOD, ENTRY)


def _zoo(*args: str) -> int:
    return cli.main(list(args))


def test_embed_index_match_mini_suite(mini_gallery: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "embedded"
    assert _zoo("embed", "--gallery", str(mini_gallery["gallery"]), "--output", str(out), "--model", METHOD,
                "--variant", "tiny", "--shard_size", "16", "--batch_size", "8", *FAST) == 0
    manifest = json.loads((out / "gallery.json").read_text())
    assert manifest["complete"] and manifest["count"] == 60 and manifest["num_shards"] == 4
    ids = [i for _, shard_ids, _ in gallery.iter_shards(out, manifest) for i in shard_ids]
    assert len(ids) == len(set(ids)) == 60 and "sub/g001_camera" in ids

    assert _zoo("index", "--gallery", str(out), "--index_type", "flat") == 0
    report_dir = tmp_path / "report"
    assert _zoo("replication-ratio", "--gallery", str(out), "--generated", f"copier={mini_gallery['copier']}",
                f"styler={mini_gallery['styler']}", "--output", str(report_dir), "--k", "5",
                "--threshold", "3", *FAST) == 0
    report = json.loads((report_dir / "report.json").read_text())["generators"]
    copier, styler = report["copier"], report["styler"]
    assert copier["count"] == styler["count"] == 20
    assert sum(copier["level_histogram"]) == 20
    lo, hi = copier["ci"]
    assert lo <= copier["replication_ratio"] <= hi and hi > lo
    # the copier's total copies are found in the gallery; the styler's images are not there
    assert copier["replication_ratio"] > styler["replication_ratio"] + 0.2
    for figure in ("replication_ratio.png", "level_histogram.png", "contact_copier.png", "contact_styler.png"):
        assert (report_dir / figure).stat().st_size > 1000
    rows = (report_dir / "matches.csv").read_text().splitlines()
    assert len(rows) == 41
    # each level-5 copy (a JPEG round trip of a gallery region) is matched to its own source region
    for row in rows[1:]:
        generator, query, match_id, *_ = row.split(",")
        if generator == "copier" and "_L5" in query:
            assert match_id.split("/")[-1].startswith(f"g{int(query[1:4]):03d}")


def test_ivfpq_index_and_query_embeddings_reused(mini_gallery: dict[str, Path], tmp_path: Path) -> None:
    method = gallery.load_method(METHOD, "tiny")
    trainer = {"accelerator": "cpu", "enable_progress_bar": False}
    out = gallery.embed(mini_gallery["gallery"], tmp_path / "g", method, shard_size=25, batch_size=16,
                        dtype="float32", trainer=trainer)
    # fast-scan PQ; more probes asked than there are lists (fast-scan then returns wrong neighbours)
    gallery.build_index(out, "ivfpq", nlist=2, pq_m=8, pq_bits=4, train_size=60, nprobe=16)
    info = json.loads((out / "index.json").read_text())
    assert info["type"] == "ivfpq" and info["count"] == 60 and info["nlist"] == 2 and info["nprobe"] == 2
    queries = gallery.embed(mini_gallery["copier"], tmp_path / "q", method, shard_size=25, dtype="float32",
                            trainer=trainer)
    report = gallery.match(out, {"copier": queries}, tmp_path / "r", k=4, nprobe=8, trainer=trainer)
    assert report["generators"]["copier"]["replication_ratio"] > 0.3


def test_resume_skips_complete_shards_and_redoes_corrupt(mini_gallery: dict[str, Path], tmp_path: Path) -> None:
    method = gallery.load_method(METHOD, "tiny")
    trainer = {"accelerator": "cpu", "enable_progress_bar": False}
    out = gallery.embed(mini_gallery["gallery"], tmp_path / "g", method, shard_size=16, trainer=trainer)
    shard0, shard2 = out / "shard-00000.safetensors", out / "shard-00002.safetensors"
    before = shard0.stat().st_mtime_ns
    original = shard2.read_bytes()
    shard2.write_bytes(original[:-8] + b"garbage!")  # damaged on disk
    with pytest.raises(ZooError, match="shard-00002.safetensors is corrupt"):
        gallery.build_index(out)
    (out / "shard-00001.json").unlink()  # a job killed before the manifest of shard 1
    with pytest.raises(ZooError, match="shard-00001.safetensors: missing or unfinished"):
        gallery.build_index(out)
    gallery.embed(mini_gallery["gallery"], tmp_path / "g", method, shard_size=16, trainer=trainer)
    assert shard0.stat().st_mtime_ns == before  # complete shards are not embedded again
    assert (out / "shard-00001.json").is_file() and shard2.read_bytes() == original
    gallery.build_index(out)
    with pytest.raises(ZooError, match="another run"):
        gallery.embed(mini_gallery["gallery"], tmp_path / "g", method, shard_size=8, trainer=trainer)


def _gallery_ids_and_vectors(out: Path) -> dict[str, torch.Tensor]:
    manifest = json.loads((out / "gallery.json").read_text())
    found: dict[str, torch.Tensor] = {}
    for _, ids, emb in gallery.iter_shards(out, manifest):
        for id_, vector in zip(ids, emb, strict=True):
            assert id_ not in found, f"id {id_} written twice"
            found[id_] = vector
    return found


def test_ddp_two_cpu_processes_equal_single_process(mini_gallery: dict[str, Path], tmp_path: Path) -> None:
    # the launcher re-runs this script for rank 1, as it would re-run the `zoo` console script
    script = tmp_path / "zoo_main.py"
    script.write_text(
        "import sys\nfrom zoo import registry\nfrom zoo.cli import main\n"
        f"registry.methods.entries[{METHOD!r}] = registry.{ENTRY!r}\nsys.exit(main())\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    common = ["embed", "--gallery", str(mini_gallery["gallery"]), "--model", METHOD, "--variant", "tiny",
              "--shard_size", "7", "--batch_size", "4", "--dtype", "float32", *FAST]
    ddp = subprocess.run([sys.executable, str(script), *common, "--output", str(tmp_path / "ddp"),
                          "--trainer.devices", "2", "--trainer.strategy", "ddp"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "distributed_backend=gloo" in ddp.stderr + ddp.stdout or "GLOBAL_RANK: 1" in ddp.stderr + ddp.stdout
    single = gallery.embed(mini_gallery["gallery"], tmp_path / "single", gallery.load_method(METHOD, "tiny"),
                           shard_size=7, batch_size=4, dtype="float32",
                           trainer={"accelerator": "cpu", "enable_progress_bar": False})
    a, b = _gallery_ids_and_vectors(tmp_path / "ddp"), _gallery_ids_and_vectors(single)
    assert len(a) == 60 and sorted(a) == sorted(b)
    for id_ in a:
        torch.testing.assert_close(a[id_], b[id_], atol=1e-5, rtol=1e-5)


def _png(color: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (color, 0, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


def _noise_png(seed: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_webdataset_and_parquet_galleries(tmp_path: Path) -> None:
    import pandas as pd

    with tarfile.open(tmp_path / "part-0.tar", "w") as tar:
        for i in range(5):
            for suffix, data in ((".png", _png(40 * i)), (".txt", b"caption")):
                info = tarfile.TarInfo(f"k{i:02d}{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    catalog = gallery.Catalog.scan(tmp_path / "part-0.tar")
    assert catalog.ids == [f"k{i:02d}" for i in range(5)]
    assert gallery.ImageReader(catalog).load(3).getpixel((0, 0)) == (120, 0, 0)

    frame = pd.DataFrame({"key": [f"p{i}" for i in range(6)], "jpg": [{"bytes": _png(i), "path": ""} for i in range(6)]})
    frame.to_parquet(tmp_path / "shards.parquet", row_group_size=4)
    catalog = gallery.Catalog.scan(tmp_path / "shards.parquet", id_column="key", image_column="jpg")
    assert len(catalog) == 6 and gallery.ImageReader(catalog).load(5).getpixel((0, 0)) == (5, 0, 0)
    with pytest.raises(ZooError, match="no column 'image'"):
        gallery.Catalog.scan(tmp_path / "shards.parquet", id_column="key")


def test_bad_input_is_named(mini_gallery: dict[str, Path], tmp_path: Path) -> None:
    method = gallery.load_method(METHOD, "tiny")
    trainer = {"accelerator": "cpu", "enable_progress_bar": False}
    dup = tmp_path / "dup"
    (dup / "a").mkdir(parents=True)
    (dup / "a" / "x.png").write_bytes(_png(1))
    (dup / "a" / "x.jpg").write_bytes(_png(2))
    with pytest.raises(ZooError, match="duplicate id 'a/x'"):
        gallery.Catalog.scan(dup)

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "fine.png").write_bytes(_png(3))
    (broken / "bad.png").write_bytes(b"not an image at all")
    with pytest.raises(ZooError, match="bad.png"):
        gallery.embed(broken, tmp_path / "e", method, trainer=trainer)

    (tmp_path / "cut.tar").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ZooError, match="cut.tar"):
        gallery.Catalog.scan(tmp_path / "cut.tar")

    out = gallery.embed(mini_gallery["gallery"], tmp_path / "g", method, trainer=trainer)
    gallery.build_index(out)
    other = gallery.embed(mini_gallery["styler"], tmp_path / "wide", gallery.load_method(METHOD, "tiny", {"dim": 48}),
                          trainer=trainer)
    with pytest.raises(ZooError, match="other weights"):
        gallery.match(out, {"wide": other}, tmp_path / "r")
    manifest = json.loads((other / "gallery.json").read_text())
    manifest["model_sha256"] = json.loads((out / "gallery.json").read_text())["model_sha256"]
    (other / "gallery.json").write_text(json.dumps(manifest))
    with pytest.raises(ZooError, match="dimension 48.*has 32"):
        gallery.match(out, {"wide": other}, tmp_path / "r")
    assert _zoo("match", "--gallery", str(out), "--generated", "nameless", "--output", str(tmp_path / "r")) == 2


def test_only_a_method_of_the_retrieval_protocol_embeds_a_gallery() -> None:
    from zoo.gallery.methods import Retrieval

    assert isinstance(gallery.load_method(METHOD, "tiny"), Retrieval)
    with pytest.raises(ZooError, match=r"^CNNDetector: CNNDetector has no embed\(\) and pair_from_embeddings\(\): "
                                       "gallery search needs a copy-detection method with descriptors"):
        gallery.load_method("CNNDetector", "tiny")


def test_scale_benchmark_small(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import faiss

    result = tmp_path / "scale.json"
    script = ROOT / "benchmarks" / "perf" / "gallery_scale.py"
    monkeypatch.setattr(sys, "argv", [
        str(script), "--gallery", "3000", "--queries", "200", "--dim", "64", "--latent", "8", "--clusters", "50",
        "--shard_size", "1000", "--nlist", "8", "--pq_m", "32", "--recall_queries", "100", "--threads", "1",
        "--embed_images", "4", "--embed_image_size", "64", "--embed_model", METHOD, "--embed_variant", "tiny",
        "--embed_args", "{}", "--embed_batch", "2", "--embed_workers", "0", "--workdir", str(tmp_path / "w"),
        "--out", str(result),
    ])
    threads, faiss_threads = torch.get_num_threads(), faiss.omp_get_max_threads()
    try:  # in this process: a subprocess would spend most of its time importing torch
        runpy.run_path(str(script), run_name="__main__")
    finally:
        torch.set_num_threads(threads)
        faiss.omp_set_num_threads(faiss_threads)
    figures = json.loads(result.read_text())["figures"]
    assert figures["gallery"] == 3000 and figures["index"] == "IVF8,PQ32x4fsr" and figures["nprobe"] == 8
    assert figures["index_seconds"] > 0 and figures["search_seconds"] > 0 and figures["peak_rss_gb_indexing"] > 0
    recall = figures["recall"]
    assert set(recall) == {"clustered", "near-dup@0.1", "near-dup@0.3", "near-dup@0.6"}
    for name, found in recall.items():
        assert 0.0 <= found["recall@1"] <= found["recall@10"] <= 1.0, name
    # a near-duplicate's nearest neighbour is its source, which the index finds among its 10 candidates
    assert recall["near-dup@0.1"]["recall@10"] >= 0.95
    assert recall["near-dup@0.1"]["recall@1"] > recall["clustered"]["recall@1"]
    embed = figures["embed"]
    assert embed["images"] == 4 and embed["zoo_embed_seconds_workers0"] > 0 < embed["plain_forward_seconds"]
    assert "zoo_overhead_workers0" in embed


def test_gallery_configs_parse(capsys: pytest.CaptureFixture[str]) -> None:
    # configs/gallery/<command>.yaml is a config of `zoo <command>`
    for command, name in (("embed", "embed"), ("index", "index"), ("match", "match"), ("embed", "cpu_example")):
        config = ROOT / "configs" / "gallery" / f"{name}.yaml"
        with pytest.raises(SystemExit) as exit_info:
            _zoo(command, "--config", str(config), "--print_config")
        assert exit_info.value.code == 0, command
        printed = yaml.safe_load(capsys.readouterr().out)
        assert printed["gallery"] == yaml.safe_load(config.read_text())["gallery"]
        if name == "embed":
            assert printed["trainer"]["strategy"] == "ddp" and printed["model"] == "PDFEmbedding"
        if name == "cpu_example":
            assert printed["trainer"]["accelerator"] == "cpu" and printed["model"].startswith("runs/cpu_desc/")


def _tiny_embedded(mini_gallery: dict[str, Path], out: Path) -> Path:
    """The mini gallery embedded by the fixture method and indexed exactly."""
    out = gallery.embed(mini_gallery["gallery"], out, gallery.load_method(METHOD, "tiny"),
                        trainer={"accelerator": "cpu", "enable_progress_bar": False})
    gallery.build_index(out, "flat")
    return out


def test_poisoned_gallery_runs_no_code(mini_gallery: dict[str, Path], tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "pwned"
    (tmp_path / "poison.py").write_text(
        f"from pathlib import Path\n\ndef make(*args, **kwargs):\n    Path({str(marker)!r}).write_text('x')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    out = _tiny_embedded(mini_gallery, tmp_path / "g")
    manifest = json.loads((out / "gallery.json").read_text())
    config_path = out / "model" / "config.json"
    config = json.loads(config_path.read_text())
    popen = {"class_path": "subprocess.Popen", "init_args": {"args": f"touch {marker}", "shell": True}}
    poisons = {
        # the manifest names a function to call; the model folder names a method that is not registered
        "class_path": ({**manifest, "class_path": "poison.make"}, {**config, "name": "make"}, "unknown method 'make'"),
        # a nested class_path inside an argument the constructor does accept
        "nested": (manifest, {**config, "init_args": {"dim": 32, "seed": popen}}, "may not name code"),
        "unknown argument": (manifest, {**config, "init_args": {"dim": 32, "x": popen}}, "'x' is not an argument"),
    }
    for what, (poisoned_manifest, poisoned_config, message) in poisons.items():
        (out / "gallery.json").write_text(json.dumps(poisoned_manifest))
        config_path.write_text(json.dumps(poisoned_config))
        assert _zoo("match", "--gallery", str(out), "--generated", f"c={mini_gallery['copier']}",
                    "--output", str(tmp_path / "r"), *FAST) == 2, what
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err and str(out / "model") in err, (what, err)
        assert not marker.exists(), what


def test_corrupt_manifests_are_named(mini_gallery: dict[str, Path], tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = _tiny_embedded(mini_gallery, tmp_path / "g")
    good = (out / "gallery.json").read_text()
    for corrupt, message in (('{"count": 60, "shard_si', "is corrupt"), ("[1, 2]", "JSON object"),
                             (good.replace('"count": 60', '"count": "60"'), "'count' should be of type int")):
        (out / "gallery.json").write_text(corrupt)
        assert _zoo("match", "--gallery", str(out), "--generated", f"c={mini_gallery['copier']}",
                    "--output", str(tmp_path / "r"), *FAST) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "gallery.json" in err and message in err, err
    (out / "gallery.json").write_text('{"ids_sha256": ')  # a killed run, then `zoo embed` again
    assert _zoo("embed", "--gallery", str(mini_gallery["gallery"]), "--output", str(out), "--model", METHOD,
                "--variant", "tiny", *FAST) == 2
    assert "gallery.json" in capsys.readouterr().err
    (out / "gallery.json").write_text(good)
    (out / "index.json").write_text("{")
    with pytest.raises(ZooError, match="index.json .* is corrupt"):
        gallery.match(out, {"c": mini_gallery["copier"]}, tmp_path / "r")


def test_unwritable_output_is_named(mini_gallery: dict[str, Path], tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert _zoo("embed", "--gallery", str(mini_gallery["styler"]), "--output", str(blocker / "out"),
                "--model", METHOD, "--variant", "tiny", *FAST) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--output {blocker / 'out'} cannot be written" in err
    if os.geteuid() != 0:  # root writes through permission bits
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        with pytest.raises(ZooError, match="cannot be written: Permission denied"):
            gallery.embed(mini_gallery["styler"], locked, gallery.load_method(METHOD, "tiny"))


def test_undecodable_names_broken_links_and_bad_ids(tmp_path: Path) -> None:
    import pandas as pd

    folder = tmp_path / "names"
    folder.mkdir()
    (folder / "plain.png").write_bytes(_noise_png(1))
    with open(os.path.join(os.fsencode(folder), b"caf\xe9.png"), "wb") as handle:  # latin-1, not UTF-8
        handle.write(_noise_png(2))
    out = gallery.embed(folder, tmp_path / "e", gallery.load_method(METHOD, "tiny"),
                        trainer={"accelerator": "cpu", "enable_progress_bar": False})
    gallery.build_index(out)
    assert sorted(_gallery_ids_and_vectors(out)) == ["caf\\xe9", "plain"]
    report = gallery.match(out, {"self": folder}, tmp_path / "r", k=2,
                           trainer={"accelerator": "cpu", "enable_progress_bar": False})
    assert report["generators"]["self"]["replication_ratio"] == 1.0  # each image finds itself
    assert "caf\\xe9,caf\\xe9" in (tmp_path / "r" / "matches.csv").read_text()

    (folder / "gone.png").symlink_to(folder / "nowhere.png")
    (folder / "loop.jpg").symlink_to(folder / "loop.jpg")
    (folder / "again").symlink_to(folder)  # a folder loop
    with pytest.raises(ZooError, match=r"3 entries cannot be read .*again.*gone.png.*loop.jpg"):
        gallery.Catalog.scan(folder)

    for ids, message in ((["a", None, "c"], "row group 0 row 1: the id .* is empty"),
                         (["a", "b", "a"], "duplicate id 'a'")):
        shard = tmp_path / f"shard-{len(message)}.parquet"
        pd.DataFrame({"id": ids, "image": [_png(i) for i in range(3)]}).to_parquet(shard)
        with pytest.raises(ZooError, match=message):
            gallery.Catalog.scan(shard)


def test_bad_image_in_a_worker_is_one_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "fine.png").write_bytes(_png(3))
    (broken / "bad.png").write_bytes(b"not an image at all")
    with pytest.raises(ZooError) as info:
        gallery.embed(broken, tmp_path / "e", gallery.load_method(METHOD, "tiny"), num_workers=1,
                      trainer={"accelerator": "cpu", "enable_progress_bar": False})
    assert str(info.value).endswith("bad.png: not an image file PIL can read") and "\n" not in str(info.value)


def test_killed_embed_of_a_random_init_model_resumes(mini_gallery: dict[str, Path], tmp_path: Path) -> None:
    command = ["embed", "--gallery", str(mini_gallery["styler"]), "--output", str(tmp_path / "g"), "--model", METHOD,
               "--variant", "tiny", "--model_args", '{"seed": null}', "--shard_size", "8", *FAST]
    assert _zoo(*command) == 0
    manifest = json.loads((tmp_path / "g" / "gallery.json").read_text())
    kept = (tmp_path / "g" / "shard-00000.safetensors").stat().st_mtime_ns
    # as if killed while writing the last shard: manifest unfinished, shard 2 missing
    (tmp_path / "g" / "shard-00002.json").unlink()
    (tmp_path / "g" / "gallery.json").write_text(json.dumps({**manifest, "complete": False}))
    torch.manual_seed(1234)  # another process, another global random state
    assert _zoo(*command) == 0
    assert gallery.read_manifest(tmp_path / "g")["model_sha256"] == manifest["model_sha256"]
    assert (tmp_path / "g" / "shard-00000.safetensors").stat().st_mtime_ns == kept
    assert (tmp_path / "g" / "shard-00002.json").is_file()
    # another seed is another model: refused, never mixed into the same shards
    assert _zoo(*command, "--seed", "1") == 2


def test_noise_initialised_pdf_embedding_is_rebuilt_identically() -> None:
    first = gallery.load_method("PDFEmbedding", "tiny")
    torch.rand(10)
    assert gallery.fingerprint(gallery.load_method("PDFEmbedding", "tiny")) == gallery.fingerprint(first)
    assert gallery.fingerprint(gallery.load_method("PDFEmbedding", "tiny", seed=1)) != gallery.fingerprint(first)
    with pytest.raises(ZooError, match="registered method"):
        gallery.load_method("gallery_fixture_method.GalleryFixtureMethod")


def test_ratio_interval_and_histogram_agree() -> None:
    ratio, (lo, hi) = gallery.replication_ratio(np.zeros(50), 3, 0.95)
    assert ratio == 0.0 and lo == 0.0 and 0.05 < hi < 0.1  # Wilson: 0/50 still leaves room up to ~7%
    ratio, (lo, hi) = gallery.replication_ratio(np.full(50, 5.0), 3, 0.95)
    assert ratio == 1.0 and 0.9 < lo < 0.95 and hi == pytest.approx(1.0)
    levels = np.array([2.6, 2.99, 3.0, 3.4, 4.5, 5.0, -1.0])
    histogram = gallery.level_histogram(levels)
    assert histogram == [1, 0, 2, 2, 1, 1] and sum(histogram) == len(levels)
    ratio, _ = gallery.replication_ratio(levels, 3, 0.95)
    assert ratio * len(levels) == sum(histogram[3:]) == 4


# ------------------------------------------------------------------------------------------ exact copies
def _photo_set(root: Path) -> dict[str, Path]:
    """A gallery of four scikit-image photographs, and edited copies of the astronaut (and one of the camera)."""
    from PIL import Image

    photos = {name: mini.photo(name).resize((96, 96), Image.Resampling.BICUBIC)
              for name in ("astronaut", "camera", "chelsea", "coffee")}
    (root / "gallery").mkdir(parents=True)
    (root / "generated").mkdir()
    for name, image in photos.items():
        image.save(root / "gallery" / f"{name}.png")
    gen, astronaut = root / "generated", photos["astronaut"]
    (gen / "identical.png").write_bytes((root / "gallery" / "astronaut.png").read_bytes())
    astronaut.save(gen / "lossless.png", compress_level=1)  # other bytes, the same pixels
    astronaut.save(gen / "lossless_bmp.bmp")
    astronaut.save(gen / "q90.jpg", quality=90)
    astronaut.save(gen / "q30.jpg", quality=30)
    astronaut.resize((48, 48), Image.Resampling.BICUBIC).save(gen / "half.png")
    astronaut.rotate(10).save(gen / "rotated.png")
    photos["camera"].crop((10, 10, 80, 80)).save(gen / "crop_of_camera.png")
    mini.photo("rocket").resize((96, 96)).save(gen / "unrelated.png")
    return {"gallery": root / "gallery", "generated": gen}


@pytest.mark.parametrize("variant", ["tiny", "collapsed"])
def test_exact_copy_is_decided_on_pixels_not_descriptors(tmp_path: Path, variant: str) -> None:
    """Identical and lossless copies are exact copies; lossy, resized, rotated, cropped and unrelated ones are not,
    also with a collapsed model whose descriptors are all equal (which the gallery flags, and never counts)."""
    import csv

    data = _photo_set(tmp_path)
    out = tmp_path / "g"
    assert _zoo("embed", "--gallery", str(data["gallery"]), "--output", str(out), "--model", METHOD,
                "--variant", variant, "--dtype", "float32", *FAST) == 0
    assert _zoo("index", "--gallery", str(out), "--index_type", "flat") == 0
    assert _zoo("match", "--gallery", str(out), "--generated", f"gen={data['generated']}", "--output",
                str(tmp_path / "m"), "--k", "4", "--threshold", "3", *FAST) == 0
    rows = {r["id"]: r for r in csv.DictReader((tmp_path / "m" / "matches.csv").open())}
    assert len(rows) == 9
    exact = {id_ for id_, r in rows.items() if r["exact_copy"] == "1"}
    assert exact == {"identical", "lossless", "lossless_bmp"}, rows
    for id_ in exact:
        assert rows[id_]["match_id"] == "astronaut" and float(rows[id_]["level"]) == 5.0
    report = json.loads((tmp_path / "m" / "report.json").read_text())["generators"]["gen"]
    assert report["exact_copies"] == 3 and report["pixels_unchecked"] == 0
    if variant == "collapsed":
        # equal descriptors for every pair: flagged as such, and the level stays the flat PDF's 2.5
        assert all(r["descriptor_identical"] == "1" for r in rows.values())
        assert all(float(r["level"]) == 2.5 for id_, r in rows.items() if id_ not in exact)
        assert report["descriptor_identical"] == 9
        assert report["replication_ratio"] == pytest.approx(3 / 9)  # the three exact copies, nothing from the rule


def test_match_writes_nothing_outside_its_output(mini_gallery: dict[str, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = _tiny_embedded(mini_gallery, tmp_path / "g")
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    for name in ("../../esc", "..", ".", "a/b", ""):
        assert _zoo("match", "--gallery", str(out), "--generated", f"{name}={mini_gallery['copier']}",
                    "--output", str(work / "m"), *FAST) == 2
        assert capsys.readouterr().err.strip().startswith("zoo: error: --generated")
    assert not (tmp_path / "esc").exists() and not (tmp_path / "a" / "esc").exists()
    # a link inside the output folder cannot lead the embeddings out of it either
    (work / "m").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (work / "m" / "embeddings").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ZooError, match="would be written outside"):
        gallery.match(out, {"gen": mini_gallery["copier"]}, work / "m",
                      trainer={"accelerator": "cpu", "enable_progress_bar": False})
    assert not any((tmp_path / "elsewhere").iterdir())


def test_one_rule_for_image_files_and_every_skip_counted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image, features

    from zoo.predict import expand, image_files, image_suffixes

    assert {".png", ".jpg", ".jfif", ".webp", ".tif"} <= image_suffixes()
    assert (".avif" in image_suffixes()) == bool(features.check("avif"))
    root = tmp_path / "photos"
    (root / ".cache").mkdir(parents=True)
    (root / "sub").mkdir()
    image = Image.new("RGB", (16, 16), (200, 10, 10))
    image.save(root / "a.png")
    image.save(root / "b.jfif", format="JPEG")
    image.save(root / "sub" / "C.PNG")
    image.save(root / ".hidden.png")
    image.save(root / ".cache" / "x.png")
    (root / "notes.txt").write_text("not an image")
    expected = [root / "a.png", root / "b.jfif", root / "sub" / "C.PNG"]
    if features.check("avif"):
        image.save(root / "d.avif")
        expected.insert(2, root / "d.avif")
    found = image_files(root)
    assert found.images == expected
    assert found.hidden == [root / ".cache", root / ".hidden.png"] and found.others == [root / "notes.txt"]
    assert found.skipped() == "2 hidden, 1 not an image"
    # zoo predict's folders follow the rule and say what they skipped
    assert [item.names[0] for item in expand(root)] == [str(p) for p in expected]
    assert "skipped 2 hidden, 1 not an image" in capsys.readouterr().err
    # and so does zoo embed, whose summary line counts what it embedded and what it skipped
    out = tmp_path / "g"
    assert _zoo("embed", "--gallery", str(root), "--output", str(out), "--model", METHOD, "--variant", "tiny",
                *FAST) == 0
    printed = capsys.readouterr().out
    assert (f"zoo embed: {len(expected)} images of {root} in {out}: {len(expected)} embedded in this run, 0 kept "
            "from an earlier run; skipped 2 hidden, 1 not an image") in printed
    manifest = json.loads((out / "gallery.json").read_text())
    assert [i for _, ids, _ in gallery.iter_shards(out, manifest) for i in ids] == [
        p.relative_to(root).with_suffix("").as_posix() for p in expected]
    assert _zoo("embed", "--gallery", str(root), "--output", str(out), "--model", METHOD, "--variant", "tiny",
                *FAST) == 0
    assert f"0 embedded in this run, {len(expected)} kept from an earlier run" in capsys.readouterr().out


def test_cpu_example_finds_its_exact_copies_on_the_pixels(tmp_path: Path) -> None:
    """The README's CPU gallery (configs/gallery/cpu_example.yaml): scikit-image photographs, offline."""
    import csv

    from zoo.gallery.example import write_example

    data = write_example(tmp_path / "data")
    config = yaml.safe_load((ROOT / "configs" / "gallery" / "cpu_example.yaml").read_text())
    assert config["trainer"]["accelerator"] == "cpu" and config["gallery"].endswith("gallery")
    out = tmp_path / "g"
    # the registry method the example fits (its level map fitted or not, the pixels decide an exact copy)
    assert _zoo("embed", "--gallery", str(data["gallery"]), "--output", str(out), "--model", "DescriptorSimilarity",
                "--variant", "tiny", "--dtype", "float32", *FAST) == 0
    assert _zoo("index", "--gallery", str(out)) == 0
    assert _zoo("match", "--gallery", str(out), "--generated", f"edits={data['generated']}", "--output",
                str(tmp_path / "m"), *FAST) == 0
    rows = list(csv.DictReader((tmp_path / "m" / "matches.csv").open()))
    assert len(rows) == 6
    assert {r["id"] for r in rows if r["exact_copy"] == "1"} == {"identical_astronaut", "lossless_chelsea"}


def test_embedding_a_finished_gallery_again_keeps_it_usable(mini_gallery: dict[str, Path], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "embedded"
    args = ["embed", "--gallery", str(mini_gallery["gallery"]), "--output", str(out), "--model", METHOD,
            "--variant", "tiny", "--shard_size", "16", *FAST]
    assert _zoo(*args) == 0
    assert _zoo(*args) == 0  # nothing left to embed
    assert "0 embedded in this run, 60 kept from an earlier run" in capsys.readouterr().out
    assert json.loads((out / "gallery.json").read_text())["complete"] is True
    assert _zoo("index", "--gallery", str(out), "--index_type", "flat") == 0
    assert _zoo("match", "--gallery", str(out), "--generated", f"copier={mini_gallery['copier']}",
                "--output", str(tmp_path / "m"), *FAST) == 0


@pytest.mark.parametrize("command", ["embed", "index", "match"])
def test_a_python_tag_in_a_gallery_config_is_one_line_and_runs_nothing(command, tmp_path, capsys):
    marker = tmp_path / "ran"
    config = tmp_path / "evil.yaml"
    config.write_text(f'output: !!python/object/apply:os.system ["touch {marker}"]\n')
    from zoo.cli import main

    assert main([command, "--config", str(config)]) != 0
    err = capsys.readouterr().err
    assert err.startswith(f"zoo: error: zoo {command}: ") and err.count("\n") == 1, err
    assert "python/object/apply:os.system" in err and not marker.exists()
