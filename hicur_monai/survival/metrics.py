"""Survival-model metrics with patient-level bootstrap confidence intervals.

Harrell's C (lifelines), Uno's C, time-dependent AUC, Brier score and integrated Brier
score (scikit-survival, inverse probability of censoring weights), calibration at fixed
horizons (smoothed calibration curve and ICI of Austin et al. 2020, fitted with lifelines), and
Kaplan-Meier by predicted-risk group with a log-rank test.

The IPCW metrics need the censoring distribution, estimated on the training outcomes;
scikit-survival raises when a test time reaches the last training follow-up (the censoring
survival is zero there). :func:`ipcw_truncation` handles that the standard way, by
administrative censoring of the test data at ``tau`` (the last time where the censoring
survival is still positive), and horizons beyond the data give NaN with a note, not a crash.

Risk scores: higher = earlier event (sksurv convention); lifelines' concordance wants
predicted times, so it gets ``-risk``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hicur_monai.survival.models import breslow_baseline

__all__ = [
    "Outcome",
    "ipcw_truncation",
    "harrell_c",
    "uno_c",
    "td_auc",
    "brier",
    "calibration_ici",
    "calibration_curve",
    "risk_groups",
    "evaluate_survival",
    "bootstrap_ci",
    "bootstrap_interval",
    "bootstrap_intervals",
    "SurvivalPredictions",
]

logger = logging.getLogger(__name__)


@dataclass
class Outcome:
    """Times (months) and events (0/1) of a set of patients."""

    time: np.ndarray
    event: np.ndarray

    def __post_init__(self) -> None:
        self.time = np.asarray(self.time, dtype=float).reshape(-1)
        self.event = np.asarray(self.event).astype(bool).reshape(-1)
        if self.time.shape != self.event.shape:
            raise ValueError("time and event must have the same length")

    def structured(self) -> np.ndarray:
        from sksurv.util import Surv

        return Surv.from_arrays(event=self.event, time=self.time)

    def __len__(self) -> int:
        return len(self.time)

    def subset(self, idx: np.ndarray) -> Outcome:
        return Outcome(self.time[idx], self.event[idx])


def ipcw_truncation(train: Outcome, test: Outcome) -> tuple[Outcome, float]:
    """Censor the test outcomes administratively at ``tau`` so IPCW weights exist.

    ``tau`` is the largest training time strictly before the last training time at which
    the Kaplan-Meier censoring survival is still positive (and no later than the last test
    time). Test patients followed beyond ``tau`` become censored at ``tau``.
    """
    from sksurv.nonparametric import kaplan_meier_estimator

    t_c, g = kaplan_meier_estimator(~train.event, train.time)  # censoring "events"
    positive = t_c[g > 0]
    tau = float(positive.max()) if len(positive) else float(train.time.max())
    tau = min(tau, float(np.nextafter(train.time.max(), -np.inf)), float(test.time.max()))
    beyond = test.time > tau
    return Outcome(np.where(beyond, tau, test.time), np.where(beyond, False, test.event)), tau


def harrell_c(test: Outcome, risk: np.ndarray) -> float:
    """Harrell's concordance index (lifelines; ties in risk count 1/2)."""
    from lifelines.utils import concordance_index

    return float(concordance_index(test.time, -np.asarray(risk, float), test.event))


def uno_c(train: Outcome, test: Outcome, risk: np.ndarray, tau: float | None = None) -> float:
    """Uno's IPCW concordance up to ``tau`` (scikit-survival)."""
    from sksurv.metrics import concordance_index_ipcw

    tt, tau_max = ipcw_truncation(train, test)
    tau = tau_max if tau is None else min(tau, tau_max)
    return float(concordance_index_ipcw(train.structured(), tt.structured(), np.asarray(risk, float), tau=tau)[0])


def _valid_times(test: Outcome, times: Sequence[float]) -> np.ndarray:
    t = np.asarray(times, float)
    return t[(t >= test.time.min()) & (t < test.time.max())]


def td_auc(train: Outcome, test: Outcome, risk: np.ndarray, times: Sequence[float]) -> dict[float, float]:
    """Cumulative/dynamic AUC at each horizon (NaN where the horizon is outside the test follow-up)."""
    from sksurv.metrics import cumulative_dynamic_auc

    tt, _ = ipcw_truncation(train, test)
    ok = _valid_times(tt, times)
    out = {float(t): float("nan") for t in times}
    if len(ok):
        auc, _ = cumulative_dynamic_auc(train.structured(), tt.structured(), np.asarray(risk, float), ok)
        out.update({float(t): float(a) for t, a in zip(ok, np.atleast_1d(auc))})
    return out


