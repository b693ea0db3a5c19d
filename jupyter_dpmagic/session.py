"""The one place where a release is made.

:func:`Session.release` resolves epsilon (call > cell > policy), checks bounds, tiers and scope, asks
the engine for exact aggregates, charges the ledger (committed) and only then draws noise and returns.
Everything that releases anything goes through it, so charge-before-release lives in one function.
"""

from __future__ import annotations

import getpass
import hashlib
import math
import os
import threading
from fractions import Fraction
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from . import mechanisms
from ._analysis import dtype_kind
from .accountant import Accountant, Cost, check_delta, check_epsilon, epsilon_delta_to_rho
from .context import current_scope
from .engine.local import LocalEngine
from .errors import BudgetExceededError, PolicyError, PrivacyError, close_match_hint
from .ledger import UNITS_PER_ONE, BudgetRecord, SQLiteLedger
from .measures import Outcome, compile_measure
from .plan import Query, QuantileScores, columns_of, describe
from .policy import Policy
from .release import DPFloat, DPFrame, DPInt, DPSeries, ReleaseInfo

__all__ = ["Session", "Dataset", "get_session", "current_user", "ledger_location"]

LEDGER_ENV = "DPMAGIC_LEDGER"


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


def fingerprint(frame: pd.DataFrame, *, block: int = 2**20) -> str:
    """A content hash of the protected data (column names, dtypes and every value, not the index).

    Hashed in blocks of rows so that protecting a large table needs little extra memory; the digest
    does not depend on the block size.
    """
    digest = hashlib.sha256()
    for name, dtype in frame.dtypes.items():
        digest.update(f"{name}\x1f{dtype}\x1e".encode())
    for start in range(0, len(frame), block):
        rows = frame.iloc[start:start + block]
        digest.update(pd.util.hash_pandas_object(rows, index=False).to_numpy().tobytes())
    return digest.hexdigest()


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


