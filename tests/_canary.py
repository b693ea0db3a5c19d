"""Canaries: unique values planted in a private frame, and a search of everything a user can see for them.

Column names, declared bounds and declared categories are public metadata and may appear anywhere; the
values below are data and must never leave the private frame. The numbers have eight significant digits
and lie far above every declared bound (and above any sum the frame's releases can reach), so that no
DP value can print them by chance, in any format (repr, ``:g``, ``:.4g``, thousands separators).
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import struct
import traceback
from pathlib import Path

import numpy as np
import pandas as pd

# Strings: a free-text value, a category value nobody declared, a value that appears once, a name.
NOTE_CANARY = "ZebulonQuixote"
WARD_CANARY = "xylophonicward"
CITY_CANARY = "Quuxvillezz"
NAME_CANARY = "Wilhelmina Canaryfeather"
STRING_CANARIES = (NOTE_CANARY, WARD_CANARY, CITY_CANARY, NAME_CANARY)

# Numbers: in a bounded numeric column, in a column whose bounds are estimated, an identifier.
AGE_CANARY = 91734662.851
WEIGHT_CANARY = 58213904.17
ID_CANARY = 86420973
NUMBER_CANARIES = (AGE_CANARY, WEIGHT_CANARY, ID_CANARY)

BOUNDS = {"age": (0, 110), "stay": (0, 60)}
CATEGORIES = {"ward": ["cardio", "onco", "ortho"], "sex": ["F", "M"]}


def _number_patterns(value: float) -> list[re.Pattern]:
    digits = f"{abs(value):.12e}".replace(".", "")[:8]  # the eight leading significant digits
    mantissa, exponent = f"{abs(value):e}".split("e")
    grouped = f"{int(abs(value)):,}"[:8]
    return [
        re.compile(re.escape(digits)),                                     # 91734662.851, 91734662
        re.compile(re.escape(mantissa[:4]) + r"\d*[eE]\+?0*" + str(int(exponent))),  # 9.173e+07, 9.17347E7
        re.compile(re.escape(grouped)),                                    # 91,734,662
    ]


PATTERNS = [(text, re.compile(re.escape(text), re.IGNORECASE)) for text in STRING_CANARIES]
PATTERNS += [(str(value), pattern) for value in NUMBER_CANARIES for pattern in _number_patterns(value)]


def canary_frame(n: int = 300, seed: int = 11) -> pd.DataFrame:
    """A small hospital table holding every canary exactly once."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "patient_id": np.arange(1000, 1000 + n),
        "full_name": [f"person {i}" for i in range(n)],
        "age": rng.uniform(18, 90, n).round(1),
        "weight": rng.uniform(40, 120, n).round(1),
        "stay": rng.integers(1, 30, n),
        "ward": rng.choice(["cardio", "onco", "ortho"], n),
        "sex": rng.choice(["F", "M"], n),
        "note": rng.choice(["fine", "ok", "stable"], n),
        "city": rng.choice(["north", "south"], n),
    })
    frame.loc[5, "age"] = AGE_CANARY
    frame.loc[6, "weight"] = WEIGHT_CANARY
    frame.loc[7, "ward"] = WARD_CANARY
    frame.loc[8, "note"] = NOTE_CANARY
    frame.loc[9, "city"] = CITY_CANARY
    frame.loc[10, "patient_id"] = ID_CANARY
    frame.loc[11, "full_name"] = NAME_CANARY
    return frame


def find_canaries(text: str) -> list[str]:
    """The canaries found in ``text`` (empty when it leaks nothing)."""
    return sorted({name for name, pattern in PATTERNS if pattern.search(text)})


def assert_no_canary(text: str, where: str) -> None:
    found = find_canaries(text)
    if found:
        hit = next(p for n, p in PATTERNS if n in found).search(text)
        context = text[max(0, hit.start() - 200):hit.end() + 200] if hit else ""
        raise AssertionError(f"canary {found} leaked in {where}:\n...{context}...")


def exception_text(error: BaseException | None) -> str:
    """The formatted traceback of ``error`` and the message of every exception chained to it.

    The chain is read whole (also contexts a ``from None`` hides from the traceback): an exception
    object stays reachable from the notebook (``sys.last_value.__context__``).
    """
    if error is None:
        return ""
    parts = ["".join(traceback.format_exception(error))]
    seen, stack = set(), [error]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        parts.append(f"{type(current).__name__}: {current!s} {current.args!r}")
        render = getattr(current, "_render_traceback_", None)
        if callable(render):
            parts.append("\n".join(render()))
        stack += [current.__cause__, current.__context__]
    return "\n".join(parts)


def ledger_text(path: Path) -> str:
    """The ledger as SQL, plus its raw bytes (and those of its WAL) decoded leniently."""
    parts = []
    with sqlite3.connect(path) as connection:
        parts += list(connection.iterdump())
    connection.close()
    for file in sorted(Path(path).parent.glob(Path(path).name + "*")):
        parts.append(file.read_bytes().decode("latin-1"))
    return "\n".join(parts)


def ledger_holds_binary_canary(path: Path) -> list[float]:
    """Number canaries stored as binary floats or integers anywhere in the ledger's files."""
    found = []
    blobs = b"".join(file.read_bytes() for file in Path(path).parent.glob(Path(path).name + "*"))
    for value in NUMBER_CANARIES:
        encodings = [struct.pack(">d", float(value)), struct.pack("<d", float(value))]
        if float(value).is_integer():
            encodings += [int(value).to_bytes(8, "big"), int(value).to_bytes(8, "little")]
        if any(e in blobs for e in encodings):
            found.append(value)
    return found


def payload_text() -> str:
    from jupyter_dpmagic.live import payload
    from jupyter_dpmagic.session import get_session

    return json.dumps(payload(get_session(), reason="state"), default=str)


def log_text(records: list[logging.LogRecord]) -> str:
    return "\n".join(f"{r.name} {r.levelname} {r.getMessage()} {r.exc_text or ''}" for r in records)
