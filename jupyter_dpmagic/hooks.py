"""Ordinary pandas functions that also accept private columns (``pd.crosstab(df.sex, df.ward)``).

``pandas.crosstab`` is a function, not a method, so a private column cannot answer it by itself. The
wrapper installed here sends calls whose arguments are private columns to the DP version and every
other call, unchanged, to pandas.
"""

from __future__ import annotations

import functools

import pandas as pd

__all__ = ["install"]


def install() -> None:
    """Wrap ``pandas.crosstab`` once (idempotent)."""
    original = pd.crosstab
    if getattr(original, "_dpmagic", False):
        return

    @functools.wraps(original)
    def crosstab(index, columns, *args, **kwargs):
        from .frame import PrivateSeries, crosstab as private_crosstab

        if isinstance(index, PrivateSeries) or isinstance(columns, PrivateSeries):
            return private_crosstab(index, columns, *args, **kwargs)
        return original(index, columns, *args, **kwargs)

    crosstab._dpmagic = True
    pd.crosstab = crosstab
