"""Invariants of the synthetic 37-column prognosis table (hicur_monai.data.demo.clinical)."""

from __future__ import annotations

import json
import re
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hicur_monai.data.demo.clinical import (
    CLINICAL_COLUMNS,
    DAYS_PER_MONTH,
    TRUE_LOG_HR,
    ajcc7_overall_stage,
    encode_covariates,
    generate_clinical_table,
    write_clinical_table,
)

REFERENCE = Path(__file__).resolve().parents[1] / ".." / "shared" / "reference" / "hicur-npc-data-workflow.md"

SEED_COLUMNS_LITERAL = [
    "Filename", "Medical Record Number", "Image Number", "Pre-Treatment Image Time", "Gender", "Age",
    "7th T Stage", "7th N Stage", "7th Overall Stage", "Tumor Marker EBV", "EBV > 4000",
    "Intracranial or Cranial Nerve", "Skull Base", "Retropharyngeal Lymph Nodes",
    "Retropharyngeal Lymph Node Side Count", "Retropharyngeal Necrosis", "MRI Neck Lymph Nodes",
    "Neck Lymph Node Side Count", "Neck Necrosis", "Lower Neck",
    "All Lymph Node Necrosis (Binary Classification)", "Post-Chemotherapy Nasopharyngeal Tumor Regression",
    "Post-Chemotherapy Neck Lymph Node Tumor Regression",
    "Nasopharyngeal + Neck Recent Efficacy (Induction Efficacy)", "Treatment Start Time",
    "Last Follow-Up Time", "Treatment Failure (Long-Term Efficacy) - Update",
    "No Failure Survival Time - Update", "Death Update", "Death Time - Update",
    "Total Survival Time - Update", "Cause of Death", "Distant Metastasis - Update", "Metastasis Time",
    "No Distant Metastasis Survival Time", "MRI Machine", "Magnetic Field Strength",
]


def seed_columns() -> list[str]:
    """The header of the seed's example prognosis table (parsed from the reference when present)."""
    if REFERENCE.is_file():
        for line in REFERENCE.read_text(encoding="utf-8").splitlines():
            if line.startswith("| Filename"):
                return [c.strip() for c in line.strip().strip("|").split("|")]
    return SEED_COLUMNS_LITERAL


@pytest.fixture(scope="module")
def generated():
    return generate_clinical_table(499, seed=0, study_ids=[f"S{i:05d}" for i in range(499)])


@pytest.fixture(scope="module")
def clean(generated):
    table, truth = generated
    messy_rows = {m["row"] for m in truth["messy"]}
    return table.drop(index=sorted(messy_rows))


def _months(s: pd.Series) -> np.ndarray:
    return s.str.extract(r"^(\d+) months$")[0].astype(int).to_numpy()


def _days(a: pd.Series, b: pd.Series) -> np.ndarray:
    return np.array([(date.fromisoformat(y) - date.fromisoformat(x)).days for x, y in zip(a, b)])


def test_columns_match_seed(generated):
    table, _ = generated
    assert len(seed_columns()) == 37
    assert list(table.columns) == seed_columns() == list(CLINICAL_COLUMNS)
    assert len(table) == 499
    assert all(isinstance(v, str) for v in table.to_numpy().ravel())


def test_study_ids_one_per_patient(generated):
    table, _ = generated
    assert list(table["Image Number"]) == [f"S{i:05d}" for i in range(499)]
    assert table["Medical Record Number"].is_unique
    with pytest.raises(ValueError, match="one study id per patient"):
        generate_clinical_table(5, seed=0, study_ids=["a", "b"])


def test_ajcc7_rules():
    assert ajcc7_overall_stage(1, 0) == "I"
    assert {ajcc7_overall_stage(1, 1), ajcc7_overall_stage(2, 0), ajcc7_overall_stage(2, 1)} == {"II"}
    assert {ajcc7_overall_stage(1, 2), ajcc7_overall_stage(2, 2), ajcc7_overall_stage(3, 0),
            ajcc7_overall_stage(3, 2)} == {"III"}
    assert {ajcc7_overall_stage(4, n) for n in range(3)} == {"IVA"}
    assert {ajcc7_overall_stage(t, 3) for t in range(1, 5)} == {"IVB"}
    with pytest.raises(ValueError):
        ajcc7_overall_stage(5, 0)


