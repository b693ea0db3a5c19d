"""Privacy accounting: what a release costs, what a budget allows, what is left.

A budget is either

* **pure** (``delta == 0``): amounts are epsilon and the epsilons of releases add up (sequential
  composition), or
* **zcdp** (``delta > 0``): amounts are rho of zero-concentrated differential privacy, the rhos of
  releases add up (zCDP composition), and the budget's cap is the largest rho such that rho-zCDP
  implies ``(epsilon, delta)``-DP. A pure epsilon-DP release costs ``rho = epsilon**2 / 2``
  (Bun & Steinke 2016, Proposition 1.4); a Gaussian release reports its own rho.

Both compositions hold when each query, including its epsilon, is chosen after seeing the answers
to the earlier ones. The accountant is therefore a *privacy filter*: it refuses any release that
would take the running total past the cap, and so the whole interaction, however adaptive, keeps
the budget's guarantee (Rogers, Roth, Ullman & Vadhan 2016 for pure epsilon; Feldman & Zrnic 2021
and Whitehouse, Ramdas, Rogers & Wu 2023 for zCDP).

All conversions err on the safe side: a charge is rounded up and a cap down to whole units of
``1e-12`` (of the decimal value a float prints as, see ``_decimal``), and the zCDP conversions are
upper bounds on epsilon and delta, lower bounds on rho.

A zCDP budget keeps ``SELECTION_DELTA_SHARE`` of its delta in reserve for releases that spend a
delta of their own besides rho: DP partition selection, which shows a group only if its noisy
count passes a threshold, is ``(rho, delta_sel)``-approximately zCDP (Bun & Steinke 2016,
Definition 8.1: with probability at least ``1 - delta_sel`` over a coupling it behaves as a
rho-zCDP release). Why the budget still holds under adaptive choice: each release's ``delta_sel``
is fixed before it runs, and the ledger refuses any release that would take the deltas spent past
the reserve, so by a union bound over the releases actually made (their deltas add up to at most
the reserve whatever the analyst chose) the probability that any of them leaves its rho-zCDP
coupling is at most the reserve. Outside that event every release is rho-zCDP, and the zCDP filter
above keeps the total rho within the cap, which converts to ``(epsilon_total, conversion_delta)``.
The whole interaction is therefore ``(epsilon_total, conversion_delta + reserve)``-DP, and
``conversion_delta + reserve = delta_total``.
"""

from __future__ import annotations

import functools
import html
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction


from .errors import BudgetExceededError, PolicyError
from .ledger import DELTA_UNITS_PER_ONE, UNITS_PER_ONE, BudgetRecord, ChargeRecord, DatasetCap, SQLiteLedger

__all__ = [
    "SELECTION_DELTA_SHARE",
    "SELECTION_RELEASES",
    "Accountant",
    "BudgetStatus",
    "DatasetBudget",
    "Cost",
    "check_delta",
    "check_epsilon",
    "epsilon_delta_to_rho",
    "rho_to_delta",
    "rho_to_epsilon",
    "units_ceil",
    "units_floor",
]

# Floating-point evaluation of a bound can be off by a few ulps; inflating the result by this
# relative margin keeps it an upper bound.
_ROUND_UP = 1.0 + 1e-12
# epsilon_delta_to_rho gives up this relative fraction of rho so that the cap stays sound whatever
# the residual error of bisection and of the conversion itself.
_RHO_MARGIN = 1e-9

SELECTION_DELTA_SHARE = 0.1
"""Share of a zCDP budget's delta reserved for DP partition selection; the rest converts rho."""

SELECTION_RELEASES = 100
"""The partition-selection reserve is split into this many equal per-release deltas."""


# -- exact units -----------------------------------------------------------------------------------


def _decimal(x: float) -> Fraction:
    # A float is read as the shortest decimal that prints as it (0.1 is exactly 1/10), which is what
    # the user typed. Read in binary, 0.1 is slightly more than 1/10 and 0.7 slightly less than 7/10,
    # so ten charges of 0.1 would not fit in a budget of 1.0, nor ten of 0.07 in 0.7. The two
    # readings differ by at most half an ulp (a relative 1.1e-16), so the binary values of all
    # charges can exceed the binary value of a cap by at most a relative 2.3e-16; the noise scale a
    # mechanism derives from epsilon in floating point carries rounding of the same size anyway.
    return Fraction(repr(x))


def _positive_finite(x: object, what: str) -> float:
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise PolicyError(f"{what} must be a finite number greater than 0 (got {x!r})")
    value = float(x)
    if not math.isfinite(value) or value <= 0:
        raise PolicyError(f"{what} must be a finite number greater than 0 (got {value!r})")
    return value


def _ceil_units(amount: Fraction) -> int:
    return math.ceil(amount * UNITS_PER_ONE)


def units_ceil(x: float) -> int:
    """Return the whole units a charge of ``x`` takes, rounded up.

    Parameters
    ----------
    x : float
        A positive, finite amount of epsilon or rho.

    Returns
    -------
    int
        ``ceil(x * UNITS_PER_ONE)``, computed exactly with ``x`` read as the decimal it prints as
        (``0.1`` is exactly ``1/10``).

    Raises
    ------
    PolicyError
        For NaN, infinity, zero, negative values and booleans.
    """
    return _ceil_units(_decimal(_positive_finite(x, "a charge")))


def units_floor(x: float) -> int:
    """Return the whole units a cap of ``x`` allows, rounded down.

    Parameters
    ----------
    x : float
        A positive, finite amount of epsilon or rho.

    Returns
    -------
    int
        ``floor(x * UNITS_PER_ONE)``, computed exactly with ``x`` read as the decimal it prints as;
        0 for caps below one unit.

    Raises
    ------
    PolicyError
        For NaN, infinity, zero, negative values and booleans.
    """
    return math.floor(_decimal(_positive_finite(x, "a cap")) * UNITS_PER_ONE)


