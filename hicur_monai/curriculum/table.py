"""The curriculum's result files -> one Markdown table (``curriculum.md``) and one chart (``curriculum.png``).

Reads, under the run's output folder (schemas: the stage commands' documentation):

* ``segmentation/comparison.json``: ``{variant: {val_mean_dice_3d, dice_3d_T1, dice_3d_T2, dice_3d_T1C,
  val_hd95, coarse_states}}`` (``hicur segment demo``);
* ``prognosis/<set>/metrics.json``: ``endpoints.<ep>.models.<model>.metrics.harrell_c.{estimate,lo,hi}``
  and ``endpoints.<ep>.data.image_feature_columns`` (bundles/npc_prognosis);
* ``findings/findings_f1.json``: ``{n_images, model: {micro_f1, macro_f1}, majority: {...}, constant: {...}}``
  (``hicur vlm findings-eval``).

A variant skipped on purpose is a "not run" cell; a result file missing otherwise is an error
naming the file.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hicur_monai.utils.io import atomic_write_text

__all__ = [
    "SEGMENTATION_VARIANTS",
    "PROGNOSIS_SETS",
    "SEQUENCES",
    "MANIFEST",
    "CurriculumResults",
    "result_paths",
    "load_results",
    "ablation_markdown",
    "ablation_chart",
    "write_ablation",
    "read_manifest",
    "endpoints_and_models",
]

#: segmentation variant -> its label in the table (the names of ``hicur segment demo --models``)
SEGMENTATION_VARIANTS: dict[str, str] = {
    "unet": "MONAI UNet",
    "fusion_standin": "fusion + stand-in states",
    "fusion_vlm": "fusion + VLM states",
    "fusion_vlm_report": "fusion + VLM + report states",
}
#: older names ``hicur segment demo`` still writes
SEGMENTATION_ALIASES = {"unet": "baseline", "fusion_standin": "fusion"}
#: prognosis feature set (output sub-folder) -> its label
PROGNOSIS_SETS: dict[str, str] = {
    "clinical": "clinical only",
    "hcmae": "+ HCMAE image features",
    "hcmae_vlm": "+ HCMAE + coarse states",
}
SEQUENCES = ("T1", "T2", "T1C")
SEG_FIELDS = ("val_mean_dice_3d", *(f"dice_3d_{s}" for s in SEQUENCES), "val_hd95")
ENDPOINT_ORDER = ("ffs", "os", "dmfs")
#: labels of the ``findings_f1.json`` predictors (findings_f1.PREDICTORS) in the table and chart
FINDINGS_LABELS = {"model": "VLM (stage II model)", "majority": "majority-class baseline",
                   "constant": "best constant report (image-blind)"}
#: the run's description, written by the runner
MANIFEST = "curriculum.json"
NOT_RUN = "not run"


@dataclass
class CurriculumResults:
    """What each stage measured; ``None`` marks a variant not run on purpose.

    Attributes:
        segmentation: variant -> the fields of ``comparison.json`` (or ``None``).
        prognosis: feature set -> ``{"n_image_features": int, "c": {endpoint: {model: (est, lo, hi)}}}`` (or ``None``).
        findings: the content of ``findings_f1.json``.
    """

    segmentation: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    prognosis: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    findings: dict[str, Any] = field(default_factory=dict)


def result_paths(out: str | Path) -> dict[str, Any]:
    """Where each stage's result file lies under ``out``."""
    out = Path(out)
    return {"findings": out / "findings" / "findings_f1.json",
            "segmentation": out / "segmentation" / "comparison.json",
            "prognosis": {s: out / "prognosis" / s / "metrics.json" for s in PROGNOSIS_SETS}}


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the {what} result is missing; run its curriculum step "
                                "(hicur curriculum run ... resumes where it stopped) or skip that variant")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e


