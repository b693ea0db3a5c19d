"""What travels between a kernel and a steward: plain JSON for plans, releases and budgets.

Only the kinds named here can be decoded (plan nodes, released outcomes, budget records...), never
arbitrary objects: a message is data, not code. Numbers that JSON cannot hold (NaN, infinities),
tuples, numpy arrays and timestamps are tagged as :mod:`jupyter_dpmagic.plan` tags them.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np

from . import plan
from .accountant import BudgetStatus
from .explain import Explanation
from .ledger import BudgetRecord, ChainProblem, ChainReport, ChargeRecord
from .measures import Outcome
from .release import ReleaseInfo
from .session import Released

__all__ = ["encode", "decode", "dumps", "loads"]

_KINDS = {cls.__name__: cls for cls in (
    Outcome, ReleaseInfo, Released, Explanation, BudgetStatus, BudgetRecord, ChargeRecord, ChainProblem, ChainReport)}


def encode(value: Any) -> Any:
    """JSON-able data for ``value`` (a plan node, a release's parts, a budget record...)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        kind = type(value).__name__
        if kind not in _KINDS and kind not in plan._KINDS:
            raise TypeError(f"{kind} is not sent to or from a steward")
        out = {"kind": kind}
        for field in dataclasses.fields(value):
            out[field.name] = encode(getattr(value, field.name))
        return out
    if isinstance(value, np.ndarray):
        return {"kind": "array", "items": [encode(item) for item in value.tolist()]}
    if isinstance(value, tuple):
        return {"kind": "tuple", "items": [encode(item) for item in value]}
    if isinstance(value, list):
        return [encode(item) for item in value]
    if isinstance(value, dict):
        return {"kind": "dict", "items": [[encode(k), encode(v)] for k, v in value.items()]}
    return plan.to_dict(value)


def decode(data: Any) -> Any:
    """The inverse of :func:`encode`; refuses every kind it does not know."""
    if isinstance(data, list):
        return [decode(item) for item in data]
    if not isinstance(data, dict):
        return data
    kind = data.get("kind")
    if kind == "array":
        return np.asarray([decode(item) for item in data["items"]], dtype=float)
    if kind == "tuple":
        return tuple(decode(item) for item in data["items"])
    if kind == "dict":
        return {decode(k): decode(v) for k, v in data["items"]}
    cls = _KINDS.get(kind)
    if cls is None:
        return plan.from_dict(data)
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: decode(v) for k, v in data.items() if k in names})


def dumps(value: Any) -> bytes:
    return json.dumps(encode(value), allow_nan=False, separators=(",", ":")).encode()


def loads(body: bytes | str) -> Any:
    return decode(json.loads(body))
