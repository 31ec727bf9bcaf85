"""Run the shared transform pipelines on every modality of a cohort and draw contact sheets.

This is what ``hicur demo`` shows at the foundation stage: the exact pipelines the bundles
include (``transforms/*.json``), applied to the demo cohort, one PNG per modality; and
:func:`preview_anatomy`: the raw MRI studies at the tumour's level with what their reports say.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, cast

import numpy as np

from hicur_monai.data.demo.cohort import load_datalist
from hicur_monai.transforms.fragments import build_pipeline
from hicur_monai.utils.visualize import contact_sheet

__all__ = ["PREVIEW_PIPELINES", "preview_anatomy", "preview_pipelines"]

#: modality -> the fragments composed for its preview (2D, 3-channel, 384 px, in [0, 1])
PREVIEW_PIPELINES: dict[str, tuple[str, ...]] = {
    "mri": ("mri.json::load", "common.json::slices_roi", "common.json::rgb"),
    "ct": ("ct.json::load", "common.json::slices_roi", "common.json::rgb"),
    "endoscopy": ("endoscopy.json::load", "common.json::rgb"),
    "endoscopy_augmented": ("endoscopy.json::load", "common.json::rgb", "augment.json::pretrain"),
    "real": ("common.json::load_any", "common.json::slices_any", "common.json::rgb"),
}


def _items_for(kind: str, cohort: Path, n: int) -> list[dict]:
    key = "endoscopy" if kind.startswith("endoscopy") else kind
    items = load_datalist(cohort, key)
    if kind == "real":
        return items[:n]
    if kind == "mri":  # the three sequences of the first studies, side by side
        studies = sorted({i["study"] for i in items})[: max(1, n // 3)]
        return [i for i in items if i["study"] in studies]
    return items[:n]


def preview_pipelines(
    cohort_dir: str | os.PathLike, out_dir: str | os.PathLike, n: int = 6, seed: int = 0
) -> dict[str, Path]:
    """Write ``<out_dir>/preprocessed_<modality>.png`` for every modality and return the paths.

    Volumes show the middle slice of the tumour range with the mask contour; 2D images show
    as they leave the pipeline (before model-input normalisation).
    """
    cohort, out = Path(cohort_dir), Path(out_dir)
    written: dict[str, Path] = {}
    for kind, refs in PREVIEW_PIPELINES.items():
        items = _items_for(kind, cohort, n)
        if not items:
            continue
        pipeline = build_pipeline(*refs)
        if hasattr(pipeline, "set_random_state"):
            pipeline.set_random_state(seed)
        images, masks, titles = [], [], []
        for item in items:
            result = pipeline(dict(item))
            slices = result if isinstance(result, list) else [result]
            chosen = slices[len(slices) // 2]
            img = chosen["image"]
            images.append(img)
            masks.append(chosen.get("label"))
            shape = "x".join(str(s) for s in img.shape[1:])
            label = item.get("sequence") or item.get("modality")
            where = f" z={chosen['slice_index']}" if len(slices) > 1 else ""
            titles.append(f"{Path(item['image']).parent.name}/{Path(item['image']).name[:18]}\n{label}{where} {shape} "
                          f"[{float(np.min(img.numpy())):.2f},{float(np.max(img.numpy())):.2f}]")
        written[kind] = contact_sheet(
            images, out / f"preprocessed_{kind}.png", titles=titles, masks=masks,
            ncols=3 if kind == "mri" else min(6, len(images)),
            suptitle=f"{kind}: " + " -> ".join(refs),
        )
    return written


def _dataobj(path: Path) -> Any:
    """The voxel data (nibabel's array proxy) of the NIfTI file at ``path``."""
    import nibabel as nib

    return cast(Any, nib.load(path)).dataobj


def preview_anatomy(cohort_dir: str | os.PathLike, out_dir: str | os.PathLike, n: int = 3) -> Path:
    """Write ``<out_dir>/mri_anatomy.png``: T1, T2 and T1C of the first ``n`` studies at the tumour's
    largest section (anterior up, the patient's left on the image's left), the mask's contour in red
    and the report's ground truth (side, T/N, extension, necrosis) in the titles."""
    import json

    cohort = Path(cohort_dir)
    reports = load_datalist(cohort, "mri_reports")[:n]
    if not reports:
        raise FileNotFoundError(f"{cohort}: no MRI reports in datalist.json; regenerate with `hicur demo-data`")
    images, masks, titles = [], [], []
    for item in reports:
        truth = json.loads(Path(item["findings"]).read_text())
        study = cohort / "mri" / item["study"]
        mask = np.asarray(_dataobj(study / "mask.nii.gz")) > 0
        z = int(np.argmax(mask.sum(axis=(0, 1))))  # the tumour's largest axial section
        ext = [k.replace("_", " ") for k, v in truth["extensions"].items() if v]
        ext += ["necrosis"] if truth["necrosis"] else []
        for seq in ("T1", "T2", "T1C"):
            vol = np.asarray(_dataobj(study / f"{seq}.nii.gz"), np.float32)
            lo, hi = np.percentile(vol, (0.5, 99.5))
            images.append(np.clip((vol[:, :, z] - lo) / max(hi - lo, 1e-6), 0, 1)[None])
            masks.append(mask[:, :, z][None].astype(np.float32))
            titles.append(f"{item['study']} {seq} z={z}\n{truth['side']} T{truth['t_stage']}N{truth['n_stage']}: "
                          + (", ".join(ext) or "confined"))
    return contact_sheet(images, Path(out_dir) / "mri_anatomy.png", titles=titles, masks=masks, ncols=3,
                         suptitle="demo MRI: axial head-and-neck phantoms at the tumour's level (red: mask)",
                         tile_inches=3.0)
