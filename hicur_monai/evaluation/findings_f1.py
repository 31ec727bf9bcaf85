"""Finding-level precision / recall / F1 of generated reports (the clinical-efficacy measure).

A report is reduced to its findings grid (region x finding -> ``present`` / ``uncertain`` /
``absent``; :mod:`hicur_monai.data.nasopharynx`), by the region parser for generated text and
from the ``.json`` sidecar for the ground truth. A cell is *positive* when its status is
``present`` or ``uncertain`` (a hedged finding is still asserted). Per (region, finding) cell
over all images: TP / FP / FN, precision, recall, F1. **Micro** F1 pools the counts of every
cell; **macro** F1 is the mean F1 over the cells that have at least one positive in the
ground truth (the same cells for every predictor, so the figures compare).

Two image-blind baselines, both fitted on the *training* split, give the score a model reaches
without looking at the image:

* **majority**: the most frequent status of each cell (ties: ``absent``). When no finding is
  present in more than half of the images it predicts "absent" everywhere (F1 0).
* **constant**: the one report that scores best on the training split: every cell whose
  training prevalence reaches a threshold, the threshold chosen for the best micro F1 there.
  A model that only learned the typical report (e.g. "a mass on the posterior wall") ties with it;
  beating it needs the image.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from hicur_monai.data.nasopharynx import FINDINGS, MAIN_REGIONS

__all__ = ["PREDICTORS", "Grid", "cells", "constant_grid", "is_positive", "majority_grid", "score_grids",
           "markdown_table"]

#: the scored predictors of a findings evaluation: the model, then the two image-blind baselines
PREDICTORS = ("model", "majority", "constant")

#: region -> finding -> status
Grid = Mapping[str, Mapping[str, str]]


def cells(regions: Sequence[str] = MAIN_REGIONS, findings: Sequence[str] = FINDINGS) -> list[tuple[str, str]]:
    """The scored (region, finding) cells, walls first."""
    return [(r, f) for r in regions for f in findings]


def is_positive(grid: Grid, region: str, finding: str) -> bool:
    """Whether ``grid`` asserts ``finding`` in ``region`` (present or uncertain)."""
    return grid.get(region, {}).get(finding, "absent") in ("present", "uncertain")


def majority_grid(train: Sequence[Grid], regions: Sequence[str] = MAIN_REGIONS,
                  findings: Sequence[str] = FINDINGS) -> dict[str, dict[str, str]]:
    """Most frequent status per cell over ``train`` (ties and an empty ``train``: ``absent``)."""
    out: dict[str, dict[str, str]] = {r: {} for r in regions}
    for r, f in cells(regions, findings):
        counts = Counter(g.get(r, {}).get(f, "absent") for g in train)
        best = max(counts.values(), default=0)
        top = sorted(s for s, n in counts.items() if n == best)
        out[r][f] = "absent" if not top or "absent" in top else top[0]
    return out


def constant_grid(train: Sequence[Grid], regions: Sequence[str] = MAIN_REGIONS,
                  findings: Sequence[str] = FINDINGS) -> dict[str, dict[str, str]]:
    """The single report with the best micro F1 on ``train``: the cells at or above a prevalence threshold.

    Each distinct training prevalence is tried as the threshold (and "nothing present"); the
    best micro F1 wins, ties going to the higher threshold (the shorter report).
    """
    absent = {r: {f: "absent" for f in findings} for r in regions}
    if not train:
        return absent
    prevalence = {(r, f): sum(is_positive(g, r, f) for g in train) / len(train) for r, f in cells(regions, findings)}
    best, best_f1 = absent, 0.0
    for t in sorted({p for p in prevalence.values() if p > 0}, reverse=True):
        grid = {r: {f: "present" if prevalence[r, f] >= t else "absent" for f in findings} for r in regions}
        f1 = score_grids([grid] * len(train), train, regions, findings)["micro_f1"]
        if f1 > best_f1:
            best, best_f1 = grid, f1
    return best


def _prf(tp: int, fp: int, fn: int) -> dict[str, float]:
    return {"precision": tp / (tp + fp) if tp + fp else 0.0, "recall": tp / (tp + fn) if tp + fn else 0.0,
            "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0}


def score_grids(predicted: Sequence[Grid], truth: Sequence[Grid], regions: Sequence[str] = MAIN_REGIONS,
                findings: Sequence[str] = FINDINGS) -> dict[str, Any]:
    """Score predicted grids against the ground truth (same order).

    Returns:
        ``{"micro_f1", "macro_f1", "micro_precision", "micro_recall", "per_finding": {"region/finding":
        {"precision", "recall", "f1", "tp", "fp", "fn", "support"}}, "macro_cells": int}``.

    Raises:
        ValueError: the two lists differ in length or are empty.
    """
    if len(predicted) != len(truth):
        raise ValueError(f"{len(predicted)} predicted grids but {len(truth)} ground truths")
    if not truth:
        raise ValueError("nothing to score: no images")
    per: dict[str, dict[str, Any]] = {}
    total = [0, 0, 0]
    for r, f in cells(regions, findings):
        tp = fp = fn = 0
        for p, t in zip(predicted, truth):
            ps, ts = is_positive(p, r, f), is_positive(t, r, f)
            tp, fp, fn = tp + (ps and ts), fp + (ps and not ts), fn + (ts and not ps)
        per[f"{r}/{f}"] = {**_prf(tp, fp, fn), "tp": tp, "fp": fp, "fn": fn, "support": tp + fn}
        total = [total[0] + tp, total[1] + fp, total[2] + fn]
    micro = _prf(*total)
    scored = [v["f1"] for v in per.values() if v["support"] > 0]
    return {"micro_f1": micro["f1"], "macro_f1": sum(scored) / len(scored) if scored else 0.0,
            "micro_precision": micro["precision"], "micro_recall": micro["recall"],
            "macro_cells": len(scored), "per_finding": per}


def markdown_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """One Markdown table: a row per predictor (micro/macro F1), then F1 per cell with support."""
    names = list(results)
    lines = ["| predictor | micro P | micro R | micro F1 | macro F1 |", "|---|---|---|---|---|"]
    for n in names:
        s = results[n]
        lines.append(f"| {n} | {s['micro_precision']:.3f} | {s['micro_recall']:.3f} | {s['micro_f1']:.3f} "
                     f"| {s['macro_f1']:.3f} |")
    lines += ["", "| region/finding | support | " + " | ".join(f"{n} F1" for n in names) + " |",
              "|---|---|" + "---|" * len(names)]
    first = results[names[0]]["per_finding"]
    for cell, v in first.items():
        if v["support"] or any(results[n]["per_finding"][cell]["fp"] for n in names):
            lines.append(f"| {cell} | {v['support']} | "
                         + " | ".join(f"{results[n]['per_finding'][cell]['f1']:.3f}" for n in names) + " |")
    return "\n".join(lines)
