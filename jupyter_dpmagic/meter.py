"""A live ipywidgets meter of privacy budgets, for places without the JupyterLab sidebar."""

from __future__ import annotations

import html

import ipywidgets as widgets

from .live import get_live_budget, level, spent_share, statuses
from .session import current_user
from .tables import BudgetsTable

__all__ = ["BudgetMeter"]

_BAR_STYLES = {"ok": "success", "warning": "warning", "exhausted": "danger"}
_LEVEL_WORDS = {"ok": "", "warning": " (running low)", "exhausted": " (exhausted: no more releases)"}


class BudgetMeter(widgets.VBox):
    """One bar per budget, updated after every cell that spends.

    Parameters
    ----------
    name : str or None
        The dataset to show; None shows every dataset protected in this kernel (or, when there is
        none, every budget of the current user in the ledger).
    """

    def __init__(self, name: str | None = None) -> None:
        super().__init__(layout=widgets.Layout(width="auto"))
        self._name = name
        self._rows: dict[str, tuple[widgets.FloatProgress, widgets.HTML]] = {}
        self._statuses = []
        live = get_live_budget()
        live.add_meter(self)
        self.refresh()

    def refresh(self) -> None:
        """Read the budgets again and update the bars (called by the live budget after a charge)."""
        session = get_live_budget().session
        if self._name is not None:
            found = statuses(session, [self._name], with_protected=False)
        else:
            found = statuses(session) or \
                statuses(session, [r.name for r in session.accountant.ledger.budgets(user=current_user())])
        self._statuses = [status for status, _ in found]
        children = []
        for status, protected in found:
            bar, text = self._rows.get(status.name) or self._new_row()
            self._rows[status.name] = (bar, text)
            state = level(status)
            bar.value = round(100.0 * spent_share(status), 3)
            bar.bar_style = _BAR_STYLES[state]
            bar.description = status.name
            text.value = html.escape(_summary(status, state, protected))
            children.append(widgets.HBox([bar, text]))
        if not children:
            children = [widgets.HTML("No budget yet: protect a DataFrame with dp.protect(df, name=..., epsilon=...).")]
        self.children = children

    @staticmethod
    def _new_row() -> tuple[widgets.FloatProgress, widgets.HTML]:
        bar = widgets.FloatProgress(min=0.0, max=100.0, style={"description_width": "initial"},
                                    layout=widgets.Layout(width="45%"))
        return bar, widgets.HTML()

    def __repr__(self) -> str:
        # What terminal IPython shows for the same call.
        if self._name is not None and self._statuses:
            return repr(self._statuses[0])
        return repr(BudgetsTable(self._statuses))

    def _repr_mimebundle_(self, **kwargs):
        bundle = super()._repr_mimebundle_(**kwargs)
        # Where no widget can be drawn (a terminal, nbconvert), the table says the same in text.
        bundle["text/plain"] = repr(self)
        return bundle


def _summary(status, state: str, protected: bool) -> str:
    spent = status.epsilon_share_spent
    text = (f"ε {spent:.4g} of {status.epsilon_total:g} spent ({100 * spent_share(status):.0f}%), "
            f"{max(0.0, status.epsilon_total - spent):.4g} left; {status.releases} release(s)")
    if status.delta_total > 0:
        text += f"; δ {status.delta_spent:.2g} of {status.delta_total:g}"
    if not protected:
        text += "; from the ledger"
    return text + _LEVEL_WORDS[state]

