"""Frozen-feature extraction keyed by data row, and the linear probe on those features.

:func:`extract_features` runs a network's ``extract_features`` (HCMAE: ViT CLS and
ConvNeXt pooled features) over a dataset and writes one file holding the row ids, the
feature matrices and the per-row fields a probe can predict (modality, MRI sequence,
tumour present in the slice). :func:`linear_probe` fits a scikit-learn logistic
regression on one feature matrix, cross-validated over patients;
:func:`probe_report` compares pretrained against randomly initialised features.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from hicur_monai.data.splits import patient_folds
from hicur_monai.training.engine import unwrap
from hicur_monai.utils.io import atomic_save_torch, atomic_write_json

__all__ = ["extract_features", "load_features", "linear_probe", "probe_report", "FIELDS"]

log = logging.getLogger(__name__)

FIELDS = ("row", "modality", "sequence", "patient", "slice_index", "tumour")


@torch.no_grad()
def extract_features(
    network: torch.nn.Module,
    dataset: Any,
    output_file: str | os.PathLike,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    progress: bool = True,
) -> Path:
    """Write ``{"rows", <feature name>: (N, D) tensors, "fields": {...}}`` to ``output_file`` (atomic).

    Args:
        network: a module with ``extract_features(images) -> dict[str, Tensor]``.
        dataset: items with ``image`` and the :data:`FIELDS` (see ``PretrainSampled``).
    """
    from monai.data import DataLoader

    net: Any = unwrap(network).to(device).eval()  # any network with extract_features(images) -> dict
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    feats: dict[str, list[torch.Tensor]] = {}
    fields: dict[str, list[Any]] = {k: [] for k in FIELDS}
    for batch in tqdm(loader, desc="features", unit="batch", disable=not progress):
        img = batch["image"]
        img = img.as_tensor() if hasattr(img, "as_tensor") else img
        out = net.extract_features(img.to(device).float())
        for k, v in out.items():
            feats.setdefault(k, []).append(v.float().cpu())
        n = img.shape[0]
        for k in FIELDS:
            vals = batch.get(k, [None] * n)
            vals = vals.tolist() if isinstance(vals, torch.Tensor) else list(vals)
            fields[k].extend(vals)
    if not feats:
        raise ValueError(f"extract_features: the dataset is empty (nothing to write to {output_file})")
    result = {"rows": fields.pop("row"), "fields": fields, **{k: torch.cat(v) for k, v in feats.items()}}
    return atomic_save_torch(result, output_file)


def load_features(path: str | os.PathLike) -> dict[str, Any]:
    """Read a file written by :func:`extract_features`."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: feature file not found")
    return torch.load(p, map_location="cpu", weights_only=False)


def _target(data: dict[str, Any], target: str) -> tuple[np.ndarray, np.ndarray]:
    """Labels and a mask of rows that have one."""
    f = data["fields"]
    if target == "tumour":
        y = np.asarray(f["tumour"], dtype=int)
        return y, y >= 0
    if target in ("modality", "sequence"):
        y = np.asarray([str(v) for v in f[target]])
        return y, y != ""
    raise ValueError(f"unknown probe target {target!r}; use tumour, modality or sequence")


def _group_folds(patients: np.ndarray, folds: int) -> np.ndarray:
    """Fold index per row: sorted patients are dealt round-robin into ``folds`` folds."""
    fold_of = patient_folds(patients.tolist(), folds)
    return np.asarray([fold_of[p] for p in patients])


