"""Synthetic 37-column NPC prognosis table with a known survival model behind it.

The table has exactly the columns of the seed's example prognosis table (same names, same
order, values in the same formats: ``"10 months"``, ``"N/A"``, ``Yes``/``No``, dates
``YYYY-MM-DD``), is internally consistent (AJCC 7th-edition overall stage from T and N,
``EBV > 4000`` from the EBV value, event times after treatment start, death time no later
than the last follow-up, months consistent with dates) and its event times are drawn from a
proportional-hazards model whose true log hazard ratios are written to ``truth.json``
together with the exact covariate encoding, so a Cox fit can be checked against the truth.

Survival model (all times from treatment start, in days):

* three independent latent cause-specific times, each Weibull PH with the same shape and
  the same log hazard ratios ``beta`` on the covariates of :data:`COVARIATES`, and their own
  baseline scale: distant metastasis ``T_M``, locoregional recurrence ``T_L``, death
  ``T_D``; plus an independent censoring time ``C`` (administrative study close and loss to
  follow-up, covariate-free);
* overall survival (OS): event ``T_D <= C``, time ``min(T_D, C)``: exactly PH(``beta``);
* distant-metastasis-free survival (DMFS): event ``T_M <= min(T_D, C)``, time
  ``min(T_M, T_D, C)`` (death without metastasis censors): the cause-specific hazard is
  exactly PH(``beta``);
* failure-free survival (FFS): the first of recurrence, metastasis or death: the sum of three
  hazards with one shape and one ``beta`` is again Weibull PH(``beta``), so FFS is exact too.

Every latent time is at least one month (a one-month offset is added to the Weibull draw;
Cox models only see the order of times, which the offset does not change), so no event is
written as "0 months".

Formats chosen (and accepted, with their variants, by :mod:`hicur_monai.data.clinical`):
T stage as a roman numeral ``I``-``IV`` as in the seed's sample rows, N stage ``N0``-``N3``,
overall stage ``I``, ``II``, ``III``, ``IVA``, ``IVB`` (M0 assumed), times as whole months
(``"<n> months"``), as in the seed: month-resolution times tie heavily, as real follow-up does.

A small fraction of rows is made messy the way hospital tables are (a blank covariate,
``"N/A"`` where a time should be, ``"10 mo"``, ``"1.5 years"``, ``"yes"``/``"Y"``, ``"T2"``
instead of ``"II"``); ``truth.json`` lists every such cell (row, column, clean value, written
value, kind).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hicur_monai.data.clinical import ajcc7_overall_stage
from hicur_monai.utils.io import atomic_open, atomic_write_json

__all__ = [
    "CLINICAL_COLUMNS",
    "COVARIATES",
    "TRUE_LOG_HR",
    "IMAGE_COVARIATES",
    "IMAGE_LOG_HR",
    "IMAGE_CENTRE",
    "clinical_baseline",
    "DAYS_PER_MONTH",
    "ajcc7_overall_stage",
    "encode_covariates",
    "generate_clinical_table",
    "write_clinical_table",
]

#: the 37 columns of the seed's example prognosis table, in its order
CLINICAL_COLUMNS: tuple[str, ...] = (
    "Filename",
    "Medical Record Number",
    "Image Number",
    "Pre-Treatment Image Time",
    "Gender",
    "Age",
    "7th T Stage",
    "7th N Stage",
    "7th Overall Stage",
    "Tumor Marker EBV",
    "EBV > 4000",
    "Intracranial or Cranial Nerve",
    "Skull Base",
    "Retropharyngeal Lymph Nodes",
    "Retropharyngeal Lymph Node Side Count",
    "Retropharyngeal Necrosis",
    "MRI Neck Lymph Nodes",
    "Neck Lymph Node Side Count",
    "Neck Necrosis",
    "Lower Neck",
    "All Lymph Node Necrosis (Binary Classification)",
    "Post-Chemotherapy Nasopharyngeal Tumor Regression",
    "Post-Chemotherapy Neck Lymph Node Tumor Regression",
    "Nasopharyngeal + Neck Recent Efficacy (Induction Efficacy)",
    "Treatment Start Time",
    "Last Follow-Up Time",
    "Treatment Failure (Long-Term Efficacy) - Update",
    "No Failure Survival Time - Update",
    "Death Update",
    "Death Time - Update",
    "Total Survival Time - Update",
    "Cause of Death",
    "Distant Metastasis - Update",
    "Metastasis Time",
    "No Distant Metastasis Survival Time",
    "MRI Machine",
    "Magnetic Field Strength",
)

#: covariates of the true model and how each is computed from the (clean) table
COVARIATES: dict[str, str] = {
    "age_per10": "(Age - 50) / 10",
    "t_stage": "7th T Stage as an integer 1..4 (linear trend)",
    "n_stage": "7th N Stage as an integer 0..3 (linear trend)",
    "log10_ebv": "log10(Tumor Marker EBV + 1), EBV in copies/mL",
    "necrosis": "All Lymph Node Necrosis (Binary Classification): Yes=1, No=0",
    "male": "Gender: Male=1, Female=0 (true effect 0: a null covariate)",
}

#: true log hazard ratios (shared by the three cause-specific hazards, hence by FFS, OS, DMFS)
TRUE_LOG_HR: dict[str, float] = {
    "age_per10": 0.30,
    "t_stage": 0.40,
    "n_stage": 0.45,
    "log10_ebv": 0.50,
    "necrosis": 0.60,
    "male": 0.0,
}

#: image-borne covariates the demo cohort can add to the hazard (not columns of the table)
IMAGE_COVARIATES: dict[str, str] = {
    "tumour_necrosis": "necrotic core of the primary tumour (non-enhancing on T1C, bright on T2): 1=present, 0=absent",
}

#: their true log hazard ratios (declared before any model runs)
IMAGE_LOG_HR: dict[str, float] = {"tumour_necrosis": 0.70}

#: the linear predictor is centred at these values (about the cohort's prevalence)
IMAGE_CENTRE: dict[str, float] = {"tumour_necrosis": 0.35}

#: days in an average month; months written in the table are ``round(days / DAYS_PER_MONTH)``
DAYS_PER_MONTH = 365.25 / 12

_ROMAN = ("I", "II", "III", "IV")
_WEIBULL_SHAPE = 1.3
# Baseline Weibull scales (months) at the covariate centre of COVARIATE_CENTRE; tuned so the
# 499-patient cohort has ~40% FFS events.
_SCALE_MONTHS = {"metastasis": 170.0, "recurrence": 260.0, "death": 190.0}
# linear predictor is centred at these covariate values so the scales above mean something
_CENTRE = {"age_per10": 0.0, "t_stage": 2.5, "n_stage": 1.5, "log10_ebv": 3.0, "necrosis": 0.4, "male": 0.7}
_STUDY_CLOSE = date(2020, 6, 30)
_LOSS_RATE_PER_MONTH = 1.0 / 400.0


def encode_covariates(age: Any, t_stage: Any, n_stage: Any, ebv: Any, necrosis: Any, male: Any) -> np.ndarray:
    """The design matrix of the true model (columns in :data:`COVARIATES` order).

    All arguments are numeric arrays of the same length (T 1..4, N 0..3, EBV copies/mL,
    necrosis and male 0/1).
    """
    return np.column_stack([
        (np.asarray(age, dtype=float) - 50.0) / 10.0,
        np.asarray(t_stage, dtype=float),
        np.asarray(n_stage, dtype=float),
        np.log10(np.asarray(ebv, dtype=float) + 1.0),
        np.asarray(necrosis, dtype=float),
        np.asarray(male, dtype=float),
    ])


def _yn(flags: np.ndarray) -> list[str]:
    return ["Yes" if f else "No" for f in flags]


def _months(days: np.ndarray) -> np.ndarray:
    return np.rint(np.asarray(days, dtype=float) / DAYS_PER_MONTH).astype(int)


def _months_str(m: int) -> str:
    return f"{int(m)} months"


def generate_clinical_table(n_patients: int = 499, seed: int = 0,
                            study_ids: Sequence[str] | None = None,
                            messy_fraction: float = 0.04,
                            image_covariates: Mapping[str, Any] | None = None) -> tuple[pd.DataFrame, dict]:
    """Generate the synthetic prognosis table and the truth behind it.

    Args:
        n_patients: number of patients (rows).
        seed: random seed; the same seed gives the same table and truth.
        study_ids: one imaging study id per patient (written to ``Image Number``); at least
            ``n_patients`` of them (the first ``n_patients`` are used). Default
            ``STUDY0001``, ``STUDY0002``, ...
        messy_fraction: fraction of rows that get one realistic formatting problem.
        image_covariates: image-borne covariates (names from :data:`IMAGE_LOG_HR`, one value per
            patient) that enter the hazard with their declared log HR; the demo cohort passes the
            necrotic core it draws into each MRI. Not columns of the table (only the image shows
            them); declared in ``truth["image_covariates"]``. ``None``: the clinical-only model.

    Returns:
        ``(table, truth)``: the table as strings exactly as written to CSV (blank = ``""``),
        and a JSON-serialisable dict with the model, the covariate encoding, the true log
        hazard ratios, per-patient linear predictors and the list of messy cells.
    """
    if n_patients < 1:
        raise ValueError(f"n_patients must be >= 1, got {n_patients}")
    study_ids = _check_study_ids(study_ids, n_patients)
    # the draws below happen in a fixed order (baseline, event times, cause, MRN, messy cells):
    # the same seed gives the same bytes
    rng = np.random.default_rng(seed)
    n = n_patients
    b = _draw_baseline(rng, n)
    image = _check_image_covariates(image_covariates, n)
    lp = _linear_predictor(b, image)
    events = _draw_events(rng, lp, b["start_ord"])
    mrn = rng.choice(np.arange(100000, 1000000), size=n, replace=False)
    table = pd.DataFrame(_table_columns(b, events, study_ids, mrn), columns=list(CLINICAL_COLUMNS), dtype=object)
    messy = _make_messy(table, rng, messy_fraction)
    truth = _truth(seed, n, lp, events, messy)
    if image:
        truth["image_covariates"] = _image_truth(image, b["t_stage"])
        for ep in truth["endpoints"].values():
            ep["image_log_hr"] = {k: IMAGE_LOG_HR[k] for k in image}
    return table, truth


def _check_study_ids(study_ids: Sequence[str] | None, n: int) -> list[str]:
    """One unique study id per patient (default ``STUDY0001``, ...); the first ``n`` are used."""
    if study_ids is None:
        study_ids = [f"STUDY{i + 1:04d}" for i in range(n)]
    ids = [str(s) for s in study_ids]
    if len(ids) < n:
        raise ValueError(f"need one study id per patient: got {len(ids)} ids for {n} patients")
    ids = ids[:n]
    if len(set(ids)) != n:
        raise ValueError("study_ids must be unique (one study per patient)")
    return ids


def _linear_predictor(b: Mapping[str, Any], image: Mapping[str, np.ndarray]) -> np.ndarray:
    """The true model's centred linear predictor: clinical covariates plus image-borne ones."""
    x = encode_covariates(b["age"], b["t_stage"], b["n_stage"], b["ebv"], b["necrosis"], b["male"])
    beta = np.array([TRUE_LOG_HR[c] for c in COVARIATES])
    centre = np.array([_CENTRE[c] for c in COVARIATES])
    lp = (x - centre) @ beta
    for name, values in image.items():
        lp = lp + (values - IMAGE_CENTRE[name]) * IMAGE_LOG_HR[name]
    return lp


