"""``zoo index`` past one machine: trained once, built in parts, merged on disk, searched memory-mapped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import zoo.gallery as gallery
from zoo import cli, registry
from zoo.data import mini
from zoo.errors import ZooError
from zoo.gallery import index as gallery_index
from zoo.gallery.embedding import rank_shards
from zoo.gallery.match import GallerySearch, score_pairs

METHOD = "GalleryFixtureMethod"
ENTRY = registry.Entry(METHOD, "gallery_fixture_method:GalleryFixtureMethod", "tests")
FAST = ["--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false"]


@pytest.fixture(autouse=True)
def fixture_method_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    """``GalleryFixtureMethod`` registered, as an installed plugin's method would be."""
    monkeypatch.setitem(registry.methods.entries, METHOD, ENTRY)


def _zoo(*args: str) -> int:
    return cli.main(list(args))


def _one_line_error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert _zoo(*args) == 2, args
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("zoo: error: "), err
    return err


def _synthetic(directory: Path, count: int = 3000, dim: int = 32, shard_size: int = 500, seed: int = 0) -> Path:
    """A clustered gallery of descriptors written as ``zoo embed`` shards, with a complete manifest."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((20, dim)).astype(np.float32)
    vectors = centers[rng.integers(0, 20, count)] + 0.3 * rng.standard_normal((count, dim)).astype(np.float32)
    for k in range(-(-count // shard_size)):
        rows = vectors[k * shard_size : (k + 1) * shard_size]
        gallery.write_shard(directory, k, [f"v{k * shard_size + i}" for i in range(len(rows))],
                            torch.from_numpy(rows).half())
    (directory / gallery.MANIFEST).write_text(json.dumps({
        "source": "synthetic", "kind": "synthetic", "id_column": "id", "image_column": "image", "count": count,
        "shard_size": shard_size, "num_shards": -(-count // shard_size), "dtype": "float16",
        "model_sha256": "synthetic", "complete": True}))
    return directory


IVF = ["--index_type", "ivf", "--nlist", "4", "--nprobe", "2"]


def test_three_parts_merged_give_the_single_build_s_ratio(tmp_path: Path) -> None:
    """A gallery indexed in 3 parts and merged on disk gives `zoo match` the single build's matches."""
    rng = np.random.default_rng(0)
    train = {name: mini.band(mini.photo(name), "train") for name in mini.PHOTOS}
    (tmp_path / "gallery").mkdir()
    (tmp_path / "copier").mkdir()
    boxes = []
    for i in range(48):
        name = list(mini.PHOTOS)[i % len(mini.PHOTOS)]
        boxes.append((name, mini.random_box(train[name], rng)))
        mini.square(train[name], boxes[-1][1]).save(tmp_path / "gallery" / f"g{i:03d}.png")
    for i, level in enumerate([5, 4, 4, 3, 2, 1, 0, 0] * 2):
        mini.replicate(level, train, *boxes[i], rng).save(tmp_path / "copier" / f"c{i:03d}_L{level}.png")
    out, queries = tmp_path / "g", tmp_path / "q"
    for source, target in ((tmp_path / "gallery", out), (tmp_path / "copier", queries)):
        assert _zoo("embed", "--gallery", str(source), "--output", str(target), "--model", METHOD, "--variant",
                    "tiny", "--shard_size", "12", "--dtype", "float32", *FAST) == 0

    def match(report: str) -> tuple[dict, str]:
        assert _zoo("match", "--gallery", str(out), "--generated", f"copier={queries}", "--output",
                    str(tmp_path / report), "--k", "4", *FAST) == 0
        found = json.loads((tmp_path / report / "report.json").read_text())["generators"]["copier"]
        return found, (tmp_path / report / "matches.csv").read_text()

    assert _zoo("index", "--gallery", str(out), *IVF) == 0
    single, single_rows = match("single")
    assert not json.loads((out / "index.json").read_text()).get("ondisk")

    assert _zoo("index", "--gallery", str(out), "--train", *IVF) == 0
    for part in range(3):  # 4 shards: parts of 1, 1 and 2 shards
        assert _zoo("index", "--gallery", str(out), "--part", f"{part}/3") == 0
    assert _zoo("index", "--gallery", str(out), "--merge") == 0
    info = json.loads((out / "index.json").read_text())
    assert info["ondisk"] and info["parts"] == 3 and info["count"] == 48 and (out / "index.ivfdata").is_file()
    merged, merged_rows = match("merged")
    assert merged["replication_ratio"] == single["replication_ratio"] > 0.2
    assert merged["level_histogram"] == single["level_histogram"] and merged_rows == single_rows

    # the on-disk index serves one image's search as it serves zoo match (what zoo serve calls)
    searcher = GallerySearch(out)
    method = gallery.load_method(METHOD, "tiny")
    manifest = gallery.read_manifest(out)
    _, _, own = next(gallery.iter_shards(out, manifest))
    found = searcher.search(own[:1], k=3)
    assert found.ids[0, 0] == "g000" and found.positions[0, 0] == 0
    torch.testing.assert_close(found.vectors[0, 0], own[0])
    level, _ = score_pairs(method, own[:1], found.vectors)
    assert level.shape == (1, 3)


