"""Train, evaluate and infer survival models on the prognosis table (what the bundle runs).

The ``bundles/npc_prognosis`` configs call :func:`train`, :func:`evaluate` and :func:`infer`
through ``_target_``; the ``hicur report survival`` command calls :func:`evaluate`.

* :func:`prepare_dataset`: table -> covariates + (time, event) of one endpoint, optional
  image features joined by study id, complete cases only, every exclusion counted.
* :func:`cross_validate`: the same stratified patient-level folds for every model;
  out-of-fold risks and survival curves, fit time per fold.
* :func:`train`: fit each model on all eligible patients of each endpoint and save it.
* :func:`evaluate`: cross-validated metrics with bootstrap CIs (``metrics.json``),
  out-of-fold predictions (CSV) and the HTML survival report.
* :func:`infer`: risk and survival probabilities for new patients (CSV in, CSV out).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time as _time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd

from hicur_monai.data.clinical import (
    DEFAULT_COVARIATES,
    ENDPOINTS,
    ClinicalTable,
    design_matrix,
    endpoint_frame,
    load_clinical_table,
)
from hicur_monai.survival.features import SurvivalPipeline, load_image_features
from hicur_monai.survival.image_features import study_features
from hicur_monai.survival.metrics import Outcome, SurvivalPredictions, evaluate_survival, harrell_c
from hicur_monai.survival.models import MODEL_FACTORIES, CoxModel, FitError, load_model, save_model
from hicur_monai.utils.csv_safe import neutralize_formulas
from hicur_monai.utils.io import atomic_open, atomic_write_json

__all__ = [
    "DEFAULT_HORIZONS",
    "resolve_endpoints",
    "load_table",
    "prepare_dataset",
    "build_model",
    "cross_validate",
    "train",
    "evaluate",
    "infer",
    "image_inputs",
    "PrognosisWorkflow",
]

logger = logging.getLogger(__name__)

DEFAULT_HORIZONS: tuple[float, ...] = (12.0, 36.0, 60.0)


def resolve_endpoints(endpoints: str | Sequence[str] | None) -> list[str]:
    """``"all"``/None -> every endpoint; a comma-separated string or a list otherwise."""
    if endpoints is None or endpoints == "all":
        return list(ENDPOINTS)
    eps = [e.strip() for e in endpoints.split(",")] if isinstance(endpoints, str) else list(endpoints)
    unknown = [e for e in eps if e not in ENDPOINTS]
    if unknown:
        raise ValueError(f"unknown endpoints {unknown}; known: {list(ENDPOINTS)}")
    return eps


def load_table(table: str | os.PathLike | pd.DataFrame | ClinicalTable, mode: str = "drop",
               salt: str | None = None, column_map: Mapping[str, str] | None = None,
               require_outcomes: bool = True) -> ClinicalTable:
    """A :class:`ClinicalTable` from a path, a raw DataFrame or an already loaded table."""
    if isinstance(table, ClinicalTable):
        return table
    return load_clinical_table(table, mode=cast(Any, mode), salt=salt, column_map=column_map,
                               require_outcomes=require_outcomes)


def prepare_dataset(table: ClinicalTable, endpoint: str, covariates: Sequence[str] | None = None,
                    image_features: str | os.PathLike | pd.DataFrame | None = None
                    ) -> tuple[pd.DataFrame, pd.DataFrame, list[str], dict[str, Any]]:
    """Covariates + ``time``/``event`` of ``endpoint`` for complete cases.

    Returns:
        ``(df, ids, image_columns, info)``: the model frame (covariates, optional image
        feature columns, ``time``, ``event``), the matching ``patient_id``/``study_id``,
        the image feature column names, and the exclusion counts.
    """
    covs = list(covariates or DEFAULT_COVARIATES)
    x = design_matrix(table, covs)
    ep = endpoint_frame(table, endpoint)
    df = x.join(ep, how="inner")
    info: dict[str, Any] = {"endpoint": endpoint, "n_table": int(len(table.data)),
                            "excluded_missing_outcome": int(ep.attrs["excluded"])}
    image_cols: list[str] = []
    if image_features is not None:
        feats = image_features if isinstance(image_features, pd.DataFrame) else load_image_features(image_features)
        sid = table.data.loc[df.index, "study_id"].astype(str)
        have = sid.isin(feats.index).to_numpy()
        info["excluded_no_image_features"] = int((~have).sum())
        df = df[have]
        f = feats.loc[sid[have].to_numpy()].set_axis(df.index)
        image_cols = list(f.columns)
        df = pd.concat([df[covs], f, df[["time", "event"]]], axis=1)
    miss = df[covs].isna()
    info["excluded_missing_covariates"] = {c: int(miss[c].sum()) for c in covs if miss[c].any()}
    info["excluded_missing_covariates_rows"] = int(miss.any(axis=1).sum())
    df = df[~miss.any(axis=1)]
    info["n"], info["events"] = int(len(df)), int(df["event"].sum())
    info["covariates"] = covs
    info["image_feature_columns"] = len(image_cols)
    if info["events"] == 0:
        raise ValueError(f"endpoint {endpoint!r}: no events among {len(df)} complete cases")
    ids = table.data.loc[df.index, ["patient_id", "study_id"]]
    logger.info("%s: %d patients, %d events (excluded: %d without outcome, %d with missing covariates)",
                endpoint, info["n"], info["events"], info["excluded_missing_outcome"],
                info["excluded_missing_covariates_rows"])
    return df, ids, image_cols, info


def build_model(name: str, params: Mapping[str, Any] | None = None, image_columns: Sequence[str] = (),
                n_components: int | str = "auto") -> SurvivalPipeline:
    """A :class:`SurvivalPipeline` around the model ``name`` (``cox`` or ``deepsurv``)."""
    if name not in MODEL_FACTORIES:
        raise ValueError(f"unknown model {name!r}; known: {sorted(MODEL_FACTORIES)}")
    return SurvivalPipeline(MODEL_FACTORIES[name](**dict(params or {})), image_columns, n_components)


def _grid(horizons: Sequence[float], max_time: float) -> np.ndarray:
    return np.unique(np.concatenate([np.asarray(horizons, float), np.linspace(1.0, max(max_time, 2.0), 60)]))


@contextlib.contextmanager
def _fit_context(where: str) -> Iterator[None]:
    """Re-raise a :class:`FitError` with ``where`` (endpoint, model) in front of its message."""
    try:
        yield
    except FitError as err:
        raise FitError(f"{where}: {err}", err.attempts) from err


def cross_validate(df: pd.DataFrame, models: Mapping[str, Mapping[str, Any] | None],
                   image_columns: Sequence[str] = (), n_folds: int = 5, seed: int = 0,
                   horizons: Sequence[float] = DEFAULT_HORIZONS, progress: bool = True) -> dict[str, Any]:
    """Stratified (by event) patient-level K-fold CV, the same folds for every model.

    Returns ``{"grid", "fold", "models": {name: {"risk", "surv", "fit_seconds", "fold_c", "convergence"}}}``
    with out-of-fold predictions for every patient and each fold fit's ``convergence_`` record.
    A fit that does not converge raises :class:`~hicur_monai.survival.models.FitError` with the
    fold and the model added to its message.
    """
    from sklearn.model_selection import StratifiedKFold

    n = len(df)
    grid = _grid(horizons, float(df["time"].max()))
    fold = np.full(n, -1)
    res: dict[str, dict[str, Any]] = {
        name: {"risk": np.full(n, np.nan), "surv": np.full((n, len(grid)), np.nan), "fit_seconds": [],
               "fold_c": [], "convergence": []} for name in models}
    splits = list(StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(df, df["event"]))
    total = n_folds * len(models)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="cross-validation fits", leave=False)
    for k, (tr, te) in enumerate(splits):
        fold[te] = k
        for name, params in models.items():
            t0 = _time.perf_counter()
            with _fit_context(f"cross-validation fold {k + 1}/{n_folds}, model {name!r}"):
                m = build_model(name, params, image_columns).fit(df.iloc[tr])
            res[name]["fit_seconds"].append(_time.perf_counter() - t0)
            res[name]["convergence"].append(dict(m.model.convergence_))
            risk = m.predict_risk(df.iloc[te])
            res[name]["risk"][te] = risk
            res[name]["surv"][te] = m.predict_survival(df.iloc[te], grid)
            res[name]["fold_c"].append(harrell_c(Outcome(df["time"].iloc[te], df["event"].iloc[te]), risk))
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return {"grid": grid, "fold": fold, "models": res, "n_folds": n_folds, "seed": seed}


def _model_params(models: Sequence[str], cox: Mapping | None, deepsurv: Mapping | None) -> dict[str, dict]:
    params = {"cox": dict(cox or {}), "deepsurv": dict(deepsurv or {})}
    for m in models:
        if m not in params:
            raise ValueError(f"unknown model {m!r}; known: {sorted(params)}")
    return {m: params[m] for m in models}


def image_inputs(table: ClinicalTable, output_dir: str | os.PathLike,
                 image_features: str | os.PathLike | pd.DataFrame | None = None,
                 hcmae_encoder: str | os.PathLike | None = None, vlm_checkpoint: str | os.PathLike | None = None,
                 mri_datalist: str | os.PathLike | None = None, mode: str = "drop",
                 cache_dir: str | os.PathLike | None = None
                 ) -> tuple[str | os.PathLike | pd.DataFrame | None, dict[str, Any]]:
    """The image features for the models and what they are (``metrics.json``'s ``"image_features"``).

    A feature file (``image_features``), features extracted here from the named checkpoints
    (``hcmae_encoder`` / ``vlm_checkpoint`` over ``mri_datalist``, cached in
    ``cache_dir``, default ``output_dir/image_features``, see
    :func:`hicur_monai.survival.image_features.study_features`), or none (clinical covariates only).
    The cache is keyed by the checkpoints' and images' checksums, so runs may share one ``cache_dir``.

    Raises:
        ValueError: both a feature file and checkpoints are given, or checkpoints without a datalist.
    """
    if hcmae_encoder is None and vlm_checkpoint is None:
        if image_features is None:
            return None, {"source": "none"}
        what = "<DataFrame>" if isinstance(image_features, pd.DataFrame) else str(image_features)
        return image_features, {"source": "file", "file": what}
    if image_features is not None:
        raise ValueError("give either image_features (a feature file) or hcmae_encoder / vlm_checkpoint "
                         "(features extracted from the checkpoints), not both")
    if not mri_datalist:
        raise ValueError("hcmae_encoder / vlm_checkpoint need mri_datalist (the cohort's datalist.json with 'mri')")
    return study_features(table.data["study_id"].astype(str).tolist(), mri_datalist,
                          Path(cache_dir or Path(output_dir) / "image_features"), hcmae_encoder, vlm_checkpoint,
                          mode)


def train(table: str | os.PathLike | pd.DataFrame | ClinicalTable, output_dir: str | os.PathLike,
          endpoints: str | Sequence[str] = "all", models: Sequence[str] = ("cox", "deepsurv"),
          covariates: Sequence[str] | None = None, cox: Mapping[str, Any] | None = None,
          deepsurv: Mapping[str, Any] | None = None, image_features: str | os.PathLike | None = None,
          horizons: Sequence[float] = DEFAULT_HORIZONS, mode: str = "drop", salt: str | None = None,
          column_map: Mapping[str, str] | None = None, hcmae_encoder: str | os.PathLike | None = None,
          vlm_checkpoint: str | os.PathLike | None = None, mri_datalist: str | os.PathLike | None = None,
          image_features_cache: str | os.PathLike | None = None) -> dict[str, Any]:
    """Fit every model for every endpoint on all eligible patients; save to ``output_dir/models``.

    Writes ``models/<endpoint>_<model>.pt`` and ``train_summary.json`` (counts, fit
    times, hyperparameters, Cox hazard ratios, baseline survival at the horizons, and the
    image features used: see :func:`image_inputs`).
    """
    out = Path(output_dir)
    ct = load_table(table, mode, salt, column_map)
    params = _model_params(models, cox, deepsurv)
    feats, feat_desc = image_inputs(ct, out, image_features, hcmae_encoder, vlm_checkpoint, mri_datalist, mode,
                                    image_features_cache)
    summary: dict[str, Any] = {"source": ct.source, "table": ct.summary(), "dropped_rows": ct.dropped,
                               "image_features": feat_desc, "endpoints": {}}
    for ep in resolve_endpoints(endpoints):
        df, _, image_cols, info = prepare_dataset(ct, ep, covariates, feats)
        summary["endpoints"][ep] = {"data": info, "models": {}}
        for name, p in params.items():
            with _fit_context(f"endpoint {ep!r}, model {name!r}"):
                pipe = build_model(name, p, image_cols).fit(df)
            rel = f"models/{ep}_{name}.pt"
            save_model(pipe, out / rel, endpoint=ep, model_name=name, covariates=info["covariates"],
                       image_columns=image_cols, params=pipe.model.params(), horizons=list(horizons),
                       image_features=feat_desc)
            entry: dict[str, Any] = {"file": rel, "fit_seconds": pipe.fit_seconds_, "params": pipe.model.params(),
                                     "convergence": dict(pipe.model.convergence_),
                                     "baseline_survival": dict(zip([f"{h:g}" for h in horizons],
                                                                   map(float, pipe.baseline_survival(horizons))))}
            if isinstance(pipe.model, CoxModel):
                entry["hazard_ratios"] = pipe.model.hazard_ratios().reset_index().to_dict(orient="records")
            summary["endpoints"][ep]["models"][name] = entry
            logger.info("trained %s for %s in %.2f s -> %s", name, ep, pipe.fit_seconds_, out / rel)
    atomic_write_json(out / "train_summary.json", summary)
    return summary


def evaluate(table: str | os.PathLike | pd.DataFrame | ClinicalTable, output_dir: str | os.PathLike,
             endpoints: str | Sequence[str] = "all", models: Sequence[str] = ("cox", "deepsurv"),
             covariates: Sequence[str] | None = None, cox: Mapping[str, Any] | None = None,
             deepsurv: Mapping[str, Any] | None = None, image_features: str | os.PathLike | None = None,
             n_folds: int = 5, n_boot: int = 200, n_boot_calibration: int = 30,
             horizons: Sequence[float] = DEFAULT_HORIZONS, seed: int = 0, report: bool = True,
             report_name: str = "survival_report.html", truth: str | os.PathLike | None = None,
             mode: str = "drop", salt: str | None = None, column_map: Mapping[str, str] | None = None,
             progress: bool = True, hcmae_encoder: str | os.PathLike | None = None,
             vlm_checkpoint: str | os.PathLike | None = None, mri_datalist: str | os.PathLike | None = None,
             image_features_cache: str | os.PathLike | None = None) -> dict[str, Any]:
    """Cross-validated evaluation of every model on every endpoint, plus the HTML report.

    Metrics are computed on the pooled out-of-fold predictions (each patient predicted by
    the model that did not see it) with a patient-level bootstrap CI; the censoring
    distribution for IPCW metrics is estimated on the whole cohort. Writes
    ``metrics.json``, ``oof_predictions.csv`` and (``report=True``) ``report_name``.

    Args:
        truth: optional ``truth.json`` of the demo generator: the report then compares the
            Cox fit with the true log hazard ratios.
        hcmae_encoder, vlm_checkpoint, mri_datalist: extract the image features from these
            checkpoints (see :func:`image_inputs`) instead of reading ``image_features``.
    """
    out = Path(output_dir)
    ct = load_table(table, mode, salt, column_map)
    params = _model_params(models, cox, deepsurv)
    horizons = [float(h) for h in horizons]
    image_features, feat_desc = image_inputs(ct, out, image_features, hcmae_encoder, vlm_checkpoint, mri_datalist,
                                             mode, image_features_cache)
    results: dict[str, Any] = {"source": ct.source, "table": ct.summary(), "dropped_rows": ct.dropped,
                               "n_folds": n_folds, "seed": seed, "horizons": horizons,
                               "image_features": feat_desc, "endpoints": {}}
    per_endpoint: dict[str, Any] = {}
    oof_rows = []
    for ep in resolve_endpoints(endpoints):
        df, ids, image_cols, info = prepare_dataset(ct, ep, covariates, image_features)
        with _fit_context(f"endpoint {ep!r}"):
            cv = cross_validate(df, params, image_cols, n_folds, seed, horizons, progress)
        everyone = Outcome(df["time"], df["event"])
        ep_res: dict[str, Any] = {"data": info, "models": {}}
        for name in params:
            r = cv["models"][name]
            pred = SurvivalPredictions(r["risk"], r["surv"], cv["grid"])
            metrics = evaluate_survival(everyone, everyone, pred, horizons, n_boot, n_boot_calibration, seed)
            ep_res["models"][name] = {
                "metrics": metrics,
                "fold_harrell_c": [float(c) for c in r["fold_c"]],
                "fit_seconds_per_fold": [float(s) for s in r["fit_seconds"]],
                "convergence_per_fold": r["convergence"],
                "params": build_model(name, params[name]).model.params(),
            }
            cols = [int(np.flatnonzero(cv["grid"] == h)[0]) for h in horizons]
            frame = ids.reset_index(drop=True).assign(endpoint=ep, model=name, fold=cv["fold"], risk=r["risk"],
                                                      time=df["time"].to_numpy(), event=df["event"].to_numpy())
            for h, c in zip(horizons, cols):
                frame[f"surv_{h:g}m"] = r["surv"][:, c]
            oof_rows.append(frame)
        # a Cox model on all eligible patients: hazard ratios, PH checks (for the report)
        with _fit_context(f"endpoint {ep!r}, Cox model on all eligible patients"):
            full = build_model("cox", params.get("cox", {}), image_cols).fit(df)
        ep_res["cox_full"] = {"hazard_ratios": full.model.hazard_ratios().reset_index().to_dict(orient="records"),
                              "convergence": dict(full.model.convergence_),
                              "baseline_survival": dict(zip([f"{h:g}" for h in horizons],
                                                            map(float, full.baseline_survival(horizons))))}
        results["endpoints"][ep] = ep_res
        per_endpoint[ep] = {"df": df, "ids": ids, "cv": cv, "cox_full": full, "image_columns": image_cols}
    atomic_write_json(out / "metrics.json", results)
    if oof_rows:
        with atomic_open(out / "oof_predictions.csv") as fh:
            neutralize_formulas(pd.concat(oof_rows, ignore_index=True)).to_csv(fh, index=False)
    if report:
        from hicur_monai.survival.report import write_survival_report

        path = write_survival_report(out / report_name, ct, results, per_endpoint, truth=truth)
        results["report"] = str(path)
        logger.info("survival report: %s", path)
    return results


def _check_same_features(path: Path, trained: Mapping[str, Any], given: Mapping[str, Any]) -> None:
    """Raise when a model trained with image features gets none, or features from other checkpoints."""
    if given.get("source", "none") == "none":
        how = "hcmae_encoder / vlm_checkpoint" if trained.get("source") == "extracted" else "image_features="
        raise ValueError(f"{path} was trained with image features; pass {how}")
    for kind, src in (trained.get("checkpoints") or {}).items():
        now = (given.get("checkpoints") or {}).get(kind)
        if now is None or now.get("sha256") != src.get("sha256"):
            got = f"{now['path']} (sha256 {now['sha256'][:16]}...)" if now else "none"
            raise ValueError(f"{path} was trained with {kind} features from {src.get('path')} "
                             f"(sha256 {str(src.get('sha256'))[:16]}...); given: {got}")


def infer(model_dir: str | os.PathLike, table: str | os.PathLike | pd.DataFrame, output_csv: str | os.PathLike,
          endpoints: str | Sequence[str] = "all", models: Sequence[str] = ("cox", "deepsurv"),
          horizons: Sequence[float] | None = None, image_features: str | os.PathLike | None = None,
          mode: str = "flag", salt: str | None = None, column_map: Mapping[str, str] | None = None,
          hcmae_encoder: str | os.PathLike | None = None, vlm_checkpoint: str | os.PathLike | None = None,
          mri_datalist: str | os.PathLike | None = None, image_features_cache: str | os.PathLike | None = None
          ) -> Path:
    """Predict risk and survival probabilities for new patients (no outcome columns needed).

    Models trained with extracted image features need the same checkpoints
    (``hcmae_encoder`` / ``vlm_checkpoint``, checked by SHA-256) and ``mri_datalist``.

    Writes one row per patient, endpoint and model: ``patient_id`` (pseudonym),
    ``study_id``, ``endpoint``, ``model``, ``risk`` (log relative hazard; higher = worse),
    ``surv_<h>m`` and ``note`` (why a row has no prediction, e.g. a missing covariate, and
    any problem the loader found in the row).
    """
    mdir = Path(model_dir)
    ct = load_table(table, mode, salt, column_map, require_outcomes=False)
    feats, feat_desc = image_inputs(ct, mdir, image_features, hcmae_encoder, vlm_checkpoint, mri_datalist, mode,
                                    image_features_cache)
    if isinstance(feats, (str, os.PathLike)):
        feats = load_image_features(feats)
    rows = []
    for ep in resolve_endpoints(endpoints):
        for name in models:
            path = mdir / "models" / f"{ep}_{name}.pt"
            if not path.is_file():
                raise FileNotFoundError(f"no trained model {path}; run the bundle's train.json first")
            obj = load_model(path)
            pipe: SurvivalPipeline = obj["model"]
            hz = [float(h) for h in (horizons or obj.get("horizons") or DEFAULT_HORIZONS)]
            x = design_matrix(ct, obj["covariates"], warn=False)
            note = pd.Series("", index=x.index)
            if obj["image_columns"]:
                _check_same_features(path, obj.get("image_features") or {}, feat_desc)
                assert feats is not None  # _check_same_features refuses a model given no features
                sid = ct.data["study_id"].astype(str)
                f = feats.reindex(sid.to_numpy()).set_axis(x.index)
                x = pd.concat([x, f[obj["image_columns"]]], axis=1)
                note[f.isna().any(axis=1)] = "no image features for this study"
            miss = x.isna()
            for i in np.flatnonzero(miss.any(axis=1).to_numpy()):
                cols = miss.columns[miss.iloc[i].to_numpy()].tolist()
                note.iloc[i] = note.iloc[i] or f"missing covariates: {', '.join(cols)}"
            ok = (note == "").to_numpy()
            frame = ct.data[["patient_id", "study_id"]].copy()
            frame["endpoint"], frame["model"] = ep, name
            frame["risk"] = np.nan
            surv = np.full((len(x), len(hz)), np.nan)
            if ok.any():
                frame.loc[ok, "risk"] = pipe.predict_risk(x[ok])
                surv[ok] = pipe.predict_survival(x[ok], hz)
            for j, h in enumerate(hz):
                frame[f"surv_{h:g}m"] = surv[:, j]
            # rows the loader flagged (mode="flag") are predicted but say what was wrong with them
            table_problems = ct.data["problems"].fillna("").to_numpy()
            frame["note"] = ["; ".join(x for x in (a, f"table: {b}" if b else "") if x)
                             for a, b in zip(note.to_numpy(), table_problems)]
            rows.append(frame)
    result = pd.concat(rows, ignore_index=True)
    out = Path(output_csv)
    with atomic_open(out) as fh:
        neutralize_formulas(result).to_csv(fh, index=False)
    n_bad = int((result["note"] != "").sum())
    if n_bad:
        logger.warning("%d prediction rows without a value (see column 'note')", n_bad)
    return out


class PrognosisWorkflow:
    """The one component the ``npc_prognosis`` bundle runs: :func:`train`, :func:`evaluate` or :func:`infer`.

    ``train.json`` declares it with the settings every task shares; ``evaluate.json`` overrides
    only ``task`` and ``evaluation``, ``inference.json`` declares it with ``task: "infer"``.
    The bundle's ``run`` is ``$@workflow.run()``.

    Args:
        task: ``"train"``, ``"evaluate"`` or ``"infer"``.
        table: the clinical table (for ``infer``: the new patients).
        output_dir: where ``train``/``evaluate`` write; for ``infer`` the folder holding ``models/``.
        endpoints, models, covariates, cox, deepsurv, horizons, mode, salt: as in :func:`train`.
        image_features, hcmae_encoder, vlm_checkpoint, mri_datalist: the image features (see
            :func:`image_inputs`).
        image_features_cache: where extracted features are cached (default ``output_dir/image_features``;
            several runs may share one).
        evaluation: keyword arguments of :func:`evaluate` only (``n_folds``, ``n_boot``,
            ``n_boot_calibration``, ``seed``, ``report_name``, ``truth``).
        output_csv: the predictions file of ``infer``.
    """

    TASKS = ("train", "evaluate", "infer")
    EVALUATION_KEYS = frozenset({"n_folds", "n_boot", "n_boot_calibration", "seed", "report_name", "truth",
                                 "report", "progress"})

    def __init__(self, task: str, table: str | os.PathLike | pd.DataFrame, output_dir: str | os.PathLike,
                 endpoints: str | Sequence[str] = "all", models: Sequence[str] = ("cox", "deepsurv"),
                 covariates: Sequence[str] | None = None, cox: Mapping[str, Any] | None = None,
                 deepsurv: Mapping[str, Any] | None = None, horizons: Sequence[float] = DEFAULT_HORIZONS,
                 mode: str = "drop", salt: str | None = None, image_features: str | os.PathLike | None = None,
                 hcmae_encoder: str | os.PathLike | None = None, vlm_checkpoint: str | os.PathLike | None = None,
                 mri_datalist: str | os.PathLike | None = None, evaluation: Mapping[str, Any] | None = None,
                 output_csv: str | os.PathLike | None = None, image_features_cache: str | os.PathLike | None = None):
        if task not in self.TASKS:
            raise ValueError(f"task must be one of {self.TASKS}, got {task!r}")
        unknown = sorted(set(evaluation or {}) - self.EVALUATION_KEYS)
        if unknown:
            raise ValueError(f"unknown evaluation settings {unknown}; known: {sorted(self.EVALUATION_KEYS)}")
        if task == "infer" and not output_csv:
            raise ValueError("task 'infer' needs output_csv (where the predictions go)")
        self.task, self.evaluation, self.output_csv = task, dict(evaluation or {}), output_csv
        self.common: dict[str, Any] = {
            "table": table, "endpoints": endpoints, "models": list(models), "horizons": horizons, "mode": mode,
            "salt": salt, "image_features": image_features, "hcmae_encoder": hcmae_encoder,
            "vlm_checkpoint": vlm_checkpoint, "mri_datalist": mri_datalist,
            "image_features_cache": image_features_cache}
        self.fit_settings: dict[str, Any] = {"covariates": covariates, "cox": cox, "deepsurv": deepsurv}
        self.output_dir = output_dir

    def run(self) -> dict[str, Any] | Path:
        """Run the task; returns the training summary, the evaluation results or the predictions file."""
        if self.task == "infer":
            assert self.output_csv is not None  # checked in __init__
            return infer(model_dir=self.output_dir, output_csv=self.output_csv, **self.common)
        if self.task == "evaluate":
            return evaluate(output_dir=self.output_dir, **self.common, **self.fit_settings, **self.evaluation)
        return train(output_dir=self.output_dir, **self.common, **self.fit_settings)
