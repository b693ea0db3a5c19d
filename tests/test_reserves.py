"""Tests of the budget's reserves: the delta kept for partition selection and the shares kept for a purpose.

Every test runs against a real SQLite file; those of the ledger and the accountant also against a
PostgreSQL database.
"""

from __future__ import annotations

import math
import sqlite3

import pandas as pd
import pytest

import jupyter_dpmagic as dp
from jupyter_dpmagic.accountant import (
    SELECTION_DELTA_SHARE,
    SELECTION_RELEASES,
    Accountant,
    Cost,
    epsilon_delta_to_rho,
    rho_to_delta,
    rho_to_epsilon,
    units_floor,
)
from jupyter_dpmagic.errors import BudgetExceededError, PolicyError
from jupyter_dpmagic.ledger import DELTA_UNITS_PER_ONE, UNITS_PER_ONE, SQLiteLedger, open_ledger

TENTH = UNITS_PER_ONE // 10

# The schema of ledger files written before budgets had a delta reserve.
OLD_SCHEMA = """
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
CREATE INDEX IF NOT EXISTS charges_by_tier ON charges (name, user, tier, units);
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


@pytest.fixture
def ledger(ledger_location):
    with open_ledger(ledger_location) as opened:
        yield opened


@pytest.fixture
def accountant(ledger):
    return Accountant(ledger)


def _open_zcdp(ledger, *, delta_cap_units, name="visits", delta_total=1e-6):
    return ledger.open_budget(
        name=name, user="alice", fingerprint=f"fp-{name}", mode="zcdp", epsilon_total=1.0,
        delta_total=delta_total, cap_units=UNITS_PER_ONE, delta_cap_units=delta_cap_units,
    )


def _open_pure(ledger, name="visits"):
    return ledger.open_budget(
        name=name, user="alice", fingerprint=f"fp-{name}", mode="pure", epsilon_total=1.0,
        delta_total=0.0, cap_units=UNITS_PER_ONE,
    )


def _ledger_charge(ledger, units=TENTH, *, purpose="explore", delta_units=0, purpose_caps=None, name="visits"):
    return ledger.charge(
        name=name, user="alice", units=units, epsilon=0.1, delta=0.0, rho=None, query="count",
        mechanism="laplace", tier="standard", purpose=purpose, delta_units=delta_units,
        purpose_caps=purpose_caps,
    )


def _charge(accountant, record, cost=None, *, purpose="explore", tier="standard", **options):
    return accountant.charge(
        record, cost or Cost(epsilon=0.1), query="count", mechanism="laplace", tier=tier, purpose=purpose,
        **options,
    )


def _footprint(ledger, name="visits"):
    """Everything a charge writes: the budget row, the charges and the tiers they touched."""
    record = ledger.budget(name=name, user="alice")
    (tier_rows,) = ledger._conn.execute("SELECT COUNT(*) FROM charge_tiers").fetchone()
    return (record.spent_units, record.delta_spent_units, record.releases,
            len(ledger.history(name=name, user="alice")), tier_rows)


# -- the delta reserve in the ledger -----------------------------------------------------------


def test_delta_reserve_is_stored_and_read_back(ledger, ledger_location):
    record = _open_zcdp(ledger, delta_cap_units=10**11)
    assert (record.delta_cap_units, record.delta_spent_units) == (10**11, 0)
    assert record.conversion_delta == pytest.approx(9e-7, rel=1e-12)
    with open_ledger(ledger_location) as again:
        stored = again.budget(name="visits", user="alice")
    assert (stored.delta_cap_units, stored.delta_spent_units) == (10**11, 0)
    assert stored.conversion_delta == record.conversion_delta
    pure = _open_pure(ledger, name="pure")
    assert (pure.delta_cap_units, pure.conversion_delta) == (0, 0.0)


def test_delta_reserve_is_charged_and_refused_when_used_up(ledger):
    _open_zcdp(ledger, delta_cap_units=10)
    charges = [_ledger_charge(ledger, 1, delta_units=d) for d in (3, 3, 4)]
    assert [c.delta_units for c in charges] == [3, 3, 4]
    assert [c.delta_units for c in ledger.history(name="visits", user="alice")] == [3, 3, 4]
    assert ledger.budget(name="visits", user="alice").delta_spent_units == 10
    before = _footprint(ledger)
    with pytest.raises(BudgetExceededError) as caught:
        _ledger_charge(ledger, 1, delta_units=1)
    message = str(caught.value)
    assert "delta reserved for partition selection on 'visits' is used up" in message
    assert "categories={'col': [...]}" in message and "dp.protect" in message
    assert (caught.value.limit, caught.value.needed_units, caught.value.remaining_units) == (
        "selection_delta", 1, 0)
    assert _footprint(ledger) == before  # nothing written
    _ledger_charge(ledger, 1)  # releases without partition selection still go through


def test_budget_without_reserve_refuses_any_delta(ledger):
    _open_zcdp(ledger, delta_cap_units=0)
    before = _footprint(ledger)
    with pytest.raises(BudgetExceededError, match="no delta reserved for partition selection") as caught:
        _ledger_charge(ledger, 1, delta_units=1)
    assert "categories=" in str(caught.value)
    assert _footprint(ledger) == before


def test_spent_budget_is_reported_before_the_delta_reserve(ledger):
    _open_zcdp(ledger, delta_cap_units=0)
    with pytest.raises(BudgetExceededError, match="remains of the budget") as caught:
        _ledger_charge(ledger, UNITS_PER_ONE + 1, delta_units=1)
    assert caught.value.limit == "budget"


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"mode": "zcdp", "delta_total": 1e-6, "delta_cap_units": -1}, "non-negative integer"),
        ({"mode": "zcdp", "delta_total": 1e-6, "delta_cap_units": 1.0}, "non-negative integer"),
        ({"mode": "zcdp", "delta_total": 1e-6, "delta_cap_units": True}, "non-negative integer"),
        ({"mode": "zcdp", "delta_total": 1e-6, "delta_cap_units": 10**12 + 1}, "more than delta_total"),
        ({"mode": "pure", "delta_total": 0.0, "delta_cap_units": 1}, "more than delta_total"),
    ],
)
def test_invalid_delta_reserve_is_refused(ledger, options, problem):
    with pytest.raises(PolicyError, match=problem):
        ledger.open_budget(name="visits", user="alice", fingerprint="fp", epsilon_total=1.0,
                           cap_units=UNITS_PER_ONE, **options)
    assert ledger.budgets(user="alice") == []


def test_whole_delta_may_be_reserved(ledger):
    record = _open_zcdp(ledger, delta_cap_units=10**12)
    assert record.conversion_delta == 0.0


@pytest.mark.parametrize("bad", [-1, 1.0, True, DELTA_UNITS_PER_ONE])
def test_invalid_delta_units_are_refused(ledger, bad):
    _open_zcdp(ledger, delta_cap_units=10**11)
    before = _footprint(ledger)
    with pytest.raises(PolicyError, match="delta_units"):
        _ledger_charge(ledger, 1, delta_units=bad)
    assert _footprint(ledger) == before


def test_schema_refuses_spending_past_the_delta_reserve(ledger, ledger_location):
    from _postgres import integrity_error

    _open_zcdp(ledger, delta_cap_units=5)
    with pytest.raises(integrity_error(ledger_location)):
        ledger._conn.execute("UPDATE budgets SET delta_spent_units = 6")


# -- ledger files written before the reserves --------------------------------------------------


def _old_ledger(path, *, mode="zcdp", delta=1e-6, cap_units=24_355_970_335):
    """A ledger file as written before budgets had a delta reserve, with one budget and one charge."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(OLD_SCHEMA)
    conn.execute(
        "INSERT INTO budgets (name, user, fingerprint, mode, epsilon_total, delta_total, cap_units, spent_units,"
        " releases, created) VALUES ('visits', 'alice', 'fp-visits', ?, 1.0, ?, ?, 5000000000, 1, 't0')",
        (mode, delta, cap_units),
    )
    conn.execute(
        "INSERT INTO charges (time, name, user, query, mechanism, epsilon, delta, rho, units, tier, purpose)"
        " VALUES ('t1', 'visits', 'alice', 'count', 'laplace', 0.1, 0.0, 0.005, 5000000000, 'standard',"
        " 'explore')"
    )
    conn.execute(
        "INSERT INTO charge_tiers (charge_id, name, user, tier, units) VALUES (1, 'visits', 'alice',"
        " 'standard', 5000000000)"
    )
    conn.close()


