"""Stage II demo: step 1 + step 2 of ``bundles/vl_alignment`` with SmolLM2-135M on CPU, then one answer.

Run from the repository root (the bundle configs and ``transforms/`` are resolved from there)::

    python -m hicur_monai.vlm.demo --data demo_data --out demo_output/vl_alignment

Builds the instruction data from the demo cohort with the offline rule teacher when missing
(``hicur instructions build`` on the endoscopy frames *and* the MRI studies, split by patient
across both), trains the projector (step 1) and LoRA adapters (step 2) for a few steps each
through ``python -m monai.bundle run``-equivalent calls, prints the loss of every step and the
model's answer to one held-out question next to the reference, and with ``--findings-eval N``
scores the finding-F1 of N held-out endoscopy reports against the majority baseline
(``hicur vlm findings-eval``). With a few steps on a random vision tower (unless Stage I's ViT
export exists) the answer shows that the pipeline works end to end, not that the model is good.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

__all__ = ["main"]


def _ensure_instructions(data: Path, out: Path) -> Path:
    """The demo's instruction folder: endoscopy frames + MRI slices with their reports (built when missing)."""
    if all((out / f).is_file() for f in ("alignment_brief.json", "instruct_train.json", "pairs.json")):
        return out
    from hicur_monai.data.instructions import build_instruction_data
    from hicur_monai.data.instructions_cli import collect_all_pairs
    from hicur_monai.llm.teacher import make_teacher

    reports, images = [data / "reports"], [data / "endoscopy"]
    if (data / "reports" / "mri").is_dir() and (data / "mri").is_dir():
        reports.append(data / "reports" / "mri")
        images.append(data / "mri")
    pairs, _, _ = collect_all_pairs(reports, images, out)
    n_patients = len({p.patient for p in pairs})
    build_instruction_data(pairs, make_teacher("rule"), out, n_eval=max(1, n_patients // 10), progress=False,
                           image_folder=(data / "endoscopy").resolve())
    return out


def _print_losses(out: Path) -> None:
    for step in ("step1", "step2"):
        hist = [json.loads(x) for x in (out / step / "loss_history.jsonl").read_text().splitlines()]
        losses = [h["loss"] for h in hist]
        half = max(1, len(losses) // 2)
        print(f"{step} loss by step: " + " ".join(f"{x:.3f}" for x in losses)
              + f"  (mean of first half {sum(losses[:half]) / half:.3f} -> second half "
              f"{sum(losses[half:]) / max(1, len(losses) - half):.3f})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("demo_data"), help="demo cohort folder (hicur demo-data)")
    p.add_argument("--out", type=Path, default=Path("demo_output/vl_alignment"))
    p.add_argument("--llm", default="smollm2", help="smollm2 or tiny (a random Llama, seconds instead of minutes)")
    p.add_argument("--steps1", type=int, default=12, help="projector steps")
    p.add_argument("--steps2", type=int, default=8, help="LoRA steps")
    p.add_argument("--lr2", type=float, default=2e-4, help="LoRA learning rate (step 2)")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--max-length", type=int, default=384)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared machine)")
    p.add_argument("--vit-encoder", type=Path, default=None,
                   help="Stage I ViT export (vit_encoder.pt from bundles/hcmae_pretrain); default: the bundle's path")
    p.add_argument("--findings-eval", type=int, default=0, metavar="N",
                   help="also score finding-F1 on N held-out endoscopy images (0: skip)")
    args = p.parse_args(argv)

    from monai.bundle import run

    from hicur_monai.data.demo import generate_demo_cohort
    from hicur_monai.llm.base import GenerationConfig
    from hicur_monai.networks.vlm import VisionLanguageModel
    from hicur_monai.vlm.data import load_image

    if not (args.data / "datalist.json").is_file():
        generate_demo_cohort(args.data, seed=0, preset="tiny")
    instr = _ensure_instructions(args.data, args.out / "instructions")
    llm = {"backend": "smollm2"} if args.llm == "smollm2" else {
        "backend": "tiny_random", "hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 600}
    common = {"dataset_dir": str(args.data), "instructions_dir": str(instr), "output_root": str(args.out), "llm": llm,
              "batch_size": args.batch_size, "max_length": args.max_length, "device": "cpu", "save_every": 0,
              "threads": args.threads}
    if args.vit_encoder is not None:
        common["vit_encoder"] = str(args.vit_encoder)
    cfg = Path("bundles/vl_alignment/configs")
    t0 = time.time()
    run(config_file=[str(cfg / "train.json"), str(cfg / "pretrain.json")], **common, max_steps=args.steps1)
    run(config_file=str(cfg / "train.json"), **common, mode="lora", lr=args.lr2, max_steps=args.steps2)
    _print_losses(args.out)
    summary = json.loads((instr / "summary.json").read_text())
    print(f"trained on {summary['pairs_by_modality']} pairs (train {summary['train_pairs']}, held-out "
          f"{summary['eval_pairs']} of {summary['eval_patients']} patients)")
    q = json.loads((instr / "eval_detailed.jsonl").read_text().splitlines()[0])
    import torch

    from hicur_monai.vlm.data import resolve_image

    torch.set_num_threads(args.threads)
    model = VisionLanguageModel.from_pretrained(args.out / "step2" / "model", device="cpu")
    image_file = resolve_image(q, args.data / "endoscopy", instr)
    image = load_image(image_file, model.image_size, q.get("modality", "endoscopy"))
    answer = model.chat(image, q["text"], config=GenerationConfig(max_new_tokens=args.max_new_tokens))
    print(f"\nquestion ({q['image']}): {q['text']}\nmodel answer: {answer}\nreference: {q['reference']}")
    if args.findings_eval:
        from hicur_monai.evaluation.findings_f1 import PREDICTORS, markdown_table
        from hicur_monai.vlm.findings_eval import findings_eval

        res = findings_eval(model, instr, args.data, args.out / "findings_eval", limit=args.findings_eval,
                            max_new_tokens=args.max_new_tokens, command="python -m hicur_monai.vlm.demo "
                            + " ".join(sys.argv[1:] if argv is None else argv))
        print(f"\nfinding-F1, {res['n_images']} held-out endoscopy images:\n"
              + markdown_table({k: res[k] for k in PREDICTORS}))
    print(f"\nvl_alignment demo: {time.time() - t0:.0f} s; model in {args.out / 'step2' / 'model'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
