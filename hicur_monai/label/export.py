"""Export the self-contained MONAI Label app (``hicur label-app DEST``).

The app folder holds ``main.py`` (:mod:`hicur_monai.label.app_main`) and
``model/npc_segmentation/``, a self-contained copy of the bundle (shared transform macros
inlined by :func:`hicur_monai.bundle.export_bundle`) with the trained weights as
``models/model.pt``. ``overrides`` set top-level config values of the exported
``inference.json`` and ``train.json`` (e.g. ``preset=tiny``, ``img_size=64`` for a demo model).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hicur_monai.utils.io import atomic_write_json

__all__ = ["export_label_app", "parse_overrides"]

BUNDLE_NAME = "npc_segmentation"


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """``["key=value", ...]`` -> dict; values are parsed as JSON when they are JSON, else kept as strings."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ValueError(f"override {pair!r}: expected KEY=VALUE")
        key, value = pair.split("=", 1)
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def export_label_app(
    dest: str | os.PathLike,
    model: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Path:
    """Write the MONAI Label app to ``dest`` (must not exist or be empty).

    Args:
        dest: app folder.
        model: trained weights (``models/model.pt`` of a training run); without it the app
            starts, but offers training only (no inference) until a model is trained.
        overrides: top-level config values set in the exported ``inference.json`` and ``train.json``.

    Raises:
        FileNotFoundError: ``model`` does not exist.
    """
    from hicur_monai.bundle import export_bundle

    out = Path(dest)
    if model is not None and not Path(model).is_file():
        raise FileNotFoundError(f"{model}: model weights not found")
    bundle = export_bundle(BUNDLE_NAME, out / "model" / BUNDLE_NAME)
    shutil.copyfile(Path(__file__).with_name("app_main.py"), out / "main.py")
    for name in ("inference.json", "train.json"):
        cfg_path = bundle / "configs" / name
        cfg = json.loads(cfg_path.read_text())
        cfg["bundle_root"] = "."  # MONAI Label sets the real bundle root when it loads the bundle
        cfg.update(dict(overrides or {}))
        atomic_write_json(cfg_path, cfg)
    if model is not None:
        (bundle / "models").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(model, bundle / "models" / "model.pt")
    return out
