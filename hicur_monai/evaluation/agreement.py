"""Agreement between raters: intraclass correlation (Shrout & Fleiss) and Krippendorff's alpha.

:func:`icc` computes the six intraclass correlations of Shrout & Fleiss (1979) from a
complete targets x raters matrix with the two-way ANOVA mean squares (checked in the tests
against the paper's own worked example); :func:`icc_table` adds each form's F-test and
confidence interval (Shrout & Fleiss 1979; McGraw & Wong 1996, with the Satterthwaite
degrees of freedom for the absolute-agreement forms). :func:`krippendorff_alpha` wraps the
``krippendorff`` package, which handles missing ratings. :func:`rating_matrix` turns long
score tables into the matrices both need.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import pandas as pd

__all__ = ["ICC_FORMS", "icc", "icc_table", "krippendorff_alpha", "rating_matrix"]

#: the forms :func:`icc` returns, in Shrout & Fleiss notation (k = number of raters)
ICC_FORMS = ("ICC(1,1)", "ICC(2,1)", "ICC(3,1)", "ICC(1,k)", "ICC(2,k)", "ICC(3,k)")


#: McGraw & Wong's names of the forms
ICC_DESCRIPTIONS = {
    "ICC(1,1)": "one-way random, single rater",
    "ICC(2,1)": "two-way random, absolute agreement, single rater",
    "ICC(3,1)": "two-way mixed, consistency, single rater",
    "ICC(1,k)": "one-way random, mean of k raters",
    "ICC(2,k)": "two-way random, absolute agreement, mean of k raters",
    "ICC(3,k)": "two-way mixed, consistency, mean of k raters",
}


def _mean_squares(ratings: np.ndarray | pd.DataFrame | Sequence[Sequence[float]]) -> dict[str, float]:
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
    ss_err = ((y - grand) ** 2).sum() - ss_rows - ss_cols
    return {"n": n, "k": k, "msr": ss_rows / (n - 1), "msc": ss_cols / (k - 1),
            "mse": ss_err / ((n - 1) * (k - 1)), "msw": (ss_cols + ss_err) / (n * (k - 1))}


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den != 0 else float("nan")


def icc(ratings: np.ndarray | pd.DataFrame | Sequence[Sequence[float]]) -> dict[str, float]:
    """Intraclass correlation coefficients of a targets x raters matrix.

    ICC(2,k) — two-way random effects, absolute agreement, mean of k raters — is the form
    used for "is the average physician score reproducible"; ICC(2,1) is the reliability of a
    single rater. :func:`icc_table` gives the same values with F-tests and confidence intervals.

    Args:
        ratings: ``n`` targets (rows) x ``k`` raters (columns), no missing values.

    Returns:
        A dict keyed by :data:`ICC_FORMS`.

    Raises:
        ValueError: with fewer than 2 targets or 2 raters, or missing / non-finite values.
    """
    m = _mean_squares(ratings)
    n, k, msr, msc, mse, msw = m["n"], m["k"], m["msr"], m["msc"], m["mse"], m["msw"]
    return {
        "ICC(1,1)": _ratio(msr - msw, msr + (k - 1) * msw),
        "ICC(2,1)": _ratio(msr - mse, msr + (k - 1) * mse + k * (msc - mse) / n),
        "ICC(3,1)": _ratio(msr - mse, msr + (k - 1) * mse),
        "ICC(1,k)": _ratio(msr - msw, msr),
        "ICC(2,k)": _ratio(msr - mse, msr + (msc - mse) / n),
        "ICC(3,k)": _ratio(msr - mse, msr),
    }


def _absolute_agreement_ci(m: dict[str, float], icc21: float, alpha: float) -> tuple[float, float]:
    """CI of ICC(2,1): McGraw & Wong (1996) case 2A, Satterthwaite degrees of freedom."""
    from scipy.stats import f as f_dist

    n, k, msr, msc, mse = m["n"], m["k"], m["msr"], m["msc"], m["mse"]
    if mse <= 0 or not np.isfinite(icc21) or icc21 >= 1:
        return float("nan"), float("nan")  # perfect agreement: no sampling variability to build an interval on
    a = k * icc21 / (n * (1 - icc21))
    b = 1 + k * icc21 * (n - 1) / (n * (1 - icc21))
    v = (a * msc + b * mse) ** 2 / ((a * msc) ** 2 / (k - 1) + (b * mse) ** 2 / ((n - 1) * (k - 1)))
    fl = f_dist.ppf(1 - alpha / 2, n - 1, v)
    fu = f_dist.ppf(1 - alpha / 2, v, n - 1)
    lo = n * (msr - fl * mse) / (fl * (k * msc + (k * n - k - n) * mse) + n * msr)
    hi = n * (fu * msr - mse) / (k * msc + (k * n - k - n) * mse + n * fu * msr)
    return float(lo), float(hi)


def icc_table(ratings: np.ndarray | pd.DataFrame | Sequence[Sequence[float]], alpha: float = 0.05) -> pd.DataFrame:
    """The six ICCs with their F-test of ICC = 0 and ``1 - alpha`` confidence intervals.

    F-tests and intervals of Shrout & Fleiss (1979) and McGraw & Wong (1996): the one-way
    forms use ``F = MSR / MSW`` on ``(n - 1, n (k - 1))`` degrees of freedom, the two-way
    forms ``F = MSR / MSE`` on ``(n - 1, (n - 1)(k - 1))``; the consistency forms' interval
    is exact (``F / F_crit``), the absolute-agreement forms' uses Satterthwaite's degrees of
    freedom (McGraw & Wong case 2A), and the mean-of-k bounds follow from the single-rater ones.

    Returns:
        One row per form (index :data:`ICC_FORMS`): ``description``, ``icc``, ``F``, ``df1``,
        ``df2``, ``p`` (one-sided, ICC > 0), ``ci_low``, ``ci_high``.
    """
    from scipy.stats import f as f_dist

    m = _mean_squares(ratings)
    n, k = m["n"], m["k"]
    values = icc(ratings)
    crit = 1 - alpha / 2
    rows = {}
    for one_way in (True, False):
        f_obs = _ratio(m["msr"], m["msw"] if one_way else m["mse"])
        df1, df2 = n - 1, (n * (k - 1) if one_way else (n - 1) * (k - 1))
        p = float(f_dist.sf(f_obs, df1, df2)) if np.isfinite(f_obs) else float("nan")
        fl, fu = f_obs / f_dist.ppf(crit, df1, df2), f_obs * f_dist.ppf(crit, df2, df1)
        single = ((fl - 1) / (fl + k - 1), (fu - 1) / (fu + k - 1))
        average = (1 - 1 / fl, 1 - 1 / fu)
        forms = {"ICC(1,1)": single, "ICC(1,k)": average} if one_way else {"ICC(3,1)": single, "ICC(3,k)": average}
        if not one_way:
            lo, hi = _absolute_agreement_ci(m, values["ICC(2,1)"], alpha)
            forms["ICC(2,1)"] = (lo, hi)
            forms["ICC(2,k)"] = (k * lo / (1 + (k - 1) * lo), k * hi / (1 + (k - 1) * hi))
        for form, (lo, hi) in forms.items():
            rows[form] = {"description": ICC_DESCRIPTIONS[form], "icc": values[form], "F": f_obs, "df1": df1,
                          "df2": df2, "p": p, "ci_low": float(lo), "ci_high": float(hi)}
    return pd.DataFrame.from_dict(rows, orient="index").loc[list(ICC_FORMS)]


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
    return float(krippendorff.alpha(reliability_data=data, level_of_measurement=cast(Any, level)))


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