def _columns(path, table):
    conn = sqlite3.connect(path)
    try:
        return [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]
    finally:
        conn.close()


def test_old_ledger_file_is_upgraded_and_keeps_its_budgets(tmp_path):
    path = tmp_path / "old.sqlite"
    _old_ledger(path)
    assert "delta_cap_units" not in _columns(path, "budgets")
    with SQLiteLedger(path) as ledger:
        record = ledger.budget(name="visits", user="alice")
        # the stored cap is kept; no reserve, so no partition selection, and rho converts at delta_total
        assert (record.cap_units, record.spent_units, record.releases) == (24_355_970_335, 5 * 10**9, 1)
        assert (record.delta_cap_units, record.delta_spent_units) == (0, 0)
        assert record.conversion_delta == record.delta_total == 1e-6
        (old,) = ledger.history(name="visits", user="alice")
        assert (old.units, old.delta_units, old.purpose) == (5 * 10**9, 0, "explore")
        assert ledger.purpose_spent_units(name="visits", user="alice") == {"explore": 5 * 10**9}
        charge = _ledger_charge(ledger, 10**9, purpose="publish")
        assert charge.delta_units == 0
        with pytest.raises(BudgetExceededError, match="no delta reserved for partition selection"):
            _ledger_charge(ledger, 10**9, delta_units=1)
        assert ledger.budget(name="visits", user="alice").spent_units == 6 * 10**9
        indexes = {r[0] for r in ledger._conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert "charges_by_purpose" in indexes
    for table, column in (("budgets", "delta_cap_units"), ("budgets", "delta_spent_units"),
                          ("charges", "delta_units")):
        assert column in _columns(path, table)
    with SQLiteLedger(path) as again:  # opening an upgraded file changes nothing
        assert again.budget(name="visits", user="alice").spent_units == 6 * 10**9
        assert len(again.history(name="visits", user="alice")) == 2


def test_old_budget_through_the_accountant(tmp_path):
    path = tmp_path / "old.sqlite"
    _old_ledger(path, cap_units=units_floor(epsilon_delta_to_rho(1.0, 1e-6)))
    with SQLiteLedger(path) as ledger:
        accountant = Accountant(ledger)
        record = accountant.open(name="visits", user="alice", fingerprint="fp-visits", epsilon=1.0, delta=1e-6)
        assert record.cap_units == units_floor(epsilon_delta_to_rho(1.0, 1e-6))  # not recomputed
        assert accountant.selection_delta(record) == 0.0
        assert accountant.epsilon_of_units(record, 10**10) == pytest.approx(rho_to_epsilon(0.01, 1e-6))
        status = accountant.status(name="visits", user="alice")
        assert (status.selection_delta_total, status.selection_delta_spent) == (0.0, 0.0)
        assert "partition selection" not in str(status)
        with pytest.raises(BudgetExceededError, match="no delta reserved"):
            _charge(accountant, record, Cost(epsilon=0.01), selection_delta=1e-9)


def test_old_pure_ledger_file_is_upgraded(tmp_path):
    path = tmp_path / "old.sqlite"
    _old_ledger(path, mode="pure", delta=0.0, cap_units=UNITS_PER_ONE)
    with SQLiteLedger(path) as ledger:
        assert ledger.budget(name="visits", user="alice").delta_cap_units == 0
        _ledger_charge(ledger)
        assert ledger.budget(name="visits", user="alice").spent_units == 5 * 10**9 + TENTH


# -- the delta reserve in the accountant -------------------------------------------------------


def test_zcdp_budget_splits_its_delta(accountant):
    record = accountant.open(name="visits", user="alice", fingerprint="fp", epsilon=1.0, delta=1e-6)
    assert record.delta_cap_units == math.floor(1e-6 * SELECTION_DELTA_SHARE * DELTA_UNITS_PER_ONE) == 10**11
    assert record.cap_units == units_floor(epsilon_delta_to_rho(1.0, 1e-6 * (1 - SELECTION_DELTA_SHARE)))
    # the conversion and the reserve make up the budget's delta
    assert record.conversion_delta + record.delta_cap_units / DELTA_UNITS_PER_ONE == pytest.approx(1e-6, rel=1e-15)
    assert rho_to_epsilon(record.cap_units / UNITS_PER_ONE, record.conversion_delta) <= 1.0
    pure = accountant.open(name="pure", user="alice", fingerprint="fp-pure", epsilon=1.0, delta=0.0)
    assert (pure.delta_cap_units, pure.cap_units) == (0, UNITS_PER_ONE)


@pytest.mark.parametrize("delta", [1e-6, 3.7e-7, 1e-5 / 3])
def test_exactly_selection_releases_fit_the_reserve(accountant, delta):
    record = accountant.open(name="visits", user="alice", fingerprint="fp", epsilon=1000.0, delta=delta)
    per_release = accountant.selection_delta(record)
    units = record.delta_cap_units // SELECTION_RELEASES
    assert per_release == units / DELTA_UNITS_PER_ONE and units > 0
    for _ in range(SELECTION_RELEASES):
        charge = _charge(accountant, record, Cost(epsilon=0.001), selection_delta=per_release)
        assert charge.delta_units == units
    before = _footprint(accountant.ledger)
    with pytest.raises(BudgetExceededError, match="partition selection on 'visits' is used up"):
        _charge(accountant, record, Cost(epsilon=0.001), selection_delta=per_release)
    assert _footprint(accountant.ledger) == before
    status = accountant.status(name="visits", user="alice")
    assert status.selection_delta_spent == SELECTION_RELEASES * units / DELTA_UNITS_PER_ONE
    assert status.selection_delta_spent <= status.selection_delta_total <= delta * SELECTION_DELTA_SHARE
    _charge(accountant, record, Cost(epsilon=0.001))  # rho is still there for other releases


def test_selection_delta_is_rounded_up_to_whole_units(accountant):
    record = accountant.open(name="visits", user="alice", fingerprint="fp", epsilon=1.0, delta=1e-6)
    assert _charge(accountant, record, Cost(epsilon=0.01), selection_delta=1.5e-18).delta_units == 2
    assert _charge(accountant, record, Cost(epsilon=0.01), selection_delta=1e-18).delta_units == 1
    assert _charge(accountant, record, Cost(epsilon=0.01), selection_delta=0.0).delta_units == 0


def test_selection_delta_is_refused_on_pure_budgets(accountant):
    record = accountant.open(name="visits", user="alice", fingerprint="fp", epsilon=1.0, delta=0.0)
    assert accountant.selection_delta(record) == 0.0
    before = _footprint(accountant.ledger)
    with pytest.raises(PolicyError, match=r"pure epsilon.*categories=\{'col': \[...\]\}"):
        _charge(accountant, record, selection_delta=1e-9)
    assert _footprint(accountant.ledger) == before


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1e-9, 1.0, True, "1e-9", None])
def test_invalid_selection_delta_is_refused(accountant, bad):
    record = accountant.open(name="visits", user="alice", fingerprint="fp", epsilon=1.0, delta=1e-6)
    with pytest.raises(PolicyError, match="selection_delta"):
        _charge(accountant, record, Cost(epsilon=0.01), selection_delta=bad)
    assert _footprint(accountant.ledger) == (0, 0, 0, 0, 0)


