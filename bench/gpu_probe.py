"""Where a CUDA training step's time goes, and what the attention kernel changes.

    python bench/gpu_probe.py                                  # autoresearch-50m, flash and cuDNN attention
    python bench/gpu_probe.py --recipe gpt2-124m --kernels cudnn --seconds 10
    python bench/gpu_probe.py --kernels cudnn --compile-mode max-autotune-no-cudagraphs
    python bench/gpu_probe.py --kernels cudnn cudnn+bf16res cudnn+cdt   # model and compiler variants

A run is named KERNEL[+OPTION...]: bf16res keeps the residual stream in bf16 (model.residual_dtype),
f32res in fp32 (otherwise the recipe's),
cdt turns on inductor's coordinate-descent tuning of its generated kernels, maxat compiles with
mode max-autotune-no-cudagraphs (on an H100 cuBLAS beat every Triton matmul template of this model, 2026-11-28),
tma does so with inductor's persistent TMA matmul templates added (the Hopper kind that can match cuBLAS, so that
the elementwise work around a matmul can fuse into it; give the probe 400 s or more: autotuning takes minutes), mb2x doubles the micro-batch (half the accumulation steps),
torch runs QK-norm + RoPE and the soft-capped loss as plain ops compiled by inductor instead of
model/kernels.py's Triton kernels (train.kernels=torch), torchqk only the first, torchce only the
loss, ropebf16 keeps the rotary tables in bf16 (so the plain rotation
stays in bf16 instead of promoting to fp32).

0. QK-norm + RoPE alone (autoresearch-50m's queries: micro-batch x seq x heads x head_dim, bf16):
   model/kernels.py's fused kernels against the plain ops compiled, forward + backward, and the
   largest difference between them (outputs and input gradients).
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

FAMILIES = [("attention", r"flash|fmha|attention|cudnn|sdpa"), ("matmul (Triton template)", r"^triton_tem"), ("matmul", r"gemm|cutlass|nvjet|xmma|cublas|sm90_|wgmma"),
            ("fused (Triton)", r"^triton_"), ("hand-written (Triton)", r"^_rope_norm|^_softcap_ce"), ("optimizer", r"adam|foreach|multi_tensor")]


def timed(step, reps: int):
    """step() 3 times to warm up, then `reps` times: its last result and the milliseconds per call (wall clock, synchronized)."""
    for _ in range(3):
        y = step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        y = step()
    torch.cuda.synchronize()
    return y, (time.perf_counter() - t0) / reps * 1e3


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
                y, ms = timed(step, reps)
            got = (y.detach(), q.grad.clone(), k.grad.clone(), v.grad.clone())
            ref = ref or got
            diff = max((a.float() - b.float()).abs().max().item() for a, b in zip(got, ref))
            out.append({"kernel": name, "ms": ms, "tflops": work / ms / 1e9, "max_abs_diff_vs_flash": diff})
        except RuntimeError as e:
            out.append({"kernel": name, "error": str(e).splitlines()[0][:200]})
    return out


OPTIONS = ("bf16res", "f32res", "cdt", "maxat", "tma", "mb2x", "torch", "torchqk", "torchce", "ropebf16")


def ce_check(rows: int, vocab: int, padded: int, cap: float) -> dict:
    """model/kernels.py's soft-capped cross-entropy against the plain ops (fp32 from bf16 logits), on the GPU."""
    from pretrainlab.model import kernels
    g = torch.Generator(device="cuda").manual_seed(0)
    z = (torch.randn(rows, padded, device="cuda", generator=g) * 10).bfloat16().requires_grad_()
    y = torch.randint(0, vocab, (rows,), device="cuda", generator=g)
    dl = torch.rand(rows, device="cuda", generator=g)
    fused = kernels.softcap_cross_entropy(z, y, vocab, cap)
    fused.backward(dl)
    gf, z.grad = z.grad.float(), None
    plain = F.cross_entropy(cap * torch.tanh(z[:, :vocab].float() / cap), y, reduction="none")
    plain.backward(dl)
    return {"rows": rows, "vocab": vocab, "loss max diff": (fused - plain).abs().max().item(),
            "grad max diff": (gf - z.grad.float()).abs().max().item(), "grad max": z.grad.float().abs().max().item()}


