"""What a steward does for one analyst's request, without HTTP: the same pipeline as guardrail mode.

Each analyst gets, per dataset, a :class:`~jupyter_dpmagic.session.Dataset` of their own (their own
budget in the ledger, their own random splits) over the one table the steward loaded; every budget
of a dataset also counts against its dataset-wide cap. A request carries only a query plan and the
cell's spending parameters; whose budget pays comes from the token, never from the request.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass

import pandas as pd

from .. import plan
from ..context import Accuracy, Scope
from ..accountant import check_epsilon
from ..errors import PolicyError, PrivacyError
from ..policy import Policy
from ..session import Dataset, Released, Session
from .registry import Entry, Registry, read_table, table_fingerprint

__all__ = ["Analyst", "Steward", "NotFound"]

log = logging.getLogger("jupyter_dpmagic.steward")

KEPT_ANSWERS = 2000


@dataclass(frozen=True)
class Analyst:
    """Who asks: a hub user's name and groups, as the hub told them for the request's token."""

    name: str
    groups: tuple = ()


class NotFound(PolicyError):
    """No such dataset for this analyst (unknown, or not allowed: the two are not told apart)."""


class Steward:
    """The registered datasets, the ledger and each analyst's view of them.

    Parameters
    ----------
    registry : Registry
        The datasets to serve.
    ledger : str
        The ledger location (a SQLite path or a ``postgresql://`` URL).
    """

    def __init__(self, registry: Registry, *, ledger: str):
        self.registry = registry
        self.session = Session(ledger=ledger)
        self._tables: dict[str, object] = {}
        self._unavailable: dict[str, str] = {}
        self._datasets: dict[tuple[str, str], Dataset] = {}
        self._lock = threading.RLock()
        self.answers = Answers()
        for entry in registry.entries.values():
            self._load(entry)

    def _load(self, entry: Entry) -> None:
        try:
            frame, _ = read_table(entry.file, entry.format, engine=entry.engine)
        except PolicyError as error:
            self._unavailable[entry.name] = "its data file cannot be read"
            log.error("dataset %s not served: %s", entry.name, error)
            return
        if table_fingerprint(frame) != entry.fingerprint:
            self._unavailable[entry.name] = "its data changed after it was registered"
            log.error("dataset %s not served: the file %s changed since it was registered; register it again "
                      "under a new name", entry.name, entry.file)
            return
        self.session.accountant.open_dataset(name=entry.name, epsilon=entry.epsilon, delta=entry.delta)
        self._tables[entry.name] = frame

    # -------------------------------------------------------------------------------- datasets
    def entry(self, name: str, analyst: Analyst) -> Entry:
        entry = self.registry.entries.get(name)
        if entry is None or not entry.allows(analyst.name, analyst.groups):
            raise NotFound(f"no dataset named '{name}' is available to you; dp.datasets() lists those that are.")
        if name in self._unavailable:
            raise PolicyError(f"dataset '{name}' is registered but not served: {self._unavailable[name]}. "
                              "Ask the data steward.")
        return entry

    def dataset(self, name: str, analyst: Analyst) -> Dataset:
        """This analyst's budget and view of dataset ``name`` (opened on first use)."""
        entry = self.entry(name, analyst)
        with self._lock:
            found = self._datasets.get((name, analyst.name))
            if found is None:
                found = self.session.protect(
                    self._tables[name], name=name, epsilon=entry.per_user_epsilon, delta=entry.delta,
                    policy=Policy.from_dict(entry.policy, source=f"the policy of '{name}'"),
                    privacy_unit=entry.privacy_unit, max_rows_per_unit=entry.max_rows_per_unit,
                    max_groups_per_unit=entry.max_groups_per_unit, user=analyst.name, keep=False,
                    data_key=entry.data_key)
                self._datasets[(name, analyst.name)] = found
            return found

    def listing(self, analyst: Analyst) -> list[dict]:
        """The datasets this analyst may query, with their schema, policy and budgets."""
        return [self._public(entry) for name, entry in sorted(self.registry.entries.items())
                if entry.allows(analyst.name, analyst.groups) and name in self._tables]

    def _public(self, entry: Entry) -> dict:
        table = self._tables[entry.name]
        dtypes = table.dtypes.items() if isinstance(table, pd.DataFrame) else table.dtypes().items()
        return {"name": entry.name, "description": entry.description,
                "columns": {c: str(t) for c, t in dtypes}, "policy": entry.policy, "engine": entry.engine,
                "privacy_unit": entry.privacy_unit, "max_rows_per_unit": entry.max_rows_per_unit,
                "max_groups_per_unit": entry.max_groups_per_unit, "epsilon": entry.epsilon,
                "per_user_epsilon": entry.per_user_epsilon, "delta": entry.delta,
                # What all analysts together have left: pooled answers count against the dataset.
                "epsilon_left": self.session.accountant.dataset_status(entry.name).epsilon_remaining}

    def describe(self, name: str, analyst: Analyst) -> dict:
        """What a kernel needs to build a private frame over ``name``: no rows, no statistics."""
        dataset = self.dataset(name, analyst)
        estimates = {c: (e.low, e.high, e.epsilon, e.charge_id) for c, e in dataset.estimates.items()}
        return {**self._public(self.entry(name, analyst)), "user": analyst.name, "record": dataset.record,
                "estimates": estimates}

    def status(self, name: str, analyst: Analyst):
        return self.session.status(self.dataset(name, analyst))

    def budgets(self, analyst: Analyst) -> list:
        ledger = self.session.accountant.ledger
        return [self.status(r.name, analyst) for r in ledger.budgets(user=analyst.name)
                if r.name in self._tables and self.registry.entries[r.name].allows(analyst.name, analyst.groups)]

    def history(self, name: str, analyst: Analyst, *, last: int | None = None, verify: bool = False):
        self.entry(name, analyst)
        ledger = self.session.accountant.ledger
        if verify:
            return ledger.verify(name=name, user=analyst.name)
        return {"record": ledger.budget(name=name, user=analyst.name),
                "charges": ledger.history(name=name, user=analyst.name, last=last)}

    # -------------------------------------------------------------------------------- releases
    def release(self, name: str, analyst: Analyst, request: dict) -> Released:
        """Check a release request, charge the analyst's budget and return the release."""
        dataset = self.dataset(name, analyst)
        try:
            measures = plan.from_dict(request["measures"])
            where = plan.from_dict(request.get("where") or {"kind": "tuple", "items": []})
            by = plan.from_dict(request.get("by") or {"kind": "tuple", "items": []})
            plan.check_parts(measures, where, by)
            _check_splits(dataset, measures + where + tuple(k.expr for k in by))
            scope = _scope(request.get("scope") or {}, (dataset.name, dataset.user))
            epsilon, delta = plan.from_dict(request.get("epsilon")), plan.from_dict(request.get("delta"))
            notes = tuple(str(n) for n in request.get("notes") or ())
            what = request.get("what")
        except (KeyError, TypeError, ValueError) as error:
            if isinstance(error, PrivacyError):
                raise
            raise PolicyError(f"this request is not a release the library would send ({type(error).__name__}: "
                              f"{error}); update jupyter-dpmagic in the kernel to the steward's version.") from None
        return self.session.make_release(dataset, measures, where=where, by=by, epsilon=epsilon, delta=delta,
                                         notes=notes, what=None if what is None else str(what), scope=scope)


def _check_splits(dataset: Dataset, nodes) -> None:
    """A split keeps a person's rows together by the privacy unit, and by nothing else."""
    for part in _parts(nodes):
        if part.unit not in (None, dataset.unit):
            raise PolicyError("a train/test split groups rows by the privacy unit only; make the split with "
                              "dp.train_test_split in the kernel.")


def _parts(nodes):
    import dataclasses

    for node in nodes:
        if isinstance(node, plan.Part):
            yield node
        elif dataclasses.is_dataclass(node):
            yield from _parts(getattr(node, f.name) for f in dataclasses.fields(node))
        elif isinstance(node, tuple):
            yield from _parts(node)


def _scope(raw: dict, key: tuple[str, str]) -> Scope:
    """The analyst's cell as a scope: its spending parameters and its --budget caps."""
    parent = None
    for cap in reversed(raw.get("caps") or []):
        spent = cap.get("spent_units", 0)
        if isinstance(spent, bool) or not isinstance(spent, int) or spent < 0:
            raise PolicyError("a cell's spent units are a whole number >= 0.")
        parent = Scope(budget=check_epsilon(cap.get("budget"), what="budget"), spent_units={key: spent},
                       parent=parent)
    accuracy = raw.get("accuracy")
    if accuracy is not None:
        value, relative = accuracy
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0 or \
                not isinstance(relative, bool) or (relative and value >= 1):
            raise PolicyError("accuracy must be a positive number (a share below 1 when relative).")
        accuracy = Accuracy(float(value), relative)
    purpose = raw.get("purpose")
    if purpose is not None and not isinstance(purpose, str):
        raise PolicyError("purpose is a name, e.g. 'explore'.")
    return Scope(epsilon=plan.from_dict(raw.get("epsilon")), delta=plan.from_dict(raw.get("delta")),
                 purpose=purpose, accuracy=accuracy, explain=[] if raw.get("explain") else None, parent=parent)


class Answers:
    """Recent answers by (analyst, request id), so that a kernel whose answer was lost can fetch it
    instead of asking again (which would be a second release, charged twice)."""

    def __init__(self, kept: int = KEPT_ANSWERS):
        self._kept = kept
        self._found: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def start(self, user: str, request_id: str) -> bool:
        """Note a request as running; False when this analyst sent that id already."""
        with self._lock:
            if (user, request_id) in self._found:
                return False
            self._found[(user, request_id)] = {"state": "running"}
            while len(self._found) > self._kept:
                self._found.popitem(last=False)
            return True

    def finish(self, user: str, request_id: str, answer: dict) -> None:
        with self._lock:
            self._found[(user, request_id)] = answer

    def get(self, user: str, request_id: str) -> dict:
        with self._lock:
            return self._found.get((user, request_id), {"state": "unknown"})
