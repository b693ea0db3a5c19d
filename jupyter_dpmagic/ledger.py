"""Durable store of privacy budgets and of the charges made against them.

A budget belongs to one (dataset name, user) pair. Its size and what has been spent are integers
in units of ``1 / UNITS_PER_ONE`` of epsilon (pure budgets) or of zCDP rho (approximate budgets);
this module does not care which, :mod:`jupyter_dpmagic.accountant` does the conversions. An
approximate budget may also hold a reserve of delta, in units of ``1 / DELTA_UNITS_PER_ONE``, that
releases which spend a delta of their own (DP partition selection) draw on.

Two databases can hold a ledger: a SQLite file (:class:`SQLiteLedger`, the default, for one machine)
and a PostgreSQL database (:class:`jupyter_dpmagic.ledger_postgres.PostgresLedger`, one ledger shared
by several kernels or machines); :func:`open_ledger` picks one by its location. What they do is
written once, in :class:`Ledger`. The guarantees below are stated in SQLite's terms;
:mod:`jupyter_dpmagic.ledger_postgres` says how PostgreSQL gives each of them.

Guarantees
----------
* A charge is committed durably (SQLite WAL with ``synchronous=FULL``) before :meth:`SQLiteLedger.charge`
  returns, so a caller that releases a value only after ``charge`` returned can never have released
  something that is not on record, even if the process dies right after.
* The debit is one ``BEGIN IMMEDIATE`` transaction holding the database write lock: the conditional
  ``UPDATE ... WHERE spent_units + ? <= cap_units AND delta_spent_units + ? <= delta_cap_units``, the
  tier and purpose-reserve checks and the insert of the charge row either all happen or none does.
  Processes racing on one budget therefore never exceed it, and a refused charge leaves no trace.
* Integer arithmetic: no sum of charges can exceed the cap through rounding. The schema also
  refuses ``spent_units > cap_units`` and ``delta_spent_units > delta_cap_units`` outright, as a
  second line of defence.
* Tamper evidence: the charges of each budget form an append-only hash chain. Every charge row
  carries ``prev_id`` and ``prev_hash`` (the id and hash of the budget's previous charge) and
  ``hash``, the SHA-256 of a canonical encoding of its own fields, the tiers it touched and those two
  links (:func:`charge_hash`). The first charge links to the budget's *genesis* (id 0 and the
  SHA-256 of the budget's fixed fields: name, user, fingerprint, mode, totals, caps, creation time,
  :func:`budget_genesis`), and the budget row keeps the chain's head (``head_id``, ``head_hash``).
  The chain is per budget so that one dataset's history verifies on its own, and so that its head
  sits in the row the debit updates anyway: chaining a charge costs no extra read, only an id
  lookup, a hash and two more columns written in the same ``BEGIN IMMEDIATE`` transaction as the
  debit. :meth:`SQLiteLedger.verify` recomputes the chain and checks that the budget's
  ``spent_units``, ``releases`` and ``delta_spent_units`` equal the sums over its charges; an edited,
  deleted or inserted charge, or an edited budget row, is reported with the charge's id.
* Triggers refuse ``UPDATE`` and ``DELETE`` on charges and their tiers, any change of a budget's
  fixed fields, spent amounts going down, and deleting a budget. Someone with write access to the
  file can drop triggers, so the chain is the evidence, not the triggers. The chain has no secret
  key either: whoever knows this module can rewrite a whole chain consistently. It shows edits made
  with ordinary database tools; to rule out a rewritten chain, note the head hash that
  :meth:`SQLiteLedger.verify` reports somewhere the analyst cannot write, and compare later.
* A dataset may also have a *dataset-wide cap* (table ``dataset_caps``, one row per dataset name,
  never changed or deleted): what all its users' budgets have spent together, and what their delta
  reserves have spent together, must stay within it. The amounts spent are not stored a second
  time; they are the sums over the dataset's budget rows. A charge of a capped dataset locks every
  budget row of the dataset, in the order of their users, before its own, and checks those sums in
  the same transaction as its debit, so charges of different users racing on one dataset never take
  it past the cap either.
* Files written before the delta reserve existed are upgraded when opened: the missing columns are
  added with their defaults, so their budgets keep their caps and simply have no delta reserve.
* Files written before the hash chain existed are upgraded when opened, once: the chain columns are
  added and the chain is computed over the charges already there, in id order, in the same
  transaction. The chain vouches for those charges only from that moment on; what happened to
  them before cannot be known. Later opens never recompute a chain (a row without a hash stays
  one that verification reports).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import pathlib
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from fractions import Fraction

from .errors import BudgetExceededError, PolicyError, close_match_hint

__all__ = [
    "UNITS_PER_ONE",
    "DELTA_UNITS_PER_ONE",
    "BudgetRecord",
    "ChargeRecord",
    "ChainProblem",
    "ChainReport",
    "DatasetCap",
    "Ledger",
    "SQLiteLedger",
    "budget_genesis",
    "charge_hash",
    "open_ledger",
]

UNITS_PER_ONE = 10**12
"""Budget amounts are stored as integers in units of ``1 / UNITS_PER_ONE``."""

DELTA_UNITS_PER_ONE = 10**18
"""Delta amounts are stored as integers in units of ``1 / DELTA_UNITS_PER_ONE``.

A delta is below 1, so every delta amount stays below ``10**18 < 2**63`` and fits SQLite's integers.
"""

# Caps and charges stay below 2**62 so that ``spent_units + units`` can never overflow SQLite's
# 64-bit integers (SQLite would silently turn the sum into an inexact REAL).
_MAX_UNITS = 2**62

_BUSY_TIMEOUT_S = 30.0
_MODES = ("pure", "zcdp")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS budgets (
    name          TEXT    NOT NULL,
    user          TEXT    NOT NULL,
    fingerprint   TEXT    NOT NULL,
    mode          TEXT    NOT NULL CHECK (mode IN ('pure', 'zcdp')),
    epsilon_total REAL    NOT NULL,
    delta_total   REAL    NOT NULL,
    cap_units     INTEGER NOT NULL CHECK (cap_units > 0),
    spent_units   INTEGER NOT NULL DEFAULT 0 CHECK (spent_units >= 0 AND spent_units <= cap_units),
    releases      INTEGER NOT NULL DEFAULT 0,
    created       TEXT    NOT NULL,
    delta_cap_units   INTEGER NOT NULL DEFAULT 0 CHECK (delta_cap_units >= 0),
    delta_spent_units INTEGER NOT NULL DEFAULT 0
        CHECK (delta_spent_units >= 0 AND delta_spent_units <= delta_cap_units),
    head_id       INTEGER NOT NULL DEFAULT 0,
    head_hash     TEXT    NOT NULL DEFAULT '',
    PRIMARY KEY (name, user)
);
CREATE INDEX IF NOT EXISTS budgets_by_data ON budgets (user, fingerprint);
CREATE TABLE IF NOT EXISTS charges (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    time      TEXT    NOT NULL,
    name      TEXT    NOT NULL,
    user      TEXT    NOT NULL,
    query     TEXT    NOT NULL,
    mechanism TEXT    NOT NULL,
    epsilon   REAL    NOT NULL,
    delta     REAL    NOT NULL,
    rho       REAL,
    units     INTEGER NOT NULL CHECK (units > 0),
    tier      TEXT    NOT NULL,
    purpose   TEXT    NOT NULL,
    delta_units INTEGER NOT NULL DEFAULT 0 CHECK (delta_units >= 0),
    prev_id   INTEGER NOT NULL DEFAULT 0,
    prev_hash TEXT    NOT NULL DEFAULT '',
    hash      TEXT    NOT NULL DEFAULT '',
    FOREIGN KEY (name, user) REFERENCES budgets (name, user)
);
-- Covers the per-tier SUM(units) done inside every tier-capped charge.
CREATE INDEX IF NOT EXISTS charges_by_tier ON charges (name, user, tier, units);
-- Covers the per-purpose SUM(units) done inside every charge checked against a purpose's reserve.
CREATE INDEX IF NOT EXISTS charges_by_purpose ON charges (name, user, purpose, units);
-- Every tier a charge's release touched (a release on 'age' filtered by 'diagnosis' touches both), so
-- a tier's cap bounds everything that read its columns, not only releases where it was the strictest.
CREATE TABLE IF NOT EXISTS charge_tiers (
    charge_id INTEGER NOT NULL REFERENCES charges (id),
    name      TEXT    NOT NULL,
    user      TEXT    NOT NULL,
    tier      TEXT    NOT NULL,
    units     INTEGER NOT NULL CHECK (units > 0),
    PRIMARY KEY (charge_id, tier)
);
-- The dataset-wide cap of a dataset: all budgets of the name together, whoever their user. What has
-- been spent of it is the sum over those budgets, never stored here.
CREATE TABLE IF NOT EXISTS dataset_caps (
    name            TEXT    NOT NULL PRIMARY KEY,
    mode            TEXT    NOT NULL CHECK (mode IN ('pure', 'zcdp')),
    epsilon_total   REAL    NOT NULL,
    delta_total     REAL    NOT NULL,
    cap_units       INTEGER NOT NULL CHECK (cap_units > 0),
    delta_cap_units INTEGER NOT NULL DEFAULT 0 CHECK (delta_cap_units >= 0),
    created         TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS charge_tiers_by_tier ON charge_tiers (name, user, tier, units);
-- Bounds released by a DP estimate (what the charge charge_id paid for), reused by later releases
-- on the same data, so that an estimate is paid for once, also across restarts.
CREATE TABLE IF NOT EXISTS estimated_bounds (
    name        TEXT    NOT NULL,
    user        TEXT    NOT NULL,
    column_name TEXT    NOT NULL,
    low         REAL    NOT NULL,
    high        REAL    NOT NULL CHECK (high > low),
    epsilon     REAL    NOT NULL,
    charge_id   INTEGER NOT NULL REFERENCES charges (id),
    PRIMARY KEY (name, user, column_name)
);
"""

