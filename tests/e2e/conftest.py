"""Fixtures of the real-browser tests: a JupyterLab server of their own and Chromium driven by Playwright."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from _lab import CHROMIUM, EXTENSION, Lab, LabServer, launch_browser, needs


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "browser: drives JupyterLab in a real Chromium (needs /usr/bin/chromium, playwright and the built "
        "labextension; skipped without them unless DPMAGIC_REQUIRE_BROWSER / DPMAGIC_REQUIRE_LABEXTENSION is set)",
    )


@pytest.fixture
def browser_requirements():
    """Skip (or fail, when CI asks for the browser test) if something the test needs is missing."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        needs(False, "the Python package playwright is not installed (it is in the 'test' extra)",
              "DPMAGIC_REQUIRE_BROWSER")
    needs(Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK),
          f"{CHROMIUM} is missing (apt-get install -y chromium)", "DPMAGIC_REQUIRE_BROWSER")
    needs((EXTENSION / "package.json").is_file(),
          f"the labextension is not built ({EXTENSION / 'package.json'} is missing)",
          "DPMAGIC_REQUIRE_LABEXTENSION", "DPMAGIC_REQUIRE_BROWSER")


@pytest.fixture
def lab_server(browser_requirements, tmp_path):
    """A JupyterLab server on 127.0.0.1 whose kernels charge a ledger in ``tmp_path``."""
    server = LabServer(tmp_path)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def lab(lab_server, tmp_path):
    """A Chromium page (fresh profile) on the server, wrapped in the user actions of ``_lab.Lab``."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = launch_browser(playwright, tmp_path / "chromium-profile")
        try:
            page = context.pages[0] if context.pages else context.new_page()
            yield Lab(page, lab_server)
        finally:
            context.close()
