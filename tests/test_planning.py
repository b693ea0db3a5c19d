"""Accuracy before spending (explain), accuracy-first cells, and DP plots."""

from __future__ import annotations

from fractions import Fraction

import matplotlib
import numpy as np
import pandas as pd
import pytest
from IPython.core.interactiveshell import InteractiveShell

import jupyter_dpmagic as dp
from jupyter_dpmagic import mechanisms
from jupyter_dpmagic.ledger import UNITS_PER_ONE

matplotlib.use("Agg")


def releases(name):
    return dp.budget(name).releases


@pytest.fixture
def shell(ledger_path, hospital):
    sh = InteractiveShell.instance()
    sh.user_ns["hospital"] = hospital
    assert sh.run_cell("%load_ext jupyter_dpmagic").success
    yield sh
    sh.user_ns.pop("df", None)


# ------------------------------------------------------------------------------------------- explain
def test_explain_describes_without_running_or_charging(protect_hospital):
    pf = protect_hospital()
    report = dp.explain(lambda: (pf.age.mean(), pf.groupby("ward").size(), len(pf)))
    assert len(report) == 3 and releases(pf.name) == 0
    mean, grouped, count = report
    assert mean.epsilon == pytest.approx(0.05)  # explore 0.1 x quasi-identifier 0.5, the policy's default
    assert mean.mechanism == "discrete Laplace" and "on the sum" in mean.accuracy[0][1]
    half = mechanisms.laplace(sensitivity=1, epsilon=Fraction(1, 10), vector=False).half_width(0.05)
    assert count.accuracy[0][1] == f"± {half:.4g} (95%)"  # standard tier: 0.1, a count's own interval
    assert "by ward" in grouped.query and report.epsilon == pytest.approx(0.25)
    text = repr(report)
    assert "nothing was run or charged" in text and "budget: about ε=50 left" in text
    assert "would release" in report._repr_html_()


def test_explain_follows_purpose_and_says_when_the_budget_cannot_pay(protect_hospital):
    pf = protect_hospital(epsilon=0.3)
    report = dp.explain(lambda: pf.age.mean(), purpose="publish")
    assert report[0].epsilon == pytest.approx(0.25) and report[0].purpose == "publish"
    assert "NOT ENOUGH" not in repr(report)
    assert "NOT ENOUGH" in repr(dp.explain(lambda: pf.age.mean(), epsilon=1.0))
    assert releases(pf.name) == 0


def test_explain_magic_takes_options_and_python(shell, dataset_name):
    shell.run_cell(f"df = hospital.copy()\n%dp protect df --name {dataset_name} --epsilon 5 --delta 1e-6 "
                   "--bounds age=0:110")
    result = shell.run_cell("%dp explain --epsilon 0.5 df[df['age'] > 60]['age'].mean()")
    assert result.success, result.error_in_exec
    assert result.result[0].epsilon == pytest.approx(0.5) and "mean(age) where" in result.result[0].query
    result = shell.run_cell("%dp explain df.groupby('diagnosis').size()")
    assert "partition selection" in result.result[0].mechanism and result.result[0].delta > 0
    assert not shell.run_cell("%dp explain df.age.mean(").success  # a syntax error is reported, not raised
    assert dp.budget(dataset_name).releases == 0


# ------------------------------------------------------------------------------------------ accuracy
def _laplace_half_width(units):
    return mechanisms.laplace(sensitivity=1, epsilon=Fraction(units, UNITS_PER_ONE), vector=False).half_width(0.05)


def test_accuracy_picks_the_smallest_epsilon_that_meets_it(protect_hospital, hospital):
    pf = protect_hospital(epsilon=100.0)
    with dp.spending(accuracy=5):
        n = pf.count_rows()
    info = dp.info(n)
    units = round(info.epsilon * UNITS_PER_ONE)
    assert _laplace_half_width(units) <= 5 < _laplace_half_width(units - 1)
    assert info.ci_high - info.ci_low <= 10 and any("accuracy of ± 5" in note for note in info.notes)
    assert dp.budget(pf.name).epsilon_spent == pytest.approx(info.epsilon)


