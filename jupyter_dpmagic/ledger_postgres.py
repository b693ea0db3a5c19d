"""The budget ledger on PostgreSQL: one ledger shared by several kernels or machines.

Everything a ledger does is written once, in :class:`jupyter_dpmagic.ledger.Ledger`; this module
supplies the connection and what PostgreSQL does differently:

* Transactions are ``READ COMMITTED`` with explicit locks instead of SQLite's single writer. A
  charge selects its budget row ``FOR UPDATE``: charges of one budget queue on that row, and the
  tier, purpose and budget checks that follow read a state no other charge of the budget can change
  before this one commits (the conditional ``UPDATE ... WHERE spent_units + ? <= cap_units`` stays,
  as in SQLite). Charges of different budgets run in parallel, except on a dataset with a
  dataset-wide cap: such a charge first selects every budget row of the dataset ``FOR UPDATE``,
  ordered by user, and only then its own, so charges of the dataset's users queue one after another
  (always taking the locks in the same order, so they cannot deadlock) and sum what all of them
  spent under those locks. Registering a cap locks the same rows, so a charge in flight commits
  before the cap and every later charge sees it. Registrations of one user's budgets are
  serialized by a transaction-scoped advisory lock, since they check names and fingerprints across
  rows, and registrations of one dataset's cap and budgets by another (taken after the user's),
  since they check that the modes agree. A transaction that fails with a serialization failure or
  a deadlock has been rolled back entirely, so it is run again from the start (a few times, with a
  random pause): a charge is never made twice. Any other error, a lost connection included, is raised, and the caller must not
  release anything.
* ``synchronous_commit`` is set to ``on`` for the session: a charge is on disk on the server when
  :meth:`~jupyter_dpmagic.ledger.Ledger.charge` returns.
* Charge ids come from the ``charges`` sequence, taken only once the budget row has accepted the
  charge; ids increase with commit order within a budget (which is what the hash chain needs).
  Across budgets they are unique and increasing, but concurrent charges of two budgets may commit
  in the other order, and a transaction that dies after taking an id leaves a gap.
* The append-only rules are PL/pgSQL triggers raising ``integrity_constraint_violation`` with the
  same messages as SQLite's (``TRUNCATE`` is refused too); the hash chain and :meth:`verify` are
  the same, so a chain verifies the same way on either database.
* The schema is created when a ledger first connects to a database (under an advisory lock, so
  that processes connecting together do not race); there are no older PostgreSQL schemas to upgrade.

The location is a libpq URL, ``postgresql://user@host/dbname`` (``postgres://`` works too, and so
do libpq's query parameters, e.g. ``?host=/run/postgresql`` for a unix socket).
"""

from __future__ import annotations

import contextlib
import functools
import random
import re
import threading
import time
from collections.abc import Iterator

from .errors import PolicyError
from .ledger import _APPEND_ONLY, _BUSY_TIMEOUT_S, Ledger

__all__ = ["PostgresLedger"]