def _draw_events(rng: np.random.Generator, lp: np.ndarray, start_ord: np.ndarray) -> dict[str, np.ndarray]:
    """Draw the latent times, censoring and cause of death; return the observed endpoints (days)."""
    n = len(lp)

    def latent_days(scale_months: float) -> np.ndarray:
        u = rng.random(n)
        t_months = scale_months * (-np.log(u) / np.exp(lp)) ** (1.0 / _WEIBULL_SHAPE)
        return (1.0 + t_months) * DAYS_PER_MONTH  # at least one month after treatment start

    t_met = latent_days(_SCALE_MONTHS["metastasis"])
    t_rec = latent_days(_SCALE_MONTHS["recurrence"])
    t_death = latent_days(_SCALE_MONTHS["death"])
    admin = (_STUDY_CLOSE.toordinal() - start_ord).astype(float)
    lost = (1.0 + rng.exponential(1.0 / _LOSS_RATE_PER_MONTH, n)) * DAYS_PER_MONTH
    cens = np.minimum(admin, lost)
    # integer days so that dates and months agree exactly
    t_met, t_rec, t_death, cens = (np.floor(a).astype(int) for a in (t_met, t_rec, t_death, cens))

    death = t_death <= cens
    os_days = np.where(death, t_death, cens)
    met = t_met <= os_days
    dmfs_days = np.where(met, t_met, os_days)
    rec = t_rec <= os_days
    ffs_days = np.minimum.reduce([dmfs_days, np.where(rec, t_rec, os_days), os_days])
    other_causes = rng.choice(["Heart Disease", "Other Cause", "Second Primary Cancer"], size=n)
    cause = np.where(~death, "N/A",
                     np.where(met & (t_met <= t_death), "Distant Metastasis",
                              np.where(rec, "Nasopharyngeal Carcinoma", other_causes)))
    return {"death": death, "os_days": os_days, "met": met, "dmfs_days": dmfs_days, "ffs_days": ffs_days,
            "failure": met | rec | death, "cause": cause}


