"""Cost per MRI volume of the stage II -> III coarse states (the VLM run on every slice), on this machine.

For one volume of ``--slices`` slices at ``--img-size`` px (random, in [0, 1]) it times:

* ``per slice``: one VLM call per slice, as the training pipeline computes them (``CoarseStatesd``
  runs on each slice; ``CacheDataset`` keeps the result, so this is paid once per run);
* ``batched``: the slices of the volume ``--batch`` at a time, as whole-volume inference does;
* ``cached``: the same volume again from the disk cache of a new process-like cache object;
* ``adapter not merged``: with a LoRA checkpoint, one slice per call through the model as saved
  (peft adapter beside each projection) instead of the merged weights the encoder uses
  (``VisionLanguageModel.merge_adapter``);
* with ``--report FILE`` (a study's MRI report, ``coarse_report``), batched: the report in a system
  turn before the image, its tokens run once for the batch and their KV cache reused (what the
  provider does), against the report after the instruction in every slice's prompt (no shared
  prefix beyond the chat header).

The VLM is ``--vlm-checkpoint`` (a folder saved by ``bundles/vl_alignment``) or, without one,
the tiny random VLM of the tests. ``--length`` sets the positions computed per slice
(``num_tokens``); the previous hand-off asked the LLM for 640 (and kept 32).

    python benchmarks/coarse_states.py --threads 1
    python benchmarks/coarse_states.py --threads 1 --vlm-checkpoint demo_output/vl_alignment/step2/model \
        --report demo_data/reports/mri/IMG0001.txt
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def _tiny_checkpoint(folder: Path) -> Path:
    from vlm_helpers import tiny_vlm

    torch.manual_seed(0)
    return tiny_vlm().eval().save_pretrained(folder / "tiny_vlm")


def _timed(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _unmerged_per_slice(ckpt: Path, prov, volume: torch.Tensor, repeats: int) -> float | None:
    """Per-slice time through the saved model with its peft adapter unmerged (None: no adapter)."""
    from hicur_monai.networks.vlm import VisionLanguageModel
    from hicur_monai.vlm.coarse import coarse_features

    model = VisionLanguageModel.from_pretrained(ckpt, device="cpu")
    if not hasattr(model.llm, "peft_config"):
        return None
    fitted = torch.stack([prov.encoder._fit(img) for img in (volume - prov.mean) / prov.std])  # as VLMStates does
    return _timed(lambda: [coarse_features(model, fitted[i: i + 1], prov.instruction, prov.num_tokens)
                           for i in range(len(fitted))], repeats)


def _report_times(ckpt: Path, args: argparse.Namespace, volume: torch.Tensor, report: str) -> tuple[float, float]:
    """Batched seconds with the report as a shared system turn, and with it after the instruction."""
    from hicur_monai.segmentation import coarse_provider, with_report

    prov = coarse_provider(str(ckpt), num_tokens=args.length, coarse_report=True, device="cpu",
                           batch_size=args.batch)
    reports = [report] * len(volume)
    prov(volume[:1], reports[:1])  # load the model once (not timed)
    shared = _timed(lambda: prov(volume, reports), args.repeats)
    normalised = list((volume - prov.mean) / prov.std)  # as VLMStates does before the encoder
    appended = [with_report(prov.instruction, report)] * len(volume)
    after = _timed(lambda: prov.encoder.encode(normalised, appended), args.repeats)
    return shared, after


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vlm-checkpoint", default=None)
    ap.add_argument("--slices", type=int, default=16)
    ap.add_argument("--img-size", type=int, default=64)
    ap.add_argument("--length", type=int, default=32, help="positions kept per slice (num_tokens)")
    ap.add_argument("--batch", type=int, default=16, help="slices per VLM call in the batched mode")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--report", type=Path, default=None, help="a study's MRI report: time the report layouts too")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from hicur_monai.segmentation import CoarseStateCache, coarse_provider

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(args.vlm_checkpoint) if args.vlm_checkpoint else _tiny_checkpoint(Path(tmp))
        prov = coarse_provider(str(ckpt), num_tokens=args.length, device="cpu", batch_size=args.batch)
        torch.manual_seed(0)
        volume = torch.rand(args.slices, 3, args.img_size, args.img_size)
        prov(volume[:1])  # load the model once (not timed)
        per_slice = _timed(lambda: [prov(volume[i: i + 1]) for i in range(args.slices)], args.repeats)
        batched = _timed(lambda: prov(volume), args.repeats)
        CoarseStateCache(prov, Path(tmp) / "cache")(volume)
        cached = _timed(lambda: CoarseStateCache(prov, Path(tmp) / "cache")(volume), args.repeats)
        unmerged = _unmerged_per_slice(ckpt, prov, volume, args.repeats)
        report = args.report.read_text() if args.report else None
        layouts = _report_times(ckpt, args, volume, report) if report else None
    print(f"coarse states, {prov.description}")
    print(f"volume of {args.slices} slices at {args.img_size} px, {args.threads} thread(s), best of {args.repeats}: "
          f"per slice {per_slice:.3f} s, batched x{args.batch} {batched:.3f} s, from the disk cache {cached:.3f} s")
    if unmerged is not None:
        print(f"per slice with the LoRA adapter not merged: {unmerged:.3f} s (merged, as above: {per_slice:.3f} s)")
    if layouts is not None:
        tokens = len(prov.encoder.model.tokenizer(report)["input_ids"])
        print(f"batched x{args.batch} with the {tokens}-token report {args.report}: in a system turn, run once "
              f"per batch {layouts[0]:.3f} s; after the instruction in every prompt {layouts[1]:.3f} s "
              f"(no report: {batched:.3f} s)")
    print("command: python benchmarks/coarse_states.py " + " ".join(argv if argv is not None else sys.argv[1:]))


if __name__ == "__main__":
    main()
