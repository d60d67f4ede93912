"""zoo serve's API through a test client: zoo predict's rows, the models' flags and evidence, every refusal."""

from __future__ import annotations

import io
import json
import re
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import tiny_unets
from fastapi.testclient import TestClient
from PIL import Image
from skimage import data as photos

from zoo import registry
from zoo.cli import main
from zoo.cli.serve import build, is_loopback
from zoo.errors import ZooError
from zoo.module import ZooModule
from zoo.serve import Served, create_app
from zoo.serve.batcher import Batcher


def png(name: str, size: int = 64) -> bytes:
    """A real photograph of scikit-image's, resized, as PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(getattr(photos, name)()).convert("RGB").resize((size, size)).save(buffer, "PNG")
    return buffer.getvalue()


def calibrated_detector(folder: Path) -> Path:
    """A tiny CNNDetector whose threshold is calibrated on the mini set's validation split (no training)."""
    from conftest import fast_trainer

    torch.manual_seed(0)
    model = registry.methods.load("CNNDetector").from_variant("tiny")
    fast_trainer().validate(model, datamodule=registry.datamodules.load("MiniFakeDetection")(), verbose=False)
    return model.save_pretrained(folder)


def cgi_dm_args(unets: Path) -> list[str]:
    return ["--model", "CGIDM", "--model.pretrained", str(unets / "pre"), "--model.finetuned", str(unets / "ft"),
            "--model.steps", "1", "--model.encoder", "open_clip:zoo-tiny-clip", "--model.encoder_pretrained", "false"]


def embedded_gallery(root: Path) -> dict[str, Path]:
    """The README's CPU example gallery (scikit-image photographs and edited copies), embedded and indexed."""
    from zoo.gallery import build_index, embed, load_method
    from zoo.gallery.example import write_example

    data = write_example(root / "data")
    embed(data["gallery"], root / "embedded", load_method("DescriptorSimilarity", "tiny"), batch_size=8,
          trainer={"accelerator": "cpu", "devices": 1, "enable_progress_bar": False})
    build_index(root / "embedded")
    return {**data, "embedded": root / "embedded"}


@pytest.fixture(scope="module")
def detector(tmp_path_factory) -> Path:
    return calibrated_detector(tmp_path_factory.mktemp("detector"))


@pytest.fixture(scope="module")
def client(detector):
    app, _ = build(["--ckpt_path", str(detector), "--max_upload_bytes", "200000", "--max_pixels", "20000",
                    "--max_files", "3"])
    with TestClient(app) as test_client:
        yield test_client


def post(client, files, model="CNNDetector", **kwargs):
    return client.post(f"/models/{model}/predict", files=files, **kwargs)


def test_the_rows_are_zoo_predicts_rows_for_the_same_images(client, detector, tmp_path):
    names = ["astronaut", "coffee"]
    for name in names:
        (tmp_path / f"{name}.png").write_bytes(png(name))
    out = tmp_path / "rows.jsonl"
    assert main(["predict", "--ckpt_path", str(detector), "--inputs", *(str(tmp_path / f"{n}.png") for n in names),
                 "--output", str(out)]) == 0
    expected = [json.loads(line) for line in out.read_text().splitlines()]
    response = post(client, [("images", (f"{n}.png", png(n), "image/png")) for n in names])
    assert response.status_code == 200, response.text
    rows = response.json()["rows"]
    assert [list(r) for r in rows] == [list(r) for r in expected]  # the same columns, in the same order
    for got, want in zip(rows, expected, strict=True):
        assert got["path"] == Path(want["path"]).name  # the client's file name, never a server path
        for column in want:
            if isinstance(want[column], float):
                assert got[column] == pytest.approx(want[column], abs=1e-6), column
            elif column != "path":
                assert got[column] == want[column], column
    assert rows[0]["verdict"] in ("real", "generated") and rows[0]["decision"] in (0, 1)