def test_conversions_use_the_conversion_delta(accountant):
    record = accountant.open(name="visits", user="alice", fingerprint="fp", epsilon=1.0, delta=1e-6)
    at = record.conversion_delta
    assert at < record.delta_total
    assert accountant.epsilon_of_units(record, 10**10) == rho_to_epsilon(0.01, at)
    assert accountant.epsilon_of_units(record, 10**10) > rho_to_epsilon(0.01, 1e-6)
    assert accountant.cap_units(record, 0.5) == units_floor(epsilon_delta_to_rho(0.5, at))
    _charge(accountant, record, Cost(epsilon=0.1), selection_delta=accountant.selection_delta(record))
    status = accountant.status(name="visits", user="alice")
    assert status.epsilon_spent == rho_to_epsilon(0.005, at)
    selection = accountant.selection_delta(record)
    assert status.delta_spent == pytest.approx(min(at, rho_to_delta(0.005, 1.0)) + selection, rel=1e-12)
    assert (status.selection_delta_total, status.selection_delta_spent) == (1e-7, selection)
    assert status.delta_spent <= status.delta_total
    with pytest.raises(BudgetExceededError) as caught:
        _charge(accountant, record, Cost(epsilon=1.0))
    assert f"at delta {at:.6g}" in str(caught.value)


