"""Tests for jupyter_dpmagic.policy: tiers, purposes, policy files and column classification."""

from __future__ import annotations

import math
import textwrap
from dataclasses import replace

import numpy as np
import pytest

from jupyter_dpmagic.errors import PolicyError
from jupyter_dpmagic.policy import (
    TIER_ORDER,
    ColumnPolicy,
    Policy,
    Purpose,
    Tier,
    classify,
    normalize_tier,
)

HOSPITAL_TOML = """
default_purpose = "publish"

[purposes.publish]
epsilon = 0.4
description = "numbers for the annual report"

[purposes.audit]
epsilon = 0.05

[tiers.sensitive]
multiplier = 0.2
max_share = 0.5
missing_bounds = "estimate"

[tiers.quasi_identifier]
max_share = 0.75

[columns.age]
tier = "quasi-identifier"
bounds = [0, 110]

[columns.diagnosis]
tier = "sensitive"
categories = ["asthma", "copd", "diabetes"]

[columns.length_of_stay]
bounds = [0, 365]

[columns.mrn]
tier = "standard"
"""


def write(tmp_path, text, name="hospital.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load(tmp_path, text):
    return Policy.from_toml(write(tmp_path, text))


# --- built-in values and arithmetic -------------------------------------------------------------


def test_builtin_tiers_and_purposes():
    policy = Policy.builtin()
    assert TIER_ORDER == ("public", "standard", "quasi-identifier", "sensitive", "identifier")
    assert list(policy.tiers) == list(TIER_ORDER)
    assert {name: t.multiplier for name, t in policy.tiers.items()} == {
        "public": 1.0,
        "standard": 1.0,
        "quasi-identifier": 0.5,
        "sensitive": 0.25,
        "identifier": None,
    }
    assert all(t.max_share is None for t in policy.tiers.values())
    assert {name: t.missing_bounds for name, t in policy.tiers.items()} == {
        "public": "estimate", "standard": "estimate", "quasi-identifier": "estimate",
        "sensitive": "refuse", "identifier": "refuse"}
    assert policy.purposes["explore"] == Purpose(
        "explore", 0.1, "quick looks while you explore; small and cheap"
    )
    assert policy.purposes["publish"] == Purpose(
        "publish", 0.5, "final numbers for a paper or report; more accurate"
    )
    assert policy.default_purpose == "explore"
    assert dict(policy.columns) == {}
    assert policy == Policy()


@pytest.mark.parametrize(
    ("purpose", "tiers", "expected"),
    [
        ("explore", ["sensitive"], 0.025),
        ("explore", ["standard"], 0.1),
        ("explore", ["public", "quasi-identifier"], 0.05),
        ("publish", ["standard", "sensitive", "public"], 0.125),
        ("publish", ["quasi_identifier"], 0.25),
        ("publish", [], 0.5),
        (None, ["sensitive"], 0.025),  # None means the default purpose
    ],
)
def test_default_epsilon_is_purpose_epsilon_times_strictest_multiplier(purpose, tiers, expected):
    assert Policy().default_epsilon(purpose=purpose, tiers=tiers) == pytest.approx(expected)


def test_default_epsilon_uses_overridden_values():
    policy = Policy(
        purposes={"explore": {"epsilon": 0.2}}, tiers={"sensitive": {"multiplier": 0.5}}
    )
    assert policy.default_epsilon(purpose="explore", tiers=["sensitive"]) == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("tiers", "expected"),
    [
        ([], "standard"),
        (["public"], "public"),
        (["public", "standard"], "standard"),
        (["sensitive", "quasi-identifier", "public"], "sensitive"),
        (["Quasi_Identifier", "standard"], "quasi-identifier"),
        (["identifier", "sensitive"], "identifier"),
        ("sensitive", "sensitive"),  # a single name is not split into letters
    ],
)
def test_strictest_follows_tier_order(tiers, expected):
    assert Policy().strictest(tiers) == expected


def test_identifier_is_never_released():
    with pytest.raises(PolicyError) as info:
        Policy().default_epsilon(purpose="publish", tiers=["standard", "identifier"])
    message = str(info.value)
    assert "never released" in message
    assert "{'tier': 'standard'}" in message


# --- TOML files ----------------------------------------------------------------------------------


