"""hicur-monai: the HiCur-NPC multi-modal foundation model for nasopharyngeal carcinoma as a MONAI toolkit."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
