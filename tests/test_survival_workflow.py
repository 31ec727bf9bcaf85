"""Survival workflow, bundle and ``hicur report survival`` on a small demo table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("lifelines")
pytest.importorskip("sksurv")

from hicur_monai.data.demo.clinical import generate_clinical_table, write_clinical_table  # noqa: E402
from hicur_monai.survival.workflow import evaluate, infer, train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "npc_prognosis"
SCHEMA = ROOT / ".." / "shared" / "monai" / "meta_schema_20240725.json"
FAST_DS = {"hidden": [8], "epochs": 30, "n_seeds": 1, "patience": 10, "lr": 0.01}


@pytest.fixture(scope="module")
def small_table(tmp_path_factory):
    d = tmp_path_factory.mktemp("clin")
    table, truth = generate_clinical_table(160, seed=2)
    write_clinical_table(d / "clinical", table, truth)
    return d / "clinical" / "clinical.csv", table


def test_evaluate_train_infer(small_table, tmp_path):
    csv, table = small_table
    res = evaluate(csv, tmp_path, endpoints="ffs", deepsurv=FAST_DS, n_folds=3, n_boot=10,
                   n_boot_calibration=10, report=False, salt="s", progress=False)
    assert set(res["endpoints"]) == {"ffs"}
    m = json.loads((tmp_path / "metrics.json").read_text())["endpoints"]["ffs"]["models"]
    for name in ("cox", "deepsurv"):
        assert len(m[name]["fit_seconds_per_fold"]) == 3
        assert 0.5 < m[name]["metrics"]["harrell_c"]["estimate"] <= 1.0
    oof = pd.read_csv(tmp_path / "oof_predictions.csv", dtype=str)
    mrns = set(table["Medical Record Number"])
    assert not mrns & set(oof.to_numpy().ravel())  # record numbers never leave the loader
    assert set(oof["fold"].astype(int)) == {0, 1, 2}

    summary = train(csv, tmp_path, endpoints="dmfs", deepsurv=FAST_DS, salt="s")
    assert set(summary["endpoints"]["dmfs"]["models"]) == {"cox", "deepsurv"}
    assert (tmp_path / "models" / "dmfs_cox.pt").is_file()
    # new patients: no outcome columns at all
    new = table.drop(columns=[c for c in table.columns if "Survival" in c or "Update" in c or "Metastasis" in c
                              or c in ("Treatment Start Time", "Last Follow-Up Time", "Cause of Death")])
    blank = new["Tumor Marker EBV"] == ""
    assert blank.any()
    new = pd.concat([new.head(10), new[blank]])
    new_csv = tmp_path / "new.csv"
    new.to_csv(new_csv, index=False)
    out = pd.read_csv(infer(tmp_path, new_csv, tmp_path / "pred.csv", endpoints="dmfs", salt="s"),
                      dtype={"note": str}, keep_default_na=False)
    for col in ("risk", "surv_12m", "surv_60m"):
        out[col] = pd.to_numeric(out[col])
    assert len(out) == 2 * len(new) and set(out["model"]) == {"cox", "deepsurv"}
    ok = out["note"] == ""
    assert (out.loc[ok, "surv_60m"] <= out.loc[ok, "surv_12m"]).all() and out.loc[ok, "risk"].notna().all()
    blank = new["Tumor Marker EBV"] == ""
    assert out.loc[~ok, "risk"].isna().all()
    assert (out.loc[~ok, "note"].str.contains("log10_ebv")).all() and (~ok).sum() == 2 * blank.sum()


def test_bundle_metadata_verifies():
    if not SCHEMA.is_file():
        pytest.skip(f"MONAI metadata schema not found at {SCHEMA} (shared/ is not beside the repository)")
    from monai.bundle import verify_metadata

    verify_metadata(meta_file=str(BUNDLE / "configs" / "metadata.json"), filepath=str(SCHEMA))


def test_bundle_configs_parse():
    from monai.bundle import ConfigParser

    tasks = {None: "train", "evaluate.json": "evaluate", "inference.json": "infer", "gpu.json": "train"}
    for overlay, task in tasks.items():
        files = [str(BUNDLE / "configs" / "train.json")] + ([str(BUNDLE / "configs" / overlay)] if overlay else [])
        parser = ConfigParser()
        parser.read_config(files)
        assert parser["run"] == ["$@workflow.run()"]  # one component, not a long call string
        assert parser["workflow#task"] == task
        assert parser["endpoints"] == "all" and parser["models"] == ["cox", "deepsurv"]
        assert parser["hcmae_encoder"] is None and parser["vlm_checkpoint"] is None
    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "configs" / f) for f in ("train.json", "evaluate.json")])
    wf = parser.get_parsed_content("workflow")
    assert wf.evaluation["n_boot"] == 200 and wf.common["mri_datalist"] == "demo_data/datalist.json"


def test_bundle_configs_are_wiring():
    """#18: no ``$`` expression with a conditional or a lambda, none over 120 characters, run not repeated."""
    runs = []
    for path in sorted((BUNDLE / "configs").glob("*.json")):
        text = path.read_text()
        exprs = [s for s in _strings(json.loads(text)) if s.startswith("$")]
        for e in exprs:
            assert " if " not in e and "lambda" not in e, (path.name, e)
            assert len(e) <= 120, (path.name, e)
        runs += [e for e in exprs if "workflow." in e and "run(" in e]
    assert runs.count("$@workflow.run()") == 2  # train.json and inference.json; evaluate.json overrides the task
    assert "run" not in json.loads((BUNDLE / "configs" / "evaluate.json").read_text())


