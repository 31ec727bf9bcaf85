"""Deterministic patient-level splits (one place for every stage that splits by patient).

* :func:`split_by_patient`: every ``val_every``-th patient (sorted) is validation; used by
  the stage-I datalists (:func:`hicur_monai.training.data.pretrain_items`) and the
  segmentation datalists.
* :func:`patient_folds`: sorted patients dealt round-robin into cross-validation folds
  (the linear probe of :mod:`hicur_monai.training.features`).

The curation manifest splits by a hash of the pseudonym instead
(:func:`hicur_monai.data.curation.manifest.split_of`), so that shards agree without seeing
each other.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["split_by_patient", "patient_folds", "patient_of"]


def patient_of(item: Mapping[str, Any]) -> str:
    """The patient id of a data item: its ``patient``, else its ``image`` (then the item is its own group)."""
    return str(item.get("patient", item.get("image")))


def split_by_patient(items: Sequence[Mapping[str, Any]], val_every: int = 5) -> dict[str, str]:
    """Deterministic patient -> ``train``/``val`` split: every ``val_every``-th patient (sorted) is ``val``.

    Raises:
        ValueError: ``val_every`` is below 1.
    """
    if int(val_every) < 1:
        raise ValueError(f"val_every must be >= 1, got {val_every}")
    patients = sorted({patient_of(it) for it in items})
    return {p: ("val" if i % val_every == val_every - 1 else "train") for i, p in enumerate(patients)}


def patient_folds(patients: Iterable[str], folds: int) -> dict[str, int]:
    """Fold index per patient: the sorted distinct patients dealt round-robin into ``folds`` folds."""
    if int(folds) < 1:
        raise ValueError(f"folds must be >= 1, got {folds}")
    return {p: i % folds for i, p in enumerate(sorted(set(patients)))}