# Columns that files created before the delta reserve lack, with the definitions that add them.
# Order matters: the check on delta_spent_units refers to delta_cap_units.
_ADDED_COLUMNS = (
    ("budgets", "delta_cap_units", "INTEGER NOT NULL DEFAULT 0 CHECK (delta_cap_units >= 0)"),
    (
        "budgets",
        "delta_spent_units",
        "INTEGER NOT NULL DEFAULT 0 CHECK (delta_spent_units >= 0 AND delta_spent_units <= delta_cap_units)",
    ),
    ("charges", "delta_units", "INTEGER NOT NULL DEFAULT 0 CHECK (delta_units >= 0)"),
    # The hash chain; files that lack these get their chain computed once, when they are added.
    ("budgets", "head_id", "INTEGER NOT NULL DEFAULT 0"),
    ("budgets", "head_hash", "TEXT NOT NULL DEFAULT ''"),
    ("charges", "prev_id", "INTEGER NOT NULL DEFAULT 0"),
    ("charges", "prev_hash", "TEXT NOT NULL DEFAULT ''"),
    ("charges", "hash", "TEXT NOT NULL DEFAULT ''"),
)

# Created after any upgrade (which must still write the chain into old rows). Each is one statement:
# they contain semicolons, so they are not part of _SCHEMA, which is split on them.
_APPEND_ONLY = "the privacy ledger is append-only"
_TRIGGERS = (
    f"""CREATE TRIGGER IF NOT EXISTS charges_no_update BEFORE UPDATE ON charges
    BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}: a recorded charge cannot be changed'); END""",
    f"""CREATE TRIGGER IF NOT EXISTS charges_no_delete BEFORE DELETE ON charges
    BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}: a recorded charge cannot be deleted'); END""",
    f"""CREATE TRIGGER IF NOT EXISTS charge_tiers_no_update BEFORE UPDATE ON charge_tiers
    BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}: a recorded charge cannot be changed'); END""",
    f"""CREATE TRIGGER IF NOT EXISTS charge_tiers_no_delete BEFORE DELETE ON charge_tiers
    BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}: a recorded charge cannot be deleted'); END""",
    f"""CREATE TRIGGER IF NOT EXISTS budgets_no_delete BEFORE DELETE ON budgets
    BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}: a budget cannot be deleted'); END""",
    f"""CREATE TRIGGER IF NOT EXISTS budgets_fixed BEFORE UPDATE OF name, user, fingerprint, mode, epsilon_total,
    delta_total, cap_units, delta_cap_units, created ON budgets
    BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}: the totals of a budget cannot be changed'); END""",
    f"""CREATE TRIGGER IF NOT EXISTS dataset_caps_no_update BEFORE UPDATE ON dataset_caps
    BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}: a dataset-wide budget cannot be changed'); END""",
    f"""CREATE TRIGGER IF NOT EXISTS dataset_caps_no_delete BEFORE DELETE ON dataset_caps
    BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}: a dataset-wide budget cannot be deleted'); END""",
    f"""CREATE TRIGGER IF NOT EXISTS budgets_only_grow BEFORE UPDATE OF spent_units, releases, delta_spent_units
    ON budgets WHEN NEW.spent_units < OLD.spent_units OR NEW.releases < OLD.releases
    OR NEW.delta_spent_units < OLD.delta_spent_units
    BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}: what a budget has spent cannot go down'); END""",
)


@dataclass(frozen=True)
class BudgetRecord:
    """One dataset's budget as stored.

    Attributes
    ----------
    name, user : str
        The budget's key.
    fingerprint : str
        Identifies the data the budget protects.
    mode : {"pure", "zcdp"}
        What a unit measures: epsilon (``"pure"``) or zCDP rho (``"zcdp"``).
    epsilon_total, delta_total : float
        The guarantee the budget was opened with.
    cap_units, spent_units : int
        Size of the budget and what has been charged, in ``1 / UNITS_PER_ONE``.
    created : str
        ISO-8601 UTC time of registration.
    releases : int
        Number of charges recorded.
    delta_cap_units, delta_spent_units : int
        The part of ``delta_total`` reserved for releases that spend a delta of their own (DP
        partition selection), and what they have spent of it, in ``1 / DELTA_UNITS_PER_ONE``.
        0 for pure budgets and for budgets registered without a reserve.
    """

    name: str
    user: str
    fingerprint: str
    mode: str
    epsilon_total: float
    delta_total: float
    cap_units: int
    spent_units: int
    created: str
    releases: int
    delta_cap_units: int = 0
    delta_spent_units: int = 0

    @property
    def conversion_delta(self) -> float:
        """The delta at which this budget's rho is converted to epsilon.

        ``delta_total`` less the delta reserve: the reserve and the conversion together make up
        ``delta_total``. Equal to ``delta_total`` when there is no reserve (and 0 for pure budgets).
        """
        return self.delta_total - self.delta_cap_units / DELTA_UNITS_PER_ONE


@dataclass(frozen=True)
class ChargeRecord:
    """One committed charge.

    Attributes
    ----------
    id : int
        Increasing with commit order.
    time : str
        ISO-8601 UTC time of the charge.
    name, user : str
        The budget charged.
    query, mechanism : str
        What was released and how.
    epsilon, delta : float
        The release's guarantee as its mechanism reported it.
    rho : float or None
        The zCDP rho charged, for budgets in ``"zcdp"`` mode.
    units : int
        What was debited, in ``1 / UNITS_PER_ONE``.
    tier, purpose : str
        Labels from the policy, used for per-tier caps, purpose reserves and reporting.
    delta_units : int
        What was debited from the budget's delta reserve, in ``1 / DELTA_UNITS_PER_ONE``.
    """

    id: int
    time: str
    name: str
    user: str
    query: str
    mechanism: str
    epsilon: float
    delta: float
    rho: float | None
    units: int
    tier: str
    purpose: str
    delta_units: int = 0


@dataclass(frozen=True)
class ChainProblem:
    """One thing :meth:`SQLiteLedger.verify` found wrong with a budget's chain.

    Attributes
    ----------
    kind : {"edited", "deleted", "inserted", "budget"}
        ``"edited"``: the charge ``charge_id`` no longer matches its hash (or the hash its successor
        recorded); ``"deleted"``: the charge ``charge_id`` is missing from the chain;
        ``"inserted"``: the charge ``charge_id`` is not part of the chain; ``"budget"``: the budget
        row disagrees with its chain (fixed fields, spent amounts, release count or head).
    charge_id : int or None
        The charge concerned; None for problems of the budget row.
    detail : str
        A sentence saying what was found.
    """

    kind: str
    charge_id: int | None
    detail: str


