"""Aggregate judge and physician scores into one table with confidence intervals.

Per system and criterion (and per question kind): the mean of the judge runs, the mean of
the physicians, and the combined final score, each with a 95% bootstrap confidence interval
over items; agreement between physicians, between judge runs and between the judge and
the physicians; paired comparisons between systems. :func:`aggregate` writes
``summary.csv``, ``agreement.csv``, ``pairwise.csv`` (and ``relative.csv`` for LLaVA-Med
judgments) plus ``report.html`` with the table and a bar chart.

Resampling unit is the item: an item's score is the mean over its ratings, the system score
the mean over items, and the bootstrap draws items with replacement.

The **final score** follows the original protocol, "judge runs and physicians averaged":
with ``combine="pooled"`` (default) each item's final score is the mean of all its ratings,
the ``runs`` judge scores and every physician's score together; with ``combine="equal"``
it is the mean of the judge mean and the physician mean (judge and panel weigh the same).
"""

from __future__ import annotations

import base64
import io
import itertools
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hicur_monai.utils.csv_safe import neutralize_formulas
from hicur_monai.utils.formatting import format_p
from hicur_monai.utils.io import atomic_write_bytes, atomic_write_text

from .agreement import icc_table, krippendorff_alpha, rating_matrix
from .judge import CRITERIA
from .records import iter_jsonl, read_items

__all__ = [
    "load_judgments",
    "load_physician_scores",
    "item_scores",
    "bootstrap_ci",
    "summarize",
    "agreement_table",
    "pairwise_table",
    "relative_scores",
    "aggregate",
]

logger = logging.getLogger(__name__)

_SOURCES = ("judge", "physician", "final")
#: criteria per judge protocol besides the rubric's: the LLaVA-Med protocol scores one "overall"
_PROTOCOL_CRITERIA = {"llava-med": ("overall",)}


def _check_criterion(criterion: str, allowed: Sequence[str], where: str) -> None:
    if criterion not in allowed:
        raise ValueError(f"{where}: unknown criterion {criterion!r}; expected one of {list(allowed)}")


def load_judgments(path: str | os.PathLike, criteria: Sequence[str] = CRITERIA) -> pd.DataFrame:
    """Judge records (from :func:`~hicur_monai.evaluation.judge.run_judge`) as a table.

    Missing judgments (``"score": null``) are kept with ``score`` NaN and ``status``
    ``"missing"``; they never count as 0.

    Args:
        path: JSON-lines judge records.
        criteria: the criteria a rubric record may have (LLaVA-Med records have ``"overall"``).

    Raises:
        ValueError: naming the line of a record without ``item_id``, ``system``,
            ``criterion`` or ``run``, with a criterion outside ``criteria``, or with a
            score that is not a number.
    """
    rows = []
    for lineno, rec in iter_jsonl(path):
        for key in ("item_id", "system", "criterion", "run"):
            if key not in rec:
                raise ValueError(f"{path}:{lineno}: judgment record has no {key!r}")
        allowed = _PROTOCOL_CRITERIA.get(rec.get("protocol", ""), tuple(criteria))
        _check_criterion(str(rec["criterion"]), allowed, f"{path}:{lineno}")
        score = rec.get("score")
        if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))):
            raise ValueError(f"{path}:{lineno}: 'score' must be a number or null, got {score!r}")
        ref = rec.get("reference_score")
        rows.append({
            "item_id": str(rec["item_id"]), "system": str(rec["system"]), "kind": rec.get("kind", ""),
            "criterion": str(rec["criterion"]), "run": int(rec["run"]),
            "score": float("nan") if score is None else float(score),
            "reference_score": float("nan") if ref is None else float(ref),
            "protocol": rec.get("protocol", ""), "status": rec.get("status", "ok" if score is not None else "missing"),
        })
    if not rows:
        raise ValueError(f"{path}: no judgments")
    df = pd.DataFrame(rows)
    dup = df.duplicated(subset=["item_id", "system", "criterion", "run"], keep=False)
    if dup.any():
        r = df[dup].iloc[0]
        raise ValueError(f"{path}: judgment ({r.item_id}, {r.system}, {r.criterion}, run {r.run}) appears twice")
    return df


