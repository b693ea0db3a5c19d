"""Tests of privacy accounting: exact units, zCDP conversions, budgets, tiers and status."""

from __future__ import annotations

import math
import random
from fractions import Fraction

import pytest
from scipy.stats import norm

from jupyter_dpmagic.accountant import (
    SELECTION_DELTA_SHARE,
    Accountant,
    BudgetStatus,
    Cost,
    check_delta,
    check_epsilon,
    epsilon_delta_to_rho,
    rho_to_delta,
    rho_to_epsilon,
    units_ceil,
    units_floor,
)
from jupyter_dpmagic.errors import BudgetExceededError, PolicyError
from jupyter_dpmagic.ledger import UNITS_PER_ONE, SQLiteLedger

INVALID = [float("nan"), float("inf"), -float("inf"), 0, 0.0, -1, -0.1, True, False, None, "0.1"]


@pytest.fixture
def accountant(tmp_path):
    ledger = SQLiteLedger(tmp_path / "ledger.db")
    yield Accountant(ledger)
    ledger.close()


def _open(accountant, *, epsilon=1.0, delta=0.0, name="visits"):
    return accountant.open(name=name, user="alice", fingerprint=f"fp-{name}", epsilon=epsilon, delta=delta)


def _charge(accountant, record, cost, *, tier="default", purpose="test", tier_share=None):
    return accountant.charge(
        record, cost, query="count", mechanism="laplace", tier=tier, purpose=purpose, tier_share=tier_share
    )


def _charge_until_refused(accountant, record, cost, **kwargs):
    for done in range(10_000):
        try:
            _charge(accountant, record, cost, **kwargs)
        except BudgetExceededError:
            return done
    raise AssertionError("the budget never ran out")


def _spent(accountant, record):
    now = accountant.ledger.budget(name=record.name, user=record.user)
    return now.spent_units, len(accountant.ledger.history(name=record.name, user=record.user))


def _classic(rho, delta):
    return rho + 2 * math.sqrt(rho * math.log(1 / delta))


# -- exact units ------------------------------------------------------------------------------


def test_units_round_charges_up_and_caps_down():
    assert units_ceil(0.1) == units_floor(0.1) == 10**11
    assert units_ceil(1.0) == units_floor(1.0) == UNITS_PER_ONE
    assert units_ceil(1e-13) == 1 and units_floor(1e-13) == 0
    assert units_ceil(1 / 3) == 333_333_333_334 and units_floor(1 / 3) == 333_333_333_333
    assert units_ceil(0.1 + 0.2) == 300_000_000_001  # 0.30000000000000004
    assert units_floor(0.1 + 0.2) == 300_000_000_000
    assert units_ceil(2.5e-12) == 3 and units_floor(2.5e-12) == 2
    assert units_ceil(123456.789) == 123_456_789_000_000_000


def test_units_bracket_the_exact_value():
    rng = random.Random(7)
    for _ in range(2000):
        x = 10 ** rng.uniform(-13, 4)
        exact = Fraction(repr(x)) * UNITS_PER_ONE  # the decimal the float prints as
        low, high = units_floor(x), units_ceil(x)
        assert low <= exact <= high and high - low <= 1
        # The binary value differs by at most half an ulp.
        assert abs(Fraction(x) * UNITS_PER_ONE - exact) <= exact * Fraction(2) ** -53
        assert isinstance(low, int) and isinstance(high, int)


@pytest.mark.parametrize("bad", INVALID)
def test_units_reject_invalid_amounts(bad):
    with pytest.raises(PolicyError):
        units_ceil(bad)
    with pytest.raises(PolicyError):
        units_floor(bad)


def test_ten_tenths_fill_a_budget_of_one(accountant):
    record = _open(accountant, epsilon=1.0)
    assert _charge_until_refused(accountant, record, Cost(epsilon=0.1)) == 10
    assert _spent(accountant, record) == (record.cap_units, 10)


def test_thirds_never_exceed_the_cap(accountant):
    record = _open(accountant, epsilon=1.0)
    done = _charge_until_refused(accountant, record, Cost(epsilon=1 / 3))
    spent, _ = _spent(accountant, record)
    assert done in (2, 3) and spent <= record.cap_units
    assert spent == done * units_ceil(1 / 3)


def test_many_small_charges_never_exceed_the_cap(accountant):
    record = _open(accountant, epsilon=0.7)
    done = _charge_until_refused(accountant, record, Cost(epsilon=0.07))
    spent, _ = _spent(accountant, record)
    assert done == 10 and spent <= record.cap_units == units_floor(0.7)


