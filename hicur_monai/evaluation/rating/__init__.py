"""The blinded physician rating study: SQLite store (:mod:`.store`) and Gradio site (:mod:`.app`).

Only the store is imported here; the site (which needs Gradio) is imported on use.
"""

from __future__ import annotations

from hicur_monai.evaluation.rating.store import RatingError, RatingStore, Unit, hash_password, verify_password

__all__ = ["RatingError", "RatingStore", "Unit", "hash_password", "verify_password"]
