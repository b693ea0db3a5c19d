"""Shared fixtures: every test gets its own real SQLite ledger file."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

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
