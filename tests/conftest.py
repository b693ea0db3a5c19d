"""Shared fixtures: every test gets its own real SQLite ledger file."""

from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

import _postgres  # noqa: E402

_names = itertools.count()


@pytest.fixture(autouse=True)
def _never_the_users_ledger(tmp_path_factory, monkeypatch):
    """No test may write into the real ledger in the Jupyter data directory."""
    monkeypatch.setenv("DPMAGIC_LEDGER", str(tmp_path_factory.mktemp("ledger") / "default.sqlite"))


@pytest.fixture
def ledger_path(tmp_path, monkeypatch):
    path = tmp_path / "ledger.sqlite"
    monkeypatch.setenv("DPMAGIC_LEDGER", str(path))
    return path


@pytest.fixture
def dataset_name(request):
    return f"{request.node.name[:40]}_{next(_names)}"


@pytest.fixture
def hospital():
    """A small hospital table: 400 patients, one row each; some BMI values missing."""
    rng = np.random.default_rng(7)  # the data only; noise never takes a seed
    n = 400
    frame = pd.DataFrame({
        "patient_id": np.arange(n),
        "age": rng.integers(18, 95, n).astype(float),
        "sex": rng.choice(["F", "M"], n),
        "ward": rng.choice(["cardio", "onco", "ortho"], n),
        "bmi": rng.normal(26, 4, n),
        "stay_days": rng.integers(1, 30, n),
        "diagnosis": rng.choice(["asthma", "copd", "diabetes"], n),
    })
    frame.loc[frame.index % 9 == 0, "bmi"] = np.nan
    return frame


@pytest.fixture
def protect_hospital(ledger_path, dataset_name, hospital):
    import jupyter_dpmagic as dp

    def make(**overrides):
        options = dict(name=dataset_name, epsilon=50.0,
                       bounds={"age": (0, 110), "bmi": (10, 60), "stay_days": (0, 60)},
                       categories={"sex": ["F", "M"], "ward": ["cardio", "onco", "ortho", "icu"],
                                   "diagnosis": ["asthma", "copd", "diabetes"]})
        options.update(overrides)
        return dp.protect(hospital, **options)

    return make


@pytest.fixture(scope="session")
def postgres_cluster():
    """A throwaway PostgreSQL server on a unix socket, started once, stopped at the end of the run.

    Skipped when the server binaries or psycopg are missing, unless $DPMAGIC_REQUIRE_POSTGRES is set.
    """
    reason = _postgres.unavailable()
    if reason is not None:
        if os.environ.get(_postgres.REQUIRE_ENV):
            pytest.fail(f"{_postgres.REQUIRE_ENV} is set, but {reason}")
        pytest.skip(reason)
    cluster = _postgres.start_cluster()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_location(request, tmp_path):
    """Where a fresh, empty ledger lives: a SQLite file, or a new database on the test PostgreSQL server."""
    if request.param == "sqlite":
        return str(tmp_path / "ledger.db")
    return request.getfixturevalue("postgres_cluster").new_database()