def test_health_models_and_schema(client):
    assert client.get("/health").json() == {"status": "ok", "models": ["CNNDetector"]}
    [model] = client.get("/models").json()
    assert client.get("/models/CNNDetector").json() == model
    assert (model["task"], model["tiny"], model["untrained"], model["uncalibrated"]) == (
        "fake_detection", True, False, False)
    assert "## Limitations" in model["card"] and "CNNDetector" in model["card"]
    stored = model["evidence"]  # the validation scores the threshold was calibrated on, as a row's score
    assert (stored["column"], stored["label"], stored["scale"]) == ("score", "probability generated", "linear")
    assert [(k, d["count"]) for k, d in stored["distributions"].items()] == [("real", 40), ("generated", 120)]
    for d in stored["distributions"].values():  # probabilities, as a row's score is, in increasing order
        quantiles = d["quantiles"]
        assert len(quantiles) == 33 and quantiles == sorted(quantiles) and 0 <= quantiles[0] <= quantiles[-1] <= 1
        assert d["quantile_levels"][0] == 0 and d["quantile_levels"][-1] == 1
    assert "threshold" not in stored  # the row carries it
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/models/{name}/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert set(body["schema"]["properties"]) == {"images", "generated", "real", "captions"}
    assert {"/health", "/models", "/models/{name}"} <= set(schema["paths"])
    assert client.get("/docs").status_code == 404  # its page loads scripts from a CDN: not served


def test_the_pages_and_their_assets_are_served_from_the_package(client):
    page = client.get("/ui/CNNDetector")
    assert page.status_code == 200 and "/static/zoo.js" in page.text
    for asset in ("/static/zoo.js", "/static/zoo.css", "/"):
        response = client.get(asset)
        assert response.status_code == 200
        assert not re.search(r"(src|href)=\"(https?:)?//", response.text)  # nothing from the network
    assert client.get("/ui/nope").status_code == 404


LARGE = Image.new("RGB", (200, 200), (10, 20, 30))


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(("files", "status", "says"), [
    ([("images", ("notes.txt", b"not an image at all", "text/plain"))], 415, "notes.txt: not an image format"),
    ([("images", ("cut.png", png("astronaut")[:3000], "image/png"))], 422, "cut.png: truncated or corrupt"),
    ([("images", ("empty.png", b"", "image/png"))], 422, "empty.png: empty file"),
    ([("images", ("big.bmp", _encoded(Image.new("RGB", (300, 300)), "BMP"), "image/bmp"))], 413,
     "big.bmp: over the upload limit of 200000 bytes"),
    ([("images", ("wide.png", _encoded(LARGE, "PNG"), "image/png"))], 413,
     "wide.png: 200x200 = 40000 pixels is over the limit of 20000"),
    ([("images", (f"{i}.png", png("coffee", 16), "image/png")) for i in range(4)], 400, "unreadable multipart"),
    ([("photo", ("a.png", png("coffee", 16), "image/png"))], 400, "unknown form field(s) 'photo'"),
    ([("captions", (None, "a caption"))], 400, "no images uploaded"),
    ([("images", (None, "text where a file goes"))], 400, "holds text, not a file"),
    ([("images", ("a.png", png("coffee", 16), "image/png")), ("captions", (None, "one")),
      ("captions", (None, "two"))], 400, "2 captions for 1 images"),
])
def test_bad_input_gets_a_one_line_json_reason(client, files, status, says):
    response = post(client, files)
    assert response.status_code == status, response.text
    assert response.json() == {"error": response.json()["error"]} and says in response.json()["error"]
    assert "\n" not in response.text and "Traceback" not in response.text and "/tmp" not in response.text


def test_a_request_that_is_not_multipart_or_names_no_model_is_refused(client):
    response = client.post("/models/CNNDetector/predict", json={"images": ["/etc/passwd"]})
    assert response.status_code == 415 and "multipart/form-data" in response.json()["error"]
    response = post(client, [("images", ("a.png", png("coffee", 16), "image/png"))], model="../../etc")
    assert response.status_code == 404
    response = post(client, [("images", ("a.png", png("coffee", 16), "image/png"))], model="Nope")
    assert response.status_code == 404 and response.json() == {
        "error": "no model named 'Nope' is served (GET /models lists them)"}
    streamed = client.post("/models/CNNDetector/predict", content=iter([b"--x\r\n"]),
                           headers={"content-type": "multipart/form-data; boundary=x"})
    assert streamed.status_code == 411  # no length: refused before anything is read
    huge = client.post("/models/CNNDetector/predict", content=b"x",
                       headers={"content-type": "multipart/form-data; boundary=x", "content-length": "999999999"})
    assert huge.status_code == 413 and "over the limit" in huge.json()["error"]