class Session:
    """Datasets protected in this process, the ledger they charge, and the release pipeline."""

    def __init__(self):
        self._lock = threading.RLock()
        self._configured_ledger: str | None = None
        self._accountant: Accountant | None = None
        self._ledger_path: str | None = None
        self.datasets: dict[str, Dataset] = {}

    # -------------------------------------------------------------------------------- the ledger
    def configure(self, *, ledger: str | None) -> None:
        """Set the ledger location used when ``$DPMAGIC_LEDGER`` is not set (``%config DPMagics.ledger``)."""
        with self._lock:
            self._configured_ledger = ledger or None

    @property
    def accountant(self) -> Accountant:
        with self._lock:
            location = ledger_location(self._configured_ledger)
            if self._accountant is None or location != self._ledger_path:
                if location.startswith(("postgres://", "postgresql://")):
                    raise PolicyError("a PostgreSQL ledger is not available in guardrail mode; set "
                                      f"{LEDGER_ENV} to a file path for a SQLite ledger.")
                if self._accountant is not None:
                    self._accountant.ledger.close()
                self._accountant = Accountant(SQLiteLedger(location))
                self._ledger_path = location
            return self._accountant

    # ------------------------------------------------------------------------------------ protect
    def protect(self, frame: pd.DataFrame, *, name: str, epsilon: float, delta: float = 0.0,
                policy=None, privacy_unit: str | None = None, max_rows_per_unit: int = 1,
                bounds: Mapping | None = None, categories: Mapping | None = None) -> Dataset:
        if not isinstance(frame, pd.DataFrame):
            kind = type(frame).__name__
            hint = " It is already protected." if kind == "PrivateFrame" else ""
            raise PolicyError(f"protect() takes a pandas DataFrame, not a {kind}.{hint}")
        if not isinstance(name, str) or not name.strip():
            raise PolicyError("protect() needs a dataset name: pass name='visits' (any non-empty text).")
        name = name.strip()
        bad = [c for c in frame.columns if not isinstance(c, str)]
        if bad:
            raise PolicyError(f"column names must be text; rename {bad[:3]!r} first, "
                              "e.g. df.columns = df.columns.astype(str).")
        if frame.columns.duplicated().any():
            raise PolicyError("column names must be unique; rename the duplicated columns first.")
        epsilon = check_epsilon(epsilon)
        delta = check_delta(delta)
        policy = _load_policy(policy)
        for what, mapping in (("bounds", bounds), ("categories", categories)):
            for column in (mapping or {}):
                _require_column(column, frame.columns, where=f"{what}=")
        policy = policy.with_columns(bounds=bounds, categories=categories)
        if privacy_unit is not None:
            _require_column(privacy_unit, frame.columns, where="privacy_unit=")
            if frame[privacy_unit].isna().any():
                raise PolicyError(f"some rows have no '{privacy_unit}', so their person cannot be bounded; "
                                  "drop or fill those rows before protect().")
        if isinstance(max_rows_per_unit, bool) or not isinstance(max_rows_per_unit, (int, np.integer)) \
                or max_rows_per_unit < 1:
            raise PolicyError(f"max_rows_per_unit must be a whole number >= 1 (got {max_rows_per_unit!r}).")
        empty = [c for c in frame.columns if len(frame) and frame[c].isna().all()]
        if empty:
            # Said now, to whoever holds the data: refusing such a column later, at query time, would
            # tell analysts that nobody has a value, a fact no noise would cover.
            raise PolicyError(f"column(s) {', '.join(map(repr, empty))} hold no values at all; drop them "
                              f"before protect(): df.drop(columns={empty!r}).")
        if max_rows_per_unit > 1 and privacy_unit is None:
            raise PolicyError("max_rows_per_unit needs privacy_unit= (the column that names the person).")
        # pandas 3 copy-on-write (hence pandas>=3) makes this shallow copy immune to later edits of
        # the caller's frame, without doubling the memory.
        data = frame.copy(deep=False)
        with self._lock:
            record = self.accountant.open(name=name, user=current_user(), fingerprint=fingerprint(data),
                                          epsilon=epsilon, delta=delta)
            dataset = Dataset(
                name=name, user=record.user, frame=data, policy=policy, unit=privacy_unit,
                max_rows=int(max_rows_per_unit), record=record, engine=LocalEngine(data),
                schema={c: dtype_kind(t) for c, t in data.dtypes.items()},
            )
            self.datasets[name] = dataset
        return dataset

    def dataset(self, name: str) -> Dataset:
        try:
            return self.datasets[name]
        except KeyError:
            raise PolicyError(f"no dataset named '{name}' is protected in this kernel."
                              f"{close_match_hint(name, self.datasets)} Protect it with dp.protect(df, "
                              f"name='{name}', epsilon=...) or %dp protect.") from None

    # ------------------------------------------------------------------------------------ release
    def release(self, dataset: Dataset, measures: Sequence, *, where: tuple = (), by: tuple = (),
                epsilon=None, delta=None, shape: str = "scalar", labels: Sequence[str] = (), notes=()):
        """Make one DP release of ``measures`` and return it shaped as ``shape``.

        ``shape`` is ``"scalar"`` (one measure, no groups), ``"series"`` (one measure per group, or
        one value per measure without groups) or ``"frame"`` (groups x measures).
        """
        scope = current_scope()
        if scope is None:
            raise PrivacyError("this would release a number; run it inside a %%dp cell (or a "
                               "`with dp.spending():` block), where it is charged to the budget.")
        query = Query(dataset.name, tuple(measures), tuple(where), tuple(by), dataset.unit, dataset.max_rows)
        tiers = self._check_columns(dataset, query)
        tier = dataset.policy.strictest(tiers)
        purpose, epsilon, delta = _parameters(dataset, scope, tier, epsilon, delta)
        record = dataset.record
        units = _release_units(record, epsilon, delta)
        compiled = [compile_measure(m) for m in query.measures]
        primitives = [p for comp in compiled for p in comp.primitives]
        weights = [share / len(compiled) for comp in compiled for share in comp.shares]
        noises = _calibrate(primitives, weights, units, query, record.mode)
        charged = units / UNITS_PER_ONE
        cost = Cost(epsilon=charged) if record.mode == "pure" else Cost(epsilon=epsilon, delta=delta, rho=charged)
        key = (dataset.name, dataset.user)
        for each in scope.chain():
            if each.budget is not None and each.spent_units.get(key, 0) + units > _share_units(record, each.budget):
                raise BudgetExceededError(
                    f"this release would take the cell past its --budget of ε={each.budget:g} on "
                    f"'{dataset.name}'. Ask for less (epsilon=...) or raise the cell's --budget.")

        # Exact aggregates first: a query that fails here has charged nothing.
        try:
            exact = dataset.engine.run(query, primitives)
        except Exception as error:
            # The original message may quote values from the data: do not pass it on.
            raise PrivacyError(
                f"computing {describe(query)} failed on the data ({type(error).__name__}); nothing was "
                "charged. Check the column types and the operations in the cell.") from None

        mechanism = " + ".join(sorted({n.name for n in noises}))
        charge = self.accountant.charge(record, cost, query=describe(query), mechanism=mechanism, tier=tier,
                                        purpose=purpose, units=units,
                                        tier_shares={t: dataset.policy.tier(t).max_share for t in tiers})
        for each in scope.chain():
            each.spent_units[key] = each.spent_units.get(key, 0) + units

        # The charge is committed: from here on nothing may fail silently or be retried.
        noisy = [_add_noise(noise, prim, values, bool(query.by))
                 for noise, prim, values in zip(noises, primitives, exact)]
        outcomes, at = [], 0
        for comp in compiled:
            k = len(comp.primitives)
            outcomes.append(comp.finish(noisy[at:at + k], noises[at:at + k]))
            at += k
        info = ReleaseInfo(
            dataset=dataset.name, query=describe(query), mechanism=mechanism, epsilon=cost.epsilon,
            delta=cost.delta, rho=cost.rho, ci_low=None, ci_high=None, accuracy="", purpose=purpose, tier=tier,
            charge_id=charge.id, notes=_notes(query) + tuple(notes))
        return _shape(outcomes, info, query.by, shape, labels)

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


