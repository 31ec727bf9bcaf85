"""networks (importing this package registers every network in ``hicur_monai.registry.NETWORKS``)."""

from __future__ import annotations

from hicur_monai.networks import hcmae  # noqa: F401
from hicur_monai.networks import vlm  # noqa: F401
