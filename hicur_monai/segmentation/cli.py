"""``hicur segment demo``: train and evaluate the segmentation variants of the ablation on the demo cohort.

Runs the ``bundles/npc_segmentation`` configs (``train.json`` + ``demo.json`` [+ ``baseline.json``],
then ``evaluate.json``) with MONAI's bundle runner, from the repository root, one variant per
folder ``<out>/<variant>/``, and writes the comparison ``comparison.md`` and ``comparison.json``
(per variant: 3D Dice overall and per sequence, HD95, and the ``coarse_states`` line) and the
contour sheets next to the runs.

Variants: ``unet`` (MONAI UNet, no coarse states), ``fusion_standin`` (fusion U-Net, text-only
stand-in states), ``fusion_vlm`` (states of the stage II model ``--vlm-checkpoint``),
``fusion_vlm_report`` (the same + each study's MRI report). ``fusion`` / ``baseline`` are the old
names of ``fusion_standin`` / ``unet``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["ALIASES", "VARIANTS", "add_parser", "comparison_json", "run_demo", "variant_overrides"]

BUNDLE = Path("bundles/npc_segmentation/configs")
#: variant -> (extra config files after train.json + demo.json, bundle keys)
VARIANTS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "unet": (("baseline.json",), {}),
    "fusion_standin": ((), {}),
    "fusion_vlm": ((), {"coarse_report": False}),
    "fusion_vlm_report": ((), {"coarse_report": True}),
}
ALIASES = {"fusion": "fusion_standin", "baseline": "unet"}
#: the comparison.json fields of each variant (contracts: segmentation)
COMPARISON_FIELDS = ("val_mean_dice_3d", "dice_3d_T1", "dice_3d_T2", "dice_3d_T1C", "val_hd95")


def variant_overrides(variant: str, vlm_checkpoint: str | None) -> tuple[list[str], dict[str, Any]]:
    """Config files and bundle keys of one variant (aliases accepted).

    Raises:
        ValueError: an unknown variant, or a ``fusion_vlm*`` variant without ``vlm_checkpoint``.
    """
    name = ALIASES.get(variant, variant)
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; use one of {sorted(VARIANTS)} "
                         f"(or the aliases {sorted(ALIASES)})")
    files, keys = VARIANTS[name]
    keys = dict(keys)
    if name.startswith("fusion_vlm"):
        if not vlm_checkpoint:
            raise ValueError(f"variant {name!r} needs --vlm-checkpoint (the stage II model folder, e.g. "
                             "runs/vl_alignment/step2/model)")
        keys["vlm_checkpoint"] = str(vlm_checkpoint)
    configs = [str(BUNDLE / "train.json"), str(BUNDLE / "demo.json"), *(str(BUNDLE / f) for f in files)]
    return configs, keys


def _number(v: Any) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def comparison_json(
    runs: Mapping[str, str | os.PathLike], output_file: str | os.PathLike | None = None
) -> dict[str, Any]:
    """``{variant: {val_mean_dice_3d, dice_3d_T1, dice_3d_T2, dice_3d_T1C, val_hd95, coarse_states}}`` from eval
    folders.

    Raises:
        FileNotFoundError: an evaluation folder lacks ``metrics.csv`` or ``summary.json``.
    """
    from hicur_monai.segmentation.metrics import dice_by_sequence, read_metrics_csv
    from hicur_monai.utils.io import atomic_write_json

    out: dict[str, Any] = {}
    for variant, where in runs.items():
        folder = Path(where)
        for name in ("metrics.csv", "summary.json"):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder / name}: missing for variant {variant!r}; run its evaluation first")
        values = read_metrics_csv(folder / "metrics.csv")
        raw = folder / "val_mean_dice_3d_raw.csv"
        if raw.is_file():
            values.update(dice_by_sequence(raw))
        row = {k: _number(values.get(k)) for k in COMPARISON_FIELDS}
        row["coarse_states"] = json.loads((folder / "summary.json").read_text())["coarse_states"]
        out[variant] = row
    if output_file:
        atomic_write_json(output_file, out)
    return out


def run_demo(data: str, out: str, epochs: int = 13, max_patients: int = 20,
             models: tuple[str, ...] = ("fusion_standin", "unet"), vlm_checkpoint: str | None = None) -> str:
    """Train + evaluate each variant; return the Markdown table (also ``out/comparison.md``;
    ``out/comparison.json``)."""
    from monai.bundle import run

    from hicur_monai.segmentation.metrics import comparison_table

    if not (BUNDLE / "train.json").is_file():
        raise FileNotFoundError(f"{BUNDLE}: run from the repository root "
                                "(bundles/ and transforms/ are read from there)")
    out_p = Path(out)
    variants = list(dict.fromkeys(ALIASES.get(m, m) for m in models))
    plans = {v: variant_overrides(v, vlm_checkpoint) for v in variants}  # every variant checked before any training
    runs = {}
    for variant, (configs, keys) in plans.items():
        run_dir = out_p / variant
        common = {"dataset_dir": data, "output_dir": str(run_dir), "epochs": epochs, "max_patients": max_patients,
                  "val_interval": epochs, **keys}
        t0 = time.time()
        run(config_file=configs, **common)
        t1 = time.time()
        run(config_file=[*configs, str(BUNDLE / "evaluate.json")], **common)
        print(f"[segment demo] {variant}: training {t1 - t0:.0f} s, evaluation {time.time() - t1:.0f} s (wall)")
        runs[variant] = run_dir / "eval"
        shutil.copyfile(run_dir / "eval" / "contours.png", out_p / f"contours_{variant}.png")
    rows = comparison_json(runs, out_p / "comparison.json")
    notes = "".join(f"- {v}: coarse states: {r['coarse_states']}\n" for v, r in rows.items())
    table = comparison_table(runs) + "\n" + notes
    from hicur_monai.utils.io import atomic_write_text

    atomic_write_text(out_p / "comparison.md", table)
    print(table)
    return table


def _demo(args: argparse.Namespace) -> int:
    os.makedirs(args.out, exist_ok=True)
    run_demo(args.data, args.out, epochs=args.epochs, max_patients=args.max_patients, models=tuple(args.models),
             vlm_checkpoint=args.vlm_checkpoint)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment", help="stage III segmentation (npc_segmentation bundle) helpers")
    s = p.add_subparsers(dest="segment_cmd", required=True)
    d = s.add_parser("demo", help="train + evaluate the segmentation variants on the demo cohort (CPU, minutes)")
    d.add_argument("--data", default="demo_data", help="demo cohort folder (hicur demo-data)")
    d.add_argument("--out", default="demo_output/segmentation")
    d.add_argument("--epochs", type=int, default=13, help="13 epochs of 20 patients: 390 iterations")
    d.add_argument("--max-patients", type=int, default=20, help="patients per split")
    d.add_argument("--models", nargs="+", default=["fusion_standin", "unet"], choices=[*VARIANTS, *ALIASES],
                   help="variants (fusion/baseline: old names of fusion_standin/unet)")
    d.add_argument("--vlm-checkpoint", default=None,
                   help="stage II model folder (bundles/vl_alignment: <output_root>/step2/model) for fusion_vlm*")
    d.set_defaults(func=_demo)