def _parameters(dataset: Dataset, scope, tier: str, epsilon, delta) -> tuple[str, float, float]:
    """Purpose, epsilon and delta of a release: the call's, else the cell's, else the policy's."""
    purpose = dataset.policy.purpose(scope_value(scope, "purpose") or dataset.policy.default_purpose).name
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
    return _whole_units(record.cap_units / UNITS_PER_ONE * epsilon / record.epsilon_total)


def _release_units(record: BudgetRecord, epsilon: float, delta: float) -> int:
    if delta > 0:
        # With its own delta, a release gets the largest rho that keeps it (epsilon, delta)-DP.
        return _whole_units(epsilon_delta_to_rho(epsilon, delta))
    return _share_units(record, epsilon)


def _calibrate(primitives, weights: list[float], units: int, query: Query, mode: str) -> list:
    """One OpenDP measurement per primitive, splitting ``units`` in proportion to ``weights``."""
    measure = mechanisms.PURE if mode == "pure" else mechanisms.ZCDP
    noises = []
    for prim, part in zip(primitives, _split_units(units, weights)):
        loss = Fraction(part, UNITS_PER_ONE)
        sensitivity = prim.sensitivity() * query.max_rows
        if isinstance(prim, QuantileScores):
            noises.append(mechanisms.noisy_max(sensitivity=sensitivity, loss=loss, measure=measure))
        else:
            noises.append(mechanisms.additive(sensitivity=sensitivity, loss=loss, measure=measure,
                                              vector=bool(query.by)))
    return noises


