"""Durable store of privacy budgets and of the charges made against them.

A budget belongs to one (dataset name, user) pair. Its size and what has been spent are integers
in units of ``1 / UNITS_PER_ONE`` of epsilon (pure budgets) or of zCDP rho (approximate budgets);
this module does not care which, :mod:`jupyter_dpmagic.accountant` does the conversions.

Guarantees
----------
* A charge is committed durably (SQLite WAL with ``synchronous=FULL``) before :meth:`SQLiteLedger.charge`
  returns, so a caller that releases a value only after ``charge`` returned can never have released
  something that is not on record, even if the process dies right after.
* The debit is one ``BEGIN IMMEDIATE`` transaction holding the database write lock: the conditional
  ``UPDATE ... WHERE spent_units + ? <= cap_units``, the tier check and the insert of the charge row
  either all happen or none does. Processes racing on one budget therefore never exceed it, and a
  refused charge leaves no trace.
* Integer arithmetic: no sum of charges can exceed the cap through rounding. The schema also
  refuses ``spent_units > cap_units`` outright, as a second line of defence.
"""

from __future__ import annotations

import contextlib
import math
import os
import pathlib
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone

from .errors import BudgetExceededError, PolicyError, close_match_hint

__all__ = ["UNITS_PER_ONE", "BudgetRecord", "ChargeRecord", "SQLiteLedger"]

UNITS_PER_ONE = 10**12
"""Budget amounts are stored as integers in units of ``1 / UNITS_PER_ONE``."""

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
    FOREIGN KEY (name, user) REFERENCES budgets (name, user)
);
-- Covers the per-tier SUM(units) done inside every tier-capped charge.
CREATE INDEX IF NOT EXISTS charges_by_tier ON charges (name, user, tier, units);
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
CREATE INDEX IF NOT EXISTS charge_tiers_by_tier ON charge_tiers (name, user, tier, units);
"""


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
        Labels from the policy, used for per-tier caps and reporting.
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


class SQLiteLedger:
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

        Returns
        -------
        BudgetRecord
            The existing record, unchanged, when ``(name, user, fingerprint)`` is already
            registered with the same totals; otherwise the new record.

        Raises
        ------
        PolicyError
            If the name holds different data, if the data is already registered under another
            name, or if the totals differ from the registered ones. An existing budget is never
            changed or reset.
        """
        name, user = _text(name, "name"), _text(user, "user")
        fingerprint = _text(fingerprint, "fingerprint")
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

        with self._transaction() as conn:
            row = conn.execute(_SELECT_BUDGET + " WHERE name = ? AND user = ?", (name, user)).fetchone()
            if row is not None:
                existing = _budget(row)
                if existing.fingerprint != fingerprint:
                    raise _different_data(conn, name, user)
                if (existing.epsilon_total, existing.delta_total) != (epsilon_total, delta_total):
                    raise _different_totals(existing)
                return existing
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
            conn.execute(
                "INSERT INTO budgets (name, user, fingerprint, mode, epsilon_total, delta_total, cap_units,"
                " spent_units, releases, created) VALUES (?, ?, ?, ?, ?, ?, ?, 0, 0, ?)",
                (name, user, fingerprint, mode, epsilon_total, delta_total, cap_units, created),
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
        )

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

        Returns
        -------
        ChargeRecord
            The committed charge. It is on disk when this returns.

        Raises
        ------
        BudgetExceededError
            If the budget or the tier cap cannot pay; nothing is written. The error carries
            ``needed_units``, ``remaining_units`` and ``tier`` (None unless the tier cap refused).
        PolicyError
            If ``units`` is not a positive integer or the budget does not exist.
        """
        if not _is_int(units) or units <= 0:
            raise PolicyError(f"units must be a positive integer (got {units!r}); nothing was charged")
        tier_caps = dict(tier_caps) if tier_caps is not None else {str(tier): tier_cap_units}
        tier_caps.setdefault(str(tier), tier_cap_units)
        for cap in tier_caps.values():
            if cap is not None and (not _is_int(cap) or cap < 0):
                raise PolicyError(f"tier caps must be non-negative integers or None (got {cap!r})")
        epsilon = _amount(epsilon, "epsilon", positive=False)
        delta = _amount(delta, "delta", positive=False)
        rho = None if rho is None else _amount(rho, "rho", positive=False)
        name, user = _text(name, "name"), _text(user, "user")
        query, mechanism, tier, purpose = (str(query), str(mechanism), str(tier), str(purpose))

        with self._transaction() as conn:
            row = conn.execute(_SELECT_BUDGET + " WHERE name = ? AND user = ?", (name, user)).fetchone()
            if row is None:
                raise _unknown_budget(conn, name, user)
            record = _budget(row)
            for capped, cap in sorted(tier_caps.items()):
                if cap is None:
                    continue
                (tier_spent,) = conn.execute(
                    "SELECT COALESCE(SUM(units), 0) FROM charge_tiers WHERE name = ? AND user = ? AND tier = ?",
                    (name, user, capped),
                ).fetchone()
                if tier_spent + units > cap:
                    raise _tier_exceeded(record, capped, units, tier_spent, cap)
            # The WHERE clause is the budget check: it is evaluated under the write lock, so a
            # concurrent charge cannot slip in between reading spent_units and raising it.
            debited = units <= _MAX_UNITS and conn.execute(
                "UPDATE budgets SET spent_units = spent_units + ?, releases = releases + 1"
                " WHERE name = ? AND user = ? AND spent_units + ? <= cap_units",
                (units, name, user, units),
            ).rowcount == 1
            if not debited:
                raise _budget_exceeded(record, units)
            when = _now()
            charge_id = conn.execute(
                "INSERT INTO charges (time, name, user, query, mechanism, epsilon, delta, rho, units, tier,"
                " purpose) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (when, name, user, query, mechanism, epsilon, delta, rho, units, tier, purpose),
            ).lastrowid
            conn.executemany(
                "INSERT INTO charge_tiers (charge_id, name, user, tier, units) VALUES (?, ?, ?, ?, ?)",
                [(charge_id, name, user, str(t), units) for t in sorted(tier_caps)],
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
        )

    def history(self, *, name: str, user: str) -> list[ChargeRecord]:
        """Return the charges made against a budget, oldest first."""
        with self._snapshot() as conn:
            rows = conn.execute(
                "SELECT id, time, name, user, query, mechanism, epsilon, delta, rho, units, tier, purpose"
                " FROM charges WHERE name = ? AND user = ? ORDER BY id",
                (name, user),
            ).fetchall()
        return [
            ChargeRecord(
                id=r[0], time=r[1], name=r[2], user=r[3], query=r[4], mechanism=r[5], epsilon=r[6],
                delta=r[7], rho=r[8], units=r[9], tier=r[10], purpose=r[11],
            )
            for r in rows
        ]

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

    def close(self) -> None:
        """Close the connection. Calling it again does nothing."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> SQLiteLedger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SQLiteLedger({str(self.path)!r})"


_SELECT_BUDGET = (
    "SELECT name, user, fingerprint, mode, epsilon_total, delta_total, cap_units, spent_units, created,"
    " releases FROM budgets"
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
    error.needed_units, error.remaining_units, error.tier = units, remaining, None
    return error


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
    error.needed_units, error.remaining_units, error.tier = units, remaining, tier
    return error