def _choose_c(x: np.ndarray, y: np.ndarray, patients: np.ndarray, Cs: Sequence[float], max_iter: int) -> float:
    """The ``C`` of ``Cs`` with the lowest patient-grouped cross-validated log-loss (3 inner folds)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.model_selection import GroupKFold
    from sklearn.preprocessing import StandardScaler

    if len(Cs) == 1:
        return float(Cs[0])
    classes = np.unique(y)
    losses, used = np.zeros(len(Cs)), 0
    n_groups = len(set(patients.tolist()))
    for tr, va in GroupKFold(n_splits=min(3, n_groups)).split(x, y, patients):
        if len(np.unique(y[tr])) < len(classes):
            continue  # this inner split lacks a class: it cannot score every C fairly
        scaler = StandardScaler().fit(x[tr])
        xtr, xva = scaler.transform(x[tr]), scaler.transform(x[va])
        for i, c in enumerate(Cs):
            clf = LogisticRegression(C=float(c), max_iter=max_iter).fit(xtr, y[tr])
            losses[i] += log_loss(y[va], clf.predict_proba(xva), labels=clf.classes_)
        used += 1
    return float(Cs[int(np.argmin(losses))]) if used else 1.0


def linear_probe(
    data: dict[str, Any],
    target: str = "tumour",
    feature: str = "vit_cls",
    folds: int = 3,
    Cs: Sequence[float] = (0.001, 0.01, 0.1, 1.0, 10.0),
    max_iter: int = 3000,
) -> dict[str, Any]:
    """Logistic regression on frozen features, cross-validated over patients.

    Sorted patients are dealt into ``folds`` folds (fewer when there are fewer than two
    patients per fold); each fold is predicted by a probe fitted
    on the others, so every row is predicted once by a probe that never saw its patient.
    Inside each training part the inverse regularisation ``C`` is chosen from ``Cs`` by a
    second patient-grouped cross-validation (log-loss), so a feature set is not judged by
    one arbitrary regularisation strength. Features are standardised on the training part.

    Returns:
        pooled out-of-fold ``accuracy``, ``balanced_accuracy`` (and ``auc`` for binary
        targets), ``majority_accuracy`` (most common class of the whole set),
        ``fold_balanced_accuracy`` (per fold), the chosen ``C`` per fold, and sizes.

    Raises:
        KeyError: the feature is not in the file.
        ValueError: too few patients or classes for the folds.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if feature not in data:
        have = [k for k in data if k not in ("rows", "fields")]
        raise KeyError(f"no feature {feature!r} in the feature file; have {have}")
    x = data[feature].numpy().astype(np.float64)
    y, keep = _target(data, target)
    patients = np.asarray([str(p) for p in data["fields"]["patient"]])
    x, y, patients = x[keep], y[keep], patients[keep]
    n_patients = len(set(patients.tolist()))
    folds = min(int(folds), n_patients // 2)  # at least two patients per fold
    if folds < 2 or len(set(y.tolist())) < 2:
        raise ValueError(
            f"linear probe on {target!r}: {n_patients} patients and {len(set(y.tolist()))} classes "
            "are too few (need >= 4 patients and 2 classes)"
        )
    fold = _group_folds(patients, folds)
    classes = np.unique(y)
    pred = np.empty_like(y)
    proba = np.zeros((len(y), len(classes)))
    fold_bacc, chosen_c = [], []
    for k in range(folds):
        tr, te = fold != k, fold == k
        if len(set(y[tr].tolist())) < len(classes):
            raise ValueError(f"linear probe on {target!r}: fold {k}'s training patients lack a class")
        c = _choose_c(x[tr], y[tr], patients[tr], Cs, max_iter)
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter)).fit(x[tr], y[tr])
        pred[te] = clf.predict(x[te])
        proba[te] = clf.predict_proba(x[te])
        fold_bacc.append(float(balanced_accuracy_score(y[te], pred[te])))
        chosen_c.append(c)
    values, counts = np.unique(y, return_counts=True)
    res: dict[str, Any] = {
        "target": target,
        "feature": feature,
        "n": int(len(y)),
        "n_patients": n_patients,
        "folds": folds,
        "classes": [str(v) for v in classes],
        "accuracy": float((pred == y).mean()),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
        "majority_accuracy": float(counts.max() / counts.sum()),
        "fold_balanced_accuracy": fold_bacc,
        "C": chosen_c,
    }
    if len(classes) == 2:
        res["auc"] = float(roc_auc_score(y, proba[:, 1]))
    return res


def probe_report(
    pretrained: str | os.PathLike | dict[str, Any],
    random_init: str | os.PathLike | dict[str, Any],
    output_file: str | os.PathLike | None = None,
    targets: Sequence[str] = ("tumour", "sequence"),
    features: Sequence[str] = ("vit_cls", "vit_mean", "convnext_pool"),
    **probe_kwargs: Any,
) -> dict[str, Any]:
    """Linear probes on pretrained vs randomly initialised features, same probe and split; optional JSON file."""
    data = {
        "pretrained": pretrained if isinstance(pretrained, dict) else load_features(pretrained),
        "random_init": random_init if isinstance(random_init, dict) else load_features(random_init),
    }
    report: dict[str, Any] = {"probes": []}
    for t in targets:
        for f in features:
            row: dict[str, Any] = {"target": t, "feature": f}
            for name, d in data.items():
                r = linear_probe(d, t, f, **probe_kwargs)
                keys = ("accuracy", "balanced_accuracy", "auc", "majority_accuracy", "fold_balanced_accuracy", "C")
                row[name] = {k: r[k] for k in keys if k in r}
                row["n"], row["n_patients"], row["classes"] = r["n"], r["n_patients"], r["classes"]
            report["probes"].append(row)
            log.info("probe %s/%s: pretrained %s | random %s", t, f, row["pretrained"], row["random_init"])
    if output_file is not None:
        atomic_write_json(output_file, report)
    return report