_RETRIES = 8

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS budgets (
    name          TEXT             NOT NULL,
    "user"        TEXT             NOT NULL,
    fingerprint   TEXT             NOT NULL,
    mode          TEXT             NOT NULL CHECK (mode IN ('pure', 'zcdp')),
    epsilon_total DOUBLE PRECISION NOT NULL,
    delta_total   DOUBLE PRECISION NOT NULL,
    cap_units     BIGINT           NOT NULL CHECK (cap_units > 0),
    spent_units   BIGINT           NOT NULL DEFAULT 0 CHECK (spent_units >= 0 AND spent_units <= cap_units),
    releases      BIGINT           NOT NULL DEFAULT 0,
    created       TEXT             NOT NULL,
    delta_cap_units   BIGINT       NOT NULL DEFAULT 0 CHECK (delta_cap_units >= 0),
    delta_spent_units BIGINT       NOT NULL DEFAULT 0
        CHECK (delta_spent_units >= 0 AND delta_spent_units <= delta_cap_units),
    head_id       BIGINT           NOT NULL DEFAULT 0,
    head_hash     TEXT             NOT NULL DEFAULT '',
    PRIMARY KEY (name, "user")
)""",
    'CREATE INDEX IF NOT EXISTS budgets_by_data ON budgets ("user", fingerprint)',
    """CREATE TABLE IF NOT EXISTS charges (
    id        BIGSERIAL        PRIMARY KEY,
    "time"    TEXT             NOT NULL,
    name      TEXT             NOT NULL,
    "user"    TEXT             NOT NULL,
    query     TEXT             NOT NULL,
    mechanism TEXT             NOT NULL,
    epsilon   DOUBLE PRECISION NOT NULL,
    delta     DOUBLE PRECISION NOT NULL,
    rho       DOUBLE PRECISION,
    units     BIGINT           NOT NULL CHECK (units > 0),
    tier      TEXT             NOT NULL,
    purpose   TEXT             NOT NULL,
    delta_units BIGINT         NOT NULL DEFAULT 0 CHECK (delta_units >= 0),
    prev_id   BIGINT           NOT NULL DEFAULT 0,
    prev_hash TEXT             NOT NULL DEFAULT '',
    hash      TEXT             NOT NULL DEFAULT '',
    FOREIGN KEY (name, "user") REFERENCES budgets (name, "user")
)""",
    'CREATE INDEX IF NOT EXISTS charges_by_tier ON charges (name, "user", tier, units)',
    'CREATE INDEX IF NOT EXISTS charges_by_purpose ON charges (name, "user", purpose, units)',
    """CREATE TABLE IF NOT EXISTS charge_tiers (
    charge_id BIGINT NOT NULL REFERENCES charges (id),
    name      TEXT   NOT NULL,
    "user"    TEXT   NOT NULL,
    tier      TEXT   NOT NULL,
    units     BIGINT NOT NULL CHECK (units > 0),
    PRIMARY KEY (charge_id, tier)
)""",
    'CREATE INDEX IF NOT EXISTS charge_tiers_by_tier ON charge_tiers (name, "user", tier, units)',
    """CREATE TABLE IF NOT EXISTS estimated_bounds (
    name        TEXT             NOT NULL,
    "user"      TEXT             NOT NULL,
    column_name TEXT             NOT NULL,
    low         DOUBLE PRECISION NOT NULL,
    high        DOUBLE PRECISION NOT NULL CHECK (high > low),
    epsilon     DOUBLE PRECISION NOT NULL,
    charge_id   BIGINT           NOT NULL REFERENCES charges (id),
    PRIMARY KEY (name, "user", column_name)
)""",
    """CREATE TABLE IF NOT EXISTS dataset_caps (
    name            TEXT             NOT NULL PRIMARY KEY,
    mode            TEXT             NOT NULL CHECK (mode IN ('pure', 'zcdp')),
    epsilon_total   DOUBLE PRECISION NOT NULL,
    delta_total     DOUBLE PRECISION NOT NULL,
    cap_units       BIGINT           NOT NULL CHECK (cap_units > 0),
    delta_cap_units BIGINT           NOT NULL DEFAULT 0 CHECK (delta_cap_units >= 0),
    created         TEXT             NOT NULL
)""",
    # One function raises for every trigger, with the message the trigger passes it.
    """CREATE OR REPLACE FUNCTION dpmagic_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING MESSAGE = TG_ARGV[0], ERRCODE = 'integrity_constraint_violation';
