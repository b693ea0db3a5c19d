"""Integrity of the budget ledger: racing processes, killed processes, and edits of the file.

Each runs against a SQLite file and against a PostgreSQL database (files from before the chain
exist only for SQLite).

* Concurrency: 16 processes x 25 attempts of 0.1 against a cap of 1.0, released together by a
  barrier: exactly 10 succeed, every repetition; with the locking removed the same race overspends.
* Crash: a charging process killed with SIGKILL at random points, 100 times: never more spent than
  the cap, no returned charge lost, SQLite's integrity check passes, the hash chain verifies.
* Tamper evidence: editing, deleting or inserting a charge, or editing the budget row, is reported
  by ``SQLiteLedger.verify`` (``dp.history(name, verify=True)``, ``%dp history NAME --verify``) with
  the id of the charge concerned.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jupyter_dpmagic.ledger import UNITS_PER_ONE, ChainReport, SQLiteLedger, charge_hash, open_ledger

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:  # so that spawned children can import the worker module too
    sys.path.insert(0, str(TESTS))

import _ledger_worker as worker  # noqa: E402
from _postgres import Raw, integrity_error, tamper  # noqa: E402
from test_reserves import _old_ledger  # noqa: E402  (a ledger file in the schema before reserves)

TENTH = UNITS_PER_ONE // 10
WORKER = TESTS / "_ledger_worker.py"


@pytest.fixture
def path(ledger_location):
    return ledger_location


def _charge(ledger, units=TENTH, *, name="visits", epsilon=0.1, query="count", tier="default", tiers=None):
    return ledger.charge(
        name=name, user="alice", units=units, epsilon=epsilon, delta=0.0, rho=None, query=query,
        mechanism="laplace", tier=tier, purpose="test", tier_caps=tiers,
    )


def _verify(path, name="visits") -> ChainReport:
    with open_ledger(path) as ledger:
        return ledger.verify(name=name, user="alice")


def _found(report: ChainReport) -> set[tuple[str, int]]:
    """The charges a report names, as ``(kind, id)``; problems of the budget row are left out."""
    return {(p.kind, p.charge_id) for p in report.problems if p.kind != "budget"}


def _budget_problems(report: ChainReport) -> list[str]:
    return [p.detail for p in report.problems if p.kind == "budget"]


def _tamper(path, *statements, params=()):
    """Change the ledger as someone with a database shell would: triggers dropped first, no foreign keys."""
    tamper(str(path), *statements, params=params)


def _four_charges(path):
    """Budget 'visits' with charges #1, #2, #4, #5 and budget 'other' with #3; returns their ids."""
    with open_ledger(path) as ledger:
        worker.open_budget(ledger)
        worker.open_budget(ledger, name="other", fingerprint="fp-other")
        ids = [_charge(ledger, query="count").id, _charge(ledger, 2 * TENTH, query="mean(age)", epsilon=0.2).id]
        other = _charge(ledger, name="other").id
        ids += [_charge(ledger, tiers={"default": None, "sensitive": None}).id, _charge(ledger, query="sum").id]
    assert ids == [1, 2, 4, 5] and other == 3
    return ids


# -- an intact ledger ------------------------------------------------------------------------------


def test_intact_ledger_verifies(path):
    _four_charges(path)
    report = _verify(path)
    assert report.ok and bool(report) and report.problems == ()
    assert report.summary == "chain intact: 4 charges, spent matches"
    assert (report.charges, report.spent_units, report.charged_units) == (4, 5 * TENTH, 5 * TENTH)
    assert _verify(path, "other").summary == "chain intact: 1 charge, spent matches"
    with open_ledger(path) as ledger:
        worker.open_budget(ledger, name="empty", fingerprint="fp-empty")
        assert ledger.verify(name="empty", user="alice").summary == "chain intact: 0 charges, spent matches"
        rows = ledger._conn.execute("SELECT id, prev_id, prev_hash, hash FROM charges WHERE name = 'visits'"
                                    " ORDER BY id").fetchall()
        head = ledger._conn.execute("SELECT head_id, head_hash FROM budgets WHERE name = 'visits'").fetchone()
    # each charge links to the budget's previous one; the budget row holds the head
    assert [r[1] for r in rows] == [0, 1, 2, 4]
    assert [r[2] for r in rows[1:]] == [r[3] for r in rows[:-1]]
    assert head == (5, rows[-1][3]) and report.head_hash == rows[-1][3]
    assert all(len(r[3]) == 64 for r in rows)