def test_merged_index_has_the_single_build_s_neighbours_and_workers_build_it(tmp_path: Path) -> None:
    out = _synthetic(tmp_path / "g")
    options = {"index_type": "ivfpq", "nlist": 8, "pq_m": 8, "pq_bits": 8, "train_size": 3000, "nprobe": 4}
    gallery.build_index(out, **options)
    queries = gallery.normalised(gallery.gallery_vectors(out, gallery.read_manifest(out), np.arange(0, 3000, 7)))
    single_sim, single_pos = GallerySearch(out).index.search(queries, 10)
    assert not (out / "index.ivfdata").exists()

    gallery_index.train_index(out, **options)
    for part in range(3):
        gallery_index.build_part(out, part, 3)
    gallery_index.merge_parts(out)
    merged = GallerySearch(out)
    assert merged.info["ondisk"] and merged.info["count"] == 3000 and merged.info["factory"] == "IVF8,PQ8x8"
    merged_sim, merged_pos = merged.index.search(queries, 10)
    np.testing.assert_array_equal(merged_pos, single_pos)  # the same trained quantizer and codes
    np.testing.assert_allclose(merged_sim, single_sim, rtol=1e-6)
    assert merged.info["shard_sha256"] == [gallery.shards.shard_info(out, k)["sha256"] for k in range(6)]

    # in local worker processes, as another split: the trained index is kept, two fresh processes add the parts
    for stale in out.glob("index.part-*-of-00003.*"):
        stale.unlink()
    reports = gallery_index.build_local(out, workers=2, **options)
    assert [(r["part"], r["shards"], r["skipped"]) for r in reports] == [(0, [0, 3], False), (1, [3, 6], False)]
    assert all(r["peak_rss_bytes"] > 0 for r in reports)
    np.testing.assert_array_equal(GallerySearch(out).index.search(queries, 10)[1], single_pos)

    # the single build again replaces the merged index, lists included
    gallery.build_index(out, **options)
    assert not (out / "index.ivfdata").exists() and not GallerySearch(out).info.get("ondisk")


def test_mismatched_inputs_are_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(_synthetic(tmp_path / "g"))
    err = _one_line_error(capsys, "index", "--gallery", out, "--part", "0/3")
    assert f"{out} has no index.trained.faiss" in err
    assert "give one of --train, --merge" in _one_line_error(capsys, "index", "--gallery", out, "--train", "--merge")
    assert "--part '3/3': write i/N" in _one_line_error(capsys, "index", "--gallery", out, "--part", "3/3")
    assert "--train: an exact (flat) index" in _one_line_error(capsys, "index", "--gallery", out, "--train")
    assert "--pq_bits 4: fast-scan PQ" in _one_line_error(capsys, "index", "--gallery", out, "--train",
                                                          "--index_type", "ivfpq", "--pq_bits", "4", "--pq_m", "8")
    assert _zoo("index", "--gallery", out, "--train", *IVF) == 0
    assert "give at most 6 parts" in _one_line_error(capsys, "index", "--gallery", out, "--part", "0/7")
    for part in range(3):
        assert _zoo("index", "--gallery", out, "--part", f"{part}/3") == 0
    assert "has no index parts" not in capsys.readouterr().err

    # a part of another split left in the folder
    assert _zoo("index", "--gallery", out, "--part", "1/2") == 0
    assert "several splits (N = [2, 3])" in _one_line_error(capsys, "index", "--gallery", out, "--merge")
    for suffix in (".json", ".faiss"):
        Path(out, f"index.part-00001-of-00002{suffix}").unlink()

    # a part built for another gallery (its recorded digest differs)
    meta = Path(out, "index.part-00001-of-00003.json")
    good = meta.read_text()
    meta.write_text(good.replace(json.loads(good)["gallery_sha256"], "0" * 64))
    err = _one_line_error(capsys, "index", "--gallery", out, "--merge")
    assert f"{meta} was built from another gallery" in err
    meta.write_text(good)

    # trained again with other options: the parts are stale
    assert _zoo("index", "--gallery", out, "--train", *IVF, "--seed", "1") == 0
    err = _one_line_error(capsys, "index", "--gallery", out, "--merge")
    assert "index.part-00000-of-00003.json was built from another trained index" in err and "--part 0/3" in err

    # the gallery changed under the trained index: its manifest no longer matches
    manifest = json.loads(Path(out, "gallery.json").read_text())
    Path(out, "gallery.json").write_text(json.dumps({**manifest, "model_sha256": "other"}))
    err = _one_line_error(capsys, "index", "--gallery", out, "--part", "0/3")
    assert f"{Path(out, 'index.trained.json')} was trained on another gallery" in err


