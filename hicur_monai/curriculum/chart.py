"""The ablation chart: one PNG with the three stages side by side (matplotlib, Agg canvas)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from hicur_monai.curriculum.table import CurriculumResults

__all__ = ["ablation_chart"]


def _not_run(ax: Axes, xs: list[int] | np.ndarray, labels: list[str], missing: list[bool]) -> None:
    labels = [textwrap.fill(lab, 18) for lab in labels]
    ax.set_xticks(list(xs), [f"{lab}\n(not run)" if m else lab for lab, m in zip(labels, missing)], fontsize=7)


def _segmentation(ax_dice: Axes, ax_hd: Axes, res: CurriculumResults) -> None:
    from hicur_monai.curriculum.table import SEGMENTATION_VARIANTS, SEQUENCES

    variants = list(SEGMENTATION_VARIANTS)
    x, width = np.arange(len(variants)), 0.8 / (len(SEQUENCES) + 1)
    keys = [(f"dice_3d_{s}", s) for s in SEQUENCES] + [("val_mean_dice_3d", "mean")]
    for i, (key, label) in enumerate(keys):
        vals = [np.nan if (row := res.segmentation.get(v)) is None else row[key] for v in variants]
        ax_dice.bar(x + (i - len(keys) / 2 + 0.5) * width, vals, width, label=label)
    missing = [res.segmentation.get(v) is None for v in variants]
    labels = list(SEGMENTATION_VARIANTS.values())
    _not_run(ax_dice, x, labels, missing)
    ax_dice.set(ylim=(0, 1), ylabel="3D Dice", title="III segmentation: 3D Dice per sequence")
    ax_dice.legend(fontsize=7, ncol=4)
    hd = [np.nan if (row := res.segmentation.get(v)) is None else row["val_hd95"] for v in variants]
    ax_hd.bar(x, hd, 0.6, color="tab:gray")
    _not_run(ax_hd, x, labels, missing)
    ax_hd.set(ylabel="HD95 (lower is better)", title="III segmentation: HD95")


def _prognosis(ax: Axes, res: CurriculumResults) -> None:
    from hicur_monai.curriculum.table import PROGNOSIS_SETS, endpoints_and_models

    eps, models = endpoints_and_models(res)
    sets = list(PROGNOSIS_SETS)
    x = np.arange(len(sets))
    ep = eps[0] if eps else "ffs"
    width = 0.8 / max(1, len(models))
    for i, m in enumerate(models):
        cs = [(res.prognosis.get(s) or {}).get("c", {}).get(ep, {}).get(m) for s in sets]
        est = np.array([np.nan if c is None else c[0] for c in cs])
        err = np.array([[0, 0] if c is None else [c[0] - c[1], c[2] - c[0]] for c in cs]).T
        ax.bar(x + (i - len(models) / 2 + 0.5) * width, est, width, yerr=err, capsize=3, label=m)
    _not_run(ax, x, list(PROGNOSIS_SETS.values()), [res.prognosis.get(s) is None for s in sets])
    ax.axhline(0.5, color="k", lw=0.5, ls=":")
    ax.set(ylim=(0.4, 1), ylabel="Harrell's C (95% CI)", title=f"III prognosis: C-index, {ep.upper()}")
    ax.legend(fontsize=7)


def _findings(ax: Axes, res: CurriculumResults) -> None:
    f1 = res.findings
    from hicur_monai.curriculum.table import FINDINGS_LABELS, findings_shown

    x = np.arange(2)
    shown = findings_shown(f1)
    width = 0.8 / len(shown)
    for i, who in enumerate(shown):
        ax.bar(x + (i - (len(shown) - 1) / 2) * width, [float(f1[who]["micro_f1"]), float(f1[who]["macro_f1"])],
               width, label=FINDINGS_LABELS[who])
    ax.set_xticks(list(x), ["micro F1", "macro F1"])
    ax.set(ylim=(0, 1), ylabel="finding-level F1", title=f"II findings: F1 ({f1.get('n_images', '?')} images)")
    ax.legend(fontsize=7)


def ablation_chart(res: CurriculumResults, path: str | Path, title: str = "") -> Path:
    """Draw the ablation (segmentation Dice + HD95, prognosis C-index with CI, finding-F1) into a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 8.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2)
    _segmentation(axes[0, 0], axes[0, 1], res)
    _prognosis(axes[1, 0], res)
    _findings(axes[1, 1], res)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=110)
    tmp.replace(path)
    return path
