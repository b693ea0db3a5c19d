"""``train_test_split`` for private frames: two private halves of one protected table.

The split itself releases nothing and costs nothing. Each half is an ordinary private proxy whose
filters include one side of a random split (:class:`~jupyter_dpmagic.plan.Part`), so every DP
release and every model fitted on it sees only that half's rows.
"""

from __future__ import annotations

import itertools
import math
import numbers

from . import plan as P
from .errors import PolicyError
from .frame import PrivateFrame, PrivateSeries

__all__ = ["train_test_split"]

# Names a split in plans and descriptions (``split#3``); the randomness lives in the engine.
_tokens = itertools.count(1)


def train_test_split(*arrays, test_size=None, train_size=None, random_state=None, shuffle=True, stratify=None):
    """Split private frames or columns into random train and test halves, like scikit-learn's.

    Returns ``[a_train, a_test, b_train, b_test, ...]``: private proxies, not rows. Aggregate them
    inside ``%%dp`` (or ``with dp.spending():``) and fit the supported estimators on them as on any
    private frame. All arrays must come from one protected dataset with the same filters, so that
    ``X_train`` and ``y_train`` describe the same rows.

    How rows are assigned: each person (each row when the dataset has no privacy unit) lands in the
    test half independently with probability ``test_size``, by a uniform draw made once per split
    from fresh operating-system randomness. With a privacy unit, all rows of a person are on the same
    side. The draw is kept for the life of the protected dataset in this kernel: both halves and
    every later query on them see the same split; the halves share no row and together cover every
    row. The halves' sizes are therefore about, not exactly, ``test_size`` of the rows (the exact
    sizes are private; ask for DP counts such as ``len(X_test)`` inside ``%%dp``).

    Budget: both halves draw on the dataset's one budget. No parallel composition is applied, even
    though the halves are disjoint: the ledger charges every release on either half in full, because
    it cannot prove disjointness for arbitrary later queries (a query may combine both halves, or a
    model may be fitted on one half and evaluated on the other).

    Parameters
    ----------
    *arrays : PrivateFrame or PrivateSeries
        Private frames or columns of one dataset, with the same filters.
    test_size : float, optional
        Share of the people in the test half, strictly between 0 and 1. Defaults to
        ``1 - train_size`` when ``train_size`` is given, else 0.25. A whole number of rows is refused:
        turning it into a share would need the private row count.
    train_size : float, optional
        Share of the people in the train half, strictly between 0 and 1; defaults to
        ``1 - test_size``. When ``train_size + test_size < 1`` the remaining people are in neither half.
    random_state : ignored
        Accepted so that ordinary scikit-learn code runs, and ignored: the split always comes from
        fresh randomness. A seed chosen in the notebook would let anyone who replays it rebuild which
        people are in which half, and no randomness behind a DP result takes a user's seed.
    shuffle : bool, default True
        Must be True. An unshuffled split follows the row order of the private table, which may
        itself carry information (admission date, site), and its cut point depends on the private
        row count.
    stratify : None
        Must be None. Stratifying needs the exact class counts of the private data; a random split
        keeps classes balanced on average, and DP counts of each half show how balanced they are.
    """
    _check_options(shuffle, stratify)
    test, train = _fractions(test_size, train_size)
    first = _check_arrays(arrays)
    token = next(_tokens)
    unit = first._ds.unit
    test_part = P.Part(token, test, True, unit)
    # The train side is "draw >= 1 - train": with train + test == 1 this is exactly the complement of
    # the test side; with less, the people between the two cut points are in neither half.
    train_part = P.Part(token, 1.0 - train if train < 1.0 - test - 1e-9 else test, False, unit)
    out = []
    for array in arrays:
        out.append(_with(array, train_part))
        out.append(_with(array, test_part))
    return out


def _check_options(shuffle, stratify) -> None:
    if shuffle is not True:
        raise PolicyError("train_test_split(shuffle=False) is not available for private data: an unshuffled "
                          "split follows the row order of the private table and cuts it at a point that "
                          "depends on the private row count. Leave shuffle=True (the default).")
    if stratify is not None:
        raise PolicyError("train_test_split(stratify=...) is not available for private data: stratifying needs "
                          "the exact class counts of the private rows. Leave stratify=None; a random split keeps "
                          "classes balanced on average, and DP counts of each half (y_train.value_counts() "
                          "inside %%dp) show the balance.")


def _fraction(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise PolicyError(f"{name} takes a share of the rows between 0 and 1, such as {name}=0.25 "
                          f"(got {value!r}).")
    if isinstance(value, numbers.Integral):
        raise PolicyError(f"{name}={value!r} asks for a number of rows, which would need the private row count. "
                          f"Give a share of the rows between 0 and 1 instead, such as {name}=0.25.")
    value = float(value)
    if not (math.isfinite(value) and 0.0 < value < 1.0):
        raise PolicyError(f"{name} must be a share strictly between 0 and 1, such as {name}=0.25 (got {value!r}).")
    return value


def _fractions(test_size, train_size) -> tuple[float, float]:
    """Shares of the test and train halves."""
    if test_size is None and train_size is None:
        return 0.25, 0.75
    if test_size is None:
        train = _fraction(train_size, "train_size")
        return 1.0 - train, train
    test = _fraction(test_size, "test_size")
    if train_size is None:
        return test, 1.0 - test
    train = _fraction(train_size, "train_size")
    if test + train > 1.0 + 1e-12:
        raise PolicyError(f"test_size={test_size!r} and train_size={train_size!r} add up to more than 1; "
                          "give shares whose sum is at most 1 (or give only one of them).")
    return test, min(train, 1.0 - test)


def _check_arrays(arrays):
    if not arrays:
        raise PolicyError("train_test_split() needs at least one private frame or column: "
                          "X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25).")
    for array in arrays:
        if not isinstance(array, (PrivateFrame, PrivateSeries)):
            raise PolicyError(f"train_test_split() of private data takes private frames and columns only (got a "
                              f"{type(array).__name__}). Split columns of one protected frame together: "
                              "train_test_split(df[['age', 'bmi']], df['outcome']).")
    first = arrays[0]
    for array in arrays[1:]:
        if array._ds is not first._ds:
            raise PolicyError(f"cannot split columns of two datasets together ('{first._ds.name}' and "
                              f"'{array._ds.name}'): their rows cannot be matched. Split each dataset on its own.")
        if set(array._where) != set(first._where):
            raise PolicyError("the arrays to split have different filters, so their rows do not match. Filter the "
                              "frame first, then select X and y from it: sub = df[df.age > 40]; "
                              "train_test_split(sub[['age', 'bmi']], sub['outcome']).")
    return first


def _with(array, part: P.Part):
    if isinstance(array, PrivateFrame):
        return PrivateFrame(array._ds, array._cols, array._where + (part,))
    return PrivateSeries(array._ds, array._expr, array._name, array._where + (part,))