def _iso(ordinals: np.ndarray) -> list[str]:
    return [date.fromordinal(int(o)).isoformat() for o in ordinals]


def _table_columns(b: Mapping[str, Any], ev: Mapping[str, np.ndarray], study_ids: Sequence[str],
                   mrn: np.ndarray) -> dict[str, list[str]]:
    """The 37 columns as strings (clean values; messy cells are made afterwards)."""
    n = len(study_ids)
    start_ord, regress, machine = b["start_ord"], b["regress"], b["machine"]
    death, met = ev["death"], ev["met"]
    last_fu = ev["os_days"]  # dead: the date of death; alive: the date last seen
    return {
        "Filename": [f"sample{i + 1:03d}" for i in range(n)],
        "Medical Record Number": [str(v) for v in mrn],
        "Image Number": list(study_ids),
        "Pre-Treatment Image Time": _iso(start_ord - b["image_lead_days"]),
        "Gender": ["Male" if m else "Female" for m in b["male"]],
        "Age": [str(a) for a in b["age"]],
        "7th T Stage": [_ROMAN[t - 1] for t in b["t_stage"]],
        "7th N Stage": [f"N{k}" for k in b["n_stage"]],
        "7th Overall Stage": b["overall"],
        "Tumor Marker EBV": [str(v) for v in b["ebv"]],
        "EBV > 4000": _yn(b["ebv"] > 4000),
        "Intracranial or Cranial Nerve": _yn(b["intracranial"]),
        "Skull Base": _yn(b["skull_base"]),
        "Retropharyngeal Lymph Nodes": _yn(b["rp_nodes"]),
        "Retropharyngeal Lymph Node Side Count": [str(v) for v in b["rp_sides"]],
        "Retropharyngeal Necrosis": _yn(b["rp_necrosis"]),
        "MRI Neck Lymph Nodes": _yn(b["neck_nodes"]),
        "Neck Lymph Node Side Count": [str(v) for v in b["neck_sides"]],
        "Neck Necrosis": _yn(b["neck_necrosis"]),
        "Lower Neck": _yn(b["lower_neck"]),
        "All Lymph Node Necrosis (Binary Classification)": _yn(b["necrosis"]),
        "Post-Chemotherapy Nasopharyngeal Tumor Regression": [str(regress[v]) for v in b["np_regress"]],
        "Post-Chemotherapy Neck Lymph Node Tumor Regression": [
            str(regress[v]) if nodes else "N/A" for v, nodes in zip(b["neck_regress"], b["neck_nodes"])],
        "Nasopharyngeal + Neck Recent Efficacy (Induction Efficacy)": [
            "Effective" if e else "Not Effective" for e in b["effective"]],
        "Treatment Start Time": _iso(start_ord),
        "Last Follow-Up Time": _iso(start_ord + last_fu),
        "Treatment Failure (Long-Term Efficacy) - Update": _yn(ev["failure"]),
        "No Failure Survival Time - Update": [_months_str(m) for m in _months(ev["ffs_days"])],
        "Death Update": _yn(death),
        "Death Time - Update": [d if e else "N/A" for d, e in zip(_iso(start_ord + ev["os_days"]), death)],
        "Total Survival Time - Update": [_months_str(m) for m in _months(ev["os_days"])],
        "Cause of Death": [str(c) for c in ev["cause"]],
        "Distant Metastasis - Update": _yn(met),
        "Metastasis Time": [d if e else "N/A" for d, e in zip(_iso(start_ord + ev["dmfs_days"]), met)],
        "No Distant Metastasis Survival Time": [_months_str(m) for m in _months(ev["dmfs_days"])],
        "MRI Machine": [str(m) for m in machine],
        "Magnetic Field Strength": [b["field"][str(m)] for m in machine],
    }


