"""What a release looks like to the user: ordinary numbers and pandas objects that know their noise.

A scalar release is a ``float`` (or ``int`` for counts) subclass, so arithmetic, comparisons and
f-strings work as usual; a grouped release is a pandas Series or DataFrame. Each carries a
:class:`ReleaseInfo` (``dp.info(x)``) and shows its interval and epsilon in the notebook. Derived
values (``x * 2``, ``s.sort_values()``) are plain numbers and pandas objects again, because their
interval would no longer be the one recorded.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from .errors import PrivacyError

__all__ = ["ReleaseInfo", "DPFloat", "DPInt", "DPSeries", "DPFrame", "info", "shape"]


@dataclass(frozen=True)
class ReleaseInfo:
    """Everything known about one release except the data: its cost, mechanism and accuracy.

    ``ci_low``/``ci_high`` bound the value the engine computed before noise with probability 0.95
    (per group for grouped releases). They are ``None`` for quantiles, whose accuracy is stated in ranks.
    """

    dataset: str
    query: str
    mechanism: str
    epsilon: float
    delta: float
    rho: float | None
    ci_low: object
    ci_high: object
    accuracy: str
    purpose: str
    tier: str
    charge_id: int
    notes: tuple = field(default_factory=tuple)
    level: float = 0.95

    @property
    def ci(self):
        """``(low, high)`` of the 95% interval."""
        return (self.ci_low, self.ci_high)

    def cost_text(self) -> str:
        text = f"ε={self.epsilon:.4g}"
        if self.delta:
            text += f", δ={self.delta:.2g}"
        if self.rho is not None:
            text += f" (ρ={self.rho:.3g})"
        return text

    def summary(self) -> str:
        return f"{self.accuracy}; {self.cost_text()}, {self.mechanism}; dataset '{self.dataset}'"

    def __repr__(self) -> str:
        lines = [f"release of {self.query}", f"  dataset:   {self.dataset}", f"  mechanism: {self.mechanism}",
                 f"  cost:      {self.cost_text()}", f"  accuracy:  {self.accuracy}",
                 f"  purpose:   {self.purpose} (strictest tier: {self.tier})"]
        lines += [f"  note:      {n}" for n in self.notes]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        rows = [("query", self.query), ("dataset", self.dataset), ("mechanism", self.mechanism),
                ("cost", self.cost_text()), ("accuracy", self.accuracy),
                ("purpose", f"{self.purpose} (strictest tier: {self.tier})")]
        rows += [("note", n) for n in self.notes]
        body = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th><td style='text-align:left'>"
                       f"{html.escape(str(v))}</td></tr>" for k, v in rows)
        return f"<table class='dpmagic-release-info'>{body}</table>"


def _footer_html(info: ReleaseInfo) -> str:
    notes = "".join(f"<br>{html.escape(n)}" for n in info.notes)
    return (f"<div class='dpmagic-release' style='font-size:0.85em;opacity:0.8'>"
            f"DP release · {html.escape(info.cost_text())} · {html.escape(info.mechanism)} · "
            f"{html.escape(info.accuracy)}{notes}</div>")


class _Scalar:
    _dp: ReleaseInfo

    def __repr__(self) -> str:
        return f"{self._plain()}  ({self._dp.summary()})"

    def _repr_html_(self) -> str:
        return (f"<div><span style='font-size:1.2em;font-weight:600'>{html.escape(self._plain())}</span>"
                f"{_footer_html(self._dp)}</div>")

    def __reduce__(self):
        return (type(self)._restore, (self._value(), self._dp))


class DPFloat(_Scalar, float):
    """A released number: behaves as a ``float``; ``dp.info(x)`` tells its cost and interval."""

    def __new__(cls, value: float, info: ReleaseInfo):
        obj = float.__new__(cls, value)
        obj._dp = info
        return obj

    __str__ = float.__repr__

    def _plain(self) -> str:
        return f"{float(self):.6g}"

    def _value(self):
        return float(self)

    @classmethod
    def _restore(cls, value, info):
        return cls(value, info)


class DPInt(_Scalar, int):
    """A released count: behaves as an ``int``; ``dp.info(x)`` tells its cost and interval."""

    def __new__(cls, value: int, info: ReleaseInfo):
        obj = int.__new__(cls, value)
        obj._dp = info
        return obj

    __str__ = int.__repr__

    def _plain(self) -> str:
        return str(int(self))

    def _value(self):
        return int(self)

    @classmethod
    def _restore(cls, value, info):
        return cls(value, info)


class _PandasRelease:
    _metadata = ["_dp"]

    def _repr_html_(self) -> str:
        table = self._interval_table()
        return table.to_html() + _footer_html(self._dp)

    def __repr__(self) -> str:
        base = self._as_plain().__repr__()
        return f"{base}\n-- DP release: {self._dp.summary()}"

    def _interval_table(self) -> pd.DataFrame:
        raise NotImplementedError


class DPSeries(_PandasRelease, pd.Series):
    """A released Series (one value per group); derived Series are plain pandas objects."""

    @property
    def plot(self):
        """pandas plotting, with the 95% noise interval drawn as error bars (bar, barh, line)."""
        from .plots import ReleasePlot

        return ReleasePlot(self)

    @property
    def _constructor(self):
        return pd.Series

    @property
    def _constructor_expanddim(self):
        return pd.DataFrame

    def _as_plain(self) -> pd.Series:
        return pd.Series(self.to_numpy(), index=self.index, name=self.name)

    def _interval_table(self) -> pd.DataFrame:
        table = pd.DataFrame({self.name if self.name is not None else "value": self._as_plain()})
        if self._dp.ci_low is not None:
            table["95% CI low"] = self._dp.ci_low
            table["95% CI high"] = self._dp.ci_high
        return table


class DPFrame(_PandasRelease, pd.DataFrame):
    """A released DataFrame (groups x measures); derived frames are plain pandas objects."""

    @property
    def _constructor(self):
        return pd.DataFrame

    @property
    def _constructor_sliced(self):
        return pd.Series

    def _as_plain(self) -> pd.DataFrame:
        return pd.DataFrame(self.to_numpy(), index=self.index, columns=self.columns)

    def _interval_table(self) -> pd.DataFrame:
        if self._dp.ci_low is None:
            return self._as_plain()
        low, high = self._dp.ci_low, self._dp.ci_high
        table = self._as_plain().astype(object)
        for col in table.columns:
            table[col] = [f"{v:.4g}  [{lo:.4g}, {hi:.4g}]" for v, lo, hi in zip(self[col], low[col], high[col])]
        return table


def info(release) -> ReleaseInfo:
    """The epsilon, delta, mechanism and 95% interval of a release.

    Parameters
    ----------
    release : DPFloat, DPInt, DPSeries or DPFrame
        A value returned by a private frame inside ``%%dp``.

    Raises
    ------
    PrivacyError
        If ``release`` is not a release (arithmetic on a release gives a plain number).
    """
    found = getattr(release, "_dp", None)
    if not isinstance(found, ReleaseInfo):
        raise PrivacyError(
            f"{type(release).__name__} is not a DP release, so it carries no privacy information. "
            "Call dp.info() on the value a private frame returned, before arithmetic or pandas "
            "operations turn it into a plain number.")
    return found


def accuracy_text(outcomes: Sequence) -> str:
    """One line on the 95% accuracy of a release's outcomes (what ``ReleaseInfo.accuracy`` says)."""
    texts = list(dict.fromkeys(o.accuracy for o in outcomes if o.accuracy))
    if len(texts) <= 2:
        return "; ".join(texts)
    return f"{len(outcomes)} statistics, each with its own 95% accuracy: see dp.info(x).ci"


