"""Data lists of image/label pairs for segmentation, split by patient.

Two sources, one item format (``{"image", "label", "modality", "sequence", "patient", "study"}``):

* a JSON data list file (``datalist``): a list of items, or an object with a ``"training"``
  list (Medical Segmentation Decathlon style); relative paths are relative to the file;
* the demo cohort (``dataset_dir`` with ``datalist.json``, its ``"mri"`` list).

Splits are by patient (every ``val_every``-th patient, sorted, is held out), so no patient
has slices on both sides. Items without a ``patient`` are their own patient.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hicur_monai.data.splits import split_by_patient

__all__ = ["segmentation_items", "read_datalist", "inference_items"]


def read_datalist(path: str | os.PathLike, key: str = "training") -> list[dict[str, Any]]:
    """Items of a JSON data list (a list, or ``{key: [...]}``) with paths made absolute.

    Raises:
        ValueError: the file is not JSON, has no list, or an item lacks ``image`` / ``label``.
    """
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{p}: cannot read the data list ({err})") from err
    items = data.get(key) if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise ValueError(f"{p}: expected a list of items or an object with a {key!r} list")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or "image" not in item:
            raise ValueError(f"{p}: item {i} must be an object with 'image' (and 'label' for training)")
        item = dict(item)
        for k in ("image", "label"):
            if isinstance(item.get(k), str) and not os.path.isabs(item[k]):
                item[k] = str(p.parent / item[k])
        item.setdefault("modality", "mri")
        out.append(item)
    return out


def segmentation_items(
    dataset_dir: str | os.PathLike | None = None,
    datalist: str | os.PathLike | None = None,
    split: str | None = None,
    sequences: Sequence[str] | None = None,
    val_every: int = 5,
    limit: int | None = None,
    require_label: bool = True,
) -> list[dict[str, Any]]:
    """Image/label items of one patient-level split (``"train"``, ``"val"``, or ``None`` for all).

    Args:
        dataset_dir: demo cohort folder (used when ``datalist`` is not given).
        datalist: JSON data list file of image/label pairs.
        split: ``"train"`` / ``"val"`` / ``None``.
        sequences: keep only these MRI sequences (items without a ``sequence`` are kept).
        val_every: every ``val_every``-th patient is held out.
        limit: keep the first ``limit`` patients of the split (small runs).
        require_label: every item needs an existing ``label`` file.

    Raises:
        FileNotFoundError: an image or label file is missing (named).
        ValueError: ``split`` is unknown or the selection is empty.
    """
    if split not in (None, "train", "val"):
        raise ValueError(f"split must be 'train', 'val' or None, got {split!r}")
    if datalist:
        items = read_datalist(datalist)
    elif dataset_dir:
        from hicur_monai.data.demo import load_datalist

        items = load_datalist(dataset_dir, "mri")
    else:
        raise ValueError("segmentation_items: give dataset_dir (demo cohort) or datalist (JSON file)")
    if sequences:
        wanted = {s.upper() for s in sequences}
        items = [it for it in items if str(it.get("sequence", "")).upper() in wanted or "sequence" not in it]
    for it in items:
        it.setdefault("patient", it["image"])
        keys = ("image", "label") if require_label else ("image",)
        for k in keys:
            if not it.get(k):
                raise ValueError(f"item {it.get('image')!r}: no {k!r}")
            if not os.path.exists(it[k]):
                raise FileNotFoundError(f"{it[k]}: {k} file of item {it.get('study', it['image'])!r} not found")
    if split is not None:
        assign = split_by_patient(items, val_every=val_every)
        items = [it for it in items if assign[str(it["patient"])] == split]
    if limit:
        keep = sorted({str(it["patient"]) for it in items})[: int(limit)]
        items = [it for it in items if str(it["patient"]) in keep]
    if not items:
        raise ValueError(f"no segmentation items for split {split!r} (dataset_dir={dataset_dir}, datalist={datalist})")
    return items


_VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


def _is_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def inference_items(input: str | os.PathLike | Sequence[str]) -> list[dict[str, Any]]:
    """Volumes to segment: a file, a folder of volumes (recursively), a DICOM series folder, or a list.

    Every NIfTI / NRRD / MetaImage file is one item; a folder that directly holds DICOM files
    is one item (the series, read by the toolkit's loader). Segmentation masks
    (``mask.nii.gz``, ``*_seg.nii.gz``, ``label*``) found in folders are skipped.

    Raises:
        FileNotFoundError: ``input`` does not exist or holds no volume.
    """
    if not isinstance(input, (str, os.PathLike)):
        return [{"image": str(p)} for p in input]
    root = Path(input)
    if not root.exists():
        raise FileNotFoundError(f"{root}: input not found")
    if root.is_file():
        return [{"image": str(root)}]
    items, series = [], set()
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        name = p.name.lower()
        if name.endswith(_VOLUME_SUFFIXES):
            if name.startswith(("mask", "label")) or "_seg." in name:
                continue
            items.append({"image": str(p)})
        elif p.parent not in series and _is_dicom(p):
            series.add(p.parent)
            items.append({"image": str(p.parent)})
    if not items:
        raise FileNotFoundError(f"{root}: no NIfTI / NRRD / DICOM volume found")
    return items
