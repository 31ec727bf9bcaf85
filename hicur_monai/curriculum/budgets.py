"""How much each curriculum stage trains: one :class:`Budget` per named size.

``demo`` is what ``make demo`` runs (minutes per stage on a laptop CPU); ``benchmark`` is what
``benchmarks/curriculum.py`` runs (larger; the target is at most 45 minutes on 2 cores, measured
41.9 minutes on 2026-12-07: docs/curriculum.md);
``tiny`` is for tests and the documented commands at CI size (random tiny LLM, one epoch).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["Budget", "BUDGETS", "get_budget"]


@dataclass(frozen=True)
class Budget:
    """The sizes of one curriculum run.

    Attributes:
        name: the budget's name (printed in the table header).
        hcmae_epochs: stage I epochs of ``bundles/hcmae_pretrain``.
        hcmae_max_items: stage I images used (``max_items``).
        hcmae_batch_size: stage I batch size; ``None``: the bundle's default.
        vlm_llm: the LLM of the stage II demo (``smollm2``, or ``tiny``: a random Llama).
        vlm_steps1: stage II step 1 (projector) steps.
        vlm_steps2: stage II step 2 (LoRA) steps.
        findings_limit: held-out images scored by ``hicur vlm findings-eval``; ``None``: all.
        findings_max_new_tokens: tokens generated per report.
        seg_epochs: stage III segmentation epochs per variant.
        seg_max_patients: stage III segmentation patients per split.
        prog_n_boot: bootstrap draws of the prognosis C-index CI.
        prog_n_boot_calibration: bootstrap draws of the calibration metrics.
        prog_deepsurv_seeds: DeepSurv seeds (ensemble size).
        prog_deepsurv_epochs: DeepSurv epochs; ``None``: the bundle's default.
        prog_endpoints: prognosis endpoints (``all``, or comma-separated: ``ffs,os``).
        vlm_lr2: stage II step 2 (LoRA) learning rate.
    """

    name: str
    hcmae_epochs: int
    hcmae_max_items: int
    hcmae_batch_size: int | None
    vlm_llm: str
    vlm_steps1: int
    vlm_steps2: int
    findings_limit: int | None
    findings_max_new_tokens: int
    seg_epochs: int
    seg_max_patients: int
    prog_n_boot: int
    prog_n_boot_calibration: int
    prog_deepsurv_seeds: int
    prog_deepsurv_epochs: int | None
    prog_endpoints: str = "all"
    vlm_lr2: float = 1e-3

    def describe(self) -> str:
        """One line with every size, for the table header."""
        return ", ".join(f"{k}={v}" for k, v in asdict(self).items() if k != "name")


BUDGETS: dict[str, Budget] = {
    "tiny": Budget("tiny", hcmae_epochs=1, hcmae_max_items=8, hcmae_batch_size=2, vlm_llm="tiny", vlm_steps1=2,
                   vlm_steps2=2, findings_limit=2, findings_max_new_tokens=8, seg_epochs=1, seg_max_patients=2,
                   prog_n_boot=10, prog_n_boot_calibration=5, prog_deepsurv_seeds=1, prog_deepsurv_epochs=20,
                   prog_endpoints="ffs"),
    "demo": Budget("demo", hcmae_epochs=5, hcmae_max_items=300, hcmae_batch_size=None, vlm_llm="smollm2",
                   vlm_steps1=12, vlm_steps2=8, findings_limit=12, findings_max_new_tokens=48, seg_epochs=13,
                   seg_max_patients=20, prog_n_boot=100, prog_n_boot_calibration=20, prog_deepsurv_seeds=1,
                   prog_deepsurv_epochs=None, prog_endpoints="ffs"),
    "benchmark": Budget("benchmark", hcmae_epochs=15, hcmae_max_items=600, hcmae_batch_size=None, vlm_llm="smollm2",
                        vlm_steps1=20, vlm_steps2=100, findings_limit=30, findings_max_new_tokens=96, seg_epochs=20,
                        seg_max_patients=20, prog_n_boot=200, prog_n_boot_calibration=30, prog_deepsurv_seeds=1,
                        prog_deepsurv_epochs=None, prog_endpoints="ffs"),
}


def get_budget(name: str) -> Budget:
    """The budget called ``name``.

    Raises:
        ValueError: no budget has that name (the message lists the names).
    """
    try:
        return BUDGETS[name]
    except KeyError:
        raise ValueError(f"unknown curriculum budget {name!r}; choose one of {', '.join(BUDGETS)}") from None