def test_a_file_name_is_data(client):
    """A file name is the row's text, as sent; the upload is scored under a name the server makes up."""
    name = "<img src=x onerror=alert(1)>/../../etc/passwd.png"
    response = post(client, [("images", (name, png("chelsea"), "image/png"))])
    assert response.status_code == 200 and response.json()["rows"][0]["path"] == name


def test_an_api_key_is_checked_on_every_request(detector):
    import base64

    app = create_app([Served("cnn", ZooModule.from_pretrained(detector))], api_key="s3cret")
    with TestClient(app) as keyed:
        for method, url in (("get", "/health"), ("get", "/models"), ("get", "/ui/cnn"), ("get", "/openapi.json"),
                            ("post", "/models/cnn/predict"), ("get", "/static/zoo.js")):
            response = getattr(keyed, method)(url)
            assert response.status_code == 401, url
            assert "API key" in response.json()["error"] and response.headers["www-authenticate"].startswith("Basic")
        assert keyed.get("/health", headers={"Authorization": "Bearer wrong"}).status_code == 401
        basic = base64.b64encode(b"anyone:s3cret").decode()
        for headers in ({"Authorization": "Bearer s3cret"}, {"X-API-Key": "s3cret"}, {"Authorization": f"Basic {basic}"}):
            assert keyed.get("/health", headers=headers).status_code == 200, headers
        files = [("images", ("a.png", png("coffee"), "image/png"))]
        assert post(keyed, files, model="cnn", headers={"X-API-Key": "s3cret"}).status_code == 200


