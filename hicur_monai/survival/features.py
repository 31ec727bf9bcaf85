"""Per-patient image features for survival models, from any encoder.

Features come as a file keyed by study (or patient) id, so any image encoder works:

* ``.csv``: one row per study, an id column (``study_id`` by default, else the first
  column) and numeric feature columns;
* ``.npz``: arrays ``ids`` ``(n,)`` and ``features`` ``(n, d)`` or ``(n, slices, d)``;
* ``.npy``: ``(n, d)`` or ``(n, slices, d)`` with the ids in a sibling ``<name>.ids.txt``
  (one per line).

Slice-level features ``(n, slices, d)`` are mean-pooled over slices (NaN slices ignored).
:class:`ImageFeatureReducer` standardises and reduces them with PCA fitted on the training
rows only, to a number of components that respects the events-per-variable budget
(:func:`epv_components`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["load_image_features", "epv_components", "ImageFeatureReducer", "SurvivalPipeline"]


def _pool(arr: np.ndarray, source: str) -> np.ndarray:
    arr = np.asarray(arr, dtype=float)
    if arr.ndim == 3:
        with np.errstate(all="ignore"):
            arr = np.nanmean(arr, axis=1)
    if arr.ndim != 2:
        raise ValueError(f"{source}: features must be (n, d) or (n, slices, d), got shape {arr.shape}")
    return arr


def load_image_features(path: str | os.PathLike, id_column: str | None = None, prefix: str = "img_") -> pd.DataFrame:
    """Read per-study features; returns a DataFrame indexed by id with columns ``img_0..img_{d-1}``.

    Raises:
        ValueError: naming the file, for duplicate ids, non-numeric or non-finite values, or a
            shape mismatch between ids and features.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"image feature file {p} does not exist")
    suffix = p.suffix.lower()
    if suffix == ".csv":
        raw = pd.read_csv(p)
        col = id_column or ("study_id" if "study_id" in raw.columns else raw.columns[0])
        if col not in raw.columns:
            raise ValueError(f"{p}: no id column {col!r}; columns: {list(raw.columns)[:10]}")
        ids = raw[col].astype(str).to_numpy()
        num = raw.drop(columns=[col])
        bad = [c for c in num.columns if not pd.api.types.is_numeric_dtype(num[c])]
        if bad:
            raise ValueError(f"{p}: non-numeric feature columns {bad[:5]}")
        feats = num.to_numpy(float)
    elif suffix == ".npz":
        with np.load(p, allow_pickle=False) as z:
            if "ids" not in z or "features" not in z:
                raise ValueError(f"{p}: an .npz needs arrays 'ids' and 'features', has {list(z.keys())}")
            ids, feats = z["ids"].astype(str), _pool(z["features"], str(p))
    elif suffix == ".npy":
        id_file = p.with_suffix(".ids.txt")
        if not id_file.is_file():
            raise ValueError(f"{p}: an .npy needs its ids in {id_file.name} (one per line)")
        ids = np.array([line.strip() for line in id_file.read_text().splitlines() if line.strip()])
        feats = _pool(np.load(p, allow_pickle=False), str(p))
    else:
        raise ValueError(f"{p}: unsupported feature file (use .csv, .npz or .npy)")
    if len(ids) != len(feats):
        raise ValueError(f"{p}: {len(ids)} ids but {len(feats)} feature rows")
    if len(set(ids)) != len(ids):
        raise ValueError(f"{p}: duplicate ids")
    bad_rows = ~np.isfinite(feats).all(axis=1)
    if bad_rows.any():
        raise ValueError(f"{p}: non-finite features for ids {list(ids[bad_rows][:5])}")
    return pd.DataFrame(feats, index=pd.Index(ids, name="study_id"),
                        columns=[f"{prefix}{i}" for i in range(feats.shape[1])])


