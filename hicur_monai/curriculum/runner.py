"""The curriculum in order: stage I -> stage II (+ finding-F1) -> stage III (segmentation, prognosis) -> table.

Run from the repository root (the bundles' configs and ``transforms/`` are read from there)::

    hicur curriculum run --data demo_data --out demo_output --budget demo

Layout of ``--out``:

========================================  ==============================================
``hcmae_pretrain/models/vit_encoder.pt``  stage I export (bundles/hcmae_pretrain)
``vl_alignment/step2/model``              stage II model (``python -m hicur_monai.vlm.demo``)
``findings/findings_f1.json``             stage II finding-F1 vs image-blind baselines (``hicur vlm findings-eval``)
``segmentation/comparison.json``          stage III segmentation, 4 variants (``hicur segment demo``)
``prognosis/<set>/metrics.json``          stage III prognosis: clinical / hcmae / hcmae_vlm
``curriculum.md``, ``curriculum.png``     the ablation table and chart
``curriculum.json``                       budget, command, deliberately skipped variants, step times
========================================  ==============================================
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from hicur_monai.curriculum.budgets import Budget
from hicur_monai.curriculum.steps import Step, StepOutcome, run_steps
from hicur_monai.curriculum.table import (
    MANIFEST,
    PROGNOSIS_SETS,
    SEGMENTATION_VARIANTS,
    result_paths,
    write_ablation,
)
from hicur_monai.utils.io import atomic_write_json

__all__ = ["curriculum_steps", "run_curriculum"]

PROGNOSIS_CONFIGS = "['bundles/npc_prognosis/configs/train.json','bundles/npc_prognosis/configs/evaluate.json']"
#: the cohort files whose change means "new data" (the generator writes them all at once)
DATA_FILES = ("datalist.json", "cohort.json", "clinical/clinical.csv")


def _py(*args: str) -> tuple[str, ...]:
    return (sys.executable, *args)


def _hicur(*args: str) -> tuple[str, ...]:
    return _py("-m", "hicur_monai.cli", *args)


def _opt(flag: str, value: object) -> tuple[str, ...]:
    return () if value is None else (flag, str(value))


def _stage1(data: Path, out: Path, b: Budget, data_in: tuple[Path, ...]) -> Step:
    cmd = _py("-m", "monai.bundle", "run", "--config_file", "bundles/hcmae_pretrain/configs/train.json",
              "--dataset_dir", str(data), "--output_dir", str(out / "hcmae_pretrain"), "--epochs", str(b.hcmae_epochs),
              "--max_items", str(b.hcmae_max_items), *_opt("--batch_size", b.hcmae_batch_size), "--resume", "False")
    return Step("stage1_hcmae", "I    HCMAE pre-training (bundles/hcmae_pretrain)", cmd, data_in,
                (out / "hcmae_pretrain" / "models" / "vit_encoder.pt",))


def _stage2(data: Path, out: Path, b: Budget, data_in: tuple[Path, ...], vit: Path) -> list[Step]:
    vl, model = out / "vl_alignment", out / "vl_alignment" / "step2" / "model"
    align = _py("-m", "hicur_monai.vlm.demo", "--data", str(data), "--out", str(vl), "--vit-encoder", str(vit),
                "--llm", b.vlm_llm, "--steps1", str(b.vlm_steps1), "--steps2", str(b.vlm_steps2),
                "--lr2", str(b.vlm_lr2))
    evaluate = _hicur("vlm", "findings-eval", "--model", str(model), "--instructions", str(vl / "instructions"),
                      "--data", str(data), "--out", str(out / "findings"), *_opt("--limit", b.findings_limit),
                      "--max-new-tokens", str(b.findings_max_new_tokens))
    return [Step("stage2_vl_alignment", "II   vision-language alignment, steps 1+2 (bundles/vl_alignment)", align,
                 (*data_in, vit), (model, vl / "instructions")),
            Step("stage2_findings", "II   finding-F1 of reports vs image-blind baselines (hicur vlm findings-eval)",
                 evaluate, (*data_in, model, vl / "instructions"), (out / "findings" / "findings_f1.json",))]


def _segmentation(data: Path, out: Path, b: Budget, data_in: tuple[Path, ...], model: Path,
                  variants: Sequence[str]) -> Step:
    cmd = _hicur("segment", "demo", "--data", str(data), "--out", str(out / "segmentation"), "--models", *variants,
                 "--vlm-checkpoint", str(model), "--epochs", str(b.seg_epochs),
                 "--max-patients", str(b.seg_max_patients))
    return Step("stage3_segmentation", f"III  segmentation: {', '.join(variants)} (bundles/npc_segmentation)", cmd,
                (*data_in, model), (out / "segmentation" / "comparison.json",))


def _prognosis(data: Path, out: Path, b: Budget, data_in: tuple[Path, ...], feature_set: str, vit: Path,
               model: Path) -> Step:
    run_dir = out / "prognosis" / feature_set
    truth = data / "clinical" / "truth.json"  # only for the report's comparison with the declared hazard ratios
    image = {"clinical": (), "hcmae": (vit,), "hcmae_vlm": (vit, model)}[feature_set]
    cmd = _py("-m", "monai.bundle", "run", "--config_file", PROGNOSIS_CONFIGS, "--dataset_dir", str(data),
              "--output_dir", str(run_dir), *(("--truth", str(truth)) if truth.is_file() else ()),
              "--n_boot", str(b.prog_n_boot), "--n_boot_calibration", str(b.prog_n_boot_calibration),
              "--deepsurv#n_seeds", str(b.prog_deepsurv_seeds), *_opt("--deepsurv#epochs", b.prog_deepsurv_epochs),
              *_opt("--endpoints", None if b.prog_endpoints == "all" else b.prog_endpoints),
              *_opt("--hcmae_encoder", vit if image else None),
              *_opt("--vlm_checkpoint", model if len(image) > 1 else None),
              *_opt("--image_features_cache", out / "prognosis" / "image_features" if image else None))
    return Step(f"stage3_prognosis_{feature_set}",
                f"III  prognosis, {PROGNOSIS_SETS[feature_set]} (bundles/npc_prognosis)",
                cmd, (*data_in, *image), (run_dir / "metrics.json",))


def curriculum_steps(data: str | Path, out: str | Path, budget: Budget, skip: Sequence[str] = (),
                     command: str = "") -> list[Step]:
    """The curriculum's steps, in order, for ``budget``; ``skip`` names variants left out on purpose.

    Args:
        data: the linked cohort (``hicur demo-data``), with ``datalist.json``.
        out: the output folder (layout in the module docstring).
        budget: the sizes.
        skip: segmentation variants (:data:`SEGMENTATION_VARIANTS`) or prognosis feature sets
            (:data:`PROGNOSIS_SETS`) not to run; the table shows them as "not run".
        command: the command line that asked for this run (the table's header).

    Raises:
        ValueError: ``skip`` names something that is neither.
    """
    data, out = Path(data), Path(out)
    unknown = sorted(set(skip) - set(SEGMENTATION_VARIANTS) - set(PROGNOSIS_SETS))
    if unknown:
        raise ValueError(f"cannot skip {unknown}: choose among {', '.join([*SEGMENTATION_VARIANTS, *PROGNOSIS_SETS])}")
    data_in = tuple(data / f for f in DATA_FILES if (data / f).exists()) or (data,)
    paths = result_paths(out)
    vit, model = out / "hcmae_pretrain" / "models" / "vit_encoder.pt", out / "vl_alignment" / "step2" / "model"
    steps = [_stage1(data, out, budget, data_in), *_stage2(data, out, budget, data_in, vit)]
    variants = [v for v in SEGMENTATION_VARIANTS if v not in skip]
    if variants:
        steps.append(_segmentation(data, out, budget, data_in, model, variants))
    steps += [_prognosis(data, out, budget, data_in, s, vit, model) for s in PROGNOSIS_SETS if s not in skip]
    inputs = (paths["findings"], *((paths["segmentation"],) if variants else ()),
              *(p for s, p in paths["prognosis"].items() if s not in skip))
    table = Step("ablation_table", "     ablation table + chart (curriculum.md, curriculum.png)",
                 _hicur("curriculum", "table", "--out", str(out)), inputs,
                 (out / "curriculum.md", out / "curriculum.png"),
                 action=lambda: _table(out, budget, skip, command), always=True)
    return [*steps, table]


def _table(out: Path, budget: Budget, skip: Sequence[str], command: str) -> None:
    md, png = write_ablation(out, budget.name, command, skip, budget.describe())
    print(md.read_text(encoding="utf-8"))
    print(f"chart: {png}")


def run_curriculum(data: str | Path, out: str | Path, budget: Budget, skip: Sequence[str] = (), command: str = "",
                   dry_run: bool = False, log: Callable[[str], None] | None = None) -> list[StepOutcome]:
    """Run the curriculum (steps already done are skipped) and write the ablation table and chart.

    Raises:
        FileNotFoundError: not run from the repository root, or ``data`` is not a cohort.
        RuntimeError: a step failed (its command is in the message; earlier steps' results are kept).
    """
    if not Path("bundles/hcmae_pretrain/configs/train.json").is_file():
        raise FileNotFoundError(f"{Path.cwd()}: run the curriculum from the repository root "
                                "(bundles/ and transforms/ are read from there)")
    if not dry_run and not (Path(data) / "datalist.json").is_file():
        raise FileNotFoundError(f"{Path(data) / 'datalist.json'}: not a demo cohort; "
                                f"make one with `hicur demo-data {data}`")
    steps = curriculum_steps(data, out, budget, skip, command)
    manifest: dict[str, Any] = {"budget": asdict(budget), "command": command, "skipped": sorted(skip),
                                "data": str(data)}
    if not dry_run:
        Path(out).mkdir(parents=True, exist_ok=True)
        atomic_write_json(Path(out) / MANIFEST, manifest)
    log_kw: dict[str, Any] = {"log": log} if log else {}
    outcomes = run_steps(steps, Path(out), dry_run=dry_run, **log_kw)
    if not dry_run:
        manifest["steps"] = [asdict(o) for o in outcomes]
        atomic_write_json(Path(out) / MANIFEST, manifest)
    return outcomes