def test_a_non_loopback_host_needs_a_key_or_insecure(detector, capsys):
    assert is_loopback("127.0.0.1") and is_loopback("127.8.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4") and not is_loopback("example.org")
    assert main(["serve", "--ckpt_path", str(detector), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("zoo: error: --host 0.0.0.0 can be reached from other machines") and err.count("\n") == 1
    build(["--ckpt_path", str(detector), "--host", "0.0.0.0", "--insecure"])
    assert "WARNING: --insecure" in capsys.readouterr().err
    build(["--ckpt_path", str(detector), "--host", "0.0.0.0", "--api_key", "k"])
    assert "WARNING" not in capsys.readouterr().err
    with pytest.raises(ZooError, match="--max_pixels"):
        build(["--ckpt_path", str(detector), "--max_pixels", "0"])


def test_uploads_are_kept_only_when_asked_and_under_the_servers_names(detector, tmp_path):
    keep = tmp_path / "kept"
    app = create_app([Served("cnn", ZooModule.from_pretrained(detector))], keep_uploads=keep)
    with TestClient(app) as kept:
        data = png("rocket")
        assert post(kept, [("images", ("../../evil name.png", data, "image/png"))], model="cnn").status_code == 200
    [file] = keep.iterdir()
    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{8}-0\.png", file.name) and file.read_bytes() == data
    # without --keep_uploads, a scored upload leaves no file in the server's own folder either
    app = create_app([Served("cnn", ZooModule.from_pretrained(detector))])
    with TestClient(app) as plain:
        assert post(plain, [("images", ("a.png", data, "image/png"))], model="cnn").status_code == 200
        assert [p for p in app.state.artifacts.root.rglob("*") if p.is_file()] == []


def test_requests_that_queue_together_are_scored_in_one_forward():
    calls = []
    started = threading.Event()

    def score(items):
        calls.append(list(items))
        started.set()
        time.sleep(0.3)  # a forward long enough for the next requests to queue
        return pd.DataFrame({"item": items})

    batcher = Batcher(score, max_items=8)
    first = batcher.submit(["a"])
    started.wait(5)
    later = [batcher.submit([f"b{i}", f"c{i}"]) for i in range(3)] + [batcher.submit(["x"] * 5)]
    assert first.result(5)["item"].tolist() == ["a"]
    assert [f.result(5)["item"].tolist() for f in later] == [["b0", "c0"], ["b1", "c1"], ["b2", "c2"], ["x"] * 5]
    # the three pairs queued while the first forward ran: one forward; five more do not fit in eight: their own
    assert [len(c) for c in calls] == [1, 6, 5] and batcher.forwards == 3
    batcher.close()


def test_an_untrained_tiny_model_says_so(tmp_path):
    app, _ = build(["--model", "PDFEmbedding", "--variant", "tiny", "--untrained"])
    with TestClient(app) as untrained:
        model = untrained.get("/models/PDFEmbedding").json()
        assert (model["tiny"], model["untrained"], model["inputs"]) == (True, True, ["generated", "real"])
        assert model["evidence"] == {}
        files = [("generated", ("g.png", png("astronaut"), "image/png")), ("real", ("r.png", png("coffee"), "image/png"))]
        [row] = post(untrained, files, model="PDFEmbedding").json()["rows"]
        assert row["untrained"] is True and (row["generated"], row["real"]) == ("g.png", "r.png")
        assert sum(row[f"pdf_{k}"] for k in range(6)) == pytest.approx(1, abs=1e-5)
        one_side = post(untrained, files[:1] + files, model="PDFEmbedding")
        assert one_side.status_code == 400 and "2 generated images against 1 real" in one_side.json()["error"]
    with pytest.raises(ZooError, match="trains and --model builds it unfitted"):
        build(["--model", "PDFEmbedding", "--variant", "tiny"])


def test_an_older_checkpoint_without_stored_scores_still_serves(detector, tmp_path):
    from safetensors.torch import load_file, save_file

    old = tmp_path / "old"
    old.mkdir()
    (old / "config.json").write_text((detector / "config.json").read_text())
    state = {k: v for k, v in load_file(detector / "model.safetensors").items() if not k.startswith("val_score_")}
    save_file(state, old / "model.safetensors")
    app, _ = build(["--ckpt_path", str(old)])
    with TestClient(app) as older:
        assert older.get("/models/CNNDetector").json()["evidence"] == {}
        response = post(older, [("images", ("a.png", png("coffee"), "image/png"))])
        assert response.status_code == 200 and response.json()["rows"][0]["verdict"] in ("real", "generated")


def test_pictures_are_served_by_token_and_name_no_server_path(tmp_path):
    app, _ = build(cgi_dm_args(tiny_unets(tmp_path / "unets")))
    with TestClient(app) as cgi:
        files = [("images", (name, png("astronaut", 32), "image/png")) for name in ("../../a.png", "/etc/b.png")]
        response = post(cgi, files, model="CGIDM")
        assert response.status_code == 200, response.text
        rows = response.json()["rows"]
        assert str(tmp_path) not in response.text and "zoo-serve-" not in response.text
        for k, row in enumerate(rows):
            assert re.fullmatch(rf"/artifacts/[0-9a-f]{{32}}/{k}\.png", row["artifact"]), row["artifact"]
            picture = cgi.get(row["artifact"])
            assert picture.status_code == 200 and picture.content.startswith(b"\x89PNG")
            assert row["uncalibrated"] is True and row["decision"] is None
        token = rows[0]["artifact"].split("/")[2]
        for url in (f"/artifacts/{'0' * 32}/0.png", f"/artifacts/{token}/..%2F..%2Fconfig.json",
                    f"/artifacts/{token}/9.png", "/artifacts/../../etc/passwd"):
            assert cgi.get(url).status_code == 404, url


def test_attribution_evidence_is_the_calibration_losses_and_travels_with_the_checkpoint(tmp_path):
    """The belonging test's calibration losses: drawn against a row's loss, saved, and absent from an older file."""
    from safetensors.torch import load_file, save_file

    model = registry.methods.load("InversionAttribution").from_variant("tiny")
    app = create_app([Served("ronan", model, variant="tiny")])
    with TestClient(app) as served:
        assert served.get("/models/ronan").json()["evidence"] == {}  # it calibrates on its first input
        [row] = post(served, [("images", ("a.png", png("astronaut"), "image/png"))], model="ronan").json()["rows"]
        evidence = served.get("/models/ronan").json()["evidence"]
    assert (evidence["column"], evidence["scale"]) == ("loss", "log")
    [(name, losses)] = evidence["distributions"].items()
    assert "calibration" in name and losses["count"] == int(model.belonging.count) == 16
    assert len(losses["quantiles"]) == 33 and losses["quantiles"] == sorted(losses["quantiles"]) and \
        losses["quantiles"][0] > 0
    # the drawn cut is the test's own: the row's decision and p-value agree with it
    cut = evidence["threshold"]["value"]
    assert row["decision"] == int(row["loss"] <= cut) and (row["p_value"] >= 0.05) == (row["loss"] <= cut)
    saved = model.save_pretrained(tmp_path / "ronan")
    app, _ = build(["--ckpt_path", str(saved)])
    with TestClient(app) as reloaded:
        assert reloaded.get("/models/InversionAttribution").json()["evidence"] == evidence
    state = {k: v for k, v in load_file(saved / "model.safetensors").items() if k != "belonging.quantiles"}
    save_file(state, saved / "model.safetensors")  # as written before the record was kept
    app, _ = build(["--ckpt_path", str(saved)])
    with TestClient(app) as older:
        assert older.get("/models/InversionAttribution").json()["evidence"] == {}
        response = post(older, [("images", ("a.png", png("astronaut"), "image/png"))], model="InversionAttribution")
        assert response.status_code == 200 and response.json()["rows"][0]["p_value"] == pytest.approx(row["p_value"])


@pytest.fixture(scope="module")
def gallery(tmp_path_factory) -> dict[str, Path]:
    return embedded_gallery(tmp_path_factory.mktemp("gallery"))


def test_a_gallery_answers_zoo_matchs_rows_with_the_top_k_as_thumbnails(gallery, tmp_path, capsys):
    import csv

    assert main(["match", "--gallery", str(gallery["embedded"]), "--generated", f"edits={gallery['generated']}",
                 "--output", str(tmp_path / "m"), "--trainer.accelerator", "cpu",
                 "--trainer.enable_progress_bar", "false"]) == 0
    expected = {r["id"]: r for r in csv.DictReader((tmp_path / "m" / "matches.csv").open())}
    app, _ = build(["--gallery", str(gallery["embedded"]), "--gallery_k", "4"])
    with TestClient(app) as served:
        [model] = served.get("/models").json()
        assert (model["name"], model["method"], model["task"], model["inputs"]) == (
            "gallery", "DescriptorSimilarity", "copy_detection", ["images"])
        assert model["gallery"] == {"images": 8, "k": 4} and str(tmp_path) not in json.dumps(model)
        files = [("images", (f.name, f.read_bytes(), "image/png")) for f in sorted(gallery["generated"].iterdir())]
        response = post(served, files, model="gallery")
        assert response.status_code == 200, response.text
        answer = response.json()
        assert str(gallery["embedded"].parent) not in response.text  # no server path, only ids and tokens
        assert len(answer["rows"]) == len(answer["candidates"]) == len(expected) == 6
        for row, candidates in zip(answer["rows"], answer["candidates"], strict=True):
            want = expected[row["id"]]  # the same row zoo match writes for that image, its generator aside
            assert list(row) == [c for c in want if c != "generator"]
            for column, value in row.items():
                if column in ("id", "match_id"):
                    assert value == want[column], column
                elif want[column] == "":  # a method without a PDF: zoo match leaves its cells empty
                    assert value is None, column
                else:
                    assert value == pytest.approx(float(want[column]), abs=1e-4), (row["id"], column)
            # its top 4, best first: the row's match heads them, levels fall (cosine breaks ties)
            assert len(candidates) == 4 and candidates[0]["id"] == row["match_id"]
            assert candidates[0]["level"] == row["level"] and candidates[0]["exact_copy"] == row["exact_copy"]
            keys = [(-c["level"], -c["similarity"]) for c in candidates[1:]]
            assert keys == sorted(keys)
            for candidate in candidates:
                assert re.fullmatch(r"/artifacts/[0-9a-f]{32}/\d+\.png", candidate["thumbnail"])
                picture = served.get(candidate["thumbnail"])
                assert picture.status_code == 200 and Image.open(io.BytesIO(picture.content)).size == (128, 128)
        assert {r["id"] for r in answer["rows"] if r["exact_copy"] == 1} == {"identical_astronaut", "lossless_chelsea"}
        pair = post(served, [("generated", ("g.png", png("coffee"), "image/png"))], model="gallery")
        assert pair.status_code == 400 and "unknown form field(s) 'generated'" in pair.json()["error"]
        captioned = post(served, [("images", ("g.png", png("coffee"), "image/png")), ("captions", (None, "a cat"))],
                         model="gallery")
        assert captioned.status_code == 400 and captioned.json()["error"] == (
            "unknown form field(s) 'captions'; gallery takes images")
    capsys.readouterr()
    assert main(["serve", "--gallery", str(gallery["gallery"])]) == 2  # the images, not an embedded gallery
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(gallery["gallery"]) in err, err
    assert main(["serve"]) == 2  # nothing to serve
    assert capsys.readouterr().err == ("zoo: error: give --ckpt_path, --model or --gallery: what to serve (see zoo "
                                       "serve --help)\n")
