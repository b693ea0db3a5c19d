"""Where spending is allowed: inside ``%%dp`` cells and ``with dp.spending():`` blocks.

Outside such a scope a private frame can describe itself but releases nothing, so a stray
``df.mean()`` in an ordinary cell can never spend budget by accident.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from dataclasses import dataclass, field

from .accountant import check_delta, check_epsilon
from .errors import PolicyError

__all__ = ["Scope", "Accuracy", "spending", "current_scope"]


@dataclass
class Scope:
    """Defaults and limits of one ``%%dp`` cell or ``spending()`` block."""

    epsilon: float | None = None
    delta: float | None = None
    purpose: str | None = None
    budget: float | None = None  # the most this scope may spend, in epsilon
    accuracy: "Accuracy | None" = None  # instead of epsilon: the 95% half-width each release must meet
    explain: list | None = None  # set: releases are planned and described here, nothing runs or is charged
    spent_units: dict = field(default_factory=dict)  # (dataset, user) -> units charged in this scope
    parent: "Scope | None" = None  # an enclosing scope's budget also limits this one

    def chain(self):
        scope = self
        while scope is not None:
            yield scope
            scope = scope.parent


@dataclass(frozen=True)
class Accuracy:
    """A target for the 95% interval's half-width: absolute, or a share of the bounds' width."""

    value: float
    relative: bool = False

    @classmethod
    def parse(cls, text) -> "Accuracy":
        """``10`` (absolute) or ``"5%"`` (of the bounds' width); refuses zero, negative and non-numbers."""
        if isinstance(text, Accuracy):
            return text
        raw = str(text).strip()
        relative = raw.endswith("%")
        try:
            value = float(raw[:-1] if relative else raw)
        except ValueError:
            raise PolicyError(f"accuracy takes a number (e.g. 10) or a percentage of the bounds' width "
                              f"(e.g. 5%); got {text!r}.") from None
        if not math.isfinite(value) or value <= 0:
            raise PolicyError(f"accuracy must be a positive number: the largest 95% half-width you accept "
                              f"(got {text!r}).")
        if relative and value >= 100:
            raise PolicyError(f"a relative accuracy is a share of the bounds' width below 100% (got {text!r}).")
        return cls(value / 100.0 if relative else value, relative)

    def __str__(self) -> str:
        return f"{self.value * 100:g}% of the bounds' width" if self.relative else f"± {self.value:g}"


_current: contextvars.ContextVar[Scope | None] = contextvars.ContextVar("dpmagic_scope", default=None)


def current_scope() -> Scope | None:
    return _current.get()


@contextlib.contextmanager
def spending(*, epsilon: float | None = None, delta: float | None = None, purpose: str | None = None,
             budget: float | None = None, accuracy=None, _explain: list | None = None):
    """Allow private frames to release values inside this block, as a ``%%dp`` cell does.

    Parameters
    ----------
    epsilon : float, optional
        Epsilon of each release in the block (a release's own ``epsilon=`` still wins).
    delta : float, optional
        Delta of each release (only for datasets protected with ``delta > 0``).
    purpose : str, optional
        Purpose whose per-query epsilon sets the default (``explore``, ``publish``...).
    budget : float, optional
        The most the whole block may spend on each dataset, in epsilon.
    accuracy : float or str, optional
        Instead of an epsilon: each release picks the smallest epsilon whose 95% interval has a
        half-width of at most this (``10``), or this share of its bounds' width (``"5%"``).

    Examples
    --------
    >>> with dp.spending(purpose="publish"):           # doctest: +SKIP
    ...     average_age = visits["age"].mean()
    """
    if epsilon is not None:
        epsilon = check_epsilon(epsilon)
    if delta is not None:
        delta = check_delta(delta)
    if budget is not None:
        budget = check_epsilon(budget, what="budget")
    if accuracy is not None:
        accuracy = Accuracy.parse(accuracy)
        if epsilon is not None:
            raise PolicyError("give either an epsilon or an accuracy for the cell, not both: with an accuracy "
                              "each release picks its own epsilon.")
    outer = _current.get()
    scope = Scope(
        epsilon=epsilon if epsilon is not None else (outer.epsilon if outer else None),
        delta=delta if delta is not None else (outer.delta if outer else None),
        purpose=purpose if purpose is not None else (outer.purpose if outer else None),
        budget=budget,
        accuracy=accuracy if accuracy is not None else (outer.accuracy if outer and epsilon is None else None),
        explain=_explain if _explain is not None else (outer.explain if outer else None),
        parent=outer,
    )
    token = _current.set(scope)
    try:
        yield scope
    finally:
        _current.reset(token)