def _truth(seed: int, n: int, lp: np.ndarray, ev: Mapping[str, np.ndarray], messy: list) -> dict[str, Any]:
    """The JSON-serialisable truth: formats, model, encoding, endpoints with true log HR, messy cells."""
    return {
        "generator": "hicur_monai.data.demo.clinical.generate_clinical_table",
        "seed": int(seed),
        "n_patients": int(n),
        "synthetic": True,
        "note": "Randomly generated; no real patient data.",
        "formats": {
            "7th T Stage": "roman numeral I..IV (T1..T4)",
            "7th N Stage": "N0..N3",
            "7th Overall Stage": "AJCC 7th edition, M0 assumed: I, II, III, IVA, IVB",
            "times": "whole months, '<n> months' = round(days / 30.4375); dates YYYY-MM-DD",
            "EBV > 4000": "Yes iff Tumor Marker EBV > 4000 (copies/mL)",
        },
        "model": {
            "type": "Weibull proportional hazards, three independent latent cause-specific times "
                    "(distant metastasis, locoregional recurrence, death) with one shape and one "
                    "beta, plus independent covariate-free censoring",
            "weibull_shape": _WEIBULL_SHAPE,
            "baseline_scale_months": dict(_SCALE_MONTHS),
            "linear_predictor_centre": dict(_CENTRE),
            "time_offset_months": 1.0,
            "censoring": {"study_close": _STUDY_CLOSE.isoformat(),
                          "loss_to_follow_up_rate_per_month": _LOSS_RATE_PER_MONTH},
        },
        "covariate_encoding": dict(COVARIATES),
        "endpoints": {
            "ffs": {"event": "Treatment Failure (Long-Term Efficacy) - Update",
                    "time": "No Failure Survival Time - Update",
                    "definition": "first of locoregional recurrence, distant metastasis or death from any cause",
                    "log_hr": dict(TRUE_LOG_HR), "exact_ph": True,
                    "events": int(ev["failure"].sum())},
            "os": {"event": "Death Update", "time": "Total Survival Time - Update",
                   "definition": "death from any cause", "log_hr": dict(TRUE_LOG_HR), "exact_ph": True,
                   "events": int(ev["death"].sum())},
            "dmfs": {"event": "Distant Metastasis - Update", "time": "No Distant Metastasis Survival Time",
                     "definition": "distant metastasis; death without metastasis censors (cause-specific hazard)",
                     "log_hr": dict(TRUE_LOG_HR), "exact_ph": True, "events": int(ev["met"].sum())},
        },
        "linear_predictor": [round(float(v), 6) for v in lp],
        "messy": messy,
    }


