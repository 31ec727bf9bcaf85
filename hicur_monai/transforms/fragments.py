"""Locate and build the shared transform pipelines declared in the top-level ``transforms/`` folder.

Bundles include the fragments with ``%transforms/<file>.json::<key>`` macros (paths relative
to the repository root, where bundles are run from). Python code builds the same pipelines
through :func:`build_fragment`, so both see one declaration.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["FRAGMENT_FILES", "transforms_dir", "build_fragment", "build_pipeline"]

FRAGMENT_FILES = ("endoscopy", "mri", "ct", "common", "augment")


def transforms_dir(start: str | os.PathLike | None = None) -> Path:
    """The ``transforms/`` folder: ``$HICUR_TRANSFORMS_DIR``, else ``./transforms``, else the repository's.

    Raises:
        FileNotFoundError: when none exists.
    """
    candidates = []
    if os.environ.get("HICUR_TRANSFORMS_DIR"):
        candidates.append(Path(os.environ["HICUR_TRANSFORMS_DIR"]))
    candidates.append(Path(start or Path.cwd()) / "transforms")
    candidates.append(Path(__file__).resolve().parents[2] / "transforms")
    for c in candidates:
        if (c / "common.json").is_file():
            return c
    raise FileNotFoundError(
        "cannot find the shared transforms/ folder (looked in: " + ", ".join(str(c) for c in candidates) + "); "
        "run from the repository root or set HICUR_TRANSFORMS_DIR"
    )


def build_fragment(ref: str, root: str | os.PathLike | None = None, **params: Any) -> Any:
    """Instantiate one fragment, e.g. ``build_fragment("mri.json::load")``.

    Parametric fragments take their parameters as keywords:
    ``build_fragment("common.json::rgb", img_size=256)``.

    ``params`` set the file's top-level values the fragments refer to (``@img_size``); a bundle that
    includes a fragment with a ``%`` macro supplies its own.
    """
    from monai.bundle import ConfigParser

    file, _, key = ref.partition("::")
    if not key:
        raise ValueError(f"fragment reference {ref!r} must look like '<file>.json::<key>'")
    path = (Path(root) if root else transforms_dir()) / file
    parser = ConfigParser(ConfigParser.load_config_file(path))
    for name, value in params.items():
        parser[name] = value
    if key not in parser.get():
        available = sorted(k for k in parser.get() if not k.startswith("_"))
        raise KeyError(f"{path}: no fragment {key!r}; available: {available}")
    return parser.get_parsed_content(key, instantiate=True)


def build_pipeline(*refs: str, root: str | os.PathLike | None = None, **params: Any) -> Any:
    """A ``monai.transforms.Compose`` of several fragments in order (``params`` as for :func:`build_fragment`)."""
    from monai.transforms import Compose

    return Compose([build_fragment(r, root, **params) for r in refs])