def test_triggers_keep_the_charges_append_only(path):
    _four_charges(path)
    refused = [
        "UPDATE charges SET epsilon = 0.01 WHERE id = 2",
        "DELETE FROM charges WHERE id = 5",
        "DELETE FROM charge_tiers WHERE charge_id = 4",
        "UPDATE charge_tiers SET units = 1 WHERE charge_id = 4",
        "UPDATE budgets SET spent_units = 0 WHERE name = 'visits'",
        "UPDATE budgets SET releases = 0 WHERE name = 'visits'",
        "UPDATE budgets SET cap_units = 10 * cap_units WHERE name = 'visits'",
        "UPDATE budgets SET epsilon_total = 100.0 WHERE name = 'visits'",
        "DELETE FROM budgets WHERE name = 'other'",
    ]
    with open_ledger(path) as ledger:
        for statement in refused:
            with pytest.raises(integrity_error(path), match="append-only"):
                ledger._conn.execute(statement)
        _charge(ledger)  # charging still works: spent grows, the head moves
    report = _verify(path)
    assert report.ok and report.charges == 5


# -- tampering -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("statement", "charges", "budget_row"),
    [
        ("UPDATE charges SET epsilon = 0.01 WHERE id = 2", {("edited", 2)}, False),
        ("UPDATE charges SET query = 'nothing to see' WHERE id = 4", {("edited", 4)}, False),
        ("UPDATE charges SET time = '2000-01-01T00:00:00+00:00' WHERE id = 1", {("edited", 1)}, False),
        ("UPDATE charges SET units = 1 WHERE id = 5", {("edited", 5)}, True),
        ("DELETE FROM charge_tiers WHERE charge_id = 4 AND tier = 'sensitive'", {("edited", 4)}, False),
        ("DELETE FROM charges WHERE id = 2", {("deleted", 2)}, True),
        ("DELETE FROM charges WHERE id = 1", {("deleted", 1)}, True),
        ("DELETE FROM charges WHERE id = 5", {("deleted", 5)}, True),
        ("INSERT INTO charges (time, name, user, query, mechanism, epsilon, delta, rho, units, tier, purpose)"
         " VALUES ('t', 'visits', 'alice', 'q', 'laplace', 0.1, 0, NULL, 1, 'default', 'test')", {("inserted", 6)},
         True),
        ("UPDATE charges SET name = 'visits' WHERE id = 3", {("inserted", 3)}, True),
        ("UPDATE budgets SET spent_units = 0 WHERE name = 'visits'", set(), True),
        ("UPDATE budgets SET releases = 1 WHERE name = 'visits'", set(), True),
        ("UPDATE budgets SET cap_units = 10 * cap_units WHERE name = 'visits'", set(), True),
    ],
    ids=["edit-epsilon", "edit-query", "edit-time", "edit-units", "delete-tier", "delete-middle", "delete-first",
         "delete-last", "insert-last", "insert-middle", "edit-spent", "edit-releases", "edit-cap"],
)
def test_tampering_is_reported_with_the_right_id(path, statement, charges, budget_row):
    _four_charges(path)
    _tamper(path, statement)
    report = _verify(path)
    assert not report.ok and not bool(report)
    assert _found(report) == charges, report.summary
    assert bool(_budget_problems(report)) == budget_row, report.summary
    assert report.summary.startswith("chain broken: ")
    for kind, charge_id in charges:
        assert f"charge #{charge_id} was {kind}" in report.summary


def test_spent_edited_down_is_reported_in_words(path):
    _four_charges(path)
    _tamper(path, "UPDATE budgets SET spent_units = 2 * ? WHERE name = 'visits'", params=(TENTH,))
    (problem,) = _verify(path).problems
    assert problem.kind == "budget" and problem.charge_id is None
    assert problem.detail == "the budget row says epsilon 0.2 was spent but its 4 charge(s) add up to epsilon 0.5"


def test_rewritten_rows_with_their_own_hash_are_still_found(path):
    # Someone who knows the hash function rewrites a charge and its hash (but not what follows it),
    # and slips in a charge whose hash and link are right for the chain's middle.
    _four_charges(path)
    _tamper(path, "DELETE FROM charges WHERE id = 3")  # frees an id between #2 and #4 ('other')
    conn = Raw(path)
    row = conn.execute("SELECT time, prev_id, prev_hash FROM charges WHERE id = 2").fetchone()
    fields = dict(name="visits", user="alice", query="mean(age)", mechanism="laplace", epsilon=0.2, delta=0.0,
                  rho=None, tier="default", purpose="test", delta_units=0, tiers=["default"])
    forged = charge_hash(id=2, prev_id=row[1], prev_hash=row[2], time=row[0], units=1, **fields)
    conn.execute("UPDATE charges SET units = 1, hash = ? WHERE id = 2", (forged,))
    h2 = conn.execute("SELECT hash FROM charges WHERE id = 1").fetchone()[0]  # link to #1 instead
    fake = charge_hash(id=3, prev_id=1, prev_hash=h2, time="t", units=1, **fields)
    conn.execute(
        "INSERT INTO charges (id, time, name, user, query, mechanism, epsilon, delta, rho, units, tier, purpose,"
        " prev_id, prev_hash, hash) VALUES (3, 't', 'visits', 'alice', 'mean(age)', 'laplace', 0.2, 0, NULL, 1,"
        " 'default', 'test', 1, ?, ?)",
        (h2, fake),
    )
    conn.close()
    report = _verify(path)
    assert _found(report) == {("edited", 2), ("inserted", 3)}, report.summary