def _image_truth(image: dict[str, np.ndarray], t_stage: np.ndarray) -> dict[str, Any]:
    """What ``truth.json`` declares about the image-borne covariates (models never read it)."""
    out: dict[str, Any] = {}
    for name, values in image.items():
        by_t = {f"T{t}": round(float(values[t_stage == t].mean()), 4) for t in (1, 2, 3, 4) if (t_stage == t).any()}
        corr = float(np.corrcoef(values, t_stage)[0, 1]) if values.std() > 0 and t_stage.std() > 0 else float("nan")
        out[name] = {
            "log_hr": IMAGE_LOG_HR[name],
            "encoding": IMAGE_COVARIATES[name],
            "linear_predictor_centre": IMAGE_CENTRE[name],
            "mean_by_t_stage": by_t,
            "correlation_with_t_stage": round(corr, 4),
            "values": [round(float(v), 6) for v in values],
            "note": "enters every endpoint's hazard beside the clinical covariates (same shared beta); not a "
                    "column of clinical.csv, only visible in the MRI. A clinical-only Cox fit omits it, so its "
                    "T-stage coefficient absorbs part of it (the two are correlated).",
        }
    return out



def clinical_baseline(n_patients: int, seed: int = 0) -> dict[str, np.ndarray]:
    """The baseline characteristics (T, N, EBV, nodes, skull base, ...) of the table that
    ``generate_clinical_table(n_patients, seed)`` writes, as clean arrays (no messy cells).

    The same seed gives the same baseline whatever ``image_covariates`` are given later, so
    the demo cohort can derive each tumour from its patient's T/N before the event times are drawn.
    """
    if n_patients < 1:
        raise ValueError(f"n_patients must be >= 1, got {n_patients}")
    return _draw_baseline(np.random.default_rng(seed), n_patients)