def test_partition_selection_row_is_shown(accountant):
    record = accountant.open(name="visits", user="alice", fingerprint="fp", epsilon=1.0, delta=1e-6)
    _charge(accountant, record, Cost(epsilon=0.01), selection_delta=accountant.selection_delta(record))
    status = accountant.status(name="visits", user="alice")
    rows = [line.split() for line in str(status).splitlines()]
    assert ["delta", "(partition", "selection)", "1e-09", "1e-07", "9.9e-08"] in rows
    assert ("<tr><td>delta (partition selection)</td><td>1e-09</td><td>1e-07</td><td>9.9e-08</td></tr>"
            in status._repr_html_())
    pure = accountant.open(name="pure", user="alice", fingerprint="fp-pure", epsilon=1.0, delta=0.0)
    _charge(accountant, pure)
    pure_status = accountant.status(name="pure", user="alice")
    assert (pure_status.selection_delta_total, pure_status.selection_delta_spent) == (0.0, 0.0)
    assert "partition selection" not in str(pure_status) + pure_status._repr_html_()


# -- purpose reserves in the ledger ------------------------------------------------------------


def test_other_purposes_cannot_spend_the_reserve(ledger):
    _open_pure(ledger)
    caps = {"publish": 7 * TENTH}  # 30% of the budget is kept for publish
    for _ in range(7):
        _ledger_charge(ledger, purpose="explore", purpose_caps=caps)
    before = _footprint(ledger)
    with pytest.raises(BudgetExceededError) as caught:
        _ledger_charge(ledger, purpose="explore", purpose_caps=caps)
    message = str(caught.value)
    assert "the rest of the budget for 'visits' is reserved for purpose 'publish'" in message
    assert "%%dp --purpose publish" in message and "dp.spending(purpose='publish')" in message
    assert (caught.value.limit, caught.value.purpose, caught.value.remaining_units) == ("purpose", "publish", 0)
    assert _footprint(ledger) == before  # nothing written
    for _ in range(3):
        _ledger_charge(ledger, purpose="publish", purpose_caps=caps)
    with pytest.raises(BudgetExceededError, match="remains of the budget"):
        _ledger_charge(ledger, purpose="publish", purpose_caps=caps)
    assert ledger.purpose_spent_units(name="visits", user="alice") == {"explore": 7 * TENTH, "publish": 3 * TENTH}


