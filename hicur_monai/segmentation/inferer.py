"""Whole-volume inference with a 2D network: slices batched, reassembled in the volume's own grid.

:class:`VolumeSliceInferer` is a MONAI :class:`~monai.inferers.Inferer`: it takes a
preprocessed channel-first 3D volume ``(B, C, X, Y, Z)`` with intensities in [0, 1] (the
output of ``transforms/mri.json::load``), cuts it into 2D slices along ``slice_axis``, brings
each slice to the network's input (3 channels, longest side resized to ``roi_size``, padded
square, the model-input normalisation: the same steps as ``transforms/common.json::rgb_256``
+ ``normalize``), runs them through the network ``sw_batch_size`` at a time (with the coarse
states of each slice when the network is a fusion network), undoes the resize and padding
with MONAI's own inverses, and stacks the logits back into ``(B, K, X, Y, Z)`` on the input's
voxel grid. Post-processing (sigmoid, threshold, largest component, ``Invertd`` of the
orientation, ``SaveImaged``) is ordinary MONAI.

A 2D input ``(B, C, H, W)`` is treated as one slice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.data import MetaTensor
from monai.inferers import Inferer
from monai.transforms import Compose, Resize, SpatialPad

from hicur_monai.transforms.array import MODEL_INPUT_MEAN, MODEL_INPUT_STD

__all__ = ["VolumeSliceInferer", "MEAN", "STD"]

MEAN = MODEL_INPUT_MEAN  # the shared model-input statistics (hicur_monai.transforms.array)
STD = MODEL_INPUT_STD


class VolumeSliceInferer(Inferer):
    """Run a 2D segmentation network over every slice of a 3D volume.

    Args:
        roi_size: network input size (longest side resized to it, then padded square).
        sw_batch_size: slices per network call.
        coarse: a coarse-state provider/cache (``images (N, 3, roi, roi) in [0, 1] -> (states, mask)``);
            when given, the network is called as ``network(x, text_states=..., text_mask=...)``. When it
            uses reports (``coarse_report``), each volume's text comes from its ``meta["report_text"]``.
        slice_axis: spatial axis of the slices (-1: axial for RAS volumes).
        mean, std: the model-input normalisation (``None`` to skip).
        progress: show a tqdm bar over slice batches.
        use_coarse: ``False`` ignores ``coarse`` (a bundle flag; ``"true"``/``"false"`` strings accepted).
    """

    def __init__(
        self,
        roi_size: int = 256,
        sw_batch_size: int = 16,
        coarse: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None,
        slice_axis: int = -1,
        mean: Sequence[float] | None = MEAN,
        std: Sequence[float] | None = STD,
        progress: bool = False,
        use_coarse: bool | str = True,
    ) -> None:
        from hicur_monai.segmentation.output import as_flag

        super().__init__()
        if sw_batch_size < 1:
            raise ValueError(f"sw_batch_size must be >= 1, got {sw_batch_size}")
        self.roi_size = int(roi_size)
        self.sw_batch_size = int(sw_batch_size)
        self.coarse = coarse if as_flag(use_coarse, "use_coarse") else None
        self.slice_axis = slice_axis
        self.mean, self.std = mean, std
        self.progress = progress
        self._geometry = Compose([
            Resize(self.roi_size, size_mode="longest", mode="bilinear"),
            SpatialPad((self.roi_size, self.roi_size)),
        ])

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean is None or self.std is None:
            return x
        m = torch.as_tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        s = torch.as_tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (x - m) / s

    @staticmethod
    def _states(
        coarse: Callable[..., tuple[torch.Tensor, torch.Tensor]], chunk: torch.Tensor, report: str | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if getattr(coarse, "report", False):
            return coarse(chunk, [report] * len(chunk))
        return coarse(chunk)

    def _run_slices(self, slices: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any,
                    report: str | None = None, **kwargs: Any) -> torch.Tensor:
        """``slices`` (N, C, H, W) in [0, 1] -> logits (N, K, H, W) on the same grid (``report``: the study's text)."""
        n, c, h, w = slices.shape
        if c == 1:
            slices = slices.repeat(1, 3, 1, 1)
        elif c != 3:
            raise ValueError(f"VolumeSliceInferer: images need 1 or 3 channels, got {c}")
        # resize/pad all slices at once, as channels of one 2D image, so MONAI records one inverse
        stacked = MetaTensor(slices.reshape(n * 3, h, w).float())
        geo = self._geometry(stacked)
        ops = list(geo.applied_operations)
        x01 = geo.as_tensor().reshape(n, 3, self.roi_size, self.roi_size)
        out = []
        starts = range(0, n, self.sw_batch_size)
        if self.progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="slices", unit="batch", leave=False)
        for i in starts:
            chunk = x01[i : i + self.sw_batch_size]
            inp = self._normalise(chunk)
            if self.coarse is not None:
                states, mask = self._states(self.coarse, chunk.detach().cpu(), report)
                kwargs_i = dict(kwargs, text_states=states.to(inp.device), text_mask=mask.to(inp.device))
                out.append(network(inp, *args, **kwargs_i))
            else:
                out.append(network(inp, *args, **kwargs))
        logits = torch.cat(out, 0)
        k = logits.shape[1]
        back = MetaTensor(logits.reshape(n * k, self.roi_size, self.roi_size).float(), applied_operations=ops)
        # the recorded inverse of Resize uses the recorded (bilinear) mode on logits
        back = self._geometry.inverse(back)
        return back.as_tensor().reshape(n, k, h, w)

    def __call__(
        self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """Logits ``(B, K, X, Y, Z)`` of volumes ``(B, C, X, Y, Z)`` (or ``(B, K, H, W)`` of 2D images)."""
        x = torch.as_tensor(inputs)
        reports = _reports(inputs, int(x.shape[0]))
        if x.ndim == 4:
            return self._run_slices(x, network, *args, report=reports[0], **kwargs)
        if x.ndim != 5:
            raise ValueError(f"VolumeSliceInferer: expected (B, C, X, Y, Z) or (B, C, H, W), got {tuple(x.shape)}")
        ax = 2 + (self.slice_axis % 3)
        results = []
        for b in range(x.shape[0]):
            vol = x[b].movedim(ax - 1, 0)  # (Z, C, ...) slices first
            logits = self._run_slices(vol, network, *args, report=reports[b], **kwargs)  # (Z, K, h, w)
            results.append(logits.movedim(0, ax - 1))
        out = torch.stack(results, 0)
        if isinstance(inputs, MetaTensor):
            out = MetaTensor(out, meta=inputs.meta, applied_operations=inputs.applied_operations)
        return out


def _reports(inputs: Any, batch: int) -> list[str | None]:
    """The report text of each volume (``meta["report_text"]``, set by ``ReportTextd``), else ``None`` each."""
    text = (getattr(inputs, "meta", None) or {}).get("report_text")
    if text is None:
        return [None] * batch
    if isinstance(text, str):
        return [text] * batch
    texts: list[str | None] = [str(t) for t in text]
    return texts if len(texts) == batch else [texts[0]] * batch
