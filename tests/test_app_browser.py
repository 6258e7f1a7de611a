"""``miro-app`` in a real browser (``make test-app``; skipped by ``make test``): the app on a tiny exported
model on a free loopback port, driven by Debian's headless Chromium through Playwright.

Needs the ``app`` and ``apptest`` extras (Gradio, Playwright's Python package) and ``/usr/bin/chromium``
(``apt-get install chromium``; ``MIRO_CHROMIUM`` names another binary). Playwright never downloads a
browser here: it is pointed at that binary. Every request to an address other than 127.0.0.1 is
aborted. The screenshot is kept under ``MIRO_TEST_ARTIFACTS`` (default: pytest's temp dir) and its path
printed.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_models import export_tiny_model

from miro.pipeline import MiroPipeline
from miro.utils.browser import free_port, launch_chromium

pytestmark = pytest.mark.app

CHROMIUM = os.environ.get("MIRO_CHROMIUM", "/usr/bin/chromium")
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    from miro.app import AppModel, launch

    export = export_tiny_model(tmp_path_factory.mktemp("app") / "tiny-random" / "export", None)
    model = AppModel(MiroPipeline.from_pretrained(export), str(export), max_images=4)
    port = free_port()
    demo = launch(model, "127.0.0.1", port, block=False)
    try:
        yield f"http://127.0.0.1:{port}", export
    finally:
        demo.close()
        model.close()


@pytest.fixture(scope="module")
def browser_page(served: tuple[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} not found: make test-app needs Debian's chromium (apt-get install chromium)")
    blocked: list[str] = []
    with sync_playwright() as playwright:
        profile = str(tmp_path_factory.mktemp("chromium-profile"))
        context = launch_chromium(playwright, profile, CHROMIUM, blocked)
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(served[0])
        page.locator("#generate").wait_for()
        try:
            yield page, blocked
        finally:
            context.close()


def _artifact(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    root = Path(os.environ.get("MIRO_TEST_ARTIFACTS") or tmp_path_factory.mktemp("artifacts"))
    root.mkdir(parents=True, exist_ok=True)
    return root / name


def _gallery_images(page, gallery: str, n: int) -> list[np.ndarray]:
    """The PNGs a gallery shows, fetched from the app as the browser fetched them."""
    images = page.locator(f"#{gallery} img")
    page.wait_for_function(
        "([sel, n]) => document.querySelectorAll(sel).length >= n", arg=[f"#{gallery} img", n],
        timeout=TIMEOUT_MS,
    )
    out = []
    for i in range(n):
        src = images.nth(i).get_attribute("src")
        response = page.request.get(src if src.startswith("http") else page.url.rstrip("/") + "/" + src)
        assert response.ok, src
        out.append(np.asarray(Image.open(io.BytesIO(response.body())).convert("RGB")))
    return out


def test_empty_prompt_shows_a_message(browser_page) -> None:
    page, _ = browser_page
    page.locator("#prompt textarea").fill("")
    page.locator("#generate").click()
    page.locator("#status").get_by_text("Enter a prompt").wait_for()
    assert page.locator("#gallery-a img").count() == 0
    assert page.get_by_text("Error", exact=True).count() == 0


def test_sliders_change_the_images_for_the_same_seed(
    browser_page, served: tuple[str, Path], tmp_path_factory: pytest.TempPathFactory, capsys
) -> None:
    from miro.app import enlarged

    page, blocked = browser_page
    page.locator("#prompt textarea").fill("a red circle")
    page.locator("#seed input").fill("3")
    page.locator("#n-images input[type=number]").fill("2")
    page.locator("#n-images input[type=number]").press("Enter")
    page.locator("#side-by-side input[type=checkbox]").check()
    page.locator("#target-b-alignment").wait_for()
    slider = page.locator("#target-a-alignment input[type=range]")
    slider.fill("0")  # setting A: alignment 0; setting B keeps every target at 10
    page.locator("#generate").click()
    page.locator("#status").get_by_text("Generated 4 image(s)").wait_for(timeout=TIMEOUT_MS)
    a, b = _gallery_images(page, "gallery-a", 2), _gallery_images(page, "gallery-b", 2)
    assert a[0].shape == (24 * 11, 24 * 11, 3)  # 24 px enlarged to at least 256
    assert not np.array_equal(a[0], b[0]) and not np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], a[1])  # seeds 3 and 4
    # What the page shows is exactly MiroPipeline's image for that setting and seed.
    pipe = MiroPipeline.from_pretrained(served[1])
    expected = pipe(["a red circle"], rewards={"alignment": 0}, seed=3)[0]
    assert np.array_equal(a[0], np.asarray(enlarged(expected)))
    # Each image's JSON is downloadable and says what made it.
    links = page.locator("#records a")
    assert links.count() == 4
    href = next(h for h in (links.nth(i).get_attribute("href") for i in range(4)) if "A_seed3" in h)
    record = json.loads(page.request.get(href if href.startswith("http") else page.url + href).text())
    assert record["seed"] == 3 and record["prompt"] == "a red circle"
    assert record["rewards"]["alignment"] == 0.0 and record["rewards"]["sharpness"] == 10.0
    screenshot = _artifact(tmp_path_factory, "app.png")
    page.screenshot(path=str(screenshot), full_page=True)
    with capsys.disabled():
        print(f"\nmiro-app screenshot: {screenshot}")
    assert not blocked, f"the page tried to leave the loopback address: {blocked[:3]}"
