"""The survival-analysis report: one self-contained HTML file (plots embedded as PNG).

Written by :func:`hicur_monai.survival.workflow.evaluate` (and so by the bundle's
``evaluate.json`` and ``hicur report survival``). Sections: cohort (n, events, median
follow-up by reverse Kaplan-Meier, missingness per column); per endpoint Kaplan-Meier curves
with 95% CI and numbers at risk by stage, EBV group and predicted-risk group with log-rank
tests; the Cox hazard-ratio table and forest plot; proportional-hazards checks (scaled
Schoenfeld residual tests) with a plain-language verdict; the model comparison table
(C-indices, time-dependent AUC, Brier/IBS, ICI, each with a 95% bootstrap CI); calibration
plots; and the TRIPOD+AI items the pipeline knows.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import os
import platform
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hicur_monai.data.clinical import ENDPOINTS, SCHEMA, ClinicalTable
from hicur_monai.survival.metrics import Outcome, calibration_curve, risk_groups
from hicur_monai.utils.io import atomic_write_text

__all__ = ["write_survival_report", "median_follow_up"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
color:#222;line-height:1.45;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:2px solid #345;padding-bottom:.2em;margin-top:2em}h3{margin-top:1.4em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}td,th{border:1px solid #ccc;padding:.25em .55em;
text-align:right}th{background:#eef2f6}td:first-child,th:first-child{text-align:left}
.ok{color:#1a7f37;font-weight:600}.warn{color:#b35900;font-weight:600}.note{color:#555;font-size:.9em}
img{max-width:100%;border:1px solid #eee;margin:.4em 0}.grid{display:flex;flex-wrap:wrap;gap:1em}
.grid img{max-width:520px}
"""


def _fig_to_img(fig: Any, alt: str) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, (float, np.floating)):
        return "–" if not np.isfinite(x) else f"{x:.{digits}f}"
    return html.escape(str(x))


def _table(df: pd.DataFrame, digits: int = 3) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = "".join("<tr>" + "".join(f"<td>{_fmt(v, digits)}</td>" for v in row) + "</tr>"
                   for row in df.itertuples(index=False))
    return f"<table><tr>{head}</tr>{rows}</table>"


def _ci(m: Mapping[str, float], digits: int = 3) -> str:
    return f"{_fmt(m['estimate'], digits)} ({_fmt(m['lo'], digits)}–{_fmt(m['hi'], digits)})"


def median_follow_up(time: np.ndarray, event: np.ndarray) -> float:
    """Median follow-up by the reverse Kaplan-Meier method (censoring as the event)."""
    from lifelines import KaplanMeierFitter

    kmf = KaplanMeierFitter().fit(np.asarray(time, float), 1 - np.asarray(event, int))
    return float(kmf.median_survival_time_)