def test_toml_file_is_loaded_and_columns_resolved(tmp_path):
    policy = Policy.from_toml(write(tmp_path, HOSPITAL_TOML))

    assert policy.default_purpose == "publish"
    assert policy.purpose("publish") == Purpose("publish", 0.4, "numbers for the annual report")
    assert policy.purpose("audit").epsilon == 0.05
    assert policy.purpose("explore").epsilon == 0.1  # built-in purposes stay
    assert policy.tier("sensitive") == Tier("sensitive", 0.2, 0.5, "estimate")
    assert policy.tier("quasi-identifier") == Tier("quasi-identifier", 0.5, 0.75, "estimate")  # built-in

    age = ColumnPolicy("age", "quasi-identifier", (0.0, 110.0), None, "policy")
    assert policy.resolve("age") == age
    diagnosis = policy.resolve("diagnosis")
    assert diagnosis.categories == ("asthma", "copd", "diabetes")
    assert (diagnosis.tier, diagnosis.tier_source) == ("sensitive", "policy")
    # A declared tier wins over the name: 'mrn' would otherwise be an identifier.
    assert (policy.resolve("mrn").tier, policy.resolve("mrn").tier_source) == ("standard", "policy")
    # Declared bounds without a tier: the tier still comes from the name.
    stay = policy.resolve("length_of_stay")
    assert stay.bounds == (0.0, 365.0)
    assert stay.tier == "standard" and stay.tier_source.startswith("auto: ")
    # Undeclared column.
    assert policy.resolve("religion").tier == "sensitive"
    assert policy.resolve("religion").bounds is None

    assert policy.default_epsilon(purpose="publish", tiers=["sensitive"]) == pytest.approx(0.08)
    assert policy.columns["length_of_stay"].tier is None


def test_typo_key_names_file_key_path_and_close_match(tmp_path):
    path = write(tmp_path, "[columns.age]\nbouds = [0, 110]\n")
    with pytest.raises(PolicyError) as info:
        Policy.from_toml(path)
    message = str(info.value)
    assert str(path) in message
    assert "columns.age.bouds" in message
    assert "unknown key 'bouds' in [columns.age]" in message
    assert "Did you mean 'bounds'?" in message


@pytest.mark.parametrize(
    ("text", "key_path", "suggestion"),
    [
        ("[colums.age]\ntier = 'standard'\n", "colums", "columns"),
        ("default_purpse = 'explore'\n", "default_purpse", "default_purpose"),
        ("[purposes.explore]\nepsilom = 0.1\n", "purposes.explore.epsilom", "epsilon"),
        ("[tiers.sensitive]\nmulitplier = 0.1\n", "tiers.sensitive.mulitplier", "multiplier"),
        ("[columns.age]\nteir = 'standard'\n", "columns.age.teir", "tier"),
    ],
)
def test_unknown_keys_everywhere_suggest_close_match(tmp_path, text, key_path, suggestion):
    with pytest.raises(PolicyError) as info:
        load(tmp_path, text)
    assert key_path in str(info.value)
    assert f"Did you mean '{suggestion}'?" in str(info.value)


def test_toml_syntax_error_reports_file_and_line(tmp_path):
    with pytest.raises(PolicyError) as info:
        load(tmp_path, "[columns.age]\nbounds = [0, 110\n")
    message = str(info.value)
    assert "hospital.toml" in message and "invalid TOML" in message and "line" in message


def test_missing_file_is_a_policy_error(tmp_path):
    with pytest.raises(PolicyError, match="no such policy file"):
        Policy.from_toml(tmp_path / "nope.toml")


# --- value validation ----------------------------------------------------------------------------


def test_reversed_bounds_say_what_to_write(tmp_path):
    with pytest.raises(PolicyError) as info:
        load(tmp_path, "[columns.age]\nbounds = [110, 0]\n")
    message = str(info.value)
    assert "columns.age.bounds" in message
    assert "reversed bounds [110, 0] for column 'age': write [0, 110]" in message


@pytest.mark.parametrize(
    "bounds", ["[0]", "[0, 1, 2]", "[0, inf]", "[nan, 1]", '["0", 1]', "[true, 2]", "5"]
)
def test_malformed_bounds_are_rejected(tmp_path, bounds):
    with pytest.raises(PolicyError, match=r"columns\.age\.bounds.*two finite numbers"):
        load(tmp_path, f"[columns.age]\nbounds = {bounds}\n")


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "0", "-0.1", "true", '"0.1"'])
def test_epsilon_must_be_finite_positive_number(tmp_path, value):
    with pytest.raises(PolicyError) as info:
        load(tmp_path, f"[purposes.explore]\nepsilon = {value}\n")
    message = str(info.value)
    assert "purposes.explore.epsilon" in message and "finite number > 0" in message


