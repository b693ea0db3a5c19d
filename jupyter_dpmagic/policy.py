"""Privacy policy: how sensitive each column is, what an analysis is for, public column metadata.

A policy gives every column of a protected table a *tier* (``public`` up to ``identifier``) and
defines *purposes* (``explore``, ``publish``, ...). The default epsilon of a release is the
purpose's per-query epsilon times the multiplier of the strictest tier among the columns it
touches. Identifier columns are never released.

Columns that the policy does not declare are classified from their name and dtype (never from
their values, which would itself leak): see :func:`classify`.

A policy can be written in Python, or in a TOML file loaded with :meth:`Policy.from_toml`::

    default_purpose = "explore"

    [purposes.publish]
    epsilon = 0.5
    reserve = 0.3    # 30% of the budget only publish releases may spend

    [tiers.sensitive]
    max_share = 0.5

    [columns.age]
    tier = "quasi-identifier"
    bounds = [0, 110]

    [columns.diagnosis]
    tier = "sensitive"
    categories = ["asthma", "copd", "diabetes"]
"""

from __future__ import annotations

import math
import numbers
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from fractions import Fraction
from types import MappingProxyType
from typing import Any

import numpy as np

from . import _wordlists
from .errors import PolicyError, close_match_hint

__all__ = [
    "TIER_ORDER",
    "Tier",
    "Purpose",
    "ColumnPolicy",
    "Policy",
    "classify",
    "normalize_tier",
]

TIER_ORDER: tuple[str, ...] = ("public", "standard", "quasi-identifier", "sensitive", "identifier")
"""Tier names from least to most strict."""

_MISSING_BOUNDS_ACTIONS = ("refuse", "estimate")
_TIER_CHOICES = "Tiers, from least to most strict: " + ", ".join(TIER_ORDER) + "."
_IDENTIFIER_REFUSAL = (
    "identifiers are never released: the query touches a column whose tier is 'identifier'. "
    "If the column is not an identifier, set its tier, e.g. "
    "`policy=dp.Policy(columns={'col': {'tier': 'standard'}})`, "
    "or `tier = \"standard\"` under [columns.col] in the policy file."
)
_STANDARD_REASON = "auto: no identifying or special-category word in the name"


@dataclass(frozen=True)
class Tier:
    """How strictly the columns of one sensitivity level are protected.

    Attributes
    ----------
    name : str
        One of :data:`TIER_ORDER`.
    multiplier : float or None
        Scales the purpose's per-query epsilon. ``None`` means the tier is never released.
    max_share : float or None
        Cap, in (0, 1], on the share of the dataset budget spent on releases whose strictest
        tier is this one. ``None`` means no cap.
    missing_bounds : str
        ``"refuse"`` or ``"estimate"``: what to do when a numeric column has no bounds.
    """

    name: str
    multiplier: float | None
    max_share: float | None
    missing_bounds: str


@dataclass(frozen=True)
class Purpose:
    """What an analysis is for, and the per-query epsilon that goes with it.

    Attributes
    ----------
    name : str
        The purpose's name, e.g. ``"explore"``.
    epsilon : float
        Default per-query epsilon, before the tier multiplier.
    description : str
        One line for people reading the policy.
    reserve : float
        Share of the dataset budget, in [0, 1), that only releases for this purpose may spend:
        releases for other purposes leave it untouched. 0 reserves nothing.
    """

    name: str
    epsilon: float
    description: str = ""
    reserve: float = 0.0


@dataclass(frozen=True)
class ColumnPolicy:
    """Tier and public metadata of one column.

    Attributes
    ----------
    name : str
        Column name.
    tier : str or None
        One of :data:`TIER_ORDER`. Always set by :meth:`Policy.resolve`; ``None`` only in
        :attr:`Policy.columns` entries that declare metadata but no tier.
    bounds : tuple of float or None
        Public clamping bounds ``(low, high)``, finite, ``low <= high``.
    categories : tuple or None
        Public list of group keys, without duplicates.
    tier_source : str or None
        Why the column has its tier: ``"policy"``, ``"call"`` or ``"auto: <reason>"``.
        ``None`` when ``tier`` is ``None``.
    """

    name: str
    tier: str | None
    bounds: tuple[float, float] | None
    categories: tuple | None
    tier_source: str | None