def _draw_baseline(rng: np.random.Generator, n: int) -> dict[str, Any]:
    """Draw the baseline columns (the first draws of the table's random stream, in a fixed order)."""
    male = rng.random(n) < 0.72
    age = np.clip(np.rint(rng.normal(47.0, 11.0, n)), 18, 85).astype(int)
    t_stage = rng.choice([1, 2, 3, 4], size=n, p=[0.15, 0.25, 0.38, 0.22])
    n_stage = rng.choice([0, 1, 2, 3], size=n, p=[0.18, 0.42, 0.28, 0.12])
    overall = [ajcc7_overall_stage(int(t), int(k)) for t, k in zip(t_stage, n_stage)]
    # EBV DNA (copies/mL): undetectable in ~15%, otherwise log-normal rising with N stage
    log_ebv = rng.normal(2.6 + 0.35 * n_stage, 0.9)
    ebv = np.where(rng.random(n) < 0.15, 0, np.rint(10.0 ** log_ebv)).astype(int)
    intracranial = t_stage == 4
    skull_base = (t_stage >= 3) & ((t_stage == 3) | (rng.random(n) < 0.7))
    # nodes (7th ed.: N1 unilateral cervical and/or retropharyngeal, N2 bilateral, N3 >6 cm or supraclavicular)
    rp_nodes = (n_stage >= 1) & (rng.random(n) < 0.8)
    neck_nodes = (n_stage >= 2) | ((n_stage == 1) & (~rp_nodes | (rng.random(n) < 0.6)))
    rp_sides = np.where(rp_nodes, rng.choice([1, 2], size=n, p=[0.6, 0.4]), 0)
    neck_sides = np.where(neck_nodes, np.where(n_stage >= 2, 2, 1), 0)
    neck_sides = np.where((n_stage == 3) & (rng.random(n) < 0.3), 1, neck_sides)  # N3 may be unilateral
    lower_neck = (n_stage == 3) & (rng.random(n) < 0.8)
    rp_necrosis = rp_nodes & (rng.random(n) < 0.35)
    neck_necrosis = neck_nodes & (rng.random(n) < 0.25 + 0.1 * n_stage)
    necrosis = rp_necrosis | neck_necrosis

    regress = np.array(["Complete Regression", "Partial Regression", "No Regression"])
    np_regress = rng.choice(3, size=n, p=[0.35, 0.55, 0.10])
    neck_regress = rng.choice(3, size=n, p=[0.40, 0.50, 0.10])
    effective = (np_regress < 2) & ((neck_regress < 2) | ~neck_nodes)

    machine = rng.choice(["MRI-1", "MRI-2", "MRI-3"], size=n, p=[0.4, 0.35, 0.25])
    field = {"MRI-1": "1.5T", "MRI-2": "3T", "MRI-3": "3T"}

    start_ord = rng.integers(date(2012, 1, 1).toordinal(), date(2016, 12, 31).toordinal() + 1, size=n)
    image_lead_days = rng.integers(3, 22, size=n)
    return {
        "male": male, "age": age, "t_stage": t_stage, "n_stage": n_stage, "overall": overall, "ebv": ebv,
        "intracranial": intracranial, "skull_base": skull_base, "rp_nodes": rp_nodes, "neck_nodes": neck_nodes,
        "rp_sides": rp_sides, "neck_sides": neck_sides, "lower_neck": lower_neck, "rp_necrosis": rp_necrosis,
        "neck_necrosis": neck_necrosis, "necrosis": necrosis, "regress": regress, "np_regress": np_regress,
        "neck_regress": neck_regress, "effective": effective, "machine": machine, "field": field,
        "start_ord": start_ord, "image_lead_days": image_lead_days,
    }