@pytest.mark.parametrize("value", [True, 0, -1.0, math.inf, math.nan, "0.1", None])
def test_epsilon_checked_in_python_constructor_too(value):
    with pytest.raises(PolicyError, match="purposes.publish.epsilon"):
        Policy(purposes={"publish": {"epsilon": value}})


@pytest.mark.parametrize("value", ["0", "1.5", "-0.5", "inf", "true"])
def test_max_share_must_be_in_zero_one(tmp_path, value):
    with pytest.raises(PolicyError, match=r"tiers\.sensitive\.max_share.*\(0, 1\]"):
        load(tmp_path, f"[tiers.sensitive]\nmax_share = {value}\n")


def test_max_share_of_one_is_allowed():
    assert Policy(tiers={"public": {"max_share": 1}}).tier("public").max_share == 1.0


@pytest.mark.parametrize("value", ["0", "-1", "inf", "true"])
def test_multiplier_must_be_finite_positive(tmp_path, value):
    with pytest.raises(PolicyError, match=r"tiers\.standard\.multiplier"):
        load(tmp_path, f"[tiers.standard]\nmultiplier = {value}\n")


def test_identifier_multiplier_cannot_be_set(tmp_path):
    with pytest.raises(PolicyError, match="identifiers are never released"):
        load(tmp_path, "[tiers.identifier]\nmultiplier = 0.1\n")


def test_missing_bounds_must_be_refuse_or_estimate(tmp_path):
    with pytest.raises(PolicyError, match="Did you mean 'estimate'"):
        load(tmp_path, "[tiers.standard]\nmissing_bounds = 'estmate'\n")


def test_unknown_tier_suggests_close_match(tmp_path):
    with pytest.raises(PolicyError) as info:
        load(tmp_path, "[columns.diagnosis]\ntier = 'senstive'\n")
    assert "columns.diagnosis.tier" in str(info.value)
    assert "Did you mean 'sensitive'?" in str(info.value)
    with pytest.raises(PolicyError, match="Did you mean 'sensitive'"):
        load(tmp_path, "[tiers.sensitve]\nmax_share = 0.5\n")
    with pytest.raises(PolicyError, match="Did you mean 'quasi-identifier'"):
        Policy().tier("quasi-identifer")
    with pytest.raises(PolicyError, match="Did you mean 'public'"):
        normalize_tier("pubic")


@pytest.mark.parametrize(
    "spelling", ["quasi_identifier", "quasi-identifier", "Quasi-Identifier", "QUASI IDENTIFIER"]
)
def test_quasi_identifier_spellings_are_accepted(spelling):
    assert normalize_tier(spelling) == "quasi-identifier"
    assert Policy().tier(spelling).multiplier == 0.5
    declared = Policy(columns={"ward": {"tier": spelling}}).resolve("ward")
    assert declared.tier == "quasi-identifier"


@pytest.mark.parametrize(
    ("categories", "problem"),
    [
        ("[]", "empty"),
        ('["asthma", "copd", "asthma"]', "list each group key once"),
        ("[1, 1.0]", "list each group key once"),
        ("[[1, 2]]", "not a string, number or boolean"),
        ('"asthma"', "must be a list"),
    ],
)
def test_bad_categories_are_rejected(tmp_path, categories, problem):
    with pytest.raises(PolicyError, match=rf"columns\.diagnosis\.categories.*{problem}"):
        load(tmp_path, f"[columns.diagnosis]\ncategories = {categories}\n")


def test_unknown_default_purpose(tmp_path):
    with pytest.raises(PolicyError, match=r"default_purpose.*Did you mean 'publish'"):
        load(tmp_path, "default_purpose = 'publsh'\n")


def test_new_purpose_needs_epsilon_and_unknown_purpose_lists_known_ones():
    with pytest.raises(PolicyError, match=r"purposes\.audit.*needs an epsilon"):
        Policy(purposes={"audit": {"description": "for the auditors"}})
    with pytest.raises(PolicyError) as info:
        Policy().purpose("publsh")
    assert "Did you mean 'publish'?" in str(info.value)
    assert "explore" in str(info.value)