@dataclass(frozen=True)
class ChainReport:
    """The result of verifying one budget's hash chain (:meth:`SQLiteLedger.verify`).

    Attributes
    ----------
    name, user : str
        The budget.
    charges : int
        Charge rows of the budget found in the file.
    spent_units : int or None
        What the budget row says was spent (None if the budget row is missing).
    charged_units : int
        The sum of the units of the budget's charge rows.
    head_hash : str
        The hash the chain ends with (the budget's genesis when nothing was charged). Noting it
        somewhere else lets a later check tell whether the chain was rewritten as a whole.
    problems : tuple of ChainProblem
        Empty when the chain is intact and the budget row matches it.
    """

    name: str
    user: str
    charges: int
    spent_units: int | None
    charged_units: int
    head_hash: str
    problems: tuple[ChainProblem, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        """True when the chain is intact and the budget row matches it."""
        return not self.problems

    def __bool__(self) -> bool:
        return self.ok

    @property
    def summary(self) -> str:
        """``"chain intact: 3 charges, spent matches"`` or what is wrong, in one sentence each."""
        if self.ok:
            return f"chain intact: {self.charges} charge{'s' if self.charges != 1 else ''}, spent matches"
        return "chain broken: " + "; ".join(p.detail for p in self.problems)


@dataclass(frozen=True)
class DatasetCap:
    """The dataset-wide cap of one dataset, and what all of its budgets have spent of it.

    Attributes
    ----------
    name : str
        The dataset.
    mode : {"pure", "zcdp"}
        What a unit measures, as for :class:`BudgetRecord`; every budget of the dataset has this mode.
    epsilon_total, delta_total : float
        The guarantee the cap was registered with, for all users of the dataset together.
    cap_units, delta_cap_units : int
        The cap, in ``1 / UNITS_PER_ONE`` of epsilon or rho, and the part of ``delta_total``
        reserved for releases that spend a delta of their own, in ``1 / DELTA_UNITS_PER_ONE``.
    created : str
        ISO-8601 UTC time of registration.
    spent_units, delta_spent_units : int
        What the dataset's budgets have spent together (sums over their rows, not stored twice).
    users : int
        How many budgets (users) the dataset has.
    releases : int
        Charges recorded against all of them.
    """

    name: str
    mode: str
    epsilon_total: float
    delta_total: float
    cap_units: int
    delta_cap_units: int
    created: str
    spent_units: int = 0
    delta_spent_units: int = 0
    users: int = 0
    releases: int = 0

    @property
    def conversion_delta(self) -> float:
        """``delta_total`` less the delta reserve, as :attr:`BudgetRecord.conversion_delta`."""
        return self.delta_total - self.delta_cap_units / DELTA_UNITS_PER_ONE


def open_ledger(location: str | os.PathLike[str]) -> Ledger:
    """Open the ledger at ``location``: a file path (SQLite) or a ``postgresql://`` URL (PostgreSQL).

    ``postgres://`` URLs are accepted too. The PostgreSQL ledger needs the ``postgres`` extra
    (``pip install jupyter-dpmagic[postgres]``); without it a PolicyError says so.
    """
    if isinstance(location, str) and location.startswith(("postgresql://", "postgres://")):
        from .ledger_postgres import PostgresLedger

        return PostgresLedger(location)
    return SQLiteLedger(location)


class Ledger:
    """What the SQLite and the PostgreSQL ledgers share: every method, written once.

    A subclass provides the connection and the dialect: :meth:`_write` (run a function in one
    write transaction that holds the locks a debit needs, committing on success), :meth:`_snapshot`
    (one consistent read-only state), :meth:`_next_charge_id`, :meth:`_lock_registrations`, and the
    few statements that differ (``_FOR_UPDATE``, ``_NO_LIMIT``, ``_INSERT_BOUNDS``). Statements are
    written with ``?`` placeholders; a subclass whose driver wants others translates them.
    """

    # Appended to the select of the budget row inside a debit (a row lock, where the database has them).
    _FOR_UPDATE = ""
    # The LIMIT that means "all rows".
    _NO_LIMIT: int | None = -1
    _INSERT_BOUNDS = (
        "INSERT OR IGNORE INTO estimated_bounds (name, user, column_name, low, high, epsilon, charge_id)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)"
    )

    def _write(self, body):
        """Run ``body(conn)`` in one write transaction and return its result; roll back on any error."""
        with self._transaction() as conn:
            return body(conn)

    def _transaction(self):  # pragma: no cover - provided by subclasses
        raise NotImplementedError

    def _snapshot(self):  # pragma: no cover - provided by subclasses
        raise NotImplementedError

    def _next_charge_id(self, conn) -> int:  # pragma: no cover - provided by subclasses
        raise NotImplementedError

    def _lock_registrations(self, conn, user: str) -> None:
        """Serialize registrations of ``user``'s budgets (nothing to do where all writes are serialized)."""

    def _lock_dataset(self, conn, name: str) -> None:
        """Serialize registrations of dataset ``name``'s cap and budgets (as :meth:`_lock_registrations`)."""

    def close(self) -> None:  # pragma: no cover - provided by subclasses
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- budgets --------------------------------------------------------------------------------

    def open_budget(
        self,
        *,
        name: str,
        user: str,
        fingerprint: str,
        mode: str,
        epsilon_total: float,
        delta_total: float,
        cap_units: int,
        delta_cap_units: int = 0,
    ) -> BudgetRecord:
        """Register a budget, or return the one already registered for this data.

        Parameters
        ----------
        name : str
            Dataset name.
        user : str
            Whose budget it is.
        fingerprint : str
            Identifies the data; the same data must always get the same fingerprint.
        mode : {"pure", "zcdp"}
            ``"pure"`` when ``delta_total == 0``, else ``"zcdp"``.
        epsilon_total, delta_total : float
            The guarantee, kept for display and for checking later calls.
        cap_units : int
            Size of the budget in ``1 / UNITS_PER_ONE`` of epsilon or rho.
        delta_cap_units : int, default 0
            The part of ``delta_total`` reserved for releases that spend a delta of their own, in
            ``1 / DELTA_UNITS_PER_ONE``; must be 0 for pure budgets and at most ``delta_total``.

        Returns
        -------
        BudgetRecord
            The existing record, unchanged, when ``(name, user, fingerprint)`` is already
            registered with the same totals (its caps stay as they were registered); otherwise
            the new record.

        Raises
        ------
        PolicyError
            If the name holds different data, if the data is already registered under another
            name, if the totals differ from the registered ones, or if the dataset has a
            dataset-wide cap (:meth:`set_dataset_cap`) of the other mode. An existing budget is
            never changed or reset.
        """
        name, user = _text(name, "name"), _text(user, "user")
        fingerprint = _text(fingerprint, "fingerprint")
        epsilon_total, delta_total = _checked_totals(mode, epsilon_total, delta_total, cap_units, delta_cap_units)

        def register(conn) -> BudgetRecord:
            self._lock_registrations(conn, user)
            self._lock_dataset(conn, name)
            row = conn.execute(_SELECT_BUDGET + " WHERE name = ? AND user = ?", (name, user)).fetchone()
            if row is not None:
                existing = _budget(row)
                if existing.fingerprint != fingerprint:
                    raise _different_data(conn, name, user)
                if (existing.epsilon_total, existing.delta_total) != (epsilon_total, delta_total):
                    raise _different_totals(existing)
                return existing
            capped = conn.execute("SELECT mode FROM dataset_caps WHERE name = ?", (name,)).fetchone()
            if capped is not None and capped[0] != mode:
                raise _mode_mismatch(name, cap_mode=capped[0], budget_mode=mode)
            other = conn.execute(
                "SELECT name FROM budgets WHERE user = ? AND fingerprint = ? ORDER BY name LIMIT 1",
                (user, fingerprint),
            ).fetchone()
            if other is not None:
                raise PolicyError(
                    f"this data is already protected as {other[0]!r}; "
                    f"use name={other[0]!r} to continue its budget"
                )
            created = _now()
            genesis = budget_genesis(
                name=name, user=user, fingerprint=fingerprint, mode=mode, epsilon_total=epsilon_total,
                delta_total=delta_total, cap_units=cap_units, delta_cap_units=delta_cap_units, created=created,
            )
            conn.execute(
                "INSERT INTO budgets (name, user, fingerprint, mode, epsilon_total, delta_total, cap_units,"
                " spent_units, releases, created, delta_cap_units, delta_spent_units, head_id, head_hash)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, 0, 0, ?, ?, 0, 0, ?)",
                (name, user, fingerprint, mode, epsilon_total, delta_total, cap_units, created, delta_cap_units,
                 genesis),
            )
            return BudgetRecord(
                name=name,
                user=user,
                fingerprint=fingerprint,
                mode=mode,
                epsilon_total=epsilon_total,
                delta_total=delta_total,
                cap_units=cap_units,
                spent_units=0,
                created=created,
                releases=0,
                delta_cap_units=delta_cap_units,
                delta_spent_units=0,
            )

        return self._write(register)

    def set_dataset_cap(
        self,
        *,
        name: str,
        mode: str,
        epsilon_total: float,
        delta_total: float,
        cap_units: int,
        delta_cap_units: int,
    ) -> DatasetCap:
        """Register the dataset-wide cap of dataset ``name``, or return the one already registered.

        Once registered, every charge to any budget of ``name`` (whatever its user) must keep the
        units spent by all of them together within ``cap_units``, and the delta their reserves
        spent together within ``delta_cap_units``, besides its own budget's limits.

        Parameters
        ----------
        name : str
            Dataset name, as in :meth:`open_budget`.
        mode, epsilon_total, delta_total, cap_units, delta_cap_units
            As for :meth:`open_budget`, for all users of the dataset together.

        Returns
        -------
        DatasetCap
            The cap with what the dataset's budgets have spent so far. Registering the same values
            again returns the existing cap.

        Raises
        ------
        PolicyError
            For invalid values; if a cap with other values is registered (a cap is fixed once
            registered); or if budgets of ``name`` of the other mode exist.
        """
        name = _text(name, "name")
        epsilon_total, delta_total = _checked_totals(mode, epsilon_total, delta_total, cap_units, delta_cap_units)
        values = (mode, epsilon_total, delta_total, cap_units, delta_cap_units)

        def register(conn) -> DatasetCap:
            self._lock_dataset(conn, name)
            existing = _dataset_cap(conn, name)
            if existing is not None:
                if (existing.mode, existing.epsilon_total, existing.delta_total, existing.cap_units,
                        existing.delta_cap_units) != values:
                    raise PolicyError(
                        f"the dataset-wide budget of {name!r} is fixed once registered (epsilon="
                        f"{existing.epsilon_total!r}, delta={existing.delta_total!r}) and is never changed; "
                        "register the data under a new name to start a new budget"
                    )
                return existing
            other = conn.execute(
                "SELECT mode, COUNT(*) FROM budgets WHERE name = ? AND mode <> ? GROUP BY mode", (name, mode)
            ).fetchone()
            if other is not None:
                raise _mode_mismatch(name, cap_mode=mode, budget_mode=other[0], budgets=int(other[1]))
            # Wait for charges of the dataset in flight (their budget rows are locked): a charge that
            # started before the cap existed commits before it, every later one sees it.
            conn.execute(
                "SELECT user FROM budgets WHERE name = ? ORDER BY user" + self._FOR_UPDATE, (name,)
            ).fetchall()
            conn.execute(
                "INSERT INTO dataset_caps (name, mode, epsilon_total, delta_total, cap_units, delta_cap_units,"
                " created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (name, *values, _now()),
            )
            return _dataset_cap(conn, name)

        return self._write(register)

    def dataset_cap(self, *, name: str) -> DatasetCap | None:
        """Return the dataset-wide cap of dataset ``name`` with what its budgets spent, or None."""
        with self._snapshot() as conn:
            return _dataset_cap(conn, name)

    def budget(self, *, name: str, user: str) -> BudgetRecord:
        """Return the budget of dataset ``name`` for ``user``.

        Raises
        ------
        PolicyError
            If there is none; the message suggests the closest of the user's dataset names.
        """
        with self._snapshot() as conn:
            row = conn.execute(_SELECT_BUDGET + " WHERE name = ? AND user = ?", (name, user)).fetchone()
            if row is None:
                raise _unknown_budget(conn, name, user)
        return _budget(row)

    def budgets(self, *, user: str) -> list[BudgetRecord]:
        """Return all budgets of ``user``, ordered by dataset name."""
        with self._snapshot() as conn:
            rows = conn.execute(_SELECT_BUDGET + " WHERE user = ? ORDER BY name", (user,)).fetchall()
        return [_budget(r) for r in rows]

    # -- charges --------------------------------------------------------------------------------

    def charge(
        self,
        *,
        name: str,
        user: str,
        units: int,
        epsilon: float,
        delta: float,
        rho: float | None,
        query: str,
        mechanism: str,
        tier: str,
        purpose: str,
        tier_cap_units: int | None = None,
        tier_caps: Mapping[str, int | None] | None = None,
        delta_units: int = 0,
        purpose_caps: Mapping[str, int] | None = None,
    ) -> ChargeRecord:
        """Debit ``units`` from a budget and record the charge, durably, in one transaction.

        Parameters
        ----------
        name, user : str
            The budget to charge.
        units : int
            What the release costs, in ``1 / UNITS_PER_ONE``; must be positive.
        epsilon, delta, rho : float, float, float or None
            The release's guarantee, recorded for the history.
        query, mechanism, tier, purpose : str
            Recorded with the charge.
        tier_cap_units : int, optional
            If given, the units charged to ``tier`` on this budget, this charge included, must not
            exceed it.
        tier_caps : mapping of str to int or None, optional
            Every tier the release touched, with its cap in units (None: no cap). Each capped tier's
            units, summed over all charges that touched it and this one, must not exceed its cap.
            Defaults to ``{tier: tier_cap_units}``.
        delta_units : int, default 0
            What the release takes from the budget's delta reserve, in ``1 / DELTA_UNITS_PER_ONE``
            (DP partition selection); the reserve's spent units, this charge included, must not
            exceed its cap.
        purpose_caps : mapping of str to int, optional
            ``{q: cap}`` for every purpose ``q`` that has a share of the budget reserved: purposes
            other than ``q`` may spend ``cap`` units together, and ``q`` keeps the rest,
            ``cap_units - cap``, for itself. A charge must leave unspent what every *other*
            reserved purpose has not yet used of its reserve; what its own purpose has reserved it
            may spend. With one reserve ``q`` this is: the units of all charges whose purpose is
            not ``q``, this one included when its purpose is not ``q``, must not exceed ``cap``.

        Returns
        -------
        ChargeRecord
            The committed charge. It is on disk when this returns.

        Raises
        ------
        BudgetExceededError
            If the budget, a tier cap, a purpose reserve, the delta reserve or the dataset-wide cap
            (:meth:`set_dataset_cap`) cannot pay; nothing is written. The error carries ``limit``
            (``"budget"``, ``"tier"``, ``"purpose"``, ``"selection_delta"`` or ``"dataset"``),
            ``needed_units`` and ``remaining_units`` (in delta units for ``"selection_delta"``, and
            for ``"dataset"`` when what the dataset's delta reserves spent together refused),
            ``tier`` and ``purpose`` (the capped tier or the purpose whose reserve refused; None
            otherwise).
        PolicyError
            If ``units`` is not a positive integer, ``delta_units`` not a non-negative one, a cap is
            invalid, or the budget does not exist.
        """
        if not _is_int(units) or units <= 0:
            raise PolicyError(f"units must be a positive integer (got {units!r}); nothing was charged")
        if not _is_int(delta_units) or not 0 <= delta_units < DELTA_UNITS_PER_ONE:
            raise PolicyError(
                f"delta_units must be an integer from 0 to {DELTA_UNITS_PER_ONE - 1} (got {delta_units!r}); "
                "nothing was charged"
            )
        tier_caps = dict(tier_caps) if tier_caps is not None else {str(tier): tier_cap_units}
        tier_caps.setdefault(str(tier), tier_cap_units)
        for cap in tier_caps.values():
            if cap is not None and (not _is_int(cap) or cap < 0):
                raise PolicyError(f"tier caps must be non-negative integers or None (got {cap!r})")
        purpose_caps = {str(q): cap for q, cap in (purpose_caps or {}).items()}
        for cap in purpose_caps.values():
            if not _is_int(cap) or cap < 0:
                raise PolicyError(f"purpose caps must be non-negative integers (got {cap!r})")
        epsilon = _amount(epsilon, "epsilon", positive=False)
        delta = _amount(delta, "delta", positive=False)
        rho = None if rho is None else _amount(rho, "rho", positive=False)
        name, user = _text(name, "name"), _text(user, "user")
        query, mechanism, tier, purpose = (str(query), str(mechanism), str(tier), str(purpose))

        def debit(conn) -> ChargeRecord:
            # A dataset-wide cap bounds the budgets of all users of the dataset together: lock all
            # their rows, always in the order of their users and before this budget's own row, so
            # that charges of two users of one dataset queue instead of deadlocking.
            dataset = _dataset_cap_row(conn, name)
            pooled = None if dataset is None else self._lock_dataset_budgets(conn, name)
            # _FOR_UPDATE: where the database locks rows instead of the whole file, the budget row
            # stays locked until the end of the transaction, so every check below reads a state no
            # other charge of this budget can change before this one commits.
            row = conn.execute(
                _SELECT_BUDGET_AND_HEAD + " WHERE name = ? AND user = ?" + self._FOR_UPDATE, (name, user)
            ).fetchone()
            if row is None:
                raise _unknown_budget(conn, name, user)
            if dataset is None:
                # A cap registered since the first look waited for this row's lock, so it is seen now.
                dataset = _dataset_cap_row(conn, name)
                if dataset is not None:  # rare; a deadlock this may meet is rolled back and run again
                    pooled = self._lock_dataset_budgets(conn, name)
            record, (head_id, head_hash) = _budget(row), row[12:14]
            for capped, cap in sorted(tier_caps.items()):
                if cap is None:
                    continue
                (tier_spent,) = conn.execute(
                    "SELECT COALESCE(SUM(units), 0) FROM charge_tiers WHERE name = ? AND user = ? AND tier = ?",
                    (name, user, capped),
                ).fetchone()
                tier_spent = int(tier_spent)
                if tier_spent + units > cap:
                    raise _tier_exceeded(record, capped, units, tier_spent, cap)
            held = _reserves_held(conn, record, purpose_caps, purpose)
            if held and record.spent_units + units + sum(held.values()) > record.cap_units:
                raise _purpose_reserved(record, held, units)
            # Refusals the budget row alone decides, before an id is taken (the conditional UPDATE
            # below makes the same check again, in the database).
            if units > record.cap_units - record.spent_units:
                raise _budget_exceeded(record, units)
            if delta_units > record.delta_cap_units - record.delta_spent_units:
                raise _selection_delta_exceeded(record, delta_units)
            if dataset is not None:
                spent, delta_spent = pooled
                if units > dataset.cap_units - spent:
                    raise _dataset_exceeded(dataset, units, spent)
                if delta_units > dataset.delta_cap_units - delta_spent:
                    raise _dataset_delta_exceeded(dataset, delta_units, delta_spent)
            # The chain's head was read with the budget, and the next id is read here, both under the
            # write lock like everything else, so that the hash covers the id the row gets.
            charge_id = self._next_charge_id(conn)
            when = _now()
            touched = sorted({str(t) for t in tier_caps})
            digest = charge_hash(
                id=charge_id, prev_id=head_id, prev_hash=head_hash, time=when, name=name, user=user, query=query,
                mechanism=mechanism, epsilon=epsilon, delta=delta, rho=rho, units=units, tier=tier,
                purpose=purpose, delta_units=delta_units, tiers=touched,
            )
            # The WHERE clause is the budget check: it is evaluated under the write lock, so a
            # concurrent charge cannot slip in between reading spent_units and raising it.
            debited = units <= _MAX_UNITS and conn.execute(
                "UPDATE budgets SET spent_units = spent_units + ?, delta_spent_units = delta_spent_units + ?,"
                " releases = releases + 1, head_id = ?, head_hash = ?"
                " WHERE name = ? AND user = ? AND spent_units + ? <= cap_units"
                " AND delta_spent_units + ? <= delta_cap_units",
                (units, delta_units, charge_id, digest, name, user, units, delta_units),
            ).rowcount == 1
            if not debited:
                if units <= record.cap_units - record.spent_units:
                    raise _selection_delta_exceeded(record, delta_units)
                raise _budget_exceeded(record, units)
            conn.execute(
                f"INSERT INTO charges ({_CHARGE_COLUMNS}) VALUES ({', '.join('?' * 16)})",
                (charge_id, when, name, user, query, mechanism, epsilon, delta, rho, units, tier, purpose,
                 delta_units, head_id, head_hash, digest),
            )
            conn.executemany(
                "INSERT INTO charge_tiers (charge_id, name, user, tier, units) VALUES (?, ?, ?, ?, ?)",
                [(charge_id, name, user, t, units) for t in touched],
            )
            return ChargeRecord(
                id=charge_id,
                time=when,
                name=name,
                user=user,
                query=query,
                mechanism=mechanism,
                epsilon=epsilon,
                delta=delta,
                rho=rho,
                units=units,
                tier=tier,
                purpose=purpose,
                delta_units=delta_units,
            )

        return self._write(debit)

    def _lock_dataset_budgets(self, conn, name: str) -> tuple[int, int]:
        """Lock every budget row of ``name`` in the order of their users; return their spent sums."""
        rows = conn.execute(
            "SELECT user, spent_units, delta_spent_units FROM budgets WHERE name = ? ORDER BY user"
            + self._FOR_UPDATE,
            (name,),
        ).fetchall()
        return sum(int(r[1]) for r in rows), sum(int(r[2]) for r in rows)

    def record_bounds(self, *, name: str, user: str, column: str, low: float, high: float, epsilon: float,
                      charge_id: int) -> None:
        """Keep the bounds a charged estimate released for ``column`` (the first estimate stays)."""
        values = (_text(name, "name"), _text(user, "user"), str(column), float(low), float(high), float(epsilon),
                  int(charge_id))
        if not values[4] > values[3] or math.isnan(values[5]):
            return  # a row the table's constraints refuse is ignored, as INSERT OR IGNORE does
        self._write(lambda conn: conn.execute(self._INSERT_BOUNDS, values))

    def estimated_bounds(self, *, name: str, user: str) -> dict[str, tuple[float, float, float, int]]:
        """``{column: (low, high, epsilon, charge_id)}`` of the bounds estimated for a budget."""
        with self._snapshot() as conn:
            rows = conn.execute(
                "SELECT column_name, low, high, epsilon, charge_id FROM estimated_bounds WHERE name = ? AND"
                " user = ? ORDER BY column_name",
                (name, user),
            ).fetchall()
        return {r[0]: (r[1], r[2], r[3], r[4]) for r in rows}

    def history(self, *, name: str, user: str, last: int | None = None) -> list[ChargeRecord]:
        """Return the charges made against a budget, oldest first (only the ``last`` ones if given)."""
        with self._snapshot() as conn:
            rows = conn.execute(
                "SELECT * FROM (SELECT id, time, name, user, query, mechanism, epsilon, delta, rho, units, tier,"
                " purpose, delta_units FROM charges WHERE name = ? AND user = ? ORDER BY id DESC LIMIT ?)"
                " AS recent ORDER BY id",
                (name, user, self._NO_LIMIT if last is None else int(last)),
            ).fetchall()
        return [
            ChargeRecord(
                id=r[0], time=r[1], name=r[2], user=r[3], query=r[4], mechanism=r[5], epsilon=r[6],
                delta=r[7], rho=r[8], units=r[9], tier=r[10], purpose=r[11], delta_units=r[12],
            )
            for r in rows
        ]

    def verify(self, *, name: str, user: str) -> ChainReport:
        """Check a budget's hash chain and that the budget row agrees with it.

        Recomputes every charge's hash, follows the links from the budget's genesis to the head the
        budget row records, and compares the budget's ``spent_units``, ``releases`` and
        ``delta_spent_units`` with the sums over its charges. Reads one consistent state of the file.

        Returns
        -------
        ChainReport
            ``report.ok`` when all is well; otherwise ``report.problems`` names each edited, deleted
            or inserted charge by id, and each disagreement of the budget row. A broken chain is
            reported, never raised.

        Raises
        ------
        PolicyError
            If the file has neither a budget nor charges under this name and user.
        """
        with self._snapshot() as conn:
            budget_row = conn.execute(
                _SELECT_BUDGET_AND_HEAD + " WHERE name = ? AND user = ?", (name, user)
            ).fetchone()
            rows = conn.execute(
                f"SELECT {_CHARGE_COLUMNS} FROM charges WHERE name = ? AND user = ? ORDER BY id", (name, user)
            ).fetchall()
            if budget_row is None and not rows:
                raise _unknown_budget(conn, name, user)
            tiers = _tiers_by_charge(conn, name, user)
        return _verify_chain(name, user, budget_row, rows, tiers)

    def tier_spent_units(self, *, name: str, user: str) -> dict[str, int]:
        """Return the units of the charges that touched each tier (tiers never touched are absent).

        A release touching two tiers counts in both, so these can add up to more than was spent.
        """
        with self._snapshot() as conn:
            rows = conn.execute(
                "SELECT tier, SUM(units) FROM charge_tiers WHERE name = ? AND user = ? GROUP BY tier ORDER BY tier",
                (name, user),
            ).fetchall()
        return {key: int(total) for key, total in rows}

    def purpose_spent_units(self, *, name: str, user: str) -> dict[str, int]:
        """Return the units charged for each purpose of a budget (purposes never charged are absent)."""
        return self._spent_by("purpose", name, user)

    def _spent_by(self, column: str, name: str, user: str) -> dict[str, int]:
        # column is one of two literals chosen above, never user input.
        with self._snapshot() as conn:
            rows = conn.execute(
                f"SELECT {column}, SUM(units) FROM charges WHERE name = ? AND user = ?"
                f" GROUP BY {column} ORDER BY {column}",
                (name, user),
            ).fetchall()
        return {key: int(total) for key, total in rows}

class SQLiteLedger(Ledger):
    """Budgets and charges in one SQLite file, safe to share between processes.

    Parameters
    ----------
    path : str or os.PathLike
        The database file. Missing parent directories are created.

    Notes
    -----
    Each object holds one connection, guarded by a lock so that threads can share the object.
    Concurrent writers (other threads' ledgers, other processes) wait up to 30 s for the write
    lock instead of failing.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = pathlib.Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # isolation_level=None: the sqlite3 module must not open transactions behind our back;
        # every write below says exactly where its transaction starts and ends.
        conn = sqlite3.connect(
            self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_S * 1000)}")
            mode = _enable_wal(conn)
            if mode.lower() != "wal":
                raise PolicyError(
                    f"the privacy ledger {self.path} cannot use write-ahead logging (journal mode "
                    f"{mode!r}); put it on a local disk, e.g. under your home directory"
                )
            # FULL: a commit is on disk (WAL fsynced) before COMMIT returns, so a returned charge
            # survives a crash or power loss.
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("BEGIN IMMEDIATE")
            for statement in filter(None, (s.strip() for s in _SCHEMA.split(";"))):
                conn.execute(statement)
            added = _add_missing_columns(conn)
            if ("charges", "hash") in added:
                _chain_existing_charges(conn)
            for trigger in _TRIGGERS:
                conn.execute(trigger)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            conn.close()
            raise
        self._conn: sqlite3.Connection | None = conn

    # -- plumbing -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """Run the body in one write transaction; commit on success, roll back on any error."""
        with self._lock:
            conn = self._connection()
            # IMMEDIATE takes the write lock before the first read, so what we check cannot change
            # before we write.
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """Run several reads against one consistent state of the file."""
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN DEFERRED")
            try:
                yield conn
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise PolicyError(f"the privacy ledger {self.path} is closed; open a new SQLiteLedger")
        return self._conn

    def _next_charge_id(self, conn: sqlite3.Connection) -> int:
        (charge_id,) = conn.execute(_NEXT_CHARGE_ID).fetchone()
        return charge_id

    def close(self) -> None:
        """Close the connection. Calling it again does nothing."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __repr__(self) -> str:
        return f"SQLiteLedger({str(self.path)!r})"


_SELECT_BUDGET = (
    "SELECT name, user, fingerprint, mode, epsilon_total, delta_total, cap_units, spent_units, created,"
    " releases, delta_cap_units, delta_spent_units FROM budgets"
)
_SELECT_BUDGET_AND_HEAD = _SELECT_BUDGET.replace(" FROM budgets", ", head_id, head_hash FROM budgets")

# AUTOINCREMENT's own rule for the next id (one more than the largest ever used), read inside the
# charge's write transaction so that the row's hash can cover its id. The row is then inserted with
# that id, which also advances sqlite_sequence.
_NEXT_CHARGE_ID = (
    "SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'charges'), 0),"
    " COALESCE((SELECT MAX(id) FROM charges), 0)) + 1"
)

_CHARGE_COLUMNS = (
    "id, time, name, user, query, mechanism, epsilon, delta, rho, units, tier, purpose, delta_units,"
    " prev_id, prev_hash, hash"
)


def _digest(fields: list) -> str:
    # Canonical: JSON with a fixed field order, no whitespace, ASCII only; floats as Python prints
    # them (shortest round-trip repr, exact for what SQLite's REAL columns hand back).
    text = json.dumps(fields, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _real(value) -> float | None:
    # + 0.0 turns -0.0 into 0.0, which is what SQLite may hand back for it.
    return None if value is None else float(value) + 0.0


def budget_genesis(
    *,
    name: str,
    user: str,
    fingerprint: str,
    mode: str,
    epsilon_total: float,
    delta_total: float,
    cap_units: int,
    delta_cap_units: int,
    created: str,
) -> str:
    """The hash a budget's chain starts from: SHA-256 over the budget's fields that never change.

    The first charge of the budget records it as its ``prev_hash`` (with ``prev_id`` 0), so editing
    the budget's cap, totals, fingerprint or creation time breaks the chain at its first link.
    """
    return _digest([
        "dpmagic-budget-v1", str(name), str(user), str(fingerprint), str(mode), _real(epsilon_total),
        _real(delta_total), int(cap_units), int(delta_cap_units), str(created),
    ])


def charge_hash(
    *,
    id: int,
    prev_id: int,
    prev_hash: str,
    time: str,
    name: str,
    user: str,
    query: str,
    mechanism: str,
    epsilon: float,
    delta: float,
    rho: float | None,
    units: int,
    tier: str,
    purpose: str,
    delta_units: int,
    tiers,
) -> str:
    """SHA-256 of one charge: every field of its row, the tiers it touched, and its link to the last.

    ``prev_id`` and ``prev_hash`` are the id and hash of the budget's previous charge (0 and the
    budget's :func:`budget_genesis` for its first), so a charge's hash vouches for the whole chain
    before it.
    """
    return _digest([
        "dpmagic-charge-v1", int(id), int(prev_id), str(prev_hash), str(time), str(name), str(user),
        str(query), str(mechanism), _real(epsilon), _real(delta), _real(rho), int(units), str(tier),
        str(purpose), int(delta_units), sorted(str(t) for t in tiers),
    ])


def _add_missing_columns(conn: sqlite3.Connection) -> set[tuple[str, str]]:
    """Upgrade a file written without the delta reserve or the hash chain; return what was added.

    A no-op on an up-to-date file. Runs inside the write transaction that opens the ledger, so two
    processes opening the same old file cannot both add a column. Existing rows get the defaults: no
    reserve, nothing spent of it, and no chain yet (:func:`_chain_existing_charges` computes it).
    """
    added = set()
    for table, column, definition in _ADDED_COLUMNS:
        # table and column are literals from _ADDED_COLUMNS, never user input.
        present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if column not in present:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
            added.add((table, column))
    return added


def _chain_existing_charges(conn: sqlite3.Connection) -> None:
    """Compute the hash chain of every budget over the charges a file holds from before chains.

    Runs once, in the transaction that adds the chain's columns (before the append-only triggers
    exist): each budget's charges are chained in id order from its genesis and the budget's head is
    set. The chain vouches for these charges as they were at that moment.
    """
    budgets = conn.execute(
        "SELECT name, user, fingerprint, mode, epsilon_total, delta_total, cap_units, delta_cap_units, created"
        " FROM budgets ORDER BY name, user"
    ).fetchall()
    for name, user, fingerprint, mode, epsilon_total, delta_total, cap_units, delta_cap_units, created in budgets:
        prev_id, prev_hash = 0, budget_genesis(
            name=name, user=user, fingerprint=fingerprint, mode=mode, epsilon_total=epsilon_total,
            delta_total=delta_total, cap_units=cap_units, delta_cap_units=delta_cap_units, created=created,
        )
        tiers = _tiers_by_charge(conn, name, user)
        rows = conn.execute(
            f"SELECT {_CHARGE_COLUMNS} FROM charges WHERE name = ? AND user = ? ORDER BY id", (name, user)
        ).fetchall()
        for row in rows:
            digest = _row_hash(row, prev_id, prev_hash, tiers.get(row[0], {}))
            conn.execute(
                "UPDATE charges SET prev_id = ?, prev_hash = ?, hash = ? WHERE id = ?",
                (prev_id, prev_hash, digest, row[0]),
            )
            prev_id, prev_hash = row[0], digest
        conn.execute(
            "UPDATE budgets SET head_id = ?, head_hash = ? WHERE name = ? AND user = ?",
            (prev_id, prev_hash, name, user),
        )


def _verify_chain(name: str, user: str, budget_row: tuple | None, rows: list[tuple],
                  tiers: Mapping[int, Mapping[str, int]]) -> ChainReport:
    """Walk one budget's charges in id order and say what does not fit the chain (see ``verify``)."""
    problems: list[ChainProblem] = []

    def found(kind: str, charge_id: int | None, detail: str) -> None:
        # One line per charge and kind: a rewritten charge may show at its own row and at the next.
        if charge_id is None or all((p.kind, p.charge_id) != (kind, charge_id) for p in problems):
            problems.append(ChainProblem(kind, charge_id, detail))

    if budget_row is None:
        record, genesis = None, None
        found("budget", None, f"the budget row of {name!r} is missing, but {len(rows)} charge(s) refer to it")
    else:
        record = _budget(budget_row)
        genesis = budget_genesis(
            name=record.name, user=record.user, fingerprint=record.fingerprint, mode=record.mode,
            epsilon_total=record.epsilon_total, delta_total=record.delta_total, cap_units=record.cap_units,
            delta_cap_units=record.delta_cap_units, created=record.created,
        )
    # The entries accepted as the chain so far, from the genesis (id 0), and where each one sits.
    chain: list[tuple[int, str | None]] = [(0, genesis)]

    def links_to(prev_id: int, prev_hash: str) -> int | None:
        for at in range(len(chain) - 1, -1, -1):
            if chain[at][0] == prev_id:
                return at if chain[at][1] == prev_hash else None
        return None

    # Which rows (and the budget's head, as id -1) name each id as the one before them.
    named_by: dict[int, list[int]] = {}
    for row in rows:
        named_by.setdefault(row[13], []).append(row[0])
    if budget_row is not None:
        named_by.setdefault(budget_row[12], []).append(-1)

    def named_after(charge_id: int, after: int) -> bool:
        return any(by == -1 or by > after for by in named_by.get(charge_id, ()))

    edited: set[int] = set()
    for row in rows:
        charge_id, units, prev_id, prev_hash, stored = row[0], row[9], row[13], row[14], row[15]
        row_tiers = tiers.get(charge_id, {})
        intact = stored == _row_hash(row, prev_id, prev_hash, row_tiers) and all(
            u == units for u in row_tiers.values()
        )
        last_id = chain[-1][0]
        at = links_to(prev_id, prev_hash)
        if at is not None and at < len(chain) - 1 and named_after(last_id, charge_id):
            # A fork: it links to an earlier entry, and the chain goes on from the branch already
            # accepted (a later charge or the budget names its end), so this one was slipped in.
            found("inserted", charge_id, f"charge #{charge_id} was inserted: it links to charge #{prev_id}, "
                                         f"which charge #{chain[at + 1][0]} follows")
            continue
        if at is not None and at < len(chain) - 1:
            # It links to an earlier entry: those accepted after that one were slipped in.
            for inserted, _ in chain[at + 1:]:
                found("inserted", inserted, f"charge #{inserted} was inserted: it is not part of the chain "
                                            f"(charge #{charge_id} links past it)")
            del chain[at + 1:]
        elif at is None and prev_id == last_id and intact:
            # It still matches its own hash, so what it links to changed after it was written.
            if last_id == 0:
                if genesis is not None:
                    found("budget", None, f"the budget row of {name!r} was edited: its cap, totals, "
                                          "fingerprint or creation time no longer match the chain's start")
            else:
                found("edited", last_id, f"charge #{last_id} was edited: its hash is not the one charge "
                                         f"#{charge_id} recorded for it")
        elif at is None and prev_id > last_id and intact:
            found("deleted", prev_id, f"charge #{prev_id} was deleted: charge #{charge_id} links to it and it is "
                                      "missing")
        elif at is None:
            before = f"the charge before it is #{last_id}" if last_id else "no chained charge comes before it"
            found("inserted", charge_id, f"charge #{charge_id} was inserted: it does not link to the chain "
                                         f"({before})")
            continue
        if not intact:
            found("edited", charge_id, f"charge #{charge_id} was edited: its fields no longer match its hash")
            edited.add(charge_id)
        chain.append((charge_id, stored))

    charged = sum(r[9] for r in rows)
    last_id, last_hash = chain[-1]
    if record is not None:
        head_id, head_hash = budget_row[12], budget_row[13]
        at = links_to(head_id, head_hash)
        if at is not None and at < len(chain) - 1:
            for inserted, _ in chain[at + 1:]:
                found("inserted", inserted, f"charge #{inserted} was inserted: it comes after the last charge "
                                            f"the budget recorded (#{head_id})")
        elif at is None and head_id > last_id:
            found("deleted", head_id, f"charge #{head_id} was deleted: it is the last charge the budget "
                                      "recorded and it is missing")
        elif at is None and head_id == last_id and last_id != 0:
            if last_id not in edited:  # else already said; here the row itself still matches its hash
                found("budget", None, f"the budget row of {name!r} was edited: the hash it keeps for its last "
                                      f"charge (#{last_id}) is not that charge's hash")
        elif at is None and not any(p.kind == "budget" for p in problems):
            found("budget", None, f"the budget row of {name!r} was edited: the head of its chain (charge "
                                  f"#{head_id}) is not the chain's last entry (#{last_id})")
        if record.spent_units != charged:
            found("budget", None, f"the budget row says {_units_text(record.spent_units, record.mode)} was spent "
                                  f"but its {len(rows)} charge(s) add up to {_units_text(charged, record.mode)}")
        if record.releases != len(rows):
            found("budget", None, f"the budget row counts {record.releases} release(s) but {len(rows)} charge(s) "
                                  "are recorded")
        delta_charged = sum(r[12] for r in rows)
        if record.delta_spent_units != delta_charged:
            found("budget", None, f"the budget row says {record.delta_spent_units / DELTA_UNITS_PER_ONE:.3g} of "
                                  "its delta reserve was spent but its charges add up to "
                                  f"{delta_charged / DELTA_UNITS_PER_ONE:.3g}")
    return ChainReport(
        name=name, user=user, charges=len(rows), spent_units=None if record is None else record.spent_units,
        charged_units=charged, head_hash=(last_hash or "") if record is None else budget_row[13],
        problems=tuple(problems),
    )


def _tiers_by_charge(conn: sqlite3.Connection, name: str, user: str) -> dict[int, dict[str, int]]:
    tiers: dict[int, dict[str, int]] = {}
    for charge_id, tier, units in conn.execute(
        "SELECT charge_id, tier, units FROM charge_tiers WHERE name = ? AND user = ?", (name, user)
    ):
        tiers.setdefault(charge_id, {})[tier] = units
    return tiers


def _row_hash(row: tuple, prev_id: int, prev_hash: str, tiers) -> str:
    """:func:`charge_hash` of a row selected as ``_CHARGE_COLUMNS``, with the given link."""
    return charge_hash(
        id=row[0], prev_id=prev_id, prev_hash=prev_hash, time=row[1], name=row[2], user=row[3], query=row[4],
        mechanism=row[5], epsilon=row[6], delta=row[7], rho=row[8], units=row[9], tier=row[10],
        purpose=row[11], delta_units=row[12], tiers=tiers,
    )


def _check_delta_cap(delta_cap_units: object, delta_total: float) -> None:
    if not _is_int(delta_cap_units) or delta_cap_units < 0:
        raise PolicyError(
            f"delta_cap_units must be a non-negative integer (got {delta_cap_units!r}); pass 0 for no "
            "delta reserve"
        )
    # Exact, with delta_total read as the decimal it prints as (what the user typed, as the
    # accountant reads it): the reserve may be all of delta_total but never more.
    most = math.floor(Fraction(repr(delta_total)) * DELTA_UNITS_PER_ONE)
    if delta_cap_units > most:
        raise PolicyError(
            f"delta_cap_units={delta_cap_units} reserves more than delta_total={delta_total!r}; "
            f"reserve at most {most} units"
        )


def _enable_wal(conn: sqlite3.Connection) -> str:
    """Switch the file to WAL (a no-op once done) and return the journal mode in force."""
    deadline, pause = time.monotonic() + _BUSY_TIMEOUT_S, 0.001
    while True:
        try:
            return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        except sqlite3.OperationalError as error:
            # Converting a new file needs an exclusive lock, and SQLite reports a busy file at once
            # instead of calling the busy handler: wait here as busy_timeout would.
            busy = getattr(error, "sqlite_errorcode", None) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
            if not busy or time.monotonic() > deadline:
                raise
            time.sleep(pause)
            pause = min(2 * pause, 0.05)


def _budget(row: tuple) -> BudgetRecord:
    return BudgetRecord(
        name=row[0], user=row[1], fingerprint=row[2], mode=row[3], epsilon_total=row[4],
        delta_total=row[5], cap_units=row[6], spent_units=row[7], created=row[8], releases=row[9],
        delta_cap_units=row[10], delta_spent_units=row[11],
    )


def _checked_totals(
    mode: object, epsilon_total: object, delta_total: object, cap_units: object, delta_cap_units: object
) -> tuple[float, float]:
    """Check the fixed amounts of a budget or of a dataset-wide cap; return the totals as floats."""
    if mode not in _MODES:
        raise PolicyError(f"mode must be 'pure' or 'zcdp' (got {mode!r})")
    epsilon_total = _amount(epsilon_total, "epsilon_total", positive=True)
    delta_total = _amount(delta_total, "delta_total", positive=False)
    if delta_total >= 1:
        raise PolicyError(f"delta_total must be below 1 (got {delta_total!r}); pass e.g. delta=1e-6")
    if (mode == "pure") != (delta_total == 0):
        raise PolicyError(
            f"mode {mode!r} does not match delta_total={delta_total!r}: "
            "a pure budget has delta 0, a zcdp budget has delta > 0"
        )
    if not _is_int(cap_units) or not 0 < cap_units <= _MAX_UNITS:
        raise PolicyError(
            f"cap_units must be an integer between 1 and {_MAX_UNITS} (got {cap_units!r}); "
            "choose an epsilon that is neither tiny nor huge, e.g. epsilon=1.0"
        )
    _check_delta_cap(delta_cap_units, delta_total)
    return epsilon_total, delta_total


_SELECT_DATASET_CAP = (
    "SELECT name, mode, epsilon_total, delta_total, cap_units, delta_cap_units, created FROM dataset_caps"
    " WHERE name = ?"
)


def _dataset_cap_row(conn, name: str) -> DatasetCap | None:
    """The dataset-wide cap of ``name`` as stored, without what was spent of it."""
    row = conn.execute(_SELECT_DATASET_CAP, (name,)).fetchone()
    return None if row is None else DatasetCap(*row)


def _dataset_cap(conn, name: str) -> DatasetCap | None:
    """The dataset-wide cap of ``name`` with the sums over the dataset's budget rows."""
    row = conn.execute(_SELECT_DATASET_CAP, (name,)).fetchone()
    if row is None:
        return None
    spent, delta_spent, users, releases = conn.execute(
        "SELECT COALESCE(SUM(spent_units), 0), COALESCE(SUM(delta_spent_units), 0), COUNT(*),"
        " COALESCE(SUM(releases), 0) FROM budgets WHERE name = ?",
        (name,),
    ).fetchone()
    # PostgreSQL sums integers as numeric.
    return DatasetCap(*row, spent_units=int(spent), delta_spent_units=int(delta_spent), users=int(users),
                      releases=int(releases))


_MODE_WORDS = {"pure": "pure epsilon (delta=0)", "zcdp": "zCDP (delta>0)"}


def _mode_mismatch(name: str, *, cap_mode: str, budget_mode: str, budgets: int | None = None) -> PolicyError:
    if budgets is None:
        return PolicyError(
            f"the dataset-wide budget of {name!r} is {_MODE_WORDS[cap_mode]}, so every budget of {name!r} "
            f"must be too, and this one is {_MODE_WORDS[budget_mode]}; protect the data "
            f"{'without' if cap_mode == 'pure' else 'with'} a delta (e.g. "
            f"{'delta=0' if cap_mode == 'pure' else 'delta=1e-6'}), or under a new name"
        )
    return PolicyError(
        f"{budgets} budget(s) of {name!r} are {_MODE_WORDS[budget_mode]}, so its dataset-wide budget must be "
        f"too, not {_MODE_WORDS[cap_mode]}; register it {'with' if budget_mode == 'zcdp' else 'without'} a "
        "delta, or register the data under a new name to start a new budget"
    )


def _unknown_budget(conn: sqlite3.Connection, name: str, user: str) -> PolicyError:
    known = [r[0] for r in conn.execute("SELECT name FROM budgets WHERE user = ?", (user,))]
    return PolicyError(
        f"no dataset named {name!r} is protected for user {user!r}; protect the data under that name "
        f"first.{close_match_hint(name, known)}"
    )


def _different_data(conn: sqlite3.Connection, name: str, user: str) -> PolicyError:
    taken = {r[0] for r in conn.execute("SELECT name FROM budgets WHERE user = ?", (user,))}
    # One of len(taken) + 1 candidates is always free.
    suggestion = next(f"{name}_{i}" for i in range(2, len(taken) + 3) if f"{name}_{i}" not in taken)
    return PolicyError(
        f"a dataset named {name!r} is already registered with different data; to register this data "
        f"as a new dataset, protect it under another name, e.g. name={suggestion!r}"
    )


def _different_totals(existing: BudgetRecord) -> PolicyError:
    eps, delta = existing.epsilon_total, existing.delta_total
    return PolicyError(
        f"the dataset {existing.name!r} is registered with epsilon={eps!r}, delta={delta!r}, and "
        f"protect() never changes an existing budget; pass epsilon={eps!r}, delta={delta!r} to continue "
        "it (a new name registers a new dataset)"
    )


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _text(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise PolicyError(f"{what} must be a non-empty string (got {value!r})")
    return value


def _amount(value: object, what: str, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            value = float(value)  # numpy scalars
        except (TypeError, ValueError):
            raise PolicyError(f"{what} must be a number (got {value!r})") from None
    value = float(value)
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        bound = "greater than 0" if positive else "at least 0"
        raise PolicyError(f"{what} must be a finite number {bound} (got {value!r})")
    return value


def _units_text(units: int, mode: str) -> str:
    measure = "epsilon" if mode == "pure" else "zCDP rho"
    return f"{measure} {units / UNITS_PER_ONE:.6g}"


def _budget_exceeded(record: BudgetRecord, units: int) -> BudgetExceededError:
    remaining = record.cap_units - record.spent_units
    error = BudgetExceededError(
        f"this release needs {_units_text(units, record.mode)} but only "
        f"{_units_text(remaining, record.mode)} remains of the budget for {record.name!r}; "
        "nothing was charged. Ask for less with epsilon=..., or run %dp budget to see what is left."
    )
    return _tagged(error, "budget", units, remaining)


def _cap_epsilon(cap: DatasetCap, units: int) -> float:
    """The epsilon ``units`` of a dataset-wide cap stand for: itself (pure) or its share of the cap (zCDP)."""
    if cap.mode == "pure":
        return units / UNITS_PER_ONE
    return cap.epsilon_total * units / cap.cap_units


def _dataset_exceeded(cap: DatasetCap, units: int, spent: int) -> BudgetExceededError:
    remaining = max(0, cap.cap_units - spent)
    error = BudgetExceededError(
        f"this release needs ε={_cap_epsilon(cap, units):.4g}, more than is left of the dataset-wide budget "
        f"of {cap.name!r} (about ε={_cap_epsilon(cap, remaining):.4g} for all its analysts together); "
        "nothing was charged. Ask the data steward for a larger budget."
    )
    return _tagged(error, "dataset", units, remaining)


def _dataset_delta_exceeded(cap: DatasetCap, delta_units: int, delta_spent: int) -> BudgetExceededError:
    remaining = max(0, cap.delta_cap_units - delta_spent)
    error = BudgetExceededError(
        f"this release needs δ={delta_units / DELTA_UNITS_PER_ONE:.3g} for partition selection, more than is "
        f"left of the delta the dataset-wide budget of {cap.name!r} reserves for it (about "
        f"δ={remaining / DELTA_UNITS_PER_ONE:.3g} for all its analysts together); nothing was charged. Declare "
        "the group's categories (declared groups need no partition selection), or ask the data steward for "
        "a larger budget."
    )
    return _tagged(error, "dataset", delta_units, remaining)


def _tagged(
    error: BudgetExceededError,
    limit: str,
    needed: int,
    remaining: int,
    *,
    tier: str | None = None,
    purpose: str | None = None,
) -> BudgetExceededError:
    """Attach what refused the charge, so callers can restate the message in their own terms."""
    error.limit, error.needed_units, error.remaining_units = limit, needed, remaining
    error.tier, error.purpose = tier, purpose
    return error


def _reserves_held(
    conn: sqlite3.Connection, record: BudgetRecord, purpose_caps: Mapping[str, int], purpose: str
) -> dict[str, int]:
    """Units still held back for each reserved purpose other than ``purpose`` (those holding any).

    A reserved purpose holds its reserve, ``cap_units - cap``, less what it has spent itself.
    """
    held = {}
    for reserved, cap in sorted(purpose_caps.items()):
        if reserved == purpose:
            continue  # a release may spend its own purpose's reserve
        (own,) = conn.execute(
            "SELECT COALESCE(SUM(units), 0) FROM charges WHERE name = ? AND user = ? AND purpose = ?",
            (record.name, record.user, reserved),
        ).fetchone()
        own = int(own)  # PostgreSQL sums integers as numeric
        if record.cap_units - cap > own:
            held[reserved] = record.cap_units - cap - own
    return held


def _purpose_reserved(record: BudgetRecord, held: Mapping[str, int], units: int) -> BudgetExceededError:
    remaining = max(0, record.cap_units - record.spent_units - sum(held.values()))
    first = next(iter(held))
    names = " and ".join(map(repr, held))
    which = f"purpose {names}" if len(held) == 1 else f"purposes {names}"
    error = BudgetExceededError(
        f"the rest of the budget for {record.name!r} is reserved for {which}: "
        f"{_units_text(remaining, record.mode)} is free for other purposes and this release needs "
        f"{_units_text(units, record.mode)}, so nothing was charged. If this release is for {first!r}, "
        f"run it with %%dp --purpose {first} (or dp.spending(purpose={first!r})); otherwise ask for "
        "less with epsilon=..., or run %dp budget to see what is left."
    )
    return _tagged(error, "purpose", units, remaining, purpose=first)


def _selection_delta_exceeded(record: BudgetRecord, delta_units: int) -> BudgetExceededError:
    remaining = record.delta_cap_units - record.delta_spent_units
    if record.delta_cap_units == 0:
        state = f"the budget for {record.name!r} has no delta reserved for partition selection"
    else:
        state = (
            f"the delta reserved for partition selection on {record.name!r} is used up "
            f"({remaining / DELTA_UNITS_PER_ONE:.3g} of {record.delta_cap_units / DELTA_UNITS_PER_ONE:.3g} "
            f"left, this release needs {delta_units / DELTA_UNITS_PER_ONE:.3g})"
        )
    error = BudgetExceededError(
        f"{state}, so groups whose keys are not declared cannot be released; nothing was charged. "
        "Declare the group's categories (categories={'col': [...]} in dp.protect, or categories = [...] "
        "under [columns.col] in the policy): declared groups need no partition selection."
    )
    return _tagged(error, "selection_delta", delta_units, remaining)


def _tier_exceeded(
    record: BudgetRecord, tier: str, units: int, spent: int, cap: int
) -> BudgetExceededError:
    remaining = max(0, cap - spent)
    error = BudgetExceededError(
        f"the policy caps the share of tier {tier!r} in the budget for {record.name!r} at "
        f"{_units_text(cap, record.mode)}; {_units_text(remaining, record.mode)} of it remains and this "
        "release needs "
        f"{_units_text(units, record.mode)}, so nothing was charged. Ask for less with epsilon=..., "
        "or run %dp budget to see what is left."
    )
    return _tagged(error, "tier", units, remaining, tier=tier)
