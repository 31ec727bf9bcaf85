"""Frozen-feature extraction keyed by data row, and the linear probe on those features.

:func:`extract_features` runs a network's ``extract_features`` (HCMAE: ViT CLS and
ConvNeXt pooled features) over a dataset and writes one file holding the row ids, the
feature matrices and the per-row fields a probe can predict (modality, MRI sequence,
tumour present in the slice). :func:`linear_probe` fits a scikit-learn logistic
regression on one feature matrix with a patient-grouped train/test split;
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

    net = unwrap(network).to(device).eval()
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


def linear_probe(
    data: dict[str, Any],
    target: str = "tumour",
    feature: str = "vit_cls",
    test_every: int = 3,
    max_iter: int = 2000,
    C: float = 1.0,
) -> dict[str, Any]:
    """Logistic regression on frozen features, patients split into train/test (every ``test_every``-th sorted patient tests).

    Returns:
        ``accuracy``, ``balanced_accuracy`` (and ``auc`` for binary targets) on the test
        patients, ``majority_accuracy`` (predicting the most common train class), and sizes.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if feature not in data:
        raise KeyError(f"no feature {feature!r} in the feature file; have {[k for k in data if k not in ('rows', 'fields')]}")
    x = data[feature].numpy().astype(np.float64)
    y, keep = _target(data, target)
    patients = np.asarray([str(p) for p in data["fields"]["patient"]])
    x, y, patients = x[keep], y[keep], patients[keep]
    order = sorted(set(patients.tolist()))
    test_p = {p for i, p in enumerate(order) if i % test_every == test_every - 1}
    is_test = np.asarray([p in test_p for p in patients])
    if is_test.sum() == 0 or (~is_test).sum() == 0 or len(set(y[~is_test].tolist())) < 2:
        raise ValueError(f"linear probe on {target!r}: not enough patients / classes for a train/test split ({len(order)} patients)")
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter, C=C))
    clf.fit(x[~is_test], y[~is_test])
    pred = clf.predict(x[is_test])
    values, counts = np.unique(y[~is_test], return_counts=True)
    res: dict[str, Any] = {
        "target": target,
        "feature": feature,
        "n_train": int((~is_test).sum()),
        "n_test": int(is_test.sum()),
        "classes": [str(v) for v in values],
        "accuracy": float((pred == y[is_test]).mean()),
        "balanced_accuracy": float(balanced_accuracy_score(y[is_test], pred)),
        "majority_accuracy": float((y[is_test] == values[counts.argmax()]).mean()),
    }
    if len(values) == 2 and len(set(y[is_test].tolist())) == 2:
        res["auc"] = float(roc_auc_score(y[is_test], clf.predict_proba(x[is_test])[:, 1]))
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
                row[name] = {k: r[k] for k in ("accuracy", "balanced_accuracy", "auc", "majority_accuracy") if k in r}
                row["n_train"], row["n_test"], row["classes"] = r["n_train"], r["n_test"], r["classes"]
            report["probes"].append(row)
            log.info("probe %s/%s: pretrained %s | random %s", t, f, row["pretrained"], row["random_init"])
    if output_file is not None:
        atomic_write_json(output_file, report)
    return report
