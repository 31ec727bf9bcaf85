"""``hicur instructions``: build Stage II instruction data, validate LLaVA files, score the parser."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["add_parser"]


def add_parser(subparsers) -> None:
    """Add ``hicur instructions {build,validate}``."""
    p = subparsers.add_parser("instructions", help="Stage II instruction data (captions, Q&A, held-out sets)")
    sub = p.add_subparsers(dest="instructions_command", metavar="SUBCOMMAND")

    b = sub.add_parser("build", help="reports + images -> LLaVA alignment / instruction / evaluation files",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    b.add_argument("--reports", required=True, type=Path, help="folder of <id>.txt reports (<id>.json sidecars "
                   "may give the patient id)")
    b.add_argument("--images", required=True, type=Path, help="folder of <id>.png/.jpg images")
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
    b.set_defaults(func=_build)

    v = sub.add_parser("validate", help="check LLaVA conversation files (.json or .jsonl)")
    v.add_argument("files", nargs="+", type=Path)
    v.add_argument("--image-root", type=Path, default=None, help="check that every image exists under this folder")
    v.set_defaults(func=_validate)
    p.set_defaults(func=lambda _a: (p.print_help(), 1)[1])


def _teacher(args):
    from hicur_monai.llm.teacher import make_teacher

    kind = args.teacher
    kwargs: dict = {"max_attempts": args.max_attempts}
    if kind == "rule":
        kwargs["patterns"] = [str(p) for p in args.patterns] or None
    elif kind == "openai":
        kwargs.update(base_url=args.base_url, model=args.model, api_key_env=args.api_key_env,
                      requests_per_minute=args.rpm, timeout=args.timeout,
                      cache_dir=str(args.cache_dir or args.out / "teacher_cache"))
    elif kind.startswith("local:"):
        kwargs["device"] = args.device
    else:
        raise SystemExit(f"hicur instructions build: unknown --teacher {kind!r} (use rule, openai or local:PATH)")
    return make_teacher(kind, **kwargs)


def _build(args) -> int:
    from hicur_monai.data.instructions import build_instruction_data, collect_pairs
    from hicur_monai.data.reports import ReportParser

    parser = ReportParser([str(p) for p in args.patterns] or None)
    pairs, skipped = collect_pairs(args.reports, args.images, parser)
    if args.limit is not None:
        pairs = pairs[: args.limit]
    teacher = _teacher(args)
    summary = build_instruction_data(pairs, teacher, args.out, eval_fraction=args.eval_fraction, n_eval=args.n_eval,
                                     seed=args.seed, image_folder=args.images.resolve(), skipped=skipped,
                                     progress=not args.no_progress, source_kind=args.source_kind,
                                     workers=args.workers,
                                     max_consecutive_failures=args.max_consecutive_failures or None)
    print(f"pairs: {summary['pairs']} (train {summary['train_pairs']}, held-out {summary['eval_pairs']} "
          f"from {summary['eval_patients']} patients)")
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


def _validate(args) -> int:
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