def test_numpy_numbers_and_tuples_are_accepted():
    policy = Policy(
        columns={
            "age": {"bounds": (np.int64(0), np.float32(110))},
            "ward": {"categories": np.array(["A", "B"])},
        },
        purposes={"explore": {"epsilon": np.float64(0.2)}},
        tiers={"sensitive": {"max_share": np.float64(0.5)}},
    )
    assert policy.resolve("age").bounds == (0.0, 110.0)
    assert type(policy.resolve("age").bounds[0]) is float
    assert policy.resolve("ward").categories == ("A", "B")
    assert type(policy.resolve("ward").categories[0]) is str
    assert policy.purpose("explore").epsilon == 0.2
    with pytest.raises(PolicyError, match="boolean"):
        Policy(purposes={"explore": {"epsilon": np.bool_(True)}})


# --- call-level overrides ------------------------------------------------------------------------


def test_with_columns_overrides_win_and_leave_original_alone():
    original = Policy(columns={"age": {"tier": "sensitive", "bounds": [0, 120]}})
    before = original.to_dict()

    changed = original.with_columns(
        bounds={"age": (18, 90), "cost": (0, 1e5)},
        categories={"ward": ["A", "B"]},
        tiers={"age": "quasi_identifier", "mrn": "standard"},
    )

    age = ColumnPolicy("age", "quasi-identifier", (18.0, 90.0), None, "call")
    assert changed.resolve("age") == age
    assert changed.resolve("mrn").tier_source == "call"
    assert changed.resolve("mrn").tier == "standard"
    assert changed.resolve("cost").bounds == (0.0, 1e5)
    assert changed.resolve("cost").tier_source.startswith("auto: ")  # bounds alone keep auto tier
    assert changed.resolve("ward").categories == ("A", "B")

    assert original.to_dict() == before
    assert original.resolve("age") == ColumnPolicy("age", "sensitive", (0.0, 120.0), None, "policy")
    assert original.resolve("mrn").tier == "identifier"
    assert "ward" not in original.columns


def test_with_columns_validates_like_the_file():
    with pytest.raises(PolicyError, match=r"bounds\['age'\].*write \[1, 5\]"):
        Policy().with_columns(bounds={"age": (5, 1)})
    with pytest.raises(PolicyError, match=r"tiers\['age'\].*Did you mean 'quasi-identifier'"):
        Policy().with_columns(tiers={"age": "quasi"})
    with pytest.raises(PolicyError, match="list each group key once"):
        Policy().with_columns(categories={"ward": ["A", "A"]})


def test_policy_mappings_are_read_only():
    policy = Policy(columns={"age": {"bounds": [0, 110]}})
    with pytest.raises(TypeError):
        policy.columns["x"] = None
    with pytest.raises(TypeError):
        policy.tiers["public"] = None


# --- classification ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "tier", "word"),
    [
        ("PatientID", "identifier", "patient id"),
        ("patient_id", "identifier", "patient id"),
        ("AdmissionID", "identifier", "id"),
        ("record_uuid", "identifier", "uuid"),
        ("mrn", "identifier", "mrn"),
        ("first_name", "identifier", "first name"),
        ("LastName", "identifier", "last name"),
        ("surname", "identifier", "surname"),
        ("email", "identifier", "email"),
        ("phone_number", "identifier", "phone number"),
        ("ssn", "identifier", "ssn"),
        ("street_address", "identifier", "street address"),
        ("nhs_number", "identifier", "nhs number"),
        ("ip_address", "identifier", "ip address"),
        ("zip_code", "quasi-identifier", "zip code"),
        ("postcode", "quasi-identifier", "postcode"),
        ("county", "quasi-identifier", "county"),
        ("date_of_birth", "quasi-identifier", "date of birth"),
        ("DOB", "quasi-identifier", "dob"),
        ("admission_date", "quasi-identifier", "admission date"),
        ("discharge_time", "quasi-identifier", "time"),
        ("age", "quasi-identifier", "age"),
        ("AgeAtAdmission", "quasi-identifier", "age"),
        ("sex", "quasi-identifier", "sex"),
        ("gender", "quasi-identifier", "gender"),
        ("marital_status", "quasi-identifier", "marital status"),
        ("occupation", "quasi-identifier", "occupation"),
        ("diagnosis", "sensitive", "diagnosis"),
        ("primary_diagnosis", "sensitive", "diagnosis"),
        ("icd10_code", "sensitive", "icd10"),
        ("hba1c", "sensitive", "hba1c"),
        ("HbA1c_pct", "sensitive", "hba1c"),
        ("systolic_bp", "sensitive", "systolic"),
        ("BloodPressure", "sensitive", "blood pressure"),
        ("bmi", "sensitive", "bmi"),
        ("medication", "sensitive", "medication"),
        ("readmitted_30d", "sensitive", "readmitted"),
        ("hiv_status", "sensitive", "hiv"),
        ("ethnicity", "sensitive", "ethnicity"),
        ("religion", "sensitive", "religion"),
        ("sexual_orientation", "sensitive", "sexual orientation"),
        ("genotype", "sensitive", "genotype"),
        ("trade_union_member", "sensitive", "trade union"),
    ],
)
def test_classification_of_hospital_columns(name, tier, word):
    got_tier, reason = classify(name)
    assert got_tier == tier
    assert reason.startswith(f"auto: name matches '{word}' (")


