"""The authors' binary image+text prognosis model, kept as a baseline next to Cox and DeepSurv.

The released model treats prognosis as two binary labels (death, distant metastasis) and
reports AUC: up to 32 MRI slices per patient through a frozen encoder, one pooled vector
per slice, a CLS token and learned positions, two transformer layers cross-attending to a
text embedding of the patient description, two logits
(:class:`~hicur_monai.networks.prognosis.SliceTextPrognosisNet`). Text embeddings come from
any encoder registered in ``TEXT_ENCODERS`` (``hashed_bow`` until the LLM plugin's states
are wired in); slice features from any image encoder, as an ``.npz`` with ``ids``,
``features`` ``(n, slices, d)`` and optionally ``mask`` ``(n, slices)``.

Binary labels ignore follow-up time (a patient censored at 6 months counts as "no event"),
which is why the time-to-event models are the primary analysis; this module exists to
compare with the published approach on the same patients.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from hicur_monai.networks.prognosis import SliceTextPrognosisConfig, SliceTextPrognosisNet
from hicur_monai.registry import get as registry_get

__all__ = ["OUTCOMES", "patient_description", "load_slice_features", "make_text_encoder", "fit_binary_baseline",
           "predict_binary", "binary_auc"]

#: the two binary outcomes of the released model, with the clinical table's event columns
OUTCOMES: tuple[tuple[str, str], ...] = (("death", "death"), ("metastasis", "metastasis"))


def patient_description(row: pd.Series) -> str:
    """A short English description of one patient from the typed clinical table (no identifiers)."""

    def yn(key: str, text: str) -> str | None:
        v = row.get(key)
        return None if v is None or pd.isna(v) else f"{text} {'yes' if v == 1 else 'no'}"

    parts = []
    if pd.notna(row.get("age")):
        parts.append(f"{int(row['age'])}-year-old {str(row.get('gender') or 'patient').lower()}")
    if pd.notna(row.get("t_stage")) and pd.notna(row.get("n_stage")):
        parts.append(f"T{int(row['t_stage'])} N{int(row['n_stage'])} stage {row.get('overall_stage') or 'unknown'}")
    if pd.notna(row.get("ebv")):
        parts.append(f"EBV DNA {row['ebv']:g} copies/mL")
    for key, text in (("intracranial", "intracranial or cranial nerve involvement"), ("skull_base", "skull base"),
                      ("rp_nodes", "retropharyngeal nodes"), ("neck_nodes", "neck nodes"),
                      ("ln_necrosis", "nodal necrosis"), ("lower_neck", "lower neck")):
        p = yn(key, text)
        if p:
            parts.append(p)
    if row.get("induction_efficacy"):
        parts.append(f"induction {str(row['induction_efficacy']).lower()}")
    return "; ".join(parts) + "."


def load_slice_features(path: str | os.PathLike, ids: Sequence[str], max_slices: int = 32
                        ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Slice features for ``ids`` from an ``.npz`` (``ids``, ``features`` (n, S, d), optional ``mask``).

    Returns ``(features (N, S', d), mask (N, S'), found)`` with ``S' = min(S, max_slices)``
    (evenly spaced slices kept when there are more) and a boolean array of the ids found.
    """
    p = Path(path)
    with np.load(p, allow_pickle=False) as z:
        if "ids" not in z or "features" not in z:
            raise ValueError(f"{p}: needs arrays 'ids' and 'features' (n, slices, d)")
        fid, feats = z["ids"].astype(str), np.asarray(z["features"], np.float32)
        mask = np.asarray(z["mask"], bool) if "mask" in z else np.ones(feats.shape[:2], bool)
    if feats.ndim != 3:
        raise ValueError(f"{p}: features must be (n, slices, d), got {feats.shape}")
    if feats.shape[1] > max_slices:
        keep = np.linspace(0, feats.shape[1] - 1, max_slices).round().astype(int)
        feats, mask = feats[:, keep], mask[:, keep]
    index = {k: i for i, k in enumerate(fid)}
    found = np.array([str(i) in index for i in ids])
    rows = [index[str(i)] for i, f in zip(ids, found) if f]
    return torch.from_numpy(feats[rows]), torch.from_numpy(mask[rows]), found


def make_text_encoder(name: str = "hashed_bow", **kwargs: Any) -> Any:
    """A text encoder from ``TEXT_ENCODERS`` (the built-in ``hashed_bow`` needs no weights)."""
    import hicur_monai.networks.prognosis  # noqa: F401  (registers hashed_bow)

    return registry_get("text_encoders", name)(**kwargs)


def fit_binary_baseline(slices: torch.Tensor, slice_mask: torch.Tensor, texts: Sequence[str], labels: torch.Tensor,
                        text_encoder: Any = "hashed_bow", epochs: int = 30, lr: float = 1e-3, batch_size: int = 16,
                        weight_decay: float = 0.01, seed: int = 0, progress: bool = False,
                        **net_kwargs: Any) -> tuple[SliceTextPrognosisNet, Any, list[float]]:
    """Train :class:`SliceTextPrognosisNet` with binary cross-entropy on (death, metastasis) labels.

    Returns ``(net, text_encoder, loss history per epoch)``.
    """
    torch.manual_seed(seed)
    enc = make_text_encoder(text_encoder) if isinstance(text_encoder, str) else text_encoder
    text, text_mask = enc.encode(list(texts))
    cfg = SliceTextPrognosisConfig(feature_dim=slices.shape[-1], text_dim=text.shape[-1],
                                   max_slices=max(32, slices.shape[1]), **net_kwargs)
    net = SliceTextPrognosisNet(cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    y = labels.float()
    pos = y.mean(0).clamp(0.05, 0.95)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=(1 - pos) / pos)  # the outcomes are rare
    history = []
    it = range(epochs)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="binary baseline", leave=False)
    n = len(y)
    for _ in it:
        net.train()
        perm = torch.randperm(n)
        total = 0.0
        for s in range(0, n, batch_size):
            idx = perm[s: s + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(slices[idx], slice_mask[idx], text[idx], text_mask[idx]), y[idx])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        history.append(total / n)
    net.eval()
    return net, enc, history


@torch.no_grad()
def predict_binary(net: SliceTextPrognosisNet, text_encoder: Any, slices: torch.Tensor, slice_mask: torch.Tensor,
                   texts: Sequence[str]) -> torch.Tensor:
    """Probabilities ``(N, 2)`` of death and distant metastasis."""
    net.eval()
    text, text_mask = text_encoder.encode(list(texts))
    return torch.sigmoid(net(slices, slice_mask, text, text_mask))


def binary_auc(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """ROC AUC per outcome with MONAI's :class:`~monai.metrics.ROCAUCMetric` (NaN if one class only)."""
    from monai.metrics import ROCAUCMetric

    out = {}
    for j, (name, _) in enumerate(OUTCOMES):
        y = labels[:, j].float()
        if y.min() == y.max():
            out[name] = float("nan")
            continue
        metric = ROCAUCMetric()
        metric(probs[:, j], y)
        out[name] = float(np.asarray(metric.aggregate()))
    return out
