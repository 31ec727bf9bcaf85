"""Cox and DeepSurv fitters, metrics, image features, workflow (fast, small data)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("lifelines")
pytest.importorskip("sksurv")

from hicur_monai.data.clinical import design_matrix, endpoint_frame, load_clinical_table  # noqa: E402
from hicur_monai.data.demo.clinical import TRUE_LOG_HR, generate_clinical_table  # noqa: E402
from hicur_monai.survival.features import SurvivalPipeline, epv_components, load_image_features  # noqa: E402
from hicur_monai.survival.metrics import (  # noqa: E402
    Outcome,
    SurvivalPredictions,
    bootstrap_ci,
    brier,
    calibration_ici,
    evaluate_survival,
    harrell_c,
    ipcw_truncation,
    td_auc,
    uno_c,
)
from hicur_monai.survival.models import (  # noqa: E402
    CoxModel,
    DeepSurv,
    FitError,
    breslow_baseline,
    load_model,
    save_model,
)

FAST_DS = dict(hidden=(16,), epochs=60, n_seeds=1, patience=20, lr=1e-2)


@pytest.fixture(scope="module")
def demo_frame():
    table, truth = generate_clinical_table(499, seed=0)
    ct = load_clinical_table(table, mode="drop", salt="t")
    df = design_matrix(ct).join(endpoint_frame(ct, "ffs"), how="inner").dropna()
    return df, truth, ct


def test_cox_recovers_truth_on_demo(demo_frame):
    df, truth, _ = demo_frame
    cox = CoxModel().fit(df)  # the bundle's default (penalizer 0.01)
    hr = cox.hazard_ratios()
    true = pd.Series(truth["endpoints"]["ffs"]["log_hr"])
    assert true.to_dict() == TRUE_LOG_HR
    hr = hr.loc[list(true.index)]
    inside = (hr["coef_lo"] <= true) & (true <= hr["coef_hi"])
    assert inside.all(), hr
    assert (hr["hr"] == np.exp(hr["coef"])).all()
    s = cox.predict_survival(df.iloc[:5], [12, 36, 60])
    assert s.shape == (5, 3) and (np.diff(s, axis=1) <= 0).all() and ((s > 0) & (s <= 1)).all()
    assert np.all(np.diff(cox.baseline_survival([0.5, 12, 36, 60])) <= 0)


def test_cox_rossi_coefficients():
    from lifelines.datasets import load_rossi

    cox = CoxModel(penalizer=0.0).fit(load_rossi(), "week", "arrest")
    assert cox.hazard_ratios().loc["prio", "coef"] == pytest.approx(0.0915, abs=1e-3)
    assert cox.fitter_.log_likelihood_ == pytest.approx(-658.748, abs=1e-3)


def test_collinearity_warned_and_missing_values_rejected(demo_frame):
    _, _, ct = demo_frame
    x = design_matrix(ct, ["overall_stage", "t_stage", "n_stage"], warn=False).join(endpoint_frame(ct, "os"))
    with pytest.warns(UserWarning, match="overall stage is a function of T and N"):
        CoxModel().fit(x.dropna())
    bad = x.copy()
    bad.iloc[3, 0] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="missing values in covariates"):
            CoxModel().fit(bad)


def test_breslow_matches_lifelines(demo_frame):
    df, _, _ = demo_frame
    cox = CoxModel(penalizer=0.0).fit(df)
    t, h = breslow_baseline(cox.predict_risk(df), df["time"].to_numpy(), df["event"].to_numpy())
    ref = cox.fitter_.baseline_cumulative_hazard_.iloc[:, 0]
    np.testing.assert_allclose(h, ref.loc[t].to_numpy(), rtol=1e-6)


def test_deepsurv_learns_and_predicts_curves(demo_frame, tmp_path):
    torch.set_num_threads(1)
    df, _, _ = demo_frame
    tr, te = df.iloc[:380], df.iloc[380:]
    ds = DeepSurv(**FAST_DS).fit(tr)
    c = harrell_c(Outcome(te["time"], te["event"]), ds.predict_risk(te))
    assert c > 0.68, c  # true-model C on this cohort is ~0.78; random is 0.5
    s = ds.predict_survival(te, [6, 12, 36, 60])
    assert s.shape == (len(te), 4) and (np.diff(s, axis=1) <= 1e-12).all() and (s > 0).all() and (s <= 1).all()
    assert ds.history_[0]["epochs_run"] <= FAST_DS["epochs"]
    save_model(ds, tmp_path / "m.pt", endpoint="ffs")
    back = load_model(tmp_path / "m.pt")
    np.testing.assert_allclose(back["model"].predict_risk(te), ds.predict_risk(te), rtol=1e-6)
    assert back["endpoint"] == "ffs"


def test_ipcw_metrics_do_not_crash_when_test_outlasts_train():
    rng = np.random.default_rng(0)
    train = Outcome(rng.uniform(1, 50, 200), rng.random(200) < 0.5)
    test = Outcome(rng.uniform(1, 90, 100), rng.random(100) < 0.5)
    risk = -test.time + rng.normal(0, 5, 100)
    tt, tau = ipcw_truncation(train, test)
    assert tau < 50 and tt.time.max() <= tau and not tt.event[test.time > tau].any()
    assert 0.5 < uno_c(train, test, risk) <= 1.0
    auc = td_auc(train, test, risk, [12.0, 36.0, 60.0])
    assert np.isfinite(auc[12.0]) and np.isnan(auc[60.0])  # 60 months is beyond the data: NaN, not a crash
    grid = np.array([6.0, 12.0, 24.0, 36.0, 60.0])
    surv = np.exp(-np.outer(np.exp(risk / 20), grid / 40))
    bs, ibs = brier(train, test, surv, grid, [12.0, 60.0])
    assert np.isfinite(bs[12.0]) and np.isnan(bs[60.0]) and np.isfinite(ibs)


def test_metrics_discriminate_and_calibrate():
    rng = np.random.default_rng(1)
    n = 600
    x = rng.normal(size=n)
    t_true = rng.exponential(30 * np.exp(-x))
    c = rng.uniform(10, 80, n)
    out = Outcome(np.minimum(t_true, c), t_true <= c)
    assert harrell_c(out, x) > 0.7 > harrell_c(out, rng.normal(size=n)) + 0.1
    s_true = np.exp(-24.0 / (30 * np.exp(-x)))
    s_bad = s_true ** 3  # systematically over-predicts risk
    assert calibration_ici(out, s_true, 24.0) < 0.04 < calibration_ici(out, s_bad, 24.0)
    est, lo, hi = bootstrap_ci(lambda idx: harrell_c(out.subset(idx), x[idx]), n, n_boot=50)
    assert lo < est < hi and hi - lo < 0.1
    grid = np.array([12.0, 24.0, 36.0])
    surv = np.exp(-np.outer(1 / (30 * np.exp(-x)), grid))
    res = evaluate_survival(out, out, SurvivalPredictions(x, surv, grid), horizons=(12.0, 24.0), n_boot=20,
                            n_boot_calibration=10)
    assert res["harrell_c"]["lo"] <= res["harrell_c"]["estimate"] <= res["harrell_c"]["hi"]
    assert res["auc@12"]["estimate"] > 0.7 and res["ici@24"]["estimate"] < 0.05
    with pytest.raises(ValueError, match="not points of the prediction grid"):
        evaluate_survival(out, out, SurvivalPredictions(x, surv, grid), horizons=(60.0,), n_boot=5)


def test_image_features_pipeline(demo_frame, tmp_path):
    df, _, ct = demo_frame
    rng = np.random.default_rng(0)
    sid = ct.data.loc[df.index, "study_id"].to_numpy().astype(str)
    # slice-level features (n, slices, d) whose mean carries the linear predictor plus noise
    lp = df[list(TRUE_LOG_HR)].to_numpy() @ np.array(list(TRUE_LOG_HR.values()))
    feats = rng.normal(size=(len(df), 4, 12))
    feats[:, :, :6] += 2 * lp[:, None, None]  # a shared factor in half the features: the first PC
    np.savez(tmp_path / "f.npz", ids=sid, features=feats)
    f = load_image_features(tmp_path / "f.npz")
    assert f.shape == (len(df), 12) and f.index[0] == sid[0]
    np.testing.assert_allclose(f.iloc[:, 0].to_numpy(), feats[:, :, 0].mean(1), rtol=1e-6, atol=1e-12)
    f.reset_index().to_csv(tmp_path / "f.csv", index=False)
    pd.testing.assert_frame_equal(load_image_features(tmp_path / "f.csv"), f, check_exact=False)
    np.save(tmp_path / "g.npy", feats)
    with pytest.raises(ValueError, match="ids"):
        load_image_features(tmp_path / "g.npy")
    (tmp_path / "g.ids.txt").write_text("\n".join(sid))
    assert load_image_features(tmp_path / "g.npy").shape == (len(df), 12)
    assert epv_components(200, 6) == 10 and epv_components(40, 6) == 1
    data = pd.concat([df[["age_per10", "male"]], f.set_axis(df.index), df[["time", "event"]]], axis=1)
    pipe = SurvivalPipeline(CoxModel(), image_columns=list(f.columns), n_components=3).fit(data.iloc[:380])
    assert pipe.covariates == ["age_per10", "male", "img_pc1", "img_pc2", "img_pc3"]
    c = harrell_c(Outcome(data["time"].iloc[380:], data["event"].iloc[380:]), pipe.predict_risk(data.iloc[380:]))
    assert c > 0.65  # the PCs carry the signal put into the features


def test_generic_tables_whas500_and_strata():
    """Other tables work: scikit-survival's whas500 through the same CV code; stratified Cox."""
    from sksurv.column import encode_categorical
    from sksurv.datasets import load_whas500

    from hicur_monai.survival.workflow import cross_validate

    x, y = load_whas500()
    df = encode_categorical(x).astype(float)
    df["time"], df["event"] = y["lenfol"].astype(float), y["fstat"].astype(int)
    cv = cross_validate(df, {"cox": {}}, n_folds=3, seed=0, progress=False)
    assert 0.68 < float(np.mean(cv["models"]["cox"]["fold_c"])) < 0.85  # published linear Cox ~0.71-0.76
    assert not np.isnan(cv["models"]["cox"]["risk"]).any()
    strat = CoxModel(strata=["gender=1"]).fit(df)
    assert "gender=1" not in strat.hazard_ratios().index
    s = strat.predict_survival(df.iloc[:4], [100.0, 1000.0])
    assert s.shape == (4, 2) and (s[:, 1] <= s[:, 0]).all()


def test_deepsurv_failed_refit_leaves_no_half_fitted_model(demo_frame, monkeypatch):
    """A fit that raises must not leave new networks next to the previous fit's baseline (was: silent mix)."""
    df, _, _ = demo_frame
    ds = DeepSurv(**{**FAST_DS, "epochs": 5, "n_seeds": 2}).fit(df.iloc[:200])
    real_fit_one = DeepSurv._fit_one

    def fail_second(self, x, t, e, seed):
        if seed != self.seed:
            raise FitError("seed diverged")
        return real_fit_one(self, x, t, e, seed)

    monkeypatch.setattr(DeepSurv, "_fit_one", fail_second)
    with pytest.raises(FitError, match="seed diverged"):
        ds.fit(df.iloc[200:400])
    for call in (lambda: ds.predict_risk(df), lambda: ds.predict_survival(df, [12]),
                 lambda: ds.baseline_survival([12])):
        with pytest.raises(RuntimeError, match="not fitted"):
            call()
