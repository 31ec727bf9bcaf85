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
import dataclasses
import json
import os
import shlex
import shutil
from pathlib import Path
from typing import Any

from hicur_monai.transforms.fragments import transforms_dir
from hicur_monai.utils.io import atomic_write_json

__all__ = ["bundles_dir", "inline_fragments", "export_bundle", "suggested_commands", "add_parser"]

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


#: where the bundles' training runs write their models (the configs' default output_dir)
_SEGMENTATION_MODEL = "runs/npc_segmentation/models/model.pt"
_PROGNOSIS_MODELS = "runs/npc_prognosis"


def _bundle_run(*configs: str, **overrides: str) -> str:
    """A ``python -m monai.bundle run`` command line for configs of the repository's bundles."""
    files = [f"bundles/{c}.json" for c in configs]
    spec = files[0] if len(files) == 1 else '"[' + ",".join(f"'{f}'" for f in files) + ']"'
    args = "".join(f" --{k} {shlex.quote(v)}" for k, v in overrides.items())
    return f"python -m monai.bundle run --config_file {spec}{args}"


def _segmentation_flags(model: Path) -> dict[str, str]:
    """Command-line settings that rebuild the network a segmentation ``model.pt`` records (empty if it records none)."""
    import torch

    from hicur_monai.networks.fusion_seg import FUSION_PRESETS, FusionSegConfig

    extra = torch.load(model, map_location="cpu", weights_only=True).get("_extra_state")
    if not isinstance(extra, dict) or "config" not in extra:
        return {}
    config = extra["config"]
    shape = ("depths", "dims", "stem_dim", "num_heads", "ffn_ratio", "fusion_scales")
    def as_recorded(name: str) -> dict[str, Any]:  # tuples as lists, as the checkpoint holds them
        return json.loads(json.dumps(dataclasses.asdict(FusionSegConfig.from_preset(name))))

    preset = next((name for name in FUSION_PRESETS if all(as_recorded(name)[k] == config.get(k) for k in shape)), None)
    if preset is None:
        return {}
    flags = {"preset": preset, "norm": str(config["norm_name"]), "text_dim": str(config["text_dim"])}
    if config.get("extra", {}).get("img_size"):
        flags["img_size"] = str(config["extra"]["img_size"])
    return flags


def _unused_folder(root: Path, name: str) -> str:
    """``name``, or ``name_2``, ``name_3``, ... : the first that does not exist under ``root``
    (inference refuses to overwrite earlier results, so a suggestion never points at them)."""
    candidate, k = name, 1
    while (root / candidate).exists():
        k += 1
        candidate = f"{name}_{k}"
    return candidate


def suggested_commands(task: str, image: str | os.PathLike | None = None, root: str | os.PathLike = ".") -> list[str]:
    """The commands (run from the repository root ``root``) that answer a routed ``task``, in order.

    Training comes first when its output is not in ``root`` yet. Segmentation infers on
    ``image``; prognosis predicts for the patients of the demo cohort's clinical table (the
    bundle's default ``dataset_dir``). The commands are the documented ones of
    ``bundles/npc_segmentation/docs/README.md`` and ``bundles/npc_prognosis/docs/README.md``.

    Raises:
        ValueError: a task no bundle answers.
    """
    base = Path(root)
    if task == "segmentation":
        model = base / _SEGMENTATION_MODEL
        out = ([] if model.is_file()
               else [_bundle_run("npc_segmentation/configs/train", "npc_segmentation/configs/demo")])
        inputs = {"input": os.fspath(image)} if image is not None else {}
        shape = _segmentation_flags(model) if model.is_file() else {"preset": "tiny", "img_size": "64", "norm": "batch"}
        return out + [_bundle_run("npc_segmentation/configs/inference", **inputs, ckpt_path=_SEGMENTATION_MODEL,
                                  output_dir=_unused_folder(base, "runs/seg_out"), **shape)]
    if task == "prognosis":
        out = [] if (base / _PROGNOSIS_MODELS / "train_summary.json").is_file() else [
            _bundle_run("npc_prognosis/configs/train")]
        return out + [_bundle_run("npc_prognosis/configs/train", "npc_prognosis/configs/inference")]
    raise ValueError(f"no bundle answers task {task!r} (known: segmentation, prognosis)")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bundle", help="bundle utilities (export a self-contained copy)")
    bsub = p.add_subparsers(dest="bundle_command", metavar="SUBCOMMAND", required=True)
    e = bsub.add_parser("export", help="copy a bundle with the shared transform macros inlined")
    e.add_argument("name", help="bundle name under bundles/ (or a bundle folder)")
    e.add_argument("dest", type=Path, help="destination folder")
    e.add_argument("--model", type=Path, default=None, help="trained weights to copy to DEST/models/model.pt")
    e.set_defaults(func=lambda a: print(f"exported to {export_bundle(a.name, a.dest, a.model)}") or 0)
