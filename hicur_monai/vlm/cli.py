"""``hicur ask IMAGE "question"`` (route a question and answer chat questions) and ``hicur vlm findings-eval``.

Other stages plug their handler into :data:`TASK_HANDLERS` (``task -> callable(args, route) -> str``);
until one is registered, a routed segmentation or prognosis question says which bundle does it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "TASK_HANDLERS"]

#: task -> handler(args, route) -> text. "chat" is built in; Stage III modules may add theirs.
TASK_HANDLERS: dict[str, Callable[[argparse.Namespace, Any], str]] = {}

def _suggested(task: str, image: Path) -> list[str]:
    """The documented commands that answer ``task`` for ``image`` (training first when its model is missing)."""
    from hicur_monai.bundle import suggested_commands

    try:
        return suggested_commands(task, image)
    except ValueError:
        return []


def _add_vlm(subparsers: argparse._SubParsersAction) -> None:
    """Add ``hicur vlm findings-eval``."""
    v = subparsers.add_parser("vlm", help="Stage II model measurements")
    sub = v.add_subparsers(dest="vlm_command", metavar="SUBCOMMAND")
    f = sub.add_parser("findings-eval", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       help="finding-F1 of generated reports on held-out endoscopy images vs image-blind baselines")
    f.add_argument("--model", required=True, type=Path, help="a saved model folder (bundles/vl_alignment output)")
    f.add_argument("--instructions", required=True, type=Path, help="the folder of 'hicur instructions build'")
    f.add_argument("--data", required=True, type=Path, help="the cohort (endoscopy/ and reports/<id>.json)")
    f.add_argument("--out", required=True, type=Path, help="receives findings_f1.json, .md and generated.jsonl")
    f.add_argument("--limit", type=int, default=None, help="score only the first N held-out images")
    f.add_argument("--max-new-tokens", type=int, default=160)
    f.add_argument("--device", default=None, help="torch device (default: CUDA when available)")
    f.set_defaults(func=_findings_eval)
    v.set_defaults(func=lambda _a: (v.print_help(), 1)[1])


def _findings_eval(args: argparse.Namespace) -> int:
    import shlex

    from hicur_monai.evaluation.findings_f1 import PREDICTORS, markdown_table
    from hicur_monai.vlm.findings_eval import findings_eval

    if not (args.model / "vlm_config.json").is_file():
        print(f"hicur vlm findings-eval: {args.model}: no saved model (vlm_config.json)", file=sys.stderr)
        return 2
    command = "hicur vlm findings-eval " + shlex.join(sys.argv[sys.argv.index("findings-eval") + 1:]
                                                       if "findings-eval" in sys.argv else [])
    try:
        result = findings_eval(args.model, args.instructions, args.data, args.out, limit=args.limit,
                               max_new_tokens=args.max_new_tokens, device=args.device, command=command)
    except (FileNotFoundError, ValueError) as err:
        print(f"hicur vlm findings-eval: {err}", file=sys.stderr)
        return 2
    print(f"finding-F1 on {result['n_images']} held-out endoscopy images "
          f"(image-blind baselines from {result['n_train_images']} training images)\n")
    print(markdown_table({k: result[k] for k in PREDICTORS}))
    print(f"\n{command}\nwritten to {args.out / 'findings_f1.json'}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``hicur ask`` and ``hicur vlm``."""
    p = subparsers.add_parser("ask", help="ask a question about an image (routed to chat, segmentation or prognosis)",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("image", type=Path, help="image file (PNG/JPEG endoscopy frame, DICOM, NIfTI slice)")
    p.add_argument("question", help="the question, in quotes")
    p.add_argument("--model", type=Path, default=Path("runs/vl_alignment/step2/model"),
                   help="a saved vision-language model folder (bundles/vl_alignment output)")
    p.add_argument("--threshold", type=float, default=0.6, help="router similarity threshold")
    p.add_argument("--route-only", action="store_true", help="print the routing decision only")
    p.add_argument("--modality", default="endoscopy", help="image modality (intensity scaling)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--device", default=None, help="torch device (default: CUDA when available)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_ask)
    _add_vlm(subparsers)


def _chat(args: argparse.Namespace, route: Any) -> str:
    from hicur_monai.llm.base import GenerationConfig
    from hicur_monai.networks.vlm import VisionLanguageModel
    from hicur_monai.vlm.data import load_image

    model = VisionLanguageModel.from_pretrained(args.model, device=args.device)
    image = load_image(args.image, model.image_size, args.modality)
    cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p)
    return model.chat(image, args.question, config=cfg)


def _ask(args: argparse.Namespace) -> int:
    from hicur_monai.vlm.router import TaskRouter

    if not args.image.is_file():
        print(f"hicur ask: {args.image}: no such image file", file=sys.stderr)
        return 2
    route = TaskRouter(threshold=args.threshold).route(args.question)
    result: dict[str, Any] = {"task": route.task, "score": round(route.score, 3), "template": route.template,
                              "matched": route.matched}
    if not args.route_only:
        handler = TASK_HANDLERS.get(route.task, _chat if route.task == "chat" else None)
        if handler is None:
            result["answer"] = None
            result["commands"] = _suggested(route.task, args.image)
            result["note"] = f"routed to {route.task}; run from the repository root: " + " && ".join(result["commands"])
        else:
            if route.task == "chat" and not (args.model / "vlm_config.json").is_file():
                print(f"hicur ask: {args.model}: no trained model (vlm_config.json); train bundles/vl_alignment "
                      "or pass --model", file=sys.stderr)
                return 2
            result["answer"] = handler(args, route)
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        print(f"[{route.task}] (similarity {route.score:.2f} to {route.template!r}"
              f"{'' if route.matched else ', below threshold'})")
        if result.get("answer") is not None:
            print(result["answer"])
        elif result.get("note"):
            print(result["note"])
    return 0
