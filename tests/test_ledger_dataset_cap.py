"""The dataset-wide cap: all users' budgets of one dataset together, on SQLite and on PostgreSQL."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from jupyter_dpmagic.accountant import Accountant, Cost, DatasetBudget, units_ceil
from jupyter_dpmagic.errors import BudgetExceededError, PolicyError
from jupyter_dpmagic.ledger import DELTA_UNITS_PER_ONE, UNITS_PER_ONE, DatasetCap, open_ledger

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:  # so that spawned children can import the worker module too
    sys.path.insert(0, str(TESTS))

import _ledger_worker as worker  # noqa: E402
from _postgres import Raw, integrity_error, is_postgres  # noqa: E402

TENTH = UNITS_PER_ONE // 10
DELTA = 1e-6


@pytest.fixture
def ledger(ledger_location):
    with open_ledger(ledger_location) as opened:
        yield opened


def _open(ledger, user, *, name="visits", mode="pure", epsilon=10.0, cap_units=10 * UNITS_PER_ONE,
          delta_cap_units=0):
    return ledger.open_budget(
        name=name, user=user, fingerprint=f"fp-{name}", mode=mode, epsilon_total=epsilon,
        delta_total=0.0 if mode == "pure" else DELTA, cap_units=cap_units, delta_cap_units=delta_cap_units,
    )


def _cap(ledger, *, name="visits", mode="pure", epsilon=1.0, cap_units=UNITS_PER_ONE, delta_cap_units=0):
    return ledger.set_dataset_cap(
        name=name, mode=mode, epsilon_total=epsilon, delta_total=0.0 if mode == "pure" else DELTA,
        cap_units=cap_units, delta_cap_units=delta_cap_units,
    )


def _charge(ledger, user, units=TENTH, *, name="visits", delta_units=0, rho=None):
    return ledger.charge(
        name=name, user=user, units=units, epsilon=0.1, delta=0.0, rho=rho, query="count", mechanism="laplace",
        tier="default", purpose="test", delta_units=delta_units,
    )


def _rows(location):
    """Everything a refused charge must leave as it was, read outside the ledger's code."""
    with Raw(location) as raw:
        return (
            raw.execute("SELECT * FROM budgets ORDER BY name, user").fetchall(),
            raw.execute("SELECT * FROM charges ORDER BY id").fetchall(),
            raw.execute("SELECT * FROM charge_tiers ORDER BY charge_id, tier").fetchall(),
            raw.execute("SELECT * FROM dataset_caps ORDER BY name").fetchall(),
        )


def _refused(ledger, location, user, units=TENTH, **kwargs) -> BudgetExceededError:
    before = _rows(location)
    with pytest.raises(BudgetExceededError) as caught:
        _charge(ledger, user, units, **kwargs)
    assert _rows(location) == before
    assert caught.value.limit == "dataset"
    return caught.value


# -- the cap ---------------------------------------------------------------------------------------