# Sensitive columns refuse to have bounds estimated (a DP estimate still spends their budget and
# clamps away rare extreme values); other tiers estimate them, and say so in the release.
_BUILTIN_TIERS = {
    "public": Tier("public", 1.0, None, "estimate"),
    "standard": Tier("standard", 1.0, None, "estimate"),
    "quasi-identifier": Tier("quasi-identifier", 0.5, None, "estimate"),
    "sensitive": Tier("sensitive", 0.25, None, "refuse"),
    "identifier": Tier("identifier", None, None, "refuse"),
}
_BUILTIN_PURPOSES = {
    "explore": Purpose("explore", 0.1, "quick looks while you explore; small and cheap"),
    "publish": Purpose("publish", 0.5, "final numbers for a paper or report; more accurate"),
}


# --------------------------------------------------------------------------------------------
# Classification from column names


def _compile(groups):
    # Parse every entry once: (label, entry, its words), in list order so earlier entries win ties.
    return tuple(
        (label, entry, tuple(entry.split())) for label, words in groups for entry in words
    )


_IDENTIFIER_WORDS = _compile([(_wordlists.IDENTIFIER_LABEL, _wordlists.IDENTIFIER_WORDS)])
_SENSITIVE_WORDS = _compile(_wordlists.SENSITIVE_GROUPS)
_QUASI_IDENTIFIER_WORDS = _compile(_wordlists.QUASI_IDENTIFIER_GROUPS)
_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_DATETIME_REASON = "auto: datetime dtype (HIPAA Safe Harbor date tied to a person)"


# Words that, before 'name' or 'id', make the column a category of things (a ward, a drug) rather
# than a person or a record: 'visit_id' or 'study_id' stay identifiers (unique record numbers).
_THING_QUALIFIERS = frozenset({
    "drug", "medication", "medicine", "product", "brand", "ward", "hospital", "clinic", "site", "centre",
    "center", "department", "unit", "room", "bed", "test", "lab", "assay", "procedure", "diagnosis",
    "condition", "disease", "arm", "specialty", "speciality", "region", "country", "state",
})


def _name_words(name) -> tuple[list[str], set[str]]:
    """Split a column name into lower-case words, plus the forms single-word entries may match."""
    chunks = re.findall(r"[^\W_]+", str(name))
    words = [w.lower() for chunk in chunks for w in _CAMEL_BOUNDARY.split(chunk) if w]
    # A chunk written in one piece ("PatientID", "HbA1c") is also tried whole, and "address2"
    # also as "address".
    forms = set(words) | {w.rstrip("0123456789") for w in words} | {c.lower() for c in chunks}
    return words, forms


def _thing_names_removed(words: list[str], forms: set[str]) -> tuple[list[str], set[str]]:
    """Drop 'name'/'id' when they name a thing rather than a person ('drug_name', 'ward_id').

    Only for qualifiers that cannot be people: 'patient_name' and a bare 'name' stay identifiers.
    """
    for i, word in enumerate(words):
        if word in ("name", "id") and i > 0 and words[i - 1] in _THING_QUALIFIERS:
            kept = words[:i] + words[i + 1:]
            return kept, (forms - {word}) | set(kept)
    return words, forms


def _best_match(words, forms, entries):
    best, best_span = None, 0
    for label, entry, parts in entries:
        if len(parts) > 1 and any(
            tuple(words[i : i + len(parts)]) == parts for i in range(len(words))
        ):
            span = len(parts)
        elif "".join(parts) in forms:
            span = 1
        else:
            continue
        # The match covering most words of the name makes the clearest reason ('date of birth'
        # rather than 'date'); on a tie the earlier entry wins.
        if span > best_span:
            best, best_span = (label, entry), span
    return best


def _is_datetime_dtype(dtype) -> bool:
    if dtype is None:
        return False
    try:
        return np.dtype(dtype).kind == "M"
    except (TypeError, ValueError):
        pass
    # pandas is imported only here, for its own dtypes and dtype names that numpy does not know
    # ("datetime64[ns, UTC]", "period[M]"), so loading the policy alone stays light.
    import pandas as pd

    try:
        dtype = pd.api.types.pandas_dtype(dtype)
    except (TypeError, ValueError):
        return False
    return getattr(dtype, "kind", None) == "M" or isinstance(dtype, pd.PeriodDtype)


