"""The budget survives restarts, and processes racing on one budget never exceed it (public API)."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys
import textwrap

import pytest

import jupyter_dpmagic as dp

WORKER = textwrap.dedent("""
    import json, sys
    import numpy as np, pandas as pd
    import jupyter_dpmagic as dp
    rng = np.random.default_rng(11)  # the data only
    df = pd.DataFrame({"age": rng.uniform(18, 90, 300)})
    pf = dp.protect(df, name="registry", epsilon=1.0, bounds={"age": (0, 110)})
    spent_before = dp.budget("registry").epsilon_spent
    with dp.spending(epsilon=float(sys.argv[1])):
        pf.age.mean()
    print(json.dumps({"before": spent_before, "after": dp.budget("registry").epsilon_spent}))
""")


def _run(code, *args, env):
    out = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_budget_survives_a_restart(ledger_location, monkeypatch):
    monkeypatch.setenv("DPMAGIC_LEDGER", ledger_location)  # a SQLite file, then a PostgreSQL database
    env = dict(os.environ)
    first = _run(WORKER, "0.3", env=env)
    second = _run(WORKER, "0.2", env=env)  # a new process: same data, same name, same user
    assert first == {"before": 0.0, "after": pytest.approx(0.3)}
    assert second == {"before": pytest.approx(0.3), "after": pytest.approx(0.5)}
    assert dp.budget("registry").releases == 2
    assert [c.epsilon for c in dp.history("registry").charges] == pytest.approx([0.3, 0.2])


def test_another_user_has_their_own_budget(ledger_path):
    env = dict(os.environ, DPMAGIC_LEDGER=str(ledger_path))
    _run(WORKER, "0.4", env=env)
    other = _run(WORKER, "0.1", env=dict(env, JUPYTERHUB_USER="someone-else"))
    assert other["before"] == 0.0


def _racer(ledger, barrier, results):
    os.environ["DPMAGIC_LEDGER"] = ledger
    import numpy as np
    import pandas as pd

    import jupyter_dpmagic as dpm

    df = pd.DataFrame({"age": np.linspace(18, 90, 200)})
    pf = dpm.protect(df, name="race", epsilon=1.0, bounds={"age": (0, 110)})
    barrier.wait()
    won = 0
    for _ in range(6):
        try:
            with dpm.spending(epsilon=0.1):
                pf.age.mean()
            won += 1
        except dpm.BudgetExceededError:
            pass
    results.put(won)


@pytest.mark.parametrize("round_", range(2))
def test_racing_processes_never_exceed_the_budget(tmp_path, round_):
    _race(str(tmp_path / "race.sqlite"))


def test_racing_processes_never_exceed_a_postgres_budget(postgres_cluster):
    _race(postgres_cluster.new_database())


def _race(ledger):
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(8), ctx.Queue()
    procs = [ctx.Process(target=_racer, args=(ledger, barrier, results)) for _ in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert sum(results.get(timeout=5) for _ in procs) == 10  # 8 x 6 attempts of 0.1 against 1.0
    os.environ["DPMAGIC_LEDGER"] = ledger
    try:
        assert dp.budget("race").epsilon_spent == pytest.approx(1.0)
        assert dp.budget("race").epsilon_remaining == pytest.approx(0.0)
    finally:
        del os.environ["DPMAGIC_LEDGER"]
