"""The MONAI bundle metadata schema, shipped so that ``verify_metadata`` runs offline from a clone.

``meta_schema_20240725.json`` is MONAI's own schema (the file MONAI's Model Zoo bundles name in
their ``metadata.json`` ``schema`` field), copied unchanged:

    python -m monai.bundle verify_metadata --meta_file bundles/<name>/configs/metadata.json \\
        --filepath hicur_monai/bundle_schema/meta_schema_20240725.json
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["META_SCHEMA"]

#: path of the packaged schema
META_SCHEMA = Path(__file__).with_name("meta_schema_20240725.json")
