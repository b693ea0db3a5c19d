"""A JupyterLab server started for one test, and the few things a user does in it, driven through Chromium.

Everything here goes through the real user interface (clicks, keys, menus); only reading the sidebar's
state uses the page's DOM.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]
EXTENSION = PROJECT / "jupyter_dpmagic" / "labextension"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
]
VIEWPORT = {"width": 1400, "height": 900}
TIMEOUT_MS = 30_000
SERVER_START_SECONDS = 60
PANEL_ID = "jupyter-dpmagic-budget"


def needs(ok: bool, reason: str, *required_by: str) -> None:
    """Skip the test when ``ok`` is false, or fail it when one of the ``required_by`` variables is set."""
    if ok:
        return
    forced = [name for name in required_by if os.environ.get(name)]
    if forced:
        pytest.fail(f"{reason}, and {forced[0]} is set", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _children(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (kernels started by the server), from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        parents[int(entry.name)] = int(stat[stat.rindex(")") + 2:].split()[1])
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for child, its_parent in parents.items():
            if its_parent == parent:
                found.append(child)
                todo.append(child)
    return found


def _signal_alive(pids, sig) -> None:
    """Send ``sig`` to each of ``pids`` still alive (one may end between the check and the signal)."""
    for pid in pids:
        if _alive(pid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LabServer:
    """``python -m jupyterlab`` on 127.0.0.1 with its own root, settings, workspaces, runtime dir and ledger.

    The checkout's built labextension is served through ``LabApp.extra_labextensions_path``, so the
    test sees the build in this checkout whatever is installed in the environment.
    """

    def __init__(self, base: Path) -> None:
        self.base = base
        self.root = base / "notebooks"
        self.ledger = base / "ledger.sqlite"
        self.log_path = base / "jupyterlab.log"
        self.token = secrets.token_hex(24)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self._log = None

    def start(self) -> None:
        for name in ("notebooks", "config", "runtime", "settings", "workspaces", "ipython", "labextensions"):
            (self.base / name).mkdir(parents=True, exist_ok=True)
        if (EXTENSION / "package.json").is_file():
            name = json.loads((EXTENSION / "package.json").read_text())["name"]
            link = self.base / "labextensions" / name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(EXTENSION, target_is_directory=True)
        config = {
            "IdentityProvider": {"token": self.token},
            "ServerApp": {"ip": "127.0.0.1", "port": self.port, "port_retries": 0, "open_browser": False,
                          "allow_root": True, "root_dir": str(self.root)},
            "LabApp": {"news_url": None, "check_for_updates_class": "jupyterlab.NeverCheckForUpdate",
                       "workspaces_dir": str(self.base / "workspaces"),
                       "user_settings_dir": str(self.base / "settings"),
                       "extra_labextensions_path": [str(self.base / "labextensions")]},
        }
        (self.base / "config" / "jupyter_server_config.json").write_text(json.dumps(config, indent=1))
        # No "Would you like to get notified about official Jupyter news?" toast over the notebook.
        notification = self.base / "settings" / "@jupyterlab" / "apputils-extension"
        notification.mkdir(parents=True, exist_ok=True)
        (notification / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))
        env = dict(os.environ)
        env.update({
            "DPMAGIC_LEDGER": str(self.ledger),  # inherited by every kernel the server starts
            "JUPYTER_CONFIG_DIR": str(self.base / "config"),
            "JUPYTER_RUNTIME_DIR": str(self.base / "runtime"),
            "JUPYTERLAB_SETTINGS_DIR": str(self.base / "settings"),
            "JUPYTERLAB_WORKSPACES_DIR": str(self.base / "workspaces"),
            "IPYTHONDIR": str(self.base / "ipython"),
            "PYTHONUNBUFFERED": "1",
        })
        command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip=127.0.0.1",
                   f"--port={self.port}", f"--ServerApp.root_dir={self.root}"]
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(command, cwd=self.root, env=env, stdout=self._log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + SERVER_START_SECONDS
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/status?token={self.token}", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"JupyterLab did not answer within {SERVER_START_SECONDS} s:\n"
                                   f"{self.log_tail()}")
            time.sleep(0.2)

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Stop the server (it shuts its kernels down), then anything it started that is still alive."""
        if self.process is None:
            return
        started = _children(self.process.pid)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        _signal_alive(started, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while any(_alive(pid) for pid in started) and time.monotonic() < deadline:
            time.sleep(0.1)
        _signal_alive(started, signal.SIGKILL)
        if self._log is not None:
            self._log.close()
        self.process = None


# ------------------------------------------------------------------------------------------- browser
READ_SIDEBAR = """(panelId) => {
    const panel = document.getElementById(panelId);
    if (!panel) { return null; }
    const visible = panel.offsetParent !== null && panel.getBoundingClientRect().width > 0;
    const datasets = Array.from(panel.querySelectorAll('.jp-dpmagic-Dataset')).map(card => ({
        name: card.getAttribute('data-dataset'),
        status: card.getAttribute('data-status'),
        protected: card.getAttribute('data-protected'),
        spent: card.getAttribute('data-epsilon-spent'),
        total: card.getAttribute('data-epsilon-total'),
        remaining: card.getAttribute('data-epsilon-remaining'),
        releases: card.getAttribute('data-releases'),
        charge_ids: Array.from(card.querySelectorAll('.jp-dpmagic-Release'))
            .map(row => row.getAttribute('data-charge-id')),
    }));
    return {
        visible,
        state: panel.getAttribute('data-state'),
        notebook: panel.getAttribute('data-notebook'),
        sent_at: panel.getAttribute('data-sent-at'),
        rendered_at: panel.getAttribute('data-rendered-at'),
        empty: panel.querySelectorAll('.jp-dpmagic-Empty').length,
        datasets,
        text: panel.innerText.slice(0, 2000),
    };
}"""


class Lab:
    """One Chromium page on the server: opening notebooks, running cells, the kernel menu, the sidebar."""

    def __init__(self, page, server: LabServer) -> None:
        self.page = page
        self.server = server
        self.workspace = f"e2e-{uuid.uuid4().hex[:12]}"
        self.console: list[str] = []
        page.on("console", lambda message: self.console.append(f"{message.type}: {message.text}")
                if message.type in ("error", "warning") else None)
        page.on("pageerror", lambda error: self.console.append(f"pageerror: {error}"))
        # Leaving a page with unsaved notebooks asks first; a reload must not stop at that question.
        page.on("dialog", lambda dialog: dialog.accept())
        page.set_default_timeout(TIMEOUT_MS)

    # ---------------------------------------------------------------------------------- notebooks
    def open(self, path: str) -> None:
        """Load JupyterLab in a fresh workspace showing ``path``; wait until its kernel is idle."""
        self.page.goto(f"{self.server.url}/lab/workspaces/{self.workspace}/tree/{path}"
                       f"?reset&token={self.server.token}")
        self.wait_for_tab(path)
        self.wait_idle()

    def reload(self) -> None:
        self.page.reload()
        self.page.locator("#jp-main-dock-panel").wait_for()
        self.wait_idle()

    def current_panel(self):
        """The notebook panel of the main area's current tab."""
        tab = self.page.locator("#jp-main-dock-panel .lm-TabBar-tab.lm-mod-current").first
        tab.wait_for()
        return self.page.locator(f'[id="{tab.get_attribute("data-id")}"]')

    def wait_for_tab(self, name: str) -> None:
        self.page.locator("#jp-main-dock-panel .lm-TabBar-tab.lm-mod-current .lm-TabBar-tabLabel",
                          has_text=re.compile(rf"^{re.escape(name)}$")).wait_for()

    def wait_idle(self) -> None:
        """Wait until the current notebook's kernel is connected and idle (the toolbar's indicator)."""
        panel = self.current_panel()
        panel.locator(".jp-Notebook").wait_for()
        panel.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]').wait_for()
        self.page.locator(".jp-StatusBar-Widget", has_text="Idle").first.wait_for()

    def open_from_file_browser(self, name: str) -> None:
        """Double-click ``name`` in the file browser (opened if needed); wait until its kernel is idle."""
        listing = self.page.locator(".jp-DirListing-content")
        if not listing.is_visible():
            self.page.locator('.lm-TabBar-tab[data-id="filebrowser"]').click()
        item = self.page.locator(".jp-DirListing-item", has=self.page.locator(
            ".jp-DirListing-itemText", has_text=re.compile(rf"^{re.escape(name)}$")))
        item.dblclick()
        self.wait_for_tab(name)
        self.wait_idle()

    def switch_to(self, name: str) -> None:
        """Click the main-area tab of ``name``."""
        self.page.locator("#jp-main-dock-panel .lm-TabBar-tab", has=self.page.locator(
            ".lm-TabBar-tabLabel", has_text=re.compile(rf"^{re.escape(name)}$"))).click()
        self.wait_for_tab(name)
        self.wait_idle()

    def run_cell(self, code: str) -> str:
        """Type ``code`` into the current notebook's last cell (a new one if that is not empty), run it
        with Shift+Enter and wait until it has finished; returns the cell's output text."""
        panel = self.current_panel()
        cells = panel.locator(".jp-Notebook .jp-Cell")
        count = cells.count()
        last = cells.nth(count - 1)
        if last.locator(".cm-content").inner_text().strip():
            last.locator(".cm-content").click()
            self.page.keyboard.press("Escape")
            self.page.keyboard.press("b")
            cells.nth(count).wait_for()
            count += 1
            last = cells.nth(count - 1)
        last.locator(".cm-content").click()
        self.page.keyboard.insert_text(code)
        self.page.keyboard.press("Shift+Enter")
        prompt = last.locator(".jp-InputArea-prompt")
        deadline = time.monotonic() + TIMEOUT_MS / 1000
        while not re.fullmatch(r"\[\d+\]:", prompt.inner_text().strip()):
            if time.monotonic() > deadline:
                raise AssertionError(f"the cell {code!r} did not finish within {TIMEOUT_MS / 1000:.0f} s "
                                     f"(prompt {prompt.inner_text()!r})")
            self.page.wait_for_timeout(50)
        self.wait_idle()
        return last.locator(".jp-Cell-outputArea").inner_text()

    def restart_kernel(self) -> None:
        """Kernel menu, "Restart Kernel…", confirm; wait until the new kernel is idle."""
        self.page.locator(".lm-MenuBar-item", has_text=re.compile(r"^Kernel$")).click()
        self.page.locator(".lm-Menu-item:not(.lm-mod-disabled)",
                          has_text=re.compile(r"^Restart Kernel…")).first.click()
        dialog = self.page.locator(".jp-Dialog")
        dialog.locator(".jp-Dialog-button", has_text=re.compile(r"^Restart$")).click()
        dialog.wait_for(state="detached")
        self.wait_idle()

    # ---------------------------------------------------------------------------------- sidebar
    def sidebar(self) -> dict | None:
        return self.page.evaluate(READ_SIDEBAR, PANEL_ID)

    def open_sidebar(self) -> dict:
        """Click the "Privacy budget" tab of the right sidebar unless its panel is already shown."""
        tab = self.page.locator(f'.lm-TabBar-tab[data-id="{PANEL_ID}"]')
        tab.wait_for()
        state = self.sidebar()
        if not (state and state["visible"]):
            tab.click()
        self.page.locator(f"#{PANEL_ID}.jp-dpmagic-Panel").wait_for(state="visible")
        return self.sidebar()

    def widen_right_sidebar(self, width: int) -> None:
        """Drag the handle between the main area and the right sidebar until the sidebar is ``width`` wide."""
        panel = self.page.locator(f"#{PANEL_ID}")
        box = panel.bounding_box()
        handles = self.page.locator("#jp-main-split-panel > .lm-SplitPanel-handle:visible")
        nearest = min((handles.nth(i) for i in range(handles.count())),
                      key=lambda handle: abs(handle.bounding_box()["x"] - box["x"]))
        grip = nearest.bounding_box()
        x, y = grip["x"] + grip["width"] / 2, grip["y"] + grip["height"] / 2
        self.page.mouse.move(x, y)
        self.page.mouse.down()
        self.page.mouse.move(x - (width - box["width"]), y, steps=10)
        self.page.mouse.up()

    def use_theme(self, name: str, *, light: bool) -> None:
        """Settings menu, Theme, ``name``; wait until JupyterLab has applied it."""
        self.page.locator(".lm-MenuBar-item", has_text=re.compile(r"^Settings$")).click()
        self.page.locator(".lm-Menu-item", has_text=re.compile(r"^Theme$")).first.hover()
        self.page.locator(".lm-Menu-item", has_text=re.compile(rf"^{re.escape(name)}$")).first.click()
        self.page.wait_for_function("light => document.body.dataset.jpThemeLight === light",
                                    arg="true" if light else "false")

    def contrast(self) -> dict:
        """WCAG contrast ratio of each kind of text in the sidebar against the background it is drawn on."""
        return self.page.evaluate(CONTRAST, PANEL_ID)

    def wait_sidebar(self, what: str, accept: Callable[[dict], bool], timeout_ms: int = TIMEOUT_MS) -> dict:
        """Poll the sidebar's DOM until ``accept(state)``; fail with the last state seen."""
        deadline = time.monotonic() + timeout_ms / 1000
        state = None
        while True:
            state = self.sidebar()
            try:
                if state is not None and accept(state):
                    return state
            except (KeyError, TypeError, ValueError, IndexError, StopIteration):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"the sidebar did not show {what} within {timeout_ms / 1000:.0f} s; "
                                     f"it shows:\n{json.dumps(state, indent=1)}\n"
                                     f"browser console:\n" + "\n".join(self.console[-20:]))
            self.page.wait_for_timeout(50)


