"""Where segmentation inference writes its masks: one name per study, never over an existing file.

Each study's mask goes to ``output_dir`` under the study's path relative to the input
folder, with its volume suffix replaced by ``_seg.nii.gz``: ``input/P001/T1C.nii.gz`` ->
``output_dir/P001/T1C_seg.nii.gz``; a DICOM series folder ``input/P001/T2`` ->
``output_dir/P001/T2_seg.nii.gz`` (and ``T2_seg.dcm``, a DICOM SEG referencing the series,
see :mod:`hicur_monai.segmentation.dicom_seg`). Studies of different folders therefore never
share a name. :func:`planned_inference_items` checks every output name before the model runs:
two studies that would share one, or an output that already exists, is an error unless
``overwrite`` is set. :class:`SaveSegmentationd` writes each file atomically (temporary file,
then a hard link that fails when the name was taken meanwhile).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import NibabelWriter
from monai.transforms import (
    Activationsd,
    AsDiscreted,
    Compose,
    Invertd,
    KeepLargestConnectedComponentd,
    MapTransform,
)

from hicur_monai.segmentation.data import inference_items
from hicur_monai.utils.flags import as_flag, is_unset

__all__ = [
    "MASK_SUFFIX",
    "SEG_SUFFIX",
    "SaveSegmentationd",
    "as_flag",
    "mask_path",
    "planned_inference_items",
    "report_file",
    "segmentation_postprocessing",
    "write_new_file",
]

MASK_SUFFIX = "_seg.nii.gz"
SEG_SUFFIX = "_seg.dcm"
_VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")


def _stem(name: str) -> str:
    lower = name.lower()
    for suffix in _VOLUME_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def mask_path(image: str | os.PathLike, output_dir: str | os.PathLike, input_root: str | os.PathLike | None = None,
              suffix: str = MASK_SUFFIX) -> Path:
    """The output file of one study (see the module docstring for the layout).

    Args:
        image: the study (a volume file or a DICOM series folder).
        output_dir: the inference output folder.
        input_root: the folder the study was found in; the study's path under it is kept.
            A study outside it (or no root) keeps only its own name.
        suffix: ``_seg.nii.gz`` for the mask, ``_seg.dcm`` for the DICOM SEG.
    """
    img = Path(os.path.abspath(image))
    rel = Path(img.name)
    if input_root is not None:
        root = Path(os.path.abspath(input_root))
        if img != root and img.is_relative_to(root):
            rel = img.relative_to(root)
    return Path(output_dir) / rel.parent / f"{_stem(rel.name)}{suffix}"


def _input_root(input: str | os.PathLike | Sequence[str]) -> str | None:
    if isinstance(input, (str, os.PathLike)) and Path(input).is_dir():
        return str(input)
    return None


def report_file(image: str | os.PathLike, reports: str | os.PathLike) -> Path:
    """The MRI report of one study in the folder ``reports``.

    It is ``<reports>/<folder>.txt`` for the folder that holds the volume (or the DICOM series
    folder), e.g. ``input/P001/T1C.nii.gz`` -> ``reports/P001.txt`` (the demo cohort's layout),
    else ``<reports>/<volume name>.txt`` (``input/P001.nii.gz`` -> ``reports/P001.txt``).

    Raises:
        FileNotFoundError: neither exists (both names given).
        ValueError: both exist, so which one is the study's is unclear (both named).
    """
    img = Path(os.path.abspath(image))
    tried = [Path(reports) / f"{img.parent.name}.txt", Path(reports) / f"{_stem(img.name)}.txt"]
    found = list(dict.fromkeys(path for path in tried if path.is_file()))
    if len(found) > 1:
        raise ValueError(f"{image}: two reports could be this study's, {found[0]} and {found[1]}; keep one")
    if not found:
        raise FileNotFoundError(f"{image}: no MRI report for this study (coarse_report is true); looked for "
                                f"{tried[0]} and {tried[1]}")
    return found[0]


def planned_inference_items(
    input: str | os.PathLike | Sequence[str],
    output_dir: str | os.PathLike,
    overwrite: bool = False,
    reports: str | os.PathLike | None = None,
    coarse_report: bool | str = False,
) -> list[dict[str, Any]]:
    """The studies of ``input`` (:func:`~hicur_monai.segmentation.inference_items`), checked before any inference.

    With ``coarse_report`` each item also gets its ``report`` file from the folder ``reports``
    (:func:`report_file`), read by ``ReportTextd`` for the coarse states.

    Raises:
        ValueError: two studies would write the same mask (both named); ``coarse_report`` is
            true and ``reports`` is not given.
        FileExistsError: a mask already exists and ``overwrite`` is false (names the first
            files and how many; set ``overwrite`` to replace them, or choose another ``output_dir``).
        FileNotFoundError: ``coarse_report`` is true and a study has no report (the first
            study named, and how many).
    """
    overwrite = as_flag(overwrite, "overwrite")
    with_report = as_flag(coarse_report, "coarse_report")
    if with_report and is_unset(reports):
        raise ValueError("coarse_report is true but reports is not set: give --reports, the folder of the "
                         "studies' MRI reports (<study>.txt), as the model was trained with them")
    items = inference_items(input)
    root = _input_root(input)
    seen: dict[Path, str] = {}
    existing = []
    for it in items:
        out = mask_path(it["image"], output_dir, root)
        if out in seen:
            raise ValueError(f"studies {seen[out]!r} and {it['image']!r} would both write {out}; rename one of them")
        seen[out] = it["image"]
        if out.exists() or out.with_name(out.name.replace(MASK_SUFFIX, SEG_SUFFIX)).exists():
            existing.append(str(out))
    if existing and not overwrite:
        shown = ", ".join(existing[:3]) + (f" and {len(existing) - 3} more" if len(existing) > 3 else "")
        raise FileExistsError(
            f"{len(existing)} output(s) already exist in {output_dir}: {shown}. Inference does not overwrite "
            "results: choose another output_dir, or set overwrite=true (--overwrite true) to replace them."
        )
    if with_report:
        assert reports is not None  # checked above
        _attach_reports(items, reports)
    return items


def _attach_reports(items: list[dict[str, Any]], reports: str | os.PathLike) -> None:
    """Give every item its ``report`` file, or name the studies that have none."""
    missing = []
    for it in items:
        try:
            it["report"] = str(report_file(it["image"], reports))
        except FileNotFoundError as err:
            missing.append(str(err))
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {len(items)} studies have no report: {missing[0]}")


def write_new_file(dest: str | os.PathLike, write: Callable[[Path], Any], overwrite: bool = False) -> Path:
    """Write ``dest`` atomically through ``write(temporary_path)``; refuse an existing ``dest`` unless ``overwrite``.

    The temporary file lies next to ``dest`` and keeps its suffixes (writers pick the format
    from them). Without ``overwrite`` the file is published with a hard link, which fails if
    another writer took the name in the meantime.

    Raises:
        FileExistsError: ``dest`` exists and ``overwrite`` is false.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(dest.suffixes[-2:]) if dest.name.endswith(".nii.gz") else dest.suffix
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=f".tmp{suffix}", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        if overwrite:
            os.replace(tmp, dest)
        else:
            try:
                os.link(tmp, dest)
            except FileExistsError:
                raise FileExistsError(f"{dest}: exists; inference does not overwrite results "
                                      "(set overwrite=true)") from None
    finally:
        tmp.unlink(missing_ok=True)
    return dest


class SaveSegmentationd(MapTransform):
    """Save each study's mask (``uint8`` NIfTI in the input's geometry) under its own name, and a DICOM SEG for
    DICOM series.

    Args:
        keys: the mask key (channel-first, on the input's voxel grid, with the input's metadata,
            e.g. after ``Invertd``).
        output_dir: output folder.
        input_root: the input folder (keeps the study's relative path; see :func:`mask_path`).
        overwrite: replace existing outputs (otherwise :class:`FileExistsError`).
        dicom_seg: also write ``<study>_seg.dcm`` when the study is a DICOM series folder.
        segment_label: the segment's name in the DICOM SEG.

    The written paths are added to the data as ``"<key>_file"`` (and ``"<key>_dicom_seg"``).
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str | os.PathLike,
        input_root: str | os.PathLike | Sequence[str] | None = None,
        overwrite: bool = False,
        dicom_seg: bool = True,
        segment_label: str = "NPC tumour",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir = Path(output_dir)
        self.input_root = _input_root(input_root) if input_root is not None else None
        self.overwrite = as_flag(overwrite, "overwrite")
        self.dicom_seg = as_flag(dicom_seg, "dicom_seg")
        self.segment_label = segment_label

    def _write_nifti(self, mask: torch.Tensor, meta: Mapping[str, Any], dest: Path) -> Path:
        def write(tmp: Path) -> None:
            writer = NibabelWriter(output_dtype=np.uint8)
            writer.set_data_array(mask, channel_dim=0)
            writer.set_metadata(dict(meta), resample=False)
            writer.write(str(tmp), verbose=False)

        return write_new_file(dest, write, overwrite=self.overwrite)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            mask = d[key]
            meta = dict(getattr(mask, "meta", {}) or {})
            source = meta.get("filename_or_obj")
            if not source:
                raise ValueError(f"SaveSegmentationd: {key!r} has no source file name in its metadata")
            dest = mask_path(str(source), self.output_dir, self.input_root)
            d[f"{key}_file"] = str(self._write_nifti(mask, meta, dest))
            if self.dicom_seg and Path(str(source)).is_dir():
                from hicur_monai.segmentation.dicom_seg import write_dicom_seg

                arr = torch.as_tensor(mask).detach().cpu().numpy()[0]
                seg_dest = dest.with_name(dest.name.replace(MASK_SUFFIX, SEG_SUFFIX))
                d[f"{key}_dicom_seg"] = str(write_dicom_seg(
                    arr, np.asarray(meta["affine"], dtype=np.float64), str(source), seg_dest,
                    overwrite=self.overwrite, segment_label=self.segment_label, space=str(meta.get("space", "RAS")),
                ))
        return d


def segmentation_postprocessing(
    preprocessing: Any,
    output_dir: str | os.PathLike,
    input_root: str | os.PathLike | Sequence[str] | None = None,
    largest_component: bool = True,
    overwrite: bool = False,
    dicom_seg: bool = True,
    threshold: float = 0.5,
) -> Compose:
    """Logits -> binary mask in the input's geometry -> saved (:class:`SaveSegmentationd`).

    Sigmoid, threshold, optionally the largest connected component, ``Invertd`` of
    ``preprocessing`` (back to the input's orientation), then the writer.
    """
    steps: list[Any] = [Activationsd(keys="pred", sigmoid=True), AsDiscreted(keys="pred", threshold=threshold)]
    if as_flag(largest_component, "largest_component"):
        steps.append(KeepLargestConnectedComponentd(keys="pred", applied_labels=[1]))
    steps += [
        Invertd(keys="pred", transform=preprocessing, orig_keys="image", nearest_interp=True, to_tensor=True),
        SaveSegmentationd(keys="pred", output_dir=output_dir, input_root=input_root, overwrite=overwrite,
                          dicom_seg=dicom_seg),
    ]
    return Compose(steps)
