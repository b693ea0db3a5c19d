"""Where spending is allowed: inside ``%%dp`` cells and ``with dp.spending():`` blocks.

Outside such a scope a private frame can describe itself but releases nothing, so a stray
``df.mean()`` in an ordinary cell can never spend budget by accident.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field

from .accountant import check_delta, check_epsilon

__all__ = ["Scope", "spending", "current_scope"]


@dataclass
class Scope:
    """Defaults and limits of one ``%%dp`` cell or ``spending()`` block."""

    epsilon: float | None = None
    delta: float | None = None
    purpose: str | None = None
    budget: float | None = None  # the most this scope may spend, in epsilon
    spent_units: dict = field(default_factory=dict)  # (dataset, user) -> units charged in this scope
    parent: "Scope | None" = None  # an enclosing scope's budget also limits this one

    def chain(self):
        scope = self
        while scope is not None:
            yield scope
            scope = scope.parent


_current: contextvars.ContextVar[Scope | None] = contextvars.ContextVar("dpmagic_scope", default=None)


def current_scope() -> Scope | None:
    return _current.get()


@contextlib.contextmanager
def spending(*, epsilon: float | None = None, delta: float | None = None, purpose: str | None = None,
             budget: float | None = None):
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
    outer = _current.get()
    scope = Scope(
        epsilon=epsilon if epsilon is not None else (outer.epsilon if outer else None),
        delta=delta if delta is not None else (outer.delta if outer else None),
        purpose=purpose if purpose is not None else (outer.purpose if outer else None),
        budget=budget,
        parent=outer,
    )
    token = _current.set(scope)
    try:
        yield scope
    finally:
        _current.reset(token)
