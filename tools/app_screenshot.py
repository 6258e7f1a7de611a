"""Screenshot of ``miro-app`` serving a real model, for the README (``make app-screenshot``).

The browser test (tests/test_app_browser.py) drives the app on a tiny random-weight model, whose images
are noise; this tool drives the same page on a trained model (by default the one ``make demo`` exports)
so the picture shows what a user sees: one slider per reward, and the same seeds generated at two reward
settings side by side (A: every target at 10; B: every target at 0). It uses the same pieces as the
test: :func:`miro.app.launch` on a free loopback port, Debian's chromium through Playwright's Python
package (no browser download), every request to another address aborted.

    python tools/app_screenshot.py --checkpoint demo/train/shapes/export --out docs/app.png
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

TIMEOUT_MS = 300_000


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="app_screenshot", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="demo/train/shapes/export", help="model directory or Hub id")
    p.add_argument("--out", default="docs/app.png", help="where the PNG goes")
    p.add_argument("--prompt", default="a red circle and a blue square")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, default=4, help="images per setting")
    p.add_argument("--chromium", default=os.environ.get("MIRO_CHROMIUM", "/usr/bin/chromium"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not Path(args.chromium).is_file():
        print(f"app_screenshot: error: no browser at {args.chromium}: apt-get install chromium",
              file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    from miro.app import AppModel, launch
    from miro.hub import resolve_model_dir
    from miro.pipeline import MiroPipeline
    from miro.utils.browser import free_port, launch_chromium

    model_dir = resolve_model_dir(args.checkpoint)
    model = AppModel(MiroPipeline.from_pretrained(model_dir), args.checkpoint, max_images=args.n)
    port = free_port()
    app = launch(model, "127.0.0.1", port, block=False)
    blocked: list[str] = []

    out = Path(args.out)
    try:
        with sync_playwright() as playwright, tempfile.TemporaryDirectory() as profile:
            context = launch_chromium(playwright, profile, args.chromium, blocked)
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(f"http://127.0.0.1:{port}")
            page.locator("#generate").wait_for()
            page.locator("#prompt textarea").fill(args.prompt)
            page.locator("#seed input").fill(str(args.seed))
            page.locator("#n-images input[type=number]").fill(str(args.n))
            page.locator("#n-images input[type=number]").press("Enter")
            page.locator("#side-by-side input[type=checkbox]").check()
            for name in model.reward_names:  # setting B: every target at 0; setting A keeps 10
                page.locator(f"#target-b-{name} input[type=range]").fill("0")
            start = time.perf_counter()
            page.locator("#generate").click()
            page.locator("#status").get_by_text(f"Generated {2 * args.n} image(s)").wait_for()
            seconds = time.perf_counter() - start
            page.wait_for_function(
                "n => document.querySelectorAll('#gallery-b img').length >= n", arg=args.n, timeout=TIMEOUT_MS
            )
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(out.name + ".tmp.png")
            page.screenshot(path=str(tmp), full_page=True)
            tmp.replace(out)
            context.close()
    finally:
        app.close()
        model.close()
    if blocked:
        print(f"app_screenshot: error: the page tried to leave the loopback address: {blocked[:3]}",
              file=sys.stderr)
        return 1
    print(f"{2 * args.n} images in {seconds:.1f} s (request to gallery, in the browser); screenshot: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