# -- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", INVALID)
def test_check_epsilon_rejects(bad):
    with pytest.raises(PolicyError, match="epsilon must be a finite number greater than 0"):
        check_epsilon(bad)


def test_check_epsilon_message_and_accepted_values():
    with pytest.raises(PolicyError) as caught:
        check_epsilon(float("nan"))
    expected = "epsilon must be a finite number greater than 0 (got nan); pass e.g. epsilon=0.1"
    assert str(caught.value) == expected
    with pytest.raises(PolicyError, match="share must be"):
        check_epsilon(-1, what="share")
    assert check_epsilon(2) == 2.0 and isinstance(check_epsilon(2), float)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1e-9, 1.0, 1.5, True, None, "1e-6"])
def test_check_delta_rejects(bad):
    with pytest.raises(PolicyError, match="delta must be a finite number with 0 <= delta < 1"):
        check_delta(bad)


def test_check_delta_accepts_zero_and_large_values():
    assert check_delta(0) == 0.0
    assert check_delta(1e-6) == 1e-6
    assert check_delta(0.01) == 0.01  # unusually large but allowed


@pytest.mark.parametrize("field", ["epsilon", "rho"])
@pytest.mark.parametrize("bad", [b for b in INVALID if b is not None])
def test_invalid_cost_is_rejected_and_nothing_written(accountant, field, bad):
    record = _open(accountant, delta=1e-6)
    with pytest.raises(PolicyError):
        _charge(accountant, record, Cost(**{"epsilon": 0.1, "rho": 0.001, field: bad}))
    assert _spent(accountant, record) == (0, 0)


@pytest.mark.parametrize("epsilon, delta", [(float("nan"), 0.0), (0.0, 0.0), (1.0, 1.0), (True, 0.0)])
def test_open_rejects_invalid_totals(accountant, epsilon, delta):
    with pytest.raises(PolicyError):
        _open(accountant, epsilon=epsilon, delta=delta)
    assert accountant.ledger.budgets(user="alice") == []


def test_open_refuses_a_budget_too_small_to_use(accountant):
    with pytest.raises(PolicyError, match="too small"):
        _open(accountant, epsilon=1e-13)


# -- pure budgets -----------------------------------------------------------------------------


def test_pure_budget(accountant):
    record = _open(accountant, epsilon=2.0)
    assert (record.mode, record.cap_units, record.delta_total) == ("pure", 2 * UNITS_PER_ONE, 0.0)
    charge = _charge(accountant, record, Cost(epsilon=0.5))
    assert (charge.units, charge.rho, charge.epsilon) == (units_ceil(0.5), None, 0.5)
    assert accountant.units(record, Cost(epsilon=0.25)) == units_ceil(0.25)
    assert accountant.cap_units(record, 0.3) == units_floor(0.3)
    # Opening again returns the budget as it is.
    assert _open(accountant, epsilon=2.0).spent_units == units_ceil(0.5)


def test_charge_of_exact_units(accountant):
    record = _open(accountant)
    charge = accountant.charge(
        record, Cost(epsilon=0.25), query="q", mechanism="laplace", tier="t", purpose="p", units=123
    )
    assert charge.units == 123 and _spent(accountant, record) == (123, 1)
    with pytest.raises(PolicyError, match="pure epsilon"):
        accountant.charge(
            record, Cost(epsilon=0.1, delta=1e-7, rho=0.01), query="q", mechanism="gauss", tier="t",
            purpose="p", units=5,
        )
    assert _spent(accountant, record) == (123, 1)


def test_pure_budget_refuses_releases_with_delta(accountant):
    record = _open(accountant)
    costs = [
        Cost(epsilon=0.1, delta=1e-7),
        Cost(epsilon=0.1, delta=1e-7, rho=0.001),
        Cost(epsilon=0.1, rho=0.01),
    ]
    for cost in costs:
        with pytest.raises(PolicyError, match="pure epsilon .delta=0.*protect with delta=1e-6"):
            _charge(accountant, record, cost)
    assert _spent(accountant, record) == (0, 0)


def test_exceeded_budget_says_what_remains_and_what_to_do(accountant):
    record = _open(accountant)
    _charge(accountant, record, Cost(epsilon=0.75))
    with pytest.raises(BudgetExceededError) as caught:
        _charge(accountant, record, Cost(epsilon=0.5))
    message = str(caught.value)
    assert "epsilon 0.25 remains" in message and "epsilon=" in message and "%dp budget" in message
    assert _spent(accountant, record) == (units_ceil(0.75), 1)