# -- zCDP conversions ------------------------------------------------------------------------------
#
# Canonne, Kamath & Steinke 2020, "The discrete Gaussian for differential privacy", Proposition 12
# and Corollary 13: rho-zCDP implies (epsilon, delta)-DP whenever, for some alpha > 1,
#     delta >= exp((alpha-1)(alpha*rho - epsilon)) / (alpha-1) * (1 - 1/alpha)**alpha.
# Every alpha gives a valid pair, so a numerical search over alpha can only lose tightness, never
# soundness. We search over s = log(alpha - 1), which keeps the function well scaled whether the
# best alpha is 1.001 or 1e6.


def _check_rho(rho: object) -> float:
    if isinstance(rho, bool) or not isinstance(rho, numbers.Real) or not (math.isfinite(rho) and rho >= 0):
        raise PolicyError(f"rho must be a finite number at least 0 (got {rho!r})")
    return float(rho)


def _epsilon_at(s: float, rho: float, log_inv_delta: float) -> float:
    t = math.exp(s)  # alpha - 1
    # log(1 - 1/alpha) = -log1p(1/t), accurate for large alpha as well.
    return (1.0 + t) * rho + (log_inv_delta - math.log1p(t)) / t - math.log1p(1.0 / t)


def _log_delta_at(s: float, rho: float, epsilon: float) -> float:
    t = math.exp(s)  # alpha - 1
    return t * ((1.0 + t) * rho - epsilon) - s - (1.0 + t) * math.log1p(1.0 / t)


def _minimise(f: Callable[[float], float], centre: float) -> float:
    """Smallest value of ``f`` found on a log grid around ``centre``, refined by a bounded search."""

    def safe(s: float) -> float:
        # Far from the optimum the terms can overflow; such points are simply not candidates.
        try:
            value = f(s)
        except OverflowError:
            return math.inf
        return value if not math.isnan(value) else math.inf

    step, half_width = 0.125, 14.0
    centre = min(max(centre, -600.0), 600.0)
    grid = [centre + step * i for i in range(-int(half_width / step), int(half_width / step) + 1)]
    values = [safe(s) for s in grid]
    best = min(range(len(grid)), key=values.__getitem__)
    from scipy.optimize import minimize_scalar  # only zCDP budgets need it; it costs 0.6 s to import

    found = minimize_scalar(
        safe,
        bounds=(grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]),
        method="bounded",
        options={"xatol": 1e-10},
    )
    candidates = [values[best]]
    if math.isfinite(found.fun):
        candidates.append(float(found.fun))
    return min(candidates)


def _classic_epsilon(rho: float, log_inv_delta: float) -> float:
    # Bun & Steinke 2016, Proposition 1.3.
    return rho + 2.0 * math.sqrt(rho * log_inv_delta)


def rho_to_epsilon(rho: float, delta: float) -> float:
    """Return an epsilon such that rho-zCDP implies ``(epsilon, delta)``-DP.

    Uses the conversion of Canonne, Kamath & Steinke (2020, Corollary 13), minimised numerically
    over its order alpha, and never returns more than Bun & Steinke's
    ``rho + 2 * sqrt(rho * log(1/delta))``. Both are valid, so the result is an upper bound on the
    tightest epsilon.

    Parameters
    ----------
    rho : float
        zCDP parameter, at least 0.
    delta : float
        Target delta. 0 gives infinity (unless ``rho == 0``); 1 or more gives 0.

    Returns
    -------
    float
        The epsilon; 0 when ``rho == 0``.
    """
    rho = _check_rho(rho)
    delta = _check_unit_interval(delta, "delta")
    if rho == 0 or delta >= 1:
        return 0.0
    if delta == 0:
        return math.inf
    log_inv_delta = -math.log(delta)
    centre = 0.5 * math.log(log_inv_delta / rho)  # the order that is optimal for the classic bound
    tight = _minimise(lambda s: _epsilon_at(s, rho, log_inv_delta), centre)
    return max(0.0, min(tight, _classic_epsilon(rho, log_inv_delta)) * _ROUND_UP)


def rho_to_delta(rho: float, epsilon: float) -> float:
    """Return a delta such that rho-zCDP implies ``(epsilon, delta)``-DP.

    Uses Canonne, Kamath & Steinke (2020, Corollary 13), minimised numerically over its order
    alpha, and never returns more than Bun & Steinke's ``exp(-(epsilon - rho)**2 / (4 * rho))``.

    Parameters
    ----------
    rho : float
        zCDP parameter, at least 0.
    epsilon : float
        Target epsilon, at least 0.

    Returns
    -------
    float
        The delta, at most 1; 0 when ``rho == 0``.
    """
    rho = _check_rho(rho)
    if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real) or not epsilon >= 0:
        raise PolicyError(f"epsilon must be a number at least 0 (got {epsilon!r})")
    epsilon = float(epsilon)
    if rho == 0 or epsilon == math.inf:
        return 0.0
    # Stationary point of the dominant terms t**2 rho + t (rho - epsilon) - log t, t = alpha - 1.
    centre = math.log(((epsilon - rho) + math.sqrt((epsilon - rho) ** 2 + 8.0 * rho)) / (4.0 * rho))
    log_delta = _minimise(lambda s: _log_delta_at(s, rho, epsilon), centre)
    if epsilon > rho:
        log_delta = min(log_delta, -((epsilon - rho) ** 2) / (4.0 * rho))
    if log_delta >= 0:
        return 1.0
    return min(1.0, math.exp(log_delta) * _ROUND_UP)