def test_reserved_purpose_may_spend_beyond_its_reserve(ledger):
    _open_pure(ledger)
    caps = {"publish": 7 * TENTH}
    for _ in range(9):
        _ledger_charge(ledger, purpose="publish", purpose_caps=caps)
    # publish has used its reserve: the rest is free for everyone
    _ledger_charge(ledger, purpose="explore", purpose_caps=caps)
    with pytest.raises(BudgetExceededError, match="remains of the budget"):
        _ledger_charge(ledger, purpose="explore", purpose_caps=caps)


def test_reserved_purpose_spends_what_is_left_after_the_reserve_came_too_late(ledger):
    _open_pure(ledger)
    for _ in range(8):
        _ledger_charge(ledger, purpose="explore")  # spent before publish had a reserve
    caps = {"publish": 7 * TENTH}
    with pytest.raises(BudgetExceededError, match="reserved for purpose 'publish'"):
        _ledger_charge(ledger, purpose="explore", purpose_caps=caps)
    for _ in range(2):
        _ledger_charge(ledger, purpose="publish", purpose_caps=caps)
    assert ledger.budget(name="visits", user="alice").spent_units == UNITS_PER_ONE


def test_two_reserves_each_hold(ledger):
    _open_pure(ledger)
    caps = {"publish": 7 * TENTH, "audit": 8 * TENTH}
    for _ in range(5):
        _ledger_charge(ledger, purpose="explore", purpose_caps=caps)
    # both reserves together: explore may not spend 0.7 (which the publish reserve alone would allow)
    with pytest.raises(BudgetExceededError, match="reserved for purposes 'audit' and 'publish'") as caught:
        _ledger_charge(ledger, purpose="explore", purpose_caps=caps)
    assert "%%dp --purpose audit" in str(caught.value)
    for _ in range(3):
        _ledger_charge(ledger, purpose="publish", purpose_caps=caps)
    # publish may not eat into audit's reserve
    with pytest.raises(BudgetExceededError, match="reserved for purpose 'audit'"):
        _ledger_charge(ledger, purpose="publish", purpose_caps=caps)
    for _ in range(2):
        _ledger_charge(ledger, purpose="audit", purpose_caps=caps)
    assert ledger.budget(name="visits", user="alice").spent_units == UNITS_PER_ONE


