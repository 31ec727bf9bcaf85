"""GPU memory per device for HCMAE Base/Large and the 8B vision-language model under DDP, FSDP / ZeRO-3.

Computed, not guessed, from two measured inputs:

* parameter counts: the models built on PyTorch's ``meta`` device (no memory, exact counts);
* activation bytes per image / per token: the tensors autograd saves for backward
  (``torch.autograd.graph.saved_tensors_hooks``, each storage counted once) in a forward pass under
  bf16 autocast on the CPU, as the difference between two batch sizes (HCMAE: 2 and 1 images) or two
  sequence lengths (LLM: 128 and 64 tokens), so what does not grow with the batch (weights saved for
  backward, their bf16 copies) drops out. The LLM is measured on a 1-layer model of Llama-3-8B's width
  with two vocabulary sizes (the per-layer and the per-vocabulary-entry bytes per token), then scaled
  to 32 layers and 128,256 entries; with gradient checkpointing (the VLM
  configs) a layer keeps only its input (hidden x 2 bytes per token) plus one layer's activations.

Per GPU: trained parameters cost 16 bytes each under mixed-precision AdamW (fp32 weights, fp32
gradients, two fp32 moments; DDP keeps all of it on every GPU, FSDP full-shard / ZeRO-3 divide it by
the number of GPUs), frozen parameters 2 bytes (bf16), plus the activations of the per-GPU batch.
Not counted: the CUDA context and allocator slack (~1-3 GB), temporary buffers (FSDP / ZeRO-3 gather
one layer's full weights at a time: under 1 GB here), and the vision tower's activations in the VLM
(it runs without gradients).

Usage: ``python benchmarks/capacity.py`` (prints the markdown table of docs/hcmae.md / docs/vl_alignment.md).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["main", "saved_bytes"]

GB = 1e9
LLAMA3_8B = {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
             "intermediate_size": 14336, "vocab_size": 128256}
HCMAE_LARGE = {"vit_embed_dim": 1024, "vit_depth": 24, "vit_num_heads": 16, "convnext_dims": (192, 384, 768, 1536)}


def saved_bytes(fn: Callable[[], torch.Tensor]) -> int:
    """Bytes of the tensors autograd saves for backward while ``fn`` runs (each storage once)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        seen[s.data_ptr()] = max(seen.get(s.data_ptr(), 0), s.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        out = fn()
    del out
    return sum(seen.values())


def _count(build: Callable[[], torch.nn.Module]) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in build().parameters())


