"""Training-step throughput and peak memory of HCMAE, its two branches, and the released-style baseline.

Each configuration runs in its own child process (so peak memory is its own), same batch,
same image size, same number of steps:

* ``hcmae``          ours: ViT-MAE on kept patches + sparse FCMAE + released contrastive term
* ``vit_mae``        the ViT-MAE branch alone
* ``fcmae``          the ConvNeXtV2-FCMAE branch alone (sparse)
* ``released``       released-style HCMAE: dense ConvNeXt over the masked image, no encoder
                     positions, unfused AdamW, no channels_last, ViT branch first
* ``released_fcmae`` the released-style (dense) FCMAE branch alone
* ``hcmae_ckpt``     ours with activation checkpointing (``grad_checkpointing=True``: every block of
                     both encoders and the MAE decoder; less memory, one extra forward)
* ``hcmae_fastdw``   ours with the fast CPU depthwise backward (``cpu_lean.use_fast_depthwise``)
* ``hcmae_ib``       ours with the AdamW step fused into backward (``cpu_lean.AdamWInBackward``: each
                     parameter is updated and its gradient freed as soon as it is complete)
* ``hcmae_lean``     ours under the bundle's ``cpu_lean.json`` overlay (``hicur_monai.training.cpu_lean``):
                     checkpointing + ``AdamWInBackward`` + the fast depthwise backward + a 2 MiB malloc
                     mmap threshold (``limit_heap_retention``) + ``release_free_heap`` between forward
                     and backward and after the step + transparent huge pages for large tensors
                     (``enable_huge_pages``; ``--huge-pages off`` leaves them out)
* ``released_heap``  reference only: the released-style config with the same heap setting as
                     ``hcmae_lean``, to show what the allocator setting alone is worth

Results and the commands that produced them: ``benchmarks/results.md`` (## HCMAE).

It prints seconds/step, images/s and peak memory (CPU: the child's peak RSS from
``resource.getrusage``; CUDA: ``torch.cuda.max_memory_allocated``), the hybrid overhead
HCMAE / (MAE + FCMAE) in step time, and ours vs released. With ``--device cuda`` it uses
bf16 autocast and also prints model FLOPs per step (``torch.utils.flop_counter``) and
MFU against ``--peak-tflops``.

Usage (from the repo root)::

    python benchmarks/hcmae.py --preset base --batch 2 --steps 2 --threads 2
    python benchmarks/hcmae.py --preset tiny --batch 8 --steps 10
    python benchmarks/hcmae.py --device cuda --batch 32 --steps 20
    python benchmarks/hcmae.py --preset base --batch 2 --threads 1 --rounds 2 --allocator jemalloc \
        --configs released,hcmae_lean   # every process under jemalloc (LD_PRELOAD)
"""

from __future__ import annotations

import argparse
import ctypes.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

CONFIGS = (
    "hcmae", "vit_mae", "fcmae", "released", "released_fcmae", "hcmae_ckpt", "hcmae_fastdw", "hcmae_ib",
    "hcmae_lean", "released_heap",
)  # fmt: skip
HEAP_LIMITED = ("hcmae_lean", "released_heap")  # the cpu_lean.json overlay's heap settings
IN_BACKWARD = ("hcmae_ib", "hcmae_lean")
CHECKPOINTED = ("hcmae_ckpt", "hcmae_lean")
FAST_DEPTHWISE = ("hcmae_fastdw", "hcmae_lean")
OURS = ("hcmae", "hcmae_ckpt", "hcmae_fastdw", "hcmae_ib", "hcmae_lean")


