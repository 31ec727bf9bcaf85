"""The survival HTML report: autoescaped template, Table 1, convergence, p-values (issues 16.3-4, 19.4)."""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest

pytest.importorskip("lifelines")
pytest.importorskip("sksurv")
pytest.importorskip("jinja2")

from hicur_monai.data.clinical import load_clinical_table  # noqa: E402
from hicur_monai.data.demo.clinical import generate_clinical_table  # noqa: E402
from hicur_monai.survival.report import table1, write_survival_report  # noqa: E402
from hicur_monai.survival.workflow import evaluate  # noqa: E402

FAST_DS = {"hidden": [8], "epochs": 20, "n_seeds": 1, "patience": 10, "lr": 0.01}


def _script(what: str) -> str:
    return f"<script>alert('{what}')</script>"


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """One small cross-validated evaluation (no report), reused by the tests."""
    out = tmp_path_factory.mktemp("surv")
    table, _ = generate_clinical_table(120, seed=4)
    ct = load_clinical_table(table, mode="drop", salt="s")
    captured = {}

    def keep(path, table, results, per_endpoint, truth=None):
        captured.update(table=table, results=results, per_endpoint=per_endpoint)
        return path

    import hicur_monai.survival.report as report_mod

    original = report_mod.write_survival_report
    report_mod.write_survival_report = keep
    try:
        evaluate(ct, out, endpoints="os", deepsurv=FAST_DS, n_folds=3, n_boot=10, n_boot_calibration=10,
                 progress=False)
    finally:
        report_mod.write_survival_report = original
    return captured, out


def test_user_strings_are_escaped(evaluated, tmp_path):
    """``<script>`` in the source name, the dropped-row reasons, endpoint, model and covariate names
    and the cohort labels derived from them reaches the page only escaped."""
    captured, _ = evaluated
    ct = copy.copy(captured["table"])
    ct.source, ct.dropped = _script("source"), {_script("dropped"): 1}
    results, per_endpoint = copy.deepcopy(captured["results"]), dict(captured["per_endpoint"])
    ep = _script("endpoint")
    res = results["endpoints"].pop("os")
    pe = dict(per_endpoint.pop("os"))
    model = _script("model")
    res["models"][model] = res["models"].pop("deepsurv")
    pe["cv"] = {**pe["cv"], "models": {**pe["cv"]["models"], model: pe["cv"]["models"]["deepsurv"]}}
    del pe["cv"]["models"]["deepsurv"]
    res["cox_full"]["hazard_ratios"][0]["covariate"] = _script("covariate")
    res["data"]["covariates"] = [_script("column"), *res["data"]["covariates"][1:]]
    res["models"]["cox"]["metrics"]["notes"] = [_script("note")]
    results["endpoints"][ep], per_endpoint[ep] = res, pe
    page = write_survival_report(tmp_path / "r.html", ct, results, per_endpoint).read_text()
    assert "<script" not in page.lower()
    for what in ("source", "dropped", "endpoint", "model", "covariate", "column", "note"):
        assert f"&lt;script&gt;alert(&#39;{what}&#39;)&lt;/script&gt;" in page, what
    assert "Overall survival" not in page
    assert "&lt;script&gt;alert(&#39;endpoint&#39;)&lt;/script&gt; cohort (n=" in page


def test_report_sections_table1_convergence_p(evaluated, tmp_path):
    captured, _ = evaluated
    page = write_survival_report(tmp_path / "r.html", captured["table"], captured["results"],
                                 captured["per_endpoint"]).read_text()
    for section in ("Cohort", "Table 1: baseline characteristics per endpoint cohort", "Model fitting and convergence",
                    "Proportional-hazards check", "Model comparison", "Calibration", "TRIPOD+AI",
                    "data:image/png;base64,"):
        assert section in page, section
    cells = re.findall(r"<td>([^<]*)</td>", page)
    assert "0.000" not in cells and "&lt;0.001" in page  # age_per10 is strongly prognostic in the demo
    assert "3/3 folds" in page and "cox, all eligible patients" in page
    n = len(captured["per_endpoint"]["os"]["df"])
    assert f"Overall survival cohort (n={n})" in page


def test_table1_values():
    table, _ = generate_clinical_table(40, seed=1)
    ct = load_clinical_table(table, mode="drop", salt="s")
    d = ct.data
    d.loc[d.index[:3], "ebv"] = np.nan
    half = d.index[: len(d) // 2]
    t = table1(ct, {"first half": half, "all": d.index}).set_index("characteristic")
    assert list(t.columns) == [f"first half (n={len(half)})", f"all (n={len(d)})"]
    age = d.loc[half, "age"]
    assert t.loc["Age (years), median (IQR)"].iloc[0] == \
        f"{age.median():.3g} ({age.quantile(0.25):.3g}–{age.quantile(0.75):.3g})"
    males = int((d["gender"] == "Male").sum())
    assert t.loc["  Male"].iloc[1] == f"{males} ({100 * males / len(d):.1f}%)"
    n_miss = int(d["ebv"].isna().sum())  # the 3 set here and the demo's own blanks
    assert n_miss >= 3
    assert t.loc["  Tumor Marker EBV: missing, n (%)"].iloc[1] == f"{n_miss} ({100 * n_miss / len(d):.1f}%)"
    assert "Death Update: yes, n (%)" not in t.index and "  T3" in t.index
