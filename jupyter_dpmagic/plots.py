"""Charts of DP releases, with the 95% interval of the noise drawn as error bars.

Drawing is post-processing: it reads only released values and their intervals, so a chart costs
nothing beyond the release it shows. A histogram of a private column is one release (its bins come
from the column's bounds, never from the data); a bar chart of a grouped release draws the groups
that release already paid for.
"""

from __future__ import annotations

import numpy as np

__all__ = ["histogram", "bars", "ReleasePlot"]


def _pyplot():
    import matplotlib.pyplot as plt

    return plt


def _errors(release) -> np.ndarray | None:
    """Asymmetric error bars (below, above) from a release's interval, or None without one."""
    info = release._dp
    if info.ci_low is None:
        return None
    values = release.to_numpy(dtype=float)
    below = np.clip(values - np.asarray(info.ci_low, dtype=float), 0.0, None)
    above = np.clip(np.asarray(info.ci_high, dtype=float) - values, 0.0, None)
    return np.vstack([below, above])


def _caption(ax, release) -> None:
    info = release._dp
    ax.text(0.99, 0.99, f"DP release · {info.cost_text()} · bars: 95% noise interval", transform=ax.transAxes,
            ha="right", va="top", fontsize="small", alpha=0.7)


def histogram(release, *, ax=None, title: str | None = None, **kwargs):
    """Draw a released histogram (a DPSeries indexed by bins) with error bars; returns the Axes."""
    if ax is None:
        ax = _pyplot().figure().add_subplot()
    index = release.index
    left, right = np.asarray(index.left, dtype=float), np.asarray(index.right, dtype=float)
    kwargs.setdefault("edgecolor", "white")
    ax.bar(left, release.to_numpy(dtype=float), width=right - left, align="edge", yerr=_errors(release),
           capsize=2, **kwargs)
    ax.set_xlabel(str(index.name))
    ax.set_ylabel("count (DP)")
    ax.set_title(title or f"DP histogram of {index.name}")
    _caption(ax, release)
    ax.dp_release = release
    return ax


def bars(release, kind: str = "bar", **kwargs):
    """Plot a released Series with pandas, adding its interval as error bars where pandas can."""
    plain = release._as_plain()
    errors = _errors(release)
    if errors is not None and kind in ("bar", "barh", "line"):
        kwargs.setdefault("xerr" if kind == "barh" else "yerr", errors)
        kwargs.setdefault("capsize", 3)
    if kwargs.get("ax") is None:
        kwargs["ax"] = _pyplot().figure().add_subplot()  # a chart of its own, not over the last one
    ax = plain.plot(kind=kind, **kwargs)
    _caption(ax, release)
    ax.dp_release = release
    return ax


class ReleasePlot:
    """``release.plot``: pandas plotting of a DP release, with the noise interval as error bars."""

    def __init__(self, release):
        self._release = release

    def __call__(self, kind: str = "line", **kwargs):
        return bars(self._release, kind=kind, **kwargs)

    def __getattr__(self, kind: str):
        if kind.startswith("_"):
            raise AttributeError(kind)
        return lambda **kwargs: bars(self._release, kind=kind, **kwargs)