def _strings(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)


def test_inference_config_runs_alone():
    """``hicur ask`` suggests inference.json by itself: it must resolve without train.json."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    assert parser.get_parsed_content("prediction_csv") == "runs/npc_prognosis/predictions.csv"
    assert parser.get_parsed_content("input_table") == "demo_data/clinical/clinical.csv"
    assert parser.get_parsed_content("model_dir") == "runs/npc_prognosis"


@pytest.mark.slow
def test_bundle_and_cli_end_to_end(small_table, tmp_path):
    csv, _ = small_table
    dataset_dir = csv.parent.parent
    run = [sys.executable, "-m", "monai.bundle", "run", "--config_file"]
    common = ["--dataset_dir", str(dataset_dir), "--output_dir", str(tmp_path / "b"), "--endpoints", "os",
              "--deepsurv#n_seeds", "1", "--deepsurv#epochs", "40", "--salt", "s"]
    train_cfg = str(BUNDLE / "configs" / "train.json")
    subprocess.run(run + [train_cfg] + common, check=True, cwd=ROOT, capture_output=True)
    assert (tmp_path / "b" / "models" / "os_deepsurv.pt").is_file()
    infer_only = ["--dataset_dir", str(dataset_dir), "--output_dir", str(tmp_path / "b"), "--endpoints", "os",
                  "--salt", "s"]
    r = subprocess.run(run + [str(BUNDLE / "configs" / "inference.json")] + infer_only, cwd=ROOT, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    pred = pd.read_csv(tmp_path / "b" / "predictions.csv")
    assert set(pred["model"]) == {"cox", "deepsurv"} and set(pred["endpoint"]) == {"os"}
    r = subprocess.run([sys.executable, "-m", "hicur_monai.cli", "report", "survival", str(csv), "--out",
                        str(tmp_path / "r"), "--endpoints", "os", "--folds", "3", "--boot", "20",
                        "--boot-calibration", "10", "--deepsurv-seeds", "1", "--truth",
                        str(csv.parent / "truth.json"), "--salt", "s"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    html = (tmp_path / "r" / "survival_report.html").read_text()
    for section in ("Cohort", "Table 1", "Kaplan-Meier", "Model fitting and convergence", "Proportional-hazards check",
                    "Model comparison", "Calibration", "TRIPOD+AI", "true log hazard ratios", "data:image/png;base64,"):
        assert section in html, section
    assert "os: n=" in r.stdout
