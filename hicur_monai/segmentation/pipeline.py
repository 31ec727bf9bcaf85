"""Bundle wiring helpers, so that the segmentation configs hold no Python: optional steps, flat pipelines, batches.

* :func:`optional` gives a transform or ``None`` from a bundle flag; :func:`flat_compose` drops the
  ``None`` steps and flattens nested ``Compose`` fragments (so ``CacheDataset`` caches up to the
  first random transform, as with one flat list) into a :class:`ListAwareCompose`: after a
  multi-sample step (the slicer), a step with ``call_list`` (``CoarseStatesd``) gets the volume's
  whole list of slices at once, so the VLM runs on them in batches rather than one by one.
* :func:`coarse_prepare_batch`: the trainer's batch preparation with or without coarse states.
* :class:`ReportTextd` reads a study's radiology report (the datalist item's ``report`` file) for
  ``coarse_report``; the text also goes into the image's metadata, where the whole-volume
  inferer finds it.
* :func:`batch_filenames`: the ``batch_transform`` of ``MetricsSaver`` (per-volume file names).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

from monai.config import KeysCollection
from monai.transforms import Compose, MapTransform, apply_transform

from hicur_monai.utils.flags import as_flag

__all__ = ["ListAwareCompose", "ReportTextd", "batch_filenames", "coarse_prepare_batch", "flat_compose", "optional"]


def optional(transform: Any, enabled: bool | str = True, name: str = "enabled") -> Any:
    """``transform`` when the bundle flag ``enabled`` is true, else ``None`` (dropped by :func:`flat_compose`)."""
    return transform if as_flag(enabled, name) else None


class ListAwareCompose(Compose):
    """A ``Compose`` whose steps with a ``call_list`` method get a list of samples in one call.

    MONAI maps every step over the list a multi-sample transform returns (one call per slice).
    A step that is cheaper on many samples at once (the coarse states: one VLM call for a
    volume's slices) defines ``call_list(samples) -> samples``; it is called with the whole list,
    and as usual (``__call__``) on a single sample. Everything else runs as in ``Compose``.
    """

    def __call__(self, input_: Any, start: int = 0, end: int | None = None, threading: bool = False,
                 lazy: bool | None = None) -> Any:
        end = len(self.transforms) if end is None else end
        data, i = input_, start
        while i < end:
            j = next((k for k in range(i, end) if hasattr(self.transforms[k], "call_list")), end)
            if j > i:
                data = super().__call__(data, start=i, end=j, threading=threading, lazy=lazy)
            if j < end:
                step = self.transforms[j]
                if isinstance(data, (list, tuple)):  # as Compose runs a step: errors wrapped, log_stats applied
                    data = apply_transform(step.call_list, list(data), map_items=False, log_stats=self.log_stats)
                else:
                    data = apply_transform(step, data, log_stats=self.log_stats, lazy=lazy)
            i = j + 1
        return data


def flat_compose(transforms: Sequence[Any], **kwargs: Any) -> ListAwareCompose:
    """One flat :class:`ListAwareCompose` of the steps that are not ``None`` (nested ``Compose`` inlined)."""
    return ListAwareCompose(Compose([t for t in transforms if t is not None]).flatten().transforms, **kwargs)


def coarse_prepare_batch(use_coarse: bool | str = True, states_key: str = "coarse_states",
                         mask_key: str = "coarse_mask") -> Any:
    """The trainer's ``prepare_batch``: the coarse states as ``text_states`` / ``text_mask`` when ``use_coarse``."""
    from monai.engines import PrepareBatchDefault, PrepareBatchExtraInput

    if as_flag(use_coarse, "use_coarse"):
        return PrepareBatchExtraInput({"text_states": states_key, "text_mask": mask_key})
    return PrepareBatchDefault()


def batch_filenames(batch: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """Per-volume file names of a decollated batch (``MetricsSaver``'s ``batch_transform``)."""
    return [{"filename_or_obj": str(getattr(x["image"], "meta", {}).get("filename_or_obj", ""))} for x in batch]


class ReportTextd(MapTransform):
    """Read each item's radiology report file (``keys``: ``"report"``) into ``text_key`` and the image's metadata.

    Args:
        keys: the report path key (a text file; relative paths were made absolute by the datalist reader).
        text_key: where the text goes (``report_text``); also ``data[image_key].meta[text_key]``.
        image_key: the loaded image (its metadata carries the text to the whole-volume inferer).

    Raises:
        ValueError: an item has no report (``coarse_report`` needs one per study), naming the study.
        FileNotFoundError: the report file is missing or empty, naming the file and the study.
    """

    def __init__(self, keys: KeysCollection = "report", text_key: str = "report_text",
                 image_key: str = "image") -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.text_key, self.image_key = text_key, image_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        image = d.get(self.image_key)
        name = image if isinstance(image, str) else getattr(image, "meta", {}).get("filename_or_obj")
        study = d.get("study") or name
        for key in self.keys:
            path = d.get(key)
            if not path:
                raise ValueError(f"study {study!r}: coarse_report is true but its datalist item has no {key!r} "
                                 "(the MRI radiology report text file)")
            p = Path(str(path))
            text = p.read_text(encoding="utf-8", errors="replace").strip() if p.is_file() else ""
            if not text:
                raise FileNotFoundError(f"{p}: the radiology report of study {study!r} is missing or empty "
                                        "(needed with coarse_report true)")
            d[self.text_key] = text
            meta = getattr(d.get(self.image_key), "meta", None)
            if isinstance(meta, dict):
                meta[self.text_key] = text
        return d
