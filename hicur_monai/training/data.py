"""Data lists for image pretraining: manifest or demo datalist -> one item per 2D image.

The curation manifest already holds 2D images; the demo cohort's datalist holds MRI/CT
volumes. :func:`pretrain_items` turns either into a flat list of data dicts, one per 2D
image, each with a stable ``row`` id (the key under which features are written); a volume
becomes one item per axial slice (``slice_index``), read from the file header without
loading the voxels. :class:`SelectSliced` then cuts that slice after loading, so every
item goes through the same shared transforms (``transforms/*.json``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import convert_to_tensor

from hicur_monai.data.splits import patient_of, split_by_patient
from hicur_monai.transforms import ExtractSlices

__all__ = [
    "pretrain_items",
    "volume_depth",
    "SelectSliced",
    "SelectSliceD",
    "SelectSliceDict",
    "PretrainSampled",
    "PretrainSampleD",
    "PretrainSampleDict",
]

DEMO_KEYS = ("mri", "ct", "endoscopy")


def volume_depth(path: str | os.PathLike, axis: int = -1) -> int | None:
    """Number of slices along ``axis`` from a NIfTI/NRRD header; ``None`` for a 2D image.

    Raises:
        ValueError: naming the file, when its header cannot be read.
    """
    p = Path(path)
    name = p.name.lower()
    try:
        if name.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            shape = nib.load(str(p)).shape  # type: ignore[attr-defined]  # an image with a shape
        elif name.endswith((".nrrd", ".nhdr")):
            import nrrd

            shape = tuple(nrrd.read_header(str(p))["sizes"])
        else:
            return None
    except Exception as err:  # readers raise many types; say which file
        raise ValueError(f"{p}: cannot read the image header: {type(err).__name__}: {err}") from err
    spatial = [s for s in shape[:3]]
    if len(spatial) < 3 or spatial[2] == 1:
        return None
    return int(spatial[axis])


def _manifest_items(manifest: str | os.PathLike, split: str | None) -> list[dict[str, Any]]:
    """The accepted 2D images of a curation manifest as data dicts (``row`` = the source id)."""
    from hicur_monai.data.curation.manifest import load_manifest
    from hicur_monai.transforms.array import STORED_MAX_KEY

    items = []
    for i, r in enumerate(load_manifest(manifest, status="accepted", split=split)):
        item = dict(r)
        item["row"] = str(r.get("source_id") or f"manifest/{i}")
        item.pop("slice_index", None)  # the manifest's images are already 2D
        # curated pixels are already normalised: ScaleIntensityByModalityd divides by this instead of re-windowing
        smax = item.get(STORED_MAX_KEY)
        if smax is None or not smax > 0:
            raise ValueError(f"{manifest}: accepted image row {i} ({item['row']}) has no positive "
                             f"{STORED_MAX_KEY!r} (got {smax!r}); re-run `hicur curate` to rebuild the manifest")
        items.append(item)
    return items


def pretrain_items(
    dataset_dir: str | os.PathLike | None = None,
    manifest: str | os.PathLike | None = None,
    keys: Sequence[str] = DEMO_KEYS,
    split: str | None = None,
    slice_step: int = 1,
    val_every: int = 5,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """One data dict per 2D image for pretraining / feature extraction.

    Args:
        dataset_dir: a folder with ``datalist.json`` (the demo cohort layout: lists per
            modality, paths relative to the folder); used when ``manifest`` is not given.
        manifest: a curation manifest (file or folder); its accepted rows are used (``""``: none).
        keys: which datalist lists to read.
        split: ``"train"``, ``"val"`` or ``None`` (all). Manifests carry their split; for
            a datalist, patients are split with :func:`hicur_monai.data.splits.split_by_patient`.
        slice_step: keep every ``slice_step``-th slice of a volume.
        val_every: see :func:`hicur_monai.data.splits.split_by_patient`.
        limit: keep at most this many items (evenly spaced), for quick runs.

    Returns:
        dicts with ``image`` (absolute path), ``modality``, ``row`` (stable id), optional
        ``label`` (mask path), ``sequence``, ``patient``, ``slice_index``.

    Raises:
        FileNotFoundError: neither source exists.
        ValueError: naming the row and field, for an entry without ``image`` or ``modality``.
    """
    if split not in (None, "train", "val", "test"):
        raise ValueError(f"split must be train, val, test or None, got {split!r}")
    if manifest:
        return _limit(_manifest_items(manifest, split), limit)
    if dataset_dir is None:
        raise FileNotFoundError("pretrain_items: give a dataset_dir with datalist.json or a curation manifest")
    root = Path(dataset_dir)
    path = root / "datalist.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (generate the demo cohort with `hicur demo-data {root}`)")
    data = json.loads(path.read_text())
    entries: list[tuple[str, dict[str, Any]]] = []
    for key in keys:
        if key not in data:
            raise KeyError(f"{path}: no data list {key!r}; available: {sorted(data)}")
        for i, e in enumerate(data[key]):
            for field in ("image", "modality"):
                if not e.get(field):
                    raise ValueError(f"{path}: {key}[{i}] has no {field!r}")
            entries.append((f"{key}/{i}", dict(e)))
    splits = split_by_patient([e for _, e in entries], val_every)
    items = []
    for row, e in entries:
        if split is not None and splits[patient_of(e)] != split:
            continue
        for k in ("image", "label"):
            if isinstance(e.get(k), str):
                e[k] = str(root / e[k])
        e["split"] = splits[patient_of(e)]
        e = {k: v for k, v in e.items() if isinstance(v, (str, int, float, bool))}
        depth = volume_depth(e["image"])
        if depth is None:
            items.append({**e, "row": row})
            continue
        for z in range(0, depth, max(1, slice_step)):
            items.append({**e, "row": f"{row}/z{z}", "slice_index": z})
    return _limit(items, limit)


def _limit(items: list[dict[str, Any]], limit: int | None) -> list[dict[str, Any]]:
    if limit is None or limit >= len(items):
        return items
    idx = np.linspace(0, len(items) - 1, int(limit)).round().astype(int)
    return [items[i] for i in sorted(set(idx.tolist()))]


class SelectSliced(MapTransform):
    """Cut the 2D slice ``data[index_key]`` out of 3D volumes ``(C, X, Y, Z)``; 2D images pass through.

    The slice keeps its position in the metadata (via :class:`~hicur_monai.transforms.ExtractSlices`).
    """

    def __init__(
        self, keys: KeysCollection, index_key: str = "slice_index", axis: int = -1, allow_missing_keys: bool = True
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.index_key, self.axis = index_key, axis
        self.slicer = ExtractSlices(axis=axis)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        z = d.get(self.index_key)
        for key in self.key_iterator(d):
            img = convert_to_tensor(d[key], track_meta=True)
            if img.ndim == 4:
                if z is None:
                    raise ValueError(f"{d.get('row', key)}: {key!r} is a volume but the item has no {self.index_key!r}")
                depth = img.shape[self.axis]
                if not 0 <= int(z) < depth:
                    raise ValueError(f"{d.get('row', key)}: {self.index_key}={z} outside the volume's {depth} slices")
                img = self.slicer(img, int(z), int(z) + 1)[0]
            d[key] = img
        return d


SelectSliceD = SelectSliceDict = SelectSliced


class PretrainSampled(MapTransform):
    """Reduce an item to the fields every batch shares, so mixed-modality batches collate.

    Keeps ``image``, ``row``, ``modality`` and fills ``sequence`` / ``patient`` (``""``),
    ``slice_index`` (-1) and ``tumour``: 1 / 0 when a mask under ``label_key`` is present
    and non-empty / empty, -1 without a mask. The mask itself is dropped, and images become
    plain tensors (their loader ``format`` is kept as a field), since MRI slices and camera
    images carry metadata that cannot be collated together.
    """

    def __init__(self, keys: KeysCollection = "image", label_key: str = "label") -> None:
        super().__init__(keys, allow_missing_keys=False)
        self.label_key = label_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        label = d.get(self.label_key)
        tumour = -1 if label is None or isinstance(label, str) else int(bool((convert_to_tensor(label) > 0).any()))
        out: dict[Hashable, Any] = {}
        fmt = ""
        for k in self.key_iterator(d):
            img = d[k]
            fmt = fmt or str((getattr(img, "meta", None) or {}).get("format", ""))
            out[k] = img.as_tensor() if hasattr(img, "as_tensor") else convert_to_tensor(img, track_meta=False)
        out.update(
            format=fmt,
            row=str(d.get("row", "")),
            modality=str(d.get("modality", "")),
            sequence=str(d.get("sequence") or ""),
            patient=str(d.get("patient") or ""),
            slice_index=int(d.get("slice_index", -1)),
            tumour=tumour,
        )
        return out


PretrainSampleD = PretrainSampleDict = PretrainSampled
