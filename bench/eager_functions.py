"""Step time of eager fp32 CPU training with and without the model's hand-written autograd
Functions (model/gpt.py: RMSNorm, ReLU^2, and RMSNorm(RoPE(x)) for queries and keys).

    python bench/eager_functions.py                                   # tiny-cpu, AdamW, 4,096 tokens, all Functions
    python bench/eager_functions.py --recipe small --optim muon --rounds 3 --steps 3
    python bench/eager_functions.py --only rope-norm --batch-tokens 2048

The same model is built for each arm and timed in interleaved rounds after 2 warm-up steps;
the plain arm runs the plain ops (`--only rope-norm`: only that Function swapped for
norm(apply_rope(...))). Prints the medians and writes bench/results/eager-functions-DATE-....json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from datetime import date
from pathlib import Path

import torch

import pretrainlab.model.gpt as gpt
from pretrainlab.model import GPT
from pretrainlab.recipes import get_recipe
from pretrainlab.train.optim import build_optimizers
from pretrainlab.train.trainer import keep_freed_memory


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="tiny-cpu")
    ap.add_argument("--optim", default="adamw", choices=["adamw", "muon"])
    ap.add_argument("--batch-tokens", type=int, default=4096)
    ap.add_argument("--only", choices=["all", "rope-norm"], default="all", help="which Functions the plain arm replaces")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per arm per round")
    args = ap.parse_args()
    keep_freed_memory()  # as the trainer does on CPU
    recipe = get_recipe(args.recipe)
    m = dataclasses.replace(recipe.model, vocab_size=256)
    x = torch.randint(0, 256, (max(1, args.batch_tokens // m.seq_len), m.seq_len + 1))
    eager, fused = gpt._eager_cpu_training, gpt._RopeNorm.apply
    plain_rope_norm = lambda t, cos, sin: gpt.norm(gpt.apply_rope(t, cos, sin))  # noqa: E731
    times: dict[str, list[float]] = {"plain": [], "functions": []}
    try:
        for _ in range(args.rounds):
            for arm in times:
                if args.only == "all":
                    gpt._eager_cpu_training = eager if arm == "functions" else (lambda t: False)
                else:
                    gpt._RopeNorm.apply = fused if arm == "functions" else plain_rope_norm
                torch.manual_seed(0)
                model = GPT(m)
                opts = build_optimizers(model, dataclasses.replace(recipe.optim, name=args.optim))

                def step():
                    model(x[:, :-1], x[:, 1:]).backward()
                    for o in opts:
                        o.step()
                        o.zero_grad(set_to_none=True)

                for _ in range(2):
                    step()
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    step()
                times[arm].append((time.perf_counter() - t0) / args.steps * 1e3)
    finally:
        gpt._eager_cpu_training, gpt._RopeNorm.apply = eager, fused
    med = {arm: statistics.median(v) for arm, v in times.items()}
    change = med["functions"] / med["plain"] - 1
    print(f"{args.recipe}, {args.optim}, {args.batch_tokens} tokens, {args.only}: plain {med['plain']:.1f} ms, "
          f"with the Functions {med['functions']:.1f} ms ({change:+.1%}); rounds: {times}")
    out = Path(__file__).parent / "results" / f"eager-functions-{date.today()}-{args.recipe}-{args.optim}-{args.batch_tokens}-{args.only}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"date": str(date.today()), "args": vars(args), "threads": torch.get_num_threads(),
                               "ms": times, "median_ms": med, "change": change}, indent=2))
    print(f"raw: {out}")


if __name__ == "__main__":
    main()