def test_stage_and_ebv_consistency(clean):
    t = clean["7th T Stage"].map({"I": 1, "II": 2, "III": 3, "IV": 4})
    assert t.notna().all()
    n = clean["7th N Stage"].str.extract(r"^N([0-3])$")[0].astype(int)
    expected = [ajcc7_overall_stage(int(a), int(b)) for a, b in zip(t, n)]
    assert list(clean["7th Overall Stage"]) == expected
    assert set(clean["7th Overall Stage"]) == {"I", "II", "III", "IVA", "IVB"}
    ebv = clean["Tumor Marker EBV"].astype(int)
    assert ((ebv > 4000) == (clean["EBV > 4000"] == "Yes")).all()
    assert ((ebv > 4000).mean() > 0.1) and ((ebv <= 4000).mean() > 0.1)
    # node columns agree with N stage: N0 has no nodes, N2 bilateral neck
    n0 = n == 0
    assert (clean.loc[n0, "Retropharyngeal Lymph Nodes"] == "No").all()
    assert (clean.loc[n0, "MRI Neck Lymph Nodes"] == "No").all()
    assert (clean.loc[n == 2, "Neck Lymph Node Side Count"] == "2").all()


def test_time_ordering_and_dates(clean):
    start, last = clean["Treatment Start Time"], clean["Last Follow-Up Time"]
    assert (_days(clean["Pre-Treatment Image Time"], start) > 0).all()
    fu_days = _days(start, last)
    assert (fu_days > 0).all()
    dead = clean["Death Update"] == "Yes"
    met = clean["Distant Metastasis - Update"] == "Yes"
    fail = clean["Treatment Failure (Long-Term Efficacy) - Update"] == "Yes"
    assert (fail | ~dead).all() and (fail | ~met).all()  # death / metastasis imply failure
    ffs, os_, dmfs = (_months(clean[c]) for c in ("No Failure Survival Time - Update",
                                                  "Total Survival Time - Update",
                                                  "No Distant Metastasis Survival Time"))
    assert (ffs >= 1).all() and (ffs <= dmfs).all() and (dmfs <= os_).all()
    # months agree with dates
    assert (np.rint(fu_days / DAYS_PER_MONTH).astype(int) == os_).all()
    d = clean[dead]
    death_days = _days(d["Treatment Start Time"], d["Death Time - Update"])
    assert (death_days == _days(d["Treatment Start Time"], d["Last Follow-Up Time"])).all()
    assert (np.rint(death_days / DAYS_PER_MONTH).astype(int) == os_[dead.to_numpy()]).all()
    assert (clean.loc[~dead, ["Death Time - Update", "Cause of Death"]] == "N/A").all().all()
    m = clean[met]
    met_days = _days(m["Treatment Start Time"], m["Metastasis Time"])
    assert (met_days > 0).all() and (met_days <= fu_days[met.to_numpy()]).all()
    assert (np.rint(met_days / DAYS_PER_MONTH).astype(int) == dmfs[met.to_numpy()]).all()
    assert (clean.loc[~met, "Metastasis Time"] == "N/A").all()
    # event fraction in the range the issue asks for
    assert 0.35 <= fail.mean() <= 0.47


def test_messy_cells_recorded(generated):
    table, truth = generated
    messy = truth["messy"]
    assert 0.02 * len(table) <= len(messy) <= 0.06 * len(table)
    assert {m["kind"] for m in messy} >= {"missing_value", "na_time", "months_abbrev", "yes_no_variant",
                                          "t_stage_variant"}
    for m in messy:
        assert table.at[m["row"], m["column"]] == m["written"] != m["clean"]
        assert m["csv_line"] == m["row"] + 2
    years = [m for m in messy if m["kind"] == "years"]
    for m in years:
        assert re.fullmatch(r"\d+(\.\d+)? years", m["written"])
        assert float(m["written"].split()[0]) * 12 == int(m["clean"].split()[0])


