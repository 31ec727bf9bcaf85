"""Stage II vision-language workflows: data, training, generation, coarse features, task router.

Importing this package registers the ``"vlm_coarse"`` text encoder in
:data:`hicur_monai.registry.TEXT_ENCODERS`. The network itself is
:class:`hicur_monai.networks.vlm.VisionLanguageModel`.
"""

from __future__ import annotations

from hicur_monai.vlm.coarse import DEFAULT_SEG_INSTRUCTION, VLMCoarseEncoder, coarse_features

__all__ = ["DEFAULT_SEG_INSTRUCTION", "VLMCoarseEncoder", "coarse_features"]