def _build(name: str, preset: str, device: str) -> tuple[Any, Any]:
    import torch

    from hicur_monai.networks.hcmae import HCMAE
    from hicur_monai.training.cpu_lean import AdamWInBackward, use_fast_depthwise

    released = name.startswith("released")
    net = HCMAE(
        preset=preset,
        fcmae_sparse=not released,
        encoder_pos_embed=not released,
        grad_checkpointing=name in CHECKPOINTED,
    )
    if name in FAST_DEPTHWISE:
        use_fast_depthwise(net)
    if name in ("vit_mae",):
        for attr in ("convnext", "fc_proj", "fc_decoder", "fc_pred"):
            delattr(net, attr)
        del net.fc_mask_token
    if name in ("fcmae", "released_fcmae"):
        for attr in ("vit", "decoder_embed", "decoder_blocks", "decoder_norm", "decoder_pred"):
            delattr(net, attr)
        del net.mask_token
    if released and hasattr(net, "convnext"):
        net.convnext.to(memory_format=torch.contiguous_format)
    net.to(device).train()
    fused = not released and (device == "cuda" or hasattr(torch.optim, "AdamW"))
    params = [p for p in net.parameters() if p.requires_grad]
    if name in IN_BACKWARD:
        return net, AdamWInBackward(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05, fused=True)
    try:
        opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05, fused=fused)
    except (RuntimeError, TypeError):
        opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)
    return net, opt


def _loss(name: str, net: Any, imgs: Any, gen: Any) -> Any:
    from hicur_monai.networks.hcmae import _masked_mse, patchify

    cfg = net.config
    if name in OURS or name in ("released", "released_heap"):
        return net(imgs, task="pretrain", generator=gen)["loss"]
    if name == "vit_mae":
        latent, mask, ids = net.vit_encode_masked(imgs, gen)
        return _masked_mse(net.vit_decode(latent, ids), patchify(imgs, cfg.patch_size), mask, cfg.norm_pix_loss)
    mask = net.convnext_mask(imgs.shape[0], gen, imgs.device)
    pred = net.fcmae_decode(net.convnext_encode_masked(imgs, mask), mask)
    return _masked_mse(pred, patchify(imgs, cfg.mask_cell), mask, cfg.norm_pix_loss)


def _state_bytes(net: Any, opt: Any) -> int:
    """Bytes of the tensors that persist between steps: parameters, buffers, held gradients, optimiser state."""
    import torch

    seen: dict[int, int] = {}

    def add(t: Any) -> None:
        if isinstance(t, torch.Tensor) and t.numel():
            st = t.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()

    for p in net.parameters():
        add(p)
        add(p.grad)
    for b in net.buffers():
        add(b)
    for st in opt.state.values():
        for v in st.values():
            add(v)
    return sum(seen.values())