def epv_components(n_events: int, n_clinical: int, epv: float = 10.0, max_components: int = 10) -> int:
    """PCA components allowed by ``epv`` events per variable after the clinical covariates (at least 1)."""
    return int(np.clip(int(n_events // epv) - n_clinical, 1, max_components))


class ImageFeatureReducer:
    """Standardise image features and project them on their first principal components.

    Args:
        columns: the image feature columns.
        n_components: number of components, or ``"auto"`` (:func:`epv_components` at fit time).
        n_clinical: clinical covariates in the model (for the ``"auto"`` budget).
        epv: events per variable for ``"auto"``.
    """

    def __init__(self, columns: Sequence[str], n_components: int | str = "auto", n_clinical: int = 0,
                 epv: float = 10.0):
        self.columns = list(columns)
        self.n_components = n_components
        self.n_clinical = int(n_clinical)
        self.epv = float(epv)
        self.pca_ = None

    def fit(self, df: pd.DataFrame, n_events: int) -> ImageFeatureReducer:
        from sklearn.decomposition import PCA
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        k = epv_components(n_events, self.n_clinical, self.epv) if self.n_components == "auto" \
            else int(self.n_components)
        k = max(1, min(k, len(self.columns), len(df) - 1))
        self.pca_ = pca = make_pipeline(StandardScaler(), PCA(n_components=k, random_state=0))
        pca.fit(df[self.columns].to_numpy(float))
        return self

    @property
    def output_columns(self) -> list[str]:
        k = self.pca_[-1].n_components_ if self.pca_ is not None else 0
        return [f"img_pc{i + 1}" for i in range(k)]

    def transform(self, df: pd.DataFrame) -> pd.DataFrame:
        if self.pca_ is None:
            raise RuntimeError("ImageFeatureReducer is not fitted")
        z = self.pca_.transform(df[self.columns].to_numpy(float))
        out = df.drop(columns=self.columns).copy()
        for i, c in enumerate(self.output_columns):
            out[c] = z[:, i]
        return out


class SurvivalPipeline:
    """An optional image-feature reducer followed by a survival model (same fit/predict interface).

    The reducer is fitted on the rows given to :meth:`fit` only (the training split).
    """

    def __init__(self, model: Any, image_columns: Sequence[str] = (), n_components: int | str = "auto"):
        self.model = model
        self.image_columns = list(image_columns)
        self.n_components = n_components
        self.reducer_: ImageFeatureReducer | None = None
        self.name = getattr(model, "name", type(model).__name__)

    def fit(self, df: pd.DataFrame, duration_col: str = "time", event_col: str = "event") -> SurvivalPipeline:
        if self.image_columns:
            n_clin = len([c for c in df.columns if c not in (*self.image_columns, duration_col, event_col)])
            self.reducer_ = ImageFeatureReducer(self.image_columns, self.n_components, n_clin)
            self.reducer_.fit(df, int(df[event_col].sum()))
            df = self.reducer_.transform(df)
        self.model.fit(df, duration_col, event_col)
        return self

    def _prep(self, df: pd.DataFrame) -> pd.DataFrame:
        return self.reducer_.transform(df) if self.reducer_ is not None else df

    def predict_risk(self, df: pd.DataFrame) -> np.ndarray:
        return self.model.predict_risk(self._prep(df))

    def predict_survival(self, df: pd.DataFrame, times: Sequence[float] | np.ndarray) -> np.ndarray:
        return self.model.predict_survival(self._prep(df), times)

    def baseline_survival(self, times: Sequence[float]) -> np.ndarray:
        return self.model.baseline_survival(times)

    @property
    def covariates(self) -> list[str]:
        return list(self.model.covariates)

    @property
    def input_covariates(self) -> list[str]:
        """Columns the pipeline needs from the caller (clinical covariates + raw image features)."""
        keep = [c for c in self.model.covariates if not c.startswith("img_pc")]
        return keep + self.image_columns

    @property
    def fit_seconds_(self) -> float:
        return float(getattr(self.model, "fit_seconds_", float("nan")))