def test_edited_head_of_the_budget_row_is_reported(path):
    _four_charges(path)
    _tamper(path, "UPDATE budgets SET head_hash = 'x' WHERE name = 'visits'")
    (problem,) = _verify(path).problems
    assert problem.kind == "budget" and "(#5)" in problem.detail


def test_missing_budget_row_is_reported_not_raised(path):
    _four_charges(path)
    _tamper(path, "DELETE FROM budgets WHERE name = 'other'")
    report = _verify(path, "other")
    assert not report.ok and report.spent_units is None
    assert "budget row of 'other' is missing" in report.summary


def test_unknown_name_is_an_error(path):
    from jupyter_dpmagic.errors import PolicyError

    _four_charges(path)
    with pytest.raises(PolicyError, match="Did you mean 'visits'"):
        _verify(path, "vists")


# -- files from before the chain -------------------------------------------------------------------


def _hashes(path):
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT id, prev_id, prev_hash, hash FROM charges ORDER BY id").fetchall()
    finally:
        conn.close()


@pytest.mark.parametrize("mode", ["zcdp", "pure"])
def test_old_file_is_chained_once_then_verifies(tmp_path, mode):
    path = tmp_path / "old.sqlite"
    if mode == "pure":
        _old_ledger(path, mode="pure", delta=0.0, cap_units=UNITS_PER_ONE)
    else:
        _old_ledger(path)
    with SQLiteLedger(path) as ledger:  # the upgrade chains the charge already there
        assert ledger.verify(name="visits", user="alice").summary == "chain intact: 1 charge, spent matches"
        migrated = _hashes(path)
        assert migrated[0][:2] == (1, 0) and len(migrated[0][3]) == 64
        _charge(ledger, 10**9)
        assert ledger.verify(name="visits", user="alice").summary == "chain intact: 2 charges, spent matches"
        triggers = {r[0] for r in ledger._conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
        assert {"charges_no_update", "charges_no_delete", "budgets_only_grow"} <= triggers
    # Opening again recomputes nothing: a row slipped in without a hash stays reported.
    _tamper(path, "INSERT INTO charges (time, name, user, query, mechanism, epsilon, delta, rho, units, tier,"
                  " purpose) VALUES ('t', 'visits', 'alice', 'q', 'm', 0.1, 0, NULL, 1, 'standard', 'x')")
    with SQLiteLedger(path) as ledger:
        assert _hashes(path)[:2] == [migrated[0], _hashes(path)[1]]
        assert _found(ledger.verify(name="visits", user="alice")) == {("inserted", 3)}


def test_old_file_edited_after_the_upgrade_is_caught(tmp_path):
    path = tmp_path / "old.sqlite"
    _old_ledger(path)
    SQLiteLedger(path).close()
    _tamper(path, "UPDATE charges SET purpose = 'publish' WHERE id = 1")
    assert _found(_verify(path)) == {("edited", 1)}


# -- the API and the magic -------------------------------------------------------------------------


def test_history_verify_through_api_and_magic(ledger_path, protect_hospital, dataset_name):
    import jupyter_dpmagic as dp
    from IPython.core.interactiveshell import InteractiveShell

    frame = protect_hospital()
    with dp.spending(epsilon=0.5):
        frame["age"].mean()
        frame["bmi"].mean()
    result = dp.history(dataset_name, verify=True)
    assert result.ok and result.summary == "chain intact: 2 charges, spent matches"
    assert "chain intact: 2 charges, spent matches" in repr(result)
    assert "chain intact" in result._repr_html_() and "<table" not in result._repr_html_()
    assert len(dp.history(dataset_name).charges) == 2  # without verify: the history, as before

    first = dp.history(dataset_name).charges[0].id
    _tamper(ledger_path, f"UPDATE charges SET epsilon = 0.001 WHERE id = {first}")
    shell = InteractiveShell.instance()
    assert shell.run_cell("%load_ext jupyter_dpmagic").success
    shown = shell.run_cell(f"%dp history {dataset_name} --verify")
    assert shown.success, shown.error_in_exec  # reported, not raised
    table = shown.result
    assert not table.ok and [(p.kind, p.charge_id) for p in table.report.problems] == [("edited", first)]
    text = repr(table)
    assert "chain broken" in text and f"#{first}" in text and "edited" in text
    assert f"charge #{first} was edited" in table._repr_html_()
    assert shell.run_cell(f"%dp history {dataset_name}").success
    refused = shell.run_cell(f"%dp history {dataset_name} --verfy")
    assert not refused.success and "--verify" in str(refused.error_in_exec)


# -- concurrency -----------------------------------------------------------------------------------


def _race_on_fresh_budget(path, run):
    with open_ledger(path) as ledger:
        worker.open_budget(ledger)
    return path, worker.run_race(worker.race_charges, path, [25] * 16)


def _check_race(path, successes):
    assert sum(successes) == 10, successes
    with open_ledger(path) as ledger:
        history = ledger.history(name="visits", user="alice")
        assert ledger.budget(name="visits", user="alice").spent_units == UNITS_PER_ONE
        assert len(history) == 10 and sum(c.units for c in history) == UNITS_PER_ONE
        assert ledger.verify(name="visits", user="alice").ok


@pytest.mark.parametrize("run", range(5))
def test_racing_processes_spend_exactly_the_cap(ledger_location, run):
    _check_race(*_race_on_fresh_budget(ledger_location, run))


@pytest.mark.slow
@pytest.mark.parametrize("run", range(40))
def test_racing_processes_spend_exactly_the_cap_many_times(ledger_location, run):
    _check_race(*_race_on_fresh_budget(ledger_location, run))


def test_the_same_race_without_locking_overspends(ledger_location):
    _unlocked_race(ledger_location)


@pytest.mark.slow
@pytest.mark.parametrize("run", range(5))
def test_the_same_race_without_locking_overspends_every_time(ledger_location, run):
    _unlocked_race(ledger_location)


def _unlocked_race(path):
    # The race above is a real race: with the check made before the write instead of in the UPDATE
    # under the write lock, and every process checking before any writes (the barrier sits between
    # check and write, so this is certain, not likely), the processes spend far more than the cap.
    with open_ledger(path) as ledger:
        worker.open_budget(ledger)
    successes = worker.run_race(worker.race_unlocked_charges, path, [25] * 16)
    with Raw(path) as conn:
        (charged,) = conn.execute("SELECT SUM(units) FROM charges").fetchone()
    # each of 10 rounds: all 16 see the same spent amount, all 16 find 0.1 fits, all 16 write
    assert successes == [10] * 16 and charged == 160 * TENTH > UNITS_PER_ONE
    report = _verify(path)  # the ledger's own check shows the damage too
    assert not report.ok and report.spent_units == UNITS_PER_ONE and report.charged_units == 160 * TENTH


# -- crashes ---------------------------------------------------------------------------------------


def _child_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS.parent), env.get("PYTHONPATH")]))
    return env