def test_tier_share_caps_one_tier(accountant):
    record = _open(accountant)
    assert _charge_until_refused(accountant, record, Cost(epsilon=0.1), tier="explore", tier_share=0.5) == 5
    with pytest.raises(BudgetExceededError, match="tier 'explore'"):
        _charge(accountant, record, Cost(epsilon=0.1), tier="explore", tier_share=0.5)
    # Another tier can still spend the rest of the dataset budget, but no more.
    assert _charge_until_refused(accountant, record, Cost(epsilon=0.1), tier="report", tier_share=0.8) == 5
    status = accountant.status(name="visits", user="alice")
    assert status.tier_spent == pytest.approx({"explore": 0.5, "report": 0.5})
    assert status.epsilon_remaining == 0


@pytest.mark.parametrize("share", [-0.5, 1.5, float("nan"), True, "0.5"])
def test_invalid_tier_share_is_rejected(accountant, share):
    record = _open(accountant)
    with pytest.raises(PolicyError, match="tier_share"):
        _charge(accountant, record, Cost(epsilon=0.1), tier_share=share)
    assert _spent(accountant, record) == (0, 0)


def test_tier_share_of_zero_allows_nothing(accountant):
    record = _open(accountant)
    with pytest.raises(BudgetExceededError, match="tier 'closed'"):
        _charge(accountant, record, Cost(epsilon=0.1), tier="closed", tier_share=0)
    _charge(accountant, record, Cost(epsilon=0.1), tier="open", tier_share=1)
    assert _spent(accountant, record) == (units_ceil(0.1), 1)


def test_pure_status_and_rendering(accountant):
    record = _open(accountant)
    _charge(accountant, record, Cost(epsilon=0.25), tier="explore", purpose="qa")
    _charge(accountant, record, Cost(epsilon=0.125), tier="report", purpose="qa")
    status = accountant.status(name="visits", user="alice")
    assert isinstance(status, BudgetStatus)
    assert (status.mode, status.releases, status.rho_total, status.rho_spent) == ("pure", 2, None, None)
    assert (status.epsilon_total, status.epsilon_spent, status.epsilon_remaining) == (1.0, 0.375, 0.625)
    assert (status.delta_total, status.delta_spent) == (0.0, 0.0)
    assert status.tier_spent == {"explore": 0.25, "report": 0.125}
    assert status.purpose_spent == {"qa": 0.375}
    text = str(status)
    assert repr(status) == text
    for piece in ("visits", "alice", "0.375", "0.625", "2 releases"):
        assert piece in text
    # one row per tier and purpose: spent, then what is left of the budget for it
    rows = [line.split() for line in text.splitlines()]
    assert ["tier", "explore", "0.25", "0.625"] in rows
    assert ["tier", "report", "0.125", "0.625"] in rows
    assert ["purpose", "qa", "0.375", "0.625"] in rows
    page = status._repr_html_()
    assert "<table>" in page and "0.375" in page and "0.625" in page
    assert "<tr><td>tier explore</td><td>0.25</td><td>0.625</td></tr>" in page


def test_html_escapes_names(accountant):
    record = accountant.open(name="<b>x</b>", user="a&b", fingerprint="f", epsilon=1.0, delta=0.0)
    _charge(accountant, record, Cost(epsilon=0.1), tier="<i>t</i>")
    page = accountant.status(name="<b>x</b>", user="a&b")._repr_html_()
    assert "<b>" not in page and "<i>" not in page
    assert "&lt;b&gt;x&lt;/b&gt;" in page and "a&amp;b" in page and "&lt;i&gt;t&lt;/i&gt;" in page


def test_status_of_unknown_budget(accountant):
    _open(accountant)
    with pytest.raises(PolicyError, match="Did you mean 'visits'"):
        accountant.status(name="visit", user="alice")


# -- zCDP conversions -------------------------------------------------------------------------


def _gaussian_delta(epsilon, sigma):
    # Exact (epsilon, delta) of the Gaussian mechanism with sensitivity 1 (Balle & Wang 2018).
    return norm.cdf(-epsilon * sigma + 1 / (2 * sigma)) - math.exp(epsilon) * norm.cdf(
        -epsilon * sigma - 1 / (2 * sigma)
    )


def test_hundred_gaussian_queries_sigma(accountant):
    # The headline: 100 Gaussian queries on a budget of (1, 1e-6), the partition-selection reserve
    # taken out of its delta, get noise of about 45 standard deviations (diffprivlib: about 227).
    record = _open(accountant, epsilon=1.0, delta=1e-6)
    rho_total = record.cap_units / UNITS_PER_ONE
    sigma = 1 / math.sqrt(2 * rho_total / 100)
    assert 40 < sigma < 50  # about 45; the classic conversion would need about 53
    classic_rho = (math.sqrt(math.log(1e6) + 1) - math.sqrt(math.log(1e6))) ** 2
    assert 52 < 1 / math.sqrt(2 * classic_rho / 100) < 55