@pytest.mark.parametrize(
    "name", ["length_of_stay", "ward", "cost", "department", "bed_count", "payer", "LOS_days"]
)
def test_neutral_names_are_standard(name):
    reason = "auto: no identifying or special-category word in the name"
    assert classify(name) == ("standard", reason)


def test_classification_reasons_name_the_rule():
    assert classify("mrn")[1] == "auto: name matches 'mrn' (HIPAA Safe Harbor identifier)"
    assert classify("diagnosis")[1] == "auto: name matches 'diagnosis' (GDPR Art. 9 health data)"
    assert "GDPR Art. 9" in classify("ethnicity")[1]
    assert "HIPAA Safe Harbor" in classify("zip_code")[1]


def test_words_inside_other_words_do_not_match():
    # 'age' in 'page', 'race' in 'trace', 'id' in 'valid', 'lab' in 'label'
    for name in ["page_views", "trace_level", "valid", "label"]:
        assert classify(name)[0] == "standard", name


def test_dtype_only_matters_for_datetimes_and_never_beats_the_name():
    neutral = "event"
    assert classify(neutral, np.dtype("datetime64[ns]"))[0] == "quasi-identifier"
    assert "datetime" in classify(neutral, np.dtype("datetime64[ns]"))[1]
    assert classify(neutral, "datetime64[s]")[0] == "quasi-identifier"
    assert classify(neutral, np.dtype("int64"))[0] == "standard"
    assert classify(neutral, np.dtype("float64"))[0] == "standard"
    assert classify("mrn", np.dtype("datetime64[ns]"))[0] == "identifier"
    assert classify("diagnosis", np.dtype("datetime64[ns]"))[0] == "sensitive"
    assert Policy().resolve(neutral, np.dtype("datetime64[ns]")).tier == "quasi-identifier"


# --- round trip ----------------------------------------------------------------------------------


def test_to_dict_from_dict_round_trip(tmp_path):
    policy = Policy.from_toml(write(tmp_path, HOSPITAL_TOML)).with_columns(
        categories={"ward": ["A", "B", 3]}, tiers={"ward": "public"}
    )
    data = policy.to_dict()
    again = Policy.from_dict(data)

    assert again == policy
    assert again.to_dict() == data
    for column in ["age", "diagnosis", "mrn", "length_of_stay", "ward", "PatientID"]:
        a, b = policy.resolve(column), again.resolve(column)
        assert (a.tier, a.bounds, a.categories) == (b.tier, b.bounds, b.categories)
    for purpose in policy.purposes:
        for tier in ["public", "standard", "quasi-identifier", "sensitive"]:
            assert again.default_epsilon(purpose=purpose, tiers=[tier]) == policy.default_epsilon(
                purpose=purpose, tiers=[tier]
            )
    assert again.tiers == policy.tiers
    assert again.default_purpose == "publish"
    # Plain, TOML-compatible data: lists rather than tuples, no None anywhere.
    assert data["columns"]["age"] == {"tier": "quasi-identifier", "bounds": [0.0, 110.0]}
    assert data["columns"]["ward"] == {"tier": "public", "categories": ["A", "B", 3]}
    assert "multiplier" not in data["tiers"]["identifier"]


def test_from_dict_names_its_source():
    with pytest.raises(PolicyError, match=r"^<dict>: columns\.age\.bounds"):
        Policy.from_dict({"columns": {"age": {"bounds": [2, 1]}}})
    with pytest.raises(PolicyError, match=r"^site-policy: purposes"):
        Policy.from_dict({"purposes": []}, source="site-policy")