@pytest.mark.parametrize("bad", [-1, 0.5, True, None])
def test_invalid_purpose_caps_are_refused(ledger, bad):
    _open_pure(ledger)
    with pytest.raises(PolicyError, match="purpose caps"):
        _ledger_charge(ledger, purpose_caps={"publish": bad})
    assert _footprint(ledger) == (0, 0, 0, 0, 0)


# -- purpose reserves in the accountant --------------------------------------------------------


def test_explore_is_refused_when_only_the_publish_reserve_is_left(accountant):
    record = accountant.open(name="visits", user="alice", fingerprint="fp", epsilon=1.0, delta=0.0)
    reserves = {"publish": 0.3}
    for _ in range(7):
        _charge(accountant, record, purpose="explore", purpose_reserves=reserves)
    before = _footprint(accountant.ledger)
    with pytest.raises(BudgetExceededError, match=r"reserved for purpose 'publish'.*--purpose publish"):
        _charge(accountant, record, purpose="explore", purpose_reserves=reserves)
    assert _footprint(accountant.ledger) == before
    _charge(accountant, record, purpose="publish", purpose_reserves=reserves)


def test_zcdp_purpose_reserve_message_is_in_epsilon(accountant):
    record = accountant.open(name="visits", user="alice", fingerprint="fp", epsilon=1.0, delta=1e-6)
    reserves = {"publish": 0.5}
    share = Cost(epsilon=0.1, rho=record.cap_units / UNITS_PER_ONE / 10)
    for _ in range(5):
        _charge(accountant, record, share, purpose="explore", purpose_reserves=reserves)
    with pytest.raises(BudgetExceededError) as caught:
        _charge(accountant, record, share, purpose="explore", purpose_reserves=reserves)
    message = str(caught.value)
    assert "reserved for purpose 'publish'" in message and "%%dp --purpose publish" in message
    assert "at most about epsilon=0 fits now" in message
    assert caught.value.purpose == "publish"
    _charge(accountant, record, share, purpose="publish", purpose_reserves=reserves)


def test_purpose_cap_is_computed_exactly(accountant):
    # (1 - 0.3) * 0.7e12 is 4.9e11 exactly: seven charges of 0.07 fit, as the user would expect
    record = accountant.open(name="visits", user="alice", fingerprint="fp", epsilon=0.7, delta=0.0)
    for _ in range(7):
        _charge(accountant, record, Cost(epsilon=0.07), purpose="explore", purpose_reserves={"publish": 0.3})
    with pytest.raises(BudgetExceededError, match="reserved for purpose 'publish'"):
        _charge(accountant, record, Cost(epsilon=0.07), purpose="explore", purpose_reserves={"publish": 0.3})


