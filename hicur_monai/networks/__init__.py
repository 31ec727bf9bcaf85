"""networks (importing this package registers every network in ``hicur_monai.registry.NETWORKS``)."""

from __future__ import annotations

# One line per network module (ruff keeps them in this form: one import each, sorted).
import hicur_monai.networks.fusion_seg  # noqa: F401
import hicur_monai.networks.hcmae  # noqa: F401
import hicur_monai.networks.prognosis  # noqa: F401
import hicur_monai.networks.vlm  # noqa: F401
