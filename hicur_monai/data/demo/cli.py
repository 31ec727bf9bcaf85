"""``hicur demo-data`` and ``hicur demo``."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

__all__ = ["add_parser"]

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo-data", help="generate the synthetic + real-sample demo cohort",
                       description="Generate the demo cohort (deterministic by seed) into DIR.")
    p.add_argument("dir", type=Path, help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preset", default="default", choices=["default", "small", "tiny"])
    p.add_argument("--patients", type=int, default=None, help="override the number of patients")
    p.add_argument("--workers", type=int, default=None, help="processes (default: CPU cores)")
    p.set_defaults(func=_demo_data)

    d = sub.add_parser("demo", help="demo cohort + shared transform pipelines on every modality",
                       description="Generate the demo cohort (unless DATA already has one) and write a contact sheet "
                                   "of preprocessed images per modality into OUT.")
    d.add_argument("--data", type=Path, default=Path("demo_data"), help="cohort folder (default: demo_data)")
    d.add_argument("--out", type=Path, default=Path("demo_output"), help="output folder (default: demo_output)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--preset", default="default", choices=["default", "small", "tiny"])
    d.set_defaults(func=_demo)


def _generate(dir_: Path, seed: int, preset: str, patients: int | None = None, workers: int | None = None) -> None:
    from hicur_monai.data.demo.cohort import generate_demo_cohort

    overrides: dict[str, Any] = {"n_patients": patients} if patients else {}
    generate_demo_cohort(dir_, seed=seed, preset=preset, workers=workers, **overrides)
    info = json.loads((dir_ / "cohort.json").read_text())
    print(f"demo cohort: {dir_} ({info['seconds']} s) " + ", ".join(f"{k}={v}" for k, v in info["counts"].items()))


def _demo_data(args: argparse.Namespace) -> int:
    _generate(args.dir, args.seed, args.preset, args.patients, args.workers)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from hicur_monai.data.demo.preview import preview_anatomy, preview_pipelines

    if not (args.data / "datalist.json").is_file():
        _generate(args.data, args.seed, args.preset)
    else:
        print(f"demo cohort: using {args.data} (delete it to regenerate)")
    for kind, path in preview_pipelines(args.data, args.out, seed=args.seed).items():
        print(f"contact sheet [{kind}]: {path}")
    if (args.data / "reports" / "mri").is_dir():
        print(f"MRI anatomy and reports: {preview_anatomy(args.data, args.out)}")
    return 0
