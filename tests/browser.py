"""Headless Chromium for the browser tests: Debian's `chromium`, driven by Playwright, pages opened offline.

Never a browser of Playwright's own (`playwright install` downloads one): `make browser`, run by `make test`,
installs Debian's chromium with apt-get, and where it is missing the browser tests are skipped and say why.
Tests get the browser from the `browser` fixture (tests/conftest.py). By hand, on any report:
    python -m tests.pipeline.test_report reports/index.html /tmp/report.png    # what the report's browser test sees
    python -m tests.pipeline.test_explorer reports/index.html /tmp/shots       # the explorer's: timings, screenshots
"""
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright

NO_CHROMIUM = ("Debian's chromium is not installed and could not be (`make test` installs it as root "
               "with apt-get install -y chromium)")


@contextmanager
def launch() -> Iterator[Browser]:
    """Debian's chromium, headless; every request it would send goes to a proxy where nothing listens."""
    binary = shutil.which("chromium")
    if binary is None:
        raise FileNotFoundError(NO_CHROMIUM)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=binary, proxy={"server": "http://127.0.0.1:9"},
                                             args=["--disable-gpu", "--disable-quic"])
        yield browser
        browser.close()


@contextmanager
def open_page(browser: Browser, html: Path, width: int = 1280, height: int = 900) -> Iterator[tuple[Page, dict]]:
    """`html` loaded with the network off in a fresh `width` x `height` window, its first frames drawn; and
    what the page did, kept up to date: every request, and every console error (error log entries, a failed
    load, included) and uncaught exception."""
    seen = {"requests": [], "console_errors": []}

    def console(message: ConsoleMessage) -> None:
        if message.type in ("error", "assert"):
            where = message.location
            seen["console_errors"].append(f"{message.type}: {message.text} ({where['url'][:80]}:{where['lineNumber']})")

    context = browser.new_context(viewport={"width": width, "height": height}, offline=True)
    try:
        page = context.new_page()
        page.on("request", lambda request: seen["requests"].append(request.url[:80]))
        page.on("console", console)
        page.on("pageerror", lambda error: seen["console_errors"].append(f"exception: {error}"))
        page.goto(Path(html).resolve().as_uri())
        next_frames(page)       # the map's first drawing is done
        yield page, seen
    finally:
        context.close()


def next_frames(page: Page) -> None:
    """Wait for two animation frames: what the page scheduled for the next frame is drawn."""
    page.evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