def test_deterministic_by_seed():
    a, ta = generate_clinical_table(60, seed=3)
    b, tb = generate_clinical_table(60, seed=3)
    c, _ = generate_clinical_table(60, seed=4)
    pd.testing.assert_frame_equal(a, b)
    assert json.dumps(ta) == json.dumps(tb)
    assert not a.equals(c)


def test_truth_and_write(tmp_path, generated):
    table, truth = generated
    assert truth["endpoints"]["ffs"]["log_hr"] == TRUE_LOG_HR
    assert len(truth["linear_predictor"]) == 499
    paths = write_clinical_table(tmp_path / "clinical", table, truth)
    assert paths == {"clinical": "clinical.csv", "truth": "truth.json"}
    back = pd.read_csv(tmp_path / "clinical" / paths["clinical"], dtype=str, keep_default_na=False)
    pd.testing.assert_frame_equal(back, table.astype(str), check_dtype=False)
    assert json.loads((tmp_path / "clinical" / "truth.json").read_text())["seed"] == 0
    assert not list((tmp_path / "clinical").glob(".*.tmp"))


def test_cox_recovers_true_log_hr(clean):
    """A plain Cox fit on the clean rows recovers every true log HR within its 95% CI (FFS)."""
    lifelines = pytest.importorskip("lifelines")
    x = encode_covariates(clean["Age"].astype(int), clean["7th T Stage"].map({"I": 1, "II": 2, "III": 3, "IV": 4}),
                          clean["7th N Stage"].str[1].astype(int), clean["Tumor Marker EBV"].astype(float),
                          clean["All Lymph Node Necrosis (Binary Classification)"] == "Yes",
                          clean["Gender"] == "Male")
    df = pd.DataFrame(x, columns=list(TRUE_LOG_HR))
    df["T"] = _months(clean["No Failure Survival Time - Update"])
    df["E"] = (clean["Treatment Failure (Long-Term Efficacy) - Update"] == "Yes").to_numpy().astype(int)
    s = lifelines.CoxPHFitter().fit(df, "T", "E").summary
    truth = pd.Series(TRUE_LOG_HR)
    assert ((s["coef lower 95%"] <= truth) & (truth <= s["coef upper 95%"])).all(), s


def test_image_covariate_enters_the_hazard_and_is_declared():
    """With the true image factor as a covariate, Cox recovers its declared log HR; bad input is refused."""
    lifelines = pytest.importorskip("lifelines")
    from hicur_monai.data.demo.clinical import IMAGE_LOG_HR, clinical_baseline

    base = clinical_baseline(1500, seed=5)
    rng = np.random.default_rng(1)
    nec = (rng.random(1500) < np.array([0.08, 0.22, 0.42, 0.62])[base["t_stage"] - 1]).astype(float)
    table, truth = generate_clinical_table(1500, seed=5, image_covariates={"tumour_necrosis": nec},
                                           messy_fraction=0.0)
    assert list(table["7th N Stage"]) == [f"N{k}" for k in base["n_stage"]]  # same baseline as announced
    assert truth["image_covariates"]["tumour_necrosis"]["log_hr"] == IMAGE_LOG_HR["tumour_necrosis"]
    x = encode_covariates(table["Age"].astype(int), base["t_stage"], base["n_stage"],
                          table["Tumor Marker EBV"].astype(float), base["necrosis"], base["male"])
    df = pd.DataFrame(x, columns=list(TRUE_LOG_HR)).assign(tumour_necrosis=nec)
    df["T"] = _months(table["No Failure Survival Time - Update"])
    df["E"] = (table["Treatment Failure (Long-Term Efficacy) - Update"] == "Yes").to_numpy().astype(int)
    s = lifelines.CoxPHFitter().fit(df, "T", "E").summary
    lo, hi = s.loc["tumour_necrosis", ["coef lower 95%", "coef upper 95%"]]
    assert lo <= IMAGE_LOG_HR["tumour_necrosis"] <= hi and lo > 0
    with pytest.raises(ValueError, match="unknown image covariate"):
        generate_clinical_table(10, seed=0, image_covariates={"volume": np.zeros(10)})
    with pytest.raises(ValueError, match="need 10 finite values"):
        generate_clinical_table(10, seed=0, image_covariates={"tumour_necrosis": np.zeros(9)})
