"""Noise, from OpenDP's vetted samplers only.

Every primitive an engine computes is an integer (or a vector of integers, one per group) with an
integer sensitivity, so all noise here is OpenDP's exact discrete Laplace or discrete Gaussian, and
selection is OpenDP's noisy max. No noise is ever drawn from ``random`` or numpy, and no seed exists.

Each :class:`Noise` knows its privacy map. Losses are asked for as exact fractions (whole ledger
units) and every measurement is calibrated until OpenDP's own map, which rounds up, reports at most
that fraction: the ledger then charges the exact fraction, never less than the true loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

# The submodules, not opendp.prelude: the prelude also imports scikit-learn (most of a second).
import opendp.accuracy as accuracy
import opendp.domains as domains
import opendp.measurements as measurements
import opendp.measures as measures
import opendp.metrics as metrics
from opendp.mod import enable_features
from scipy.special import ndtri

enable_features("contrib")

__all__ = ["Noise", "laplace", "gaussian", "noisy_max", "additive", "PURE", "ZCDP"]

PURE, ZCDP = "pure", "zcdp"
_I64_LIMIT = 2**62  # keep values + noise well inside i64
_EXACT_GAUSSIAN_ACCURACY_UP_TO = 1e4


@lru_cache(maxsize=None)
def _spaces(vector: bool, metric: str):
    atom = domains.atom_domain(T="i64")
    if not vector:
        return atom, metrics.absolute_distance(T="i64")
    domain = domains.vector_domain(atom)
    if metric == "l1":
        return domain, metrics.l1_distance(T="i64")
    if metric == "l2":
        return domain, metrics.l2_distance(T="i64")
    return domain, metrics.linf_distance(T="i64")


@dataclass(frozen=True, eq=False)
class Noise:
    """A ready-to-run OpenDP measurement plus what it costs and how accurate it is."""

    name: str  # shown to users, e.g. "discrete Laplace"
    measure: str  # PURE (loss is epsilon) or ZCDP (loss is rho)
    sensitivity: int
    scale: float
    loss: float
    _measurement: object

    def __call__(self, value):
        """Noisy value(s); integers in, integers out (for noisy max: the selected index)."""
        if isinstance(value, (list, tuple)):
            for v in value:
                _check_range(v)
            result = self._measurement(list(value))
            return list(result) if isinstance(result, (list, tuple)) else result
        _check_range(value)
        return self._measurement(value)

    def half_width(self, alpha: float) -> float:
        """``a`` such that the noise exceeds ``a`` in absolute value with probability at most ``alpha``."""
        return _half_width(self.name, self.scale, alpha)


@lru_cache(maxsize=4096)
def _half_width(name: str, scale: float, alpha: float) -> float:
    if name == "discrete Gaussian":
        if scale > _EXACT_GAUSSIAN_ACCURACY_UP_TO:
            # OpenDP sums the pmf, in time linear in the scale. At these scales the discrete
            # Gaussian's tails equal the continuous one's to far below float precision; one extra
            # step keeps the rounded bound on the safe side.
            return math.ceil(scale * float(ndtri(1.0 - alpha / 2))) + 1.0
        # OpenDP gives the smallest whole a with P(|noise| >= a) <= alpha; the noise is whole, so
        # |noise| > a - 1 has that same probability and a - 1 is the tightest such half-width.
        return float(accuracy.discrete_gaussian_scale_to_accuracy(scale, alpha)) - 1.0
    return float(accuracy.discrete_laplacian_scale_to_accuracy(scale, alpha))


def _check_range(value) -> None:
    if abs(int(value)) >= _I64_LIMIT:
        raise OverflowError("an aggregate is too large for exact integer noise; narrow the bounds")


def _calibrated(build, sensitivity: int, target: Fraction, scale: float):
    """The measurement ``build(scale)`` with the smallest scale found whose loss is at most ``target``.

    OpenDP's map rounds up, so the loss of ``sensitivity / target`` can come out a hair above the
    target; nudging the scale up until it does not lets the ledger charge exactly ``target``.
    """
    step = 1
    for _ in range(200):
        meas = build(scale)
        if Fraction(meas.map(sensitivity)) <= target:
            return meas, scale
        scale = scale * (1.0 + step * 2.0**-52)
        step *= 2
    raise ArithmeticError(f"could not calibrate noise for a loss of {float(target)!r}")


# Calibrating costs a few OpenDP calls; a measurement draws fresh noise on every call, so the same
# one can serve every release with the same sensitivity and loss.
_cached = lru_cache(maxsize=4096)


@_cached
def laplace(*, sensitivity: int, epsilon: Fraction, vector: bool) -> Noise:
    """Discrete Laplace noise with (L1) ``sensitivity`` whose epsilon is at most ``epsilon``."""
    spaces = _spaces(vector, "l1")
    meas, scale = _calibrated(lambda s: measurements.make_laplace(*spaces, scale=s), sensitivity, Fraction(epsilon),
                              sensitivity / float(epsilon))
    return Noise("discrete Laplace", PURE, sensitivity, scale, float(meas.map(sensitivity)), meas)


@_cached
def gaussian(*, sensitivity: int, rho: Fraction, vector: bool) -> Noise:
    """Discrete Gaussian noise with (L2) ``sensitivity`` whose zCDP rho is at most ``rho``."""
    spaces = _spaces(vector, "l2")
    meas, scale = _calibrated(lambda s: measurements.make_gaussian(*spaces, scale=s), sensitivity, Fraction(rho),
                              sensitivity / math.sqrt(2.0 * float(rho)))
    return Noise("discrete Gaussian", ZCDP, sensitivity, scale, float(meas.map(sensitivity)), meas)


@_cached
def noisy_max(*, sensitivity: int, loss: Fraction, measure: str) -> Noise:
    """Report-noisy-max (the exponential mechanism) over integer scores with L-inf ``sensitivity``.

    Scores are not monotone (one more row can raise some and lower others), hence the factor 2 under
    pure DP; under zCDP OpenDP maps the same mechanism to (2 * sensitivity / scale)^2 / 8.
    """
    spaces = _spaces(True, "linf")
    if measure == PURE:
        scale, out = 2.0 * sensitivity / float(loss), measures.max_divergence()
    else:
        scale, out = sensitivity / math.sqrt(2.0 * float(loss)), measures.zero_concentrated_divergence()
    meas, scale = _calibrated(lambda s: measurements.make_noisy_max(*spaces, out, scale=s), sensitivity, Fraction(loss),
                              scale)
    return Noise("exponential mechanism", measure, sensitivity, scale, float(meas.map(sensitivity)), meas)


def additive(*, sensitivity: int, loss: Fraction, measure: str, vector: bool) -> Noise:
    """Laplace under a pure budget, Gaussian under a zCDP budget."""
    if measure == PURE:
        return laplace(sensitivity=sensitivity, epsilon=loss, vector=vector)
    return gaussian(sensitivity=sensitivity, rho=loss, vector=vector)
