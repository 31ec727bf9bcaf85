"""``hicur judge ...`` and ``hicur rate ...``: the Stage II evaluation commands.

::

    hicur judge run --items items.jsonl --answers answers/*.jsonl --judge rubric \\
        --model openai --model-arg base_url=http://127.0.0.1:8000/v1 --model-arg model=gpt-4o --out judgments.jsonl
    hicur judge reference --items items.jsonl --model openai --model-arg model=gpt-4-turbo --out items_ref.jsonl
    hicur judge aggregate --judgments judgments.jsonl --physicians scores.csv --items items.jsonl --out report/
    hicur judge demo --out demo_output/evaluation

    hicur rate init --db study.sqlite --items items.jsonl --answers answers/*.jsonl --images images/
    hicur rate add-rater --db study.sqlite dr_lee            # asks for the password twice
    hicur rate serve --db study.sqlite                       # http://127.0.0.1:7860
    hicur rate export --db study.sqlite --out scores.csv
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import sys
from typing import Any

__all__ = ["add_parser", "parse_kv"]

logger = logging.getLogger(__name__)


def parse_kv(pairs: list[str] | None) -> dict[str, Any]:
    """``["a=1", "b=text"]`` -> ``{"a": 1, "b": "text"}`` (values read as JSON when they parse).

    Raises:
        ValueError: for an entry without ``=``.
    """
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"expected KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _friendly(fn: Any) -> Any:
    """Turn input errors into one clear line and exit code 2 instead of a traceback."""

    def wrapper(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except (ValueError, FileNotFoundError, FileExistsError, KeyError) as err:
            print(f"hicur: {err}", file=sys.stderr)
            return 2

    wrapper.__name__ = fn.__name__
    return wrapper


@_friendly
def _judge_run(args: argparse.Namespace) -> int:
    from hicur_monai.evaluation.judge import run_judge
    from hicur_monai.evaluation.records import read_answers, read_items
    from hicur_monai.registry import create

    items = read_items(args.items)
    answers = read_answers(args.answers, items)
    kwargs: dict[str, Any] = {}
    if args.judge != "lexical":
        if not args.model:
            print("hicur judge run: --model NAME is required for the rubric and llava_med judges "
                  "(an LLM backend name, e.g. openai or transformers)", file=sys.stderr)
            return 2
        kwargs = {"model": args.model, "model_kwargs": parse_kv(args.model_arg), "retries": args.retries,
                  "prompts_dir": args.prompts_dir, "seed": args.seed}
        if args.temperature is not None:
            kwargs["generation"] = {"temperature": args.temperature, "max_new_tokens": args.max_new_tokens}
    judge = create("judges", args.judge, **kwargs)
    records = run_judge(judge, items, answers, args.out, runs=args.runs, resume=not args.no_resume,
                        workers=args.workers)
    missing = sum(r.get("status") != "ok" for r in records)
    print(f"{args.out}: {len(records)} judgments ({missing} missing)")
    return 0


@_friendly
def _judge_reference(args: argparse.Namespace) -> int:
    from hicur_monai.evaluation.records import read_items
    from hicur_monai.evaluation.reference import write_references
    from hicur_monai.llm.base import load_chat_model

    items = read_items(args.items, require_reference=False)
    model = load_chat_model(args.model, **parse_kv(args.model_arg))
    write_references(model, items, args.out, overwrite=args.overwrite)
    print(f"wrote {args.out}: {len(items)} items with references by {getattr(model, 'name', args.model)}")
    return 0


@_friendly
def _judge_aggregate(args: argparse.Namespace) -> int:
    from hicur_monai.evaluation.aggregate import aggregate

    if not args.judgments and not args.physicians:
        print("hicur judge aggregate: give --judgments, --physicians or both", file=sys.stderr)
        return 2
    criteria = {"criteria": tuple(args.criteria)} if args.criteria else {}
    paths = aggregate(args.out, judgments=args.judgments, physicians=args.physicians, items=args.items,
                      combine=args.combine, n_resamples=args.n_resamples, seed=args.seed, **criteria)
    print(f"report: {paths['report']}")
    return 0


@_friendly
def _judge_demo(args: argparse.Namespace) -> int:
    from hicur_monai.evaluation.demo import run_demo

    paths = run_demo(args.out, n_items=args.items, raters=args.raters, runs=args.runs, seed=args.seed)
    print(f"summary: {paths['summary']}\nreport:  {paths['report']}")
    return 0


@_friendly
def _rate_init(args: argparse.Namespace) -> int:
    from hicur_monai.evaluation.rating.store import RatingStore
    from hicur_monai.evaluation.records import read_answers, read_items

    items = read_items(args.items)
    answers = read_answers(args.answers, items)
    store = RatingStore(args.db)
    store.add_study(items, answers, images_dir=args.images)
    c = store.counts()
    print(f"{args.db}: {c['items']} items, {c['answers']} answers, {c['raters']} raters")
    return 0


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass(f"password for {args.name}: ")
    if getpass.getpass("repeat: ") != first:
        raise ValueError("the two passwords differ")
    return first


@_friendly
def _rate_add_rater(args: argparse.Namespace) -> int:
    from hicur_monai.evaluation.rating.store import RatingStore

    store = RatingStore(args.db, create=False)
    store.add_rater(args.name, _read_password(args), replace=args.reset)
    print(f"{args.db}: rater {args.name!r} {'updated' if args.reset else 'added'}")
    return 0


@_friendly
def _rate_serve(args: argparse.Namespace) -> int:
    from hicur_monai.evaluation.rating.app import serve

    if args.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("serving on %s: the site is reachable from the network; put it behind TLS", args.host)
    serve(args.db, host=args.host, port=args.port)
    return 0


@_friendly
def _rate_export(args: argparse.Namespace) -> int:
    from hicur_monai.evaluation.rating.store import RatingStore

    path = RatingStore(args.db, create=False).export_csv(args.out, audit=args.audit)
    print(f"wrote {path}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``judge`` and ``rate`` to the ``hicur`` command line."""
    judge = subparsers.add_parser("judge", help="LLM-judge scoring and aggregation of model answers")
    _add_judge_actions(judge.add_subparsers(dest="judge_command", metavar="ACTION", required=True))
    rate = subparsers.add_parser("rate", help="the blinded physician rating website")
    _add_rate_actions(rate.add_subparsers(dest="rate_command", metavar="ACTION", required=True))