def test_conversions_are_sound_for_the_gaussian_mechanism():
    # A Gaussian mechanism with noise sigma is exactly 1/(2 sigma^2)-zCDP, and its exact privacy
    # curve is known: the conversions must never claim better than it.
    for sigma in (0.5, 1.0, 3.0, 10.0, 100.0):
        rho = 1 / (2 * sigma**2)
        for delta in (1e-9, 1e-6, 1e-3, 0.1):
            assert _gaussian_delta(rho_to_epsilon(rho, delta), sigma) <= delta
        for epsilon in (0.0, 0.1, 1.0, 3.0):
            assert rho_to_delta(rho, epsilon) >= _gaussian_delta(epsilon, sigma)


@pytest.mark.parametrize("delta", [1e-10, 1e-6, 1e-3])
def test_tight_conversion_beats_classic_and_is_monotone(delta):
    rhos = [10**k for k in range(-6, 3)]
    epsilons = [rho_to_epsilon(rho, delta) for rho in rhos]
    assert all(a < b for a, b in zip(epsilons, epsilons[1:]))
    for rho, epsilon in zip(rhos, epsilons):
        assert epsilon <= _classic(rho, delta) * (1 + 1e-9)
    assert rho_to_epsilon(0.01, delta) < 0.9 * _classic(0.01, delta)
    deltas = [rho_to_delta(rho, 1.0) for rho in rhos]
    assert all(a <= b for a, b in zip(deltas, deltas[1:])) and deltas[-1] == 1.0
    assert rho_to_delta(0.01, 0.5) > rho_to_delta(0.01, 1.0) > rho_to_delta(0.01, 2.0)
    assert [rho_to_epsilon(0.1, d) for d in (1e-9, 1e-6, 1e-3)] == sorted(
        (rho_to_epsilon(0.1, d) for d in (1e-9, 1e-6, 1e-3)), reverse=True
    )


@pytest.mark.parametrize("epsilon", [0.01, 0.1, 1.0, 5.0, 50.0])
@pytest.mark.parametrize("delta", [1e-12, 1e-6, 1e-3])
def test_rho_of_a_target_converts_back_within_it(epsilon, delta):
    rho = epsilon_delta_to_rho(epsilon, delta)
    assert rho > 0
    assert rho_to_epsilon(rho, delta) <= epsilon
    assert rho_to_epsilon(rho * 1.001, delta) > epsilon  # and it is not needlessly small
    assert rho >= (math.sqrt(math.log(1 / delta) + epsilon) - math.sqrt(math.log(1 / delta))) ** 2
    assert rho_to_delta(rho, epsilon) <= delta * (1 + 1e-6)


def test_conversion_edge_cases():
    assert rho_to_epsilon(0, 1e-6) == 0 and rho_to_delta(0, 1.0) == 0
    assert rho_to_epsilon(0.1, 0) == math.inf
    assert rho_to_delta(1e6, 0.1) == 1.0
    for bad in (float("nan"), -1.0, float("inf"), True):
        with pytest.raises(PolicyError):
            rho_to_epsilon(bad, 1e-6)
        with pytest.raises(PolicyError):
            rho_to_delta(bad, 1.0)
    with pytest.raises(PolicyError):
        epsilon_delta_to_rho(1.0, 0.0)
    with pytest.raises(PolicyError):
        epsilon_delta_to_rho(0.0, 1e-6)


# -- zCDP budgets -----------------------------------------------------------------------------


def test_zcdp_budget_cap_is_the_converted_rho(accountant):
    record = _open(accountant, epsilon=1.0, delta=1e-6)
    assert record.mode == "zcdp"
    assert record.cap_units == units_floor(epsilon_delta_to_rho(1.0, 1e-6 * (1 - SELECTION_DELTA_SHARE)))
    assert accountant.cap_units(record, 0.5) == units_floor(epsilon_delta_to_rho(0.5, record.conversion_delta))