@pytest.mark.parametrize("name, tier", [
    ("drug_name", "sensitive"), ("ward_name", "standard"), ("hospital_id", "standard"), ("WardID", "standard"),
    ("patient_name", "identifier"), ("name", "identifier"), ("visit_id", "identifier"), ("study_id", "identifier"),
    ("name_id", "identifier"),
])
def test_names_and_ids_of_things_are_not_identifiers(name, tier):
    assert classify(name)[0] == tier


# --- purpose reserves ----------------------------------------------------------------------------


def test_reserve_is_read_from_toml_and_kept(tmp_path):
    policy = load(tmp_path, "[purposes.publish]\nreserve = 0.3\n\n[purposes.audit]\nepsilon = 0.05\nreserve = 0.1\n")
    publish = policy.purpose("publish")
    assert publish == Purpose("publish", 0.5, "final numbers for a paper or report; more accurate", 0.3)
    assert publish != replace(publish, reserve=0.0)
    assert "reserve=0.3" in repr(publish)
    assert policy.purpose("explore").reserve == 0.0
    assert policy.purpose_reserves() == {"publish": 0.3, "audit": 0.1}
    data = policy.to_dict()
    assert data["purposes"]["publish"]["reserve"] == 0.3 and data["purposes"]["explore"]["reserve"] == 0.0
    again = Policy.from_dict(data)
    assert again == policy and again.purpose_reserves() == {"publish": 0.3, "audit": 0.1}
    assert policy != Policy(purposes={"audit": {"epsilon": 0.05, "reserve": 0.1}})
    # Purpose objects passed back in keep their reserve
    assert Policy(purposes=policy.purposes).purpose_reserves() == {"publish": 0.3, "audit": 0.1}


def test_builtin_policy_reserves_nothing():
    assert Policy.builtin().purpose_reserves() == {}
    assert all(p.reserve == 0.0 for p in Policy.builtin().purposes.values())
    assert Policy(purposes={"publish": {"reserve": 0}}).purpose_reserves() == {}


@pytest.mark.parametrize("value", ["1", "1.0", "1.5", "-0.1", "inf", "nan", "true", '"0.3"'])
def test_reserve_must_be_a_share_below_one(tmp_path, value):
    with pytest.raises(PolicyError) as info:
        load(tmp_path, f"[purposes.publish]\nreserve = {value}\n")
    message = str(info.value)
    assert "hospital.toml: purposes.publish.reserve" in message
    assert "0 <= reserve < 1" in message and "reserve = 0.3" in message


@pytest.mark.parametrize("value", [True, 1, -0.5, math.nan, "0.3", None])
def test_reserve_checked_in_python_constructor_too(value):
    with pytest.raises(PolicyError, match=r"purposes\.publish\.reserve.*0 <= reserve < 1"):
        Policy(purposes={"publish": {"reserve": value}})


def test_reserves_must_add_up_to_less_than_one(tmp_path):
    with pytest.raises(PolicyError) as info:
        load(tmp_path, "[purposes.publish]\nreserve = 0.7\n\n[purposes.audit]\nepsilon = 0.1\nreserve = 0.3\n")
    message = str(info.value)
    assert "hospital.toml: purposes: " in message
    assert "add up to 1 or more (publish 0.7, audit 0.3)" in message
    assert "add up to less than 1" in message
    below = Policy(purposes={"publish": {"reserve": 0.6}, "audit": {"epsilon": 0.1, "reserve": 0.3}})
    assert below.purpose_reserves() == {"publish": 0.6, "audit": 0.3}


def test_reserve_typo_suggests_the_key(tmp_path):
    with pytest.raises(PolicyError, match=r"purposes\.publish\.reserv.*Did you mean 'reserve'"):
        load(tmp_path, "[purposes.publish]\nreserv = 0.3\n")


def test_policy_table_shows_the_reserve(ledger_path, dataset_name):
    import pandas as pd

    import jupyter_dpmagic as dp

    frame = pd.DataFrame({"age": [30.0, 40.0]})
    dp.protect(frame, name=dataset_name, epsilon=1.0, bounds={"age": (0, 100)},
               policy=Policy(purposes={"publish": {"reserve": 0.3}}))
    table = dp.policy(dataset_name)
    assert "publish ε=0.5/query (30% of the budget reserved)" in table.footer
    assert "explore ε=0.1/query," in table.footer and "explore ε=0.1/query (" not in table.footer
    assert "30% of the budget reserved" in table._repr_html_()
