"""One GPU check of the whole toolkit (at most ~8 minutes on one GPU): prints the figures a cluster user needs.

* HCMAE Base/384 training step in bf16: images/s, model FLOPs per image (counted by
  ``torch.utils.flop_counter`` over one forward + backward), MFU against the GPU's bf16 dense peak
  (``--peak-tflops``, else a table of known GPUs), peak memory;
* Stage II (VLM) full fine-tuning step: tokens/s for a SmolLM2-135M-shaped and a 1B-class (Llama-3.2-1B
  shape) LLM of random weights (no downloads) behind the ViT-B/16-384 tower, peak memory;
* segmentation inference: volumes/s of the fusion network (ConvNeXtV2-Base, 256 px, 32 slices a volume);
* DDP scaling: HCMAE images/s with 1..N processes on the N GPUs present (gloo processes on the CPU),
  and the scaling efficiency against N x the one-process rate.

``--device cpu --tiny`` runs every part at toy size on the CPU (the test that keeps this script
working); figures from it say nothing about a GPU. Usage::

    python benchmarks/gpu_check.py                      # on a GPU node
    python benchmarks/gpu_check.py --device cpu --tiny  # smoke run, ~1 minute
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import time
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["main"]

#: bf16 dense peak TFLOP/s by GPU name fragment (vendor data sheets)
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "L4": 121.0, "V100": 125.0}
SMOLLM2 = {"hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
           "intermediate_size": 1536, "vocab_size": 49152}
ONE_B = {"hidden_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
         "intermediate_size": 8192, "vocab_size": 128256}
TINY_LM = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
           "intermediate_size": 128, "vocab_size": 512}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def _peak_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB -> GB (process peak so far)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _timed(step: Callable[[], Any], device: torch.device, warmup: int, steps: int) -> float:
    """Seconds per call of ``step`` after ``warmup`` calls."""
    for _ in range(warmup):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return (time.perf_counter() - t0) / steps


def _flops(step: Callable[[], Any]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())


def _peak_tflops(device: torch.device, given: float | None) -> float | None:
    if given:
        return given
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def _hcmae_step(preset: str, size: int, batch: int, device: torch.device):
    from hicur_monai.networks.hcmae import HCMAE

    net = HCMAE(preset=preset, img_size=size).to(device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, size, size, device=device)
    gen = torch.Generator().manual_seed(0)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with _autocast(device):
            loss = net(x, task="pretrain", generator=gen)["loss"]
        loss.backward()
        opt.step()

    return net, step


def hcmae(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    preset, size, batch = ("tiny", 64, 2) if args.tiny else ("base", 384, args.hcmae_batch)
    _reset_peak(device)
    _, step = _hcmae_step(preset, size, batch, device)
    sec = _timed(step, device, args.warmup, args.steps)
    flops = _flops(step) / batch
    peak = _peak_tflops(device, args.peak_tflops)
    ips = batch / sec
    return {"model": f"HCMAE {preset}/{size}", "batch": batch, "images_per_s": round(ips, 2),
            "gflops_per_image": round(flops / 1e9, 2),
            "mfu": round(ips * flops / (peak * 1e12), 4) if peak else None, "peak_gb": round(_peak_gb(device), 2)}


def _vlm(shape: dict[str, int], tiny: bool, device: torch.device):
    from transformers import LlamaConfig, LlamaForCausalLM

    from hicur_monai.llm.causal_lm import CausalLM, train_bpe_tokenizer
    from hicur_monai.networks.vlm import VisionLanguageModel, build_vision_tower

    vit = ({"img_size": 32, "patch_size": 16, "embed_dim": 32, "depth": 1, "num_heads": 2, "num_classes": 0} if tiny
           else {"img_size": 384, "patch_size": 16, "embed_dim": 768, "depth": 12, "num_heads": 12, "num_classes": 0})
    tok = train_bpe_tokenizer(["a mass on the left wall"], 300, "{{ messages }}")
    llm = LlamaForCausalLM(LlamaConfig(**shape, max_position_embeddings=4096, tie_word_embeddings=False))
    model = VisionLanguageModel(build_vision_tower({"kind": "timm_vit", "kwargs": vit}), CausalLM(llm, tok, {}))
    return model.to(device)


def vlm(args: argparse.Namespace, device: torch.device, name: str, shape: dict[str, int]) -> dict[str, Any]:
    from hicur_monai.llm.conversation import IMAGE_TOKEN_INDEX

    shape = TINY_LM if args.tiny else shape
    batch, text = (2, 16) if args.tiny else (args.vlm_batch, 512)
    _reset_peak(device)
    model = _vlm(shape, args.tiny, device)
    params = model.configure_training("full", gradient_checkpointing=not args.tiny)
    opt = torch.optim.AdamW(params, lr=1e-5)
    ids = torch.randint(0, shape["vocab_size"], (batch, text), device=device)
    ids[:, 0] = IMAGE_TOKEN_INDEX
    labels = ids.clone()
    labels[:, 0] = -100
    mask = torch.ones_like(ids)
    images = torch.randn(batch, 3, model.image_size, model.image_size, device=device)
    tokens = batch * (text - 1 + model.num_image_tokens)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with _autocast(device):
            loss = model(ids, mask, labels, images).loss
        loss.backward()
        opt.step()

    sec = _timed(step, device, args.warmup, args.steps)
    n = sum(p.numel() for p in model.llm.parameters())
    return {"model": f"VLM {name}" + (" (tiny)" if args.tiny else ""), "llm_parameters": n, "batch": batch,
            "tokens_per_step": tokens, "tokens_per_s": round(tokens / sec, 1), "peak_gb": round(_peak_gb(device), 2)}


def segmentation(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    from hicur_monai.networks.fusion_seg import FusionSegNet

    preset, size, depth = ("tiny", 64, 4) if args.tiny else ("base", 256, 32)
    _reset_peak(device)
    net = FusionSegNet(preset=preset).to(device).eval()
    dim = net.config.text_dim
    vol = torch.randn(depth, 3, size, size, device=device)
    states = torch.randn(1, 32, dim, device=device)

    @torch.inference_mode()
    def step() -> None:
        for chunk in vol.split(args.seg_batch):
            with _autocast(device):
                net(chunk, states)

    sec = _timed(step, device, 1, args.steps)
    return {"model": f"FusionSegNet {preset}/{size}", "slices_per_volume": depth, "volumes_per_s": round(1 / sec, 3),
            "peak_gb": round(_peak_gb(device), 2)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ddp_worker(rank: int, world: int, port: int, args: argparse.Namespace, out: Any) -> None:
    import torch.distributed as dist

    from hicur_monai.training.distributed import default_backend

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    device = torch.device("cuda", rank) if args.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(default_backend() if device.type == "cuda" else "gloo", rank=rank, world_size=world)
    torch.set_num_threads(1 if device.type == "cpu" else torch.get_num_threads())
    preset, size, batch = ("tiny", 64, 2) if args.tiny else ("base", 384, args.hcmae_batch)
    net, _ = _hcmae_step(preset, size, batch, device)
    ddp = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None,
                                                    find_unused_parameters=True)
    opt = torch.optim.AdamW(ddp.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, size, size, device=device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with _autocast(device):
            loss = ddp(x, task="pretrain", generator=torch.Generator().manual_seed(0))["loss"]
        loss.backward()
        opt.step()

    sec = _timed(step, device, args.warmup, args.steps)
    if rank == 0:
        out.put(world * batch / sec)
    dist.destroy_process_group()


def ddp_scaling(args: argparse.Namespace) -> list[dict[str, Any]]:
    import torch.multiprocessing as mp

    n = torch.cuda.device_count() if args.device == "cuda" else 2
    counts = sorted({1, n} | {k for k in (2, 4, 8) if k < n}) if n > 1 else [1]
    ctx = mp.get_context("spawn")
    rows, base = [], None
    for world in counts:
        q = ctx.SimpleQueue()
        mp.start_processes(_ddp_worker, args=(world, _free_port(), args, q), nprocs=world, join=True,
                           start_method="spawn")
        ips = q.get()
        base = base or ips
        rows.append({"processes": world, "images_per_s": round(ips, 2), "efficiency": round(ips / (world * base), 3)})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    p.add_argument("--tiny", action="store_true", help="toy sizes (CPU smoke run)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--hcmae-batch", type=int, default=32)
    p.add_argument("--vlm-batch", type=int, default=4)
    p.add_argument("--seg-batch", type=int, default=16)
    p.add_argument("--peak-tflops", type=float, default=None, help="bf16 dense peak of the GPU (for MFU)")
    p.add_argument("--skip", nargs="*", default=[], choices=["hcmae", "vlm", "segmentation", "ddp"])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    if args.tiny:
        args.steps, args.warmup = min(args.steps, 2), min(args.warmup, 1)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    torch.manual_seed(0)
    out: dict[str, Any] = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    t0 = time.time()
    if "hcmae" not in args.skip:
        out["hcmae"] = hcmae(args, device)
    if "vlm" not in args.skip:
        out["vlm"] = [vlm(args, device, "SmolLM2-135M-shape", SMOLLM2), vlm(args, device, "1B-class", ONE_B)]
    if "segmentation" not in args.skip:
        out["segmentation"] = segmentation(args, device)
    if "ddp" not in args.skip:
        out["ddp_scaling"] = ddp_scaling(args)
    out["seconds"] = round(time.time() - t0, 1)
    if args.json:
        print(json.dumps(out))
    else:
        for key, val in out.items():
            for row in val if isinstance(val, list) else [val]:
                print(f"{key:13s} {row}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
