"""The survival-analysis report: one self-contained HTML file (plots embedded as PNG).

Written by :func:`hicur_monai.survival.workflow.evaluate` (and so by the bundle's
``evaluate.json`` and ``hicur report survival``). Sections: cohort (n, events, median
follow-up by reverse Kaplan-Meier, missingness per column) and Table 1 (baseline
characteristics per endpoint cohort: median (IQR) or n (%)); per endpoint Kaplan-Meier curves
with 95% CI and numbers at risk by stage, EBV group and predicted-risk group with log-rank
tests; convergence of every fit; the Cox hazard-ratio table and forest plot;
proportional-hazards checks (scaled Schoenfeld residual tests) with a plain-language
verdict; the model comparison table (C-indices, time-dependent AUC, Brier/IBS, ICI, each with
a 95% bootstrap CI that contains its estimate); calibration plots; and the TRIPOD+AI items the
pipeline knows.

The page is rendered from ``templates/survival_report.html.j2`` by Jinja2 with autoescape:
this module builds plain-text tables and base64 images and never writes markup, so a file
name, column, endpoint or model name holding HTML reaches the page escaped. p-values are
printed by :func:`~hicur_monai.utils.formatting.format_p` (``<0.001``, never ``0.000``).
"""

from __future__ import annotations

import base64
import datetime as _dt
import io
import json
import os
import platform
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hicur_monai.data.clinical import ENDPOINTS, SCHEMA, ClinicalTable
from hicur_monai.survival.metrics import Outcome, calibration_curve, risk_groups
from hicur_monai.utils.formatting import format_p
from hicur_monai.utils.io import atomic_write_text

__all__ = ["write_survival_report", "median_follow_up", "render_report", "table1"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
color:#222;line-height:1.45;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:2px solid #345;padding-bottom:.2em;margin-top:2em}h3{margin-top:1.4em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}td,th{border:1px solid #ccc;padding:.25em .55em;
text-align:right}th{background:#eef2f6}td:first-child,th:first-child{text-align:left}td.text{text-align:left}
.ok{color:#1a7f37;font-weight:600}.warn{color:#b35900;font-weight:600}.note{color:#555;font-size:.9em}
img{max-width:100%;border:1px solid #eee;margin:.4em 0}.grid{display:flex;flex-wrap:wrap;gap:1em}
.grid img{max-width:520px}
"""

#: schema columns that are outcomes or post-treatment responses, not baseline characteristics
_NOT_BASELINE = {"failure", "death", "metastasis", "np_regression", "neck_regression", "induction_efficacy"}
_CONTINUOUS_KINDS = {"float"}
_CATEGORICAL_KINDS = {"category", "yes_no", "t_stage", "n_stage", "overall_stage", "int", "tesla"}
_P_COLUMNS = {"p"}


def _image(fig: Any, alt: str) -> dict[str, str]:
    """A matplotlib figure as ``{"alt", "data"}`` (base64 PNG) for the template; closes the figure."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return {"alt": str(alt), "data": base64.b64encode(buf.getvalue()).decode("ascii")}


def _text(x: Any, digits: int = 3) -> str:
    """A table cell as plain text: floats rounded, NaN/None as a dash."""
    if x is None:
        return "–"
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (float, np.floating)):
        return "–" if not np.isfinite(x) else f"{x:.{digits}f}"
    return str(x)


def _table(df: pd.DataFrame, digits: int = 3, p_columns: Sequence[str] = tuple(_P_COLUMNS)) -> dict[str, Any]:
    """A frame as ``{"columns", "rows"}`` of plain-text cells; ``p_columns`` through :func:`format_p`."""
    cols = [str(c) for c in df.columns]
    rows = [[format_p(v) if c in p_columns else _text(v, digits) for c, v in zip(cols, row)]
            for row in df.itertuples(index=False, name=None)]
    return {"columns": cols, "rows": rows}


def _ci(m: Mapping[str, Any], digits: int = 3) -> str:
    mark = "*" if m.get("method") == "bias-corrected basic" else ""
    return f"{_text(m['estimate'], digits)} ({_text(m['lo'], digits)}–{_text(m['hi'], digits)}){mark}"


def _label(ep: str) -> tuple[str, str, str]:
    """``(code, label, definition)`` of an endpoint key (unknown keys shown as given)."""
    e = ENDPOINTS.get(ep)
    return ep.upper(), (e.label if e else ep), (e.definition if e else "user-defined endpoint")


def median_follow_up(time: np.ndarray, event: np.ndarray) -> float:
    """Median follow-up by the reverse Kaplan-Meier method (censoring as the event)."""
    from lifelines import KaplanMeierFitter

    kmf = KaplanMeierFitter().fit(np.asarray(time, float), 1 - np.asarray(event, int))
    return float(kmf.median_survival_time_)


def _km_plot(time: np.ndarray, event: np.ndarray, groups: np.ndarray, labels: Mapping[Any, str],
             title: str) -> tuple[dict[str, str], str]:
    """KM curves with 95% CI and numbers at risk, plus the log-rank test line."""
    import matplotlib.pyplot as plt
    from lifelines import KaplanMeierFitter
    from lifelines.plotting import add_at_risk_counts
    from lifelines.statistics import multivariate_logrank_test

    fig, ax = plt.subplots(figsize=(7, 4.8))
    fitters = []
    present_groups = [g for g in labels if (groups == g).sum() > 0]
    for g in present_groups:
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
    present = np.isin(groups, present_groups)
    if len(fitters) >= 2:
        lr = multivariate_logrank_test(time[present], groups[present], event[present])
        p = format_p(lr.p_value)
        test_line = (f"{title}: log-rank chi² = {lr.test_statistic:.2f}, df = {len(fitters) - 1}, "
                     f"p {p if p.startswith('<') else '= ' + p}")
    return _image(fig, title), test_line


def _forest(hr: pd.DataFrame, title: str) -> dict[str, str]:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 0.45 * len(hr) + 1.2))
    y = np.arange(len(hr))[::-1]
    ax.errorbar(hr["hr"], y, xerr=[hr["hr"] - hr["hr_lo"], hr["hr_hi"] - hr["hr"]], fmt="s", color="#345", capsize=3)
    ax.axvline(1.0, color="grey", ls="--")
    ax.set_yticks(y, hr["covariate"])
    ax.set_xscale("log")
    ax.set_xlabel("hazard ratio (95% CI, log scale)")
    ax.set_title(title)
    return _image(fig, title)


