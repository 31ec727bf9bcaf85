"""Stage-0 data curation (``hicur curate``): folders of DICOM / NIfTI / NRRD / PNG / JPEG
into de-identified, de-duplicated 2D images with a manifest that accounts for every file.

See ``docs/curation.md``. The pretraining bundle reads the result with :func:`load_manifest`.
"""

from __future__ import annotations

from hicur_monai.data.curation.dedup import DEFAULT_NEAR_THRESHOLD, NearDuplicateIndex, deduplicate
from hicur_monai.data.curation.deid import Pseudonymizer, deidentify_dataset, identifying_values, read_salt
from hicur_monai.data.curation.discover import Found, discover
from hicur_monai.data.curation.manifest import COLUMNS, load_manifest, summarize
from hicur_monai.data.curation.pipeline import curate, merge
from hicur_monai.data.curation.reasons import REASONS, CurationReject
from hicur_monai.data.curation.rules import Rules, load_rules

__all__ = [
    "COLUMNS",
    "CurationReject",
    "DEFAULT_NEAR_THRESHOLD",
    "Found",
    "NearDuplicateIndex",
    "Pseudonymizer",
    "REASONS",
    "Rules",
    "curate",
    "deduplicate",
    "deidentify_dataset",
    "discover",
    "identifying_values",
    "load_manifest",
    "load_rules",
    "merge",
    "read_salt",
    "summarize",
]
