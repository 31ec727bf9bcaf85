"""Agreement between raters: intraclass correlation (Shrout & Fleiss) and Krippendorff's alpha.

:func:`icc` computes the six intraclass correlations of Shrout & Fleiss (1979) from a
complete targets x raters matrix with the two-way ANOVA mean squares (checked in the tests
against the paper's own worked example). :func:`krippendorff_alpha` wraps the
``krippendorff`` package, which handles missing ratings. :func:`rating_matrix` turns long
score tables into the matrices both need.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = ["ICC_FORMS", "icc", "krippendorff_alpha", "rating_matrix"]

#: the forms :func:`icc` returns, in Shrout & Fleiss notation (k = number of raters)
ICC_FORMS = ("ICC(1,1)", "ICC(2,1)", "ICC(3,1)", "ICC(1,k)", "ICC(2,k)", "ICC(3,k)")


def icc(ratings: np.ndarray | pd.DataFrame | Sequence[Sequence[float]]) -> dict[str, float]:
    """Intraclass correlation coefficients of a targets x raters matrix.

    ICC(2,k) — two-way random effects, absolute agreement, mean of k raters — is the form
    used for "is the average physician score reproducible"; ICC(2,1) is the reliability of a
    single rater.

    Args:
        ratings: ``n`` targets (rows) x ``k`` raters (columns), no missing values.

    Returns:
        A dict keyed by :data:`ICC_FORMS`.

    Raises:
        ValueError: with fewer than 2 targets or 2 raters, or missing / non-finite values.
    """
    y = np.asarray(ratings, dtype=float)
    if y.ndim != 2:
        raise ValueError(f"ratings must be a 2-D targets x raters matrix, got shape {y.shape}")
    n, k = y.shape
    if n < 2 or k < 2:
        raise ValueError(f"ICC needs at least 2 targets and 2 raters, got {n} x {k}")
    if not np.isfinite(y).all():
        raise ValueError("ICC needs a complete matrix: drop targets with missing ratings first")
    grand = y.mean()
    ss_rows = k * ((y.mean(axis=1) - grand) ** 2).sum()
    ss_cols = n * ((y.mean(axis=0) - grand) ** 2).sum()
    ss_total = ((y - grand) ** 2).sum()
    ss_err = ss_total - ss_rows - ss_cols
    msr = ss_rows / (n - 1)
    msc = ss_cols / (k - 1)
    mse = ss_err / ((n - 1) * (k - 1))
    msw = (ss_cols + ss_err) / (n * (k - 1))

    def ratio(num: float, den: float) -> float:
        return float(num / den) if den != 0 else float("nan")

    return {
        "ICC(1,1)": ratio(msr - msw, msr + (k - 1) * msw),
        "ICC(2,1)": ratio(msr - mse, msr + (k - 1) * mse + k * (msc - mse) / n),
        "ICC(3,1)": ratio(msr - mse, msr + (k - 1) * mse),
        "ICC(1,k)": ratio(msr - msw, msr),
        "ICC(2,k)": ratio(msr - mse, msr + (msc - mse) / n),
        "ICC(3,k)": ratio(msr - mse, msr),
    }


def krippendorff_alpha(ratings: np.ndarray | pd.DataFrame, level: str = "interval") -> float:
    """Krippendorff's alpha of a raters x units matrix (``NaN`` = not rated).

    Args:
        ratings: ``raters`` (rows) x ``units`` (columns), missing ratings as ``NaN``.
        level: ``"nominal"``, ``"ordinal"``, ``"interval"`` or ``"ratio"``.

    Raises:
        ImportError: naming the package to install when ``krippendorff`` is absent.
        ValueError: when no unit has two ratings.
    """
    try:
        import krippendorff
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("Krippendorff's alpha needs the 'krippendorff' package: "
                          "pip install 'hicur-monai[web]' (or pip install krippendorff)") from err
    data = np.asarray(ratings, dtype=float)
    if data.ndim != 2 or (np.isfinite(data).sum(axis=0) >= 2).sum() == 0:
        raise ValueError("Krippendorff's alpha needs at least one unit rated by two raters")
    return float(krippendorff.alpha(reliability_data=data, level_of_measurement=level))


def rating_matrix(df: pd.DataFrame, unit: str | Sequence[str], rater: str, value: str = "score") -> pd.DataFrame:
    """Pivot a long table (one row per rating) to units x raters (``NaN`` where unrated).

    Raises:
        ValueError: naming the unit and rater if a rater rated a unit twice.
    """
    unit = [unit] if isinstance(unit, str) else list(unit)
    dup = df.duplicated(subset=[*unit, rater], keep=False)
    if dup.any():
        first = df[dup].iloc[0]
        raise ValueError(f"rater {first[rater]!r} has more than one rating of unit "
                         f"{tuple(first[u] for u in unit)}; keep only the latest")
    return df.pivot_table(index=unit, columns=rater, values=value, aggfunc="first")
