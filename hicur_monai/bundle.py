"""Bundle utilities: locating the repository's bundles and exporting self-contained copies.

Bundles in this repository include the shared pipelines with ``%transforms/<file>.json::<key>``
macros. MONAI Label and the Model Zoo want a folder that stands alone, so
:func:`export_bundle` copies a bundle, inlines those macros, points its ``bundle_root`` at the
copy (so it runs from any working directory), gives it a ``models/`` folder (a trained
``model.pt`` copied in when given) and has its training write ``models/`` there, where its
``inference.json`` reads the model.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path
from typing import Any

from hicur_monai.transforms.fragments import transforms_dir
from hicur_monai.utils.io import atomic_write_json

__all__ = ["bundles_dir", "inline_fragments", "export_bundle", "add_parser"]

_MACRO = "%transforms/"


def bundles_dir() -> Path:
    """The repository's ``bundles/`` folder (next to ``transforms/``)."""
    path = transforms_dir().parent / "bundles"
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no bundles folder; run from the repository root")
    return path


def inline_fragments(config: Any, root: Path) -> Any:
    """Replace every ``%transforms/<file>.json::<key>`` string in ``config`` with the fragment's content."""
    if isinstance(config, dict):
        return {k: inline_fragments(v, root) for k, v in config.items()}
    if isinstance(config, list):
        return [inline_fragments(v, root) for v in config]
    if isinstance(config, str) and config.startswith(_MACRO):
        file, _, key = config[len(_MACRO):].partition("::")
        data = json.loads((root / file).read_text())
        node: Any = data
        for part in key.split("::"):
            try:
                node = node[int(part)] if isinstance(node, list) else node[part]
            except (KeyError, IndexError, ValueError):
                raise KeyError(f"{config}: no such fragment in {root / file}") from None
        return node
    return config


def _standalone(config: dict[str, Any], bundle_root: Path) -> dict[str, Any]:
    """A top-level config made to run from its exported folder (``bundle_root``, ``ckpt_dir`` into it)."""
    if "bundle_root" in config:
        config["bundle_root"] = str(bundle_root)
    if "ckpt_dir" in config:  # training writes the Model-Zoo models/ folder that inference reads
        config["ckpt_dir"] = "$@bundle_root + '/models'"
        config.setdefault("bundle_root", str(bundle_root))
    return config


def export_bundle(
    name_or_path: str | os.PathLike, dest: str | os.PathLike, model: str | os.PathLike | None = None
) -> Path:
    """Write a self-contained copy of a bundle to ``dest`` (macros inlined, Model-Zoo layout).

    The copy's ``bundle_root`` is ``dest`` (absolute; pass ``--bundle_root`` after moving it), it has
    a ``models/`` folder, and its training writes ``models/model.pt`` there.

    Args:
        name_or_path: a bundle name under ``bundles/`` or a bundle folder.
        dest: the new bundle folder (must not exist or be empty).
        model: trained weights to copy to ``models/model.pt`` (e.g. ``runs/npc_segmentation/models/model.pt``).

    Raises:
        FileNotFoundError: no such bundle, or ``model`` does not exist.
        FileExistsError: ``dest`` exists and is not empty.
    """
    src = Path(name_or_path)
    if not (src / "configs").is_dir():
        src = bundles_dir() / str(name_or_path)
    if not (src / "configs" / "metadata.json").is_file():
        raise FileNotFoundError(f"{src}: not a bundle (no configs/metadata.json)")
    if model is not None and not Path(model).is_file():
        raise FileNotFoundError(f"{model}: model weights not found")
    out = Path(dest).resolve()
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: exists and is not empty")
    shutil.copytree(src, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    root = transforms_dir()
    for cfg in sorted((out / "configs").glob("*.json")):
        config = inline_fragments(json.loads(cfg.read_text()), root)
        atomic_write_json(cfg, _standalone(config, out) if isinstance(config, dict) else config)
    (out / "models").mkdir(exist_ok=True)
    if model is not None:
        shutil.copyfile(model, out / "models" / "model.pt")
    return out


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bundle", help="bundle utilities (export a self-contained copy)")
    bsub = p.add_subparsers(dest="bundle_command", metavar="SUBCOMMAND", required=True)
    e = bsub.add_parser("export", help="copy a bundle with the shared transform macros inlined")
    e.add_argument("name", help="bundle name under bundles/ (or a bundle folder)")
    e.add_argument("dest", type=Path, help="destination folder")
    e.add_argument("--model", type=Path, default=None, help="trained weights to copy to DEST/models/model.pt")
    e.set_defaults(func=lambda a: print(f"exported to {export_bundle(a.name, a.dest, a.model)}") or 0)
