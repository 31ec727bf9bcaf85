"""Whole-volume inference speed of the fusion U-Net vs the MONAI UNet baseline, and the coarse-state cache.

Same volume, same run, same inferer (:class:`hicur_monai.segmentation.VolumeSliceInferer`):

* ``fusion``   FusionSegNet (``--preset``) with the coarse states of every slice
* ``baseline`` monai.networks.nets.UNet (the bundle's ``baseline.json`` network)

It prints slices/s for each (median of ``--repeats`` runs after one warm-up), and the cost of
the coarse states for all slices of the volume: computed by the provider (no cache), read from
a warm :class:`~hicur_monai.segmentation.CoarseStateCache` in memory, and from its on-disk
files in a new process-like cache object. With the offline stand-in encoder (``hashed_bow``,
text only) the provider is cheap; with the aligned VLM (``--text-encoder vlm_coarse
--text-encoder-kwargs '{"model": "runs/vl_alignment/step2/model"}'``) every uncached slice
costs one LLM forward pass.

Usage (from the repo root)::

    python benchmarks/segmentation.py --preset tiny --img-size 64 --threads 2
    python benchmarks/segmentation.py --preset base --img-size 256 --device cuda
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch


def _volume(path: str | None, depth: int, size: int) -> torch.Tensor:
    if path:
        from hicur_monai.transforms.fragments import build_pipeline

        d = build_pipeline("mri.json::load")({"image": path})
        return torch.as_tensor(d["image"])[None].float()
    g = torch.Generator().manual_seed(0)
    return torch.rand(1, 1, size, size, depth, generator=g)


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--volume", help="a NIfTI/DICOM volume (default: a random 64x64x16 volume)")
    ap.add_argument("--depth", type=int, default=16)
    ap.add_argument("--size", type=int, default=64, help="in-plane size of the random volume")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--img-size", type=int, default=64, help="network input size (the bundle's img_size)")
    ap.add_argument("--sw-batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--text-encoder", default="hashed_bow")
    ap.add_argument("--text-encoder-kwargs", default='{"dim": 64}')
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from monai.networks.nets import UNet

    from hicur_monai.networks.fusion_seg import FusionSegNet
    from hicur_monai.segmentation import CoarseStateCache, TextEncoderStates, VolumeSliceInferer

    dev = torch.device(args.device)
    vol = _volume(args.volume, args.depth, args.size).to(dev)
    n_slices = vol.shape[-1]
    provider = TextEncoderStates(args.text_encoder, encoder_kwargs=json.loads(args.text_encoder_kwargs))
    nets = {
        "fusion": FusionSegNet(preset=args.preset, text_dim=provider.dim or 64).to(dev).eval(),
        "baseline": UNet(2, 3, 1, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2,
                         norm="instance").to(dev).eval(),
    }
    cache = CoarseStateCache(provider)
    results = {}
    with torch.inference_mode():
        for name, net in nets.items():
            inf = VolumeSliceInferer(args.img_size, args.sw_batch, coarse=cache if name == "fusion" else None)
            sec = _time(lambda inf=inf, net=net: inf(vol, net), args.repeats)
            results[name] = {"seconds_per_volume": sec, "slices_per_s": n_slices / sec,
                             "params": sum(p.numel() for p in net.parameters())}
    # coarse-state cost for the slices of this volume (network inputs in [0, 1])
    x = vol[0].movedim(-1, 0).repeat(1, 3, 1, 1).cpu()
    x = torch.nn.functional.interpolate(x, size=(args.img_size, args.img_size), mode="bilinear")
    fresh = TextEncoderStates(args.text_encoder, encoder_kwargs=json.loads(args.text_encoder_kwargs))
    no_cache = _time(lambda: fresh(x) if fresh.image_conditioned
                     else [fresh.encoder.encode([fresh.instruction]) for _ in x],
                     args.repeats)
    warm = CoarseStateCache(provider)
    warm(x)
    mem = _time(lambda: warm(x), args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        CoarseStateCache(provider, cache_dir=tmp)(x)
        disk = _time(lambda: CoarseStateCache(provider, cache_dir=tmp)(x), args.repeats)
    print(f"device {dev}, volume {tuple(vol.shape[1:])} ({n_slices} slices), network input {args.img_size} px, "
          f"preset {args.preset}, torch threads {torch.get_num_threads()}")
    for name, r in results.items():
        print(f"{name:9s} {r['slices_per_s']:8.1f} slices/s   {r['seconds_per_volume']:.3f} s/volume   "
              f"{r['params'] / 1e6:.2f} M params")
    ratio = results["fusion"]["seconds_per_volume"] / results["baseline"]["seconds_per_volume"]
    print(f"fusion / baseline time: {ratio:.2f}x")
    print(f"coarse states ({args.text_encoder}, {n_slices} slices): provider every time {no_cache * 1e3:.1f} ms, "
          f"memory cache {mem * 1e3:.1f} ms, disk cache {disk * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