@pytest.mark.parametrize(
    "reserves",
    [{"publish": 1.0}, {"publish": -0.1}, {"publish": float("nan")}, {"publish": True}, {"publish": "0.3"},
     {"publish": 0.7, "audit": 0.3}],
)
def test_invalid_purpose_reserves_are_refused(accountant, reserves):
    record = accountant.open(name="visits", user="alice", fingerprint="fp", epsilon=1.0, delta=0.0)
    with pytest.raises(PolicyError, match="reserve"):
        _charge(accountant, record, purpose_reserves=reserves)
    with pytest.raises(PolicyError, match="reserve"):
        accountant.status(name="visits", user="alice", purpose_reserves=reserves)
    assert _footprint(accountant.ledger) == (0, 0, 0, 0, 0)


# -- what is left per tier and per purpose -----------------------------------------------------


def test_remaining_per_tier_and_purpose(accountant):
    record = accountant.open(name="visits", user="alice", fingerprint="fp", epsilon=1.0, delta=0.0)
    shares, reserves = {"sensitive": 0.5, "standard": None}, {"publish": 0.3}
    _charge(accountant, record, Cost(epsilon=0.2), tier="sensitive", purpose="explore",
            tier_share=0.5, purpose_reserves=reserves)
    _charge(accountant, record, Cost(epsilon=0.1), tier="standard", purpose="publish",
            purpose_reserves=reserves)
    status = accountant.status(name="visits", user="alice", tier_shares=shares,
                               purpose_reserves={"explore": 0.0, "audit": 0.0, **reserves})
    assert status.epsilon_remaining == pytest.approx(0.7)
    # sensitive: its cap of 0.5 less its 0.2; standard: no cap, all that is left
    assert status.tier_remaining == pytest.approx({"sensitive": 0.3, "standard": 0.7})
    # publish may spend all that is left; the others only what publish's 0.3 leaves: 0.7 - 0.2 (explore)
    assert status.purpose_remaining == pytest.approx({"explore": 0.5, "audit": 0.5, "publish": 0.7})
    assert (status.tier_shares, status.purpose_reserves) == ({"sensitive": 0.5}, {"publish": 0.3})
    rows = [line.split() for line in str(status).splitlines()]
    assert ["tier", "sensitive", "(max", "50%)", "0.2", "0.3"] in rows
    assert ["tier", "standard", "0.1", "0.7"] in rows
    assert ["purpose", "explore", "0.2", "0.5"] in rows
    assert ["purpose", "audit", "0", "0.5"] in rows
    assert ["purpose", "publish", "(30%", "reserved)", "0.1", "0.7"] in rows
    page = status._repr_html_()
    assert "<tr><td>purpose publish (30% reserved)</td><td>0.1</td><td>0.7</td></tr>" in page
    assert "<tr><td>tier sensitive (max 50%)</td><td>0.2</td><td>0.3</td></tr>" in page


def test_remaining_never_goes_below_zero(accountant):
    record = accountant.open(name="visits", user="alice", fingerprint="fp", epsilon=1.0, delta=0.0)
    for _ in range(8):
        _charge(accountant, record, purpose="explore")  # spent before publish had a reserve
    status = accountant.status(name="visits", user="alice", tier_shares={"standard": 0.5},
                               purpose_reserves={"publish": 0.3})
    assert status.tier_remaining == {"standard": 0.0}
    assert status.purpose_remaining == pytest.approx({"explore": 0.0, "publish": 0.2})
    with pytest.raises(BudgetExceededError, match="reserved for purpose 'publish'"):
        _charge(accountant, record, purpose="explore", purpose_reserves={"publish": 0.3})
    _charge(accountant, record, purpose="publish", purpose_reserves={"publish": 0.3})


@pytest.mark.parametrize(("purpose", "left"), [("publish", 0.6), ("audit", 0.6), ("explore", 0.4)])
def test_remaining_with_two_reserves_is_what_can_be_spent(accountant, purpose, left):
    record = accountant.open(name="visits", user="alice", fingerprint="fp", epsilon=1.0, delta=0.0)
    reserves = {"publish": 0.3, "audit": 0.2}
    _charge(accountant, record, purpose="explore", purpose_reserves=reserves)
    _charge(accountant, record, purpose="publish", purpose_reserves=reserves)
    status = accountant.status(name="visits", user="alice", purpose_reserves=reserves)
    # 0.8 left; publish still holds 0.2 of its reserve, audit all of its 0.2
    assert status.purpose_remaining == pytest.approx({"publish": 0.6, "audit": 0.6, "explore": 0.4})
    for _ in range(round(left * 10)):  # the remaining amount can really be spent, and no more
        _charge(accountant, record, purpose=purpose, purpose_reserves=reserves)
    with pytest.raises(BudgetExceededError):
        _charge(accountant, record, purpose=purpose, purpose_reserves=reserves)
    assert accountant.status(name="visits", user="alice",
                             purpose_reserves=reserves).purpose_remaining[purpose] == 0


