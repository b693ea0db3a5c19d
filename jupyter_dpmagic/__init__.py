"""jupyter-dpmagic: differential privacy for ordinary pandas code in Jupyter.

>>> import jupyter_dpmagic as dp                                          # doctest: +SKIP
>>> visits = dp.protect(df, name="visits", epsilon=1.0, bounds={"age": (0, 110)})  # doctest: +SKIP
>>> with dp.spending():                                                   # doctest: +SKIP
...     visits["age"].mean()

In a notebook: ``%load_ext jupyter_dpmagic`` and run aggregations in ``%%dp`` cells.
"""

from .accountant import BudgetStatus
from .api import budget, budget_widget, budgets, datasets, history, policy, protect
from .cohort import COHORT_BOUNDS, COHORT_CATEGORIES, synthetic_cohort
from .context import spending
from .errors import BudgetExceededError, PolicyError, PrivacyError, StewardError
from .explain import explain
from .frame import PrivateFrame, PrivateGroupBy, PrivateSeries, crosstab
from .models import fit_private
from .policy import Policy
from .release import ReleaseInfo, info
from .steward_client import connect, remote
from .split import train_test_split

__version__ = "0.1.0"

__all__ = [
    "protect", "remote", "connect", "datasets", "budgets",
    "spending", "explain", "crosstab", "fit_private", "budget", "budget_widget", "history", "policy",
    "info", "Policy",
    "train_test_split", "synthetic_cohort", "COHORT_BOUNDS", "COHORT_CATEGORIES",
    "PrivateFrame", "PrivateSeries", "PrivateGroupBy", "ReleaseInfo", "BudgetStatus",
    "PrivacyError", "BudgetExceededError", "PolicyError", "StewardError", "load_ipython_extension",
]


def _jupyter_labextension_paths():
    """Where the prebuilt JupyterLab extension lives (``jupyter labextension develop`` reads it)."""
    return [{"src": "labextension", "dest": "jupyter-dpmagic"}]


def load_ipython_extension(ipython):
    """Register the ``%dp`` and ``%%dp`` magics (``%load_ext jupyter_dpmagic``)."""
    from .magic import load_ipython_extension as load

    load(ipython)
