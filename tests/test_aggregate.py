"""Aggregation against hand-computed values; ICC and Krippendorff's alpha against published examples."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from hicur_monai.evaluation import aggregate as A
from hicur_monai.evaluation.agreement import icc, krippendorff_alpha, rating_matrix

# judge runs (None = unparseable reply kept as missing) and two physicians, criterion "accuracy"
JUDGE = {
    ("A", "i1"): [6, 7, 8], ("A", "i2"): [9, 9, 9], ("A", "i3"): [3, None, 5],
    ("B", "i1"): [5, 5, 5], ("B", "i2"): [4, 6, 8], ("B", "i3"): [2, 2, 2],
}
PHYS = {
    ("A", "i1"): [8, 6], ("A", "i2"): [10, 8], ("A", "i3"): [4, 4],
    ("B", "i1"): [4, 6], ("B", "i2"): [7, 7], ("B", "i3"): [1, 3],
}
KIND = {"i1": "conversation", "i2": "detailed", "i3": "conversation"}


@pytest.fixture()
def files(tmp_path):
    jpath = tmp_path / "judgments.jsonl"
    with jpath.open("w") as fh:
        for (system, item), runs in JUDGE.items():
            for run, score in enumerate(runs):
                fh.write(json.dumps({"item_id": item, "system": system, "kind": KIND[item], "criterion": "accuracy",
                                     "run": run, "score": score, "status": "ok" if score is not None else "missing",
                                     "protocol": "rubric", "judge": "scripted"}) + "\n")
    ppath = tmp_path / "physicians.csv"
    rows = [{"rater": f"p{k + 1}", "item_id": item, "system": system, "criterion": "accuracy", "score": s}
            for (system, item), scores in PHYS.items() for k, s in enumerate(scores)]
    pd.DataFrame(rows).to_csv(ppath, index=False)
    return jpath, ppath


def test_item_scores_pooled_and_equal(files):
    jdf, pdf = A.load_judgments(files[0]), A.load_physician_scores(files[1])
    assert jdf["score"].isna().sum() == 1  # the missing judgment is NaN, not 0
    pooled = A.item_scores(jdf, pdf, "pooled", KIND).set_index(["system", "item_id"])
    assert pooled.loc[("A", "i3"), "judge"] == 4.0 and pooled.loc[("A", "i3"), "n_judge"] == 2
    expected = {("A", "i1"): 7.0, ("A", "i2"): 9.0, ("A", "i3"): 4.0,
                ("B", "i1"): 5.0, ("B", "i2"): 6.4, ("B", "i3"): 2.0}
    for key, value in expected.items():
        assert pooled.loc[key, "final"] == pytest.approx(value), key
    equal = A.item_scores(jdf, pdf, "equal", KIND).set_index(["system", "item_id"])
    assert equal.loc[("B", "i2"), "final"] == pytest.approx(6.5)
    with pytest.raises(ValueError, match="combine"):
        A.item_scores(jdf, pdf, "median", KIND)


def test_summary_means_kinds_and_cis(files):
    jdf, pdf = A.load_judgments(files[0]), A.load_physician_scores(files[1])
    summary = A.summarize(A.item_scores(jdf, pdf, "pooled", KIND), n_resamples=500)
    row = summary.set_index(["system", "kind"]).loc[("A", "all")]
    assert row["judge_mean"] == pytest.approx(20 / 3) and row["physician_mean"] == pytest.approx(20 / 3)
    b = summary.set_index(["system", "kind"]).loc[("B", "all")]
    assert b["judge_mean"] == pytest.approx(13 / 3) and b["physician_mean"] == pytest.approx(14 / 3)
    assert b["final_mean"] == pytest.approx(13.4 / 3)
    assert summary.set_index(["system", "kind"]).loc[("A", "conversation"), "judge_mean"] == pytest.approx(5.5)
    assert summary.set_index(["system", "kind"]).loc[("A", "detailed"), "judge_n_items"] == 1
    for _, r in summary[summary["kind"] == "all"].iterrows():
        assert r["final_ci_low"] <= r["final_mean"] <= r["final_ci_high"]
        assert r["final_ci_low"] >= 2 - 1e-9 and r["final_ci_high"] <= 9 + 1e-9  # within the item range


def test_bootstrap_ci_behaviour():
    lo, hi = A.bootstrap_ci(np.arange(20.0), n_resamples=1000)
    assert 6 < lo < 9.5 < hi < 13
    assert np.isnan(A.bootstrap_ci([5.0])).all()
    assert A.bootstrap_ci([3.0, 3.0, 3.0]) == (3.0, 3.0)
    assert A.bootstrap_ci([1.0, np.nan, 3.0])[0] >= 1.0  # NaN dropped, not counted


def test_pairwise_hand_values_and_wilcoxon(files):
    from scipy.stats import wilcoxon

    jdf, pdf = A.load_judgments(files[0]), A.load_physician_scores(files[1])
    pw = A.pairwise_table(A.item_scores(jdf, pdf, "pooled", KIND), n_resamples=500)
    row = pw.iloc[0]
    assert (row["system_a"], row["system_b"], row["n_items"]) == ("A", "B", 3)
    assert row["mean_diff"] == pytest.approx(2.2)
    assert row["wilcoxon_p"] == pytest.approx(wilcoxon([2.0, 2.6, 2.0], method="approx").pvalue)
    same = pd.DataFrame({"item_id": ["x", "y", "x", "y"], "system": ["s", "s", "t", "t"],
                         "criterion": ["c"] * 4, "final": [1.0, 2.0, 1.0, 2.0]})
    assert A.pairwise_table(same).iloc[0]["wilcoxon_p"] == 1.0


def test_agreement_rows(files):
    jdf, pdf = A.load_judgments(files[0]), A.load_physician_scores(files[1])
    scores = A.item_scores(jdf, pdf, "pooled", KIND)
    ag = A.agreement_table(jdf, pdf, scores).set_index(["between", "measure"])
    phys = ag.loc[("physicians", "ICC(2,k)")]
    mat = np.array([PHYS[k] for k in sorted(PHYS)], dtype=float)
    assert phys["value"] == pytest.approx(icc(mat)["ICC(2,k)"]) and phys["n_units"] == 6
    runs = ag.loc[("judge runs", "ICC(2,1)")]
    assert runs["n_units"] == 5  # the answer with a missing run is left out of the ICC
    assert ag.loc[("judge runs", "krippendorff_alpha_interval"), "n_units"] == 6  # but not out of alpha
    assert -1 <= ag.loc[("judge vs physicians", "spearman"), "value"] <= 1


def test_aggregate_writes_csv_html_and_plot(files, tmp_path):
    paths = A.aggregate(tmp_path / "out", judgments=files[0], physicians=files[1], n_resamples=200)
    summary = pd.read_csv(paths["summary"])
    assert set(summary["kind"]) == {"all", "conversation", "detailed"}
    html = paths["report"].read_text()
    assert "<table" in html and "data:image/png;base64," in html and "Agreement" in html
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_inputs_are_named(tmp_path):
    p = tmp_path / "phys.csv"
    p.write_text("rater,item_id,system,criterion,score\np1,i1,A,accuracy,7\np1,i2,A,accuracy,seven\n")
    with pytest.raises(ValueError, match="row 3: score 'seven' is not a number"):
        A.load_physician_scores(p)
    p.write_text("rater,item_id,score\np1,i1,7\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['criterion', 'system'\]"):
        A.load_physician_scores(p)
    j = tmp_path / "j.jsonl"
    j.write_text('{"item_id": "i", "system": "s", "criterion": "accuracy", "run": 0, "score": "high"}\n')
    with pytest.raises(ValueError, match=r"j.jsonl:1: 'score' must be a number or null"):
        A.load_judgments(j)


# -- published examples --------------------------------------------------------------------
# Shrout & Fleiss (1979), Table 2: 6 targets rated by 4 judges, and their Table 4 values
SHROUT_FLEISS = [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]]
SHROUT_FLEISS_ICC = {"ICC(1,1)": 0.17, "ICC(2,1)": 0.29, "ICC(3,1)": 0.71,
                     "ICC(1,k)": 0.44, "ICC(2,k)": 0.62, "ICC(3,k)": 0.91}


def test_icc_matches_shrout_fleiss_1979():
    got = icc(SHROUT_FLEISS)
    for form, published in SHROUT_FLEISS_ICC.items():
        assert round(got[form], 2) == published, (form, got[form])
    with pytest.raises(ValueError, match="complete matrix"):
        icc([[1, 2], [3, np.nan]])
    with pytest.raises(ValueError, match="at least 2 targets and 2 raters"):
        icc([[1, 2, 3]])


# Krippendorff (2011), "Computing Krippendorff's alpha-reliability", example C: 4 coders, 12 units
KRIPP = [[1, 2, 3, 3, 2, 1, 4, 1, 2, np.nan, np.nan, np.nan],
         [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, np.nan, 3],
         [np.nan, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, np.nan],
         [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, np.nan]]


def test_krippendorff_alpha_matches_published_example():
    assert round(krippendorff_alpha(KRIPP, "nominal"), 3) == 0.743
    assert round(krippendorff_alpha(KRIPP, "interval"), 3) == 0.849
    # through the long-table path the aggregation uses
    long = pd.DataFrame([{"unit": u, "coder": c, "score": v} for c, row in enumerate(KRIPP)
                         for u, v in enumerate(row) if not np.isnan(v)])
    mat = rating_matrix(long, "unit", "coder")
    assert round(krippendorff_alpha(mat.to_numpy().T, "interval"), 3) == 0.849
    with pytest.raises(ValueError, match="more than one rating"):
        rating_matrix(pd.concat([long, long.iloc[:1]]), "unit", "coder")


# -- the HTML report: every string from the inputs escaped; unknown criteria refused ------------
XSS = "<script>alert(1)</script>"


def test_report_html_escapes_every_input_string(tmp_path):
    systems = [f"sys{XSS}", f"other\"><img src=x onerror=alert(2)>{XSS}"]
    kind = f"kind{XSS}"
    jpath = tmp_path / "j.jsonl"
    with jpath.open("w") as fh:
        for protocol, criterion in (("rubric", "accuracy"), ("llava-med", "overall")):
            for s, system in enumerate(systems):
                for i in range(4):
                    for run in range(2):
                        fh.write(json.dumps({"item_id": f"i{i}{XSS}", "system": system, "kind": kind,
                                             "criterion": criterion, "run": run, "score": (i + s + run) % 10,
                                             "reference_score": 5, "protocol": protocol}) + "\n")
    ppath = tmp_path / "p.csv"
    pd.DataFrame([{"rater": f"r{k}{XSS}", "item_id": f"i{i}{XSS}", "system": system, "criterion": "accuracy",
                   "score": (i * k) % 11, "kind": kind} for k in range(2) for i in range(4) for system in systems]
                 ).to_csv(ppath, index=False)
    paths = A.aggregate(tmp_path / "out", judgments=jpath, physicians=ppath, n_resamples=50, title=f"T{XSS}")
    html = paths["report"].read_text()
    for heading in ("Scores", "LLaVA-Med relative score", "Agreement", "Pairwise comparison"):
        assert f"<h2>{heading}" in html
    assert "<script" not in html and "<img src=x" not in html
    assert html.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 10  # title, systems in every table, kinds
    assert "&lt;img src=x onerror=alert(2)&gt;" in html


def test_unknown_criteria_are_errors_naming_file_and_row(tmp_path):
    j = tmp_path / "j.jsonl"
    j.write_text('{"item_id": "i", "system": "s", "criterion": "accuracy", "run": 0, "score": 5}\n'
                 '{"item_id": "i", "system": "s", "criterion": "<b>style</b>", "run": 0, "score": 5}\n')
    with pytest.raises(ValueError, match=r"j.jsonl:2: unknown criterion '<b>style</b>'"):
        A.load_judgments(j)
    assert len(A.load_judgments(j, criteria=("accuracy", "<b>style</b>"))) == 2  # declared extra criterion
    j.write_text('{"item_id": "i", "system": "s", "criterion": "overall", "run": 0, "score": 5}\n')
    with pytest.raises(ValueError, match="unknown criterion 'overall'"):  # only the LLaVA-Med protocol has it
        A.load_judgments(j)
    p = tmp_path / "p.csv"
    p.write_text("rater,item_id,system,criterion,score\np1,i1,A,accuracy,7\np1,i1,A,Accuracy ,7\n")
    with pytest.raises(ValueError, match=r"p.csv: row 3: unknown criterion 'Accuracy '"):
        A.load_physician_scores(p)


def test_cli_aggregate_names_an_unknown_criterion_and_accepts_declared_ones(tmp_path, capsys):
    from hicur_monai.cli import main

    p = tmp_path / "p.csv"
    p.write_text("rater,item_id,system,criterion,score\n" + "".join(
        f"p{r},i{i},A,style,{(i + r) % 11}\n" for r in range(2) for i in range(3)))
    assert main(["judge", "aggregate", "--physicians", str(p), "--out", str(tmp_path / "o")]) == 2
    assert "p.csv: row 2: unknown criterion 'style'" in capsys.readouterr().err
    assert main(["judge", "aggregate", "--physicians", str(p), "--out", str(tmp_path / "o"), "--n-resamples", "50",
                 "--criteria", "style"]) == 0


def test_report_tables_print_small_p_values_as_below_threshold():
    """p-values in the report's tables read ``<0.001``, never ``0.000``."""
    table = A._table(pd.DataFrame({"criterion": ["accuracy", "safety"], "p": [1e-9, 0.0421],
                                   "wilcoxon_p": [0.0004, np.nan], "value": [0.0001, 0.5]}))
    assert table["rows"] == [["accuracy", "<0.001", "<0.001", "0.000"], ["safety", "0.042", "–", "0.500"]]