END
$$""",
)

_CHANGED = f"{_APPEND_ONLY}: a recorded charge cannot be changed"
_DELETED = f"{_APPEND_ONLY}: a recorded charge cannot be deleted"
# name -> (table, when); the same rules as SQLite's triggers, plus TRUNCATE, which skips row triggers.
_TRIGGERS = {
    "charges_no_update": ("charges", "BEFORE UPDATE", "ROW", _CHANGED),
    "charges_no_delete": ("charges", "BEFORE DELETE", "ROW", _DELETED),
    "charges_no_truncate": ("charges", "BEFORE TRUNCATE", "STATEMENT", _DELETED),
    "charge_tiers_no_update": ("charge_tiers", "BEFORE UPDATE", "ROW", _CHANGED),
    "charge_tiers_no_delete": ("charge_tiers", "BEFORE DELETE", "ROW", _DELETED),
    "charge_tiers_no_truncate": ("charge_tiers", "BEFORE TRUNCATE", "STATEMENT", _DELETED),
    "budgets_no_delete": ("budgets", "BEFORE DELETE", "ROW", f"{_APPEND_ONLY}: a budget cannot be deleted"),
    "budgets_no_truncate": ("budgets", "BEFORE TRUNCATE", "STATEMENT", f"{_APPEND_ONLY}: a budget cannot be deleted"),
    "dataset_caps_no_update": (
        "dataset_caps", "BEFORE UPDATE", "ROW", f"{_APPEND_ONLY}: a dataset-wide budget cannot be changed"
    ),
    "dataset_caps_no_delete": (
        "dataset_caps", "BEFORE DELETE", "ROW", f"{_APPEND_ONLY}: a dataset-wide budget cannot be deleted"
    ),
    "dataset_caps_no_truncate": (
        "dataset_caps", "BEFORE TRUNCATE", "STATEMENT", f"{_APPEND_ONLY}: a dataset-wide budget cannot be deleted"
    ),
    "budgets_fixed": (
        "budgets",
        'BEFORE UPDATE OF name, "user", fingerprint, mode, epsilon_total, delta_total, cap_units, delta_cap_units,'
        " created",
        "ROW",
        f"{_APPEND_ONLY}: the totals of a budget cannot be changed",
    ),
    "budgets_only_grow": (
        "budgets",
        "BEFORE UPDATE OF spent_units, releases, delta_spent_units",
        "ROW WHEN (NEW.spent_units < OLD.spent_units OR NEW.releases < OLD.releases"
        " OR NEW.delta_spent_units < OLD.delta_spent_units)",
        f"{_APPEND_ONLY}: what a budget has spent cannot go down",
    ),
}


def _create_trigger(name: str) -> str:
    table, when, each, message = _TRIGGERS[name]
    message = message.replace("'", "''")
    return f"CREATE TRIGGER {name} {when} ON {table} FOR EACH {each} EXECUTE FUNCTION dpmagic_refuse('{message}')"


@functools.lru_cache(maxsize=256)
def _translate(statement: str) -> str:
    """A statement of the shared code in PostgreSQL's terms: ``%s`` placeholders, quoted keywords.

    The shared statements use ``?`` for parameters and never a literal ``?`` or ``%``; ``user`` and
    ``time`` are column names there, which PostgreSQL reserves, so they are quoted.
    """
    return re.sub(r'(?<!")\b(user|time)\b(?!")', r'"\1"', statement).replace("?", "%s")


def _redacted(url: str) -> str:
    """The URL without a password, for messages."""
    url = re.sub(r"(://[^:/@?]*):[^@/?]*@", r"\1:***@", url)
    return re.sub(r"(?i)(password=)[^&\s]*", r"\1***", url)


class _Connection:
    """What the shared code calls on a connection, in PostgreSQL's dialect."""

    __slots__ = ("raw",)

    def __init__(self, raw) -> None:
        self.raw = raw

    def execute(self, statement: str, params=()):
        return self.raw.execute(_translate(statement), tuple(params) or None)

    def executemany(self, statement: str, rows):
        cursor = self.raw.cursor()
        cursor.executemany(_translate(statement), list(rows))
        return cursor


