"""``hicur instructions``: build Stage II instruction data, validate LLaVA files.

The Q&A teacher lives a layer above this package (:mod:`hicur_monai.llm`): the command gets
it from a *teacher factory* (``args -> teacher``) that its caller passes to :func:`add_parser`;
:mod:`hicur_monai.llm.teacher_cli` wires the real one for ``hicur``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "collect_all_pairs"]


def add_parser(
    subparsers: argparse._SubParsersAction, teacher_factory: Callable[[argparse.Namespace], Any] | None = None
) -> None:
    """Add ``hicur instructions {build,validate}``.

    Args:
        subparsers: the ``hicur`` sub-parsers.
        teacher_factory: builds the teacher from the parsed arguments (``--teacher`` etc.);
            ``None``: ``build`` says that no teacher is available.
    """
    p = subparsers.add_parser("instructions", help="Stage II instruction data (captions, Q&A, held-out sets)")
    sub = p.add_subparsers(dest="instructions_command", metavar="SUBCOMMAND")

    b = sub.add_parser("build", help="reports + images -> LLaVA alignment / instruction / evaluation files",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    b.add_argument("--reports", required=True, type=Path, action="append",
                   help="folder of <id>.txt reports (<id>.json sidecars may give the patient id); give --reports "
                   "and --images once per modality, in the same order")
    b.add_argument("--images", required=True, type=Path, action="append",
                   help="folder of <id>.png/.jpg endoscopy images, or of MRI study folders (<study>/T1,T2,T1C"
                   ".nii.gz + mask.nii.gz: a representative slice per sequence is exported)")
    b.add_argument("--out", required=True, type=Path, help="output folder (a rerun resumes)")
    b.add_argument("--teacher", default="rule", help="rule | openai | local:PATH (a transformers model folder)")
    b.add_argument("--patterns", type=Path, nargs="*", default=[], help="extra report-pattern YAML files")
    b.add_argument("--source-kind", choices=["report", "caption"], default="report")
    b.add_argument("--eval-fraction", type=float, default=0.1, help="share of patients held out for evaluation")
    b.add_argument("--n-eval", type=int, default=None, help="number of held-out patients (overrides the fraction)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--max-attempts", type=int, default=3, help="teacher tries per pair before a recorded failure")
    b.add_argument("--limit", type=int, default=None, help="use only the first N pairs (trial runs)")
    b.add_argument("--workers", type=int, default=1, help="concurrent teacher requests (for --teacher openai)")
    b.add_argument("--max-consecutive-failures", type=int, default=50,
                   help="stop (keeping all work) after this many teacher failures in a row; 0: never")
    g = b.add_argument_group("openai teacher")
    g.add_argument("--base-url", default=None, help="endpoint root incl. /v1 (default $OPENAI_BASE_URL)")
    g.add_argument("--model", default=None, help="model name for the endpoint")
    g.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    g.add_argument("--rpm", type=float, default=None, help="requests per minute limit")
    g.add_argument("--timeout", type=float, default=None, help="seconds per request")
    g.add_argument("--cache-dir", type=Path, default=None, help="response cache (default OUT/teacher_cache)")
    g2 = b.add_argument_group("local teacher")
    g2.add_argument("--device", default=None, help="torch device for local:PATH")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.set_defaults(func=_build, teacher_factory=teacher_factory)

    v = sub.add_parser("validate", help="check LLaVA conversation files (.json or .jsonl)")
    v.add_argument("files", nargs="+", type=Path)
    v.add_argument("--image-root", type=Path, default=None, help="check that every image exists under this folder")
    v.set_defaults(func=_validate)
    p.set_defaults(func=lambda _a: (p.print_help(), 1)[1])


def collect_all_pairs(reports: list[Path], images: list[Path], out: Path,
                      patterns: list[str] | None = None) -> tuple[list[Any], list[dict[str, str]], Path | None]:
    """Pairs of every ``(reports, images)`` folder pair: endoscopy images or MRI study folders.

    Returns:
        ``(pairs, skipped, endoscopy image folder or None)``.

    Raises:
        ValueError: unequal numbers of folders, or two endoscopy image folders (records hold
            paths relative to one image folder).
    """
    from hicur_monai.data.instructions import collect_pairs
    from hicur_monai.data.mri_instructions import collect_mri_pairs, is_mri_folder
    from hicur_monai.data.reports import ReportParser

    if len(reports) != len(images):
        raise ValueError(f"--reports given {len(reports)} times but --images {len(images)} times; give them in pairs")
    pairs: list[Any] = []
    skipped: list[dict[str, str]] = []
    endoscopy: Path | None = None
    for rep, img in zip(reports, images):
        if img.is_dir() and is_mri_folder(img):
            got, skip = collect_mri_pairs(rep, img, out)
        else:
            if endoscopy is not None:
                raise ValueError(f"--images {img}: a second endoscopy image folder (first: {endoscopy}); use one")
            endoscopy = img
            got, skip = collect_pairs(rep, img, ReportParser(patterns or None))
        pairs += got
        skipped += skip
    return pairs, skipped, endoscopy


def _build(args: argparse.Namespace) -> int:
    from hicur_monai.data.instructions import build_instruction_data

    if args.teacher_factory is None:
        raise SystemExit("hicur instructions build: no teacher factory was wired to this command")
    try:
        pairs, skipped, endoscopy = collect_all_pairs(args.reports, args.images, args.out,
                                                      [str(p) for p in args.patterns])
    except ValueError as err:
        raise SystemExit(f"hicur instructions build: {err}") from None
    if args.limit is not None:
        pairs = pairs[: args.limit]
    teacher = args.teacher_factory(args)
    image_folder = (endoscopy or args.images[0]).resolve()
    summary = build_instruction_data(pairs, teacher, args.out, eval_fraction=args.eval_fraction, n_eval=args.n_eval,
                                     seed=args.seed, image_folder=image_folder, skipped=skipped,
                                     progress=not args.no_progress, source_kind=args.source_kind,
                                     workers=args.workers,
                                     max_consecutive_failures=args.max_consecutive_failures or None)
    print(f"pairs: {summary['pairs']} (train {summary['train_pairs']}, held-out {summary['eval_pairs']} "
          f"from {summary['eval_patients']} patients)"
          + (f"; by modality {summary['pairs_by_modality']}" if len(summary["pairs_by_modality"]) > 1 else ""))
    print(f"alignment: {summary['alignment_brief']} brief, {summary['alignment_detailed']} detailed")
    print(f"Q&A: {summary['qa_pairs']} pairs, {summary['qa_rounds']} rounds "
          f"{summary['qa_rounds_histogram']} ({summary['qa_resumed']} already done before this run)")
    print(f"evaluation: {summary['eval_conversation']} conversation questions, "
          f"{summary['eval_detailed']} detailed-description questions")
    print(f"failures: {summary['failures']} {summary['failures_by_reason'] or ''}".rstrip()
          + (f" -> {args.out / 'qa_failures.jsonl'}" if summary["failures"] else ""))
    if summary["skipped"]:
        print(f"skipped files: {len(summary['skipped'])} {summary['skipped_by_reason']} (see summary.json)")
    print(f"written to {args.out}")
    if summary["aborted"]:
        print(f"ABORTED: {summary['aborted']}", file=sys.stderr)
        return 2
    return 0


def _validate(args: argparse.Namespace) -> int:
    from hicur_monai.data.instructions import validate_llava_file

    bad = 0
    for f in args.files:
        errors = validate_llava_file(f, args.image_root)
        if errors:
            bad += 1
            for e in errors[:50]:
                print(e, file=sys.stderr)
            if len(errors) > 50:
                print(f"{f}: ... {len(errors) - 50} more problems", file=sys.stderr)
        else:
            n = sum(1 for _ in f.open()) if f.suffix == ".jsonl" else len(json.loads(f.read_text()))
            print(f"{f}: OK ({n} records)")
    return 1 if bad else 0
