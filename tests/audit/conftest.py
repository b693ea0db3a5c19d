"""The privacy audits share tests/_stats.py with the noise-scale tests one directory up."""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = str(Path(__file__).resolve().parent.parent)
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

from _stats import fast_ledger  # noqa: E402,F401  (the fixture, for every audit module)
