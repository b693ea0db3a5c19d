"""The one place where a release is made.

:func:`Session.release` resolves epsilon (call > cell > policy), checks bounds, tiers and scope, asks
the engine for exact aggregates, charges the ledger (committed) and only then draws noise and returns.
Everything that releases anything goes through it, so charge-before-release lives in one function.
"""

from __future__ import annotations

import getpass
import math
import os
import threading
from fractions import Fraction
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from ._analysis import bounds_of, dtype_kind, empty_frame
from ._draft import calibrate as _calibrate, draft as _draft
from .accountant import Accountant, Cost, check_delta, check_epsilon, epsilon_delta_to_rho
from .bounds import ESTIMATE_SHARE, EstimatedBounds, bounds_from, estimation_primitive, estimation_refusal
from .context import current_scope
from .engine.local import Exact, LocalEngine
from .errors import BudgetExceededError, PolicyError, PrivacyError, close_match_hint
from .ledger import UNITS_PER_ONE, BudgetRecord, open_ledger
from .explain import Explanation
from .plan import Col, Count, Histogram, Query, Sum, columns_of, describe
from .policy import Policy
from .release import ReleaseInfo, accuracy_text, shape as _shape

__all__ = ["Session", "Dataset", "Released", "get_session", "current_user", "ledger_location"]

LEDGER_ENV = "DPMAGIC_LEDGER"
ACCURACIES_KEPT = 1000


def current_user() -> str:
    """The hub user when running under JupyterHub, else the operating-system user."""
    return os.environ.get("JUPYTERHUB_USER") or getpass.getuser()


def ledger_location(configured: str | None = None) -> str:
    """``$DPMAGIC_LEDGER``, else ``%config DPMagics.ledger``, else a file in the Jupyter data dir."""
    value = os.environ.get(LEDGER_ENV) or configured
    if value:
        return value
    from jupyter_core.paths import jupyter_data_dir

    return str(Path(jupyter_data_dir()) / "dpmagic" / "ledger.sqlite")


@dataclass
class Dataset:
    """A protected table in this process: its data, policy, contribution bound and budget record."""

    name: str
    user: str
    frame: pd.DataFrame = field(repr=False)
    policy: Policy
    unit: str | None
    max_rows: int
    record: BudgetRecord
    engine: LocalEngine
    schema: dict  # column -> kind ("numeric", "bool", "text", "datetime", "other")
    max_groups: int | None = None
    estimates: dict = field(default_factory=dict, repr=False)  # column -> EstimatedBounds (released)
    # Set for a dataset a steward holds: ``frame`` then has the columns and dtypes but no rows, and
    # releases are made by the steward (see jupyter_dpmagic.steward_client).
    remote: object = field(default=None, repr=False)
    _columns: dict = field(default_factory=dict, repr=False)

    def column(self, name: str):
        """The resolved policy of a source column (computed once: policy and dtypes never change)."""
        resolved = self._columns.get(name)
        if resolved is None:
            resolved = self.policy.resolve(name, self.frame[name].dtype)
            if name == self.unit and resolved.tier != "identifier":
                # The privacy unit names people: it is an identifier whatever the policy says.
                resolved = replace(resolved, tier="identifier", tier_source="privacy unit")
            self._columns[name] = resolved
        return resolved


@dataclass(frozen=True)
class Derived:
    """Columns computed by a public function from each person's bounded rows of ``columns``.

    In this process only (the function is code, not a plan): it lets a fitted model's per-row
    predictions feed a release without the predictions ever leaving the session.
    """

    columns: tuple
    compute: object  # rows (pandas DataFrame of ``columns``) -> DataFrame of the derived columns
    what: str  # what the history shows

    def reads(self, query: Query) -> Query:
        """The query as the tier and identifier checks must see it: reading the source columns."""
        return replace(query, measures=tuple(Count(Col(c)) for c in self.columns), by=())

    def run(self, dataset: "Dataset", draft) -> Exact:
        rows = _rows(dataset, replace(draft.query, measures=()), self.columns, self.what)
        try:
            frame = self.compute(rows)
            # Rows are already filtered and bounded per person; the draft's noise counts max_rows.
            return LocalEngine(frame).run(replace(draft.query, where=(), unit=None), draft.primitives)
        except Exception as error:
            raise PrivacyError(f"computing {self.what} failed on the data ({type(error).__name__}); nothing was "
                               "charged.") from None


@dataclass(frozen=True)
class Released:
    """One release before it is shaped into numbers and pandas objects (what a steward sends back).

    ``units`` is what was charged (0 when the release was only explained); ``explanation`` is set
    when it was.
    """

    outcomes: tuple
    info: ReleaseInfo
    by: tuple
    keys: list | None
    units: int
    explanation: Explanation | None = None