def hcmae_row(name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    from hicur_monai.networks.hcmae import HCMAE

    params = _count(lambda: HCMAE(preset="base", img_size=384, **overrides))
    torch.manual_seed(0)
    net = HCMAE(preset="base", img_size=384, **overrides).train()
    one, two = (saved_bytes(lambda b=b, n=net: n(torch.randn(b, 3, 384, 384), task="pretrain",
                                                  generator=torch.Generator().manual_seed(0))["loss"]) for b in (1, 2))
    act = two - one
    del net
    return {"model": name, "trained": params, "frozen": 0, "act_per_sample": act}


def _llama_layer_bytes(seq: int = 128) -> tuple[float, float]:
    """(bytes per token of one decoder layer, bytes per token per vocabulary entry) at Llama-3-8B's width."""
    from transformers import LlamaConfig, LlamaForCausalLM

    per = {}
    for vocab in (1024, 2048):
        cfg = LlamaConfig(**{**LLAMA3_8B, "num_hidden_layers": 1, "vocab_size": vocab})
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg).to(torch.bfloat16).train()
        long_, short = (saved_bytes(lambda m=model, i=torch.randint(0, vocab, (1, n)): m(input_ids=i, labels=i).loss)
                        for n in (seq, seq // 2))
        per[vocab] = (long_ - short) / (seq - seq // 2)
        del model
    per_vocab = (per[2048] - per[1024]) / 1024
    return per[1024] - 1024 * per_vocab, per_vocab


def vlm_row(seq: int) -> dict[str, Any]:
    from transformers import LlamaConfig, LlamaForCausalLM

    llm = _count(lambda: LlamaForCausalLM(LlamaConfig(**LLAMA3_8B)))
    vit = 86_000_000 + 590_000  # ViT-B/16-384 (frozen), counted below when timm is there
    try:
        from timm.models.vision_transformer import VisionTransformer

        vit = _count(lambda: VisionTransformer(img_size=384, patch_size=16, embed_dim=768, depth=12, num_heads=12,
                                               num_classes=0))
    except ImportError:
        pass
    projector = 768 * 4096 + 4096 + 4096 * 4096 + 4096
    layer, per_vocab = _llama_layer_bytes()
    # gradient checkpointing: each layer keeps its bf16 input; one layer's activations are live in backward
    per_token = (
        LLAMA3_8B["num_hidden_layers"] * LLAMA3_8B["hidden_size"] * 2 + layer + per_vocab * LLAMA3_8B["vocab_size"]
    )
    return {"model": "VLM Llama-3-8B full FT", "trained": llm + projector, "frozen": vit,
            "act_per_sample": per_token * seq, "layer_bytes_per_token": layer, "vocab_bytes_per_token": per_vocab}


def lora_row(full: dict[str, Any], r: int = 16) -> dict[str, Any]:
    """The same VLM with LoRA (rank ``r`` on q, k, v, o; the bundle's default): the LLM is frozen (bf16)."""
    h, layers = LLAMA3_8B["hidden_size"], LLAMA3_8B["num_hidden_layers"]
    kv = h * LLAMA3_8B["num_key_value_heads"] // LLAMA3_8B["num_attention_heads"]
    lora = layers * r * ((h + h) + (h + kv) + (h + kv) + (h + h))
    projector = 768 * h + h + h * h + h
    return {**full, "model": f"VLM Llama-3-8B LoRA r{r}", "trained": lora + projector,
            "frozen": full["frozen"] + full["trained"] - projector}


def per_gpu_gb(row: dict[str, Any], gpus: int, sharded: bool, batch_per_gpu: int) -> float:
    state = 16 * row["trained"] / (gpus if sharded else 1) + 2 * row["frozen"]
    return (state + row["act_per_sample"] * batch_per_gpu) / GB


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hcmae-batch", type=int, default=128, help="global batch of HCMAE (the original's 128)")
    p.add_argument("--vlm-batch", type=int, default=32, help="global sequences per optimizer step held at once")
    p.add_argument("--seq", type=int, default=2048, help="VLM tokens per sequence (577 image tokens + text)")
    p.add_argument("--gpu-gb", type=float, default=80.0)
    p.add_argument("--skip-large", action="store_true", help="leave out HCMAE Large (the slowest measurement)")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    rows = [hcmae_row("HCMAE Base/384 (ViT-B + ConvNeXtV2-B)", {})]
    if not args.skip_large:
        rows.append(hcmae_row("HCMAE Large/384 (ViT-L + ConvNeXtV2-L)", HCMAE_LARGE))
    rows.append(vlm_row(args.seq))
    rows.append(lora_row(rows[-1]))
    print("| model | trained params | activations / sample | 1 GPU, DDP | 8 GPUs, DDP | 8 GPUs, FSDP / ZeRO-3 |\n"
          "|---|---|---|---|---|---|")
    for row in rows:
        batch = args.vlm_batch if row["model"].startswith("VLM") else args.hcmae_batch
        cells = []
        for gpus, sharded in ((1, False), (8, False), (8, True)):
            per = max(1, batch // gpus)
            gb = per_gpu_gb(row, gpus, sharded, per)
            cells.append(f"{gb:.1f} GB (batch {per}/GPU){'' if gb <= args.gpu_gb else ' > ' + str(int(args.gpu_gb))}")
        tokens = f" ({args.seq} tokens)" if row["model"].startswith("VLM") else ""
        unit = f"{row['act_per_sample'] / 1e6:.0f} MB{tokens}"
        print(f"| {row['model']} | {row['trained'] / 1e6:.0f} M | {unit} | " + " | ".join(cells) + " |")
    vlm = next(r for r in rows if r["model"] == "VLM Llama-3-8B full FT")
    print(f"\nLLM activations per token: {vlm['layer_bytes_per_token'] / 1e3:.0f} kB per decoder layer without "
          f"checkpointing, {vlm['vocab_bytes_per_token']:.2f} B per vocabulary entry (logits and loss); "
          f"frozen ViT {vlm['frozen'] / 1e6:.0f} M parameters in bf16.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