def load_physician_scores(path: str | os.PathLike, criteria: Sequence[str] = CRITERIA) -> pd.DataFrame:
    """Physician scores exported by ``hicur rate export`` (one row per rater, item, system, criterion).

    Args:
        path: the CSV file.
        criteria: the criteria a row may have.

    Raises:
        ValueError: naming the file and the missing column or the bad row (a score that is
            not a number, a criterion outside ``criteria``).
    """
    df = pd.read_csv(path, dtype={"rater": str, "item_id": str, "system": str, "criterion": str})
    need = {"rater", "item_id", "system", "criterion", "score"}
    if missing := need - set(df.columns):
        raise ValueError(f"{path}: missing column(s) {sorted(missing)}; expected {sorted(need)}")
    bad = pd.to_numeric(df["score"], errors="coerce").isna()
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise ValueError(f"{path}: row {i + 2}: score {df['score'].iloc[i]!r} is not a number")
    for i, criterion in enumerate(df["criterion"]):
        _check_criterion(criterion, tuple(criteria), f"{path}: row {i + 2}")
    df["score"] = df["score"].astype(float)
    if "kind" not in df.columns:
        df["kind"] = ""
    df["kind"] = df["kind"].fillna("")
    return df


def _kind_map(*frames: pd.DataFrame, items: str | os.PathLike | None = None) -> dict[str, str]:
    kinds: dict[str, str] = {}
    for df in frames:
        if df is not None and "kind" in df:
            for item_id, kind in zip(df["item_id"], df["kind"]):
                if isinstance(kind, str) and kind:
                    kinds.setdefault(item_id, kind)
    if items is not None:
        kinds.update({it.item_id: it.kind for it in read_items(items, require_reference=False)})
    return kinds


def item_scores(judgments: pd.DataFrame | None, physicians: pd.DataFrame | None,
                combine: str = "pooled", kinds: dict[str, str] | None = None) -> pd.DataFrame:
    """Per (item, system, criterion): judge mean over runs, physician mean, final score.

    Args:
        judgments: output of :func:`load_judgments` (or ``None``).
        physicians: output of :func:`load_physician_scores` (or ``None``).
        combine: ``"pooled"`` or ``"equal"`` (see the module docstring).
        kinds: item_id -> question kind.

    Returns:
        Columns ``item_id, system, criterion, kind, judge, n_judge, physician, n_physician, final``.
    """
    if combine not in ("pooled", "equal"):
        raise ValueError(f"combine must be 'pooled' or 'equal', got {combine!r}")
    if judgments is None and physicians is None:
        raise ValueError("nothing to aggregate: give judgments, physician scores or both")
    keys = ["item_id", "system", "criterion"]
    parts = []
    for name, df in (("judge", judgments), ("physician", physicians)):
        if df is None or df.empty:
            continue
        g = df.dropna(subset=["score"]).groupby(keys)["score"]
        parts.append(pd.DataFrame({name: g.mean(), f"n_{name}": g.count(), f"sum_{name}": g.sum()}))
    table = pd.concat(parts, axis=1).reset_index()
    for name in ("judge", "physician"):
        if name not in table:
            table[name] = np.nan
            table[f"n_{name}"] = 0
            table[f"sum_{name}"] = 0.0
        table[f"n_{name}"] = table[f"n_{name}"].fillna(0).astype(int)
        table[f"sum_{name}"] = table[f"sum_{name}"].fillna(0.0)
    if combine == "pooled":
        n = table["n_judge"] + table["n_physician"]
        table["final"] = (table["sum_judge"] + table["sum_physician"]) / n.where(n > 0)
    else:
        table["final"] = table[["judge", "physician"]].mean(axis=1, skipna=True)
    table = table.drop(columns=["sum_judge", "sum_physician"])
    table["kind"] = table["item_id"].map(kinds or {}).fillna("")
    return table[["item_id", "system", "criterion", "kind", "judge", "n_judge", "physician", "n_physician", "final"]]