def test_relative_accuracy_uses_the_bounds_width(protect_hospital):
    pf = protect_hospital(epsilon=1e4)
    with dp.spending(accuracy="1%"):
        total = pf.age.sum()
    info = dp.info(total)
    assert (info.ci_high - info.ci_low) / 2 <= 0.01 * 110 + 1e-9
    with dp.spending(accuracy="1%"):
        with pytest.raises(dp.PolicyError, match="absolute"):
            pf.count_rows()


@pytest.mark.parametrize("target, message", [(0, "positive"), (-3, "positive"), ("ten", "number"),
                                             ("150%", "below 100%")])
def test_bad_accuracy_targets_are_refused(protect_hospital, target, message):
    pf = protect_hospital()
    with pytest.raises(dp.PolicyError, match=message):
        with dp.spending(accuracy=target):
            pf.count_rows()
    assert releases(pf.name) == 0


def test_accuracy_that_cannot_be_met_is_refused_before_spending(protect_hospital):
    pf = protect_hospital(epsilon=1.0)
    with dp.spending(accuracy=0.5):
        with pytest.raises(dp.BudgetExceededError, match=r"needs ε=\d") as caught:
            pf.count_rows()
        assert "nothing was charged" in str(caught.value)
        with pytest.raises(dp.PolicyError, match="no epsilon up to"):
            pf.age.sum(bounds=(0, 1e12))
        with pytest.raises(dp.PolicyError, match="depend on the data|depends on the data"):
            pf.age.mean()
    assert releases(pf.name) == 0


def test_accuracy_cells(shell, dataset_name):
    shell.run_cell(f"df = hospital.copy()\n%dp protect df --name {dataset_name} --epsilon 100 --bounds age=0:110")
    result = shell.run_cell("%%dp --accuracy 20\ndf.count_rows()")
    assert result.success, result.error_in_exec
    assert dp.info(result.result).ci_high - dp.info(result.result).ci_low <= 40
    assert not shell.run_cell("%%dp --accuracy 20 --epsilon 1\nlen(df)").success
    assert not shell.run_cell("%%dp --accuracy -1\nlen(df)").success
    assert dp.budget(dataset_name).releases == 1


# --------------------------------------------------------------------------------------------- plots
def test_histogram_plot_is_one_release_with_bins_from_bounds(protect_hospital, hospital):
    pf = protect_hospital(epsilon=1e4)
    with dp.spending(epsilon=200.0):
        ax = pf.age.plot.hist(bins=11)
    release = ax.dp_release
    assert list(release.index.left) == pytest.approx(list(np.linspace(0, 110, 12)[:-1]))
    exact = pd.cut(hospital.age, np.linspace(0, 110, 12), right=False).value_counts(sort=False)
    assert np.abs(release.to_numpy() - exact.to_numpy()).max() <= 3
    assert len(ax.patches) == 11 and ax.containers and "DP histogram" in ax.get_title()
    assert releases(pf.name) == 1


def test_frame_hist_and_bar_charts_with_error_bars(protect_hospital):
    pf = protect_hospital(epsilon=1e4)
    with dp.spending(epsilon=5.0):
        axes = pf.hist(column=["age", "bmi"], bins=5)
        sizes = pf.groupby("ward").size()
    ax = sizes.plot.bar()
    assert len(axes) == 2 and releases(pf.name) == 2  # both histograms in one release, then the sizes
    bars = [c for c in ax.containers if isinstance(c, matplotlib.container.BarContainer)]
    assert len(bars[0]) == 4 and any(isinstance(c, matplotlib.container.ErrorbarContainer) for c in ax.containers)


def test_plots_of_text_or_rows_are_refused_and_charge_nothing(protect_hospital):
    pf = protect_hospital()
    with dp.spending(epsilon=1.0):
        with pytest.raises(dp.PolicyError, match="value_counts"):
            pf.ward.plot.hist()
        with pytest.raises(dp.PrivacyError, match="plot.hist"):
            pf.age.plot.line()
        with pytest.raises(dp.PrivacyError, match="plot.hist"):
            pf.plot
        with pytest.raises(dp.PolicyError, match="bins"):
            pf.age.plot.hist(bins=0)
    assert releases(pf.name) == 0


def test_a_calls_own_epsilon_wins_over_the_cells_accuracy(protect_hospital):
    pf = protect_hospital()
    with dp.spending(accuracy=5):
        n = pf.count_rows(epsilon=0.5)
    assert dp.info(n).epsilon == pytest.approx(0.5)
    assert not any("accuracy" in note for note in dp.info(n).notes)