def test_status_without_policy_numbers_shows_what_was_spent(accountant):
    record = accountant.open(name="visits", user="alice", fingerprint="fp", epsilon=1.0, delta=0.0)
    _charge(accountant, record, Cost(epsilon=0.25), tier="sensitive", purpose="qa")
    status = accountant.status(name="visits", user="alice")
    assert status.tier_remaining == {"sensitive": 0.75} and status.purpose_remaining == {"qa": 0.75}
    assert (status.tier_shares, status.purpose_reserves) == ({}, {})
    empty = accountant.status(name="visits", user="alice", tier_shares={}, purpose_reserves={})
    assert empty.tier_remaining == {"sensitive": 0.75}


def test_zcdp_remaining_is_what_releases_may_still_ask_for(accountant):
    record = accountant.open(name="visits", user="alice", fingerprint="fp", epsilon=2.0, delta=1e-6)
    quarter = Cost(epsilon=0.5, rho=record.cap_units / UNITS_PER_ONE / 4)
    _charge(accountant, record, quarter, tier="sensitive", purpose="explore")
    status = accountant.status(name="visits", user="alice", tier_shares={"sensitive": 0.5},
                               purpose_reserves={"publish": 0.5})
    # epsilons asked add up to the total over all of the rho: 0.5 of 2 asked, the tier's cap is 1
    assert status.epsilon_share_spent == pytest.approx(0.5)
    assert status.tier_asked == pytest.approx({"sensitive": 0.5})
    assert status.tier_remaining == pytest.approx({"sensitive": 0.5})
    assert status.purpose_remaining == pytest.approx({"publish": 1.5, "explore": 0.5})
    assert status.tier_spent["sensitive"] == pytest.approx(status.epsilon_spent)  # the guarantee, as before
    rows = [line.split() for line in str(status).splitlines()]
    assert ["purpose", "explore", f"{status.epsilon_spent:.6g}", "0.5", "0.5"] in rows


# -- through the public API ----------------------------------------------------------------------


def test_budget_of_a_protected_dataset_follows_its_policy(ledger_path, dataset_name):
    frame = pd.DataFrame({"age": [30.0, 40.0, 50.0], "diagnosis": ["a", "b", "a"]})
    policy = dp.Policy(purposes={"publish": {"reserve": 0.3}}, tiers={"sensitive": {"max_share": 0.5}},
                       columns={"age": {"tier": "standard", "bounds": (0, 100)}})
    pf = dp.protect(frame, name=dataset_name, epsilon=1.0, policy=policy)
    with dp.spending(epsilon=0.2, purpose="explore"):
        pf["age"].mean()
    status = dp.budget(dataset_name)
    assert status.purpose_reserves == {"publish": 0.3}
    assert status.purpose_remaining == pytest.approx({"explore": 0.5, "publish": 0.8})
    assert set(status.tier_remaining) == {"public", "standard", "quasi-identifier", "sensitive"}
    assert status.tier_remaining["sensitive"] == pytest.approx(0.5)
    assert status.tier_remaining["standard"] == pytest.approx(0.8)
    assert "purpose publish (30% reserved)" in str(status)
    assert "publish ε=0.5/query (30% of the budget reserved)" in repr(dp.policy(dataset_name))
    with dp.spending(epsilon=0.6, purpose="explore"), pytest.raises(BudgetExceededError,
                                                                    match="reserved for purpose 'publish'"):
        pf["age"].mean()
    with dp.spending(epsilon=0.6, purpose="publish"):
        pf["age"].mean()
