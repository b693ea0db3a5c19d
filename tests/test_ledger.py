"""Tests of the durable budget store: real SQLite files and PostgreSQL databases, real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from jupyter_dpmagic.errors import BudgetExceededError, PolicyError
from jupyter_dpmagic.ledger import UNITS_PER_ONE, BudgetRecord, ChargeRecord, SQLiteLedger, open_ledger

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:  # so that spawned children can import the worker module too
    sys.path.insert(0, str(TESTS))

import _ledger_worker as worker  # noqa: E402
from _postgres import Raw, is_postgres  # noqa: E402

TENTH = UNITS_PER_ONE // 10
WORKER = TESTS / "_ledger_worker.py"


@pytest.fixture
def ledger(ledger_location):
    with open_ledger(ledger_location) as opened:
        yield opened


def _charge(ledger, units=TENTH, *, name="visits", tier="default", purpose="test", tier_cap_units=None):
    return ledger.charge(
        name=name,
        user="alice",
        units=units,
        epsilon=0.1,
        delta=0.0,
        rho=None,
        query="count",
        mechanism="laplace",
        tier=tier,
        purpose=purpose,
        tier_cap_units=tier_cap_units,
    )


def _state(ledger, name="visits"):
    record = ledger.budget(name=name, user="alice")
    return record.spent_units, record.releases, len(ledger.history(name=name, user="alice"))


# -- storage ------------------------------------------------------------------------------------


def test_file_is_durable_wal_with_full_sync(tmp_path):
    path = tmp_path / "a" / "b" / "ledger.db"
    ledger = SQLiteLedger(str(path))
    assert ledger.path == path and path.exists()
    conn = ledger._conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 10_000
    assert conn.isolation_level is None
    ledger.close()
    ledger.close()  # closing twice is harmless
    with pytest.raises(PolicyError, match="closed"):
        ledger.budgets(user="alice")


def test_open_budget_creates_once_and_never_resets(ledger):
    record = worker.open_budget(ledger)
    assert isinstance(record, BudgetRecord)
    assert (record.mode, record.cap_units, record.spent_units) == ("pure", UNITS_PER_ONE, 0)
    assert record.releases == 0
    assert record.created.endswith("+00:00")
    _charge(ledger)
    again = worker.open_budget(ledger)
    assert (again.spent_units, again.releases, again.created) == (TENTH, 1, record.created)
    assert ledger.budgets(user="alice") == [again]


def test_charge_records_everything(ledger):
    worker.open_budget(ledger)
    charge = ledger.charge(
        name="visits", user="alice", units=7, epsilon=7e-12, delta=0.0, rho=None,
        query="mean(age)", mechanism="laplace", tier="explore", purpose="qa",
    )
    assert isinstance(charge, ChargeRecord)
    assert ledger.history(name="visits", user="alice") == [charge]
    assert (charge.units, charge.query, charge.mechanism, charge.tier, charge.purpose) == (
        7, "mean(age)", "laplace", "explore", "qa"
    )
    assert ledger.budget(name="visits", user="alice").spent_units == 7


def test_budgets_ordered_and_per_user(ledger):
    for name in ("zeta", "alpha", "mid"):
        worker.open_budget(ledger, name=name, fingerprint=f"fp-{name}")
    ledger.open_budget(
        name="other", user="bob", fingerprint="fp-x", mode="pure",
        epsilon_total=1.0, delta_total=0.0, cap_units=UNITS_PER_ONE,
    )
    assert [b.name for b in ledger.budgets(user="alice")] == ["alpha", "mid", "zeta"]
    assert [b.name for b in ledger.budgets(user="bob")] == ["other"]
    assert ledger.budgets(user="carol") == []


def test_history_oldest_first_and_spent_by_tier_and_purpose(ledger):
    worker.open_budget(ledger)
    _charge(ledger, 3, tier="explore", purpose="qa")
    _charge(ledger, 5, tier="report", purpose="qa")
    _charge(ledger, 11, tier="explore", purpose="paper")
    history = ledger.history(name="visits", user="alice")
    assert [c.units for c in history] == [3, 5, 11]
    assert [c.id for c in history] == sorted(c.id for c in history)
    assert ledger.tier_spent_units(name="visits", user="alice") == {"explore": 14, "report": 5}
    assert ledger.purpose_spent_units(name="visits", user="alice") == {"paper": 11, "qa": 8}


def test_unknown_budget_suggests_close_name(ledger):
    worker.open_budget(ledger)
    with pytest.raises(PolicyError, match="Did you mean 'visits'"):
        ledger.budget(name="vists", user="alice")
    with pytest.raises(PolicyError, match="no dataset named 'vists'"):
        _charge(ledger, name="vists")
    assert _state(ledger) == (0, 0, 0)


# -- open_budget refusals -----------------------------------------------------------------------


def test_same_name_different_data_is_refused(ledger):
    worker.open_budget(ledger)
    with pytest.raises(PolicyError) as caught:
        worker.open_budget(ledger, fingerprint="fp-other-data")
    message = str(caught.value)
    assert "a dataset named 'visits' is already registered with different data" in message
    assert "name='visits_2'" in message
    assert ledger.budget(name="visits", user="alice").fingerprint == "fp-visits"


def test_suggested_new_name_is_free(ledger):
    worker.open_budget(ledger)
    worker.open_budget(ledger, name="visits_2", fingerprint="fp-2")
    with pytest.raises(PolicyError, match="name='visits_3'"):
        worker.open_budget(ledger, fingerprint="fp-3")


def test_same_data_other_name_is_refused(ledger):
    worker.open_budget(ledger)
    with pytest.raises(PolicyError, match="already protected as 'visits'; use name='visits'"):
        worker.open_budget(ledger, name="visits_copy")
    assert [b.name for b in ledger.budgets(user="alice")] == ["visits"]


def test_same_data_other_user_is_a_separate_budget(ledger):
    worker.open_budget(ledger)
    bob = ledger.open_budget(
        name="visits", user="bob", fingerprint="fp-visits", mode="pure",
        epsilon_total=1.0, delta_total=0.0, cap_units=UNITS_PER_ONE,
    )
    assert bob.user == "bob" and bob.spent_units == 0


def test_different_totals_are_refused(ledger):
    worker.open_budget(ledger)
    _charge(ledger)
    with pytest.raises(PolicyError) as caught:
        ledger.open_budget(
            name="visits", user="alice", fingerprint="fp-visits", mode="pure",
            epsilon_total=5.0, delta_total=0.0, cap_units=5 * UNITS_PER_ONE,
        )
    message = str(caught.value)
    assert "epsilon=1.0, delta=0.0" in message and "never changes an existing budget" in message
    record = ledger.budget(name="visits", user="alice")
    assert (record.epsilon_total, record.cap_units, record.spent_units) == (1.0, UNITS_PER_ONE, TENTH)


@pytest.mark.parametrize(
    "changes",
    [
        {"cap_units": 0},
        {"cap_units": 1.5},
        {"cap_units": True},
        {"mode": "renyi"},
        {"mode": "zcdp"},  # with delta 0
        {"epsilon_total": float("nan")},
        {"delta_total": 1.0},
        {"name": ""},
    ],
)
def test_open_budget_rejects_invalid_arguments(ledger, changes):
    arguments = dict(
        name="visits", user="alice", fingerprint="fp", mode="pure",
        epsilon_total=1.0, delta_total=0.0, cap_units=UNITS_PER_ONE,
    )
    with pytest.raises(PolicyError):
        ledger.open_budget(**{**arguments, **changes})
    assert ledger.budgets(user="alice") == []


# -- charges ------------------------------------------------------------------------------------


def test_budget_is_spent_exactly_to_the_cap(ledger):
    worker.open_budget(ledger)
    for _ in range(10):
        _charge(ledger)
    with pytest.raises(BudgetExceededError):
        _charge(ledger, 1)
    assert _state(ledger) == (UNITS_PER_ONE, 10, 10)


def test_refused_charge_writes_nothing(ledger):
    worker.open_budget(ledger)
    _charge(ledger, 7 * TENTH)
    before = _state(ledger)
    with pytest.raises(BudgetExceededError) as caught:
        _charge(ledger, 4 * TENTH)
    message = str(caught.value)
    assert "only epsilon 0.3 remains" in message
    assert "epsilon=" in message and "%dp budget" in message
    assert caught.value.remaining_units == 3 * TENTH and caught.value.needed_units == 4 * TENTH
    assert _state(ledger) == before
    _charge(ledger, 3 * TENTH)  # what remains can still be spent
    assert _state(ledger) == (UNITS_PER_ONE, 2, 2)


@pytest.mark.parametrize("units", [0, -1, 1.5, True, float("nan"), float("inf"), "5"])
def test_invalid_units_are_rejected_and_nothing_written(ledger, units):
    worker.open_budget(ledger)
    with pytest.raises(PolicyError, match="positive integer"):
        _charge(ledger, units)
    assert _state(ledger) == (0, 0, 0)


def test_huge_units_are_refused_as_over_budget(ledger):
    worker.open_budget(ledger)
    with pytest.raises(BudgetExceededError):
        _charge(ledger, 2**70)  # more than SQLite's integers hold; must not wrap or overflow
    assert _state(ledger) == (0, 0, 0)


def test_tier_cap_limits_one_tier_only(ledger):
    worker.open_budget(ledger)
    half = UNITS_PER_ONE // 2
    for _ in range(5):
        _charge(ledger, tier="explore", tier_cap_units=half)
    before = _state(ledger)
    with pytest.raises(BudgetExceededError) as caught:
        _charge(ledger, tier="explore", tier_cap_units=half)
    assert "tier 'explore'" in str(caught.value) and "caps" in str(caught.value)
    assert caught.value.tier == "explore"
    assert _state(ledger) == before
    for _ in range(5):
        _charge(ledger, tier="report", tier_cap_units=half)
    assert ledger.tier_spent_units(name="visits", user="alice") == {"explore": half, "report": half}
    with pytest.raises(BudgetExceededError):  # the dataset budget still binds
        _charge(ledger, tier="other")


def test_ledger_is_safe_to_share_between_threads(ledger):
    from concurrent.futures import ThreadPoolExecutor

    worker.open_budget(ledger)

    def attempt(_):
        try:
            _charge(ledger, UNITS_PER_ONE // 40)
            return 1
        except BudgetExceededError:
            return 0

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert sum(pool.map(attempt, range(100))) == 40
    assert _state(ledger) == (UNITS_PER_ONE, 40, 40)


# -- other processes ----------------------------------------------------------------------------


def _run_worker(*args):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS.parent), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, str(WORKER), *map(str, args)],
        capture_output=True, text=True, env=env, cwd=TESTS.parent, timeout=60,
    )


def _worker_json(*args):
    done = _run_worker(*args)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    return lines[0]["opened"], lines[-1]["after"]


def test_budget_survives_restart(ledger_location):
    path = ledger_location
    opened, after = _worker_json("charge", path, 3)
    assert (opened["spent_units"], after["spent_units"], after["releases"]) == (0, 3 * TENTH, 3)
    # A second process opening the same (name, user, data) finds the budget as it was left.
    reopened, final = _worker_json("charge", path, 2)
    assert reopened == after
    assert (final["spent_units"], final["releases"], final["created"]) == (5 * TENTH, 5, opened["created"])


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_charge_is_on_disk_when_it_returns(ledger_location):
    path = ledger_location
    done = _run_worker("charge-then-die", path)
    assert done.returncode == -signal.SIGKILL  # killed without any cleanup
    charge_id = json.loads(done.stdout.splitlines()[1])["charge_id"]
    with open_ledger(path) as ledger:
        assert [c.id for c in ledger.history(name="visits", user="alice")] == [charge_id]
        assert ledger.budget(name="visits", user="alice").spent_units == TENTH


# The race of 16 processes charging one budget, and the same race without locking, are in
# test_ledger_integrity.py with the other integrity tests.


def test_racing_registrations_create_one_budget(ledger_location):
    path = ledger_location  # the file (or the database's tables) is created during the race
    outcomes = worker.run_race(worker.race_registration, path, [f"fp-{i}" for i in range(8)], processes=8)
    created = [fp for outcome, fp in outcomes if outcome == "created"]
    assert len(created) == 1, outcomes
    assert sorted(outcome for outcome, _ in outcomes) == ["created"] + ["refused"] * 7
    with open_ledger(path) as ledger:
        assert [b.fingerprint for b in ledger.budgets(user="alice")] == created


# -- choosing the ledger, and what is particular to PostgreSQL --------------------------------------


def test_open_ledger_picks_the_database_by_location(tmp_path, ledger_location):
    with open_ledger(ledger_location) as ledger:
        kind = "PostgresLedger" if is_postgres(ledger_location) else "SQLiteLedger"
        assert type(ledger).__name__ == kind and repr(ledger).startswith(kind + "(")
    ledger.close()  # closing twice is harmless
    with pytest.raises(PolicyError, match="closed"):
        ledger.budgets(user="alice")


def test_postgres_url_without_psycopg_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if it were not installed
    for url in ("postgresql://steward:secret@db.example/ledger", "postgres:///ledger"):
        with pytest.raises(PolicyError, match=r"pip install jupyter-dpmagic\[postgres\]") as caught:
            open_ledger(url)
        assert "secret" not in str(caught.value)


def test_unreachable_postgres_is_a_policy_error(tmp_path):
    pytest.importorskip("psycopg")
    with pytest.raises(PolicyError, match="cannot connect to the privacy ledger") as caught:
        open_ledger(f"postgresql://alice:secret@/ledger?host={tmp_path}&connect_timeout=2")
    assert "secret" not in str(caught.value)


def test_postgres_commits_are_synchronous(postgres_cluster):
    with open_ledger(postgres_cluster.new_database()) as ledger:
        assert ledger._conn.execute("SHOW synchronous_commit").fetchone()[0] == "on"
        assert ledger._conn.execute("SHOW fsync").fetchone()[0] == "on"
        assert ledger._conn.execute("SHOW lock_timeout").fetchone()[0] == "30s"


def test_postgres_retries_a_serialization_failure_once_and_charges_once(postgres_cluster):
    import psycopg

    with open_ledger(postgres_cluster.new_database()) as ledger:
        worker.open_budget(ledger)
        real, failures = ledger._next_charge_id, []

        def fail_first(conn):
            taken = real(conn)
            if not failures:
                failures.append(taken)
                raise psycopg.errors.SerializationFailure("could not serialize access")
            return taken

        ledger._next_charge_id = fail_first
        charge = _charge(ledger)
        assert failures and charge.id == failures[0] + 1  # the first attempt's id is a gap, nothing more
        assert _state(ledger) == (TENTH, 1, 1)
        assert ledger.verify(name="visits", user="alice").ok


def test_postgres_schema_is_created_once_and_shared(postgres_cluster):
    url = postgres_cluster.new_database()
    with open_ledger(url) as first, open_ledger(url) as second:
        worker.open_budget(first)
        _charge(second)
        assert _state(first) == (TENTH, 1, 1)
    with Raw(url) as raw:
        triggers = {r[0] for r in raw.execute("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal")}
        with pytest.raises(Exception, match="append-only"):
            raw.execute("TRUNCATE charges CASCADE")
    assert {"charges_no_update", "charges_no_delete", "charges_no_truncate", "budgets_only_grow"} <= triggers
