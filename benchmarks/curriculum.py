"""The curriculum ablation at the benchmark budget: stage I -> II -> III, then the table.

Runs ``hicur curriculum run --budget benchmark`` (the sizes: ``hicur_monai/curriculum/budgets.py``;
the target is at most 45 minutes on 2 CPU cores; measured 41.9 minutes, see docs/curriculum.md)
on the default demo cohort (generated first when ``--data`` holds none), prints the wall time of
every step, the total, and the ablation table with the command that made it. Steps already done
in ``--out`` are skipped (delete the folder for a fresh measurement).

Usage (from the repo root)::

    python benchmarks/curriculum.py --data demo_data --out runs/curriculum_benchmark
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="demo_data", help="the linked cohort (made with the default preset if absent)")
    ap.add_argument("--out", default="runs/curriculum_benchmark")
    ap.add_argument("--budget", default="benchmark", help="the budget (benchmark; tiny for a smoke test)")
    ap.add_argument("--skip", nargs="+", default=[], help="variants not to run (hicur curriculum run --help)")
    args = ap.parse_args(argv)

    from hicur_monai.curriculum import get_budget, run_curriculum

    budget = get_budget(args.budget)
    command = shlex.join(["python", "benchmarks/curriculum.py", *(sys.argv[1:] if argv is None else argv)])
    if not (Path(args.data) / "datalist.json").is_file():
        from hicur_monai.data.demo import generate_demo_cohort

        t0 = time.time()
        generate_demo_cohort(args.data, seed=0, preset="default", progress=False)
        print(f"cohort: generated {args.data} in {time.time() - t0:.0f} s")
    t0 = time.time()
    outcomes = run_curriculum(args.data, args.out, budget, skip=args.skip, command=command)
    total = time.time() - t0
    print(f"\n{'step':<32} {'status':<8} wall s")
    for o in outcomes:
        print(f"{o.name:<32} {o.status:<8} {o.seconds:7.0f}")
    cpu = platform.processor() or platform.machine()
    print(f"total: {total:.0f} s ({total / 60:.1f} min) on {os.cpu_count()} CPU(s), {cpu}"
          f"; budget {budget.name}: {budget.describe()}")
    print(f"command: {command}\ntable: {Path(args.out) / 'curriculum.md'}, chart: {Path(args.out) / 'curriculum.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
