"""The Python API: protect data, read budgets and histories."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping

import pandas as pd

from . import hooks, live, steward_client
from .accountant import BudgetStatus
from .errors import PolicyError
from .frame import PrivateFrame
from .session import current_user, get_session
from .sources import source
from .tables import BudgetsTable, ChainTable, DatasetsTable, HistoryTable, PolicyTable

__all__ = ["protect", "budget", "budgets", "budget_widget", "history", "policy", "datasets", "charges"]


def protect(df: pd.DataFrame, *, name: str, epsilon: float, delta: float = 0.0, policy=None,
            privacy_unit: str | None = None, max_rows_per_unit: int = 1, max_groups_per_unit: int | None = None,
            bounds: Mapping | None = None, categories: Mapping | None = None, engine: str | None = None,
            spark=None) -> PrivateFrame:
    """Protect a DataFrame: from now on only DP releases of it leave ``%%dp`` cells.

    Parameters
    ----------
    df : pandas.DataFrame, pyspark.sql.DataFrame or path
        The data. It is not copied out again; later edits of ``df`` do not change the protected data.
        A Spark DataFrame, or the path of a Parquet table with ``engine="spark"``, stays on the
        cluster: releases run there as Spark jobs, and only their aggregates reach this process.
    name : str
        The dataset's name in the budget ledger. Protecting the same data under the same name again
        (also after a kernel restart) continues the same budget.
    epsilon : float
        The total privacy budget of this dataset for the current user.
    delta : float, default 0
        0 for a pure epsilon budget (Laplace noise); > 0 for an approximate budget accounted in
        zero-concentrated DP (Gaussian noise, tighter composition over many releases).
    policy : dp.Policy, path or dict, optional
        Tiers, purposes and column metadata; the built-in policy when omitted.
    privacy_unit : str, optional
        The column naming the person when one person can have several rows.
    max_rows_per_unit : int, default 1
        At most this many rows per person enter each release (chosen at random within the person);
        noise is scaled to it.
    max_groups_per_unit : int, optional
        In grouped releases, each person's rows come from at most this many groups (chosen at
        random). It lowers the threshold of partition selection, which must otherwise assume one
        person can create up to ``max_rows_per_unit`` groups.
    bounds : mapping, optional
        ``{column: (low, high)}`` public clamping bounds for numeric columns. Columns without bounds
        are refused or have DP bounds estimated, as the policy's tier says (``missing_bounds``).
    categories : mapping, optional
        ``{column: [values]}`` public group keys (empty groups are released too). Groups of a column
        without categories are chosen by DP partition selection, which needs ``delta > 0``.
    engine : {"pandas", "spark"}, optional
        Where releases are computed; by default where the data is.
    spark : pyspark.sql.SparkSession, optional
        The Spark session for a path or a pandas frame sent to Spark (the active one by default).

    Returns
    -------
    PrivateFrame

    Examples
    --------
    >>> visits = dp.protect(df, name="visits", epsilon=1.0, bounds={"age": (0, 110)})  # doctest: +SKIP
    """
    hooks.install()
    live.install()
    dataset = get_session().protect(source(df, engine=engine, spark=spark), name=name, epsilon=epsilon, delta=delta, policy=policy,
                                    privacy_unit=privacy_unit, max_rows_per_unit=max_rows_per_unit,
                                    max_groups_per_unit=max_groups_per_unit, bounds=bounds,
                                    categories=categories)
    return PrivateFrame(dataset)


def budget(name: str) -> BudgetStatus:
    """The budget of dataset ``name`` for the current user: totals, spent and remaining.

    Works for any dataset in the ledger, also one protected in an earlier session. For a dataset
    protected in this session it also says what each tier and purpose may still spend under the
    policy's tier caps and purpose reserves.
    """
    _check_name(name, "budget")
    session, user = get_session(), current_user()
    dataset = session.datasets.get(name)
    if dataset is not None and dataset.remote is not None:
        return dataset.remote.client.status(name)
    if dataset is None or dataset.user != user:
        return session.accountant.status(name=name, user=user)
    return session.status(dataset)


def budget_widget(name: str | None = None):
    """A live meter of budgets: one bar per dataset, updated after every cell that spends.

    Parameters
    ----------
    name : str, optional
        The dataset to show; by default every dataset protected in this kernel (or every budget of
        the current user in the ledger when none is protected yet).

    Returns
    -------
    ipywidgets.VBox or BudgetStatus or BudgetsTable
        The meter in a kernel with ipywidgets (its text form is the budget table); where widgets
        cannot be shown (terminal IPython, no ipywidgets installed) the text table itself.
    """
    if _widgets_available():
        from .meter import BudgetMeter

        return BudgetMeter(name)
    return budget(name) if name is not None else budgets()


def budgets() -> BudgetsTable:
    """Every budget of the current user in the ledger, one row each (and on the steward, when connected)."""
    accountant = get_session().accountant
    records = accountant.ledger.budgets(user=current_user())
    found = [accountant.status(name=r.name, user=r.user) for r in records]
    client = steward_client.connection()
    if client is not None:
        found += client.get("api/budgets")
    return BudgetsTable(found)


def _widgets_available() -> bool:
    return live.install().in_kernel and importlib.util.find_spec("ipywidgets") is not None


def history(name: str, *, verify: bool = False) -> HistoryTable | ChainTable:
    """Every charge recorded against dataset ``name`` for the current user, oldest first.

    With ``verify=True``, check the history instead: recompute the hash chain of the charges and
    compare the budget's spent amounts with them. The result says ``chain intact: N charges, spent
    matches``, or names each charge (by id) that was edited, deleted or inserted and what of the
    budget row disagrees; ``.ok`` is True when all is well. A broken chain is reported, not raised.
    """
    _check_name(name, "history")
    dataset = get_session().datasets.get(name)
    if verify:
        if dataset is not None and dataset.remote is not None:
            return ChainTable(dataset.remote.client.verify(name))
        return ChainTable(get_session().accountant.ledger.verify(name=name, user=current_user()))
    return HistoryTable(*charges(name))


def charges(name: str, *, last: int | None = None):
    """The budget record of ``name`` and its charges (the ``last`` ones only, if given), oldest first."""
    session = get_session()
    dataset = session.datasets.get(name)
    if dataset is not None and dataset.remote is not None:
        return dataset.remote.client.history(name, last=last)
    ledger, user = session.accountant.ledger, current_user()
    return ledger.budget(name=name, user=user), ledger.history(name=name, user=user, last=last)


def datasets() -> DatasetsTable:
    """The datasets the connected steward lets you query, with their budgets (isolated mode).

    Open one with ``dp.remote(name)``; ``dp.connect(url)`` chooses the steward when the environment
    does not name one.
    """
    client = steward_client.connection()
    if client is None:
        raise PolicyError(f"no steward is connected: dp.connect(url) first, or set ${steward_client.STEWARD_URL_ENV}.")
    return DatasetsTable(client.datasets(), client.url)


def _check_name(name, reader: str) -> None:
    if not isinstance(name, str):
        raise PolicyError(f"a dataset name is text: dp.{reader}('visits') (got {type(name).__name__}).")


def policy(name: str) -> PolicyTable:
    """Each column's resolved tier, bounds, categories and default epsilon per purpose."""
    return PolicyTable(get_session().dataset(name))