def epsilon_delta_to_rho(epsilon: float, delta: float) -> float:
    """Return the largest rho found such that rho-zCDP implies ``(epsilon, delta)``-DP.

    Bisection on :func:`rho_to_epsilon`, keeping only values it has checked, then reduced by a
    relative ``1e-9``; a lower bound, so a cap computed from it is sound.

    Parameters
    ----------
    epsilon : float
        Finite, greater than 0.
    delta : float
        Strictly between 0 and 1.

    Returns
    -------
    float
        The rho.
    """
    epsilon = check_epsilon(epsilon)
    delta = check_delta(delta)
    if delta == 0:
        raise PolicyError(
            "zCDP needs delta > 0 to convert to (epsilon, delta)-DP; pass e.g. delta=1e-6, "
            "or use a pure epsilon budget (delta=0)"
        )
    return _rho_for(epsilon, delta)


@functools.lru_cache(maxsize=256)
def _rho_for(epsilon: float, delta: float) -> float:
    # Cached: caps are recomputed for every cell and tier, and the bisection costs milliseconds.
    log_inv_delta = -math.log(delta)
    # The classic bound is looser, so its rho is a valid start: it meets the target here too.
    lo = (math.sqrt(log_inv_delta + epsilon) - math.sqrt(log_inv_delta)) ** 2
    if not rho_to_epsilon(lo, delta) <= epsilon:
        lo = 0.0
    hi = max(2.0 * lo, epsilon)
    while rho_to_epsilon(hi, delta) <= epsilon:
        lo, hi = hi, 2.0 * hi
    while hi - lo > 1e-13 * hi:
        mid = 0.5 * (lo + hi)
        if rho_to_epsilon(mid, delta) <= epsilon:
            lo = mid
        else:
            hi = mid
    return lo * (1.0 - _RHO_MARGIN)


# -- validation ------------------------------------------------------------------------------------