class Session:
    """Datasets protected in this process, the ledger they charge, and the release pipeline.

    Parameters
    ----------
    ledger : str, optional
        A ledger location that ``$DPMAGIC_LEDGER`` and ``%config`` cannot change (a steward's).
    """

    def __init__(self, *, ledger: str | None = None):
        self._lock = threading.RLock()
        self._fixed_ledger = ledger
        self._configured_ledger: str | None = None
        self._accountant: Accountant | None = None
        self._ledger_path: str | None = None
        self.datasets: dict[str, Dataset] = {}
        self._watchers: list[Callable[[], None]] = []
        # The 95% accuracy of the releases made in this process, by charge id: the ledger keeps what
        # a release cost, not how accurate it was (that depends on the noise drawn after the charge).
        self.accuracies: dict[int, str] = {}

    # ---------------------------------------------------------------------------------- watchers
    def watch(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` after every charge this session commits and every dataset it protects.

        This is the live budget's trigger.
        """
        with self._lock:
            if callback not in self._watchers:
                self._watchers.append(callback)

    def _changed(self) -> None:
        for callback in list(self._watchers):
            try:
                callback()
            except Exception:
                # What changed is committed (a charge, a protected dataset) and the caller must get
                # its result; a display that cannot be told (a closed frontend, say) catches up at
                # its next update.
                pass

    def _charge(self, record: BudgetRecord, cost: Cost, **details):
        charge = self.accountant.charge(record, cost, **details)
        self._changed()
        return charge

    def _remember_accuracy(self, charge_id: int, text: str) -> None:
        with self._lock:
            self.accuracies[charge_id] = text
            while len(self.accuracies) > ACCURACIES_KEPT:
                del self.accuracies[next(iter(self.accuracies))]

    # -------------------------------------------------------------------------------- the ledger
    def configure(self, *, ledger: str | None) -> None:
        """Set the ledger location used when ``$DPMAGIC_LEDGER`` is not set (``%config DPMagics.ledger``)."""
        with self._lock:
            self._configured_ledger = ledger or None

    @property
    def accountant(self) -> Accountant:
        with self._lock:
            location = self._fixed_ledger or ledger_location(self._configured_ledger)
            if self._accountant is None or location != self._ledger_path:
                ledger = open_ledger(location)  # a file path: SQLite; a postgresql:// URL: PostgreSQL
                if self._accountant is not None:
                    self._accountant.ledger.close()
                self._accountant = Accountant(ledger)
                self._ledger_path = location
            return self._accountant

    # ------------------------------------------------------------------------------------ protect
    def protect(self, frame: pd.DataFrame, *, name: str, epsilon: float, delta: float = 0.0,
                policy=None, privacy_unit: str | None = None, max_rows_per_unit: int = 1,
                max_groups_per_unit: int | None = None, bounds: Mapping | None = None,
                categories: Mapping | None = None, user: str | None = None, keep: bool = True,
                data_key: str | None = None) -> Dataset:
        """Check the data and its settings, open (or continue) its budget and return the dataset.

        ``user`` is whose budget it is (the current user by default; a steward names the analyst);
        with ``keep=False`` the dataset is not added to :attr:`datasets`. ``data_key`` is what the
        ledger records to recognise the data, :func:`fingerprint` by default; a steward passes a
        salted one, since its analysts see the ledger's hashes and must not be able to confirm a
        guess of the data with them.
        """
        if isinstance(frame, pd.DataFrame):
            bad = [c for c in frame.columns if not isinstance(c, str)]
            if bad:
                raise PolicyError(f"column names must be text; rename {bad[:3]!r} first, "
                                  "e.g. df.columns = df.columns.astype(str).")
            if frame.columns.duplicated().any():
                raise PolicyError("column names must be unique; rename the duplicated columns first.")
            # pandas 3 copy-on-write (hence pandas>=3) makes this shallow copy immune to later edits of
            # the caller's frame, without doubling the memory.
            data = frame.copy(deep=False)
            engine = LocalEngine(data)
        elif type(frame).__module__.startswith("jupyter_dpmagic.engine."):
            # Data another engine holds (Spark): this process keeps its columns and dtypes, no rows.
            engine = frame
            data = empty_frame(engine.dtypes())
        else:
            kind = type(frame).__name__
            hint = " It is already protected." if kind == "PrivateFrame" else ""
            raise PolicyError(f"protect() takes a pandas DataFrame, not a {kind}.{hint}")
        if not isinstance(name, str) or not name.strip():
            raise PolicyError("protect() needs a dataset name: pass name='visits' (any non-empty text).")
        name = name.strip()
        columns = list(data.columns)
        epsilon = check_epsilon(epsilon)
        delta = check_delta(delta)
        policy = _load_policy(policy)
        for what, mapping in (("bounds", bounds), ("categories", categories)):
            if mapping is not None and not isinstance(mapping, Mapping):
                example = "{'age': (0, 110)}" if what == "bounds" else "{'sex': ['F', 'M']}"
                raise PolicyError(f"{what}= takes a dict from column name to its {what}, e.g. {what}={example} "
                                  f"(got {type(mapping).__name__}).")
            for column in (mapping or {}):
                _require_column(column, columns, where=f"{what}=")
        policy = policy.with_columns(bounds=bounds, categories=categories)
        if privacy_unit is not None:
            _require_column(privacy_unit, columns, where="privacy_unit=")
            missing = engine.unit_missing(privacy_unit)
            if missing == "all":
                raise PolicyError(f"the privacy unit '{privacy_unit}' is empty in every row; name the column "
                                  "that identifies the person (e.g. privacy_unit='patient_id').")
            if missing == "some":
                raise PolicyError(f"some rows have no '{privacy_unit}', so their person cannot be bounded; "
                                  "drop or fill those rows before protect().")
        for what, value in (("max_rows_per_unit", max_rows_per_unit), ("max_groups_per_unit", max_groups_per_unit)):
            if value is None and what == "max_groups_per_unit":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise PolicyError(f"{what} must be a whole number >= 1 (got {value!r}).")
        empty = engine.empty_columns()
        if empty:
            # Said now, to whoever holds the data: refusing such a column later, at query time, would
            # tell analysts that nobody has a value, a fact no noise would cover.
            raise PolicyError(f"column(s) {', '.join(map(repr, empty))} hold no values at all; drop them "
                              f"before protect(): df.drop(columns={empty!r}).")
        constant = engine.constant_numeric(_unbounded_estimated(data.dtypes, policy, privacy_unit))
        if constant:
            # Said to whoever holds the data, as for empty columns: estimating bounds of a column
            # with one value would spend budget to learn nothing, and refusing it at query time
            # would tell analysts that everyone has the same value.
            raise PolicyError(f"column(s) {', '.join(map(repr, constant))} hold a single value, so their bounds "
                              "cannot be estimated; declare them (bounds={" + f"'{constant[0]}': (low, high)" + "}) "
                              f"or drop the column(s): df.drop(columns={constant!r}).")
        if (max_rows_per_unit > 1 or max_groups_per_unit is not None) and privacy_unit is None:
            raise PolicyError("max_rows_per_unit and max_groups_per_unit need privacy_unit= (the column that "
                              "names the person).")
        with self._lock:
            record = self.accountant.open(name=name, user=user or current_user(),
                                          fingerprint=data_key or engine.fingerprint(),
                                          epsilon=epsilon, delta=delta)
            dataset = Dataset(
                name=name, user=record.user, frame=data, policy=policy, unit=privacy_unit,
                max_rows=int(max_rows_per_unit), record=record, engine=engine,
                schema={c: dtype_kind(t) for c, t in data.dtypes.items()},
                max_groups=None if max_groups_per_unit is None else int(max_groups_per_unit),
            )
            # Bounds estimated (and paid for) before, in this process or an earlier one.
            for column, found in self.accountant.ledger.estimated_bounds(name=name, user=record.user).items():
                dataset.estimates[column] = EstimatedBounds(column, *found)
            if not keep:
                return dataset
            self.datasets[name] = dataset
        self._changed()
        return dataset

    def add_remote(self, dataset: Dataset) -> Dataset:
        """Keep a dataset a steward holds among this kernel's datasets (``dp.remote``)."""
        with self._lock:
            self.datasets[dataset.name] = dataset
        self._changed()
        return dataset

    def status(self, dataset: Dataset):
        """The budget of ``dataset`` with what each tier and purpose may still spend under its policy."""
        policy = dataset.policy
        # Identifiers are never released, so they have nothing to spend; every purpose is named, so
        # that what the reserves leave each one shows before it has spent anything.
        tier_shares = {t.name: t.max_share for t in policy.tiers.values() if t.multiplier is not None}
        purpose_reserves = {**dict.fromkeys(policy.purposes, 0.0), **policy.purpose_reserves()}
        return self.accountant.status(name=dataset.name, user=dataset.user, tier_shares=tier_shares,
                                      purpose_reserves=purpose_reserves)

    def dataset(self, name: str) -> Dataset:
        try:
            return self.datasets[name]
        except (KeyError, TypeError):  # TypeError: a name that is not even hashable
            raise PolicyError(f"no dataset named '{name}' is protected in this kernel."
                              f"{close_match_hint(name, self.datasets)} Protect it with dp.protect(df, "
                              f"name='{name}', epsilon=...) or %dp protect.") from None

    # ------------------------------------------------------------------------------------ release
    def release(self, dataset: Dataset, measures: Sequence, *, where: tuple = (), by: tuple = (),
                epsilon=None, delta=None, shape: str = "scalar", labels: Sequence[str] = (), notes=(),
                derived: "Derived | None" = None, what: str | None = None):
        """Make one DP release of ``measures`` and return it shaped as ``shape``.

        ``shape`` is ``"scalar"`` (one measure, no groups), ``"series"`` (one measure per group, or
        one value per measure without groups), ``"frame"`` (groups x measures) or ``"bins"`` (a
        histogram's bins). With ``derived``, the measures read columns that a public function computes
        from each person's bounded rows of ``derived.columns`` (a model's per-row correctness, say).
        ``what`` names the release in the ledger when the query's own description would not say it
        (a model fitted from the release, say).
        """
        scope = current_scope()
        if scope is None:
            raise PrivacyError("this would release a number; run it inside a %%dp cell (or a "
                               "`with dp.spending():` block), where it is charged to the budget.")
        if dataset.remote is not None:
            if derived is not None:
                raise PolicyError(f"{derived.what} runs code on the rows, and the steward that holds '{dataset.name}' "
                                  "runs only query plans. Compute it from releases instead (e.g. the model's "
                                  "DP parameters), or ask the data steward.")
            done = dataset.remote.release(measures, where=where, by=by, epsilon=epsilon, delta=delta, notes=notes,
                                          what=what, scope=scope)
            if done.explanation is None:
                _count_spent(scope, dataset, done.units)
                self._remember_accuracy(done.info.charge_id, accuracy_text(done.outcomes))
                self._changed()
        else:
            done = self.make_release(dataset, measures, where=where, by=by, epsilon=epsilon, delta=delta,
                                     notes=notes, derived=derived, what=what, scope=scope)
        if done.explanation is not None:
            scope.explain.append(done.explanation)
        return _shape(done.outcomes, done.info, done.by, shape, labels, done.keys)

    def make_release(self, dataset: Dataset, measures: Sequence, *, where: tuple = (), by: tuple = (),
                     epsilon=None, delta=None, notes=(), derived: "Derived | None" = None,
                     what: str | None = None, scope) -> Released:
        """The release pipeline of :meth:`release` under ``scope``, up to the shaping.

        Checks, plans, charges (committed) and draws the noise; with ``scope.explain`` set, only
        plans and explains. A steward calls this with the scope an analyst's request describes.
        """
        max_groups = dataset.max_groups if by else None
        query = Query(dataset.name, tuple(measures), tuple(where), tuple(by), dataset.unit, dataset.max_rows,
                      max_groups)
        tiers = self._check_columns(dataset, query if derived is None else derived.reads(query))
        tier = dataset.policy.strictest(tiers)
        purpose, epsilon, delta = _parameters(dataset, scope, tier, epsilon, delta)
        query, pending = _known_bounds(dataset, query)
        record = dataset.record
        selection_delta = self._selection_delta(dataset, query)
        accuracy = scope.accuracy if epsilon is None else None  # None: the call gave its own epsilon
        if accuracy is not None:
            if pending:
                raise PolicyError(
                    f"an accuracy target needs the bounds of {_names(pending)}, which are not declared yet. "
                    "Declare them (bounds={...}), or make one release with an epsilon first: it estimates "
                    "them once and later releases reuse them.")
            units = _units_for_accuracy(query, accuracy, record, selection_delta)
            epsilon = _epsilon_of_share(record, units)
            if scope.explain is None:
                self._check_affordable(record, units, f"an accuracy of {accuracy} for {describe(query)} "
                                                      f"needs ε={epsilon:.4g}")
        else:
            units = _release_units(record, epsilon, delta)
        estimate_units = 0
        if pending:
            estimate_units = max(1, round(units * ESTIMATE_SHARE))
            if units - estimate_units < 1:
                raise PolicyError("epsilon is too small to estimate bounds and release; ask for more.")
        draft = _draft(_placeholder_bounds(query, pending), units - estimate_units, record.mode, selection_delta)
        if scope.explain is not None:
            return Released(tuple(draft.placeholder_outcomes()),
                            _info(dataset, draft.query, "", Cost(epsilon=epsilon), 0, purpose, tier, ()),
                            draft.query.by, [] if draft.query.selects_groups else None, 0,
                            self._explanation(dataset, draft, record, epsilon, delta, purpose, tier, pending,
                                              estimate_units, accuracy))
        self._check_scope_caps(scope, dataset, units)
        fresh = ()
        if pending:
            self._check_affordable(record, units, f"this release needs ε={epsilon:.4g} (a share of it to "
                                                  "estimate bounds)")
            fresh = self._estimate_bounds(dataset, pending, estimate_units, epsilon * estimate_units / units,
                                          delta, purpose, tiers)
            query, _ = _known_bounds(dataset, query)
            draft = _draft(query, units - estimate_units, record.mode, selection_delta)

        # Exact aggregates first: a query that fails here has charged nothing.
        exact = _run(dataset, draft.query, draft.primitives) if derived is None else derived.run(dataset, draft)
        cost = _cost(record, draft.units, epsilon * draft.units / units, delta)
        what = what or (describe(draft.query) if derived is None else derived.what)
        charge = self._charge(
            record, cost, query=what, mechanism=draft.mechanism, tier=tier, purpose=purpose,
            units=draft.units, tier_shares=_tier_shares(dataset, tiers), selection_delta=selection_delta,
            purpose_reserves=dataset.policy.purpose_reserves())
        _count_spent(scope, dataset, units)

        # The charge is committed: from here on nothing may fail silently or be retried.
        outcomes, keys = draft.finish(exact)
        self._remember_accuracy(charge.id, accuracy_text(outcomes))
        used = _estimated_columns(dataset, query) if derived is None else set()
        extra = tuple(dataset.estimates[c].note(fresh=c in fresh) for c in sorted(used))
        if accuracy is not None:
            extra += (f"ε chosen for an accuracy of {accuracy} (95%)",)
        info = _info(dataset, draft.query, draft.mechanism, cost, charge.id, purpose, tier,
                     draft.notes() + extra + tuple(notes), selection_delta=selection_delta)
        if derived is not None:
            info = replace(info, query=derived.what)
        return Released(tuple(outcomes), info, draft.query.by, keys, units)

    def _check_columns(self, dataset: Dataset, query: Query) -> set[str]:
        """Refuse identifiers; return the tiers of the columns the query touches ({'standard'} if none)."""
        touched = columns_of(query.measures) | columns_of(query.where) | columns_of(query.by)
        tiers = []
        for name in sorted(touched):
            resolved = dataset.column(name)
            if resolved.tier == "identifier":
                raise PolicyError(
                    f"column '{name}' is an identifier ({resolved.tier_source}); identifiers are never "
                    "released, filtered on or grouped by. If it is not an identifier, give it another tier: "
                    f"policy=dp.Policy(columns={{'{name}': {{'tier': 'standard'}}}}).")
            tiers.append(resolved.tier)
        return set(tiers) or {"standard"}

    def release_model(self, dataset: Dataset, *, columns: Sequence[str], where: tuple = (), epsilon=None,
                      describe_text: str, fit):
        """Fit a DP model on exact rows and charge what it spent before returning it.

        ``fit(data, epsilon)`` receives the rows of ``columns`` (a pandas DataFrame, filtered by
        ``where``, at most ``max_rows_per_unit`` rows per person) and the epsilon it may spend, and
        returns ``(model, spent_epsilon, spent_delta, mechanism)`` as its own accountant reports them.
        With k rows per person a model given epsilon/k is epsilon-DP per person (group privacy), so
        that is what ``fit`` gets. The model is returned only after the charge is committed; a fit
        that fails, or that the budget cannot pay for, returns nothing and charges nothing.
        """
        scope = current_scope()
        if scope is None:
            raise PrivacyError("training on private data is a release; run it inside a %%dp cell (or a "
                               "`with dp.spending():` block), where it is charged to the budget.")
        if dataset.remote is not None:
            raise PolicyError(f"training {describe_text} runs on the rows, and the steward that holds "
                              f"'{dataset.name}' runs only query plans. GaussianNB is fitted from releases and "
                              "works here; for other models, ask the data steward.")
        query = Query(dataset.name, tuple(Count(Col(c)) for c in columns), tuple(where), (), dataset.unit,
                      dataset.max_rows)
        tiers = self._check_columns(dataset, query)
        tier = dataset.policy.strictest(tiers)
        purpose, epsilon, _ = _parameters(dataset, scope, tier, epsilon, None)
        if epsilon is None:
            raise PolicyError("an accuracy target does not apply to model training; give the cell or the call an "
                              "epsilon (%%dp --epsilon 1, or fit inside dp.spending(epsilon=1)).")
        record = dataset.record
        units = _model_units(record, epsilon)
        self._check_scope_caps(scope, dataset, units)
        self._check_affordable(record, units, f"training {describe_text} needs ε={epsilon:.4g}")
        rows = _rows(dataset, query, columns, f"training {describe_text}")
        try:
            model, spent, spent_delta, mechanism = fit(rows, epsilon / dataset.max_rows)
        except PrivacyError:
            raise
        except Exception as error:
            raise PrivacyError(f"training {describe_text} failed on the data ({type(error).__name__}); nothing "
                               "was charged. Check the columns' types, bounds and categories.") from None
        if spent_delta or spent > epsilon / dataset.max_rows * (1 + 1e-9):
            raise PrivacyError(f"training {describe_text} reported spending more than it was given; nothing was "
                               "charged and the model was discarded.")
        # Charged what the model's own accountant reports (times k: group privacy over a person's rows).
        if spent > 0:
            epsilon = min(epsilon, spent * dataset.max_rows)
        units = _model_units(record, epsilon)
        cost = Cost(epsilon=epsilon) if record.mode == "pure" else Cost(epsilon=epsilon, rho=units / UNITS_PER_ONE)
        charge = self._charge(record, cost, query=describe_text, mechanism=mechanism, tier=tier,
                              purpose=purpose, units=units, tier_shares=_tier_shares(dataset, tiers),
                              purpose_reserves=dataset.policy.purpose_reserves())
        _count_spent(scope, dataset, units)
        return model, _info(dataset, query, mechanism, cost, charge.id, purpose, tier,
                            (f"at most {dataset.max_rows} row(s) per '{dataset.unit}' used",) if dataset.unit else ())

    def _selection_delta(self, dataset: Dataset, query: Query) -> float:
        """The delta partition selection spends on this release (0 when every group key is declared)."""
        if not query.selects_groups:
            return 0.0
        undeclared = [k.label for k in query.by if not k.declared]
        example = f"categories={{'{undeclared[0]}': [...]}}"
        if dataset.record.mode == "pure":
            raise PolicyError(
                f"grouping by {_names(undeclared)} without declared categories needs DP partition selection, "
                f"which spends a delta, and '{dataset.name}' has a pure epsilon budget (delta=0). Declare the "
                f"categories ({example} in dp.protect or the policy), or protect the data with a delta "
                "(e.g. delta=1e-6).")
        amount = self.accountant.selection_delta(dataset.record)
        if amount <= 0:
            raise PolicyError(
                f"the budget of '{dataset.name}' has no delta set aside for partition selection; declare the "
                f"categories of {_names(undeclared)} ({example} in dp.protect or the policy).")
        return amount

    def _check_scope_caps(self, scope, dataset: Dataset, units: int) -> None:
        for each in scope.chain():
            if each.budget is not None and \
                    each.spent_units.get(_key(dataset), 0) + units > _share_units(dataset.record, each.budget):
                raise BudgetExceededError(
                    f"this release would take the cell past its --budget of ε={each.budget:g} on "
                    f"'{dataset.name}'. Ask for less (epsilon=...) or raise the cell's --budget.")

    def _check_affordable(self, record: BudgetRecord, units: int, needs: str) -> None:
        """Refuse, before anything is charged, a release the budget could not pay for in full."""
        current = self.accountant.ledger.budget(name=record.name, user=record.user)
        left = current.cap_units - current.spent_units
        if units > left:
            raise BudgetExceededError(
                f"{needs}, more than is left of the budget of '{record.name}' (about "
                f"ε={_epsilon_of_share(current, left):.4g}); nothing was charged. Ask for less (a smaller "
                "epsilon or a looser accuracy), or see %dp budget.")

    def _estimate_bounds(self, dataset: Dataset, columns, units: int, epsilon: float, delta: float,
                         purpose: str, tiers) -> tuple[str, ...]:
        """Spend ``units`` on DP bounds of ``columns`` (charged, then remembered for the dataset)."""
        record = dataset.record
        query = Query(dataset.name, (), unit=dataset.unit, max_rows=dataset.max_rows)
        primitives = [estimation_primitive(column) for column in columns]
        noises = _calibrate(primitives, [1.0 / len(primitives)] * len(primitives), units, query, record.mode)
        exact = _run(dataset, query, primitives)
        touched = {dataset.column(c).tier for c in columns}
        cost = _cost(record, units, epsilon, delta)
        charge = self._charge(
            record, cost, query=f"bounds of {', '.join(columns)}", mechanism=noises[0].name,
            tier=dataset.policy.strictest(touched), purpose=purpose, units=units,
            tier_shares=_tier_shares(dataset, touched), purpose_reserves=dataset.policy.purpose_reserves())
        for column, noise, values in zip(columns, noises, exact):
            found = EstimatedBounds(column, *bounds_from(noise(values[0]), noise), epsilon / len(columns), charge.id)
            dataset.estimates[column] = found
            self.accountant.ledger.record_bounds(name=record.name, user=record.user, column=column, low=found.low,
                                                 high=found.high, epsilon=found.epsilon, charge_id=charge.id)
        return tuple(columns)

    def _explanation(self, dataset, draft, record, epsilon, delta, purpose, tier, pending, estimate_units,
                     accuracy) -> Explanation:
        current = self.accountant.ledger.budget(name=record.name, user=record.user)
        left = current.cap_units - current.spent_units
        units = draft.units + estimate_units
        lines = []
        for comp, noises in draft.measure_noises():
            if _needs(comp.measure, pending):
                lines.append((describe(comp.measure), "depends on the bounds, which are estimated first"))
            else:
                lines.append((describe(comp.measure), comp.noise_text(noises)))
        notes = list(draft.notes())
        if pending:
            notes.append(f"bounds of {_names(pending)} are not declared: ε={epsilon * estimate_units / units:.3g} "
                         "of this goes to a DP estimate of them (once; later releases reuse it)")
        for column in sorted(_estimated_columns(dataset, draft.query)):
            notes.append(dataset.estimates[column].note(fresh=False))
        if accuracy is not None:
            notes.append(f"ε chosen for an accuracy of {accuracy} (95%)")
        return Explanation(
            dataset=dataset.name, query=describe(draft.query), epsilon=epsilon,
            delta=(delta or 0.0) + draft.selection_delta, mechanism=draft.mechanism, purpose=purpose, tier=tier,
            accuracy=tuple(lines), notes=tuple(notes), affordable=units <= left,
            remaining=_epsilon_of_share(current, left))


def _parameters(dataset: Dataset, scope, tier: str, epsilon, delta) -> tuple[str, float | None, float]:
    """Purpose, epsilon and delta of a release: the call's, else the cell's, else the policy's.

    Epsilon is None when the cell asks for an accuracy instead (the release then searches for it).
    """
    purpose = dataset.policy.purpose(scope_value(scope, "purpose") or dataset.policy.default_purpose).name
    if epsilon is None and scope.accuracy is not None:
        return purpose, None, 0.0
    if epsilon is None:
        epsilon = scope_value(scope, "epsilon")
    if epsilon is None:
        epsilon = dataset.policy.default_epsilon(purpose=purpose, tiers=[tier])
    epsilon = check_epsilon(epsilon)
    delta = check_delta(delta if delta is not None else (scope_value(scope, "delta") or 0.0))
    if delta > 0 and dataset.record.mode == "pure":
        raise PolicyError(f"dataset '{dataset.name}' has a pure epsilon budget (delta=0), so a release "
                          "cannot use delta. Drop delta=, or protect the data with a delta (e.g. "
                          "delta=1e-6) to use Gaussian noise.")
    return purpose, epsilon, delta


def _share_units(record: BudgetRecord, epsilon: float) -> int:
    """Units that ``epsilon`` of this budget stands for.

    Pure budgets: epsilon itself. zCDP budgets: epsilon is a share of the budget, so that amounts
    whose epsilons add up to the total use exactly all of its rho (k releases of total/k each get
    rho_cap/k: the tight composition that makes Gaussian noise worth a delta).
    """
    if record.mode == "pure":
        return _whole_units(epsilon)
    # Rounded down, exactly: k shares of total/k must fit the cap together, whatever its last digit.
    units = math.floor(record.cap_units * Fraction(repr(float(epsilon))) / Fraction(repr(record.epsilon_total)))
    if units < 1:
        raise PolicyError(f"epsilon {epsilon!r} is below the ledger's resolution for this budget; ask for more.")
    return units


def _release_units(record: BudgetRecord, epsilon: float, delta: float) -> int:
    if delta > 0:
        # With its own delta, a release gets the largest rho that keeps it (epsilon, delta)-DP.
        return _whole_units(epsilon_delta_to_rho(epsilon, delta))
    return _payable(_share_units(record, epsilon), epsilon)


def _model_units(record: BudgetRecord, epsilon: float) -> int:
    """Units of a pure epsilon-DP model fit: epsilon, or under zCDP rho = epsilon^2 / 2."""
    return _whole_units(epsilon) if record.mode == "pure" else _whole_units(epsilon * epsilon / 2)


def _whole_units(loss: float) -> int:
    """The release's loss in whole ledger units (the decimal the user wrote, to the nearest unit).

    Noise is then calibrated to at most exactly this many units, so charging them is never less
    than the true loss, and ten releases of 0.1 fill a budget of 1.0 exactly.
    """
    units = round(Fraction(repr(float(loss))) * UNITS_PER_ONE)
    if units < 1:
        raise PolicyError(f"epsilon {loss!r} is below the ledger's resolution of 1e-12; ask for more.")
    return _payable(units, loss)


# No budget holds more units than this (the ledger's cap); a release asking for more could never be paid,
# and splitting such amounts among a release's parts would overflow floats.
_MOST_UNITS = 2**62


def _payable(units: int, epsilon) -> int:
    if units > _MOST_UNITS:
        raise PolicyError(f"epsilon {epsilon!r} is more than any budget can hold; ask for less, "
                          "e.g. epsilon=0.1.")
    return units


def scope_value(scope, name):
    for each in scope.chain():
        value = getattr(each, name)
        if value is not None:
            return value
    return None


def _epsilon_of_share(record: BudgetRecord, units: int) -> float:
    """The epsilon that ``units`` stand for: itself (pure budgets) or its share of the budget (zCDP)."""
    if record.mode == "pure":
        return units / UNITS_PER_ONE
    return record.epsilon_total * units / record.cap_units


def _cost(record: BudgetRecord, units: int, epsilon: float, delta: float) -> Cost:
    if record.mode == "pure":
        return Cost(epsilon=units / UNITS_PER_ONE)
    return Cost(epsilon=epsilon, delta=delta, rho=units / UNITS_PER_ONE)


def _info(dataset: Dataset, query: Query, mechanism: str, cost: Cost, charge_id: int, purpose: str, tier: str,
          notes: tuple, *, selection_delta: float = 0.0) -> ReleaseInfo:
    return ReleaseInfo(dataset=dataset.name, query=describe(query), mechanism=mechanism, epsilon=cost.epsilon,
                       delta=cost.delta + selection_delta, rho=cost.rho, ci_low=None, ci_high=None, accuracy="",
                       purpose=purpose, tier=tier, charge_id=charge_id, notes=tuple(notes))


def _rows(dataset: Dataset, query: Query, columns, what: str):
    """The filtered, per-person bounded rows a model works on, where the engine keeps rows in this process."""
    try:
        return dataset.engine.rows(query, list(columns))
    except NotImplementedError:
        raise PolicyError(f"{what} needs the rows in this process, and '{dataset.name}' stays on Spark, which "
                          "computes only aggregates here. GaussianNB is fitted from releases and works with Spark; other "
                          "scikit-learn models need data protected with the pandas engine.") from None
    except Exception as error:
        raise PrivacyError(f"{what} failed on the data ({type(error).__name__}); nothing was charged.") from None


def _run(dataset: Dataset, query: Query, primitives) -> Exact:
    """Exact values from the engine; a failure charges nothing and says nothing about the data."""
    try:
        return dataset.engine.run(query, primitives)
    except Exception as error:
        # The original message may quote values from the data: do not pass it on.
        raise PrivacyError(
            f"computing {describe(query)} failed on the data ({type(error).__name__}); nothing was "
            "charged. Check the column types and the operations in the cell.") from None


def _key(dataset: Dataset) -> tuple[str, str]:
    return (dataset.name, dataset.user)


def _count_spent(scope, dataset: Dataset, units: int) -> None:
    """Add a charge to every enclosing scope, for their --budget caps."""
    for each in scope.chain():
        each.spent_units[_key(dataset)] = each.spent_units.get(_key(dataset), 0) + units


def _tier_shares(dataset: Dataset, tiers) -> dict:
    return {t: dataset.policy.tier(t).max_share for t in tiers}


def _names(columns) -> str:
    return ", ".join(f"'{c}'" for c in columns)


# ------------------------------------------------------------------------------------------ bounds
def _bounded(measure) -> bool:
    """Whether a measure clamps to bounds (counts do not)."""
    return hasattr(measure, "low")


def _known_bounds(dataset: Dataset, query: Query) -> tuple[Query, tuple]:
    """The query with every bound that is declared or already estimated filled in, and the columns
    whose bounds must still be estimated (refused here when the policy does not allow it)."""
    measures, pending = [], []
    for measure in query.measures:
        if not _bounded(measure) or measure.low is not None:
            measures.append(measure)
            continue
        missing = [c for c in sorted(columns_of(measure.expr))
                   if dataset.column(c).bounds is None and c not in dataset.estimates]
        for column in missing:
            refusal = estimation_refusal(dataset, column)
            if refusal is not None:
                raise refusal
        if missing:
            pending += missing
            if _derived_bounds(dataset, measure.expr, placeholder=set(missing)) is None:
                raise PolicyError(f"bounds for {describe(measure.expr)} cannot be derived from its columns' bounds; "
                                  "pass bounds=(low, high) to this call, or clip() the values first.")
            measures.append(measure)
            continue
        low, high = _derived_bounds(dataset, measure.expr) or (None, None)
        if low is None or not low < high:
            raise PolicyError(f"bounds for {describe(measure.expr)} cannot be derived from its columns' bounds "
                              f"(got {low}, {high}); pass bounds=(low, high) to this call.")
        measures.append(replace(measure, low=low, high=high))
    return replace(query, measures=tuple(measures)), tuple(dict.fromkeys(pending))


def _derived_bounds(dataset: Dataset, expr, *, placeholder=frozenset()):
    def column_bounds(name):
        if name in placeholder:
            return (1.0, 2.0)
        declared = dataset.column(name).bounds
        if declared is not None:
            return declared
        found = dataset.estimates.get(name)
        return None if found is None else (found.low, found.high)

    return bounds_of(expr, column_bounds, dataset.schema)


def _placeholder_bounds(query: Query, pending) -> Query:
    """Stand-in bounds for measures whose bounds are still to be estimated: the noise does not depend on
    bounds (only how noise maps to values does), so a draft can be planned and explained before."""
    if not pending:
        return query
    measures = tuple(replace(m, low=-1.0, high=1.0) if _bounded(m) and m.low is None else m for m in query.measures)
    return replace(query, measures=measures)


def _needs(measure, pending) -> bool:
    return _bounded(measure) and measure.low is None and bool(columns_of(measure.expr) & set(pending))


def _estimated_columns(dataset: Dataset, query: Query) -> set[str]:
    """Columns whose estimated bounds the query's measures clamp to."""
    used = set()
    for measure in query.measures:
        if _bounded(measure):
            used |= {c for c in columns_of(measure.expr) if dataset.column(c).bounds is None}
    return used & set(dataset.estimates)


# ---------------------------------------------------------------------------------------- accuracy
_MAX_ACCURACY_EPSILON = 1e4


def _units_for_accuracy(query: Query, accuracy, record: BudgetRecord, selection_delta: float) -> int:
    """The fewest units whose draft meets ``accuracy`` for every measure (searched, data-free)."""
    targets = []
    for measure in query.measures:
        if not isinstance(measure, (Count, Sum, Histogram)):
            raise PolicyError(
                f"an accuracy target needs an interval that does not depend on the data; {describe(measure)}'s "
                "does (a mean's interval shrinks with the number of values). Use --epsilon for it, and "
                "%dp explain to see its accuracy, or ask for a sum or a count with --accuracy.")
        if accuracy.relative:
            if not _bounded(measure):
                raise PolicyError("a count has no bounds, so a relative accuracy means nothing for it; give an "
                                  "absolute one, e.g. --accuracy 10 (rows).")
            targets.append(accuracy.value * (measure.high - measure.low))
        else:
            targets.append(accuracy.value)

    def meets(units: int) -> bool:
        planned = _draft(query, units, record.mode, selection_delta)
        return all(comp.half_width(noises) <= target
                   for (comp, noises), target in zip(planned.measure_noises(), targets))

    most = _share_units(record, _MAX_ACCURACY_EPSILON)
    low, high = 0, min(most, max(len(query.measures) * 8, 1 << 20))
    while not meets(high):
        if high >= most:
            raise PolicyError(f"no epsilon up to {_MAX_ACCURACY_EPSILON:g} gives an accuracy of {accuracy} for "
                              f"{describe(query)}; ask for a looser accuracy.")
        low, high = high, min(most, high * 4)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if meets(mid) else (mid, high)
    return high


def _unbounded_estimated(dtypes, policy: Policy, unit: str | None) -> list[str]:
    """Numeric columns without bounds whose bounds the policy would estimate."""
    found = []
    for name, dtype in dtypes.items():
        if name == unit or dtype_kind(dtype) != "numeric":
            continue
        resolved = policy.resolve(name, dtype)
        if resolved.bounds is None and resolved.tier != "identifier" and \
                policy.tier(resolved.tier).missing_bounds == "estimate":
            found.append(name)
    return found


def _require_column(name, columns, *, where: str) -> None:
    if name not in columns:
        raise PolicyError(f"{where} names column '{name}', which the data does not have."
                          f"{close_match_hint(name, columns)} Columns: {', '.join(map(str, columns))}.")


def _load_policy(policy) -> Policy:
    if policy is None:
        return Policy.builtin()
    if isinstance(policy, Policy):
        return policy
    if isinstance(policy, (str, os.PathLike)):
        return Policy.from_toml(policy)
    if isinstance(policy, Mapping):
        return Policy.from_dict(policy)
    raise PolicyError(f"policy= takes a dp.Policy, a path to a TOML file or a dict, not {type(policy).__name__}.")


_session: Session | None = None
_session_lock = threading.Lock()


def get_session() -> Session:
    """The process-wide session (one ledger connection, the datasets protected in this kernel)."""
    global _session
    with _session_lock:
        if _session is None:
            _session = Session()
        return _session
