"""The synthetic cohort: heavy-tailed visits, a rare diagnosis, gaps in lab values."""

from __future__ import annotations

import numpy as np
import pytest

import jupyter_dpmagic as dp


def test_cohort_shape_and_properties():
    cohort = dp.synthetic_cohort(400, seed=3, rare_patients=2, max_visits=300)
    visits = cohort.groupby("patient_id").size()
    assert len(visits) == 400 and visits.max() == 300 and visits.median() <= 2  # heavy tail
    rare = cohort[cohort.diagnosis == "fabry disease"].patient_id.nunique()
    assert rare == 2
    assert 0.10 < cohort.hba1c.isna().mean() < 0.20
    assert (cohort.groupby("patient_id").age.nunique() == 1).all()  # per-person facts stay fixed
    for column, (low, high) in dp.COHORT_BOUNDS.items():
        present = cohort[column].dropna()
        assert present.between(low, high).mean() > 0.99, column
    for column, categories in dp.COHORT_CATEGORIES.items():
        assert set(cohort[column]) <= set(categories), column
    assert cohort.equals(dp.synthetic_cohort(400, seed=3, rare_patients=2, max_visits=300))
    assert not cohort.equals(dp.synthetic_cohort(400, seed=4, rare_patients=2, max_visits=300))


def test_cohort_protects_with_its_public_metadata(ledger_path):
    cohort = dp.synthetic_cohort(300, seed=1)
    pf = dp.protect(cohort, name="cohort", epsilon=1e6, privacy_unit="patient_id", max_rows_per_unit=2,
                    bounds=dp.COHORT_BOUNDS, categories=dp.COHORT_CATEGORIES)
    with dp.spending(epsilon=1000):
        rows = pf.count_rows()
    # the 500-visit patient and every other one count at most twice
    exact = cohort.groupby("patient_id").size().clip(upper=2).sum()
    assert abs(rows - exact) <= 2
    assert len(cohort) > exact + 400


def test_bad_arguments():
    with pytest.raises(ValueError):
        dp.synthetic_cohort(2, rare_patients=3)
    assert np.isfinite(dp.synthetic_cohort(5, rare_patients=0, heavy_patient=False).systolic_bp).all()