def _whole_units(loss: float) -> int:
    """The release's loss in whole ledger units (the decimal the user wrote, to the nearest unit).

    Noise is then calibrated to at most exactly this many units, so charging them is never less
    than the true loss, and ten releases of 0.1 fill a budget of 1.0 exactly.
    """
    units = round(Fraction(repr(float(loss))) * UNITS_PER_ONE)
    if units < 1:
        raise PolicyError(f"epsilon {loss!r} is below the ledger's resolution of 1e-12; ask for more.")
    return units


def _split_units(units: int, weights: list[float]) -> list[int]:
    """Whole units per primitive, in proportion to ``weights``, adding up to exactly ``units``."""
    parts = [math.floor(units * w) for w in weights]
    parts[max(range(len(weights)), key=weights.__getitem__)] += units - sum(parts)
    if min(parts) < 1:
        raise PolicyError("epsilon is too small to split among the parts of this release; ask for more.")
    return parts


def scope_value(scope, name):
    for each in scope.chain():
        value = getattr(each, name)
        if value is not None:
            return value
    return None


def _add_noise(noise, prim, values: list, vector: bool) -> list:
    """Noisy values, one per group (for quantile scores: the selected candidate's index)."""
    if isinstance(prim, QuantileScores) or not vector:
        return [noise(values[0])]
    return noise(values)


def _notes(query: Query) -> tuple:
    notes = []
    if query.unit is not None:
        notes.append(f"at most {query.max_rows} row(s) per '{query.unit}' counted")
    return tuple(notes)


def _labels(by: tuple):
    if len(by) == 1:
        return pd.Index(list(by[0].categories), name=by[0].label)
    return pd.MultiIndex.from_product([list(k.categories) for k in by], names=[k.label for k in by])


def _shape(outcomes: list[Outcome], info: ReleaseInfo, by: tuple, shape: str, labels: Sequence[str]):
    accuracy = "; ".join(dict.fromkeys(o.accuracy for o in outcomes))
    integer = all(o.integer for o in outcomes)
    if shape == "scalar":
        out = outcomes[0]
        info = replace(info, ci_low=_scalar(out.ci_low), ci_high=_scalar(out.ci_high), accuracy=accuracy)
        value = float(out.values[0])
        return DPInt(int(round(value)), info) if out.integer else DPFloat(value, info)
    if by:
        index = _labels(by)
    else:
        index = pd.Index(list(labels))
    if shape == "series":
        if by:
            out = outcomes[0]
            values, low, high = out.values, out.ci_low, out.ci_high
            name = labels[0] if labels else None
        else:
            values = np.asarray([o.values[0] for o in outcomes])
            low = None if any(o.ci_low is None for o in outcomes) else np.asarray([o.ci_low[0] for o in outcomes])
            high = None if low is None else np.asarray([o.ci_high[0] for o in outcomes])
            name = None
        dtype = "int64" if integer else "float64"
        series_values = np.rint(values).astype(dtype) if integer else values.astype(dtype)
        ci_low = None if low is None else pd.Series(low, index=index, name=name)
        ci_high = None if high is None else pd.Series(high, index=index, name=name)
        result = DPSeries(series_values, index=index, name=name)
        result._dp = replace(info, ci_low=ci_low, ci_high=ci_high, accuracy=accuracy)
        return result
    columns = list(labels)
    data = {c: (np.rint(o.values).astype("int64") if o.integer else o.values) for c, o in zip(columns, outcomes)}
    result = DPFrame(data, index=index, columns=columns)
    if all(o.ci_low is not None for o in outcomes):
        low = pd.DataFrame({c: o.ci_low for c, o in zip(columns, outcomes)}, index=index)
        high = pd.DataFrame({c: o.ci_high for c, o in zip(columns, outcomes)}, index=index)
    else:
        low = high = None
    result._dp = replace(info, ci_low=low, ci_high=high, accuracy=accuracy)
    return result


def _scalar(value):
    return None if value is None else float(value[0])


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
