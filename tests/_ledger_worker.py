"""Code that ledger tests run in other processes.

Run as a script for the restart tests (one command per process, JSON lines on stdout); imported by
``multiprocessing`` children for the race tests.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sqlite3
import sys
import time
import types
from pathlib import Path

if __name__ == "__main__":
    # As a script, load only the ledger and the errors module, not the package's __init__ with
    # pandas and scipy behind it: each process then starts in milliseconds.
    _package = types.ModuleType("jupyter_dpmagic")
    _package.__path__ = [str(Path(__file__).resolve().parents[1] / "jupyter_dpmagic")]
    sys.modules.setdefault("jupyter_dpmagic", _package)

from jupyter_dpmagic.errors import BudgetExceededError, PolicyError  # noqa: E402
from jupyter_dpmagic.ledger import UNITS_PER_ONE, SQLiteLedger  # noqa: E402

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
    ledger = SQLiteLedger(path)
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


def race_unlocked_charges(path: str, barrier, results, attempts: int) -> None:
    """Like :func:`race_charges`, but checking the budget in Python between a read and a write.

    This is the pattern the ledger must not use: nothing stops another process from charging
    between the read and the write.
    """
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    barrier.wait(timeout=60)
    succeeded = 0
    for _ in range(attempts):
        (spent,) = conn.execute("SELECT COALESCE(SUM(units), 0) FROM charges").fetchone()
        if spent + TENTH <= UNITS_PER_ONE:
            time.sleep(0.005)
            conn.execute(
                "INSERT INTO charges (time, name, user, query, mechanism, epsilon, delta, rho, units, tier,"
                " purpose) VALUES ('t', 'visits', 'alice', 'q', 'm', 0.1, 0, NULL, ?, 'default', 'test')",
                (TENTH,),
            )
            succeeded += 1
    conn.close()
    results.put(succeeded)


def race_registration(path: str, barrier, results, fingerprint: str) -> None:
    """Register 'visits' with this process's own data; report whether this process created it."""
    barrier.wait(timeout=60)
    try:
        # After the barrier: the file, its WAL mode and its schema are set up during the race too.
        with SQLiteLedger(path) as ledger:
            record = open_budget(ledger, fingerprint=fingerprint)
        results.put(("created" if record.fingerprint == fingerprint else "other", fingerprint))
    except PolicyError:
        results.put(("refused", fingerprint))
    except Exception as error:  # reported, so that the test fails at once instead of timing out
        results.put((f"error: {error!r}", fingerprint))


def main(argv: list[str]) -> None:
    command, path = argv[0], argv[1]
    ledger = SQLiteLedger(path)
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