def _check_image_covariates(image_covariates: Mapping[str, Any] | None, n: int) -> dict[str, np.ndarray]:
    """Validate image-borne covariates: known names (:data:`IMAGE_LOG_HR`), one finite value per patient."""
    out: dict[str, np.ndarray] = {}
    for name, values in (image_covariates or {}).items():
        if name not in IMAGE_LOG_HR:
            raise ValueError(f"unknown image covariate {name!r}; known: {sorted(IMAGE_LOG_HR)}")
        arr = np.asarray(values, dtype=float)
        if arr.shape != (n,) or not np.isfinite(arr).all():
            raise ValueError(f"image covariate {name!r}: need {n} finite values, got shape {arr.shape}")
        out[name] = arr
    return out


def _make_messy(table: pd.DataFrame, rng: np.random.Generator, fraction: float) -> list[dict[str, Any]]:
    """Give ``fraction`` of the rows one realistic formatting problem each, in place."""
    n = len(table)
    k = int(round(fraction * n))
    if k == 0:
        return []
    rows = np.sort(rng.choice(n, size=k, replace=False))
    kinds = ("missing_value", "na_time", "months_abbrev", "years", "yes_no_variant", "t_stage_variant")
    messy: list[dict[str, Any]] = []
    for i, row in enumerate(rows):
        kind = kinds[i % len(kinds)]
        row = int(row)
        if kind == "missing_value":
            col = ("Tumor Marker EBV", "Age", "Gender")[i % 3]
            new = ""
        elif kind == "na_time":
            col = "No Failure Survival Time - Update"
            new = "N/A"
        elif kind == "months_abbrev":
            col = "Total Survival Time - Update"
            new = table.at[row, col].replace(" months", " mo")
        elif kind == "years":
            col = "No Distant Metastasis Survival Time"
            months = int(table.at[row, col].split()[0])
            if months % 6:  # only exact in years at half-year steps; otherwise the common "mo" variant
                new, kind = f"{months} mo", "months_abbrev"
            else:
                new = f"{months / 12:g} years"
        elif kind == "yes_no_variant":
            col = "Death Update"
            new = {"Yes": "yes", "No": "N"}[table.at[row, col]]
        else:  # t_stage_variant
            col = "7th T Stage"
            new = f"T{_ROMAN.index(table.at[row, col]) + 1}"
        messy.append({"row": row, "csv_line": row + 2, "column": col, "clean": table.at[row, col],
                      "written": new, "kind": kind})
        table.at[row, col] = new
    return messy


def write_clinical_table(out_dir: str | Path, table: pd.DataFrame, truth: dict) -> dict[str, str]:
    """Write ``out_dir/clinical.csv`` and ``out_dir/truth.json`` atomically.

    Returns:
        ``{"clinical": "clinical.csv", "truth": "truth.json"}`` (paths relative to ``out_dir``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if list(table.columns) != list(CLINICAL_COLUMNS):
        raise ValueError("table columns differ from the 37 prognosis-table columns; refusing to write")
    with atomic_open(out / "clinical.csv", "w") as fh:
        table.to_csv(fh, index=False, lineterminator="\n")
    atomic_write_json(out / "truth.json", truth)
    return {"clinical": "clinical.csv", "truth": "truth.json"}