def classify(name: str, dtype=None) -> tuple[str, str]:
    """Guess a column's tier from its name and dtype.

    Data values are never looked at: the guess must not itself depend on private data.

    Parameters
    ----------
    name : str
        Column name. It is split into lower-case words at non-alphanumerics and camelCase
        boundaries (``"PatientID"`` -> ``patient``, ``id``) and matched against word lists
        drawn from HIPAA Safe Harbor (45 CFR 164.514(b)(2)) and GDPR Article 9.
    dtype : numpy or pandas dtype, or str, optional
        A datetime dtype makes an otherwise neutral column a quasi-identifier.

    Returns
    -------
    tier : str
        ``"identifier"``, ``"sensitive"``, ``"quasi-identifier"`` or ``"standard"``, the first
        that matches in that order.
    reason : str
        E.g. ``"auto: name matches 'mrn' (HIPAA Safe Harbor identifier)"``.

    Examples
    --------
    >>> classify("PatientMRN")
    ('identifier', "auto: name matches 'mrn' (HIPAA Safe Harbor identifier)")
    """
    words, forms = _thing_names_removed(*_name_words(name))
    for tier, entries in (
        ("identifier", _IDENTIFIER_WORDS),
        ("sensitive", _SENSITIVE_WORDS),
        ("quasi-identifier", _QUASI_IDENTIFIER_WORDS),
    ):
        match = _best_match(words, forms, entries)
        if match is not None:
            label, entry = match
            return tier, f"auto: name matches {entry!r} ({label})"
    if _is_datetime_dtype(dtype):
        return "quasi-identifier", _DATETIME_REASON
    return "standard", _STANDARD_REASON


def _tier_key(name) -> str | None:
    if not isinstance(name, str):
        return None
    key = re.sub(r"[\s_-]+", "-", name.strip().lower())
    return key if key in TIER_ORDER else None


def normalize_tier(name: str) -> str:
    """Return the canonical spelling of a tier name.

    Parameters
    ----------
    name : str
        A tier name in any case, with ``_``, ``-`` or spaces between words
        (``"Quasi_Identifier"`` -> ``"quasi-identifier"``).

    Returns
    -------
    str
        One of :data:`TIER_ORDER`.

    Raises
    ------
    PolicyError
        If ``name`` is not a tier; the message suggests the closest one.
    """
    key = _tier_key(name)
    if key is None:
        raise PolicyError(f"unknown tier {name!r}.{_tier_hint(name)} {_TIER_CHOICES}")
    return key


def _tier_hint(name) -> str:
    typed = re.sub(r"[\s_-]+", "-", name.strip().lower()) if isinstance(name, str) else str(name)
    # A prefix such as "quasi" is too short for difflib but still clear.
    prefixed = [t for t in TIER_ORDER if typed and t.startswith(typed)]
    if len(prefixed) == 1:
        return f" Did you mean '{prefixed[0]}'?"
    return close_match_hint(typed, TIER_ORDER)


# --------------------------------------------------------------------------------------------
# Validation


@dataclass(frozen=True)
class _Where:
    """Where a value came from, so that every error can point at it."""

    source: str
    path: str = ""
    dotted: bool = True  # TOML-style ``columns.age``; call arguments read ``bounds['age']``

    def child(self, key) -> _Where:
        if not self.dotted and self.path:
            return _Where(self.source, f"{self.path}[{key!r}]", self.dotted)
        part = key if isinstance(key, str) and re.fullmatch(r"[A-Za-z0-9_-]+", key) else _quote(key)
        return _Where(self.source, f"{self.path}.{part}" if self.path else part, self.dotted)

    def error(self, problem: str) -> PolicyError:
        where = f"{self.source}: {self.path}" if self.path else self.source
        return PolicyError(f"{where}: {problem}")


