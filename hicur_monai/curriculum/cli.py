"""``hicur curriculum``: the whole curriculum in order, and its ablation table.

``hicur curriculum run --data D --out O --budget demo|benchmark|tiny`` runs stage I -> II -> III
(steps already done are skipped; ``--dry-run`` prints the commands), then writes
``O/curriculum.md`` and ``O/curriculum.png``. ``hicur curriculum table --out O`` writes them again
from the result files.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Mapping
from typing import Any

from hicur_monai.curriculum.budgets import BUDGETS
from hicur_monai.curriculum.table import PROGNOSIS_SETS, SEGMENTATION_VARIANTS

__all__ = ["add_parser", "run_command"]

#: what ``--skip`` accepts: segmentation variants and prognosis feature sets
SKIPPABLE = (*SEGMENTATION_VARIANTS, *PROGNOSIS_SETS)


def run_command(data: str, out: str, budget: str, skip: list[str] | None = None) -> str:
    """The canonical ``hicur curriculum run`` line for these arguments (the table's header)."""
    cmd = ["hicur", "curriculum", "run", "--data", data, "--out", out, "--budget", budget]
    return shlex.join(cmd + (["--skip", *skip] if skip else []))


def _run(args: argparse.Namespace) -> int:
    from hicur_monai.curriculum.budgets import get_budget
    from hicur_monai.curriculum.runner import run_curriculum

    command = run_command(args.data, args.out, args.budget, args.skip)
    try:
        run_curriculum(args.data, args.out, get_budget(args.budget), skip=args.skip or (), command=command,
                       dry_run=args.dry_run)
    except (FileNotFoundError, RuntimeError, ValueError) as e:
        print(f"hicur curriculum run: {e}\n(steps already done are kept; the same command resumes after them)",
              file=sys.stderr)
        return 1
    return 0


def _table(args: argparse.Namespace) -> int:
    from hicur_monai.curriculum.budgets import get_budget
    from hicur_monai.curriculum.table import read_manifest, write_ablation

    manifest: Mapping[str, Any]
    if args.budget:  # results of the stage commands run by hand: no manifest
        manifest = {"budget": {"name": args.budget}, "command": args.command or "", "skipped": args.skip or []}
    else:
        manifest = read_manifest(args.out)
    name = manifest["budget"]["name"]
    line = get_budget(name).describe() if name in BUDGETS else ""
    md, png = write_ablation(args.out, name, manifest.get("command", ""), manifest.get("skipped", ()), line)
    print(md.read_text(encoding="utf-8"))
    print(f"chart: {png}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("curriculum", help="the HiCur curriculum in order (stage I -> II -> III) and its ablation table")
    s = p.add_subparsers(dest="curriculum_cmd", required=True)
    r = s.add_parser("run", help="run every stage in order (done steps are skipped), then the table + chart")
    r.add_argument("--data", default="demo_data", help="the linked cohort (hicur demo-data)")
    r.add_argument("--out", default="demo_output", help="output folder (one sub-folder per stage)")
    r.add_argument("--budget", default="demo", choices=list(BUDGETS),
                   help="sizes: tiny (CI), demo (make demo), benchmark (benchmarks/curriculum.py)")
    r.add_argument("--skip", nargs="+", choices=SKIPPABLE, metavar="VARIANT",
                   help=f"variants not to run (shown as 'not run'): {', '.join(SKIPPABLE)}")
    r.add_argument("--dry-run", action="store_true", help="print the steps' commands; run nothing")
    r.set_defaults(func=_run)
    t = s.add_parser("table", help="(re)write curriculum.md + curriculum.png from a run's result files")
    t.add_argument("--out", default="demo_output", help="the run's output folder")
    t.add_argument("--budget", choices=list(BUDGETS),
                   help="the budget the results were made at, for results of stage commands run by hand "
                        "(default: read from the run's curriculum.json)")
    t.add_argument("--command", help="with --budget: the command(s) that made the results, for the header")
    t.add_argument("--skip", nargs="+", choices=SKIPPABLE, metavar="VARIANT", help="with --budget: variants not run")
    t.set_defaults(func=_table)
