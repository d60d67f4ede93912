"""zoo serve's pages in headless Chromium: a real photograph uploaded to each task's page, the verdict and the
drawn evidence read from the DOM, and a screenshot at 1280 and at 400 px wide under the test's folder.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them); skipped without them.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_unets
from PIL import Image
from skimage import data as photos
from test_serve import calibrated_detector, embedded_gallery

from zoo import registry
from zoo.module import ZooModule, seeded

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None)
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                                reason="no headless Chromium here (apt-get install chromium chromium-driver)")
# a file name with markup in it: the page must show it as text
NAME = "<b>astronaut<i> & co.png"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One zoo serve process-in-a-thread on a free loopback port with a model of every task, and a gallery."""
    import uvicorn

    from zoo.serve import Served, create_app
    from zoo.serve.gallery import Gallery

    root = tmp_path_factory.mktemp("serve")
    unets = tiny_unets(root / "unets")
    with seeded():
        pdf = registry.methods.load("PDFEmbedding").from_variant("tiny")
    pdf.untrained = True
    torch.manual_seed(0)
    served = [
        Served("CNNDetector", ZooModule.from_pretrained(calibrated_detector(root / "detector"))),
        Served("PDFEmbedding", pdf, variant="tiny"),
        Served("CGIDM", registry.methods.load("CGIDM")(
            pretrained=str(unets / "pre"), finetuned=str(unets / "ft"), steps=1, encoder="open_clip:zoo-tiny-clip",
            encoder_pretrained=False)),
        Served("InversionAttribution", registry.methods.load("InversionAttribution").from_variant("tiny"),
               variant="tiny"),
    ]
    gallery = Gallery(embedded_gallery(root / "gallery")["embedded"], k=4)
    served.append(Served("gallery", gallery.method, gallery=gallery))
    server = uvicorn.Server(uvicorn.Config(create_app(served), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def photographs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photographs")
    paths = {}
    for name, file in (("astronaut", NAME), ("coffee", "coffee.png")):
        paths[name] = folder / file
        Image.fromarray(getattr(photos, name)()).resize((128, 128)).save(paths[name], "PNG")
    return paths


def _evidence(driver, task: str) -> None:
    from selenium.webdriver.common.by import By

    find = driver.find_elements
    if task == "fake_detection":
        assert len(find(By.CSS_SELECTOR, "#evidence-distribution rect.box")) == 2  # real and generated
        marker = driver.find_element(By.ID, "score-marker")
        assert 0 <= float(marker.get_attribute("data-value")) <= 1
        assert find(By.ID, "threshold-line")
    elif task == "copy_detection":
        bars = find(By.CSS_SELECTOR, "#evidence-pdf rect.bar")
        assert len(bars) == 6 and len(find(By.CSS_SELECTOR, "#evidence-pdf rect.chosen")) == 1
        assert sum(float(b.get_attribute("data-p")) for b in bars) == pytest.approx(1, abs=1e-4)
    elif task == "copyright":
        picture = driver.find_element(By.ID, "artifact")
        assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", picture) > 0
        assert find(By.ID, "score-marker") and find(By.ID, "threshold-line")
    elif task == "gallery":
        matches = find(By.CSS_SELECTOR, "#gallery-matches li.match")
        assert len(matches) == 4  # the top 4, each a gallery picture with its level
        for match in matches:
            picture = match.find_element(By.CSS_SELECTOR, "img.thumb")
            assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", picture) > 0
            assert 0 <= float(match.get_attribute("data-level")) <= 5 and "level " in match.text
        assert "against the gallery's " in driver.find_element(By.CSS_SELECTOR, ".answer .verdict").text
    else:
        marker = driver.find_element(By.ID, "pvalue-marker")
        assert 0 <= float(marker.get_attribute("data-value")) <= 1
        # the loss against the model's own calibration losses (one box), with the test's critical loss
        drawing = driver.find_element(By.ID, "evidence-distribution")
        assert drawing.get_attribute("data-column") == "loss"
        assert len(find(By.CSS_SELECTOR, "#evidence-distribution rect.box")) == 1
        assert float(driver.find_element(By.ID, "score-marker").get_attribute("data-value")) > 0
        assert float(driver.find_element(By.ID, "threshold-line").get_attribute("data-value")) > 0


@pytest.mark.parametrize(("model", "task", "flag"), [
    ("CNNDetector", "fake_detection", "TINY"),
    ("PDFEmbedding", "copy_detection", "UNTRAINED"),
    ("CGIDM", "copyright", "UNCALIBRATED"),
    ("InversionAttribution", "attribution", "TINY"),
    ("gallery", "gallery", "TINY"),
])
def test_each_task_page_shows_the_verdict_and_its_evidence(server, browser, photographs, model, task, flag,
                                                          tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    browser.set_window_size(1280, 1000)
    browser.get(f"{server}/ui/{model}")
    wait = WebDriverWait(browser, 60)
    wait.until(ready.visibility_of_element_located((By.ID, "ask")))
    banner = browser.find_element(By.ID, "banner")
    assert banner.is_displayed() and flag in banner.text  # the banner that cannot be missed
    zones = browser.find_elements(By.CSS_SELECTOR, ".drop[tabindex='0']")  # reachable from the keyboard
    if task == "copy_detection":
        assert len(zones) == 2
        browser.find_element(By.ID, "generated").send_keys(str(photographs["astronaut"]))
        browser.find_element(By.ID, "real").send_keys(str(photographs["coffee"]))
    else:
        assert len(zones) == 1
        browser.find_element(By.ID, "images").send_keys(str(photographs["astronaut"]))
    browser.find_element(By.ID, "submit").click()
    verdict = wait.until(ready.visibility_of_element_located((By.CSS_SELECTOR, ".answer .verdict")))
    assert verdict.text and not verdict.text.startswith("Not scored"), verdict.text
    heading = browser.find_element(By.CSS_SELECTOR, ".answer h2").text
    shown = NAME.removesuffix(".png") if task == "gallery" else NAME  # a gallery row's id: zoo match's, no suffix
    # shown, not parsed
    assert shown in heading and not browser.find_elements(By.CSS_SELECTOR, ".answer h2 b, .answer h2 i")
    _evidence(browser, task)
    assert browser.find_element(By.ID, "not-meant").text
    browser.save_screenshot(str(tmp_path / f"{task}-1280.png"))
    browser.set_window_size(400, 1000)
    overflow = browser.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"{overflow} px wider than a 400 px window"
    browser.save_screenshot(str(tmp_path / f"{task}-400.png"))
    assert Path(tmp_path / f"{task}-1280.png").stat().st_size > 10_000
