"""The MONAI Label app for the segmentation bundle (exported by ``hicur label-app``; runs in ``.venv-label``)."""

from __future__ import annotations

from hicur_monai.label.export import export_label_app, parse_overrides

__all__ = ["export_label_app", "parse_overrides"]
