"""The JupyterLab sidebar's model, tested in node (labextension/test/*.test.ts via `npm test`)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

LABEXTENSION = Path(__file__).resolve().parent.parent / "labextension"
REQUIRE_ENV = "DPMAGIC_REQUIRE_LABEXTENSION"


def _missing(reason: str) -> None:
    # Where the extension must be tested (CI, release), a missing toolchain is a failure, not a skip.
    if os.environ.get(REQUIRE_ENV):
        pytest.fail(f"{reason} (and {REQUIRE_ENV} is set)")
    pytest.skip(f"{reason}; run `npm install` in labextension/ (set {REQUIRE_ENV}=1 to fail instead)")


def test_labextension_model_passes_its_node_tests():
    npm = shutil.which("npm")
    if npm is None:
        _missing("npm is not installed")
    if not (LABEXTENSION / "node_modules").is_dir():
        _missing("labextension/node_modules is missing")

    result = subprocess.run(
        [npm, "test"], cwd=LABEXTENSION, capture_output=True, text=True, timeout=600, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output

    passed = re.search(r"^# pass (\d+)$", output, re.MULTILINE)
    failed = re.search(r"^# fail (\d+)$", output, re.MULTILINE)
    assert passed and failed, f"no test summary in the output of npm test:\n{output}"
    assert int(passed.group(1)) > 0, output
    assert int(failed.group(1)) == 0, output
