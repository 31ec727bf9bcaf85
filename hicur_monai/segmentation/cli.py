"""``hicur segment demo``: train and evaluate the fusion U-Net and the MONAI UNet baseline on the demo cohort.

Runs the ``bundles/npc_segmentation`` configs (``train.json`` + ``demo.json`` [+ ``baseline.json``],
then ``evaluate.json``) with MONAI's bundle runner, from the repository root, and writes the
comparison table ``comparison.md`` and the contour sheets next to the runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

__all__ = ["add_parser", "run_demo"]

BUNDLE = Path("bundles/npc_segmentation/configs")


def run_demo(data: str, out: str, epochs: int = 13, max_patients: int = 20, models: tuple[str, ...] = ("fusion", "baseline")) -> str:
    """Train + evaluate each model; return the Markdown comparison table (also written to ``out/comparison.md``)."""
    from monai.bundle import run

    from hicur_monai.segmentation.metrics import comparison_table

    if not (BUNDLE / "train.json").is_file():
        raise FileNotFoundError(f"{BUNDLE}: run from the repository root (bundles/ and transforms/ are read from there)")
    out_p = Path(out)
    runs = {}
    for model in models:
        configs = [str(BUNDLE / "train.json"), str(BUNDLE / "demo.json")]
        if model == "baseline":
            configs.append(str(BUNDLE / "baseline.json"))
        elif model != "fusion":
            raise ValueError(f"unknown model {model!r}; use fusion or baseline")
        run_dir = out_p / model
        common = {"dataset_dir": data, "output_dir": str(run_dir), "epochs": epochs, "max_patients": max_patients,
                  "val_interval": epochs}
        t0 = time.time()
        run(config_file=configs, **common)
        t1 = time.time()
        run(config_file=[*configs, str(BUNDLE / "evaluate.json")], **common)
        print(f"[segment demo] {model}: training {t1 - t0:.0f} s, evaluation {time.time() - t1:.0f} s (wall)")
        runs[model] = run_dir / "eval"
        shutil.copyfile(run_dir / "eval" / "contours.png", out_p / f"contours_{model}.png")
    table = comparison_table(runs, out_p / "comparison.md")
    print(table)
    return table


def _demo(args: argparse.Namespace) -> int:
    os.makedirs(args.out, exist_ok=True)
    run_demo(args.data, args.out, epochs=args.epochs, max_patients=args.max_patients, models=tuple(args.models))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment", help="stage III segmentation (npc_segmentation bundle) helpers")
    s = p.add_subparsers(dest="segment_cmd", required=True)
    d = s.add_parser("demo", help="train + evaluate fusion U-Net and UNet baseline on the demo cohort (CPU, minutes)")
    d.add_argument("--data", default="demo_data", help="demo cohort folder (hicur demo-data)")
    d.add_argument("--out", default="demo_output/segmentation")
    d.add_argument("--epochs", type=int, default=13, help="13 epochs of 20 patients: 390 iterations")
    d.add_argument("--max-patients", type=int, default=20, help="patients per split")
    d.add_argument("--models", nargs="+", default=["fusion", "baseline"], choices=["fusion", "baseline"])
    d.set_defaults(func=_demo)
