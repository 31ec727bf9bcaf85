"""utils."""

from __future__ import annotations

from hicur_monai.utils import threads  # noqa: E402,F401  (bundle configs call hicur_monai.utils.threads)
