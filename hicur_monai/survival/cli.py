"""``hicur report survival TABLE --out DIR``: cross-validated survival models and the HTML report."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

__all__ = ["add_parser", "report_survival"]

logger = logging.getLogger(__name__)


def _report_subparsers(subparsers: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """The ``report`` command's own subparsers (created here, or reused if another module made it)."""
    parser = subparsers.choices.get("report")
    if parser is None:
        parser = subparsers.add_parser("report", help="analysis reports (survival, ...)")
        return parser.add_subparsers(dest="report_kind", metavar="KIND")
    for action in parser._actions:  # noqa: SLF001 - argparse keeps subparsers here
        if isinstance(action, argparse._SubParsersAction):
            return action
    return parser.add_subparsers(dest="report_kind", metavar="KIND")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``report survival``."""
    p = _report_subparsers(subparsers).add_parser(
        "survival", help="Cox + DeepSurv with cross-validation; writes metrics.json and survival_report.html",
        description="Load a prognosis table (CSV/XLSX, the 37 seed columns or mapped ones), fit Cox PH and "
                    "DeepSurv for each endpoint with K-fold cross-validation, and write metrics with bootstrap "
                    "CIs and a self-contained HTML survival report.")
    p.add_argument("table", type=Path, help="clinical table (.csv or .xlsx)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--endpoints", default="all", help="all, or comma-separated of ffs,os,dmfs (default: all)")
    p.add_argument("--models", default="cox,deepsurv", help="comma-separated of cox,deepsurv")
    p.add_argument("--covariates", default=None, help="comma-separated covariates (default: the collinearity-safe set)")
    p.add_argument("--image-features", type=Path, default=None, help="per-study features (.csv/.npz/.npy)")
    p.add_argument("--hcmae-encoder", type=Path, default=None,
                   help="extract per-study features with this Stage I ViT export (vit_encoder.pt)")
    p.add_argument("--vlm-checkpoint", type=Path, default=None,
                   help="add the coarse states of this Stage II model folder (bundles/vl_alignment)")
    p.add_argument("--mri-datalist", type=Path, default=None,
                   help="datalist.json with the 'mri' list (default: datalist.json two folders above TABLE)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--boot", type=int, default=200, help="bootstrap samples for discrimination/Brier CIs")
    p.add_argument("--boot-calibration", type=int, default=30, help="bootstrap samples for ICI CIs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--truth", type=Path, default=None, help="demo truth.json: compare Cox with the true log HRs")
    p.add_argument("--mode", choices=("strict", "flag", "drop"), default="drop",
                   help="what to do with rows that have problems (default: drop and report)")
    p.add_argument("--salt", default=None, help="pseudonym salt (default: $HICUR_PSEUDONYM_SALT or random)")
    p.add_argument("--deepsurv-seeds", type=int, default=3, help="DeepSurv ensemble size")
    p.set_defaults(func=report_survival)


def report_survival(args: argparse.Namespace) -> int:
    """Run :func:`hicur_monai.survival.workflow.evaluate` from parsed arguments."""
    from hicur_monai.data.clinical import ClinicalTableError
    from hicur_monai.survival.workflow import evaluate

    try:
        res = evaluate(args.table, args.out, endpoints=args.endpoints, models=args.models.split(","),
                       covariates=args.covariates.split(",") if args.covariates else None,
                       deepsurv={"n_seeds": args.deepsurv_seeds}, image_features=args.image_features,
                       n_folds=args.folds, n_boot=args.boot, n_boot_calibration=args.boot_calibration,
                       seed=args.seed, truth=args.truth, mode=args.mode, salt=args.salt,
                       hcmae_encoder=args.hcmae_encoder, vlm_checkpoint=args.vlm_checkpoint,
                       mri_datalist=args.mri_datalist or args.table.resolve().parent.parent / "datalist.json")
    except (ClinicalTableError, FileNotFoundError, ValueError, KeyError) as err:
        print(f"hicur report survival: {err}")
        return 2
    for ep, r in res["endpoints"].items():
        line = ", ".join(f"{m} C={v['metrics']['harrell_c']['estimate']:.3f} "
                         f"({v['metrics']['harrell_c']['lo']:.3f}-{v['metrics']['harrell_c']['hi']:.3f})"
                         for m, v in r["models"].items())
        print(f"{ep}: n={r['data']['n']} events={r['data']['events']}: {line}")
    print(f"report: {res['report']}")
    return 0
