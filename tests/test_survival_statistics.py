"""Statistics of the survival evaluation: bootstrap intervals that contain their estimate (issue 19 item 4)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("lifelines")
pytest.importorskip("sksurv")

from hicur_monai.survival.metrics import (  # noqa: E402
    Outcome,
    SurvivalPredictions,
    bootstrap_interval,
    evaluate_survival,
)


def _well_calibrated(n: int = 300, seed: int = 1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    t_true = rng.exponential(30 * np.exp(-x))
    c = rng.uniform(10, 80, n)
    grid = np.array([12.0, 24.0, 36.0])
    surv = np.exp(-np.outer(1 / (30 * np.exp(-x)), grid))  # the true model: ICI near 0
    return Outcome(np.minimum(t_true, c), t_true <= c), x, surv, grid


def test_every_interval_contains_its_estimate():
    """With the true model the ICI is near 0 and its resamples lie above it: here the percentile
    interval was 0.014-0.059 around an ICI of 0.011 (as "0.003 (0.004-0.027)" in the issue); the
    bias-corrected interval cannot miss its estimate."""
    out, x, surv, grid = _well_calibrated()
    res = evaluate_survival(out, out, SurvivalPredictions(x, surv, grid), horizons=(24.0,), n_boot=12,
                            n_boot_calibration=15, seed=0)
    metrics = [k for k, v in res.items() if isinstance(v, dict) and "estimate" in v]
    assert {"harrell_c", "ici@24", "ibs"} <= set(metrics)
    for k in metrics:
        r = res[k]
        if np.isfinite(r["lo"]):
            assert r["lo"] <= r["estimate"] <= r["hi"], (k, r)
            assert 0.0 <= r["lo"] and r["hi"] <= 1.0, (k, r)
    ici = res["ici@24"]
    assert ici["method"] == "bias-corrected basic" and ici["apparent"] >= ici["estimate"] >= 0.0
    assert res["harrell_c"]["method"] == "percentile" and res["harrell_c"]["estimate"] == res["harrell_c"]["apparent"]


def test_bootstrap_interval_rules():
    draws = [0.004, 0.006, 0.01, 0.012, 0.02, 0.027] * 5  # all above the apparent value, as the ICI's
    r = bootstrap_interval(draws, 0.003, bias_corrected=True, bounds=(0.0, 1.0))
    assert r["lo"] <= r["estimate"] <= r["hi"] and r["lo"] == 0.0 and r["method"] == "bias-corrected basic"
    # not forced: percentile when it encloses the estimate, bias-corrected when it does not
    sym = list(np.linspace(0.6, 0.8, 40))
    assert bootstrap_interval(sym, 0.7)["method"] == "percentile"
    miss = bootstrap_interval(sym, 0.95)
    assert miss["method"] == "bias-corrected basic" and miss["lo"] <= miss["estimate"] <= miss["hi"]
    assert np.isnan(bootstrap_interval([0.1, None, np.nan], 0.1)["lo"])  # too few defined resamples