def _number(path: Path, where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{path}: {where} should be a number, found {value!r}")
    return float(value)


def _segmentation(path: Path, skipped: set[str]) -> dict[str, dict[str, Any] | None]:
    wanted = [v for v in SEGMENTATION_VARIANTS if v not in skipped]
    table = _read_json(path, "stage III segmentation") if wanted else {}
    out: dict[str, dict[str, Any] | None] = {v: None for v in SEGMENTATION_VARIANTS}
    for v in wanted:
        row = table.get(v, table.get(SEGMENTATION_ALIASES.get(v, v)))
        if not isinstance(row, dict):
            raise ValueError(f"{path}: no results for segmentation variant {v!r} (found {sorted(table)})")
        vals = {k: _number(path, f"{v}.{k}", row[k]) for k in SEG_FIELDS if k in row}
        missing = [k for k in SEG_FIELDS if k not in row]
        if missing:
            raise ValueError(f"{path}: variant {v!r} lacks {', '.join(missing)}")
        out[v] = {**vals, "coarse_states": str(row.get("coarse_states", ""))}
    return out


def _prognosis(path: Path) -> dict[str, Any]:
    metrics = _read_json(path, "stage III prognosis")
    eps = metrics.get("endpoints") if isinstance(metrics, dict) else None
    if not isinstance(eps, dict) or not eps:
        raise ValueError(f"{path}: no 'endpoints' (expected the metrics.json of bundles/npc_prognosis evaluate)")
    c: dict[str, dict[str, tuple[float, float, float]]] = {}
    n_image = 0
    for ep, res in eps.items():
        cols = (res.get("data") or {}).get("image_feature_columns") or 0  # a count (or the column names)
        n_image = max(n_image, cols if isinstance(cols, int) else len(cols))
        for model, mres in (res.get("models") or {}).items():
            hc = ((mres or {}).get("metrics") or {}).get("harrell_c")
            if not isinstance(hc, dict):
                raise ValueError(f"{path}: endpoints.{ep}.models.{model}.metrics.harrell_c is missing")
            est, lo, hi = (_number(path, f"endpoints.{ep}.models.{model}.metrics.harrell_c.{k}", hc.get(k))
                           for k in ("estimate", "lo", "hi"))
            c.setdefault(ep, {})[model] = (est, lo, hi)
    return {"n_image_features": n_image, "c": c}


def _findings(path: Path) -> dict[str, Any]:
    f1 = _read_json(path, "stage II finding-F1")
    for who in ("model", "majority"):
        for k in ("micro_f1", "macro_f1"):
            _number(path, f"{who}.{k}", ((f1 or {}).get(who) or {}).get(k))
    return f1


def load_results(out: str | Path, skipped: Sequence[str] = ()) -> CurriculumResults:
    """Read every stage's result file under ``out``.

    Args:
        out: the curriculum's output folder.
        skipped: segmentation variants / prognosis feature sets left out on purpose ("not run").

    Raises:
        FileNotFoundError: a result file that should exist does not (the message names it).
        ValueError: a result file lacks a field or a variant (the message names the file and field).
    """
    paths, skip = result_paths(out), set(skipped)
    return CurriculumResults(
        segmentation=_segmentation(paths["segmentation"], skip),
        prognosis={s: None if s in skip else _prognosis(p) for s, p in paths["prognosis"].items()},
        findings=_findings(paths["findings"]))


def _f(x: float, digits: int = 3) -> str:
    return "n/a" if math.isnan(x) else f"{x:.{digits}f}"


def _ci(est_lo_hi: tuple[float, float, float] | None) -> str:
    if est_lo_hi is None:
        return "n/a"
    est, lo, hi = est_lo_hi
    return f"{_f(est)} ({_f(lo)}-{_f(hi)})"


def _seg_rows(res: CurriculumResults) -> list[str]:
    rows = ["| variant | coarse states | mean 3D Dice | " + " | ".join(f"3D Dice {s}" for s in SEQUENCES)
            + " | HD95 |", "|---|---|---|" + "---|" * len(SEQUENCES) + "---|"]
    for v, label in SEGMENTATION_VARIANTS.items():
        r = res.segmentation.get(v)
        cells = [NOT_RUN] * (len(SEG_FIELDS) + 1) if r is None else [
            r["coarse_states"] or "-", *(_f(r[k]) for k in SEG_FIELDS[:-1]), _f(r["val_hd95"], 2)]
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return rows


def endpoints_and_models(res: CurriculumResults) -> tuple[list[str], list[str]]:
    """The prognosis endpoints (FFS, OS, DMFS order) and models found in any feature set's results."""
    eps, models = [], []
    for r in filter(None, res.prognosis.values()):
        for ep, by_model in r["c"].items():
            eps += [ep] if ep not in eps else []
            models += [m for m in by_model if m not in models]
    return sorted(eps, key=lambda e: (ENDPOINT_ORDER + (e,)).index(e)), models


def _prog_rows(res: CurriculumResults) -> list[str]:
    eps, models = endpoints_and_models(res)
    rows = ["| features | image features | model | " + " | ".join(e.upper() for e in eps) + " |",
            "|---|---|---|" + "---|" * len(eps)]
    for s, label in PROGNOSIS_SETS.items():
        r = res.prognosis.get(s)
        if r is None:
            rows.append(f"| {label} | {NOT_RUN} | - | " + " | ".join([NOT_RUN] * len(eps)) + " |")
            continue
        for m in models:
            rows.append(f"| {label} | {r['n_image_features']} | {m} | "
                        + " | ".join(_ci(r["c"].get(ep, {}).get(m)) for ep in eps) + " |")
    return rows


def ablation_markdown(res: CurriculumResults, budget: str, command: str, budget_line: str = "") -> str:
    """The ablation as Markdown: a header (budget, command) and one table per stage."""
    f1 = res.findings
    lines = [f"## HiCur curriculum ablation (budget: `{budget}`)", "",
             f"Made by: `{command}`" if command else "Made by: (command not recorded)"]
    if budget_line:
        lines += ["", f"Budget `{budget}`: {budget_line}"]
    lines += ["", "### Stage III segmentation (validation volumes: mean 3D Dice, per MRI sequence, HD95)", "",
              *_seg_rows(res), "",
              "### Stage III prognosis (Harrell's C of out-of-fold risks, 95% bootstrap CI)", "", *_prog_rows(res), "",
              f"### Stage II findings (finding-level F1 of generated reports, "
              f"{f1.get('n_images', '?')} held-out images)",
              "", "| reports | micro F1 | macro F1 |", "|---|---|---|"]
    for who in findings_shown(f1):
        micro, macro = _f(float(f1[who]["micro_f1"])), _f(float(f1[who]["macro_f1"]))
        lines.append(f"| {FINDINGS_LABELS[who]} | {micro} | {macro} |")
    return "\n".join(lines) + "\n"


def findings_shown(f1: Mapping[str, Any]) -> list[str]:
    """The predictors of a ``findings_f1.json`` to show (``constant`` is absent from results written before it)."""
    from hicur_monai.evaluation.findings_f1 import PREDICTORS

    return [who for who in PREDICTORS if who in f1]


def ablation_chart(res: CurriculumResults, path: str | Path, title: str = "") -> Path:
    """The chart of :func:`ablation_markdown`'s numbers (see :mod:`hicur_monai.curriculum.chart`)."""
    from hicur_monai.curriculum.chart import ablation_chart as draw

    return draw(res, path, title)


def read_manifest(out: str | Path) -> Mapping[str, Any]:
    """The run's ``curriculum.json`` (budget, command, skipped variants).

    Raises:
        FileNotFoundError: the folder holds no curriculum run.
    """
    path = Path(out) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no curriculum run here; run `hicur curriculum run --out {out} ...` first")
    return json.loads(path.read_text(encoding="utf-8"))


def write_ablation(out: str | Path, budget: str, command: str, skipped: Sequence[str] = (),
                   budget_line: str = "") -> tuple[Path, Path]:
    """Collect the results under ``out`` into ``out/curriculum.md`` and ``out/curriculum.png``; return both paths."""
    res = load_results(out, skipped)
    md = atomic_write_text(Path(out) / "curriculum.md", ablation_markdown(res, budget, command, budget_line))
    png = ablation_chart(res, Path(out) / "curriculum.png", f"HiCur curriculum ablation, budget {budget}: {command}")
    return md, png