def _add_judge_actions(jsub: argparse._SubParsersAction) -> None:
    """``hicur judge run|reference|aggregate|demo``."""
    p = jsub.add_parser("run", help="judge answers against reference answers (resumable)")
    p.add_argument("--items", required=True, nargs="+",
                   help="items JSON-lines file(s) (question, caption, reference, kind; or the eval_*.jsonl "
                        "of 'hicur instructions build')")
    p.add_argument("--answers", required=True, nargs="+", help="answers JSON-lines file(s)")
    p.add_argument("--out", required=True, help="judgments JSON-lines (resumed if it exists)")
    p.add_argument("--judge", default="rubric", help="judge registry name: rubric, llava_med, lexical")
    p.add_argument("--model", help="LLM backend registry name for the judge (e.g. openai, transformers)")
    p.add_argument("--model-arg", action="append", metavar="KEY=VALUE", help="backend argument (repeatable)")
    p.add_argument("--runs", type=int, default=3, help="repetitions of every judgment (default 3)")
    p.add_argument("--retries", type=int, default=2, help="extra attempts after an unparseable reply")
    p.add_argument("--workers", type=int, default=1, help="concurrent requests")
    p.add_argument("--temperature", type=float, help="sampling temperature (default 0.7)")
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--prompts-dir", help="folder of replacement prompt files")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-resume", action="store_true", help="fail if --out exists instead of resuming")
    p.set_defaults(func=_judge_run)

    p = jsub.add_parser("reference", help="write reference ('upper bound') answers with a chat model")
    p.add_argument("--items", required=True, help="items JSON-lines (reference may be missing)")
    p.add_argument("--out", required=True, help="items JSON-lines with references")
    p.add_argument("--model", required=True, help="LLM backend registry name (e.g. openai)")
    p.add_argument("--model-arg", action="append", metavar="KEY=VALUE", help="backend argument (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="replace references that exist")
    p.set_defaults(func=_judge_reference)

    p = jsub.add_parser("aggregate", help="tables, agreement, comparisons and an HTML report")
    p.add_argument("--judgments", help="judge JSON-lines")
    p.add_argument("--physicians", help="CSV from 'hicur rate export'")
    p.add_argument("--items", nargs="+", help="items JSON-lines file(s) (question kinds)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--combine", choices=("pooled", "equal"), default="pooled",
                   help="final score: mean of all ratings (pooled) or of judge and physician means (equal)")
    p.add_argument("--n-resamples", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--criteria", nargs="+", metavar="NAME",
                   help="criteria the inputs may hold (default: accuracy completeness reliability safety; "
                        "any other is an error naming its file and line)")
    p.set_defaults(func=_judge_aggregate)

    p = jsub.add_parser("demo", help="offline demo: lexical judge, simulated raters, report")
    p.add_argument("--out", default="demo_output/evaluation")
    p.add_argument("--items", type=int, default=12)
    p.add_argument("--raters", type=int, default=3)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_judge_demo)


def _add_rate_actions(rsub: argparse._SubParsersAction) -> None:
    """``hicur rate init|add-rater|serve|export``."""
    p = rsub.add_parser("init", help="create or extend a study database from items and answers")
    p.add_argument("--db", required=True)
    p.add_argument("--items", required=True, nargs="+")
    p.add_argument("--answers", required=True, nargs="+")
    p.add_argument("--images", help="folder that relative image paths of the items resolve against")
    p.set_defaults(func=_rate_init)

    p = rsub.add_parser("add-rater", help="create a rater account (password asked, stored as a scrypt hash)")
    p.add_argument("--db", required=True)
    p.add_argument("name")
    p.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    p.add_argument("--reset", action="store_true", help="change the password of an existing rater")
    p.set_defaults(func=_rate_add_rater)

    p = rsub.add_parser("serve", help="run the rating website (login required)")
    p.add_argument("--db", required=True)
    p.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.set_defaults(func=_rate_serve)

    p = rsub.add_parser("export", help="write the latest scores (or the audit trail) as CSV")
    p.add_argument("--db", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--audit", action="store_true", help="every submission instead of the latest scores")
    p.set_defaults(func=_rate_export)
