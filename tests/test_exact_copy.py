"""An exact copy is a property of pixels: real photographs and their edited copies, for every copy-detection method.

Identical files and lossless re-encodes are exact copies (level 5); a JPEG re-encode (q90 or q30), a half-size
copy, a crop, a rotation and an unrelated photograph are not, whatever the model. The same holds for a
collapsed model (one that gives every image the same descriptor), which once made every pair an exact copy.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from PIL import Image
from skimage import data as photos

from zoo import registry
from zoo.cli import main
from zoo.tasks.copy_detection import MAX_LEVEL, descriptors_identical, pixels_identical

COPY_METHODS = [n for n in registry.methods.names() if registry.methods.load(n).task == "copy_detection"]
EXACT = {"identical": True, "png_of_the_jpeg": True, "lossless_webp": True, "jpeg_q90": False, "jpeg_q30": False,
         "half_size": False, "crop": False, "rotated": False, "unrelated": False}


@pytest.fixture(scope="module")
def copies(tmp_path_factory):
    """A photograph (JPEG, as photographs come), its copies and an unrelated photograph, as files."""
    root = tmp_path_factory.mktemp("copies")
    original = Image.fromarray(photos.astronaut())  # 512 x 512
    original.save(root / "original.jpg", quality=95)
    decoded = Image.open(root / "original.jpg").convert("RGB")
    decoded.save(root / "png_of_the_jpeg.png")  # the same pixels, another format
    decoded.save(root / "lossless_webp.webp", lossless=True)
    decoded.save(root / "jpeg_q90.jpg", quality=90)
    decoded.save(root / "jpeg_q30.jpg", quality=30)
    decoded.resize((256, 256), Image.Resampling.BICUBIC).save(root / "half_size.png")
    decoded.crop((32, 32, 480, 480)).save(root / "crop.png")
    decoded.rotate(90).save(root / "rotated.png")
    Image.fromarray(photos.coffee()).save(root / "unrelated.png")
    paths = {name: root / ("original.jpg" if name == "identical" else
                           next(p.name for p in root.iterdir() if p.stem == name)) for name in EXACT}
    return root / "original.jpg", paths


def collapsed(model):
    """``model`` made blind: every image it sees is the same, so every descriptor is the same."""
    predict_batch = model.predict_batch

    def blind(batch):
        return predict_batch({**batch, "generated": torch.zeros_like(batch["generated"]),
                              "real": torch.zeros_like(batch["real"])})

    model.predict_batch = blind
    return model


@pytest.mark.parametrize("collapse", [False, True], ids=["model", "collapsed"])
@pytest.mark.parametrize("name", COPY_METHODS)
def test_exact_copies_are_decided_on_pixels(name, collapse, copies):
    original, paths = copies
    model = registry.methods.load(name).from_variant("tiny")
    if collapse:
        model = collapsed(model)
    frame = model.compare([str(paths[k]) for k in EXACT], [str(original)] * len(EXACT))
    assert frame["error"].isna().all(), frame["error"].tolist()
    flagged = dict(zip(EXACT, frame["exact_copy"].astype(bool), strict=True))
    assert flagged == EXACT
    exact = frame["exact_copy"] == 1
    assert (frame.loc[exact, "level"] == MAX_LEVEL).all()
    if "level_argmax" in frame.columns:
        assert (frame.loc[exact, ["level_argmax", "level_expected"]] == MAX_LEVEL).all().all()


def test_a_collapsed_model_has_identical_descriptors_but_no_exact_copy(copies):
    """Where only descriptors exist, equal descriptors are flagged as such and do not set the level."""
    original, paths = copies
    model = registry.methods.load("PDFEmbedding").from_variant("tiny").eval()
    with torch.no_grad():
        model.net.vit.patch_embed.proj.weight.zero_()  # every image gives the same six tokens
        model.net.vit.patch_embed.proj.bias.zero_()
        transform = model.image_transform()
        images = torch.stack([transform(Image.open(p)) for p in (original, paths["unrelated"])])
        emb = model.embed(images)
        out = model.pair_from_embeddings(emb[1:], emb[:1])
    assert out["descriptor_identical"].tolist() == [1]
    assert "exact_copy" not in out
    assert model.compare(str(paths["unrelated"]), str(original))["exact_copy"].tolist() == [0]


def test_pixel_and_descriptor_rules():
    a = torch.rand(3, 3, 8, 8)
    b = a.clone()
    b[1, 0, 0, 0] += 1 / 255  # one 8-bit level at one pixel
    b[2] = torch.rand(3, 8, 8)
    assert pixels_identical(a, b).tolist() == [True, False, False]
    assert pixels_identical(a, torch.rand(3, 3, 4, 4)).tolist() == [False] * 3
    assert descriptors_identical(torch.ones(2, 4), torch.tensor([[1.0, 1, 1, 1], [1, 1, 1, -1]])).tolist() == [
        True, False]


def test_zoo_predict_flags_exact_copies_on_pixels(copies, tmp_path):
    """The shipped path: ``zoo predict --pairs`` on the photographs, an untrained model on purpose."""
    original, paths = copies
    pairs = tmp_path / "pairs.csv"
    pd.DataFrame({"generated": [str(paths[k]) for k in EXACT], "real": [str(original)] * len(EXACT)}).to_csv(
        pairs, index=False)
    out = tmp_path / "levels.csv"
    assert main(["predict", "--model", "PDFEmbedding", "--variant", "tiny", "--untrained", "--pairs", str(pairs),
                 "--output", str(out)]) == 0
    frame = pd.read_csv(out)
    assert dict(zip(EXACT, frame["exact_copy"].astype(bool), strict=True)) == EXACT