def test_users_within_their_own_budgets_are_refused_together_past_the_cap(ledger, ledger_location):
    for user in ("alice", "bob", "carol"):
        _open(ledger, user)
    _open(ledger, "alice", name="other")
    _charge(ledger, "alice")  # before the cap: counts against it once it is there
    cap = _cap(ledger)
    assert isinstance(cap, DatasetCap)
    assert (cap.mode, cap.cap_units, cap.spent_units, cap.users, cap.releases) == ("pure", UNITS_PER_ONE, TENTH, 3, 1)
    for user in ["alice"] * 3 + ["bob"] * 4 + ["carol"]:
        _charge(ledger, user)
    # 0.9 spent by all together, 0.1 left: 0.15 is refused, with what it needed and what is left
    error = _refused(ledger, ledger_location, "carol", TENTH + TENTH // 2)
    assert (error.needed_units, error.remaining_units) == (TENTH + TENTH // 2, TENTH)
    assert (error.tier, error.purpose) == (None, None)
    message = str(error)
    assert message.startswith("this release needs ε=0.15, more than is left of the dataset-wide budget of 'visits'")
    assert "about ε=0.1 for all its analysts together" in message
    assert "nothing was charged. Ask the data steward for a larger budget." in message
    _charge(ledger, "carol")
    for user in ("alice", "bob", "carol"):
        error = _refused(ledger, ledger_location, user)
        assert (error.needed_units, error.remaining_units) == (TENTH, 0)
        # each user's own budget has plenty left
        assert ledger.budget(name="visits", user=user).spent_units < 5 * TENTH
    spent = {user: ledger.budget(name="visits", user=user).spent_units for user in ("alice", "bob", "carol")}
    assert spent == {"alice": 4 * TENTH, "bob": 4 * TENTH, "carol": 2 * TENTH}
    cap = ledger.dataset_cap(name="visits")
    assert (cap.spent_units, cap.delta_spent_units, cap.users, cap.releases) == (UNITS_PER_ONE, 0, 3, 10)
    # another dataset of the same user is not capped by it, and each chain still verifies
    _charge(ledger, "alice", 5 * UNITS_PER_ONE, name="other")
    assert ledger.dataset_cap(name="other") is None
    for user in ("alice", "bob", "carol"):
        assert ledger.verify(name="visits", user=user).ok


def test_a_budget_opened_after_the_cap_shares_it(ledger, ledger_location):
    _open(ledger, "alice")
    _cap(ledger, cap_units=3 * TENTH)
    _charge(ledger, "alice", 2 * TENTH)
    _open(ledger, "bob")
    _charge(ledger, "bob")
    error = _refused(ledger, ledger_location, "bob")
    assert (error.needed_units, error.remaining_units) == (TENTH, 0)
    cap = ledger.dataset_cap(name="visits")
    assert (cap.spent_units, cap.users, cap.releases) == (3 * TENTH, 2, 2)


def test_zcdp_cap_pools_rho_and_the_selection_delta(ledger, ledger_location):
    delta_unit = DELTA_UNITS_PER_ONE // 10**9  # a delta of 1e-9
    for user in ("alice", "bob"):
        _open(ledger, user, mode="zcdp", delta_cap_units=100 * delta_unit)
    cap = _cap(ledger, mode="zcdp", epsilon=2.0, cap_units=5 * TENTH, delta_cap_units=150 * delta_unit)
    assert (cap.mode, cap.delta_total, cap.delta_cap_units) == ("zcdp", DELTA, 150 * delta_unit)
    assert cap.conversion_delta == DELTA - 150 * delta_unit / DELTA_UNITS_PER_ONE
    _charge(ledger, "alice", TENTH, delta_units=100 * delta_unit, rho=0.1)
    # bob's own reserve holds 100, but only 50 is left of the dataset's
    error = _refused(ledger, ledger_location, "bob", TENTH, delta_units=100 * delta_unit, rho=0.1)
    assert (error.needed_units, error.remaining_units) == (100 * delta_unit, 50 * delta_unit)
    assert "δ=1e-07" in str(error) and "dataset-wide budget of 'visits'" in str(error)
    assert "δ=5e-08 for all its analysts together" in str(error)
    _charge(ledger, "bob", TENTH, delta_units=50 * delta_unit, rho=0.1)
    error = _refused(ledger, ledger_location, "bob", TENTH, delta_units=1, rho=0.1)  # bob has 50 left
    assert (error.needed_units, error.remaining_units) == (1, 0)
    # rho is pooled too: 0.2 of 0.5 spent; in epsilon, the share of 2.0 that rho stands for
    _charge(ledger, "bob", 2 * TENTH, rho=0.2)
    error = _refused(ledger, ledger_location, "alice", 2 * TENTH, rho=0.2)
    assert (error.needed_units, error.remaining_units) == (2 * TENTH, TENTH)
    assert "needs ε=0.8, " in str(error) and "about ε=0.4 for all" in str(error)
    _charge(ledger, "alice", TENTH, rho=0.1)
    cap = ledger.dataset_cap(name="visits")
    assert (cap.spent_units, cap.delta_spent_units, cap.users, cap.releases) == (5 * TENTH, 150 * delta_unit, 2, 4)
    for user in ("alice", "bob"):
        assert ledger.verify(name="visits", user=user).ok


# -- registering it --------------------------------------------------------------------------------


def test_set_dataset_cap_is_idempotent_and_never_changes(ledger, ledger_location):
    assert ledger.dataset_cap(name="visits") is None
    _open(ledger, "alice")
    first = _cap(ledger)
    _charge(ledger, "alice")
    again = _cap(ledger)
    assert again == ledger.dataset_cap(name="visits")
    assert (again.created, again.cap_units, again.spent_units) == (first.created, first.cap_units, TENTH)
    before = _rows(ledger_location)
    for changes in ({"epsilon": 2.0}, {"cap_units": 2 * UNITS_PER_ONE}, {"mode": "zcdp"}):
        with pytest.raises(PolicyError) as caught:
            _cap(ledger, **changes)
        message = str(caught.value)
        assert "dataset-wide budget of 'visits' is fixed once registered" in message
        assert "register the data under a new name to start a new budget" in message
    assert _rows(ledger_location) == before
    assert ledger.dataset_cap(name="visits") == again


@pytest.mark.parametrize(
    "changes",
    [
        {"mode": "approximate"},
        {"epsilon_total": 0.0},
        {"epsilon_total": float("nan")},
        {"delta_total": 1e-6},  # a pure cap has delta 0
        {"cap_units": 0},
        {"cap_units": 1.5},
        {"delta_cap_units": 1},  # a pure cap has no delta reserve
        {"name": ""},
    ],
)
def test_set_dataset_cap_rejects_invalid_values(ledger, ledger_location, changes):
    values = dict(name="visits", mode="pure", epsilon_total=1.0, delta_total=0.0, cap_units=UNITS_PER_ONE,
                  delta_cap_units=0)
    with pytest.raises(PolicyError):
        ledger.set_dataset_cap(**{**values, **changes})
    assert _rows(ledger_location)[3] == []


def test_modes_of_the_cap_and_the_budgets_must_agree(ledger, ledger_location):
    _cap(ledger, mode="zcdp", epsilon=1.0, cap_units=TENTH)
    with pytest.raises(PolicyError, match="dataset-wide budget of 'visits' is zCDP .* this one is pure epsilon"):
        _open(ledger, "alice")
    assert _rows(ledger_location)[0] == []
    _open(ledger, "alice", mode="zcdp")  # the cap's mode is fine
    _open(ledger, "bob", name="clinic")
    with pytest.raises(PolicyError, match="1 budget\\(s\\) of 'clinic' are pure epsilon .* not zCDP"):
        _cap(ledger, name="clinic", mode="zcdp", cap_units=TENTH)
    assert ledger.dataset_cap(name="clinic") is None
    assert _cap(ledger, name="clinic").mode == "pure"


def test_dataset_caps_are_append_only(ledger, ledger_location):
    _cap(ledger)
    refused = [
        "UPDATE dataset_caps SET cap_units = 10 * cap_units WHERE name = 'visits'",
        "UPDATE dataset_caps SET created = 'now' WHERE name = 'visits'",
        "DELETE FROM dataset_caps WHERE name = 'visits'",
    ]
    if is_postgres(ledger_location):
        refused.append("TRUNCATE dataset_caps")
    with Raw(ledger_location) as raw:
        for statement in refused:
            with pytest.raises(integrity_error(ledger_location), match="append-only: a dataset-wide budget"):
                raw.execute(statement)
    assert ledger.dataset_cap(name="visits").cap_units == UNITS_PER_ONE


def test_a_ledger_without_the_table_gets_it_when_opened(ledger_location):
    with open_ledger(ledger_location) as ledger:
        _open(ledger, "alice")
        _charge(ledger, "alice")
    with Raw(ledger_location) as raw:  # as a ledger written before dataset caps existed
        raw.execute("DROP TABLE dataset_caps")
    with open_ledger(ledger_location) as ledger:
        cap = _cap(ledger)
        assert (cap.spent_units, cap.users, cap.releases) == (TENTH, 1, 1)
    with Raw(ledger_location) as raw:
        with pytest.raises(integrity_error(ledger_location), match="append-only"):
            raw.execute("DELETE FROM dataset_caps")


# -- through the accountant ------------------------------------------------------------------------


def test_open_dataset_computes_the_cap_as_open_does(ledger):
    accountant = Accountant(ledger)
    for epsilon, delta in ((1.0, 0.0), (1.0, DELTA)):
        name = f"data-{delta}"
        budget = accountant.open(name=name, user="alice", fingerprint=f"fp-{name}", epsilon=epsilon, delta=delta)
        cap = accountant.open_dataset(name=name, epsilon=epsilon, delta=delta)
        assert (cap.mode, cap.epsilon_total, cap.delta_total, cap.cap_units, cap.delta_cap_units) == (
            budget.mode, budget.epsilon_total, budget.delta_total, budget.cap_units, budget.delta_cap_units)
        assert accountant.open_dataset(name=name, epsilon=epsilon, delta=delta) == cap
    with pytest.raises(PolicyError, match="fixed once registered"):
        accountant.open_dataset(name="data-0.0", epsilon=2.0, delta=0.0)
    with pytest.raises(PolicyError, match="too small"):
        accountant.open_dataset(name="tiny", epsilon=1e-13, delta=0.0)
    assert ledger.dataset_cap(name="tiny") is None


def test_dataset_status_pure(ledger):
    accountant = Accountant(ledger)
    assert accountant.dataset_status("visits") is None
    accountant.open_dataset(name="visits", epsilon=1.0, delta=0.0)
    records = [accountant.open(name="visits", user=u, fingerprint="fp", epsilon=10.0, delta=0.0)
               for u in ("alice", "bob", "carol")]
    status = accountant.dataset_status("visits")
    assert status == DatasetBudget(name="visits", mode="pure", epsilon_total=1.0, delta_total=0.0,
                                   epsilon_spent=0.0, epsilon_remaining=1.0, users=3, releases=0)
    for record in records[:2]:
        accountant.charge(record, Cost(epsilon=0.25), query="count", mechanism="laplace", tier="default",
                          purpose="test")
    status = accountant.dataset_status("visits")
    assert (status.epsilon_spent, status.epsilon_remaining, status.users, status.releases) == (0.5, 0.5, 3, 2)
    assert str(status) == ("Dataset-wide budget 'visits' (pure epsilon): epsilon 0.5 of 1 spent, 0.5 left, "
                           "by 3 analysts in 2 releases")
    html = status._repr_html_()
    assert html.startswith("<table>") and "<td>visits</td>" in html and "<td>0.5</td>" in html
    with pytest.raises(BudgetExceededError) as caught:
        accountant.charge(records[2], Cost(epsilon=0.75), query="count", mechanism="laplace", tier="default",
                          purpose="test")
    assert caught.value.limit == "dataset"
    assert "needs ε=0.75, more than is left of the dataset-wide budget of 'visits' (about ε=0.5" in str(caught.value)
    assert accountant.dataset_status("visits") == status


def test_dataset_status_zcdp(ledger, ledger_location):
    accountant = Accountant(ledger)
    cap = accountant.open_dataset(name="visits", epsilon=1.0, delta=DELTA)
    records = [accountant.open(name="visits", user=u, fingerprint="fp", epsilon=10.0, delta=DELTA)
               for u in ("alice", "bob")]
    rho = 0.01
    for record in records:
        accountant.charge(record, Cost(epsilon=0.2, delta=DELTA, rho=rho), query="mean", mechanism="gaussian",
                          tier="default", purpose="test")
    status = accountant.dataset_status("visits")
    spent = 1.0 * (2 * units_ceil(rho)) / cap.cap_units
    assert (status.mode, status.delta_total, status.users, status.releases) == ("zcdp", DELTA, 2, 2)
    assert status.epsilon_spent == spent and status.epsilon_remaining == 1.0 - spent
    assert str(status).startswith(f"Dataset-wide budget 'visits' (zCDP, delta 1e-06): epsilon {spent:.6g} of 1 spent")
    # what is left of the dataset's rho refuses, in its own words: the accountant does not restate it in rho
    left = cap.cap_units - 2 * units_ceil(rho)
    before = _rows(ledger_location)
    with pytest.raises(BudgetExceededError) as caught:
        accountant.charge(records[0], Cost(epsilon=1.0, delta=DELTA, rho=(left + 1) / UNITS_PER_ONE),
                          query="mean", mechanism="gaussian", tier="default", purpose="test")
    assert _rows(ledger_location) == before
    error = caught.value
    assert (error.limit, error.needed_units, error.remaining_units) == ("dataset", left + 1, left)
    assert "dataset-wide budget of 'visits'" in str(error) and "rho" not in str(error)


# -- racing processes ------------------------------------------------------------------------------


@pytest.mark.parametrize("run", range(3))
def test_racing_users_spend_exactly_the_dataset_cap(ledger_location, run):
    users = [f"analyst-{k}" for k in range(4)]
    with open_ledger(ledger_location) as ledger:
        for user in users:
            _open(ledger, user)  # 10.0 each
        _cap(ledger)  # 1.0 for all of them
    outcomes = worker.run_race(worker.race_dataset_charges, ledger_location,
                               [(user, 25) for user in users for _ in range(2)], processes=8)
    assert all(isinstance(n, int) for _, n in outcomes), outcomes
    assert sum(n for _, n in outcomes) == 10, outcomes
    with open_ledger(ledger_location) as ledger:
        cap = ledger.dataset_cap(name="visits")
        assert (cap.spent_units, cap.releases, cap.users) == (UNITS_PER_ONE, 10, 4)
        total = 0
        for user in users:
            record = ledger.budget(name="visits", user=user)
            history = ledger.history(name="visits", user=user)
            succeeded = sum(n for u, n in outcomes if u == user)
            assert record.spent_units == succeeded * TENTH == sum(c.units for c in history)
            assert record.releases == len(history) == succeeded
            assert ledger.verify(name="visits", user=user).ok
            total += len(history)
        assert total == 10
