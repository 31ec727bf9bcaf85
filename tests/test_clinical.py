"""Clinical table schema, loader, validation, endpoints, pseudonyms, collinearity guard."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from hicur_monai.data.clinical import (
    SCHEMA,
    SEED_COLUMNS,
    ClinicalTableError,
    check_collinearity,
    design_matrix,
    endpoint_frame,
    load_clinical_table,
    normalise_months,
    normalise_n_stage,
    normalise_overall_stage,
    normalise_t_stage,
    normalise_yes_no,
    pseudonymise,
)
from hicur_monai.data.demo.clinical import CLINICAL_COLUMNS, generate_clinical_table, write_clinical_table
from hicur_monai.utils.csv_safe import neutralize_formulas


@pytest.fixture(scope="module")
def demo():
    table, truth = generate_clinical_table(120, seed=1)
    return table, truth


def _clean(table: pd.DataFrame, truth: dict) -> pd.DataFrame:
    t = table.copy()
    for m in truth["messy"]:
        t.at[m["row"], m["column"]] = m["clean"]
    return t


def test_schema_is_the_seed_table():
    assert len(SCHEMA) == 37
    assert SEED_COLUMNS == CLINICAL_COLUMNS
    assert len({c.key for c in SCHEMA}) == 37


@pytest.mark.parametrize("raw, months", [("10 months", 10), ("10 mo", 10), ("1.5 years", 18), ("18", 18),
                                         (7, 7), ("2 yrs", 24), ("1 month", 1), ("30 days", 30 * 12 / 365.25)])
def test_months(raw, months):
    assert normalise_months(raw) == pytest.approx(months)


@pytest.mark.parametrize("raw", ["ten months", "-3 months", "5 fortnights"])
def test_months_bad(raw):
    with pytest.raises(ValueError):
        normalise_months(raw)


def test_missing_and_variants():
    for na in ("N/A", "", "na", " n/a ", None, float("nan")):
        assert math.isnan(normalise_months(na)) and math.isnan(normalise_yes_no(na))
    assert [normalise_yes_no(v) for v in ("Yes", "yes", "Y", "TRUE", "No", "n", "0")] == [1, 1, 1, 1, 0, 0, 0]
    assert {normalise_t_stage(v) for v in ("II", "T2", "t2", "2", " ii ")} == {2.0}
    assert {normalise_n_stage(v) for v in ("N1", "n1", "1")} == {1.0}
    assert [normalise_overall_stage(v) for v in ("IVa", "Stage IV B", "4A", "3", "III")] == \
        ["IVA", "IVB", "IVA", "III", "III"]
    for bad, fn in (("T5", normalise_t_stage), ("N4", normalise_n_stage), ("IIIA", normalise_overall_stage),
                    ("maybe", normalise_yes_no)):
        with pytest.raises(ValueError):
            fn(bad)


def test_demo_table_messy_cells_are_read_or_reported(demo, tmp_path):
    table, truth = demo
    write_clinical_table(tmp_path, table, truth)
    ct = load_clinical_table(tmp_path / "clinical.csv", mode="flag", salt="s")
    assert len(ct.data) == len(table)
    flagged_lines = {p.row for p in ct.problems}
    na_time = {m["csv_line"] for m in truth["messy"] if m["kind"] == "na_time"}
    assert flagged_lines == na_time  # N/A times are the only real problems in the demo table
    clean = load_clinical_table(_clean(table, truth), mode="strict", salt="s").data
    for m in truth["messy"]:
        i = m["row"]
        key = next(c.key for c in SCHEMA if c.name == m["column"])
        if m["kind"] in ("months_abbrev", "years", "yes_no_variant", "t_stage_variant"):
            assert ct.data.at[i, key] == clean.at[i, key], m
        elif m["kind"] == "missing_value":
            assert pd.isna(ct.data.at[i, key])
    assert ct.data["t_stage"].between(1, 4).all()


def test_strict_names_row_column_value(demo):
    table, truth = demo
    bad = _clean(table, truth)
    bad.at[3, "7th Overall Stage"] = "I" if bad.at[3, "7th Overall Stage"] != "I" else "IVB"
    bad.at[5, "EBV > 4000"] = "Yes" if bad.at[5, "EBV > 4000"] == "No" else "No"
    dead = bad.index[bad["Death Update"] == "Yes"][0]
    bad.at[dead, "Death Time - Update"] = "2030-01-01"
    bad.at[7, "Gender"] = "Robot"
    bad.at[8, "Total Survival Time - Update"] = "-4 months"
    bad.at[9, "Distant Metastasis - Update"] = "Yes"
    bad.at[9, "No Distant Metastasis Survival Time"] = "N/A"
    with pytest.raises(ClinicalTableError) as err:
        load_clinical_table(bad, mode="strict", salt="s")
    msgs = {(p.row, p.column): p.message for p in err.value.problems}
    assert "inconsistent with T" in msgs[(5, "7th Overall Stage")]
    assert "inconsistent with EBV" in msgs[(7, "EBV > 4000")]
    assert "after last follow-up" in msgs[(dead + 2, "Death Time - Update")]
    assert "unknown category" in msgs[(9, "Gender")]
    assert "negative time" in msgs[(10, "Total Survival Time - Update")]
    assert "event flag without time" in msgs[(11, "No Distant Metastasis Survival Time")]
    assert "line 5, column '7th Overall Stage'" in str(err.value)
    dropped = load_clinical_table(bad, mode="drop", salt="s")
    assert len(dropped.data) == len(bad) - len({p.row for p in err.value.problems})
    assert sum(dropped.dropped.values()) >= len({p.row for p in err.value.problems})
    assert "dropped" in dropped.summary()


def test_mrn_never_leaves_loader(demo):
    table, truth = demo
    clean = _clean(table, truth)
    a = load_clinical_table(clean, salt="one").data
    b = load_clinical_table(clean, salt="one").data
    c = load_clinical_table(clean, salt="two").data
    assert "mrn" not in a.columns and "Medical Record Number" not in a.columns
    mrns = set(clean["Medical Record Number"])
    assert not mrns & set(a.astype(str).to_numpy().ravel())
    assert list(a["patient_id"]) == list(b["patient_id"]) != list(c["patient_id"])
    assert a.at[0, "patient_id"] == pseudonymise(clean.at[0, "Medical Record Number"], "one")
    dup = pd.concat([clean, clean.iloc[[0]]], ignore_index=True)
    with pytest.raises(ClinicalTableError, match="duplicate record number"):
        load_clinical_table(dup, salt="x")


def test_column_map_and_xlsx(demo, tmp_path):
    table, truth = demo
    clean = _clean(table, truth)
    mine = clean.rename(columns={"Medical Record Number": "MRN", "Death Update": "dead?",
                                 "Total Survival Time - Update": "OS (months)"})
    with pytest.raises(ClinicalTableError, match="required columns missing"):
        load_clinical_table(mine, salt="s")
    ct = load_clinical_table(mine, salt="s", column_map={"MRN": "mrn", "dead?": "Death Update",
                                                          "OS (months)": "os_months"})
    ref = load_clinical_table(clean, salt="s")
    pd.testing.assert_frame_equal(ct.data, ref.data)
    pytest.importorskip("openpyxl")
    clean.to_excel(tmp_path / "t.xlsx", index=False)
    xl = load_clinical_table(tmp_path / "t.xlsx", salt="s")
    np.testing.assert_allclose(xl.data["os_months"], ref.data["os_months"])
    assert (xl.data["treatment_start"] == ref.data["treatment_start"]).all()


def test_endpoints_and_design(demo):
    table, truth = demo
    ct = load_clinical_table(table, mode="flag", salt="s")
    ffs = endpoint_frame(ct, "ffs")
    n_na = sum(m["kind"] == "na_time" for m in truth["messy"])
    assert ffs.attrs["excluded"] == n_na and len(ffs) == len(table) - n_na
    assert ffs["event"].sum() == truth["endpoints"]["ffs"]["events"] - sum(
        table.at[m["row"], "Treatment Failure (Long-Term Efficacy) - Update"] == "Yes"
        for m in truth["messy"] if m["kind"] == "na_time")
    os_ = endpoint_frame(ct, "os")
    assert (os_["time"] >= ffs["time"].reindex(os_.index).fillna(0) - 1).all()
    with pytest.raises(KeyError):
        endpoint_frame(ct, "pfs")
    x = design_matrix(ct)
    assert list(x.columns) == ["age_per10", "male", "t_stage", "n_stage", "log10_ebv", "necrosis"]
    assert x["male"].dropna().isin([0, 1]).all()


def test_collinearity_guard(demo):
    assert check_collinearity(["t_stage", "n_stage", "log10_ebv"], warn=False) == []
    with pytest.warns(UserWarning, match="overall stage is a function of T and N"):
        check_collinearity(["overall_stage", "t_stage"])
    with pytest.warns(UserWarning, match="threshold of EBV"):
        design_matrix(load_clinical_table(demo[0], mode="flag", salt="s"), ["ebv_gt4000", "log10_ebv"])


# --------------------------------------------------------------------------- headers and delimiters
def test_duplicated_header_is_an_error_naming_both(demo, tmp_path):
    clean = _clean(*demo)
    age_at = SEED_COLUMNS.index("Age") + 1
    twice = pd.concat([clean, clean[["Age"]].rename(columns={"Age": "Age2"})], axis=1)
    path = tmp_path / "dup.csv"
    twice.rename(columns={"Age2": "Age"}).to_csv(path, index=False)  # pandas would read the second as 'Age.1'
    with pytest.raises(ClinicalTableError, match="duplicated column headers") as err:
        load_clinical_table(path, salt="s")
    assert f"'Age' (column {age_at}) and 'Age' (column {len(SEED_COLUMNS) + 1})" in str(err.value)
    # near-duplicates: the same after case, whitespace and punctuation are folded
    near = clean.assign(**{" AGE ": clean["Age"]})
    with pytest.raises(ClinicalTableError, match=r"'Age' \(column \d+\) and ' AGE '"):
        load_clinical_table(near, salt="s")
    near_file = tmp_path / "near.csv"
    clean.assign(**{"Death-Update": clean["Death Update"]}).to_csv(near_file, index=False)
    with pytest.raises(ClinicalTableError, match="'Death Update' .* and 'Death-Update'"):
        load_clinical_table(near_file, salt="s")
    # aliases: a schema key next to the seed name of the same column
    aliased = clean.assign(ebv=clean["Tumor Marker EBV"])
    with pytest.raises(ClinicalTableError, match="'Tumor Marker EBV' and 'ebv' both map to"):
        load_clinical_table(aliased, salt="s")
    pytest.importorskip("openpyxl")
    twice.rename(columns={"Age2": "Age"}).to_excel(tmp_path / "dup.xlsx", index=False)
    with pytest.raises(ClinicalTableError, match="'Age' .* and 'Age'"):
        load_clinical_table(tmp_path / "dup.xlsx", salt="s")


@pytest.mark.parametrize("sep", [";", "\t", "|"])
def test_delimiter_is_sniffed(demo, tmp_path, sep):
    clean = _clean(*demo)
    ref = load_clinical_table(clean, salt="s").data
    path = tmp_path / "table.csv"
    clean.to_csv(path, index=False, sep=sep)
    pd.testing.assert_frame_equal(load_clinical_table(path, salt="s").data, ref)


def test_decimal_comma_is_an_error_not_a_thousands_separator(demo, tmp_path):
    """A European ``1234,5`` must not become 12345 (commas were dropped before)."""
    clean = _clean(*demo).astype({"Tumor Marker EBV": object})
    clean.loc[clean.index[0], "Tumor Marker EBV"] = "1234,5"
    clean.loc[clean.index[1], "Tumor Marker EBV"] = "12,345"  # thousands-grouped: read as 12345
    path = tmp_path / "table.csv"
    clean.to_csv(path, index=False, sep=";")
    with pytest.raises(ClinicalTableError, match=r"Tumor Marker EBV.*1234,5.*decimal comma"):
        load_clinical_table(path, salt="s")
    clean.loc[clean.index[0], "Tumor Marker EBV"] = "1234.5"
    clean.to_csv(path, index=False, sep=";")
    ebv = load_clinical_table(path, salt="s").data["ebv"]
    assert ebv.iloc[0] == 1234.5 and ebv.iloc[1] == 12345


def test_missing_columns_error_says_which_delimiter(demo, tmp_path):
    clean = _clean(*demo).drop(columns=["Death Update"])
    path = tmp_path / "table.csv"
    clean.to_csv(path, index=False, sep=";")
    with pytest.raises(ClinicalTableError, match="required columns missing.*read as semicolon-delimited"):
        load_clinical_table(path, salt="s")
    colon = tmp_path / "colon.csv"
    _clean(*demo).to_csv(colon, index=False, sep=":")
    with pytest.raises(ClinicalTableError, match="whole header was read as one column"):
        load_clinical_table(colon, salt="s")


# --------------------------------------------------------------------------- CSV injection
ATTACK = "=cmd|' /C calc'!A0"


def test_neutralize_formulas_prefixes_formula_cells_only():
    df = pd.DataFrame({"text": [ATTACK, "+SUM(A1)", "-4 months", "@x", "\t=1", "\r=1", "plain", None],
                       "num": [1.0, -2.0, np.nan, 3, 4, 5, 6, 7],
                       "numeric_text": ["-4", "+1.5e3", "-.5", "12", "=1", "x", "", "-"]})
    df["=col"] = 1
    out = neutralize_formulas(df)
    assert out["text"].tolist()[:7] == ["'" + v for v in df["text"].tolist()[:6]] + ["plain"]
    assert out["text"].iloc[7] is None
    assert out["numeric_text"].tolist() == ["-4", "+1.5e3", "-.5", "12", "'=1", "x", "", "'-"]
    np.testing.assert_array_equal(out["num"], df["num"])
    assert list(out.columns) == ["text", "num", "numeric_text", "'=col"]
    assert df["text"].iloc[0] == ATTACK and "=col" in df.columns  # the input is not changed


@pytest.mark.slow  # imports matplotlib for the report plot
def test_judge_csvs_are_neutralised(tmp_path):
    from hicur_monai.evaluation.aggregate import aggregate

    jpath = tmp_path / "judgments.jsonl"
    rows = [{"item_id": item, "system": system, "criterion": "accuracy", "run": run, "score": 5 + run + k,
             "protocol": "rubric"} for k, system in enumerate((ATTACK, "B")) for item in ("i1", "i2", "i3")
            for run in range(2)]
    jpath.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    paths = aggregate(tmp_path / "out", judgments=jpath, n_resamples=20)
    for name in ("summary", "item_scores"):
        cells = set(pd.read_csv(paths[name], dtype=str, keep_default_na=False).to_numpy().ravel())
        assert "'" + ATTACK in cells and ATTACK not in cells, name


def test_prognosis_csvs_are_neutralised(demo, tmp_path):
    pytest.importorskip("lifelines")
    from hicur_monai.survival.workflow import evaluate, infer, train

    table = _clean(*demo)
    table["Image Number"] = table["Image Number"].astype(str)
    table.loc[0, "Image Number"] = ATTACK
    evaluate(table, tmp_path, endpoints="os", models=("cox",), n_folds=2, n_boot=5, n_boot_calibration=5,
             report=False, salt="s", progress=False)
    oof = pd.read_csv(tmp_path / "oof_predictions.csv", dtype=str)
    assert "'" + ATTACK in set(oof["study_id"]) and ATTACK not in set(oof["study_id"])
    train(table, tmp_path, endpoints="os", models=("cox",), salt="s")
    pred = pd.read_csv(infer(tmp_path, table, tmp_path / "pred.csv", endpoints="os", models=("cox",), salt="s"),
                       dtype=str)
    assert "'" + ATTACK in set(pred["study_id"]) and ATTACK not in set(pred["study_id"])