def _as_float(value: object) -> float:
    """A real number as a float (inf when too large for one); NaN for anything else."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _shown(value: object) -> str:
    number = _as_float(value)
    return repr(value) if math.isnan(number) else repr(number)


def check_epsilon(value: object, *, what: str = "epsilon") -> float:
    """Return ``value`` as a float if it is a valid epsilon.

    Parameters
    ----------
    value : object
        Must be a real number (not a bool), finite and greater than 0.
    what : str, optional
        The parameter's name, for the error message.

    Raises
    ------
    PolicyError
        Otherwise, saying what a valid value looks like.
    """
    number = _as_float(value)
    if not (math.isfinite(number) and number > 0):
        raise PolicyError(
            f"{what} must be a finite number greater than 0 (got {_shown(value)}); pass e.g. {what}=0.1"
        )
    return number


def check_delta(value: object, *, what: str = "delta") -> float:
    """Return ``value`` as a float if it is a valid delta.

    Parameters
    ----------
    value : object
        Must be a real number (not a bool) with ``0 <= value < 1``. Values much smaller than one
        over the number of rows (e.g. 1e-6) are usual; larger ones are accepted.
    what : str, optional
        The parameter's name, for the error message.

    Raises
    ------
    PolicyError
        Otherwise, saying what a valid value looks like.
    """
    number = _as_float(value)
    if not (math.isfinite(number) and 0 <= number < 1):
        raise PolicyError(
            f"{what} must be a finite number with 0 <= {what} < 1 (got {_shown(value)}); "
            f"pass e.g. {what}=1e-6, or {what}=0 for pure epsilon"
        )
    return number


def _check_unit_interval(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0:
        raise PolicyError(f"{what} must be a number at least 0 (got {value!r})")
    return float(value)


# -- costs and budgets -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Cost:
    """What one release spends, as its mechanism reports it.

    Attributes
    ----------
    epsilon : float
        The release's epsilon. For a Gaussian release, the epsilon at ``delta`` (informational:
        a zCDP budget charges ``rho``).
    delta : float, default 0.0
        The release's delta.
    rho : float or None, default None
        zCDP rho for Gaussian or other zCDP mechanisms; None for pure epsilon releases.
    """

    epsilon: float
    delta: float = 0.0
    rho: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "epsilon", check_epsilon(self.epsilon))
        object.__setattr__(self, "delta", check_delta(self.delta))
        if self.rho is not None:
            object.__setattr__(self, "rho", _positive_finite(self.rho, "rho"))


@dataclass(frozen=True, repr=False)
class BudgetStatus:
    """What is spent and left of one budget; what ``dp.budget(NAME)`` returns.

    Attributes
    ----------
    name, user, mode : str
        The budget and its kind (``"pure"`` or ``"zcdp"``).
    epsilon_total, epsilon_spent, epsilon_remaining : float
        In epsilon; for zCDP budgets ``epsilon_spent`` is the epsilon (at the budget's conversion
        delta, see :attr:`BudgetRecord.conversion_delta`) of everything released so far.
    delta_total, delta_spent : float
        ``delta_spent`` is the delta (at ``epsilon_total``) of everything released so far: that of
        the rho spent, plus the delta partition selection spent.
    rho_total, rho_spent : float or None
        zCDP amounts; None for pure budgets.
    releases : int
        Number of releases charged.
    tier_spent, purpose_spent : dict of str to float
        Epsilon-equivalent spent per policy tier and per purpose (for zCDP budgets, the epsilon of
        that rho on its own, as ``epsilon_spent``).
    selection_delta_total, selection_delta_spent : float
        The part of ``delta_total`` reserved for DP partition selection, and what it has spent of
        it; 0 for pure budgets and for budgets without a reserve.
    tier_remaining, purpose_remaining : dict of str to float
        What each tier and purpose may still spend, given the tiers' caps and the purposes'
        reserves, in the epsilon a release asks for: epsilon for pure budgets, the share of the
        budget's rho for zCDP budgets (as in :attr:`epsilon_share_spent`). A tier may spend what is
        left within its cap; a purpose what is left less what the other purposes' reserves still
        hold (a reserve holds its share less what its purpose has spent).
    tier_asked, purpose_asked : dict of str to float
        The epsilons releases asked for per tier and per purpose, in the terms of the remaining
        amounts; equal to ``tier_spent`` and ``purpose_spent`` for pure budgets.
    tier_shares, purpose_reserves : dict of str to float
        The tier caps and purpose reserves (shares of the budget) the remaining amounts allow for.
    """

    name: str
    user: str
    mode: str
    epsilon_total: float
    epsilon_spent: float
    epsilon_remaining: float
    delta_total: float
    delta_spent: float
    rho_total: float | None
    rho_spent: float | None
    releases: int
    tier_spent: dict[str, float]
    purpose_spent: dict[str, float]
    selection_delta_total: float = 0.0
    selection_delta_spent: float = 0.0
    tier_remaining: dict[str, float] = field(default_factory=dict)
    purpose_remaining: dict[str, float] = field(default_factory=dict)
    tier_asked: dict[str, float] = field(default_factory=dict)
    purpose_asked: dict[str, float] = field(default_factory=dict)
    tier_shares: dict[str, float] = field(default_factory=dict)
    purpose_reserves: dict[str, float] = field(default_factory=dict)

    def _rows(self) -> list[tuple[str, ...]]:
        rows = [
            ("epsilon", _num(self.epsilon_spent), _num(self.epsilon_total), _num(self.epsilon_remaining)),
            ("delta", _num(self.delta_spent), _num(self.delta_total), ""),
        ]
        if self.selection_delta_total > 0:
            left = max(0.0, self.selection_delta_total - self.selection_delta_spent)
            rows.append(("delta (partition selection)", _num(self.selection_delta_spent),
                         _num(self.selection_delta_total), _num(left)))
        if self.rho_total is not None:
            rho_left = max(0.0, self.rho_total - (self.rho_spent or 0.0))
            rows.append(("rho (zCDP)", _num(self.rho_spent or 0.0), _num(self.rho_total), _num(rho_left)))
            share = self.epsilon_share_spent
            rows.append(("epsilon asked", _num(share), _num(self.epsilon_total),
                         _num(max(0.0, self.epsilon_total - share))))
        return rows

    def _breakdown(self) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
        """Header and rows of the per-tier and per-purpose table (no rows when nothing to show)."""
        zcdp = self.rho_total is not None
        header = ("", "spent", "asked", "remaining") if zcdp else ("", "spent", "remaining")
        rows = []
        for kind, spent, asked, remaining, shares, note in (
            ("tier", self.tier_spent, self.tier_asked, self.tier_remaining, self.tier_shares, "max {}"),
            ("purpose", self.purpose_spent, self.purpose_asked, self.purpose_remaining,
             self.purpose_reserves, "{} reserved"),
        ):
            for key in [*remaining, *(k for k in spent if k not in remaining)]:
                share = shares.get(key)
                label = f"{kind} {key}" + (f" ({note.format(_percent(share))})" if share else "")
                left = _num(remaining[key]) if key in remaining else ""
                used = _num(spent.get(key, 0.0))
                rows.append((label, used, _num(asked.get(key, 0.0)), left) if zcdp else (label, used, left))
        return header, rows

    @property
    def epsilon_share_spent(self) -> float:
        """For zCDP budgets: the epsilons releases asked for, added up (their share of the budget).

        Releases whose epsilons add up to ``epsilon_total`` use all of the budget's rho, so this is
        what is left to ask for; ``epsilon_spent`` is the guarantee those releases give together.
        """
        if self.rho_total is None:
            return self.epsilon_spent
        return self.epsilon_total * (self.rho_spent or 0.0) / self.rho_total

    def _title(self) -> str:
        kind = "pure epsilon" if self.mode == "pure" else "zCDP"
        releases = f"{self.releases} release" + ("" if self.releases == 1 else "s")
        return f"Privacy budget {self.name!r} of {self.user!r} ({kind}), {releases}"

    def __str__(self) -> str:
        lines = [self._title(), *_aligned([("", "spent", "total", "remaining"), *self._rows()])]
        header, rows = self._breakdown()
        if rows:
            lines += _aligned([header, *rows])
        return "\n".join(lines)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        parts = [f"<div><strong>{html.escape(self._title())}</strong>",
                 _html_table(("", "spent", "total", "remaining"), self._rows())]
        header, rows = self._breakdown()
        if rows:
            parts.append(_html_table(header, rows))
        return "".join(parts) + "</div>"


@dataclass(frozen=True, repr=False)
class DatasetBudget:
    """What all users of one dataset have spent together of its dataset-wide budget.

    Attributes
    ----------
    name, mode : str
        The dataset and the kind of its budget (``"pure"`` or ``"zcdp"``).
    epsilon_total, delta_total : float
        The dataset-wide guarantee.
    epsilon_spent, epsilon_remaining : float
        In epsilon; for zCDP the share of ``epsilon_total`` the rho spent stands for (as
        :attr:`BudgetStatus.epsilon_share_spent`), so that they add up to ``epsilon_total``.
    users, releases : int
        Budgets (users) of the dataset, and the releases charged to all of them.
    """

    name: str
    mode: str
    epsilon_total: float
    delta_total: float
    epsilon_spent: float
    epsilon_remaining: float
    users: int
    releases: int

    def _cells(self) -> tuple[str, ...]:
        kind = "pure epsilon" if self.mode == "pure" else "zCDP"
        return (self.name, kind, _num(self.epsilon_total), _num(self.epsilon_spent), _num(self.epsilon_remaining),
                _num(self.delta_total), str(self.users), str(self.releases))

    def __str__(self) -> str:
        name, kind, total, spent, left, delta, users, releases = self._cells()
        delta_text = f", delta {delta}" if self.delta_total else ""
        return (f"Dataset-wide budget {self.name!r} ({kind}{delta_text}): epsilon {spent} of {total} spent, "
                f"{left} left, by {users} analyst{'' if self.users == 1 else 's'} in {releases} "
                f"release{'' if self.releases == 1 else 's'}")

    __repr__ = __str__

    def _repr_html_(self) -> str:
        header = ("dataset-wide budget", "accounting", "epsilon total", "epsilon spent", "epsilon left", "delta",
                  "analysts", "releases")
        return _html_table(header, [self._cells()])


def _aligned(table: list[tuple[str, ...]]) -> list[str]:
    """Text lines of a table: first column left-aligned, the numbers right-aligned."""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = []
    for row in table:
        cells = [row[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(row[1:], widths[1:])]
        lines.append("  " + "  ".join(cells).rstrip())
    return lines


def _html_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    esc = html.escape
    head = "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>"
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def _num(x: float) -> str:
    return f"{x:.6g}"


def _percent(share: float) -> str:
    return f"{share * 100:.4g}%"


def _real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


class Accountant:
    """Turns costs into ledger charges and ledger units into epsilon.

    Parameters
    ----------
    ledger : SQLiteLedger
        Where budgets and charges are kept.
    """

    def __init__(self, ledger: SQLiteLedger) -> None:
        self.ledger = ledger

    def open(self, *, name: str, user: str, fingerprint: str, epsilon: float, delta: float) -> BudgetRecord:
        """Register a budget of ``(epsilon, delta)`` for a dataset, or return the existing one.

        A zCDP budget splits its delta in two. ``SELECTION_DELTA_SHARE`` of it (rounded down to
        whole units of ``1 / DELTA_UNITS_PER_ONE``) is reserved for releases that spend a delta of
        their own, DP partition selection; the rest is the *conversion delta*, at which the rho
        cap is the largest rho whose zCDP guarantee implies ``(epsilon, conversion delta)``-DP.
        Everything the budget allows together therefore stays ``(epsilon, delta)``-DP: the
        conversion delta plus the reserve is ``delta``. A pure budget has no reserve.

        Parameters
        ----------
        name, user, fingerprint : str
            See :meth:`SQLiteLedger.open_budget`.
        epsilon : float
            Total epsilon, finite and greater than 0.
        delta : float
            Total delta; 0 makes a pure epsilon budget, a value in (0, 1) a zCDP budget.

        Returns
        -------
        BudgetRecord
            A budget registered earlier is returned as it was registered, caps and reserve included.

        Raises
        ------
        PolicyError
            For invalid amounts, or as :meth:`SQLiteLedger.open_budget` does.
        """
        epsilon, delta, mode, cap_units, delta_cap_units = _budget_units(epsilon, delta)
        return self.ledger.open_budget(
            name=name,
            user=user,
            fingerprint=fingerprint,
            mode=mode,
            epsilon_total=epsilon,
            delta_total=delta,
            cap_units=cap_units,
            delta_cap_units=delta_cap_units,
        )

    def open_dataset(self, *, name: str, epsilon: float, delta: float) -> DatasetCap:
        """Register the dataset-wide budget of ``(epsilon, delta)`` for dataset ``name``, or return it.

        All users' budgets of ``name`` together may spend no more than a budget of ``(epsilon,
        delta)`` opened with :meth:`open` could: the cap, its mode and its delta reserve are
        computed exactly as :meth:`open` computes them. Users' budgets of the dataset must have the
        same mode (delta 0 or not) as the cap.

        Returns
        -------
        DatasetCap
            With what the dataset's budgets have spent so far.

        Raises
        ------
        PolicyError
            For invalid amounts, or as :meth:`SQLiteLedger.set_dataset_cap` does (a dataset-wide
            budget is fixed once registered).
        """
        epsilon, delta, mode, cap_units, delta_cap_units = _budget_units(epsilon, delta)
        return self.ledger.set_dataset_cap(
            name=name,
            mode=mode,
            epsilon_total=epsilon,
            delta_total=delta,
            cap_units=cap_units,
            delta_cap_units=delta_cap_units,
        )

    def dataset_status(self, name: str) -> DatasetBudget | None:
        """Return what all users together have spent and left of dataset ``name``, or None if uncapped.

        Amounts are in epsilon: for a zCDP cap, the share of ``epsilon_total`` the rho spent stands
        for (as :attr:`BudgetStatus.epsilon_share_spent`).
        """
        cap = self.ledger.dataset_cap(name=name)
        if cap is None:
            return None
        spent = _asked(cap, cap.spent_units)
        return DatasetBudget(
            name=cap.name,
            mode=cap.mode,
            epsilon_total=cap.epsilon_total,
            delta_total=cap.delta_total,
            epsilon_spent=spent,
            epsilon_remaining=max(0.0, cap.epsilon_total - spent),
            users=cap.users,
            releases=cap.releases,
        )

    def units(self, record: BudgetRecord, cost: Cost) -> int:
        """Return what ``cost`` takes from the budget of ``record``, in units, rounded up.

        Raises
        ------
        PolicyError
            If a pure budget is asked to pay for a release with delta or rho, or a zCDP budget for
            an approximate release that reports no rho.
        """
        if record.mode == "pure":
            if cost.delta != 0 or cost.rho is not None:
                raise PolicyError(
                    f"the budget of {record.name!r} is pure epsilon (delta=0): a release with delta>0 needs "
                    "a budget with delta, protect with delta=1e-6"
                )
            return units_ceil(cost.epsilon)
        if cost.rho is not None:
            return units_ceil(cost.rho)
        if cost.delta != 0:
            # (epsilon, delta)-DP with delta > 0 implies no zCDP bound at all.
            raise PolicyError(
                "a release with delta>0 must report its zCDP rho to be charged to a zCDP budget; "
                "use a Gaussian or pure epsilon mechanism"
            )
        # Pure epsilon-DP implies (epsilon**2 / 2)-zCDP; squared exactly so rounding cannot undercharge.
        return _ceil_units(_decimal(cost.epsilon) ** 2 / 2)

    def cap_units(self, record: BudgetRecord, epsilon: float) -> int:
        """Return the units that a cap of ``epsilon`` means for this budget, rounded down.

        For zCDP budgets the cap is the rho that guarantees ``(epsilon, record.conversion_delta)``-DP.
        """
        epsilon = check_epsilon(epsilon)
        if record.mode == "pure":
            return units_floor(epsilon)
        return units_floor(epsilon_delta_to_rho(epsilon, record.conversion_delta))

    def selection_delta(self, record: BudgetRecord) -> float:
        """Return the delta one DP partition selection on this budget may spend.

        The budget's delta reserve split into ``SELECTION_RELEASES`` equal parts, rounded down to
        whole units of ``1 / DELTA_UNITS_PER_ONE``, so that passing exactly this value as
        ``selection_delta`` to :meth:`charge` lets ``SELECTION_RELEASES`` selections fit the reserve.

        Parameters
        ----------
        record : BudgetRecord
            The budget.

        Returns
        -------
        float
            The per-release delta; 0.0 for pure budgets and for budgets without a reserve, which
            cannot pay for partition selection.
        """
        if record.mode == "pure" or record.delta_cap_units <= 0:
            return 0.0
        return (record.delta_cap_units // SELECTION_RELEASES) / DELTA_UNITS_PER_ONE

    def charge(
        self,
        record: BudgetRecord,
        cost: Cost,
        *,
        query: str,
        mechanism: str,
        tier: str,
        purpose: str,
        tier_share: float | None = None,
        units: int | None = None,
        tier_shares: Mapping[str, float | None] | None = None,
        selection_delta: float = 0.0,
        purpose_reserves: Mapping[str, float] | None = None,
    ) -> ChargeRecord:
        """Charge ``cost`` to the budget of ``record``, durably, before anything is released.

        Parameters
        ----------
        record : BudgetRecord
            The budget, as returned by :meth:`open`.
        cost : Cost
            What the release spends.
        query, mechanism, tier, purpose : str
            Recorded with the charge.
        tier_share : float, optional
            The policy's largest share of the budget for ``tier``, from 0 to 1. The tier may spend
            ``floor(tier_share * record.cap_units)`` units in all.
        units : int, optional
            The exact units to charge, when the caller calibrated its noise to at most that many
            (the release pipeline does); by default :meth:`units` of ``cost``.
        tier_shares : mapping of str to float or None, optional
            Every tier the release touched with the policy's largest share for it (None: no cap);
            each capped tier's cap bounds all charges that touched it. Defaults to
            ``{tier: tier_share}``.
        selection_delta : float, default 0.0
            The delta the release spends on DP partition selection, taken from the budget's delta
            reserve (rounded up to whole units of ``1 / DELTA_UNITS_PER_ONE``). Use
            :meth:`selection_delta`. Only zCDP budgets have a reserve.
        purpose_reserves : mapping of str to float, optional
            ``{purpose: share}`` from the policy: the share, in [0, 1), of the budget only that
            purpose may spend; the shares add up to less than 1. All purposes but ``q`` may spend
            ``floor((1 - share_q) * cap)`` units together, and a release must leave unspent what
            every other reserved purpose has not yet used of its reserve (see
            :meth:`SQLiteLedger.charge`).

        Returns
        -------
        ChargeRecord

        Raises
        ------
        BudgetExceededError
            If the budget, a tier's share, a purpose's reserve or the delta reserve cannot pay;
            nothing is charged.
        PolicyError
            If the cost does not fit the budget's kind, a share is invalid, or ``selection_delta``
            is asked of a pure budget.
        """
        needed = self.units(record, cost)  # also refuses a cost this kind of budget cannot pay
        if units is None:
            units = needed
        delta_units = self._delta_units(record, selection_delta)
        shares = dict(tier_shares) if tier_shares is not None else {tier: tier_share}
        shares.setdefault(tier, tier_share)
        tier_caps = {name: self._tier_cap(record, share) for name, share in shares.items()}
        purpose_caps = {
            q: self._purpose_cap(record, share)
            for q, share in _checked_reserves(purpose_reserves).items()
            if share > 0
        }
        if record.mode == "pure":
            rho = None
        else:
            rho = cost.rho if cost.rho is not None else cost.epsilon**2 / 2
        try:
            return self.ledger.charge(
                name=record.name,
                user=record.user,
                units=units,
                epsilon=cost.epsilon,
                delta=cost.delta,
                rho=rho,
                query=query,
                mechanism=mechanism,
                tier=tier,
                purpose=purpose,
                tier_caps=tier_caps,
                delta_units=delta_units,
                purpose_caps=purpose_caps,
            )
        except BudgetExceededError as error:
            # The delta reserve's message is already in delta, the dataset-wide cap's in epsilon
            # (its own share), and pure budgets count in epsilon.
            if record.mode == "pure" or getattr(error, "limit", None) in ("selection_delta", "dataset"):
                raise
            raise self._in_epsilon(record, cost, error) from None

    @staticmethod
    def _delta_units(record: BudgetRecord, selection_delta: object) -> int:
        if not (_real(selection_delta) and math.isfinite(selection_delta) and 0 <= selection_delta < 1):
            raise PolicyError(
                f"selection_delta must be a finite number with 0 <= selection_delta < 1 (got "
                f"{_shown(selection_delta)}); pass Accountant.selection_delta(record)"
            )
        if selection_delta == 0:
            return 0
        if record.mode == "pure":
            raise PolicyError(
                f"the budget of {record.name!r} is pure epsilon (delta=0), so it cannot pay the delta of "
                "partition selection: declare the group's categories (categories={'col': [...]} in "
                "dp.protect or the policy), or protect the data with a delta, e.g. delta=1e-6"
            )
        # Rounded up: a release is never charged less delta than it spends.
        return math.ceil(_decimal(float(selection_delta)) * DELTA_UNITS_PER_ONE)

    @staticmethod
    def _tier_cap(record: BudgetRecord, share) -> int | None:
        if share is None:
            return None
        ok = isinstance(share, numbers.Real) and not isinstance(share, bool)
        if not (ok and 0 <= share <= 1):
            raise PolicyError(
                f"tier_share must be a number from 0 to 1 (got {_shown(share)}); it is the "
                "largest fraction of the budget the policy lets this tier spend"
            )
        return math.floor(_decimal(float(share)) * record.cap_units)

    @staticmethod
    def _purpose_cap(record: BudgetRecord, share: float) -> int:
        """Units that all purposes other than the reserved one may spend together, rounded down."""
        return math.floor((1 - _decimal(share)) * record.cap_units)

    def _in_epsilon(
        self, record: BudgetRecord, cost: Cost, error: BudgetExceededError
    ) -> BudgetExceededError:
        # The ledger counts zCDP budgets in rho; people think in epsilon. Remaining epsilon alone
        # would confuse ("0.5 refused although epsilon 2 remains": under zCDP one release of
        # epsilon 0.5 costs more than a quarter of a budget of 2), so say what still fits.
        current = self.ledger.budget(name=record.name, user=record.user)
        needed, left = error.needed_units / UNITS_PER_ONE, error.remaining_units / UNITS_PER_ONE
        if cost.delta == 0:
            # Without a delta of its own, a release's epsilon is its share of the budget's rho.
            fits = current.epsilon_total * left * UNITS_PER_ONE / current.cap_units
        else:
            fits = rho_to_epsilon(left, cost.delta) if left > 0 else 0.0
        needs = f"this release needs zCDP rho {_num(needed)} (epsilon {_num(cost.epsilon)})"
        advice = (
            f"nothing was charged. Ask for less with epsilon=... (at most about epsilon={_num(fits)} "
            "fits now), or run %dp budget to see what is left."
        )
        tier, purpose = getattr(error, "tier", None), getattr(error, "purpose", None)
        if purpose is not None:
            message = (
                f"the rest of the budget for {record.name!r} is reserved for purpose {purpose!r}; {needs} "
                f"but only rho {_num(left)} remains for other purposes. If this release is for "
                f"{purpose!r}, run it with %%dp --purpose {purpose} (or dp.spending(purpose={purpose!r})); "
                f"otherwise {advice}"
            )
        elif tier is None:
            spent = self.epsilon_of_units(current, current.spent_units)
            epsilon_left = max(0.0, current.epsilon_total - spent)
            message = (
                f"{needs} but only rho {_num(left)} remains of the budget for {record.name!r} "
                f"(about epsilon {_num(epsilon_left)} of epsilon {_num(current.epsilon_total)} at "
                f"delta {_num(current.conversion_delta)}); {advice}"
            )
        else:
            message = (
                f"the policy caps the share of tier {tier!r} in the budget for {record.name!r}; "
                f"{needs} but only rho {_num(left)} of the tier's share remains, so {advice}"
            )
        new = BudgetExceededError(message)
        new.limit = getattr(error, "limit", None)
        new.needed_units, new.remaining_units = error.needed_units, error.remaining_units
        new.tier, new.purpose = tier, purpose
        return new

    def epsilon_of_units(self, record: BudgetRecord, units: int) -> float:
        """Return the epsilon that ``units`` of this budget amount to, at most ``epsilon_total``.

        Pure budgets: ``units / UNITS_PER_ONE``. zCDP budgets: the epsilon, at the budget's
        conversion delta (:attr:`BudgetRecord.conversion_delta`), of that much rho.
        """
        if units <= 0:
            return 0.0
        amount = units / UNITS_PER_ONE
        if record.mode == "pure":
            return amount
        return min(record.epsilon_total, rho_to_epsilon(amount, record.conversion_delta))

    def status(
        self,
        *,
        name: str,
        user: str,
        tier_shares: Mapping[str, float | None] | None = None,
        purpose_reserves: Mapping[str, float] | None = None,
    ) -> BudgetStatus:
        """Return what is spent and left of the budget of dataset ``name`` for ``user``.

        Parameters
        ----------
        name, user : str
            The budget.
        tier_shares : mapping of str to float or None, optional
            The policy's cap on each tier's share of the budget (None: no cap), as passed to
            :meth:`charge`. Named tiers are shown even if they have spent nothing.
        purpose_reserves : mapping of str to float, optional
            The policy's reserved share for each purpose, as passed to :meth:`charge`. Named
            purposes are shown even if they have spent nothing (a share of 0 names a purpose
            without reserving anything).

        Returns
        -------
        BudgetStatus
            Remaining amounts per tier and per purpose are given for the tiers and purposes named
            here and for those that have spent something.

        Raises
        ------
        PolicyError
            If there is no such budget, or a share is invalid.
        """
        record = self.ledger.budget(name=name, user=user)
        tiers = self.ledger.tier_spent_units(name=name, user=user)
        purposes = self.ledger.purpose_spent_units(name=name, user=user)
        tier_shares = dict(tier_shares or {})
        reserves = _checked_reserves(purpose_reserves)
        spent = self.epsilon_of_units(record, record.spent_units)
        if record.mode == "pure":
            delta_spent, rho_total, rho_spent = 0.0, None, None
        else:
            rho_total = record.cap_units / UNITS_PER_ONE
            rho_spent = record.spent_units / UNITS_PER_ONE
            converted = min(record.conversion_delta, rho_to_delta(rho_spent, record.epsilon_total))
            delta_spent = converted + record.delta_spent_units / DELTA_UNITS_PER_ONE
        tier_left = self._tiers_left(record, tiers, tier_shares)
        purpose_left = self._purposes_left(record, purposes, reserves)
        return BudgetStatus(
            name=record.name,
            user=record.user,
            mode=record.mode,
            epsilon_total=record.epsilon_total,
            epsilon_spent=spent,
            epsilon_remaining=max(0.0, record.epsilon_total - spent),
            delta_total=record.delta_total,
            delta_spent=delta_spent,
            rho_total=rho_total,
            rho_spent=rho_spent,
            releases=record.releases,
            tier_spent={k: self.epsilon_of_units(record, v) for k, v in tiers.items()},
            purpose_spent={k: self.epsilon_of_units(record, v) for k, v in purposes.items()},
            selection_delta_total=record.delta_cap_units / DELTA_UNITS_PER_ONE,
            selection_delta_spent=record.delta_spent_units / DELTA_UNITS_PER_ONE,
            tier_remaining={k: _asked(record, v) for k, v in tier_left.items()},
            purpose_remaining={k: _asked(record, v) for k, v in purpose_left.items()},
            tier_asked={k: _asked(record, v) for k, v in tiers.items()},
            purpose_asked={k: _asked(record, v) for k, v in purposes.items()},
            tier_shares={k: float(v) for k, v in tier_shares.items() if v is not None},
            purpose_reserves={k: v for k, v in reserves.items() if v > 0},
        )

    def _tiers_left(
        self, record: BudgetRecord, spent: Mapping[str, int], shares: Mapping[str, float | None]
    ) -> dict[str, int]:
        """Units each named or spent tier may still take: the budget's rest, within the tier's cap."""
        left = record.cap_units - record.spent_units
        result = {}
        for tier in [*shares, *(t for t in spent if t not in shares)]:
            cap = self._tier_cap(record, shares.get(tier))
            result[tier] = left if cap is None else max(0, min(left, cap - spent.get(tier, 0)))
        return result

    def _purposes_left(
        self, record: BudgetRecord, spent: Mapping[str, int], reserves: Mapping[str, float]
    ) -> dict[str, int]:
        """Units each named or spent purpose may still take, given every other purpose's reserve.

        The rule the ledger enforces: a purpose may spend what is left of the budget less what each
        other reserved purpose still holds (its reserve less what it has spent itself).
        """
        left = record.cap_units - record.spent_units
        held = {
            q: max(0, record.cap_units - self._purpose_cap(record, share) - spent.get(q, 0))
            for q, share in reserves.items()
            if share > 0
        }
        return {
            purpose: max(0, left - sum(units for q, units in held.items() if q != purpose))
            for purpose in [*reserves, *(p for p in spent if p not in reserves)]
        }


def _budget_units(epsilon: float, delta: float) -> tuple[float, float, str, int, int]:
    """``(epsilon, delta, mode, cap_units, delta_cap_units)`` of a budget of ``(epsilon, delta)``.

    A zCDP budget splits its delta in two. ``SELECTION_DELTA_SHARE`` of it (rounded down to whole
    units of ``1 / DELTA_UNITS_PER_ONE``) is reserved for releases that spend a delta of their
    own; the rest is the conversion delta, at which the rho cap is the largest rho whose zCDP
    guarantee implies ``(epsilon, conversion delta)``-DP. A pure budget has no reserve.
    """
    epsilon = check_epsilon(epsilon)
    delta = check_delta(delta)
    if delta == 0:
        mode, cap_units, delta_cap_units = "pure", units_floor(epsilon), 0
    else:
        mode = "zcdp"
        delta_cap_units = math.floor(_decimal(delta) * _decimal(SELECTION_DELTA_SHARE) * DELTA_UNITS_PER_ONE)
        # In floating point the conversion delta may exceed delta minus the reserve by half an
        # ulp (a relative 1e-16); the relative 1e-9 that epsilon_delta_to_rho gives up on rho
        # covers that many times over.
        cap_units = units_floor(epsilon_delta_to_rho(epsilon, delta * (1 - SELECTION_DELTA_SHARE)))
    if cap_units == 0:
        raise PolicyError(
            f"epsilon={epsilon!r} with delta={delta!r} is too small to allow any release; "
            "pass e.g. epsilon=1.0"
        )
    return epsilon, delta, mode, cap_units, delta_cap_units


def _asked(record: BudgetRecord | DatasetCap, units: int) -> float:
    """The epsilon releases ask for to spend ``units``: epsilon itself, or their share of the rho cap."""
    if record.mode == "pure":
        return units / UNITS_PER_ONE
    return record.epsilon_total * units / record.cap_units


def _checked_reserves(reserves: Mapping[str, float] | None) -> dict[str, float]:
    """Purpose reserves as floats, each in [0, 1) and adding up to less than 1."""
    checked = {}
    for purpose, share in (reserves or {}).items():
        if not (_real(share) and 0 <= share < 1):
            raise PolicyError(
                f"the reserve of purpose {purpose!r} must be a number with 0 <= reserve < 1 (got "
                f"{_shown(share)}); it is the share of the budget only that purpose may spend"
            )
        checked[str(purpose)] = float(share)
    if sum(_decimal(s) for s in checked.values()) >= 1:
        raise PolicyError(
            f"the purpose reserves {checked} add up to 1 or more, which would leave no purpose free to "
            "spend; lower them so that they add up to less than 1"
        )
    return checked
