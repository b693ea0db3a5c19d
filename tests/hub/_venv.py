"""The interpreter and the proxy a hub test needs, built once and cached.

The analysts' servers and the steward run as unprivileged accounts, which cannot run an
interpreter kept under /root; :func:`shared_venv` builds a world-readable virtualenv with the
system's ``/usr/bin/python3`` instead, with the project's runtime dependencies and what a
single-user server needs. The project itself is not installed there: the test puts a copy of the
package on ``PYTHONPATH``. :func:`proxy_command` installs configurable-http-proxy with npm.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tomllib
from pathlib import Path

SYSTEM_PYTHON = "/usr/bin/python3"
VENV_ROOT = Path(os.environ.get("DPMAGIC_HUB_VENV_ROOT", "/opt"))
PROXY_VERSION = "5.3.0"
PROXY_CACHE = Path(os.environ.get("DPMAGIC_HUB_CACHE", Path.home() / ".cache" / "dpmagic-hub"))
EXTRA = ["jupyterhub==6.1.1", "jupyter_server>=2.10", "ipykernel>=6.29", "psycopg[binary]>=3.1", "pyarrow"]
PROJECT = Path(__file__).resolve().parents[2]


def requirements() -> list[str]:
    with open(PROJECT / "pyproject.toml", "rb") as handle:
        return list(tomllib.load(handle)["project"]["dependencies"]) + EXTRA


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def shared_venv() -> Path:
    """A world-readable virtualenv of /usr/bin/python3 with the test users' packages; its directory."""
    wanted = requirements()
    version = subprocess.run([SYSTEM_PYTHON, "-c", "import sys; print(sys.version)"], capture_output=True,
                             text=True, check=True).stdout.strip()
    key = hashlib.sha256(json.dumps([version, wanted]).encode()).hexdigest()[:12]
    venv = VENV_ROOT / f"dpmagic-hub-venv-{key}"
    done = venv / ".complete"
    with _locked(VENV_ROOT / f".dpmagic-hub-venv-{key}.lock"):
        if done.exists():
            return venv
        shutil.rmtree(venv, ignore_errors=True)
        try:
            subprocess.run([SYSTEM_PYTHON, "-m", "venv", str(venv)], check=True, capture_output=True, umask=0o022,
                           timeout=300)
            install = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", *wanted],
                                     capture_output=True, text=True, umask=0o022, timeout=1500)
            if install.returncode:
                raise RuntimeError(f"pip install into {venv} failed:\n{install.stdout[-3000:]}{install.stderr[-3000:]}")
        except BaseException:
            shutil.rmtree(venv, ignore_errors=True)
            raise
        # Readable and executable by everyone, whatever umask pip's own steps used.
        subprocess.run(["chmod", "-R", "a+rX", str(venv)], check=True)
        done.write_text("\n".join(wanted) + "\n")
        return venv


def proxy_command() -> str:
    """The configurable-http-proxy executable, installed from npm into a cache directory on first use."""
    prefix = PROXY_CACHE / f"chp-{PROXY_VERSION}"
    binary = prefix / "node_modules" / ".bin" / "configurable-http-proxy"
    with _locked(PROXY_CACHE / f".chp-{PROXY_VERSION}.lock"):
        if binary.exists():
            return str(binary)
        prefix.mkdir(parents=True, exist_ok=True)
        run = subprocess.run(["npm", "install", "--prefix", str(prefix), "--no-audit", "--no-fund",
                              "--loglevel=error", f"configurable-http-proxy@{PROXY_VERSION}"],
                             capture_output=True, text=True, timeout=600)
        if run.returncode or not binary.exists():
            raise RuntimeError(f"npm install configurable-http-proxy@{PROXY_VERSION} failed:\n"
                               f"{run.stdout[-3000:]}{run.stderr[-3000:]}")
        return str(binary)