def qk_alone(rows: int, seq: int, heads: int, head_dim: int, reps: int = 20) -> dict:
    from pretrainlab.model import kernels
    from pretrainlab.model.gpt import apply_rope
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(rows, seq, heads, head_dim, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_()
    dy = torch.randn(rows, heads, seq, head_dim, device="cuda", dtype=torch.bfloat16, generator=g).transpose(1, 2)  # SDPA's layout
    ang = torch.outer(torch.arange(seq, device="cuda", dtype=torch.float32), 10000.0 ** (-torch.arange(0, head_dim, 2, device="cuda") / head_dim))
    cos, sin = ang.cos()[None, :, None, :], ang.sin()[None, :, None, :]
    plain = torch.compile(lambda t: F.rms_norm(apply_rope(t, cos, sin), (head_dim,)).to(t.dtype))
    out = {"shape": [rows, seq, heads, head_dim]}
    got = {}
    for name, fn in (("compiled plain ops", plain), ("triton fused", lambda t: kernels.rope_norm(t, cos, sin))):
        def step():
            x.grad = None
            y = fn(x)
            y.backward(dy)
            return y
        y, ms = timed(step, reps)
        got[name] = (y.detach().float(), x.grad.float())
        moved = 5 * x.numel() * 2  # forward: read x, write y; backward: read x and dy, write dx (bf16)
        out[name] = {"ms": ms, "GB/s at the minimum traffic": moved / ms / 1e6}
    (y0, g0), (y1, g1) = got.values()
    out["max_abs_diff"] = {"output": (y0 - y1).abs().max().item(), "input grad": (g0 - g1).abs().max().item(),
                           "input grad max": g0.abs().max().item()}
    return out


def kernel_run(recipe, spec: str, seconds: float, profile: bool, mode: str | None = None) -> dict:
    torch._dynamo.reset()  # dynamo's in-memory cache would hand back the last kernel's graph: its guards ignore the kernel
    kernel, *opts = spec.split("+")
    if set(opts) - set(OPTIONS):
        sys.exit(f"gpu_probe: unknown option in {spec!r}: choose among {', '.join(OPTIONS)}")
    residual = "bfloat16" if "bf16res" in opts else "float32" if "f32res" in opts else recipe.model.residual_dtype
    m = dataclasses.replace(recipe.model, residual_dtype=residual)
    mode = "max-autotune-no-cudagraphs" if {"maxat", "tma"} & set(opts) else mode
    import torch._inductor.config as inductor_config
    inductor_config.coordinate_descent_tuning = "cdt" in opts
    if hasattr(inductor_config.triton, "enable_persistent_tma_matmul"):  # Hopper's TMA + persistent Triton matmul templates
        inductor_config.triton.enable_persistent_tma_matmul = "tma" in opts
    if hasattr(torch.compiler.config, "cache_key_tag"):
        torch.compiler.config.cache_key_tag = spec  # a variant compiled earlier must not come back from the disk cache
    rows, micro = recipe.train.batch_tokens // m.seq_len, recipe.train.micro_batch_rows * (2 if "mb2x" in opts else 1)
    torch.manual_seed(0)
    torch.cuda.reset_peak_memory_stats()
    with attention_kernels(kernel):
        raw = GPT(m).cuda()
        raw.use_kernels("torch" if "torch" in opts else "auto")
        raw.fused_loss = raw.fused_loss and "torchce" not in opts
        for block in raw.blocks:
            block.attn.fused = block.attn.fused and "torchqk" not in opts
        if "ropebf16" in opts:
            raw.cos, raw.sin = raw.cos.bfloat16(), raw.sin.bfloat16()
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
    try:
        res["qk_norm_rope"] = qk_alone(recipe.train.micro_batch_rows, m.seq_len, m.n_head, m.n_embd // m.n_head)
    except Exception as e:  # noqa: BLE001 - a probe reports what failed and goes on
        res["qk_norm_rope"] = {"error": f"{type(e).__name__}: {e}"[:2000]}
    print(json.dumps(res["qk_norm_rope"], indent=1), flush=True)
    try:
        res["softcap_ce"] = ce_check(8192, m.vocab_size, -(-m.vocab_size // 64) * 64 + 64, m.logit_softcap or 15.0)
    except Exception as e:  # noqa: BLE001
        res["softcap_ce"] = {"error": f"{type(e).__name__}: {e}"[:2000]}
    print(json.dumps(res["softcap_ce"], indent=1), flush=True)
    res["attention"] = attention_alone(recipe.train.micro_batch_rows, m.n_head, m.seq_len, m.n_embd // m.n_head)
    print("| kernel | fwd+bwd ms | TFLOP/s | max diff vs flash |\n|---|---|---|---|")
    for a in res["attention"]:
        print(f"| {a['kernel']} | {a.get('ms', float('nan')):.2f} | {a.get('tflops', float('nan')):.0f} | "
              f"{a.get('max_abs_diff_vs_flash', a.get('error'))} |", flush=True)
    res["kernels"] = []
    out = Path(__file__).parent / "results" / f"gpu-probe-{res['meta']['date']}-{args.recipe}.json"
    out.parent.mkdir(exist_ok=True)
    for kernel in args.kernels:
        try:
            r = kernel_run(recipe, kernel, args.seconds, profile=True, mode=args.compile_mode)
        except Exception as e:  # noqa: BLE001 - one variant failing must not lose the others
            import traceback
            traceback.print_exc()
            res["kernels"].append({"kernel": kernel, "error": f"{type(e).__name__}: {e}"[:2000]})
            out.write_text(json.dumps(res, indent=2))
            continue
        res["kernels"].append(r)
        prof = r["profile"]
        print(f"{kernel}: {r['tokens_per_s']:,.0f} tok/s, MFU {r['mfu']:.1%}, warm-up {r['warmup_s']:.0f}s, "
              f"peak {r['peak_mem_gb']:.1f} GB; one step {prof['gpu_ms']:.1f} GPU ms: "
              + ", ".join(f"{fam} {ms:.1f}" for fam, ms in sorted(prof["families_ms"].items(), key=lambda kv: -kv[1])), flush=True)
        out.write_text(json.dumps(res, indent=2))
    for r in (r for r in res["kernels"] if "profile" in r):
        print(f"\nthe longest kernels of one step ({r['kernel']}):")
        for t in r["profile"]["top"]:
            print(f"  {t['ms']:8.2f} ms  {t['kernel']}")
    print(f"raw: {out}")


if __name__ == "__main__":
    main()