def brier(train: Outcome, test: Outcome, surv: np.ndarray, grid: np.ndarray,
          horizons: Sequence[float]) -> tuple[dict[float, float], float]:
    """Brier score at each horizon and the integrated Brier score over ``grid``.

    ``surv`` is ``S(t | x)`` of the test patients at ``grid`` (shape ``(n, len(grid))``).
    """
    from sksurv.metrics import brier_score, integrated_brier_score

    tt, _ = ipcw_truncation(train, test)
    grid = np.asarray(grid, float)
    keep = (grid >= tt.time.min()) & (grid < tt.time.max())
    out = {float(h): float("nan") for h in horizons}
    hz = [h for h in horizons if h in set(grid[keep])]
    if hz:
        cols = [int(np.flatnonzero(grid == h)[0]) for h in hz]
        _, bs = brier_score(train.structured(), tt.structured(), surv[:, cols], np.asarray(hz, float))
        out.update({float(h): float(b) for h, b in zip(hz, np.atleast_1d(bs))})
    ibs = float("nan")
    if keep.sum() >= 2:
        ibs = float(integrated_brier_score(train.structured(), tt.structured(), surv[:, keep], grid[keep]))
    return out, ibs


def _rcs_basis(x: np.ndarray, knots: np.ndarray) -> np.ndarray:
    """Restricted cubic spline basis (Harrell): ``x`` plus ``len(knots) - 2`` non-linear terms."""
    k = np.asarray(knots, float)
    scale = (k[-1] - k[0]) ** 2 or 1.0

    def pos3(v: np.ndarray) -> np.ndarray:
        return np.clip(v, 0, None) ** 3

    cols = [x]
    for j in range(len(k) - 2):
        cols.append((pos3(x - k[j]) - pos3(x - k[-2]) * (k[-1] - k[j]) / (k[-1] - k[-2])
                     + pos3(x - k[-1]) * (k[-2] - k[j]) / (k[-1] - k[-2])) / scale)
    return np.column_stack(cols)


