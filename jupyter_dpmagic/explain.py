"""What a release would cost and how accurate it would be, before anything is spent.

``%dp explain df.age.mean()`` (or :func:`explain`) runs the expression with every release planned
but not run: no data is read, nothing is charged, and each planned release is described (its
epsilon and delta under the current policy and purpose, mechanism, and the 95% interval of its
noise). The values the expression sees are NaN placeholders.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Explanation", "ExplainReport", "explain"]


@dataclass(frozen=True)
class Explanation:
    """One planned release."""

    dataset: str
    query: str
    epsilon: float
    delta: float
    mechanism: str
    purpose: str
    tier: str
    accuracy: tuple  # (measure, accuracy text) pairs
    notes: tuple
    affordable: bool
    remaining: float

    def cost_text(self) -> str:
        return f"ε={self.epsilon:.4g}" + (f", δ={self.delta:.2g}" if self.delta else "")

    def _rows(self) -> list[tuple[str, str]]:
        rows = [("cost", f"{self.cost_text()} (purpose {self.purpose}, strictest tier {self.tier})"),
                ("mechanism", self.mechanism)]
        rows += [(f"accuracy of {measure}", text) for measure, text in self.accuracy]
        rows += [("note", n) for n in self.notes]
        budget = f"about ε={self.remaining:.4g} left of '{self.dataset}'"
        rows.append(("budget", budget if self.affordable else f"NOT ENOUGH: only {budget}"))
        return rows

    def __repr__(self) -> str:
        return "\n".join([f"would release {self.query}"] + [f"  {k}: {v}" for k, v in self._rows()])

    def _repr_html_(self) -> str:
        body = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th>"
                       f"<td style='text-align:left'>{html.escape(v)}</td></tr>" for k, v in self._rows())
        return (f"<div class='dpmagic-explain'><strong>would release {html.escape(self.query)}</strong>"
                f"<table>{body}</table></div>")


class ExplainReport(list):
    """The releases an expression would make; nothing was run or charged."""

    @property
    def epsilon(self) -> float:
        """The epsilon all planned releases would ask for together."""
        return sum(e.epsilon for e in self)

    def __repr__(self) -> str:
        if not self:
            return "This makes no release (nothing would be charged)."
        head = f"{len(self)} release(s), ε={self.epsilon:.4g} in all; nothing was run or charged."
        return "\n".join([head] + [repr(e) for e in self])

    def _repr_html_(self) -> str:
        if not self:
            return "<div class='dpmagic-explain'>This makes no release (nothing would be charged).</div>"
        head = html.escape(f"{len(self)} release(s), ε={self.epsilon:.4g} in all; nothing was run or charged.")
        return f"<div><p>{head}</p>" + "".join(e._repr_html_() for e in self) + "</div>"


def explain(what: Callable[[], object], *, epsilon=None, delta=None, purpose=None, accuracy=None) -> ExplainReport:
    """Describe the releases ``what()`` would make, without running or charging them.

    Parameters
    ----------
    what : callable
        Called with no arguments, e.g. ``lambda: df["age"].mean()``.
    epsilon, delta, purpose, accuracy
        As for :func:`jupyter_dpmagic.spending` (and ``%%dp`` options): what the releases would use.

    Returns
    -------
    ExplainReport
        A list of :class:`Explanation`, one per planned release.
    """
    from .context import spending

    report = ExplainReport()
    with spending(epsilon=epsilon, delta=delta, purpose=purpose, accuracy=accuracy, _explain=report):
        what()
    return report
