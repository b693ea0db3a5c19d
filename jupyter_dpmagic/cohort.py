"""A synthetic hospital cohort for examples, teaching and tests.

Real hospital tables have several visits per patient (a few patients have very many), diagnoses that
only a handful of patients share, and lab values with gaps. This generator makes such a table from a
seed, which fixes the data only: releases made from it are noisy as always.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["synthetic_cohort", "COHORT_BOUNDS", "COHORT_CATEGORIES"]

WARDS = ("cardiology", "oncology", "orthopaedics", "internal", "icu")
COMMON_DIAGNOSES = ("hypertension", "type 2 diabetes", "copd", "asthma", "heart failure")
RARE_DIAGNOSIS = "fabry disease"

#: Public bounds of the numeric columns (from clinical ranges, not from any generated data).
COHORT_BOUNDS = {"age": (0, 110), "hba1c": (3.0, 15.0), "systolic_bp": (70, 230), "length_of_stay": (0, 60)}
#: Public categories of the categorical columns, the rare diagnosis included.
COHORT_CATEGORIES = {"sex": ["F", "M"], "ward": list(WARDS), "diagnosis": [*COMMON_DIAGNOSES, RARE_DIAGNOSIS]}


def synthetic_cohort(n_patients: int = 500, *, seed: int = 0, rare_patients: int = 3,
                     max_visits: int = 500, heavy_patient: bool = True, missing_lab: float = 0.15) -> pd.DataFrame:
    """Visits of a synthetic cohort: one row per visit, several visits per patient.

    Parameters
    ----------
    n_patients : int, default 500
        Number of patients.
    seed : int, default 0
        Seed of the *data* (never of any noise).
    rare_patients : int, default 3
        How many patients carry the rare diagnosis (``"fabry disease"``) on all their visits.
    max_visits : int, default 500
        Largest number of visits of one patient. Visits per patient follow a heavy-tailed (Zipf)
        law, so most patients come once or twice and a few come very often.
    heavy_patient : bool, default True
        Give patient 0 exactly ``max_visits`` visits, the outlier that contribution bounds must tame.
    missing_lab : float, default 0.15
        Share of visits whose HbA1c was not measured (NaN).

    Returns
    -------
    pandas.DataFrame
        Columns ``patient_id, age, sex, ward, diagnosis, hba1c, systolic_bp, length_of_stay``. Use
        :data:`COHORT_BOUNDS` and :data:`COHORT_CATEGORIES` as the public metadata when protecting it.
    """
    if n_patients < max(1, rare_patients):
        raise ValueError("n_patients must be at least 1 and at least rare_patients")
    rng = np.random.default_rng(seed)
    visits = np.minimum(rng.zipf(2.2, n_patients), max_visits)
    if heavy_patient:
        visits[0] = max_visits
    age = rng.integers(18, 95, n_patients)
    sex = rng.choice(COHORT_CATEGORIES["sex"], n_patients)
    diagnosis = rng.choice(COMMON_DIAGNOSES, n_patients, p=[0.35, 0.25, 0.15, 0.15, 0.10]).astype(object)
    rare = rng.choice(np.arange(1, n_patients), size=rare_patients, replace=False) if rare_patients else []
    diagnosis[rare] = RARE_DIAGNOSIS

    patient = np.repeat(np.arange(n_patients), visits)
    n = len(patient)
    diabetic = np.isin(diagnosis[patient], ["type 2 diabetes"])
    hba1c = np.round(np.where(diabetic, rng.normal(7.8, 1.2, n), rng.normal(5.5, 0.5, n)), 1)
    hba1c[rng.random(n) < missing_lab] = np.nan
    systolic = np.round(rng.normal(128, 18, n) + 0.3 * (age[patient] - 50)).astype(int)
    stay = rng.geometric(0.25, n) - 1
    return pd.DataFrame({
        "patient_id": patient,
        "age": age[patient],
        "sex": sex[patient],
        "ward": rng.choice(WARDS, n, p=[0.3, 0.2, 0.2, 0.25, 0.05]),
        "diagnosis": diagnosis[patient].astype(str),
        "hba1c": hba1c,
        "systolic_bp": systolic,
        "length_of_stay": stay,
    })