def _ph_check(cph_fitter: Any, df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Scaled Schoenfeld residual tests: the table and the covariates with p < 0.05."""
    from lifelines.statistics import proportional_hazard_test

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = proportional_hazard_test(cph_fitter, df, time_transform="rank")
    s = res.summary.reset_index()
    s = s.rename(columns={s.columns[0]: "covariate", "test_statistic": "chi²", "p": "p"})[["covariate", "chi²", "p"]]
    return s, [str(c) for c in s.loc[s["p"] < 0.05, "covariate"]]


def _calibration_plot(time: np.ndarray, event: np.ndarray, surv_t0: np.ndarray, t0: float,
                      title: str) -> dict[str, str]:
    import matplotlib.pyplot as plt
    from lifelines import KaplanMeierFitter

    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    pred = 1.0 - surv_t0
    try:
        ici, p_sorted, obs = calibration_curve(Outcome(time, event), surv_t0, t0)
        ax.plot(p_sorted, obs, color="tab:red", label=f"smoothed (apparent ICI {ici:.3f})")
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
    return _image(fig, title)


def _versions() -> str:
    import importlib.metadata as md

    parts = [f"Python {platform.python_version()}"]
    for pkg in ("hicur-monai", "monai", "torch", "lifelines", "scikit-survival", "torchsurv", "pandas"):
        try:
            parts.append(f"{pkg} {md.version(pkg)}")
        except md.PackageNotFoundError:
            pass
    return ", ".join(parts)


def _level_name(kind: str, value: Any) -> str:
    if kind == "t_stage":
        return f"T{int(value)}"
    if kind == "n_stage":
        return f"N{int(value)}"
    if kind == "tesla":
        return f"{value:g} T"
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _describe(spec: Any, cohorts: Mapping[str, pd.DataFrame]) -> list[list[str]]:
    """Table 1 rows of one schema column: one per cohort column."""
    rows = []
    series = {name: c[spec.key] for name, c in cohorts.items()}
    label = spec.name + (f" ({spec.unit})" if spec.unit and spec.kind in _CONTINUOUS_KINDS else "")
    if spec.kind in _CONTINUOUS_KINDS:
        cells = []
        for s in series.values():
            v = pd.to_numeric(s, errors="coerce").dropna()
            cells.append("–" if v.empty else
                         f"{_num(v.median())} ({_num(v.quantile(0.25))}–{_num(v.quantile(0.75))})")
        rows.append([f"{label}, median (IQR)", *cells])
    elif spec.kind == "yes_no":
        rows.append([f"{label}: yes, n (%)", *(_n_pct((s == 1).sum(), len(s)) for s in series.values())])
    else:
        levels = sorted({v for s in series.values() for v in s.dropna().unique()}, key=_sort_key)
        rows.append([f"{label}, n (%)", *([""] * len(series))])
        rows += [[f"  {_level_name(spec.kind, lv)}", *(_n_pct((s == lv).sum(), len(s)) for s in series.values())]
                 for lv in levels]
    if any(s.isna().any() for s in series.values()):
        rows.append([f"  {spec.name}: missing, n (%)", *(_n_pct(s.isna().sum(), len(s)) for s in series.values())])
    return rows


def _num(v: float) -> str:
    """A summary number: 3 significant digits, thousands written out (6,100 rather than 6.1e+03)."""
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"


def _sort_key(v: Any) -> tuple[int, float, str]:
    return (0, float(v), "") if isinstance(v, (int, float, np.number)) else (1, 0.0, str(v))


def _n_pct(k: int, n: int) -> str:
    return f"{int(k)} ({100.0 * k / n:.1f}%)" if n else "–"


def table1(table: ClinicalTable, cohorts: Mapping[str, Sequence[Any]]) -> pd.DataFrame:
    """Baseline characteristics per cohort: continuous as median (IQR), categorical as n (%).

    Args:
        table: the loaded clinical table.
        cohorts: column header -> row labels of ``table.data`` in that cohort (e.g. the
            patients analysed for each endpoint).

    Returns:
        One row per characteristic (and per category level, plus a ``missing`` row where any
        value is missing), one column per cohort headed ``"<name> (n=<size>)"``.
    """
    frames = {f"{name} (n={len(idx)})": table.data.loc[list(idx)] for name, idx in cohorts.items()}
    rows = []
    for spec in SCHEMA:
        if spec.key in _NOT_BASELINE or spec.key not in table.data.columns:
            continue
        if spec.kind in _CONTINUOUS_KINDS or spec.kind in _CATEGORICAL_KINDS:
            rows += _describe(spec, frames)
    return pd.DataFrame(rows, columns=["characteristic", *frames])


def _cohort(table: ClinicalTable, results: Mapping[str, Any], per_endpoint: Mapping[str, Any]) -> dict[str, Any]:
    rows = []
    for ep, info in results["endpoints"].items():
        df = per_endpoint[ep]["df"]
        rows.append({"endpoint": _label(ep)[1], "patients": len(df), "events": int(df["event"].sum()),
                     "events %": 100.0 * df["event"].mean(),
                     "median follow-up (months, reverse KM)": median_follow_up(df["time"], df["event"]),
                     "excluded: no outcome": info["data"]["excluded_missing_outcome"],
                     "excluded: missing covariate": info["data"]["excluded_missing_covariates_rows"]})
    d = table.data
    miss = [{"column": spec.name, "missing": int(d[spec.key].isna().sum()),
             "missing %": 100.0 * int(d[spec.key].isna().sum()) / max(len(d), 1)}
            for spec in SCHEMA if spec.key in d.columns and d[spec.key].isna().any()]
    return {"summary": table.summary(), "table": _table(pd.DataFrame(rows), 1),
            "missing": _table(pd.DataFrame(miss), 1) if miss else None}


def _km_section(ep: str, sub: pd.DataFrame, t: np.ndarray, ev: np.ndarray, cv: Mapping[str, Any]) -> list:
    code = ep.upper()
    plots = []
    if "overall_stage" in sub:
        st = sub["overall_stage"].map({"I": 0, "II": 0, "III": 1, "IV": 2, "IVA": 2, "IVB": 2, "IVC": 2})
        plots.append(_km_plot(t, ev, st.fillna(-1).to_numpy(int), {0: "stage I-II", 1: "stage III", 2: "stage IV"},
                              f"{code} by stage"))
    if "ebv" in sub:
        grp = np.where(sub["ebv"].isna(), -1, (sub["ebv"] > 4000).astype(int))
        plots.append(_km_plot(t, ev, grp, {0: "EBV DNA ≤ 4000", 1: "EBV DNA > 4000"}, f"{code} by EBV DNA"))
    for name, r in cv["models"].items():
        plots.append(_km_plot(t, ev, risk_groups(r["risk"], 3), {0: "low risk", 1: "intermediate risk", 2: "high risk"},
                              f"{code} by out-of-fold {name} risk tertile"))
    return plots


def _convergence(res: Mapping[str, Any]) -> dict[str, Any]:
    """One row per model (cross-validation folds) plus the full-data Cox fit."""
    rows = []
    for name, mres in res["models"].items():
        conv = mres.get("convergence_per_fold", [])
        ok = sum(bool(c.get("converged")) for c in conv)
        detail = "; ".join(
            f"attempt {c['attempts']} (step {c['step_size']:g})" if "attempts" in c else
            "/".join(map(str, c["epochs_run"])) + " epochs" + (" (early stop)" if all(c["early_stopped"]) else "")
            for c in conv)
        rows.append({"fit": f"{name}, cross-validation", "converged": f"{ok}/{len(conv)} folds",
                     "how (per fold)": detail or "–"})
    full = res.get("cox_full", {}).get("convergence")
    if full:
        rows.append({"fit": "cox, all eligible patients", "converged": "yes" if full.get("converged") else "no",
                     "how (per fold)": f"attempt {full['attempts']} (step {full['step_size']:g}), "
                                       f"log-likelihood {full['log_likelihood']:.2f}"})
    return _table(pd.DataFrame(rows))


def _truth_section(hr: pd.DataFrame, truth: Mapping[str, Any] | None, ep: str, penalizer: float) -> dict | None:
    if truth is None or ep not in truth.get("endpoints", {}):
        return None
    true = truth["endpoints"][ep]["log_hr"]
    cmp = hr[hr["covariate"].isin(list(true))].copy()
    cmp["true log HR"] = cmp["covariate"].map(true)
    cmp["inside 95% CI"] = (cmp["coef_lo"] <= cmp["true log HR"]) & (cmp["true log HR"] <= cmp["coef_hi"])
    return {"table": _table(cmp[["covariate", "true log HR", "coef", "coef_lo", "coef_hi", "inside 95% CI"]]),
            "inside": int(cmp["inside 95% CI"].sum()), "total": len(cmp), "penalizer": f"{penalizer:g}"}


def _comparison(res: Mapping[str, Any], horizons: Sequence[float]) -> tuple[dict[str, Any], bool]:
    rows, corrected = [], False
    for name, mres in res["models"].items():
        m = mres["metrics"]
        cells = {"harrell_c": "Harrell C", "uno_c": "Uno C", **{f"auc@{h:g}": f"AUC {h:g} m" for h in horizons},
                 **{f"brier@{h:g}": f"Brier {h:g} m" for h in horizons}, "ibs": "IBS",
                 **{f"ici@{h:g}": f"ICI {h:g} m" for h in horizons}}
        row = {"model": name, **{label: _ci(m[key]) for key, label in cells.items()}}
        corrected |= any(m[key].get("method") == "bias-corrected basic" for key in cells)
        fc = mres["fold_harrell_c"]
        row["fold C (mean ± sd)"] = f"{np.mean(fc):.3f} ± {np.std(fc):.3f}"
        row["fit s/fold"] = f"{np.mean(mres['fit_seconds_per_fold']):.2f}"
        rows.append(row)
    comp = pd.DataFrame(rows).set_index("model").T.reset_index().rename(columns={"index": "metric"})
    return _table(comp), corrected


def _endpoint(ep: str, res: Mapping[str, Any], pe: Mapping[str, Any], data: pd.DataFrame, horizons: Sequence[float],
              truth: Mapping[str, Any] | None) -> dict[str, Any]:
    code, label, definition = _label(ep)
    df, cv, full = pe["df"], pe["cv"], pe["cox_full"]
    t, ev = df["time"].to_numpy(float), df["event"].to_numpy(int)
    plots = _km_section(ep, data.loc[df.index], t, ev, cv)
    hr = pd.DataFrame(res["cox_full"]["hazard_ratios"])
    fit_df = full.reducer_.transform(df) if full.reducer_ is not None else df
    ph, bad = _ph_check(full.model.fitter_, full.model.standardise(fit_df))
    comparison, corrected = _comparison(res, horizons)
    tau = next(iter(res["models"].values()))["metrics"]["tau"]
    calibration = []
    for name, r in cv["models"].items():
        for h in horizons:
            if h < tau:
                c = int(np.flatnonzero(cv["grid"] == h)[0])
                calibration.append(_calibration_plot(t, ev, r["surv"][:, c], h, f"{code} {name}: {h:g} months"))
    hr_view = hr[["covariate", "coef", "se", "hr", "hr_lo", "hr_hi", "z", "p"]].rename(
        columns={"hr": "HR", "hr_lo": "HR 95% lower", "hr_hi": "HR 95% upper"})
    return {"code": code, "label": label, "definition": definition,
            "km_images": [img for img, _ in plots], "km_tests": [line for _, line in plots if line],
            "convergence": _convergence(res), "hazard_ratios": _table(hr_view),
            "forest": _forest(hr, f"{code}: hazard ratios"),
            "ph_table": _table(ph), "ph_bad": bad, "truth": _truth_section(hr, truth, ep, full.model.penalizer),
            "comparison": comparison, "bias_corrected": corrected, "tau": f"{tau:g}",
            "notes": sorted({n for mres in res["models"].values() for n in mres["metrics"]["notes"]}),
            "calibration": calibration}


def _image_source(desc: Mapping[str, Any]) -> str:
    """Where the image features came from, for the TRIPOD predictors item."""
    if desc.get("source") == "file":
        return f" (from {desc.get('file')})"
    if desc.get("source") == "extracted":
        ckpts = "; ".join(f"{k}: {v['path']} (sha256 {v['sha256'][:12]})" for k, v in desc["checkpoints"].items())
        return f" (extracted over the tumour slices from {ckpts}; {desc.get('n_studies')} studies)"
    return ""


def _tripod(table: ClinicalTable, results: Mapping[str, Any], truth: Any) -> list[tuple[str, str]]:
    any_ep = next(iter(results["endpoints"].values()))
    eps = results["endpoints"]
    return [
        ("Data source (5a)", f"{table.source}; {len(table.data)} patients after loading; "
                             + ("synthetic demo cohort" if truth is not None else "user table")),
        ("Outcomes and definitions (6a)", "; ".join(f"{_label(ep)[1]}: {_label(ep)[2]}" for ep in eps)),
        ("Predictors (7a)", ", ".join(map(str, any_ep["data"]["covariates"]))
         + (f" + {any_ep['data']['image_feature_columns']} image features reduced by PCA on each training split"
            + _image_source(results.get("image_features") or {})
            if any_ep["data"].get("image_feature_columns") else "")),
        ("Missing data (9)", f"rows with table problems dropped: {table.dropped or 'none'}; "
                             "complete-case analysis per endpoint (exclusions in the cohort table); no imputation"),
        ("Events per analysis (8)", "; ".join(f"{ep.upper()}: {r['data']['events']} events in {r['data']['n']} patients"
                                              for ep, r in eps.items())),
        ("Model development (10)", "Cox PH (lifelines, Efron ties, standardised covariates, convergence checked) and "
                                   "DeepSurv (PyTorch, Efron partial likelihood, Breslow baseline); "
                                   "hyperparameters below"),
        ("Validation (10b)", f"{results['n_folds']}-fold stratified cross-validation, seed {results['seed']}; "
                             "metrics on pooled out-of-fold predictions with patient-level bootstrap 95% CI"),
        ("Performance measures (10d)", "Harrell's and Uno's C; cumulative/dynamic AUC, Brier score at "
                                       + ", ".join(f"{h:g}" for h in results["horizons"])
                                       + " months; integrated Brier score; ICI calibration"),
        ("Software", _versions()),
    ]


def render_report(context: Mapping[str, Any]) -> str:
    """Render ``templates/survival_report.html.j2`` with autoescape (every context string is escaped)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("hicur_monai.survival", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env.get_template("survival_report.html.j2").render(**context)


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
    facts: Mapping[str, Any] | None = (json.loads(Path(truth).read_text(encoding="utf-8"))
                                       if truth is not None and not isinstance(truth, Mapping) else truth)
    eps = results["endpoints"]
    context = {
        "css": _CSS, "source": str(table.source),
        "generated": f"{_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M UTC}",
        "synthetic": bool(facts is not None and facts.get("synthetic")),
        "cohort": _cohort(table, results, per_endpoint),
        "table1": _table(table1(table, {f"{_label(ep)[1]} cohort": per_endpoint[ep]["df"].index for ep in eps})),
        "endpoints": [_endpoint(ep, res, per_endpoint[ep], table.data, results["horizons"], facts)
                      for ep, res in eps.items()],
        "n_folds": results["n_folds"], "tripod": _tripod(table, results, facts),
        "specs": [{"code": ep.upper(),
                   "baseline": ", ".join(f"S0({k} months) = {v:.3f}"
                                         for k, v in res["cox_full"]["baseline_survival"].items()),
                   "params": [(n, json.dumps(m["params"])) for n, m in res["models"].items()]}
                  for ep, res in eps.items()],
    }
    return atomic_write_text(path, render_report(context))