_NUMBER_TEXT = re.compile(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*")


def _quote(key) -> str:
    text = str(key).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def _plain(value):
    # numpy scalars become Python ones, so checks, messages and to_dict() see plain values.
    if isinstance(value, np.generic):
        value = value.item()
    return value


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _describe(value) -> str:
    value = _plain(value)
    if isinstance(value, bool):
        return f"{value!r} (a boolean, not a number)"
    if isinstance(value, str) and _NUMBER_TEXT.fullmatch(value):
        return f"{value!r} (a string; write the number without quotes)"
    return repr(value)


def _table(value, where: _Where, example: str) -> Mapping:
    value = _from_dataclass(value)
    if not isinstance(value, Mapping):
        raise where.error(f"must be a table, got {_describe(value)}. Write e.g. {example}.")
    return value


def _from_dataclass(value):
    # Lets Policy(tiers=other.tiers, purposes=other.purposes, columns=other.columns) work.
    if isinstance(value, Tier):
        fields = {"multiplier": value.multiplier, "max_share": value.max_share}
        return {**fields, "missing_bounds": value.missing_bounds}
    if isinstance(value, Purpose):
        return {"epsilon": value.epsilon, "description": value.description, "reserve": value.reserve}
    if isinstance(value, ColumnPolicy):
        return {"tier": value.tier, "bounds": value.bounds, "categories": value.categories}
    return value


def _check_keys(table: Mapping, allowed: tuple[str, ...], where: _Where) -> None:
    section = f"in [{where.path}]" if where.path else "at the top level"
    for key in table:
        if key not in allowed:
            hint = close_match_hint(key, allowed)
            raise where.child(key).error(
                f"unknown key {key!r} {section}.{hint} Allowed keys: {', '.join(allowed)}."
            )


def _positive(value, where: _Where, example: str) -> float:
    value = _plain(value)
    if not _is_number(value) or not math.isfinite(value) or value <= 0:
        raise where.error(
            f"must be a finite number > 0, got {_describe(value)}. Write e.g. {example}."
        )
    return float(value)


def _as_list(value) -> list | None:
    if isinstance(value, (str, bytes, Mapping, set, frozenset)):
        return None
    if hasattr(value, "tolist"):  # numpy arrays, pandas Index and Series
        value = value.tolist()
        return value if isinstance(value, list) else None
    if isinstance(value, Iterable):
        return [_plain(v) for v in value]
    return None


def _bounds(value, where: _Where, column) -> tuple[float, float]:
    items = _as_list(value)
    if (
        items is None
        or len(items) != 2
        or not all(_is_number(v) and math.isfinite(v) for v in items)
    ):
        raise where.error(
            f"bounds for column {column!r} must be two finite numbers [low, high], "
            f"got {_describe(value)}. Write e.g. bounds = [0, 110]."
        )
    low, high = items
    if low > high:
        raise where.error(
            f"reversed bounds [{low!r}, {high!r}] for column {column!r}: write [{high!r}, {low!r}]."
        )
    return float(low), float(high)


def _categories(value, where: _Where, column) -> tuple:
    example = 'categories = ["asthma", "copd", "diabetes"]'
    items = _as_list(value)
    if items is None:
        why = ""
        if isinstance(value, (set, frozenset)):
            why = " (a set has no order; a list keeps yours in the output)"
        raise where.error(
            f"categories for column {column!r} must be a list of group keys, "
            f"got {_describe(value)}{why}. Write e.g. {example}."
        )
    if not items:
        raise where.error(
            f"categories for column {column!r} are empty: list every group key, e.g. {example}."
        )
    seen: dict = {}
    for item in items:
        if isinstance(item, str):
            item = str(item)  # numpy.str_ is a str subclass; keep plain str
        if not isinstance(item, (str, int, float, bool)):
            raise where.error(
                f"category {item!r} for column {column!r} is not a string, number or boolean. "
                f"Write e.g. {example}."
            )
        if isinstance(item, float) and math.isnan(item):
            raise where.error(
                f"NaN cannot be a category for column {column!r}: remove it from the list."
            )
        # Python treats 1, 1.0 and True as the same key, and so do pandas groupbys.
        if item in seen:
            raise where.error(
                f"category {item!r} for column {column!r} repeats {seen[item]!r}: "
                "list each group key once."
            )
        seen[item] = item
    return tuple(seen)


def _column_tier(value, where: _Where, column) -> str:
    key = _tier_key(value)
    if key is None:
        raise where.error(
            f"unknown tier {value!r} for column {column!r}.{_tier_hint(value)} {_TIER_CHOICES}"
        )
    return key


def _parse_tiers(tiers, where: _Where) -> dict[str, Tier]:
    result = dict(_BUILTIN_TIERS)
    if tiers is None:
        return result
    table = _table(tiers, where, "[tiers.sensitive] with multiplier = 0.25")
    given_as: dict[str, Any] = {}
    for raw_name, spec in table.items():
        here = where.child(raw_name)
        name = _tier_key(raw_name)
        if name is None:
            raise here.error(f"unknown tier {raw_name!r}.{_tier_hint(raw_name)} {_TIER_CHOICES}")
        if name in given_as:
            raise here.error(
                f"tier {name!r} is given twice (as {given_as[name]!r} and {raw_name!r}): keep one."
            )
        given_as[name] = raw_name
        spec = _table(spec, here, f"[tiers.{name}] with multiplier = 0.5")
        _check_keys(spec, ("multiplier", "max_share", "missing_bounds"), here)
        base = result[name]

        multiplier = base.multiplier
        if name == "identifier":
            if spec.get("multiplier") is not None:
                raise here.child("multiplier").error(
                    "identifiers are never released, so the identifier tier has no multiplier: "
                    "remove this setting. To release a column that is not an identifier, give it "
                    'another tier, e.g. tier = "standard" under [columns.<name>].'
                )
        elif "multiplier" in spec:
            multiplier = _positive(spec["multiplier"], here.child("multiplier"), "multiplier = 0.5")

        max_share = base.max_share
        if spec.get("max_share") is not None:
            value = _plain(spec["max_share"])
            if not (_is_number(value) and 0 < value <= 1):
                raise here.child("max_share").error(
                    f"must be a share of the dataset budget in (0, 1], got {_describe(value)}. "
                    "Write e.g. max_share = 0.5, or leave it out for no cap."
                )
            max_share = float(value)

        missing_bounds = spec.get("missing_bounds", base.missing_bounds)
        if missing_bounds not in _MISSING_BOUNDS_ACTIONS:
            hint = close_match_hint(missing_bounds, _MISSING_BOUNDS_ACTIONS)
            raise here.child("missing_bounds").error(
                f"must be 'refuse' or 'estimate', got {_describe(missing_bounds)}.{hint}"
            )
        result[name] = Tier(name, multiplier, max_share, missing_bounds)
    return result


def _parse_purposes(purposes, where: _Where) -> dict[str, Purpose]:
    result = dict(_BUILTIN_PURPOSES)
    if purposes is None:
        return result
    table = _table(purposes, where, "[purposes.explore] with epsilon = 0.1")
    for name, spec in table.items():
        here = where.child(name)
        if not isinstance(name, str) or not name.strip():
            raise here.error(f"purpose names must be non-empty strings, got {name!r}.")
        spec = _table(spec, here, f"[purposes.{name}] with epsilon = 0.2")
        _check_keys(spec, ("epsilon", "description", "reserve"), here)
        base = result.get(name)
        if "epsilon" in spec:
            epsilon = _positive(spec["epsilon"], here.child("epsilon"), "epsilon = 0.1")
        elif base is not None:
            epsilon = base.epsilon
        else:
            raise here.error(
                f"new purpose {name!r} needs an epsilon. Write e.g. epsilon = 0.2 under "
                f"[purposes.{name}]."
            )
        description = spec.get("description", base.description if base else "")
        if not isinstance(description, str):
            raise here.child("description").error(
                f"must be a string, got {_describe(description)}. "
                'Write e.g. description = "numbers for the quarterly report".'
            )
        reserve = base.reserve if base else 0.0
        if "reserve" in spec:
            reserve = _reserve(spec["reserve"], here.child("reserve"))
        result[name] = Purpose(name, epsilon, description, reserve)
    _check_reserves_total(result, where)
    return result


def _reserve(value, where: _Where) -> float:
    value = _plain(value)
    if not (_is_number(value) and 0 <= value < 1):
        raise where.error(
            f"must be a share of the dataset budget with 0 <= reserve < 1, got {_describe(value)}. "
            "Write e.g. reserve = 0.3 to keep 30% of the budget for this purpose, or leave it out."
        )
    return float(value)


def _check_reserves_total(purposes: Mapping[str, Purpose], where: _Where) -> None:
    reserved = {name: p.reserve for name, p in purposes.items() if p.reserve > 0}
    # Exact decimals: 0.7 + 0.3 is 1.0 as the user wrote it, whatever binary floats make of it.
    if sum(Fraction(repr(share)) for share in reserved.values()) >= 1:
        listed = ", ".join(f"{name} {share:g}" for name, share in reserved.items())
        raise where.error(
            f"the purposes' reserves add up to 1 or more ({listed}), which would leave no budget for "
            "any other release. Lower them so that they add up to less than 1, e.g. reserve = 0.3."
        )


def _parse_columns(columns, where: _Where) -> dict[str, ColumnPolicy]:
    result: dict[str, ColumnPolicy] = {}
    if columns is None:
        return result
    table = _table(columns, where, '[columns.age] with tier = "quasi-identifier"')
    for name, spec in table.items():
        here = where.child(name)
        spec = _table(spec, here, f'[columns.{name}] with tier = "sensitive"')
        _check_keys(spec, ("tier", "bounds", "categories"), here)
        tier = spec.get("tier")
        bounds = spec.get("bounds")
        categories = spec.get("categories")
        if tier is not None:
            tier = _column_tier(tier, here.child("tier"), name)
        if bounds is not None:
            bounds = _bounds(bounds, here.child("bounds"), name)
        if categories is not None:
            categories = _categories(categories, here.child("categories"), name)
        source = "policy" if tier is not None else None
        result[name] = ColumnPolicy(name, tier, bounds, categories, source)
    return result


# --------------------------------------------------------------------------------------------
# The policy


class Policy:
    """Tiers, purposes and per-column metadata of one protected table.

    Parameters
    ----------
    columns : mapping, optional
        ``{column: {"tier": ..., "bounds": (low, high), "categories": [...]}}``; every key of
        the inner mapping is optional. Columns left out, or declared without a tier, are
        classified from their name and dtype (see :func:`classify`).
    tiers : mapping, optional
        ``{tier: {"multiplier": ..., "max_share": ..., "missing_bounds": ...}}``, merged over
        the built-in tiers.
    purposes : mapping, optional
        ``{purpose: {"epsilon": ..., "description": ..., "reserve": ...}}``, merged over the
        built-in purposes ``explore`` (epsilon 0.1) and ``publish`` (epsilon 0.5), which reserve
        nothing. ``reserve`` is the share of the budget only that purpose may spend; the reserves
        add up to less than 1.
    default_purpose : str, default "explore"
        The purpose used when a release names none.

    Raises
    ------
    PolicyError
        If any value is invalid; the message names the key and what to write instead.

    Examples
    --------
    >>> policy = Policy(columns={"age": {"tier": "quasi-identifier", "bounds": (0, 110)}})
    >>> policy.default_epsilon(purpose="explore", tiers=["quasi-identifier", "standard"])
    0.05
    """

    def __init__(self, *, columns=None, tiers=None, purposes=None, default_purpose="explore"):
        self._setup(
            columns=columns,
            tiers=tiers,
            purposes=purposes,
            default_purpose=default_purpose,
            where=_Where("Policy(...)"),
        )

    def _setup(self, *, columns, tiers, purposes, default_purpose, where: _Where) -> None:
        self._tiers = MappingProxyType(_parse_tiers(tiers, where.child("tiers")))
        self._purposes = MappingProxyType(_parse_purposes(purposes, where.child("purposes")))
        self._columns = MappingProxyType(_parse_columns(columns, where.child("columns")))
        if not isinstance(default_purpose, str) or default_purpose not in self._purposes:
            hint = close_match_hint(default_purpose, self._purposes)
            raise where.child("default_purpose").error(
                f"unknown purpose {default_purpose!r}.{hint} Known purposes: "
                f"{', '.join(self._purposes)}; pick one, or define it with an epsilon under "
                f"[purposes.{default_purpose}]."
            )
        self._default_purpose = default_purpose

    @classmethod
    def builtin(cls) -> Policy:
        """Return the built-in policy: no declared columns, built-in tiers and purposes."""
        return cls()

    @classmethod
    def from_dict(cls, data: Mapping, *, source: str = "<dict>") -> Policy:
        """Build a policy from plain data with the same layout as a policy TOML file.

        Parameters
        ----------
        data : mapping
            Optional keys ``default_purpose``, ``purposes``, ``tiers`` and ``columns``.
        source : str, default "<dict>"
            Named in error messages, e.g. the file the data was read from.

        Returns
        -------
        Policy

        Raises
        ------
        PolicyError
            On any unknown key or invalid value.
        """
        where = _Where(source)
        data = _table(data, where, '{"columns": {"age": {"bounds": [0, 110]}}}')
        _check_keys(data, ("default_purpose", "purposes", "tiers", "columns"), where)
        policy = cls.__new__(cls)
        policy._setup(
            columns=data.get("columns"),
            tiers=data.get("tiers"),
            purposes=data.get("purposes"),
            default_purpose=data.get("default_purpose", "explore"),
            where=where,
        )
        return policy

    @classmethod
    def from_toml(cls, path) -> Policy:
        """Load a policy from a TOML file.

        Parameters
        ----------
        path : str or os.PathLike
            The policy file.

        Returns
        -------
        Policy

        Raises
        ------
        PolicyError
            If the file cannot be read, is not valid TOML, or holds an unknown key or invalid
            value; the message names the file and the key.
        """
        source = os.fsdecode(path)
        try:
            with open(path, "rb") as file:
                data = tomllib.load(file)
        except FileNotFoundError:
            raise PolicyError(
                f"{source}: no such policy file (looked for {os.path.abspath(source)}). "
                "Check the path, or write the policy in Python with dp.Policy(columns=...)."
            ) from None
        except OSError as err:
            raise PolicyError(f"{source}: cannot read the policy file: {err.strerror}.") from None
        except UnicodeDecodeError:
            raise PolicyError(f"{source}: not UTF-8 text; save the policy file as UTF-8.") from None
        except tomllib.TOMLDecodeError as err:
            raise PolicyError(
                f"{source}: invalid TOML: {err}. Strings need quotes, lists use [ ], and each "
                "setting is key = value on its own line."
            ) from None
        return cls.from_dict(data, source=source)

    def with_columns(self, *, bounds=None, categories=None, tiers=None) -> Policy:
        """Return a new policy with call-level column settings over this one's.

        This policy is left unchanged.

        Parameters
        ----------
        bounds : mapping, optional
            ``{column: (low, high)}``.
        categories : mapping, optional
            ``{column: [key, ...]}``.
        tiers : mapping, optional
            ``{column: tier}``. These columns report ``tier_source == "call"``.

        Returns
        -------
        Policy

        Raises
        ------
        PolicyError
            If a value is invalid.
        """
        declared = dict(self._columns)
        where = _Where("call arguments", dotted=False)
        for argument, field, values, parse, example in (
            ("bounds", "bounds", bounds, _bounds, "bounds={'age': (0, 110)}"),
            ("categories", "categories", categories, _categories, "categories={'ward': ['A']}"),
            ("tiers", "tier", tiers, _column_tier, "tiers={'age': 'standard'}"),
        ):
            if values is None:
                continue
            here = where.child(argument)
            for column, value in _table(values, here, example).items():
                if value is None:
                    continue
                old = declared.get(column) or ColumnPolicy(column, None, None, None, None)
                changes = {field: parse(value, here.child(column), column)}
                if field == "tier":
                    changes["tier_source"] = "call"
                declared[column] = replace(old, **changes)
        policy = type(self).__new__(type(self))
        policy._tiers = self._tiers
        policy._purposes = self._purposes
        policy._columns = MappingProxyType(declared)
        policy._default_purpose = self._default_purpose
        return policy

    def resolve(self, name: str, dtype=None) -> ColumnPolicy:
        """Return the tier and metadata of a column.

        Parameters
        ----------
        name : str
            Column name.
        dtype : numpy or pandas dtype, optional
            Used only when the column has no declared tier.

        Returns
        -------
        ColumnPolicy
            The declared tier if there is one (``tier_source`` ``"policy"`` or ``"call"``),
            otherwise the one from :func:`classify` (``tier_source`` ``"auto: ..."``), with any
            declared bounds and categories.
        """
        declared = self._columns.get(name)
        if declared is not None and declared.tier is not None:
            tier, tier_source = declared.tier, declared.tier_source
        else:
            tier, tier_source = classify(name, dtype)
        return ColumnPolicy(
            name=name,
            tier=tier,
            bounds=declared.bounds if declared else None,
            categories=declared.categories if declared else None,
            tier_source=tier_source,
        )

    def tier(self, name: str) -> Tier:
        """Return a tier by name; ``"quasi_identifier"`` and case differences are accepted.

        Raises
        ------
        PolicyError
            If there is no such tier; the message suggests the closest one.
        """
        return self._tiers[normalize_tier(name)]

    def purpose(self, name: str | None = None) -> Purpose:
        """Return a purpose by name, or the default purpose when ``name`` is ``None``.

        Raises
        ------
        PolicyError
            If there is no such purpose; the message lists the purposes.
        """
        if name is None:
            name = self._default_purpose
        if isinstance(name, str) and name in self._purposes:  # not `in` alone: an unhashable name raises
            return self._purposes[name]
        if isinstance(name, str):
            for known, purpose in self._purposes.items():
                if known.casefold() == name.strip().casefold():
                    return purpose
        known = ", ".join(f"{p.name} (epsilon {p.epsilon:g})" for p in self._purposes.values())
        raise PolicyError(
            f"unknown purpose {name!r}.{close_match_hint(name, self._purposes)} "
            f"Purposes in this policy: {known}. Define others under [purposes.<name>] with an "
            "epsilon."
        )

    def strictest(self, tier_names) -> str:
        """Return the strictest of some tier names, by :data:`TIER_ORDER`.

        An empty iterable gives ``"standard"``.
        """
        if isinstance(tier_names, str):
            tier_names = [tier_names]
        names = [normalize_tier(t) for t in tier_names]
        return max(names, key=TIER_ORDER.index, default="standard")

    def default_epsilon(self, *, purpose: str | None, tiers) -> float:
        """Return the default epsilon of a release.

        Parameters
        ----------
        purpose : str or None
            Purpose name; ``None`` means the default purpose.
        tiers : iterable of str
            The tiers of the columns the release touches.

        Returns
        -------
        float
            The purpose's epsilon times the multiplier of the strictest tier.

        Raises
        ------
        PolicyError
            If the strictest tier is ``identifier``: identifiers are never released.
        """
        epsilon = self.purpose(purpose).epsilon
        multiplier = self._tiers[self.strictest(tiers)].multiplier
        if multiplier is None:
            raise PolicyError(_IDENTIFIER_REFUSAL)
        return epsilon * multiplier

    @property
    def default_purpose(self) -> str:
        """The purpose used when a release names none."""
        return self._default_purpose

    def purpose_reserves(self) -> dict[str, float]:
        """Return the share of the budget reserved for each purpose that reserves any.

        Returns
        -------
        dict of str to float
            ``{purpose: reserve}`` for the purposes with ``reserve > 0`` (none in the built-in
            policy); what :meth:`Accountant.charge <jupyter_dpmagic.accountant.Accountant.charge>`
            takes as ``purpose_reserves``.
        """
        return {name: p.reserve for name, p in self._purposes.items() if p.reserve > 0}

    @property
    def purposes(self) -> Mapping[str, Purpose]:
        """All purposes, built-in and declared, by name (read-only)."""
        return self._purposes

    @property
    def tiers(self) -> Mapping[str, Tier]:
        """All tiers in :data:`TIER_ORDER` order, by name (read-only)."""
        return self._tiers

    @property
    def columns(self) -> Mapping[str, ColumnPolicy]:
        """Declared columns only, before auto-classification (read-only).

        An entry's ``tier`` is ``None`` when only bounds or categories were declared.
        """
        return self._columns

    def to_dict(self) -> dict:
        """Return the policy as plain data that :meth:`from_dict` accepts.

        Every tier and purpose is written out, built-in or not; ``None`` values are left out
        (TOML has no null). ``tier_source`` is not kept: a ``"call"`` tier comes back as
        ``"policy"``.
        """
        tiers = {}
        for tier in self._tiers.values():
            entry = {
                "multiplier": tier.multiplier,
                "max_share": tier.max_share,
                "missing_bounds": tier.missing_bounds,
            }
            tiers[tier.name] = {key: value for key, value in entry.items() if value is not None}
        columns = {}
        for name, column in self._columns.items():
            entry = {
                "tier": column.tier,
                "bounds": list(column.bounds) if column.bounds is not None else None,
                "categories": list(column.categories) if column.categories is not None else None,
            }
            columns[name] = {key: value for key, value in entry.items() if value is not None}
        return {
            "default_purpose": self._default_purpose,
            "purposes": {
                p.name: {"epsilon": p.epsilon, "description": p.description, "reserve": p.reserve}
                for p in self._purposes.values()
            },
            "tiers": tiers,
            "columns": columns,
        }

    def __eq__(self, other) -> bool:
        if not isinstance(other, Policy):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None

    def __repr__(self) -> str:
        return (
            f"Policy(default_purpose={self._default_purpose!r}, "
            f"purposes={list(self._purposes)}, columns={list(self._columns)})"
        )
