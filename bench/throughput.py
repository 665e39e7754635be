"""Training throughput and MFU of the recipes, against a plain PyTorch GPT of the same shape.

    make bench                                   # = python bench/throughput.py
    python bench/throughput.py --recipes tiny-cpu small --seconds 30
    python bench/throughput.py --recipes autoresearch-50m gpt2-124m --seconds 120   # on a GPU

For each recipe, three measurements in the same process, one after the other:
  trainer    the real `pretrainlab train` path (data loader, telemetry, grad-norms, clip,
             Muon/AdamW) for --seconds of training; tokens/s over the timed steps
  model      pretrainlab's GPT + the recipe's optimizers in a bare loop on fixed random
             tokens (the harness overhead is trainer vs model), and again with AdamW
             (separating the model's cost from Muon's)
  plain      bench/plain_gpt.py (GPT-2 style, AdamW) in the same bare loop
MFU on a GPU uses the vendor peak (train/telemetry.py). A CPU has no vendor figure in the
table, so on CPU the script also measures the best fp32 matmul rate of this machine and
reports "MFU vs measured matmul peak" (achieved model FLOP/s / that rate).
Results go to bench/results/throughput-DATE.json and print as a Markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import tempfile
import time
from contextlib import nullcontext
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from plain_gpt import PlainGPT

from pretrainlab import api
from pretrainlab.data import Corpus, builtin_corpus_dir
from pretrainlab.model import GPT
from pretrainlab.model.gpt import attention_kernels, auto_attention_kernel
from pretrainlab.train import compiling
from pretrainlab.train.optim import build_optimizers
from pretrainlab.train.telemetry import device_name, peak_flops


def matmul_peak_flops(device: torch.device, dtype: torch.dtype, seconds: float = 3.0) -> float:
    """Best sustained dense matmul rate of this device (FLOP/s), over a few square sizes."""
    best = 0.0
    for n in (512, 1024, 2048):
        a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
        a @ b
        _sync(device)
        t0, reps = time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds / 3:
            a @ b
            reps += 1
        _sync(device)
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0))
    return best


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare_loop(model, optimizers, rows, seq_len, vocab, device, autocast, seconds, micro_rows) -> float:
    """tokens/s of forward+backward+step on fixed random tokens, after 3 warm-up steps."""
    x = torch.randint(0, vocab, (rows, seq_len + 1), device=device)
    steps, t0 = 0, None
    while True:
        if steps == 3:
            _sync(device)
            t0 = time.perf_counter()
        for i in range(0, rows, micro_rows):
            with autocast:
                loss = model(x[i : i + micro_rows, :-1], x[i : i + micro_rows, 1:])
            (loss * micro_rows / rows).backward()
        for o in optimizers:
            o.step()
            o.zero_grad(set_to_none=True)
        steps += 1
        if t0 is not None and time.perf_counter() - t0 > seconds:
            _sync(device)
            return (steps - 3) * rows * seq_len / (time.perf_counter() - t0)


def bench_recipe(name: str, seconds: float, device: torch.device, extra: list[str]) -> dict:
    recipe = api.resolve_recipe(name, extra)
    corpus = Corpus.open(builtin_corpus_dir(recipe.data.tokenizer.replace(":", "")), verify=False)
    recipe.model.vocab_size = corpus.tokenizer.vocab_size
    m = recipe.model
    dtype = "bfloat16" if device.type == "cuda" else "float32"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    rows = recipe.train.batch_tokens // m.seq_len
    result = {"recipe": name, "shape": f"{m.n_layer}x{m.n_embd}, {m.n_head} heads, T={m.seq_len}, V={m.vocab_size}",
              "batch_tokens": recipe.train.batch_tokens, "overrides": extra}

    # 1. the real trainer
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [*extra, f"budget.seconds={seconds}", f"train.device={device.type}", "train.eval_every=0", "eval.tokens_per_domain=4096"]
        _, summary = api.train_run(name, overrides, out=Path(tmp) / "run", echo=False)
    fpt = summary["flops_per_token"]
    result["params"] = summary["params"]
    result["trainer_tokens_per_s"] = summary["tokens_per_s"]

    # 2. pretrainlab's model in a bare loop, 3. the plain GPT in the same loop, both with the trainer's
    # attention kernel (train.attention; on an H100 'auto' is cuDNN's), so the rows compare models, not kernels
    result["attention"] = recipe.train.attention if recipe.train.attention != "auto" else (auto_attention_kernel() or "torch's order")
    with attention_kernels(recipe.train.attention):
        torch.manual_seed(0)
        model = GPT(m).to(device)
        compile_ = device.type == "cuda" and compiling.plan(recipe.train.compile, device.type, 1, "ddp") == "on"  # CPU: bench/speedrun.py
        result["model_tokens_per_s"] = bare_loop(torch.compile(model) if compile_ else model, build_optimizers(model, recipe.optim),
                                                 rows, m.seq_len, m.vocab_size, device, autocast, seconds, recipe.train.micro_batch_rows)
        result["model_adamw_tokens_per_s"] = bare_loop(torch.compile(model) if compile_ else model,
                                                       build_optimizers(model, dataclasses.replace(recipe.optim, name="adamw")),
                                                       rows, m.seq_len, m.vocab_size, device, autocast, seconds, recipe.train.micro_batch_rows)
        del model
        plain = PlainGPT(m.vocab_size, m.seq_len, m.n_layer, m.n_embd, m.n_head).to(device)
        plain_opt = [torch.optim.AdamW(plain.parameters(), lr=3e-4, fused=device.type == "cuda")]
        result["plain_tokens_per_s"] = bare_loop(torch.compile(plain) if compile_ else plain, plain_opt,
                                                 rows, m.seq_len, m.vocab_size, device, autocast, seconds, recipe.train.micro_batch_rows)
        plain_nonembed = sum(p.numel() for p in plain.parameters()) - plain.wte.weight.numel() - plain.wpe.weight.numel()
        plain_fpt = 6 * (plain_nonembed + plain.wte.weight.numel()) + 12 * m.n_layer * m.n_embd * m.seq_len  # tied head is a matmul
        del plain

    peak = peak_flops(device, dtype)
    result["peak_source"] = "vendor" if peak else "measured fp32 matmul"
    peak = peak or matmul_peak_flops(device, torch.float32)
    result["peak_tflops"] = peak / 1e12
    for key, f in (("trainer", fpt), ("model", fpt), ("model_adamw", fpt), ("plain", plain_fpt)):
        result[f"{key}_tflops"] = f * result[f"{key}_tokens_per_s"] / 1e12
        result[f"{key}_mfu"] = result[f"{key}_tflops"] * 1e12 / peak
    result["trainer_vs_plain"] = result["trainer_tokens_per_s"] / result["plain_tokens_per_s"]
    result["harness_overhead"] = 1 - result["trainer_tokens_per_s"] / result["model_tokens_per_s"]
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", nargs="+", default=["tiny-cpu", "small"])
    ap.add_argument("--seconds", type=float, default=30.0, help="timed seconds per measurement")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="recipe overrides applied to all three measurements (e.g. a smaller batch on CPU)")
    args = ap.parse_args()
    device = torch.device(args.device)
    results = [bench_recipe(name, args.seconds, device, args.overrides) for name in args.recipes]
    meta = {"date": date.today().isoformat(), "device": device_name(device), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "platform": platform.platform(), "command": " ".join(sys.argv)}
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    path = out / f"throughput-{meta['date']}-{device.type}-{'-'.join(args.recipes)}.json"
    path.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print(f"\n{meta['date']} | {meta['device']} | torch {meta['torch']} | {meta['threads']} threads | `{meta['command']}`\n")
    print("| recipe | params | batch tokens | trainer tok/s | model-only tok/s | model + AdamW tok/s | plain GPT + AdamW tok/s "
          "| trainer / plain | model+AdamW / plain | harness overhead | trainer TFLOP/s | MFU (trainer) | peak |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['recipe']} | {r['params'] / 1e6:.1f}M | {r['batch_tokens']:,} | {r['trainer_tokens_per_s']:,.0f} | {r['model_tokens_per_s']:,.0f} | {r['model_adamw_tokens_per_s']:,.0f} | "
              f"{r['plain_tokens_per_s']:,.0f} | {r['trainer_vs_plain']:.2f}x | {r['model_adamw_tokens_per_s'] / r['plain_tokens_per_s']:.2f}x | "
              f"{r['harness_overhead']:.1%} | "
              f"{r['trainer_tflops']:.3f} | {r['trainer_mfu']:.1%} | {r['peak_tflops']:.2f} TFLOP/s ({r['peak_source']}) |")
    print(f"\nraw results: {path}")


if __name__ == "__main__":
    main()
