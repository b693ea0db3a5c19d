"""Errors a user of jupyter-dpmagic can meet.

Every error says what went wrong *and* what to do instead. In a notebook they render as one short
paragraph (IPython calls ``_render_traceback_``) because a long traceback into our internals helps
nobody and can bury the advice.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["PrivacyError", "BudgetExceededError", "PolicyError", "StewardError", "close_match_hint"]


class PrivacyError(Exception):
    """An operation was refused because it would leak, or could not be made private.

    Nothing is charged to any budget when this is raised.
    """

    def _render_traceback_(self) -> list[str]:
        red, reset = "\x1b[31m", "\x1b[0m"
        lines = str(self).splitlines() or [""]
        return [f"{red}{type(self).__name__}{reset}: {lines[0]}", *lines[1:]]


class BudgetExceededError(PrivacyError):
    """The release would spend more than what remains of a budget (dataset, tier or cell)."""


class PolicyError(PrivacyError, ValueError):
    """A parameter or a policy is missing or invalid: bounds, categories, epsilon, a policy file."""


class StewardError(PrivacyError):
    """The steward that holds a dataset could not be reached, refused the request or did not answer.

    ``charged`` says whether the steward charged the request before its answer was lost (True),
    did not (False), or cannot tell (None).
    """

    def __init__(self, message: str, *, charged: bool | None = False):
        super().__init__(message)
        self.charged = charged


def close_match_hint(word: str, choices: Iterable[str]) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest of ``choices``, or an empty string."""
    matches = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" Did you mean '{matches[0]}'?" if matches else ""