def _km_plot(time: np.ndarray, event: np.ndarray, groups: np.ndarray, labels: Mapping[Any, str],
             title: str) -> tuple[str, str]:
    """KM curves with 95% CI and numbers at risk, plus the log-rank test line."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from lifelines import KaplanMeierFitter
    from lifelines.plotting import add_at_risk_counts
    from lifelines.statistics import multivariate_logrank_test

    fig, ax = plt.subplots(figsize=(7, 4.8))
    fitters = []
    for g in [g for g in labels if (groups == g).sum() > 0]:
        m = groups == g
        kmf = KaplanMeierFitter(label=f"{labels[g]} (n={int(m.sum())})").fit(time[m], event[m])
        kmf.plot_survival_function(ax=ax, ci_show=True)
        fitters.append(kmf)
    ax.set_xlabel("months since treatment start")
    ax.set_ylabel("survival probability")
    ax.set_title(title)
    ax.set_ylim(0, 1.02)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        add_at_risk_counts(*fitters, ax=ax, rows_to_show=["At risk"])
    test_line = ""
    present = np.isin(groups, [g for g in labels if (groups == g).sum() > 0])
    if len(fitters) >= 2:
        lr = multivariate_logrank_test(time[present], groups[present], event[present])
        test_line = (f"{title}: log-rank chi² = {lr.test_statistic:.2f}, df = {len(fitters) - 1}, "
                     f"p = {lr.p_value:.2g}")
    return _fig_to_img(fig, title), test_line


def _forest(hr: pd.DataFrame, title: str) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 0.45 * len(hr) + 1.2))
    y = np.arange(len(hr))[::-1]
    ax.errorbar(hr["hr"], y, xerr=[hr["hr"] - hr["hr_lo"], hr["hr_hi"] - hr["hr"]], fmt="s", color="#345", capsize=3)
    ax.axvline(1.0, color="grey", ls="--")
    ax.set_yticks(y, hr["covariate"])
    ax.set_xscale("log")
    ax.set_xlabel("hazard ratio (95% CI, log scale)")
    ax.set_title(title)
    return _fig_to_img(fig, title)


def _ph_check(cph_fitter: Any, df: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    from lifelines.statistics import proportional_hazard_test

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = proportional_hazard_test(cph_fitter, df, time_transform="rank")
    s = res.summary.reset_index()
    s = s.rename(columns={s.columns[0]: "covariate", "test_statistic": "chi²", "p": "p"})[["covariate", "chi²", "p"]]
    bad = s.loc[s["p"] < 0.05, "covariate"].tolist()
    if not bad:
        verdict = ("<span class='ok'>No evidence against proportional hazards</span> (every scaled Schoenfeld "
                   "residual test p ≥ 0.05): the hazard ratios can be read as constant over follow-up.")
    else:
        verdict = (f"<span class='warn'>Possible non-proportional hazards for {', '.join(map(str, bad))}</span> "
                   "(p < 0.05): the effect of these covariates may change over follow-up; consider stratifying on "
                   "them or adding a time interaction. With many patients small deviations also reach p < 0.05, "
                   "so look at the size of the effect, not only the p-value.")
    return s, verdict


def _calibration_plot(time: np.ndarray, event: np.ndarray, surv_t0: np.ndarray, t0: float, title: str) -> str:
    import matplotlib.pyplot as plt
    from lifelines import KaplanMeierFitter

    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    pred = 1.0 - surv_t0
    try:
        ici, p_sorted, obs = calibration_curve(Outcome(time, event), surv_t0, t0)
        ax.plot(p_sorted, obs, color="tab:red", label=f"smoothed (ICI {ici:.3f})")
    except Exception as err:  # noqa: BLE001 - plot what we can, say why the curve is missing
        ax.text(0.05, 0.9, f"no smoothed curve: {err}", transform=ax.transAxes, fontsize=8)
    q = risk_groups(pred, 5)
    xs, ys = [], []
    for g in range(5):
        m = q == g
        if m.sum() < 5:
            continue
        kmf = KaplanMeierFitter().fit(time[m], event[m])
        xs.append(pred[m].mean())
        ys.append(1.0 - float(kmf.survival_function_at_times(t0).iloc[0]))
    ax.plot(xs, ys, "o", color="#345", label="quintiles (Kaplan-Meier)")
    lim = max(0.05, float(np.nanmax(np.r_[pred, ys])) * 1.05)
    ax.plot([0, lim], [0, lim], "--", color="grey", label="perfect")
    ax.set_xlim(0, lim)
    ax.set_ylim(0, lim)
    ax.set_xlabel(f"predicted P(event by {t0:g} months)")
    ax.set_ylabel("observed")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return _fig_to_img(fig, title)


def _versions() -> str:
    import importlib.metadata as md

    parts = [f"Python {platform.python_version()}"]
    for pkg in ("hicur-monai", "monai", "torch", "lifelines", "scikit-survival", "torchsurv", "pandas"):
        try:
            parts.append(f"{pkg} {md.version(pkg)}")
        except md.PackageNotFoundError:
            pass
    return ", ".join(parts)


def write_survival_report(path: str | os.PathLike, table: ClinicalTable, results: Mapping[str, Any],
                          per_endpoint: Mapping[str, Any], truth: str | os.PathLike | Mapping | None = None) -> Path:
    """Render the report for the output of :func:`~hicur_monai.survival.workflow.evaluate`.

    Args:
        path: output HTML file (written atomically).
        table: the loaded clinical table.
        results: the ``metrics.json`` content.
        per_endpoint: per endpoint the model frame ``df``, ``ids``, CV output ``cv`` and the
            full-data Cox pipeline ``cox_full``.
        truth: the demo generator's ``truth.json`` (path or dict), to compare Cox with the truth.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    if truth is not None and not isinstance(truth, Mapping):
        truth = json.loads(Path(truth).read_text(encoding="utf-8"))
    d = table.data
    parts: list[str] = [f"<h1>Survival analysis report</h1><p class='note'>Source: {html.escape(str(table.source))}"
                        f" — generated {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M UTC} by hicur-monai.</p>"]
    if truth is not None and truth.get("synthetic"):
        parts.append("<p class='warn'>Synthetic demo cohort: randomly generated, no real patient data.</p>")

    # ---------------------------------------------------------------- cohort
    parts.append("<h2>Cohort</h2>")
    parts.append(f"<p>{html.escape(table.summary())}.</p>")
    rows = []
    for ep, info in results["endpoints"].items():
        df = per_endpoint[ep]["df"]
        rows.append({"endpoint": ENDPOINTS[ep].label, "patients": len(df), "events": int(df["event"].sum()),
                     "events %": 100.0 * df["event"].mean(),
                     "median follow-up (months, reverse KM)": median_follow_up(df["time"], df["event"]),
                     "excluded: no outcome": info["data"]["excluded_missing_outcome"],
                     "excluded: missing covariate": info["data"]["excluded_missing_covariates_rows"]})
    parts.append(_table(pd.DataFrame(rows), 1))
    miss = []
    for spec in SCHEMA:
        if spec.key in d.columns:
            n_miss = int(d[spec.key].isna().sum())
            if n_miss:
                miss.append({"column": spec.name, "missing": n_miss, "missing %": 100.0 * n_miss / max(len(d), 1)})
    parts.append("<h3>Missing values per column</h3>")
    parts.append(_table(pd.DataFrame(miss), 1) if miss else "<p>No missing values.</p>")
    parts.append("<p class='note'>Structurally missing values are expected: death and metastasis dates are "
                 "empty for patients without the event, neck-node regression for patients without neck nodes.</p>")

    # ---------------------------------------------------------------- per endpoint
    for ep, res in results["endpoints"].items():
        e = ENDPOINTS[ep]
        pe = per_endpoint[ep]
        df, cv = pe["df"], pe["cv"]
        t, ev = df["time"].to_numpy(float), df["event"].to_numpy(int)
        parts.append(f"<h2>{html.escape(e.label)} ({ep.upper()})</h2><p>{html.escape(e.definition)}.</p>")
        # KM by stage, EBV, predicted risk
        parts.append("<h3>Kaplan-Meier curves</h3><div class='grid'>")
        sub = d.loc[df.index]
        plots = []
        if "overall_stage" in sub:
            st = sub["overall_stage"].map({"I": 0, "II": 0, "III": 1, "IV": 2, "IVA": 2, "IVB": 2, "IVC": 2})
            st = st.fillna(-1).to_numpy(int)
            plots.append(_km_plot(t, ev, st, {0: "stage I-II", 1: "stage III", 2: "stage IV"}, f"{ep.upper()} by stage"))
        if "ebv" in sub:
            grp = np.where(sub["ebv"].isna(), -1, (sub["ebv"] > 4000).astype(int))
            plots.append(_km_plot(t, ev, grp, {0: "EBV DNA ≤ 4000", 1: "EBV DNA > 4000"}, f"{ep.upper()} by EBV DNA"))
        for name, r in cv["models"].items():
            g = risk_groups(r["risk"], 3)
            plots.append(_km_plot(t, ev, g, {0: "low risk", 1: "intermediate risk", 2: "high risk"},
                                  f"{ep.upper()} by out-of-fold {name} risk tertile"))
        parts.extend(img for img, _ in plots)
        parts.append("</div><ul>" + "".join(f"<li>{html.escape(title)}</li>" for _, title in plots if title) + "</ul>")
        # Cox: HRs, forest, PH
        full = pe["cox_full"]
        hr = pd.DataFrame(res["cox_full"]["hazard_ratios"])
        parts.append("<h3>Cox proportional-hazards model (all eligible patients)</h3>")
        parts.append(_table(hr[["covariate", "coef", "se", "hr", "hr_lo", "hr_hi", "z", "p"]].rename(
            columns={"hr": "HR", "hr_lo": "HR 95% lower", "hr_hi": "HR 95% upper"})))
        parts.append(_forest(hr, f"{ep.upper()}: hazard ratios"))
        fit_df = full.reducer_.transform(df) if full.reducer_ is not None else df
        ph, verdict = _ph_check(full.model.fitter_, fit_df)
        parts.append("<h3>Proportional-hazards check (scaled Schoenfeld residuals, rank time)</h3>")
        parts.append(_table(ph) + f"<p>{verdict}</p>")
        if truth is not None and ep in truth.get("endpoints", {}):
            true = truth["endpoints"][ep]["log_hr"]
            cmp = hr[hr["covariate"].isin(list(true))].copy()
            cmp["true log HR"] = cmp["covariate"].map(true)
            cmp["inside 95% CI"] = (cmp["coef_lo"] <= cmp["true log HR"]) & (cmp["true log HR"] <= cmp["coef_hi"])
            parts.append("<h3>Recovery of the generator's true log hazard ratios</h3>")
            parts.append(_table(cmp[["covariate", "true log HR", "coef", "coef_lo", "coef_hi", "inside 95% CI"]]))
            parts.append(f"<p>{int(cmp['inside 95% CI'].sum())} of {len(cmp)} true values inside the 95% CI "
                         f"(penalizer {full.model.penalizer:g}).</p>")
        # model comparison
        parts.append(f"<h3>Model comparison ({results['n_folds']}-fold cross-validation, pooled out-of-fold "
                     "predictions, 95% bootstrap CI)</h3>")
        horizons = results["horizons"]
        rows = []
        for name, mres in res["models"].items():
            m = mres["metrics"]
            row = {"model": name, "Harrell C": _ci(m["harrell_c"]), "Uno C": _ci(m["uno_c"])}
            row.update({f"AUC {h:g} m": _ci(m[f"auc@{h:g}"]) for h in horizons})
            row.update({f"Brier {h:g} m": _ci(m[f"brier@{h:g}"]) for h in horizons})
            row["IBS"] = _ci(m["ibs"])
            row.update({f"ICI {h:g} m": _ci(m[f"ici@{h:g}"]) for h in horizons})
            row["fold C (mean ± sd)"] = f"{np.mean(mres['fold_harrell_c']):.3f} ± {np.std(mres['fold_harrell_c']):.3f}"
            row["fit s/fold"] = f"{np.mean(mres['fit_seconds_per_fold']):.2f}"
            rows.append(row)
        comp = pd.DataFrame(rows).set_index("model").T.reset_index().rename(columns={"index": "metric"})
        parts.append(_table(comp))
        notes = sorted({n for mres in res["models"].values() for n in mres["metrics"]["notes"]})
        tau = next(iter(res["models"].values()))["metrics"]["tau"]
        parts.append(f"<p class='note'>IPCW metrics use the censoring distribution of the whole cohort; follow-up "
                     f"is truncated at tau = {tau:g} months. {' '.join(html.escape(n) for n in notes)}</p>")
        # calibration
        parts.append("<h3>Calibration (out-of-fold)</h3><div class='grid'>")
        for name, r in cv["models"].items():
            for h in horizons:
                if h >= tau:
                    continue
                c = int(np.flatnonzero(cv["grid"] == h)[0])
                parts.append(_calibration_plot(t, ev, r["surv"][:, c], h, f"{ep.upper()} {name}: {h:g} months"))
        parts.append("</div>")

    # ---------------------------------------------------------------- TRIPOD+AI
    parts.append("<h2>TRIPOD+AI items known to the pipeline</h2><table>")
    any_ep = next(iter(results["endpoints"].values()))
    items = [
        ("Data source (5a)", f"{table.source}; {len(d)} patients after loading; "
                             + ("synthetic demo cohort" if truth is not None else "user table")),
        ("Outcomes and definitions (6a)", "; ".join(f"{ENDPOINTS[ep].label}: {ENDPOINTS[ep].definition}"
                                                    for ep in results["endpoints"])),
        ("Predictors (7a)", ", ".join(any_ep["data"]["covariates"])
         + (f" + {any_ep['data']['image_feature_columns']} image features reduced by PCA on each training split"
            if any_ep["data"].get("image_feature_columns") else "")),
        ("Missing data (9)", f"rows with table problems dropped: {table.dropped or 'none'}; "
                             "complete-case analysis per endpoint (exclusions in the cohort table); no imputation"),
        ("Events per analysis (8)", "; ".join(f"{ep.upper()}: {r['data']['events']} events in {r['data']['n']} patients"
                                              for ep, r in results["endpoints"].items())),
        ("Model development (10)", "Cox PH (lifelines, Efron ties) and DeepSurv (PyTorch, Efron partial "
                                   "likelihood, Breslow baseline); hyperparameters below"),
        ("Validation (10b)", f"{results['n_folds']}-fold stratified cross-validation, seed {results['seed']}; "
                             "metrics on pooled out-of-fold predictions with patient-level bootstrap 95% CI"),
        ("Performance measures (10d)", "Harrell's and Uno's C; cumulative/dynamic AUC, Brier score at "
                                       + ", ".join(f"{h:g}" for h in results["horizons"])
                                       + " months; integrated Brier score; ICI calibration"),
        ("Software", _versions()),
    ]
    parts.extend(f"<tr><th>{html.escape(k)}</th><td style='text-align:left'>{html.escape(str(v))}</td></tr>"
                 for k, v in items)
    parts.append("</table>")
    for ep, res in results["endpoints"].items():
        parts.append(f"<h3>{ep.upper()}: full model specification (23)</h3>")
        bs = res["cox_full"]["baseline_survival"]
        parts.append("<p>Cox baseline survival (covariates at their means): " + ", ".join(
            f"S0({k} months) = {v:.3f}" for k, v in bs.items()) + ". All coefficients are in the hazard-ratio "
            "table above.</p>")
        parts.append("<table><tr><th>model</th><th>hyperparameters</th></tr>" + "".join(
            f"<tr><td>{html.escape(n)}</td><td style='text-align:left'>{html.escape(json.dumps(m['params']))}</td></tr>"
            for n, m in res["models"].items()) + "</table>")

    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>Survival analysis report</title>"
            f"<style>{_CSS}</style></head><body>{''.join(parts)}</body></html>")
    return atomic_write_text(path, page)
