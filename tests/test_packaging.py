"""The Python package ships the prebuilt JupyterLab extension: JupyterLab finds it with no node around."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILT = ROOT / "jupyter_dpmagic" / "labextension"
NAME = "jupyter-dpmagic"


@pytest.fixture(scope="module")
def built():
    if not (BUILT / "package.json").exists():
        reason = "the JupyterLab extension is not built (pip install -e . builds it when node is present)"
        if os.environ.get("DPMAGIC_REQUIRE_LABEXTENSION"):
            pytest.fail(reason)
        pytest.skip(reason)
    return json.loads((BUILT / "package.json").read_text())


def no_node_env(**extra) -> dict:
    """The environment of a machine without node: only this Python's own directory on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NODE", "NPM"))}
    env["PATH"] = str(Path(sys.executable).parent)
    return {**env, **extra}


def enabled_in(listing: str, directory: Path) -> bool:
    """Whether `jupyter labextension list` shows our extension enabled and OK under ``directory``."""
    section = listing.split(str(directory), 1)
    if len(section) < 2:
        return False
    block = re.split(r"\n(?=\S)", section[1], maxsplit=1)[0]
    return re.search(rf"{re.escape(NAME)} v\S+ enabled\s+OK", block) is not None


def labextensions(env: dict) -> str:
    done = subprocess.run([sys.executable, "-m", "jupyter", "labextension", "list"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return re.sub(r"\x1b\[[0-9;]*m", "", done.stdout + done.stderr)  # without colours


def test_the_built_extension_matches_the_python_package(built):
    import jupyter_dpmagic

    assert built["name"] == NAME and built["version"] == jupyter_dpmagic.__version__
    assert any((BUILT / "static").glob("remoteEntry.*.js"))


def test_this_install_shows_the_extension_enabled(built):
    assert enabled_in(labextensions(os.environ.copy()), Path(sys.prefix) / "share" / "jupyter" / "labextensions")


def test_the_wheel_installs_on_a_machine_without_node(built, tmp_path):
    dist, venv = tmp_path / "dist", tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)],
                   env=no_node_env(), check=True, timeout=600)
    (wheel,) = dist.glob("jupyter_dpmagic-*.whl")
    # A venv of its own: `pip install --prefix` would first uninstall this environment's copy.
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps", "-q", str(wheel)],
                   env=no_node_env(), check=True, timeout=600)
    data = venv / "share" / "jupyter"
    assert (data / "labextensions" / NAME / "install.json").exists()
    listing = labextensions(no_node_env(JUPYTER_PATH=str(data)))
    assert enabled_in(listing, data / "labextensions"), listing