def test_pure_release_on_zcdp_budget_costs_half_epsilon_squared(accountant):
    record = _open(accountant, epsilon=1.0, delta=1e-6)
    assert accountant.units(record, Cost(epsilon=0.1)) == 5 * 10**9  # 0.1**2 / 2 = 0.005, exactly
    assert accountant.units(record, Cost(epsilon=0.3)) == 45 * 10**9
    charge = _charge(accountant, record, Cost(epsilon=0.1))
    assert charge.units == 5 * 10**9 and charge.rho == pytest.approx(0.005)
    gaussian = Cost(epsilon=0.2, delta=1e-7, rho=0.0012)
    assert accountant.units(record, gaussian) == units_ceil(0.0012)
    with pytest.raises(PolicyError, match="rho"):
        accountant.units(record, Cost(epsilon=0.1, delta=1e-7))  # (eps, delta)-DP gives no zCDP bound


def test_zcdp_status_grows_and_stays_within_the_total(accountant):
    record = _open(accountant, epsilon=1.0, delta=1e-6)
    empty = accountant.status(name="visits", user="alice")
    assert (empty.epsilon_spent, empty.delta_spent, empty.rho_spent) == (0, 0, 0)
    assert empty.epsilon_remaining == 1.0
    assert empty.rho_total == pytest.approx(epsilon_delta_to_rho(1.0, 1e-6 * (1 - SELECTION_DELTA_SHARE)))
    previous = empty
    for _ in range(6):
        _charge(accountant, record, Cost(epsilon=0.3, delta=1e-7, rho=0.003), tier="explore")
        status = accountant.status(name="visits", user="alice")
        assert status.epsilon_spent > previous.epsilon_spent and status.rho_spent > previous.rho_spent
        assert 0 < status.epsilon_spent <= status.epsilon_total
        assert status.epsilon_remaining == pytest.approx(1.0 - status.epsilon_spent)
        assert 0 < status.delta_spent <= status.delta_total
        previous = status
    assert status.epsilon_spent == pytest.approx(rho_to_epsilon(0.018, record.conversion_delta), rel=1e-9)
    # zCDP composes six releases to far less than six times the epsilon of one.
    assert status.epsilon_spent < 0.5 * 6 * rho_to_epsilon(0.003, record.conversion_delta)
    assert status.tier_spent["explore"] == pytest.approx(status.epsilon_spent)
    text = str(status)
    assert "rho" in text and f"{status.epsilon_spent:.6g}" in text and f"{status.rho_spent:.6g}" in text
    assert f"{status.epsilon_spent:.6g}" in status._repr_html_()


def test_zcdp_budget_is_spent_without_exceeding_it(accountant):
    record = _open(accountant, epsilon=1.0, delta=1e-6)
    done = _charge_until_refused(accountant, record, Cost(epsilon=0.05))
    spent, releases = _spent(accountant, record)
    assert releases == done and spent <= record.cap_units < spent + units_ceil(0.05**2 / 2)
    status = accountant.status(name="visits", user="alice")
    assert status.epsilon_spent <= 1.0 and status.epsilon_remaining >= 0
    assert status.delta_spent <= 1e-6
    with pytest.raises(BudgetExceededError) as caught:
        _charge(accountant, record, Cost(epsilon=0.05))
    message = str(caught.value)
    assert "epsilon 0.05" in message and "remains" in message and "%dp budget" in message
    left = (record.cap_units - spent) / UNITS_PER_ONE
    # what fits is said in the release pipeline's terms: a share of the budget's rho
    share = record.epsilon_total * left / (record.cap_units / UNITS_PER_ONE)
    assert f"at most about epsilon={share:.6g} fits now" in message
    assert _spent(accountant, record) == (spent, releases)


def test_zcdp_tier_share(accountant):
    record = _open(accountant, epsilon=1.0, delta=1e-6)
    cost = Cost(epsilon=0.1)
    explore = _charge_until_refused(accountant, record, cost, tier="explore", tier_share=0.5)
    assert explore * accountant.units(record, cost) <= record.cap_units // 2
    with pytest.raises(BudgetExceededError, match="tier 'explore'") as caught:
        _charge(accountant, record, cost, tier="explore", tier_share=0.5)
    assert "epsilon" in str(caught.value)
    assert _charge_until_refused(accountant, record, cost, tier="report") >= explore


def test_epsilon_of_units(accountant):
    pure = _open(accountant, epsilon=2.0, name="pure")
    assert accountant.epsilon_of_units(pure, 3 * 10**11) == 0.3
    assert accountant.epsilon_of_units(pure, 0) == 0
    zcdp = _open(accountant, epsilon=2.0, delta=1e-6, name="zcdp")
    assert accountant.epsilon_of_units(zcdp, 10**10) == pytest.approx(rho_to_epsilon(0.01, zcdp.conversion_delta))
    assert accountant.epsilon_of_units(zcdp, zcdp.cap_units) <= 2.0
    assert accountant.epsilon_of_units(zcdp, 10**15) == 2.0  # capped at the total
