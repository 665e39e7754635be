"""Where a CUDA training step's time goes, and what the attention kernel changes.

    python bench/gpu_probe.py                                  # autoresearch-50m, flash and cuDNN attention
    python bench/gpu_probe.py --recipe gpt2-124m --kernels cudnn --seconds 10
    python bench/gpu_probe.py --kernels cudnn --compile-mode max-autotune-no-cudagraphs
    python bench/gpu_probe.py --kernels cudnn cudnn+bf16res cudnn+cdt   # model and compiler variants

A run is named KERNEL[+OPTION...]: bf16res keeps the residual stream in bf16 (model.residual_dtype),
f32res in fp32 (otherwise the recipe's),
cdt turns on inductor's coordinate-descent tuning of its generated kernels, maxat compiles with
mode max-autotune-no-cudagraphs, mb2x doubles the micro-batch (half the accumulation steps).

1. Attention alone: scaled_dot_product_attention forward + backward at the recipe's micro-batch
   shape (bf16, causal), per kernel: ms, achieved TFLOP/s (causal work: half the square), and the
   largest difference of its output and input gradients from the flash kernel's.
2. The compiled model with the recipe's optimizers (Newton-Schulz compiled, as the trainer
   does) on fixed random tokens, per attention kernel (train.attention), each compiled afresh:
   tokens/s and MFU against the vendor's peak, after 3 warm-up steps.
3. torch.profiler over one step of each run: GPU time by kernel family (matmul,
   attention, Triton-generated fused kernels, other) and the 15 longest kernels.
Results: bench/results/gpu-probe-DATE.json; the tables print as Markdown.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import time
from collections import defaultdict
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import sdpa_kernel

from pretrainlab import api
from pretrainlab.model import GPT
from pretrainlab.model.gpt import _SDPA, attention_kernels
from pretrainlab.train.optim import Muon, build_optimizers
from pretrainlab.train.telemetry import device_name, peak_flops

FAMILIES = [("attention", r"flash|fmha|attention|cudnn|sdpa"), ("matmul", r"gemm|cutlass|nvjet|xmma|cublas|sm90_|wgmma"),
            ("fused (Triton)", r"^triton_"), ("optimizer", r"adam|foreach|multi_tensor")]


def attention_alone(rows: int, heads: int, seq: int, head_dim: int, reps: int = 20) -> list[dict]:
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(rows, heads, seq, head_dim, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_() for _ in range(3))
    dout = torch.randn_like(q)
    work = 4 * rows * heads * seq * seq * head_dim / 2 * 3.5  # causal: half the square; backward 2.5x forward
    out, ref = [], None
    for name in ("flash", "cudnn", "efficient"):
        try:
            with sdpa_kernel(_SDPA[name]):  # this kernel only: an error where it cannot run
                def step():
                    q.grad = k.grad = v.grad = None
                    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
                    y.backward(dout)
                    return y
                for _ in range(3):
                    y = step()
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                for _ in range(reps):
                    y = step()
                torch.cuda.synchronize()
                ms = (time.perf_counter() - t0) / reps * 1e3
            got = (y.detach(), q.grad.clone(), k.grad.clone(), v.grad.clone())
            ref = ref or got
            diff = max((a.float() - b.float()).abs().max().item() for a, b in zip(got, ref))
            out.append({"kernel": name, "ms": ms, "tflops": work / ms / 1e9, "max_abs_diff_vs_flash": diff})
        except RuntimeError as e:
            out.append({"kernel": name, "error": str(e).splitlines()[0][:200]})
    return out


OPTIONS = ("bf16res", "f32res", "cdt", "maxat", "mb2x")


def kernel_run(recipe, spec: str, seconds: float, profile: bool, mode: str | None = None) -> dict:
    torch._dynamo.reset()  # dynamo's in-memory cache would hand back the last kernel's graph: its guards ignore the kernel
    kernel, *opts = spec.split("+")
    if set(opts) - set(OPTIONS):
        sys.exit(f"gpu_probe: unknown option in {spec!r}: choose among {', '.join(OPTIONS)}")
    residual = "bfloat16" if "bf16res" in opts else "float32" if "f32res" in opts else recipe.model.residual_dtype
    m = dataclasses.replace(recipe.model, residual_dtype=residual)
    mode = "max-autotune-no-cudagraphs" if "maxat" in opts else mode
    import torch._inductor.config as inductor_config
    inductor_config.coordinate_descent_tuning = "cdt" in opts
    if hasattr(torch.compiler.config, "cache_key_tag"):
        torch.compiler.config.cache_key_tag = spec  # a variant compiled earlier must not come back from the disk cache
    rows, micro = recipe.train.batch_tokens // m.seq_len, recipe.train.micro_batch_rows * (2 if "mb2x" in opts else 1)
    torch.manual_seed(0)
    torch.cuda.reset_peak_memory_stats()
    with attention_kernels(kernel):
        raw = GPT(m).cuda()
        fpt = raw.flops_per_token()
        model = torch.compile(raw, mode=mode)
        optimizers = build_optimizers(raw, recipe.optim)
        for o in optimizers:
            if isinstance(o, Muon):
                o.compile_newton_schulz()
        x = torch.randint(0, m.vocab_size, (rows, m.seq_len + 1), device="cuda")

        def step():
            for i in range(0, rows, micro):
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    loss = model(x[i:i + micro, :-1], x[i:i + micro, 1:], per_row=True).mean()
                (loss * micro / rows).backward()
            for o in optimizers:
                o.step()
                o.zero_grad(set_to_none=True)

        t0 = time.perf_counter()
        for _ in range(3):
            step()
        torch.cuda.synchronize()
        warm = time.perf_counter() - t0
        steps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            step()
            steps += 1
            if steps % 4 == 0:
                torch.cuda.synchronize()
        torch.cuda.synchronize()
        tps = steps * rows * m.seq_len / (time.perf_counter() - t0)
        result = {"kernel": spec, "residual_dtype": residual, "compile_mode": mode or "default", "tokens_per_s": tps, "mfu": tps * fpt / peak_flops(torch.device("cuda"), "bfloat16"),
                  "warmup_s": warm, "steps": steps, "peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30}
        if profile:
            result["profile"] = profile_step(step)
    return result


def profile_step(step) -> dict:
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    kernels = defaultdict(float)
    for ev in prof.key_averages():
        t = getattr(ev, "self_device_time_total", None) or getattr(ev, "self_cuda_time_total", 0)
        if t:
            kernels[ev.key] += t / 1e3  # ms
    total = sum(kernels.values())
    families = defaultdict(float)
    for name, ms in kernels.items():
        fam = next((f for f, pat in FAMILIES if re.search(pat, name, re.I)), "other")
        families[fam] += ms
    top = sorted(kernels.items(), key=lambda kv: -kv[1])[:15]
    return {"gpu_ms": total, "families_ms": dict(families), "top": [{"kernel": k[:120], "ms": v} for k, v in top]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="autoresearch-50m")
    ap.add_argument("--kernels", nargs="+", default=["flash", "cudnn"], help="attention kernels to compare (train.attention)")
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--compile-mode", default=None, help="torch.compile mode for the model (e.g. max-autotune-no-cudagraphs: "
                                                         "Triton matmul templates with the elementwise work fused in; minutes to compile)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_probe: no CUDA device; this probe measures a GPU")
    torch.backends.cuda.matmul.allow_tf32 = True
    recipe = api.resolve_recipe(args.recipe, [])
    m = recipe.model
    m.vocab_size = m.vocab_size or (256 if recipe.data.tokenizer == "byte" else int(recipe.data.tokenizer.split(":")[1]))
    res = {"meta": {"date": date.today().isoformat(), "device": device_name(torch.device("cuda")), "torch": torch.__version__,
                    "cudnn": torch.backends.cudnn.version(), "command": " ".join(sys.argv), "recipe": args.recipe}}
    res["attention"] = attention_alone(recipe.train.micro_batch_rows, m.n_head, m.seq_len, m.n_embd // m.n_head)
    print("| kernel | fwd+bwd ms | TFLOP/s | max diff vs flash |\n|---|---|---|---|")
    for a in res["attention"]:
        print(f"| {a['kernel']} | {a.get('ms', float('nan')):.2f} | {a.get('tflops', float('nan')):.0f} | "
              f"{a.get('max_abs_diff_vs_flash', a.get('error'))} |", flush=True)
    res["kernels"] = []
    for kernel in args.kernels:
        r = kernel_run(recipe, kernel, args.seconds, profile=True, mode=args.compile_mode)
        res["kernels"].append(r)
        prof = r["profile"]
        print(f"{kernel}: {r['tokens_per_s']:,.0f} tok/s, MFU {r['mfu']:.1%}, warm-up {r['warmup_s']:.0f}s, "
              f"peak {r['peak_mem_gb']:.1f} GB; one step {prof['gpu_ms']:.1f} GPU ms: "
              + ", ".join(f"{fam} {ms:.1f}" for fam, ms in sorted(prof["families_ms"].items(), key=lambda kv: -kv[1])), flush=True)
        out = Path(__file__).parent / "results" / f"gpu-probe-{res['meta']['date']}-{args.recipe}.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(res, indent=2))
    for r in res["kernels"]:
        print(f"\nthe longest kernels of one step ({r['kernel']}):")
        for t in r["profile"]["top"]:
            print(f"  {t['ms']:8.2f} ms  {t['kernel']}")
    print(f"raw: {out}")


if __name__ == "__main__":
    main()