def test_a_killed_part_is_redone_and_a_finished_one_kept(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = _synthetic(tmp_path / "g")
    assert _zoo("index", "--gallery", str(out), "--train", *IVF) == 0
    trained = (out / "index.trained.faiss").stat().st_mtime_ns
    assert _zoo("index", "--gallery", str(out), "--train", *IVF) == 0  # every job may run it: kept
    assert "already trained with these options; kept" in capsys.readouterr().out
    assert (out / "index.trained.faiss").stat().st_mtime_ns == trained
    for part in range(3):
        assert _zoo("index", "--gallery", str(out), "--part", f"{part}/3") == 0
    parts = [out / f"index.part-0000{i}-of-00003.faiss" for i in range(3)]
    kept, whole = parts[0].stat().st_mtime_ns, parts[1].read_bytes()
    parts[1].write_bytes(whole[: len(whole) // 2])  # killed while writing over an earlier part
    (out / "index.part-00002-of-00003.json").unlink()  # killed before its manifest
    capsys.readouterr()
    err = _one_line_error(capsys, "index", "--gallery", str(out), "--merge")
    assert "part 2/3 is missing" in err
    (out / "index.part-00002-of-00003.json").write_text("{")  # and a corrupt manifest is only unfinished work
    for part in range(3):
        assert _zoo("index", "--gallery", str(out), "--part", f"{part}/3") == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].endswith("shards 0..1, 1000 descriptors (already built; kept)")
    assert not printed[1].endswith("kept)") and not printed[2].endswith("kept)")
    assert parts[0].stat().st_mtime_ns == kept and parts[1].read_bytes() == whole
    assert _zoo("index", "--gallery", str(out), "--merge") == 0
    assert GallerySearch(out).index.ntotal == 3000


@pytest.mark.parametrize(("num_nodes", "devices"), [(1, 1), (1, 2), (2, 3), (4, 2)])
def test_embed_ranks_of_several_nodes_write_disjoint_shards(num_nodes: int, devices: int,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Every rank of ``--trainer.num_nodes N --trainer.devices D`` writes its own shards, every shard once."""
    import lightning.pytorch as pl
    from lightning.fabric.utilities.rank_zero import rank_zero_only as fabric_rank_zero
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    for flag in (rank_zero_only, fabric_rank_zero):  # a Trainer of rank r sets it process-wide: restored after
        monkeypatch.setattr(flag, "rank", getattr(flag, "rank", 0))
    num_shards = 11
    writers: dict[int, list[int]] = {}
    for node in range(num_nodes):
        for local in range(devices):
            # what a launcher (SLURM, torchrun) gives each process of a multi-node run
            monkeypatch.setenv("NODE_RANK", str(node))
            monkeypatch.setenv("LOCAL_RANK", str(local))
            trainer = pl.Trainer(accelerator="cpu", devices=devices, num_nodes=num_nodes, strategy="ddp",
                                 logger=False, enable_checkpointing=False)
            assert trainer.world_size == num_nodes * devices and trainer.global_rank not in writers
            writers[trainer.global_rank] = list(rank_shards(num_shards, trainer.global_rank, trainer.world_size))
    assert sorted(writers) == list(range(num_nodes * devices))
    written = sorted(k for shards in writers.values() for k in shards)
    assert written == list(range(num_shards))  # each shard (and so each file name) has exactly one writer


def test_candidates_are_read_by_row_and_a_cut_shard_is_named(tmp_path: Path) -> None:
    out = _synthetic(tmp_path / "g", count=1200, shard_size=500)
    manifest = gallery.read_manifest(out)
    positions = np.array([[1100, 3], [-1, 499]])
    ids, vectors = gallery.shards.gallery_rows(out, manifest, positions)
    assert ids.tolist() == [["v1100", "v3"], ["", "v499"]] and vectors.shape == (2, 2, 32)
    every = torch.cat([e for _, _, e in gallery.iter_shards(out, manifest)])
    torch.testing.assert_close(vectors[0, 0], every[1100])
    assert not vectors[1, 0].any()
    shard = out / "shard-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])  # cut short after zoo index checked it
    with pytest.raises(ZooError, match=r"shard-00002.safetensors cannot be read: its header .* does not match "
                                       r"the file's \d+ bytes"):
        gallery.shards.gallery_rows(out, manifest, positions)
