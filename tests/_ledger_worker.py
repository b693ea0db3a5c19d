"""Code that ledger tests run in other processes.

Run as a script for the restart and crash tests (one command per process, lines on stdout);
imported by ``multiprocessing`` children for the race tests.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import signal
import sqlite3
import sys
import types
from pathlib import Path

if __name__ == "__main__":
    # As a script, load only the ledger and the errors module, not the package's __init__ with
    # pandas and scipy behind it: each process then starts in milliseconds.
    _package = types.ModuleType("jupyter_dpmagic")
    _package.__path__ = [str(Path(__file__).resolve().parents[1] / "jupyter_dpmagic")]
    sys.modules.setdefault("jupyter_dpmagic", _package)

from jupyter_dpmagic.errors import BudgetExceededError, PolicyError  # noqa: E402
from jupyter_dpmagic.ledger import UNITS_PER_ONE, SQLiteLedger, open_ledger  # noqa: E402

TENTH = UNITS_PER_ONE // 10


def open_budget(ledger: SQLiteLedger, name: str = "visits", fingerprint: str = "fp-visits"):
    return ledger.open_budget(
        name=name,
        user="alice",
        fingerprint=fingerprint,
        mode="pure",
        epsilon_total=1.0,
        delta_total=0.0,
        cap_units=UNITS_PER_ONE,
    )


def charge_tenth(ledger: SQLiteLedger, name: str = "visits"):
    return ledger.charge(
        name=name,
        user="alice",
        units=TENTH,
        epsilon=0.1,
        delta=0.0,
        rho=None,
        query="count",
        mechanism="laplace",
        tier="default",
        purpose="test",
    )


def race_charges(path: str, barrier, results, attempts: int) -> None:
    """Try ``attempts`` charges of 0.1 once every process is ready; report how many succeeded."""
    ledger = open_ledger(path)
    barrier.wait(timeout=60)
    succeeded = 0
    for _ in range(attempts):
        try:
            charge_tenth(ledger)
            succeeded += 1
        except BudgetExceededError:
            pass
    ledger.close()
    results.put(succeeded)


def race_dataset_charges(path: str, barrier, results, job: tuple[str, int]) -> None:
    """As ``user``, try ``attempts`` charges of 0.1 to 'visits' once every process is ready.

    ``job`` is ``(user, attempts)``. Reports how many succeeded; an error other than a refused
    charge is reported too, so that the test fails at once instead of timing out.
    """
    user, attempts = job
    try:
        ledger = open_ledger(path)
        barrier.wait(timeout=60)
        succeeded = 0
        for _ in range(attempts):
            try:
                ledger.charge(
                    name="visits", user=user, units=TENTH, epsilon=0.1, delta=0.0, rho=None, query="count",
                    mechanism="laplace", tier="default", purpose="test",
                )
                succeeded += 1
            except BudgetExceededError as error:
                if error.limit != "dataset":
                    raise
        ledger.close()
        results.put((user, succeeded))
    except Exception as error:
        results.put((user, f"error: {error!r}"))


def race_unlocked_charges(path: str, barrier, results, attempts: int) -> None:
    """Like :func:`race_charges`, with the ledger's locking removed: check, then write.

    Each attempt reads the budget outside any write lock, checks in Python that 0.1 still fits, and
    then writes what it computed (spent = what it read + 0.1, and the charge row). The barrier sits
    between the check and the write, so every process checks before any process writes: the
    interleaving that ``BEGIN IMMEDIATE`` and the conditional ``UPDATE`` exist to rule out, forced
    every time instead of left to chance. A second barrier ends each round after all writes.
    """
    conn = _raw(path)
    barrier.wait(timeout=60)
    succeeded = 0
    for _ in range(attempts):
        spent, cap = conn.execute(
            "SELECT spent_units, cap_units FROM budgets WHERE name = 'visits' AND user = 'alice'"
        ).fetchone()
        fits = spent + TENTH <= cap
        barrier.wait(timeout=60)  # every process has checked; none has written
        if fits:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "UPDATE budgets SET spent_units = ?, releases = releases + 1 WHERE name = 'visits'"
                " AND user = 'alice'",
                (spent + TENTH,),
            )
            conn.execute(
                "INSERT INTO charges (time, name, user, query, mechanism, epsilon, delta, rho, units, tier,"
                " purpose) VALUES ('t', 'visits', 'alice', 'q', 'm', 0.1, 0, NULL, ?, 'default', 'test')",
                (TENTH,),
            )
            conn.execute("COMMIT")
            succeeded += 1
        barrier.wait(timeout=60)  # every write of this round is done
    conn.close()
    results.put(succeeded)


def race_registration(path: str, barrier, results, fingerprint: str) -> None:
    """Register 'visits' with this process's own data; report whether this process created it."""
    barrier.wait(timeout=60)
    try:
        # After the barrier: the file, its WAL mode and its schema are set up during the race too.
        with open_ledger(path) as ledger:
            record = open_budget(ledger, fingerprint=fingerprint)
        results.put(("created" if record.fingerprint == fingerprint else "other", fingerprint))
    except PolicyError:
        results.put(("refused", fingerprint))
    except Exception as error:  # reported, so that the test fails at once instead of timing out
        results.put((f"error: {error!r}", fingerprint))