def _linear_cox_lp(x: np.ndarray, time: np.ndarray, event: np.ndarray, ridge: float = 1e-4) -> np.ndarray:
    """Linear predictor of a (slightly ridge-penalised) Cox fit with Efron ties, by L-BFGS.

    Small and fast (the calibration model has two or three columns and is refitted on
    every bootstrap sample); the likelihood is the one tested against lifelines.
    """
    import torch

    from hicur_monai.survival.losses import EfronPartialLikelihood

    xt = torch.as_tensor((x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1.0), dtype=torch.float64)
    lik = EfronPartialLikelihood(torch.as_tensor(time, dtype=torch.float64), torch.as_tensor(event))
    beta = torch.zeros(xt.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([beta], lr=1.0, max_iter=100, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = -lik(xt @ beta) / max(lik.n_events, 1) + 0.5 * ridge * beta.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    if not torch.isfinite(beta).all():
        raise ValueError("calibration model did not converge")
    return (xt @ beta).detach().numpy()


def calibration_curve(test: Outcome, surv_at_t0: np.ndarray, t0: float,
                      n_knots: int = 3) -> tuple[float, np.ndarray, np.ndarray]:
    """Smoothed calibration at ``t0`` (Austin, Harrell & van Klaveren 2020).

    The observed event probability by ``t0`` as a smooth function of the predicted one:
    a Cox model (Efron ties, Breslow baseline) of the test outcomes on a restricted cubic spline of
    ``cloglog(predicted probability)``. Returns ``(ICI, predicted, observed)`` where ICI is
    the mean absolute difference between observed and predicted over the patients.
    """
    p = np.clip(1.0 - np.asarray(surv_at_t0, float), 1e-6, 1 - 1e-6)
    x = np.log(-np.log(1.0 - p))
    knots = np.quantile(x, np.linspace(0.1, 0.9, n_knots))
    if np.unique(knots).size < n_knots:
        raise ValueError("too few distinct predictions for a calibration curve")
    basis = _rcs_basis(x, knots)
    lp = _linear_cox_lp(basis, test.time, test.event)
    h0 = breslow_baseline(lp, test.time, test.event.astype(int))
    idx = np.searchsorted(h0[0], t0, side="right") - 1
    h0_t0 = float(h0[1][idx]) if idx >= 0 else 0.0
    observed = 1.0 - np.exp(-h0_t0 * np.exp(lp))
    order = np.argsort(p)
    return float(np.mean(np.abs(observed - p))), p[order], observed[order]


def calibration_ici(test: Outcome, surv_at_t0: np.ndarray, t0: float) -> float:
    """Integrated calibration index at ``t0`` (see :func:`calibration_curve`); NaN if it cannot be fitted."""
    try:
        return calibration_curve(test, surv_at_t0, t0)[0]
    except (ValueError, np.linalg.LinAlgError, ArithmeticError) as err:
        logger.debug("calibration at t0=%s failed: %s", t0, err)
        return float("nan")
    except Exception as err:  # lifelines' ConvergenceError and friends on degenerate resamples
        logger.debug("calibration at t0=%s failed: %s", t0, err)
        return float("nan")


def risk_groups(risk: np.ndarray, n_groups: int = 3, cutpoints: Sequence[float] | None = None) -> np.ndarray:
    """Group index 0..n_groups-1 by predicted risk (quantile cut points unless given)."""
    risk = np.asarray(risk, float)
    if cutpoints is None:
        cutpoints = np.quantile(risk, np.linspace(0, 1, n_groups + 1)[1:-1])
    return np.searchsorted(np.asarray(cutpoints, float), risk, side="right")


def bootstrap_interval(draws: Sequence[float | None], apparent: float, alpha: float = 0.05,
                       bias_corrected: bool = False, bounds: tuple[float, float] = (-np.inf, np.inf),
                       min_draws: int = 10) -> dict[str, Any]:
    """A bootstrap interval that contains its estimate.

    * ``percentile``: the ``alpha/2`` and ``1 - alpha/2`` quantiles of the resampled
      statistic, with the apparent (full-sample) estimate, when they enclose it;
    * ``bias-corrected basic`` otherwise, and always when ``bias_corrected``: the estimate is
      corrected for the bootstrap's median bias, ``2 * apparent - median(draws)``, and the
      interval is the basic (reverse-percentile) bootstrap interval ``[2 * apparent - q_hi,
      2 * apparent - q_lo]`` (Davison & Hinkley 1997, 5.2). As ``q_lo <= median <= q_hi``
      the corrected estimate always lies inside. Both are then clipped to ``bounds`` (a
      monotone map, so the estimate stays inside); a statistic that cannot be negative, such
      as the ICI, whose resamples sit above the full-sample value (duplicated patients add
      noise that an absolute difference cannot cancel), gets ``bounds=(0, inf)``.

    Returns:
        ``{"estimate", "lo", "hi", "apparent", "method", "n_valid"}`` (NaN interval with fewer
        than ``min_draws`` defined resamples).
    """
    v = np.asarray([x for x in draws if x is not None and np.isfinite(x)], float)
    out: dict[str, Any] = {"estimate": float(apparent), "lo": float("nan"), "hi": float("nan"),
                           "apparent": float(apparent), "method": "percentile", "n_valid": int(len(v))}
    if len(v) < min_draws or not np.isfinite(apparent):
        out["method"] = "not enough defined resamples" if np.isfinite(apparent) else "estimate undefined"
        return out
    q_lo, q_hi = (float(q) for q in np.quantile(v, [alpha / 2, 1 - alpha / 2]))
    if not bias_corrected and q_lo <= apparent <= q_hi:
        out.update(lo=q_lo, hi=q_hi)
        return out
    lo, hi = bounds
    est = float(np.clip(2 * apparent - np.median(v), lo, hi))
    out.update(estimate=est, lo=float(np.clip(2 * apparent - q_hi, lo, hi)),
               hi=float(np.clip(2 * apparent - q_lo, lo, hi)), method="bias-corrected basic")
    return out


def _resample(stat: Callable[[np.ndarray], Any], n: int, n_boot: int, seed: int) -> tuple[Any, list[Any]]:
    """The full-sample statistic and ``n_boot`` patient-level resamples (None where undefined)."""
    rng = np.random.default_rng(seed)
    full = stat(np.arange(n))
    draws = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        try:
            draws.append(stat(idx))
        except (ValueError, ZeroDivisionError, np.linalg.LinAlgError):
            draws.append(None)
    return full, draws


def bootstrap_intervals(stat: Callable[[np.ndarray], dict[str, float]], n: int, n_boot: int = 200, seed: int = 0,
                        alpha: float = 0.05, bias_corrected: Collection[str] = (),
                        bounds: Mapping[str, tuple[float, float]] | None = None) -> dict[str, dict[str, Any]]:
    """Patient-level bootstrap of a dict of statistics: :func:`bootstrap_interval` per key.

    Resamples that make a statistic undefined (ValueError, ZeroDivisionError, LinAlgError, or
    NaN) are left out of its interval.

    Args:
        bias_corrected: keys that always get the bias-corrected interval (non-negative statistics).
        bounds: per key, the range of the statistic (default unbounded).
    """
    full, draws = _resample(stat, n, n_boot, seed)
    bounds = dict(bounds or {})
    return {k: bootstrap_interval([d.get(k) if isinstance(d, dict) else None for d in draws], float(full[k]), alpha,
                                  k in set(bias_corrected), bounds.get(k, (-np.inf, np.inf)), max(10, n_boot // 4))
            for k in full}


def bootstrap_ci(stat: Callable[[np.ndarray], float | dict], n: int, n_boot: int = 200, seed: int = 0,
                 alpha: float = 0.05) -> tuple[Any, Any, Any]:
    """``(estimate, lower, upper)`` of a patient-level bootstrap (dicts map element-wise).

    The interval contains the estimate: percentile where that encloses the full-sample value,
    bias-corrected basic otherwise (see :func:`bootstrap_interval`).
    """
    full, draws = _resample(stat, n, n_boot, seed)
    if isinstance(full, dict):
        res = {k: bootstrap_interval([d.get(k) if isinstance(d, dict) else None for d in draws], float(full[k]),
                                     alpha, min_draws=max(10, n_boot // 4)) for k in full}
        return ({k: r["estimate"] for k, r in res.items()}, {k: r["lo"] for k, r in res.items()},
                {k: r["hi"] for k, r in res.items()})
    r = bootstrap_interval(draws, float(full), alpha, min_draws=max(10, n_boot // 4))
    return r["estimate"], r["lo"], r["hi"]


@dataclass
class SurvivalPredictions:
    """One model's predictions for a set of test patients."""

    risk: np.ndarray
    surv: np.ndarray  # S(t|x) at grid, (n, len(grid))
    grid: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)


def evaluate_survival(train: Outcome, test: Outcome, pred: SurvivalPredictions,
                      horizons: Sequence[float] = (12.0, 36.0, 60.0), n_boot: int = 200,
                      n_boot_calibration: int = 30, seed: int = 0) -> dict[str, Any]:
    """Every metric of the issue with a 95% bootstrap CI, as a flat dict.

    Keys: ``harrell_c``, ``uno_c``, ``auc@<h>``, ``brier@<h>``, ``ibs``, ``ici@<h>``, each
    ``{"estimate", "lo", "hi", "apparent", "method", "n_valid"}`` (:func:`bootstrap_interval`:
    the interval always contains the estimate; the ICI, a non-negative statistic whose
    resamples sit above the full-sample value, always gets the bias-corrected basic interval
    truncated at 0, the others the percentile interval unless it misses the estimate); plus
    ``tau`` (IPCW truncation time) and ``notes``.
    Horizons must be points of ``pred.grid``.
    """
    horizons = [float(h) for h in horizons]
    grid = np.asarray(pred.grid, float)
    missing = [h for h in horizons if h not in set(grid)]
    if missing:
        raise ValueError(f"horizons {missing} are not points of the prediction grid")
    risk, surv = np.asarray(pred.risk, float), np.asarray(pred.surv, float)
    if len(risk) != len(test) or surv.shape != (len(test), len(grid)):
        raise ValueError(f"predictions do not match the test set: risk {risk.shape}, surv {surv.shape}, "
                         f"{len(test)} patients, {len(grid)} grid points")
    _, tau = ipcw_truncation(train, test)
    notes = []
    too_late = [h for h in horizons if h >= tau]
    if too_late:
        notes.append(f"horizons {too_late} months are at or beyond the IPCW truncation time tau={tau:g}: "
                     "AUC/Brier there are NaN")

    def core(idx: np.ndarray) -> dict[str, float]:
        sub = test.subset(idx)
        if sub.event.sum() < 2:
            raise ValueError("too few events")
        out = {"harrell_c": harrell_c(sub, risk[idx]), "uno_c": uno_c(train, sub, risk[idx])}
        out.update({f"auc@{h:g}": v for h, v in td_auc(train, sub, risk[idx], horizons).items()})
        bs, ibs = brier(train, sub, surv[idx], grid, horizons)
        out.update({f"brier@{h:g}": v for h, v in bs.items()})
        out["ibs"] = ibs
        return out

    unit = (0.0, 1.0)  # every metric here lies in [0, 1]
    keys = ["harrell_c", "uno_c", *(f"auc@{h:g}" for h in horizons), *(f"brier@{h:g}" for h in horizons), "ibs"]
    result: dict[str, Any] = bootstrap_intervals(core, len(test), n_boot=n_boot, seed=seed,
                                                 bounds=dict.fromkeys(keys, unit))
    cols = [int(np.flatnonzero(grid == h)[0]) for h in horizons]

    def calib(idx: np.ndarray) -> dict[str, float]:
        sub = test.subset(idx)
        return {f"ici@{h:g}": calibration_ici(sub, surv[idx, c], h) for h, c in zip(horizons, cols)}

    ici_keys = [f"ici@{h:g}" for h in horizons]
    result.update(bootstrap_intervals(calib, len(test), n_boot=n_boot_calibration, seed=seed + 1,
                                      bias_corrected=ici_keys, bounds=dict.fromkeys(ici_keys, unit)))
    result["tau"] = tau
    result["n"] = int(len(test))
    result["events"] = int(test.event.sum())
    result["n_boot"] = {"discrimination": n_boot, "calibration": n_boot_calibration}
    result["notes"] = notes
    return result
