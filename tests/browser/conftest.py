"""A real `nanonet serve` on a free loopback port, and Debian's Chromium driven by Playwright.

Chromium comes from apt (`apt-get install -y chromium fonts-dejavu-core`; `.ci/run` does it),
never from `playwright install`. Screenshots, the browser console and the server's log go to one
artifacts folder: NANONET_BROWSER_ARTIFACTS, or a fresh temporary folder whose path is printed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from bench.server import Server, embedded_server

ROOT = Path(__file__).resolve().parents[2]
DATASETS = ROOT.parent / "shared" / "datasets"
# One backbone and no augmented views keep training to seconds on a CPU; the walk is about the
# web form, the choice among backbones has its own tests.
SERVER_ENV = {
    "NANONET_BACKBONES": "efficientnet_lite2",
    "NANONET_AUGMENT_VIEWS": "0",
    "NANONET_TORCH_THREADS": "1",  # leave a core to the browser while the server trains
    "NANONET_URL_ALLOW_PRIVATE": "true",  # the walk's webhook receiver is on loopback
}
CHROMIUM_CANDIDATES = ("chromium", "/usr/bin/chromium", "/usr/lib/chromium/chromium")
CSP_REPORTER = """document.addEventListener("securitypolicyviolation", function (event) {
  console.error("CSP violation: " + event.violatedDirective + " blocked " + event.blockedURI +
                " at " + event.sourceFile + ":" + event.lineNumber);
});"""


@dataclass
class Artifacts:
    """Numbered full-page screenshots of a walk, in the folder every message names."""

    folder: Path
    taken: list[Path] = field(default_factory=list)

    def shot(self, page: Page, name: str) -> Path:
        path = self.folder / f"{len(self.taken) + 1:02d}-{name}.png"
        # Generous: a training job in the server can keep both cores of a small machine busy.
        page.screenshot(path=str(path), full_page=True, timeout=120_000)
        self.taken.append(path)
        return path

    def note(self, message: str) -> str:
        """`message` with where to look: the screenshots and console here, the log above."""
        return (f"{message}\n(screenshots and browser console in {self.folder}, the server's "
                f"log in {self.folder.parent})")


def report(line: str) -> None:
    """A line for whoever runs the suite with -s: where the screenshots are, what was seen."""
    print(line, flush=True)  # noqa: T201


def chromium_executable() -> str:
    """Debian's Chromium (NANONET_CHROMIUM overrides); fails the run loudly when it is absent."""
    wanted = os.environ.get("NANONET_CHROMIUM")
    for candidate in ([wanted] if wanted else CHROMIUM_CANDIDATES):
        found = shutil.which(candidate)
        if found:
            return found
    pytest.fail(
        f"Chromium not found ({wanted or ', '.join(CHROMIUM_CANDIDATES)}). The browser tests "
        "drive Debian's Chromium: install it with `apt-get install -y chromium "
        "fonts-dejavu-core` (.ci/run does this), or point NANONET_CHROMIUM at a Chromium "
        "binary. Do not run `playwright install`.",
        pytrace=False,
    )


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    chosen = os.environ.get("NANONET_BROWSER_ARTIFACTS")
    if chosen:
        folder = Path(chosen)
        folder.mkdir(parents=True, exist_ok=True)
    else:
        folder = Path(tempfile.mkdtemp(prefix="nanonet-browser-"))
    report(f"\nbrowser test artifacts: {folder}")
    return folder


@pytest.fixture(scope="session")
def server(artifacts_dir: Path) -> Iterator[Server]:
    """The real app as a person runs it (`nanonet serve`), with a fresh data dir."""
    try:
        with embedded_server(SERVER_ENV, log_path=artifacts_dir / "server.log") as running:
            yield running
    except RuntimeError as exc:  # it did not start: say why, with its log, not a traceback
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    executable = chromium_executable()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=executable, headless=True,
            args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def artifacts(artifacts_dir: Path, request: pytest.FixtureRequest) -> Artifacts:
    folder = artifacts_dir / request.node.name
    folder.mkdir(parents=True, exist_ok=True)
    return Artifacts(folder)


@pytest.fixture
def page(browser: Browser, server: Server, artifacts: Artifacts) -> Iterator[Page]:
    """A fresh browser context on the server; its console and uncaught errors are kept."""
    context = browser.new_context(base_url=server.url, viewport={"width": 1280, "height": 900})
    # Every CSP refusal reaches the console (init scripts run whatever the page's CSP says).
    context.add_init_script(CSP_REPORTER)
    page = context.new_page()
    console: list[str] = []
    page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
    page.on("pageerror", lambda error: console.append(f"uncaught: {error}"))
    try:
        yield page
    finally:
        try:
            artifacts.shot(page, "last")
        finally:
            (artifacts.folder / "console.log").write_text("\n".join(console) + "\n")
            context.close()
    uncaught = [line for line in console if line.startswith("uncaught: ")]
    assert not uncaught, artifacts.note(f"JavaScript errors on the page: {uncaught}")
    refused = [line for line in console
               if "CSP violation" in line or "Content Security Policy" in line]
    assert not refused, artifacts.note(f"the CSP refused something on the page: {refused}")