class PostgresLedger(Ledger):
    """Budgets and charges in a PostgreSQL database, safe to share between processes and machines.

    Parameters
    ----------
    url : str
        A ``postgresql://`` (or ``postgres://``) URL of the database. Its tables are created on
        first use.

    Notes
    -----
    Each object holds one connection, guarded by a lock so that threads can share the object.
    Charges of one budget wait up to 30 s for its row lock instead of failing.
    """

    _FOR_UPDATE = " FOR UPDATE"
    _NO_LIMIT = None
    _INSERT_BOUNDS = (
        "INSERT INTO estimated_bounds (name, user, column_name, low, high, epsilon, charge_id)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
    )

    def __init__(self, url: str) -> None:
        self.url = str(url)
        self._lock = threading.Lock()
        try:
            import psycopg
        except ImportError:
            raise PolicyError(
                f"the privacy ledger {_redacted(self.url)} is a PostgreSQL database, which needs psycopg 3: "
                "pip install jupyter-dpmagic[postgres]"
            ) from None
        self._error, self._idle = psycopg.Error, psycopg.pq.TransactionStatus.IDLE
        self._retried = (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected)
        try:
            raw = psycopg.connect(self.url, autocommit=True)
        except psycopg.Error as error:
            raise PolicyError(f"cannot connect to the privacy ledger {_redacted(self.url)}: {error}") from None
        try:
            # on: COMMIT returns once the commit is on the server's disk, whatever the server's default.
            raw.execute("SET synchronous_commit = on")
            raw.execute(f"SET lock_timeout = '{int(_BUSY_TIMEOUT_S * 1000)}ms'")
            self._create_schema(raw)
        except BaseException:
            raw.close()
            raise
        self._conn = raw

    def _create_schema(self, raw) -> None:
        if self._schema_missing(raw):
            with raw.transaction():
                # One process at a time creates the tables; the others find them done.
                raw.execute("SELECT pg_advisory_xact_lock(hashtextextended('dpmagic-ledger-schema', 0))")
                for statement in _SCHEMA:
                    raw.execute(statement)
                present = self._triggers_present(raw)
                for name in _TRIGGERS:
                    if name not in present:
                        raw.execute(_create_trigger(name))

    def _schema_missing(self, raw) -> bool:
        (tables,) = raw.execute(
            "SELECT count(to_regclass(t)) FROM unnest(ARRAY['budgets', 'charges', 'charge_tiers',"
            " 'estimated_bounds', 'dataset_caps']) AS t"
        ).fetchone()
        return tables < 5 or not set(_TRIGGERS) <= self._triggers_present(raw)

    @staticmethod
    def _triggers_present(raw) -> set[str]:
        rows = raw.execute(
            "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal AND tgrelid IN (SELECT to_regclass(t) FROM"
            " unnest(ARRAY['budgets', 'charges', 'charge_tiers', 'dataset_caps']) AS t)"
        ).fetchall()
        return {r[0] for r in rows}

    # -- plumbing -------------------------------------------------------------------------------

    def _write(self, body):
        """Run ``body(conn)`` in one transaction, again from the start after a serialization failure."""
        for attempt in range(1, _RETRIES + 1):
            try:
                with self._transaction() as conn:
                    return body(conn)
            except self._retried:
                # The transaction was rolled back as a whole: running it again cannot charge twice.
                if attempt == _RETRIES:
                    raise
                time.sleep(random.uniform(0, min(0.01 * 2**attempt, 0.5)))
        raise AssertionError("unreachable")  # pragma: no cover

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[_Connection]:
        with self._lock:
            raw = self._connection()
            raw.execute("BEGIN ISOLATION LEVEL READ COMMITTED")
            try:
                yield _Connection(raw)
                raw.execute("COMMIT")
            except BaseException:
                self._rollback(raw)
                raise

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[_Connection]:
        with self._lock:
            raw = self._connection()
            raw.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            try:
                yield _Connection(raw)
            finally:
                self._rollback(raw)

    def _rollback(self, raw) -> None:
        with contextlib.suppress(self._error):  # a lost connection has nothing left to roll back
            if raw.info.transaction_status != self._idle:
                raw.execute("ROLLBACK")

    def _connection(self):
        if self._conn is None:
            raise PolicyError(f"the privacy ledger {_redacted(self.url)} is closed; open a new PostgresLedger")
        return self._conn

    def _next_charge_id(self, conn: _Connection) -> int:
        (charge_id,) = conn.execute("SELECT nextval(pg_get_serial_sequence('charges', 'id'))").fetchone()
        return int(charge_id)

    def _lock_registrations(self, conn: _Connection, user: str) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(?, 0))", ("dpmagic-registrations:" + user,))

    def _lock_dataset(self, conn: _Connection, name: str) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(?, 0))", ("dpmagic-dataset:" + name,))

    def close(self) -> None:
        """Close the connection. Calling it again does nothing."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __repr__(self) -> str:
        return f"PostgresLedger({_redacted(self.url)!r})"