def run_child(args: argparse.Namespace) -> dict[str, Any]:
    """Measure one configuration in this process; returns a JSON-able dict."""
    import torch

    import hicur_monai.networks.hcmae  # noqa: F401  (the libraries a training process imports: torch, timm, MONAI)
    from hicur_monai.training.cpu_lean import enable_huge_pages, limit_heap_retention, release_free_heap

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    huge_pages = False
    if args.config in HEAP_LIMITED:
        limit_heap_retention(args.heap_threshold)
        huge_pages = args.huge_pages == "on" and enable_huge_pages()  # as cpu_lean.json
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
    dev = args.device
    net, opt = _build(args.config, args.preset, dev)
    build_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
    size = net.config.img_size
    imgs = torch.rand(args.batch, 3, size, size, device=dev)
    gen = torch.Generator().manual_seed(0)
    use_amp = dev == "cuda"

    release = args.config in HEAP_LIMITED and dev == "cpu"  # as cpu_lean.LeanMaskedImageTrainer

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
            loss = _loss(args.config, net, imgs, gen)
        if release:
            release_free_heap()
        loss.backward()
        opt.step()
        if release:
            release_free_heap()
        return float(loss.detach())

    for _ in range(args.warmup):
        step()
    if dev == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times, cpu_times = [], []
    for _ in range(args.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        if dev == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    out: dict[str, Any] = {
        "config": args.config,
        "s_per_step": min(times),  # the least disturbed step (shared machines)
        "cpu_s_per_step": min(cpu_times),  # CPU seconds of this process: robust to other load on the machine
        "steps": args.steps,
        "params_m": sum(p.numel() for p in net.parameters()) / 1e6,
    }
    if dev == "cuda":
        out["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 1e9
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as fc:
            step()
        out["flops_per_step"] = fc.get_total_flops()
    else:
        # ru_maxrss is in KiB on Linux
        out["peak_mem_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
        out["import_rss_gb"] = base_rss  # the process before the model existed (torch, timm, MONAI imported)
        out["build_rss_gb"] = build_rss  # peak after building the model and optimiser (weights only)
        out["state_gb"] = _state_bytes(net, opt) / 1e9  # weights + optimiser state (+ grads still held), tensor bytes
        out["allocator"] = _allocator_in_use() + (" +THP" if huge_pages else "")
    return out


JEMALLOC_PATHS = (
    "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
    "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
    "/usr/lib64/libjemalloc.so.2",
    "/usr/lib/libjemalloc.so.2",
    "/usr/local/lib/libjemalloc.so.2",
)


def find_jemalloc() -> str | None:
    """Path of an installed ``libjemalloc.so``, or ``None``."""
    for path in JEMALLOC_PATHS:
        if os.path.exists(path):
            return path
    name = ctypes.util.find_library("jemalloc")
    return name if name and os.path.exists(name) else None


def _allocator_in_use() -> str:
    """``jemalloc`` when it is mapped into this process, else ``glibc``."""
    try:
        with open("/proc/self/maps") as f:
            return "jemalloc" if "libjemalloc" in f.read() else "glibc"
    except OSError:
        return "unknown"


def _run_config(args: argparse.Namespace, name: str, env: dict[str, str] | None = None) -> dict[str, Any] | None:
    """Measure configuration ``name`` in a child process; ``None`` (reported) when it fails."""
    cmd = [sys.executable, __file__, "--config", name] + [
        f"--{k}={getattr(args, k.replace('-', '_'))}"
        for k in ("preset", "batch", "steps", "warmup", "threads", "device", "heap-threshold", "huge-pages")
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        print(f"{name}: FAILED (rc={proc.returncode})\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    r = json.loads(line[7:])
    r["images_per_s"] = args.batch / r["s_per_step"]
    if "flops_per_step" in r:
        r["mfu"] = r["flops_per_step"] / r["s_per_step"] / (args.peak_tflops * 1e12)
    return r


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="base", help="HCMAE size preset (base = ViT-B/16-384 + ConvNeXtV2-B)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2, help="timed steps (the fastest is reported)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"comma list of {CONFIGS}")
    ap.add_argument(
        "--peak-tflops", type=float, default=989.0, help="GPU peak bf16 dense TFLOP/s for MFU (H100/H200 SXM: 989)"
    )
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    ap.add_argument(
        "--heap-threshold",
        type=int,
        default=2 * 1024 * 1024,
        help="mmap threshold (bytes) of the heap-limited configs (cpu_lean.json's heap_mmap_threshold)",
    )
    ap.add_argument(
        "--huge-pages",
        choices=("on", "off"),
        default="on",
        help="the heap-limited configs back their large tensors with transparent huge pages (as cpu_lean.json)",
    )
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the list of configurations this many times, interleaved; report the least disturbed "
        "(minimum) step time of each configuration and the median of the per-round ratios",
    )
    ap.add_argument(
        "--allocator",
        choices=("glibc", "jemalloc"),
        default="glibc",
        help="C allocator of the measured processes (every configuration alike): jemalloc is preloaded "
        "from --jemalloc with --malloc-conf",
    )
    ap.add_argument("--jemalloc", default=None, help="path of libjemalloc.so (default: searched in the usual places)")
    ap.add_argument(
        "--malloc-conf",
        default="background_thread:false,dirty_decay_ms:-1,muzzy_decay_ms:-1",
        help="MALLOC_CONF for --allocator jemalloc (default: keep freed pages, never purge)",
    )
    ap.add_argument("--config", default=None, help=argparse.SUPPRESS)  # child mode
    return ap


def _print_run(args: argparse.Namespace, name: str, rnd: int, r: dict[str, Any]) -> None:
    extra = f"  {r['flops_per_step'] / 1e12:.2f} TFLOP/step  MFU {r['mfu']:.1%}" if "mfu" in r else ""
    imports = f" (imports {r['import_rss_gb']:.2f})" if "import_rss_gb" in r else ""
    if args.device == "cpu":
        extra += f"  cpu {r['cpu_s_per_step']:.3f} s/step  {r.get('allocator', '')}"
    tag = f"[{rnd + 1}/{args.rounds}] " if args.rounds > 1 else ""
    print(
        f"{tag}{name:15s} {r['s_per_step']:8.3f} s/step  {r['images_per_s']:8.2f} img/s  "
        f"peak {r['peak_mem_gb']:6.2f} GB{imports}  params {r['params_m']:.1f} M{extra}",
        flush=True,
    )


def _report(args: argparse.Namespace, runs: dict[str, list[dict[str, Any]]], key: str) -> dict[str, Any]:
    """Print the ratios; returns the least disturbed round of each configuration (with all its rounds)."""
    results = {name: dict(min(rs, key=lambda r: r[key])) for name, rs in runs.items() if rs}
    for name, rs in runs.items():
        if rs:
            results[name]["rounds"] = rs
    print(f"# preset={args.preset} batch={args.batch} device={args.device} threads={args.threads} steps={args.steps}")
    # on a shared CPU, compare CPU seconds per step (the process's own work); on GPU, wall time
    print(f"# ratios use {key}" + (f", minimum over {args.rounds} interleaved rounds" if args.rounds > 1 else ""))
    if {"hcmae", "vit_mae", "fcmae"} <= set(results):
        t = results["hcmae"][key] / (results["vit_mae"][key] + results["fcmae"][key])
        print(f"hybrid overhead  HCMAE / (MAE + FCMAE) step time: {t:.3f}  (target <= 1.1)")
    for ours in OURS:
        if {ours, "released"} <= set(results):
            print(_ratio_line(ours, results, runs, key))
    if {"hcmae_lean", "released_heap"} <= set(results):
        o, r = results["hcmae_lean"], results["released_heap"]
        print(
            f"hcmae_lean vs released-style with the same heap setting: {r[key] / o[key]:.2f}x faster, "
            f"peak memory {o['peak_mem_gb'] / r['peak_mem_gb']:.2f}x"
        )
    if {"fcmae", "released_fcmae"} <= set(results):
        print(f"FCMAE branch sparse vs dense: {results['released_fcmae'][key] / results['fcmae'][key]:.2f}x faster")
    return results


def _ratio_line(ours: str, results: dict[str, Any], runs: dict[str, list[dict[str, Any]]], key: str) -> str:
    o, r = results[ours], results["released"]
    line = (
        f"{ours} vs released-style: {r[key] / o[key]:.2f}x faster (target >= 1.5), "
        f"peak memory {o['peak_mem_gb'] / r['peak_mem_gb']:.2f}x (target <= 0.6)"
    )
    pairs = list(zip(runs["released"], runs[ours]))
    if len(pairs) > 1:  # the same comparison within each round (similar machine load for both)
        speed = sorted(a[key] / b[key] for a, b in pairs)
        mem = sorted(b["peak_mem_gb"] / a["peak_mem_gb"] for a, b in pairs)
        line += (
            f"; per round: speed {', '.join(f'{v:.2f}' for v in speed)} (median {statistics.median(speed):.2f}), "
            f"memory {', '.join(f'{v:.2f}' for v in mem)} (median {statistics.median(mem):.2f})"
        )
    return line


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    if args.config:
        print("RESULT " + json.dumps(run_child(args)), flush=True)
        return 0

    env = None
    if args.allocator == "jemalloc":
        lib = args.jemalloc or find_jemalloc()
        if lib is None:
            ap.error(
                "--allocator jemalloc: no libjemalloc.so found; pass --jemalloc PATH (Debian: apt install libjemalloc2)"
            )
        env = {**os.environ, "LD_PRELOAD": lib, "MALLOC_CONF": args.malloc_conf}
        print(f"# allocator: jemalloc {lib} MALLOC_CONF={args.malloc_conf}")
    names = args.configs.split(",")
    for name in names:
        if name not in CONFIGS:
            ap.error(f"unknown config {name!r}; choose from {CONFIGS}")
    key = "cpu_s_per_step" if args.device == "cpu" else "s_per_step"
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for rnd in range(args.rounds):
        for name in names:
            r = _run_config(args, name, env)
            if r is not None:
                runs[name].append(r)
                _print_run(args, name, rnd, r)
    results = _report(args, runs, key)
    if args.json:
        from hicur_monai.utils.io import atomic_write_json

        atomic_write_json(args.json, {"args": vars(args), "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