def _kill_at_random(path, rng, env):
    """Start a charging child, SIGKILL it at a random point; return the charge ids it printed."""
    child = subprocess.Popen([sys.executable, str(WORKER), "charge-until-killed", str(path)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=TESTS.parent)
    try:
        if rng.random() < 0.2:
            time.sleep(rng.uniform(0, 0.08))  # anywhere, opening the ledger included
        else:
            assert child.stdout.readline() == b"ready\n"
            time.sleep(rng.uniform(0, 0.04))  # while charging
        child.send_signal(signal.SIGKILL)
        out, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL, err.decode()
    return [int(line) for line in out.split() if line.isdigit()]


def _crash_many_times(path, kills, seed):
    rng, env = random.Random(seed), _child_env()
    returned = []
    for _ in range(kills):
        returned += _kill_at_random(path, rng, env)
    with Raw(path) as conn:
        if not conn.postgres:  # the server checks its pages and foreign keys itself
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        recorded = {r[0] for r in conn.execute("SELECT id FROM charges")}
        budgets = conn.execute("SELECT name, cap_units, spent_units FROM budgets").fetchall()
    assert set(returned) <= recorded  # no charge whose value was returned is lost
    assert len(returned) == len(set(returned))
    assert budgets and all(spent <= cap for _, cap, spent in budgets)
    with open_ledger(path) as ledger:
        for name, _, _ in budgets:
            report = ledger.verify(name=name, user="alice")
            assert report.ok, report.summary
    return returned, recorded, budgets


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_killed_charging_process_loses_nothing_and_never_overspends(ledger_location):
    returned, recorded, budgets = _crash_many_times(ledger_location, kills=100, seed=20240611)
    assert len(returned) > 100 and len(budgets) > 2  # the kills landed among many charges and budgets


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_killed_charging_process_many_more_times(ledger_location):
    _crash_many_times(ledger_location, kills=500, seed=random.randrange(2**32))
