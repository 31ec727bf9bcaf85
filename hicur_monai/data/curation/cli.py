"""``hicur curate SRC... --out DIR`` and ``hicur curate merge --out DIR``."""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["add_parser", "run_curate", "run_merge"]

_EPILOG = """\
examples:
  HICUR_CURATION_SALT=... hicur curate exports/ --out curated --workers 8
  hicur curate demo_data --out curated --modality-map demo --salt-file salt.txt
  # cluster array job (task id 0..15), then once:  hicur curate merge --out curated
  hicur curate exports/ --out curated --shard $SLURM_ARRAY_TASK_ID/16 --resume --salt-file salt.txt
"""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--near-threshold", type=int, default=4,
                   help="pHash Hamming distance of near duplicates (default 4)")
    p.add_argument("--split", default="0.8,0.1,0.1", help="train,val,test patient fractions (default 0.8,0.1,0.1)")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "curate", help="curate image folders into a de-identified, de-duplicated training set",
        description="Curate DICOM / NIfTI / NRRD / PNG / JPEG folders into 2D images (NPY or PNG) and a manifest. "
                    "`hicur curate merge --out DIR` joins the manifests of --shard runs.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sources", nargs="+", metavar="SRC", help="folders or files to curate (or: merge)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--modality-map", default=None, metavar="RULES",
                   help="rules file (YAML), or the name of a packaged one (demo)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1: in this process)")
    p.add_argument("--shard", default=None, metavar="i/n", help="process the i-th (0-based) of n deterministic subsets")
    p.add_argument("--resume", action="store_true", help="continue a killed run in --out")
    p.add_argument("--salt-file", default=None, help="file holding the pseudonymisation salt "
                                                     "(else $HICUR_CURATION_SALT)")
    p.add_argument("--min-size", type=int, default=32, help="smallest accepted in-plane side in pixels (default 32)")
    p.add_argument("--redact-source-paths", action="store_true",
                   help="write keyed ids instead of source paths (when folder names carry identifiers)")
    p.add_argument("--image-format", choices=("npy", "png"), default="npy",
                   help="output images: uncompressed NPY (default; fastest) or PNG (smaller, ~10x the CPU per image)")
    p.add_argument("--keep-dicom-header", action="store_true",
                   help="store the PS3.15-de-identified DICOM header (DICOM JSON) beside each image "
                        "(<image>.dicom.json; a text chunk of PNGs)")
    p.add_argument("--follow-external-links", action="store_true",
                   help="follow symbolic links whose target lies outside their SRC (default: an outside_source row)")
    p.add_argument("--max-decoded-mb", type=float, default=None, metavar="MB",
                   help="largest decoded size of one file, voxels x channels x 4 bytes, checked from its header "
                        "before decoding (default 512: a 512 x 512 x 512 volume); larger files get a too_large row")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _common(p)
    p.set_defaults(func=_dispatch)


def _split(text: str) -> tuple[float, float, float]:
    try:
        a, b, c = (float(x) for x in text.split(","))
    except ValueError:
        raise SystemExit(f"hicur curate: --split must be three comma-separated fractions, got {text!r}") from None
    return a, b, c


def _dispatch(args: argparse.Namespace) -> int:
    if args.sources and args.sources[0] == "merge":
        return run_merge(args)
    return run_curate(args)


def run_curate(args: argparse.Namespace) -> int:
    """Run ``hicur curate`` from parsed arguments."""
    from hicur_monai.data.curation.deid import read_salt
    from hicur_monai.data.curation.pipeline import curate

    try:
        salt = read_salt(args.salt_file)
        summary = curate(args.sources, args.out, salt=salt, rules=args.modality_map, workers=args.workers,
                         shard=args.shard, resume=args.resume, near_threshold=args.near_threshold,
                         split=_split(args.split), min_size=args.min_size,
                         redact_source_paths=args.redact_source_paths, progress=not args.no_progress,
                         image_format=args.image_format, keep_dicom_header=args.keep_dicom_header,
                         follow_external_links=args.follow_external_links,
                         **({} if args.max_decoded_mb is None else {"max_decoded_mb": args.max_decoded_mb}))
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"hicur curate: {err}", file=sys.stderr)
        return 2
    print(summary.pop("table"))
    print(f"manifest: {summary['manifest']}")
    if "next" in summary:
        print(summary["next"])
    return 0


def run_merge(args: argparse.Namespace) -> int:
    """Run ``hicur curate merge`` (extra positional arguments are shard manifests)."""
    from hicur_monai.data.curation.pipeline import merge

    try:
        summary = merge(args.out, manifests=args.sources[1:] or None, near_threshold=args.near_threshold,
                        split=_split(args.split))
    except (ValueError, FileNotFoundError) as err:
        print(f"hicur curate merge: {err}", file=sys.stderr)
        return 2
    print(summary.pop("table"))
    print(f"manifest: {summary['manifest']} ({summary['merged_shards']} shards)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps({"usage": "hicur curate --help"}))
