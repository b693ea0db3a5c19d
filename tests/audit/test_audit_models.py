"""Privacy audits of scikit-learn models trained inside a spending block.

This package promises add/remove neighbours (the row count is private). The audits here use them,
as for pandas releases, on what a fitted GaussianNB exposes (it is fitted from the session's own
grouped release of class counts, means and variances):

* ``theta_`` (a class's mean) with a patient at the upper feature bound added to a class whose
  other patients sit at the lower bound: a threshold event, audited like a sum; its power variant
  draws every noise at a twentieth of its scale (measured: eps_lb 2.6-2.8 against a claim of 1).
* ``class_count_``: whether the counts add up to the exact number of rows, and whether a declared
  class without rows shows exactly 0. diffprivlib's own GaussianNB fails both with certainty (its
  noisy class counts are forced to add up to the exact row count, and classes absent from the data
  keep a count of 0), which is why it is not used.

LogisticRegression (objective perturbation) and the tree models are not audited here: their
coefficients have no closed-form law to choose an event from and to prove the power variant's miss
probability with, and a fit takes tens of milliseconds, so the thousands of fits an audit at
TEST_ALPHA needs do not fit in a CI run.
"""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("diffprivlib")
pytest.importorskip("sklearn")

from sklearn.naive_bayes import GaussianNB  # noqa: E402

import jupyter_dpmagic as dp  # noqa: E402
from _stats import TEST_ALPHA, Broken, audit, protect  # noqa: E402

pytestmark = pytest.mark.usefixtures("fast_ledger")

EPS = 1.0
BOUNDS = (0.0, 100.0)
CLASS_SIZE = 150
NB_M = 300
NB_THRESHOLDS = (50.0 / CLASS_SIZE, 75.0 / CLASS_SIZE)  # theta_b >= t: half, three quarters of the shift


def _fits(frame, label, m, attribute):
    pf = protect(frame, label, bounds={"x": BOUNDS}, categories={"y": ["a", "b", "c"]})
    out = []
    with dp.spending(epsilon=EPS):
        for _ in range(m):
            model = GaussianNB().fit(pf[["x"]], pf["y"])
            out.append(np.array(getattr(model, attribute), dtype=float))
    return np.array(out)


def _base():
    rng = np.random.default_rng(zlib.crc32(b"nb"))
    return pd.DataFrame({"x": np.r_[rng.integers(0, 100, CLASS_SIZE).astype(float), np.zeros(CLASS_SIZE)],
                         "y": ["a"] * CLASS_SIZE + ["b"] * CLASS_SIZE})


def _nb_mean_audit(m=NB_M):
    """D' holds class b at the lower bound (0); D adds one patient of class b at the upper bound."""
    smaller = _base()
    larger = pd.concat([smaller, pd.DataFrame({"x": [BOUNDS[1]], "y": ["b"]})], ignore_index=True)
    out = {"D": _fits(larger, "audit-nb-plus", m, "theta_")[:, 1, 0],
           "D'": _fits(smaller, "audit-nb", m, "theta_")[:, 1, 0]}
    events = [(f"theta_b >= {t:.4g}", lambda x, t=t: x >= t) for t in NB_THRESHOLDS]
    result = audit(out, [("D", "D'")], events, TEST_ALPHA)
    print(result)
    return result


def test_audit_gaussian_nb_class_mean_extreme_patient():
    assert _nb_mean_audit().epsilon_lower <= EPS


def test_audit_gaussian_nb_power_mean_under_noised(monkeypatch):
    # Every noise drawn at a twentieth of its scale (the ledger charged as usual).
    Broken(monkeypatch).scale(actual=0.05)
    assert _nb_mean_audit().epsilon_lower > EPS


# ---------------------------------------------------------------------------- the class counts
COUNT_M = 200  # an event of probability 1 against 0: eps_lb = ln(0.92 / 0.077) = 2.5


def _certain_event_audit(out, event_text, event):
    result = audit(out, [("D", "D'")], [(event_text, event)], TEST_ALPHA)
    print(result)
    return result


def test_audit_gaussian_nb_class_counts_row_count():
    smaller = _base()
    larger = pd.concat([smaller, pd.DataFrame({"x": [50.0], "y": ["a"]})], ignore_index=True)
    out = {"D": _fits(larger, "audit-nbc-plus", COUNT_M, "class_count_").sum(axis=1),
           "D'": _fits(smaller, "audit-nbc", COUNT_M, "class_count_").sum(axis=1)}
    n = len(smaller)
    assert _certain_event_audit(out, f"sum(class_count_) == {n}", lambda x: x == n).epsilon_lower <= EPS


def test_audit_gaussian_nb_class_counts_new_class():
    smaller = _base()
    larger = pd.concat([smaller, pd.DataFrame({"x": [50.0], "y": ["c"]})], ignore_index=True)
    out = {"D": _fits(larger, "audit-nbn-plus", COUNT_M, "class_count_")[:, 2],
           "D'": _fits(smaller, "audit-nbn", COUNT_M, "class_count_")[:, 2]}
    assert _certain_event_audit(out, "class_count_[c] == 0", lambda x: x == 0).epsilon_lower <= EPS
