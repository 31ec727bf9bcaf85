"""Report parser precision / recall / F1 per finding type, on the demo cohort and hand-written reports.

Usage (from the repository root)::

    python benchmarks/report_parsing.py                      # fresh demo reports (300, seed 0)
    python benchmarks/report_parsing.py --data demo_data     # an existing demo cohort
    python benchmarks/report_parsing.py --no-demo            # hand-written sets only
    python benchmarks/report_parsing.py --no-demo --handwritten tests/data/reports_heldout.yaml
    python benchmarks/report_parsing.py --json parsing.json  # also write the figures

Ground truth: the demo cohort's ``reports/<id>.json`` sidecars (written by the report
generator, which shares no wording with the parser's YAML patterns) and the hand-written
reports in ``tests/data/`` (phrased independently of both): ``reports_handwritten.yaml``,
``reports_tuning.yaml`` (the extension / several-walls / back-reference / lymphoid
hyperplasia reports the patterns were tuned on) and ``reports_heldout.yaml`` (reports of
the same kinds written after the rules were fixed and never tuned on).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import yaml

from hicur_monai.data.nasopharynx import FINDINGS, MAIN_REGIONS
from hicur_monai.data.reports import ReportParser, score_findings

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
HANDWRITTEN = [DATA / "reports_handwritten.yaml", DATA / "reports_tuning.yaml", DATA / "reports_heldout.yaml"]


def _fmt(x: float) -> str:
    return "  n/a" if isinstance(x, float) and math.isnan(x) else f"{x:5.3f}"


def print_table(title: str, scores: dict) -> None:
    print(f"\n{title}")
    print(f"{'finding':<14}{'status':<11}{'support':>8}{'precision':>11}{'recall':>8}{'F1':>7}"
          f"{'tp':>6}{'fp':>5}{'fn':>5}")
    keys = [(f, "present") for f in FINDINGS] + [(f + "?", "uncertain") for f in FINDINGS] + \
        [("negated", "absent"), ("smooth", "smooth")]
    for key, status in keys:
        s = scores.get(key)
        if not s or (s["support"] == 0 and s["fp"] == 0):
            continue
        print(f"{key.rstrip('?'):<14}{status:<11}{s['support']:>8}{_fmt(s['precision']):>11}{_fmt(s['recall']):>8}"
              f"{_fmt(s['f1']):>7}{s['tp']:>6}{s['fp']:>5}{s['fn']:>5}")
    if "impression" in scores:
        print(f"impression category accuracy: {_fmt(scores['impression']['accuracy'])} "
              f"(n={scores['impression']['n']})")


def demo_scores(parser: ReportParser, root: Path) -> tuple[dict, float, int]:
    reports = sorted((root / "reports").glob("*.txt"))
    if not reports:
        raise SystemExit(f"no reports under {root / 'reports'}")
    texts = [p.read_text(encoding="utf-8") for p in reports]
    truths = [json.loads(p.with_suffix(".json").read_text(encoding="utf-8")) for p in reports]
    t0 = time.perf_counter()
    parsed = [parser.parse(t) for t in texts]
    rate = len(texts) / (time.perf_counter() - t0)
    return score_findings(parsed, truths), rate, len(texts)


def handwritten_scores(parser: ReportParser, path: Path) -> tuple[dict, dict]:
    cases = yaml.safe_load(path.read_text(encoding="utf-8"))
    parsed, truths = [], []
    neg_hit = neg_total = exact = 0
    failed = []
    for c in cases:
        grid = {r: {f: "absent" for f in FINDINGS} for r in MAIN_REGIONS}
        for status in ("present", "uncertain"):
            for item in c.get(status) or []:
                r, f = item.split(":")
                grid[r][f] = status
        p = parser.parse(c["text"])
        parsed.append(p)
        truths.append({"findings": grid, "impression": {"category": c["impression"]}})
        want_neg = {tuple(x.split(":")) for x in c.get("negated") or []}
        neg_total += len(want_neg)
        neg_hit += len(want_neg & set(p.negated))
        ok = all(p.findings[r] == grid[r] for r in MAIN_REGIONS) and want_neg <= set(p.negated) \
            and set(c.get("smooth") or []) <= set(p.smooth) and p.impression["category"] == c["impression"]
        exact += ok
        if not ok:
            failed.append(c["id"])
    extra = {"reports": len(cases), "fully_correct": exact, "failed": failed,
             "negation_recall": neg_hit / neg_total if neg_total else float("nan"), "negations": neg_total}
    return score_findings(parsed, truths), extra


def _label(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def report_handwritten(parser: ReportParser, path: Path, show_misses: bool = False) -> dict:
    """Score one hand-written set, print its table (and, if asked, every wrong cell) and return the figures."""
    hw, extra = handwritten_scores(parser, path)
    print_table(f"hand-written reports: {extra['reports']} ({_label(path)})", hw)
    print(f"explicit negations found: {_fmt(extra['negation_recall'])} of {extra['negations']}")
    print(f"reports read fully correctly: {extra['fully_correct']}/{extra['reports']}"
          + (f" (not: {', '.join(extra['failed'])})" if extra["failed"] else ""))
    if show_misses:
        for c in yaml.safe_load(path.read_text(encoding="utf-8")):
            p = parser.parse(c["text"])
            got = {f"{r}:{f}" for r, f in p.present() if r in MAIN_REGIONS}
            want = set(c.get("present") or [])
            if got != want:
                print(f"  {c['id']}: missed {sorted(want - got)}, extra {sorted(got - want)}")
    return {"scores": hw, **extra}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=None, help="demo cohort folder (default: generate one)")
    ap.add_argument("--n", type=int, default=300, help="reports to generate when --data is not given")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-demo", action="store_true", help="skip the demo cohort (hand-written sets only)")
    ap.add_argument("--handwritten", type=Path, nargs="*", default=HANDWRITTEN,
                    help="hand-written report sets (YAML); default: every set under tests/data")
    ap.add_argument("--show-misses", action="store_true", help="list the wrong (wall, finding) cells per report")
    ap.add_argument("--patterns", type=Path, nargs="*", default=[], help="extra pattern YAML files")
    ap.add_argument("--json", type=Path, default=None, help="write all figures to this file")
    args = ap.parse_args(argv)

    parser = ReportParser([str(p) for p in args.patterns] or None)
    out: dict = {"patterns": parser.patterns.sources}
    if not args.no_demo:
        with tempfile.TemporaryDirectory() as tmp:
            root = args.data
            if root is None:
                from hicur_monai.data.demo.endoscopy import generate_endoscopy

                root = Path(tmp)
                t0 = time.perf_counter()
                generate_endoscopy(root, args.n, seed=args.seed, write_images=False)
                print(f"generated {args.n} demo reports (seed {args.seed}) in {time.perf_counter() - t0:.1f}s")
            scores, rate, n = demo_scores(parser, root)
        print_table(f"demo cohort: {n} reports ({root if args.data else 'generated'}); parsing {rate:.0f} reports/s",
                    scores)
        out["demo"] = {"reports": n, "reports_per_s": rate, "scores": scores}
    for path in args.handwritten:
        if not path.is_file():
            if path.resolve() not in HANDWRITTEN:
                raise SystemExit(f"hand-written report set not found: {path}")
            continue
        out.setdefault("handwritten", {})[_label(path)] = report_handwritten(parser, path, args.show_misses)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str), encoding="utf-8")
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