# Colours with transparency are blended over the background they are drawn on, as the eye sees them.
CONTRAST = """
(panelId) => {
  const rgba = text => { const v = text.match(/[\\d.]+/g).map(Number); return v.length === 3 ? [...v, 1] : v; };
  const over = (top, bottom) => top.slice(0, 3).map((c, i) => top[3] * c + (1 - top[3]) * bottom[i]);
  const background = element => {
    const layers = [];
    for (let e = element; e; e = e.parentElement) {
      const c = rgba(getComputedStyle(e).backgroundColor);
      if (c[3] > 0) { layers.push(c); if (c[3] === 1) break; }
    }
    return layers.reverse().reduce((below, layer) => over(layer, below), [255, 255, 255]);
  };
  const luminance = rgb => {
    const [r, g, b] = rgb.map(c => { c /= 255; return c <= 0.03928 ? c / 12.92 : Math.pow((c + 0.055) / 1.055, 2.4); });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  const out = {};
  for (const element of document.querySelectorAll(`#${panelId} *`)) {
    const own = [...element.childNodes].some(n => n.nodeType === Node.TEXT_NODE && n.textContent.trim());
    if (!own || !element.offsetParent) continue;
    const back = background(element);
    const fore = over(rgba(getComputedStyle(element).color), back);
    const [l1, l2] = [luminance(fore), luminance(back)].sort((a, b) => b - a);
    const key = element.className || element.tagName.toLowerCase();
    out[key] = Math.min(out[key] ?? Infinity, (l1 + 0.05) / (l2 + 0.05));
  }
  return out;
}
"""


def launch_browser(playwright, profile: Path):
    """Debian's Chromium, headless, with a fresh profile."""
    return playwright.chromium.launch_persistent_context(
        str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS, viewport=VIEWPORT)