def bootstrap_ci(values: Sequence[float] | np.ndarray, n_resamples: int = 2000, confidence: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean (``scipy.stats.bootstrap``).

    Returns ``(nan, nan)`` for fewer than two values or no spread (no interval can be
    estimated); callers report the count next to it.
    """
    from scipy.stats import bootstrap

    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if x.size < 2:
        return float("nan"), float("nan")
    if np.all(x == x[0]):
        return float(x[0]), float(x[0])
    res = bootstrap((x,), np.mean, confidence_level=confidence, n_resamples=n_resamples,
                    method="percentile", rng=np.random.default_rng(seed), vectorized=True)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def summarize(scores: pd.DataFrame, n_resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """System x criterion x kind table of judge, physician and final means with 95% CIs.

    ``kind == "all"`` rows pool the question kinds; one row per kind follows.
    """
    rows = []
    kinds = ["all"] + sorted(k for k in scores["kind"].unique() if k)
    for kind in kinds:
        sub = scores if kind == "all" else scores[scores["kind"] == kind]
        for (system, criterion), g in sub.groupby(["system", "criterion"], sort=True):
            row: dict[str, Any] = {"system": system, "criterion": criterion, "kind": kind}
            for src in _SOURCES:
                v = g[src].to_numpy(dtype=float)
                v = v[np.isfinite(v)]
                lo, hi = bootstrap_ci(v, n_resamples=n_resamples, seed=seed)
                row.update({f"{src}_mean": float(v.mean()) if v.size else np.nan, f"{src}_ci_low": lo,
                            f"{src}_ci_high": hi, f"{src}_n_items": int(v.size)})
            rows.append(row)
    return pd.DataFrame(rows)


def _safe(fn: Any, *args: Any) -> float:
    try:
        return float(fn(*args))
    except ValueError as err:
        logger.info("agreement not computable: %s", err)
        return float("nan")


def agreement_table(judgments: pd.DataFrame | None, physicians: pd.DataFrame | None,
                    scores: pd.DataFrame) -> pd.DataFrame:
    """Agreement per criterion: among physicians, among judge runs, judge vs physicians.

    Units are (item, system) answers. ICCs use the answers every rater scored, with their
    95% CI and the p-value of the F-test of ICC = 0 (:func:`~.agreement.icc_table`);
    Krippendorff's alpha (interval) uses every rating.
    """
    rows = []
    unit = ["item_id", "system"]

    def add(criterion: str, between: str, measure: str, value: float, n_units: int, n_raters: int,
            ci: tuple[float, float, float] = (np.nan, np.nan, np.nan)) -> None:
        rows.append({"criterion": criterion, "between": between, "measure": measure, "value": value,
                     "ci_low": ci[0], "ci_high": ci[1], "p": ci[2], "n_units": n_units, "n_raters": n_raters})

    def iccs(mat: np.ndarray) -> pd.DataFrame | None:
        return icc_table(mat) if len(mat) >= 2 else None

    def add_icc(criterion: str, between: str, form: str, table: pd.DataFrame | None, n_raters: int,
                n_units: int) -> None:
        if table is None:
            add(criterion, between, form, float("nan"), n_units, n_raters)
            return
        r = table.loc[form]
        add(criterion, between, form, float(r["icc"]), n_units, n_raters, (r["ci_low"], r["ci_high"], r["p"]))

    for between, df, rater in (("physicians", physicians, "rater"), ("judge runs", judgments, "run")):
        if df is None or df.empty:
            continue
        for criterion, g in df.groupby("criterion", sort=True):
            mat = rating_matrix(g.dropna(subset=["score"]), unit, rater)
            complete = mat.dropna()
            k = mat.shape[1]
            if k < 2:
                continue
            forms = iccs(complete.to_numpy())
            for form in ("ICC(2,1)", "ICC(2,k)"):
                add_icc(criterion, between, form, forms, k, len(complete))
            add(criterion, between, "krippendorff_alpha_interval",
                _safe(krippendorff_alpha, mat.to_numpy().T), int(mat.notna().sum(axis=1).ge(2).sum()), k)
    if judgments is not None and physicians is not None:
        from scipy.stats import spearmanr

        for criterion, g in scores.groupby("criterion", sort=True):
            both = g.dropna(subset=["judge", "physician"])
            pair = both[["judge", "physician"]].to_numpy()
            add_icc(criterion, "judge vs physicians", "ICC(2,1)", iccs(pair), 2, len(pair))
            rho = spearmanr(pair[:, 0], pair[:, 1]).statistic if len(pair) >= 3 else float("nan")
            add(criterion, "judge vs physicians", "spearman", float(rho), len(pair), 2)
    return pd.DataFrame(rows, columns=["criterion", "between", "measure", "value", "ci_low", "ci_high", "p",
                                       "n_units", "n_raters"])


def pairwise_table(scores: pd.DataFrame, source: str = "final", n_resamples: int = 2000,
                   seed: int = 0) -> pd.DataFrame:
    """Paired comparison of every two systems per criterion over the items both answered.

    Columns: mean difference (A - B), its 95% paired-bootstrap CI and the two-sided
    Wilcoxon signed-rank p-value (``scipy.stats.wilcoxon``: exact without zero or tied
    differences, otherwise the normal approximation with zeros dropped and tie correction;
    1.0 when all differences are 0).
    """
    from scipy.stats import wilcoxon

    rows = []
    for criterion, g in scores.groupby("criterion", sort=True):
        wide = g.pivot_table(index="item_id", columns="system", values=source, aggfunc="first")
        for a, b in itertools.combinations(sorted(wide.columns), 2):
            both = wide[[a, b]].dropna()
            d = (both[a] - both[b]).to_numpy()
            lo, hi = bootstrap_ci(d, n_resamples=n_resamples, seed=seed)
            method = ""
            if d.size == 0:
                p = float("nan")
            elif np.all(d == 0):
                p = 1.0
            else:
                # exact null distribution without zeros or ties; else the normal approximation with
                # tie correction (scipy's permutation fallback is far too slow for a report)
                nz = d[d != 0]
                method = "exact" if nz.size == d.size and np.unique(np.abs(nz)).size == nz.size else "approx"
                p = float(wilcoxon(d, method=method).pvalue)
            rows.append({"criterion": criterion, "source": source, "system_a": a, "system_b": b,
                         "mean_a": float(both[a].mean()) if d.size else np.nan,
                         "mean_b": float(both[b].mean()) if d.size else np.nan,
                         "mean_diff": float(d.mean()) if d.size else np.nan, "ci_low": lo, "ci_high": hi,
                         "wilcoxon_p": p, "wilcoxon_method": method, "n_items": int(d.size)})
    return pd.DataFrame(rows)


def relative_scores(judgments: pd.DataFrame, n_resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """LLaVA-Med relative score per system (and kind): 100 x mean(model) / mean(reference).

    Means are over items (each item's mean over runs); the CI resamples items, keeping each
    item's model and reference scores together.
    """
    from scipy.stats import bootstrap

    ok = judgments.dropna(subset=["score", "reference_score"])
    if ok.empty:
        raise ValueError("no LLaVA-Med judgments with both a model and a reference score")
    per_item = ok.groupby(["system", "item_id", "kind"], as_index=False)[["score", "reference_score"]].mean()
    rows = []
    for kind in ["all"] + sorted(k for k in per_item["kind"].unique() if k):
        sub = per_item if kind == "all" else per_item[per_item["kind"] == kind]
        for system, g in sub.groupby("system", sort=True):
            m, r = g["score"].to_numpy(), g["reference_score"].to_numpy()
            rel = 100 * m.mean() / r.mean()
            lo = hi = float("nan")
            if len(g) >= 2 and not (np.all(m == m[0]) and np.all(r == r[0])):
                ci = bootstrap((m, r), lambda a, b, axis: 100 * a.mean(axis) / b.mean(axis), paired=True,
                               vectorized=True, n_resamples=n_resamples, method="percentile",
                               rng=np.random.default_rng(seed)).confidence_interval
                lo, hi = float(ci.low), float(ci.high)
            rows.append({"system": system, "kind": kind, "model_mean": m.mean(), "reference_mean": r.mean(),
                         "relative_score": rel, "ci_low": lo, "ci_high": hi, "n_items": len(g)})
    return pd.DataFrame(rows)


def _fmt(mean: float, lo: float, hi: float, n: int) -> dict[str, Any]:
    """A score cell: its text and the item count (rendered as a note by the template)."""
    if not np.isfinite(mean):
        return {"text": "—", "n": None}
    ci = f" [{lo:.2f}, {hi:.2f}]" if np.isfinite(lo) else ""
    return {"text": f"{mean:.2f}{ci}", "n": int(n)}


def _plot(summary: pd.DataFrame) -> bytes:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    allk = summary[summary["kind"] == "all"]
    src = "final" if allk["final_n_items"].sum() else "judge"
    criteria = list(dict.fromkeys(allk["criterion"]))
    systems = sorted(allk["system"].unique())
    width = 0.8 / max(len(systems), 1)
    fig, ax = plt.subplots(figsize=(1.6 + 1.6 * len(criteria), 3.6), dpi=110)
    for i, system in enumerate(systems):
        s = allk[allk["system"] == system].set_index("criterion").reindex(criteria)
        mean = s[f"{src}_mean"].to_numpy(dtype=float)
        err = np.vstack([mean - s[f"{src}_ci_low"].to_numpy(dtype=float),
                         s[f"{src}_ci_high"].to_numpy(dtype=float) - mean])
        x = np.arange(len(criteria)) + (i - (len(systems) - 1) / 2) * width
        ax.bar(x, mean, width, yerr=np.nan_to_num(err), capsize=3, label=system)
    ax.set_xticks(np.arange(len(criteria)), criteria)
    ax.set_ylim(0, 10.5)
    ax.set_ylabel(f"{src} score (0-10), 95% CI")
    ax.legend(fontsize=8, ncol=min(len(systems), 4), loc="upper center", bbox_to_anchor=(0.5, -0.12))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _cell(value: Any) -> Any:
    """One table cell as plain text (floats to 3 decimals, missing as a dash); markup-free."""
    if isinstance(value, dict):
        return value
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "—"
    if isinstance(value, (float, np.floating)):
        return f"{value:.3f}"
    return str(value)


#: columns holding p-values: shown as ``<0.001`` rather than ``0.000`` (:func:`format_p`)
_P_COLUMNS = frozenset({"p", "wilcoxon_p"})


def _table(df: pd.DataFrame | None) -> dict[str, Any] | None:
    """A frame as ``{"columns": [...], "rows": [[cell, ...], ...]}`` for the report template."""
    if df is None or df.empty:
        return None
    cells = [format_p if str(c) in _P_COLUMNS else _cell for c in df.columns]
    return {"columns": [str(c) for c in df.columns],
            "rows": [[f(v) for f, v in zip(cells, row)] for row in df.itertuples(index=False, name=None)]}


def _report_html(summary: pd.DataFrame, agreement: pd.DataFrame, pairwise: pd.DataFrame,
                 relative: pd.DataFrame | None, png: bytes, title: str) -> str:
    """The HTML report, rendered by ``templates/report.html.j2`` with Jinja2 autoescape.

    Every string from the input files (system names, criteria, kinds) and the title reaches
    the page only through the template, escaped; no markup is built here.
    """
    import jinja2

    view = summary[["system", "criterion", "kind"]].copy()
    for src, label in (("judge", "judge"), ("physician", "physicians"), ("final", "final")):
        view[label] = [_fmt(r[f"{src}_mean"], r[f"{src}_ci_low"], r[f"{src}_ci_high"], r[f"{src}_n_items"])
                       for _, r in summary.iterrows()]
    env = jinja2.Environment(loader=jinja2.PackageLoader("hicur_monai.evaluation", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined)
    return env.get_template("report.html.j2").render(
        title=title, png_base64=base64.b64encode(png).decode(), scores=_table(view), relative=_table(relative),
        agreement=_table(agreement), pairwise=_table(pairwise))


def aggregate(
    out_dir: str | os.PathLike,
    judgments: str | os.PathLike | None = None,
    physicians: str | os.PathLike | None = None,
    items: str | os.PathLike | None = None,
    combine: str = "pooled",
    n_resamples: int = 2000,
    seed: int = 0,
    title: str = "Stage II evaluation",
    criteria: Sequence[str] = CRITERIA,
) -> dict[str, Path]:
    """Aggregate judge and/or physician scores and write CSV tables and an HTML report.

    Args:
        out_dir: output folder.
        judgments: JSON-lines judge records.
        physicians: CSV from ``hicur rate export``.
        items: items JSON-lines (for question kinds, when the inputs lack them).
        combine: how the final score joins judge and physicians (``"pooled"`` or ``"equal"``).
        n_resamples: bootstrap resamples.
        seed: bootstrap seed.
        title: report title.
        criteria: the criteria the inputs may hold (default: the protocol's four); any other
            criterion is an error naming its file and line / row.

    Returns:
        Paths of the written files keyed by name.
    """
    jdf = load_judgments(judgments, criteria) if judgments else None
    pdf = load_physician_scores(physicians, criteria) if physicians else None
    relative = None
    if jdf is not None and (jdf["protocol"] == "llava-med").any():
        relative = relative_scores(jdf[jdf["protocol"] == "llava-med"], n_resamples, seed)
    kinds = _kind_map(*(d for d in (jdf, pdf) if d is not None), items=items)
    if jdf is not None:
        jdf = jdf.assign(kind=jdf["item_id"].map(kinds).fillna(""))
    scores = item_scores(jdf, pdf, combine=combine, kinds=kinds)
    summary = summarize(scores, n_resamples=n_resamples, seed=seed)
    agreement = agreement_table(jdf, pdf, scores)
    pairwise = pairwise_table(scores, "final", n_resamples=n_resamples, seed=seed)
    out = Path(out_dir)
    paths = {"summary": out / "summary.csv", "item_scores": out / "item_scores.csv",
             "agreement": out / "agreement.csv", "pairwise": out / "pairwise.csv",
             "plot": out / "report.png", "report": out / "report.html"}
    atomic_write_text(paths["summary"], neutralize_formulas(summary).to_csv(index=False))
    atomic_write_text(paths["item_scores"], neutralize_formulas(scores).to_csv(index=False))
    atomic_write_text(paths["agreement"], neutralize_formulas(agreement).to_csv(index=False))
    atomic_write_text(paths["pairwise"], neutralize_formulas(pairwise).to_csv(index=False))
    if relative is not None:
        paths["relative"] = out / "relative.csv"
        atomic_write_text(paths["relative"], neutralize_formulas(relative).to_csv(index=False))
    png = _plot(summary)
    atomic_write_bytes(paths["plot"], png)
    atomic_write_text(paths["report"], _report_html(summary, agreement, pairwise, relative, png, title))
    logger.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return paths