class _Raw:
    """A plain autocommit connection to a ledger, taking SQLite's ``?`` statements on either database."""

    def __init__(self, location: str) -> None:
        self.postgres = location.startswith(("postgresql://", "postgres://"))
        if self.postgres:
            import psycopg

            from jupyter_dpmagic.ledger_postgres import _translate

            self._translate = _translate
            self.conn = psycopg.connect(location, autocommit=True)
        else:
            self.conn = sqlite3.connect(location, timeout=30, isolation_level=None)

    def execute(self, statement: str, params=()):
        if self.postgres:
            statement = self._translate(statement.replace("BEGIN IMMEDIATE", "BEGIN"))
            return self.conn.execute(statement, tuple(params) or None)
        return self.conn.execute(statement, params)

    def close(self) -> None:
        self.conn.close()


def _raw(location: str) -> _Raw:
    return _Raw(location)


def run_race(target, path, extra_args, processes: int = 16) -> list:
    """Start ``processes`` children of ``target(path, barrier, results, extra)``; return their results."""
    # fork starts 16 processes much faster than spawn; spawn works too (this module is importable).
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    barrier, results = ctx.Barrier(processes), ctx.Queue()
    children = [ctx.Process(target=target, args=(str(path), barrier, results, extra)) for extra in extra_args]
    assert len(children) == processes
    for child in children:
        child.start()
    outcomes = [results.get(timeout=120) for _ in children]
    for child in children:
        child.join(timeout=60)
        assert child.exitcode == 0, child.exitcode
    return outcomes


CRASH_UNITS = UNITS_PER_ONE // 1000  # 0.001 per charge
CRASH_CAP = UNITS_PER_ONE // 20  # 0.05: 50 charges, so budgets fill up and new ones open while killed


def charge_until_killed(path: str) -> None:
    """Charge 0.001 again and again, printing each returned charge's id, until killed.

    Charges budgets ``crash-0``, ``crash-1``, ... in turn, opening the next when one is used up, so
    the kills land in registrations and refused charges as well as in charges.
    """
    ledger = open_ledger(path)
    print("ready", flush=True)
    for k in range(10**6):
        name = f"crash-{k}"
        ledger.open_budget(
            name=name, user="alice", fingerprint=f"fp-{name}", mode="pure", epsilon_total=0.05,
            delta_total=0.0, cap_units=CRASH_CAP,
        )
        while True:
            try:
                charge = ledger.charge(
                    name=name, user="alice", units=CRASH_UNITS, epsilon=0.001, delta=0.0, rho=None,
                    query=f"count #{k}", mechanism="laplace", tier="default", purpose="test",
                )
            except BudgetExceededError:
                break
            # The charge returned: from here on its release may be shown, so it must be on record.
            print(charge.id, flush=True)


def main(argv: list[str]) -> None:
    command, path = argv[0], argv[1]
    if command == "charge-until-killed":
        charge_until_killed(path)
        return
    ledger = open_ledger(path)
    record = open_budget(ledger)
    print(json.dumps({"opened": dataclasses.asdict(record)}), flush=True)
    if command == "charge":
        for _ in range(int(argv[2])):
            charge_tenth(ledger)
    elif command == "charge-then-die":
        charge = charge_tenth(ledger)
        print(json.dumps({"charge_id": charge.id}), flush=True)
        # No close, no cleanup: the charge must already be on disk when charge() returns.
        os.kill(os.getpid(), signal.SIGKILL)
    else:
        raise SystemExit(f"unknown command {command!r}")
    record = ledger.budget(name="visits", user="alice")
    print(json.dumps({"after": dataclasses.asdict(record)}))
    ledger.close()


if __name__ == "__main__":
    main(sys.argv[1:])