def shape(outcomes: Sequence, info: ReleaseInfo, by: tuple, kind: str, labels: Sequence, keys=None):
    """Turn released outcomes into what the user gets.

    ``kind`` is ``"scalar"`` (one measure, no groups), ``"series"`` (one measure per group, or one
    value per measure without groups), ``"frame"`` (groups x measures) or ``"bins"`` (one
    histogram, ``labels`` being its bins). ``keys`` lists the groups partition selection released.
    """
    accuracy = accuracy_text(outcomes)
    integer = all(o.integer for o in outcomes)
    if kind == "scalar":
        out = outcomes[0]
        info = replace(info, ci_low=_first(out.ci_low), ci_high=_first(out.ci_high), accuracy=accuracy)
        value = float(out.values[0])
        return DPInt(int(round(value)), info) if out.integer else DPFloat(value, info)
    if kind == "bins":
        histograms = []
        for out, name in zip(outcomes, labels):
            index = pd.IntervalIndex.from_breaks(list(out.edges), closed="left", name=name)
            result = DPSeries(_typed(out.values, out.integer), index=index, name="count")
            result._dp = replace(info, ci_low=pd.Series(out.ci_low, index=index),
                                 ci_high=pd.Series(out.ci_high, index=index), accuracy=out.accuracy)
            histograms.append(result)
        return histograms
    index = _group_index(by, keys) if by else pd.Index(list(labels))
    if kind == "series":
        if by:
            out = outcomes[0]
            values, low, high = out.values, out.ci_low, out.ci_high
            name = labels[0] if labels else None
        else:
            values = np.asarray([o.values[0] for o in outcomes])
            # Measures without an interval (quantiles) show NaN next to those that have one.
            low = None if all(o.ci_low is None for o in outcomes) else \
                np.asarray([np.nan if o.ci_low is None else o.ci_low[0] for o in outcomes])
            high = None if low is None else \
                np.asarray([np.nan if o.ci_high is None else o.ci_high[0] for o in outcomes])
            name = None
        ci_low = None if low is None else pd.Series(low, index=index, name=name)
        ci_high = None if high is None else pd.Series(high, index=index, name=name)
        result = DPSeries(_typed(values, integer), index=index, name=name)
        result._dp = replace(info, ci_low=ci_low, ci_high=ci_high, accuracy=accuracy)
        return result
    columns = list(labels)
    data = {c: _typed(o.values, o.integer) for c, o in zip(columns, outcomes)}
    result = DPFrame(data, index=index, columns=columns)
    if all(o.ci_low is not None for o in outcomes):
        low = pd.DataFrame({c: o.ci_low for c, o in zip(columns, outcomes)}, index=index)
        high = pd.DataFrame({c: o.ci_high for c, o in zip(columns, outcomes)}, index=index)
    else:
        low = high = None
    result._dp = replace(info, ci_low=low, ci_high=high, accuracy=accuracy)
    return result


def _typed(values, integer: bool):
    values = np.asarray(values, dtype=float)
    if integer and np.isfinite(values).all():
        return np.rint(values).astype("int64")
    return values


def _group_index(by: tuple, keys) -> pd.Index:
    names = [k.label for k in by]
    if keys is None:
        if len(by) == 1:
            return pd.Index(list(by[0].categories), name=names[0])
        return pd.MultiIndex.from_product([list(k.categories) for k in by], names=names)
    if len(by) == 1:
        return pd.Index([k[0] for k in keys], name=names[0])
    if not keys:
        return pd.MultiIndex.from_arrays([[] for _ in by], names=names)
    return pd.MultiIndex.from_tuples(list(keys), names=names)


def _first(value):
    return None if value is None else float(value[0])
