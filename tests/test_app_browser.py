"""The explorer in a real browser: `streamlit run app/main.py` driven by Playwright through Debian's Chromium.

Playwright never downloads a browser here: it launches /usr/bin/chromium, and the test skips (with
the reason) only when that binary is absent. The screenshot lands in the test's tmp_path and, when
``$NORMPROBE_TEST_ARTIFACTS`` is set, is copied there.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
STARTUP_SECONDS = 90
IMAGES_MS = 120_000
"""Playwright waits (ms): the first page also pays for the app's imports and opening the dataset, on a shared CPU."""
PER_ROW = 8
"""The exemplar grids' default number of images per row."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"streamlit exited with {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"streamlit did not answer within {STARTUP_SECONDS} s:\n{log.read_text()}")


def _listening_addresses(port: int) -> set[str]:
    """The local addresses of the sockets listening on ``port``, from /proc/net/tcp and tcp6."""
    found = set()
    for table in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")):
        if not table.exists():
            continue
        for line in table.read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A = LISTEN
                if len(address) == 8:
                    found.add(socket.inet_ntop(socket.AF_INET, bytes.fromhex(address)[::-1]))
                else:  # tcp6: four little-endian 32-bit words
                    words = bytes.fromhex(address)
                    raw = b"".join(words[i : i + 4][::-1] for i in range(0, 16, 4))
                    found.add(socket.inet_ntop(socket.AF_INET6, raw))
    return found


@pytest.fixture
def app_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent: install Debian's browser with `apt-get install -y chromium`")
    analyzed_results: Path = request.getfixturevalue("analyzed_results")  # only when the test can run
    port = _free_port()
    log = tmp_path / "streamlit.log"
    # The user's way in: `normprobe explore`, which binds the server to 127.0.0.1 by itself.
    command = [sys.executable, "-m", "normprobe", "explore", str(analyzed_results), "--port", str(port)]
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_healthy(url, process, log)
            assert _listening_addresses(port) == {"127.0.0.1"}, "the explorer must serve this machine only"
            assert "Network URL" not in log.read_text()
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _decoded_sources(page, container: str, count: int, other_than: list[str] | None = None) -> list[str]:
    """``src`` of the ``count`` images in a keyed container once all are decoded with a non-zero natural size
    (and, with ``other_than``, once they are not those images any more: Streamlit streams a rerun in)."""
    selector = f".st-key-{container} img"
    page.wait_for_function(
        """([sel, count, before]) => {
            const imgs = [...document.querySelectorAll(sel)];
            return imgs.length === count && imgs.every(i => i.complete && i.naturalWidth > 0 && i.naturalHeight > 0)
                && (before === null || imgs.map(i => i.src).join() !== before.join());
        }""",
        arg=[selector, count, other_than],
        timeout=IMAGES_MS,
    )
    return page.eval_on_selector_all(selector, "imgs => imgs.map(i => i.src)")


def _wait_for_captions(page, container: str, prefix: str) -> None:
    """Until the container's ``PER_ROW`` captions all start with ``prefix`` (the class name)."""
    page.wait_for_function(
        """([sel, count, prefix]) => {
            const texts = [...document.querySelectorAll(sel)].map(c => c.innerText.trim());
            return texts.length === count && texts.every(t => t.startsWith(prefix));
        }""",
        arg=[f".st-key-{container} [data-testid=stCaptionContainer]", PER_ROW, prefix],
    )


def test_exemplar_grid_shows_decoded_images_and_follows_the_class(app_url: str, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1600})
            page.set_default_timeout(IMAGES_MS)
            page.goto(f"{app_url}/?section=Exemplars")  # the open section is part of the URL
            first = _decoded_sources(page, "exemplars-highest", PER_ROW)
            assert page.get_by_role("tab", name="Exemplars").get_attribute("aria-selected") == "true"
            sizes = page.eval_on_selector_all(
                ".st-key-exemplars-highest img", "imgs => imgs.map(i => [i.naturalWidth, i.naturalHeight])"
            )
            assert all(w >= 32 and h >= 32 for w, h in sizes), sizes
            assert len(set(first)) == PER_ROW  # eight different pictures, not one repeated
            _wait_for_captions(page, "exemplars-highest", "airplane · ")
            _decoded_sources(page, "exemplars-lowest", PER_ROW)

            page.locator(".st-key-exemplar-class").click()
            page.get_by_role("option", name="automobile (1)").click()
            second = _decoded_sources(page, "exemplars-highest", PER_ROW, other_than=first)
            assert not set(second) & set(first)
            _wait_for_captions(page, "exemplars-highest", "automobile · ")

            shot = tmp_path / "explorer_exemplars.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    artifacts = os.environ.get("NORMPROBE_TEST_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy2(shot, Path(artifacts) / shot.name)
    assert shot.stat().st_size > 0
