"""Speedrun: training time to a target validation loss, the lab's recipe against a plain GPT.

    python bench/speedrun.py                                    # tiny-cpu shape (4x128, T=128)
    python bench/speedrun.py --tokens 409600 --throughput-recipes tiny-cpu small

1. Time to target. Arms trained in this process on the same data (the builtin corpus with
   the recipe's tokenizer, one BatchLoader seed: every arm sees the same batches) and scored
   on the same validation tokens (eval.evaluate_bpb, split "val") every --eval-every steps:
     plain      bench/plain_gpt.py (LayerNorm, GELU, learned positions, tied embeddings) with
                AdamW, linear warmup and cosine decay (plain_optimizer, plain_lr_multiplier)
     lab        the recipe as `pretrainlab train` runs it: pretrainlab's GPT, its optimizers
                (Muon + AdamW by default), its schedule, gradient clipping
     lab-adamw  the same with optim.name=adamw: the optimizer plain uses
     lab-half   the recipe with half the token budget, its schedule completed in half the tokens
   Every arm trains --tokens tokens (lab-half: half), with the schedule set by that budget.
   The arms take turns, one optimizer step each, so load from other processes on the machine
   falls on all of them alike; an arm's clock runs during its own steps only (evaluations
   excluded). Target: plain's final val_bpb. Reported per arm: training seconds until its
   first evaluation at or below the target, and that time over plain's.
   --compile on|off applies to every arm (off by default: what train.compile=auto picks for
   a run this short on CPU); with on, each arm's compile warm-up is reported apart.
2. Throughput: bare forward/backward/step loops on the recipe's batch shape (random tokens)
   for plain + AdamW, lab + AdamW and lab + the recipe's optimizer (Muon), each eager and
   compiled, interleaved round by round; tokens/s ratios to plain at equal compile setting,
   and each compiled model's warm-up seconds.
Results: bench/results/speedrun-DATE.json and Markdown tables on stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from plain_gpt import PlainGPT, plain_lr_multiplier, plain_optimizer

from pretrainlab import api
from pretrainlab import eval as evaluation
from pretrainlab.data import BatchLoader, Corpus, builtin_corpus_dir, prepare_builtin
from pretrainlab.model import GPT
from pretrainlab.train.compiling import compile_model
from pretrainlab.train.optim import build_optimizers, lr_multiplier, set_lr


def open_corpus(tokenizer: str) -> Corpus:
    path = builtin_corpus_dir(tokenizer.replace(":", ""))
    if not (path / "manifest.json").exists():
        prepare_builtin(tokenizer=tokenizer, out_dir=path)
    return Corpus.open(path, verify=False)


@dataclasses.dataclass
class Arm:
    """One model in training: its step function, its clock and its evaluations."""

    name: str
    model: torch.nn.Module  # the module evaluated (uncompiled)
    step_fn: object  # (x, y, progress) -> None: one optimizer step
    tokens_budget: int
    tokens: int = 0
    steps: int = 0
    train_s: float = 0.0
    compile_s: float = 0.0
    evals: list = dataclasses.field(default_factory=list)  # (step, tokens, train_s, val_bpb)

    @property
    def done(self) -> bool:
        return self.tokens >= self.tokens_budget


def make_step(forward, optimizers, params, rows: int, micro_rows: int, grad_clip: float, lr_fn):
    """One optimizer step over `rows` rows in micro-batches, clipping the global grad norm;
    lr_fn(progress) -> peak-LR multiplier."""
    def step(x, y, progress):
        set_lr(optimizers, lr_fn(progress))
        for i in range(0, rows, micro_rows):
            (forward(x[i : i + micro_rows], y[i : i + micro_rows]) * (min(micro_rows, rows - i) / rows)).backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=False)
    return step


def remember_peak_lr(optimizers):
    for opt in optimizers:
        for group in opt.param_groups:
            group["peak_lr"] = group["lr"]
    return optimizers


def build_arm(name, recipe, kind, tokens_budget, compile_: bool, plain_lr: float, seed: int) -> Arm:
    m = recipe.model
    rows, micro = recipe.train.batch_tokens // m.seq_len, recipe.train.micro_batch_rows
    torch.manual_seed(seed)
    if kind == "plain":
        model = PlainGPT(m.vocab_size, m.seq_len, m.n_layer, m.n_embd, m.n_head)
        optimizers = remember_peak_lr([plain_optimizer(model, plain_lr)])
        lr_fn, clip = plain_lr_multiplier, 1.0
    else:
        model = GPT(m)
        optim_cfg = dataclasses.replace(recipe.optim, name="adamw") if kind == "lab-adamw" else recipe.optim
        optimizers = build_optimizers(model, optim_cfg)
        lr_fn, clip = (lambda p, cfg=optim_cfg: lr_multiplier(max(p, 1e-3), cfg)), optim_cfg.grad_clip
    forward, compile_s = model, 0.0
    if compile_:
        def warm_up(f):
            x, y = (torch.zeros((micro, m.seq_len), dtype=torch.long) for _ in range(2))  # not aliased, as in training
            f(x, y).backward()
            model.zero_grad(set_to_none=False)
        t0 = time.perf_counter()
        forward, ok, note = compile_model(model, optimizers, warm_up)
        compile_s = time.perf_counter() - t0
        print(f"[{name}] {note}", file=sys.stderr)
        assert ok, note
    params = [p for p in model.parameters()]
    return Arm(name, model, make_step(forward, optimizers, params, rows, micro, clip, lr_fn), tokens_budget, compile_s=compile_s)


def time_to_target(recipe, corpus, args) -> dict:
    m = recipe.model
    rows = recipe.train.batch_tokens // m.seq_len
    arms = [build_arm("plain", recipe, "plain", args.tokens, args.compile == "on", args.plain_lr, recipe.seed),
            build_arm("lab", recipe, "lab", args.tokens, args.compile == "on", args.plain_lr, recipe.seed),
            build_arm("lab-adamw", recipe, "lab-adamw", args.tokens, args.compile == "on", args.plain_lr, recipe.seed),
            build_arm("lab-half", recipe, "lab", args.tokens // 2, args.compile == "on", args.plain_lr, recipe.seed)]
    loaders = {a.name: BatchLoader(corpus, split="train", seq_len=m.seq_len, batch_rows=rows, seed=recipe.seed) for a in arms}

    def evaluate(arm):
        r = evaluation.evaluate_bpb(arm.model, corpus, m.seq_len, args.eval_tokens, recipe.eval.batch_rows, torch.device("cpu"), split="val")
        arm.evals.append((arm.steps, arm.tokens, arm.train_s, r["val_bpb"]))

    while not all(a.done for a in arms):
        for arm in arms:
            if arm.done:
                continue
            x, y = loaders[arm.name].next_batch()
            t0 = time.perf_counter()
            arm.step_fn(x, y, (arm.tokens + recipe.train.batch_tokens) / arm.tokens_budget)
            arm.train_s += time.perf_counter() - t0
            arm.steps += 1
            arm.tokens += recipe.train.batch_tokens
            if arm.steps % args.eval_every == 0 or arm.done:
                evaluate(arm)
        if arms[0].steps % 16 == 0:
            print(" | ".join(f"{a.name} step {a.steps} val {a.evals[-1][3] if a.evals else float('nan'):.3f}" for a in arms), file=sys.stderr)
    target = arms[0].evals[-1][3]
    plain_s = arms[0].train_s
    out = {"target_val_bpb": target, "arms": {}}
    for arm in arms:
        hit = next((e for e in arm.evals if e[3] <= target), None)
        out["arms"][arm.name] = {
            "tokens": arm.tokens, "steps": arm.steps, "train_s": arm.train_s, "compile_s": arm.compile_s,
            "tokens_per_s": arm.tokens / arm.train_s, "final_val_bpb": arm.evals[-1][3],
            "s_to_target": hit[2] if hit else None, "tokens_to_target": hit[1] if hit else None,
            "time_vs_plain": hit[2] / plain_s if hit else None, "evals": arm.evals}
    return out


def throughput(recipe, rounds: int, steps_per_round: int) -> dict:
    """tokens/s of bare training steps, eager and compiled, interleaved round by round."""
    m = recipe.model
    configs = {}
    for compiled in (False, True):
        for kind in ("plain", "lab-adamw", "lab"):
            arm = build_arm(kind, recipe, kind, 1, compiled, 1e-3, recipe.seed)
            x = torch.randint(0, m.vocab_size, (recipe.train.batch_tokens // m.seq_len, m.seq_len + 1))
            t0 = time.perf_counter()
            for _ in range(2):  # allocator warm-up (and the compiled graph's first runs)
                arm.step_fn(x[:, :-1], x[:, 1:], 0.5)
            configs[f"{kind}{' compiled' if compiled else ''}"] = (arm, x, arm.compile_s, time.perf_counter() - t0)
    times = {name: [] for name in configs}
    names = list(configs)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            arm, x, _, _ = configs[name]
            t0 = time.perf_counter()
            for _ in range(steps_per_round):
                arm.step_fn(x[:, :-1], x[:, 1:], 0.5)
            times[name].append((time.perf_counter() - t0) / steps_per_round)
    out = {}
    for name in names:
        base = "plain compiled" if name.endswith("compiled") else "plain"
        ratios = [b / t for b, t in zip(times[base], times[name])]  # per round: same load on both
        out[name] = {"tokens_per_s": recipe.train.batch_tokens / statistics.median(times[name]),
                     "vs_plain_same_compile": statistics.median(ratios), "vs_plain_min": min(ratios), "vs_plain_max": max(ratios),
                     "compile_warmup_s": configs[name][2], "step_s_rounds": times[name]}
    for kind in ("plain", "lab-adamw", "lab"):
        ratios = [e / c for e, c in zip(times[kind], times[f"{kind} compiled"])]
        out[f"{kind} compiled"]["speedup_from_compile"] = statistics.median(ratios)
    return out


def print_speedrun(speed, args):
    print(f"Time to plain's final val_bpb {speed['target_val_bpb']:.4f} ({args.recipe}, {args.tokens:,} tokens per arm, compile {args.compile}):\n")
    print("| arm | tokens | train s | tokens/s | final val_bpb | s to target | time vs plain |")
    print("|---|---|---|---|---|---|---|")
    for name, a in speed["arms"].items():
        hit = f"{a['s_to_target']:.1f}" if a["s_to_target"] is not None else "not reached"
        ratio = f"{a['time_vs_plain']:.2f}x" if a["time_vs_plain"] is not None else "-"
        print(f"| {name} | {a['tokens']:,} | {a['train_s']:.1f} | {a['tokens_per_s']:,.0f} | {a['final_val_bpb']:.4f} | {hit} | {ratio} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="tiny-cpu", help="the lab's recipe (its shape, batch, optimizer, schedule)")
    ap.add_argument("--tokens", type=int, default=327680, help="training tokens per arm (lab-half: half); 0 = throughput only")
    ap.add_argument("--eval-every", type=int, default=16, help="steps between evaluations of each arm")
    ap.add_argument("--eval-tokens", type=int, default=8192, help="validation tokens per domain per evaluation")
    ap.add_argument("--plain-lr", type=float, default=2e-3, help="plain GPT's peak AdamW LR")
    ap.add_argument("--compile", choices=["off", "on"], default="off", help="torch.compile every speedrun arm")
    ap.add_argument("--throughput-recipes", nargs="*", default=["tiny-cpu"], help="recipes whose shape the throughput part measures")
    ap.add_argument("--throughput-batch-tokens", type=int, default=4096,
                    help="batch for recipes whose own batch is larger (small's 32,768 takes minutes per step on 2 cores)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = torch's default (one per core). On a machine "
                    "busy with other work, 1 avoids the many-fold slowdown of threads spinning while they wait for each other")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps-per-round", type=int, default=4)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.time()

    recipe = api.resolve_recipe(args.recipe)
    corpus = open_corpus(recipe.data.tokenizer)
    recipe.model.vocab_size = corpus.tokenizer.vocab_size
    speed = time_to_target(recipe, corpus, args) if args.tokens else None

    tput = {}
    for name in args.throughput_recipes:
        r = api.resolve_recipe(name)
        r.model.vocab_size = open_corpus(r.data.tokenizer).tokenizer.vocab_size
        if r.train.batch_tokens > args.throughput_batch_tokens:
            r.train.batch_tokens, r.train.micro_batch_rows = args.throughput_batch_tokens, max(1, args.throughput_batch_tokens // r.model.seq_len)
        tput[name] = {"shape": f"{r.model.n_layer}x{r.model.n_embd}, T={r.model.seq_len}", "batch_tokens": r.train.batch_tokens,
                      "configs": throughput(r, args.rounds, args.steps_per_round)}

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), platform.processor())
    meta = {"date": date.today().isoformat(), "device": f"{cpu}, {torch.get_num_threads()} threads", "torch": torch.__version__,
            "command": " ".join(["python", *sys.argv]), "wall_s": time.time() - t_start,
            "load_avg_at_end": Path("/proc/loadavg").read_text().split()[:3],
            "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent).stdout.strip()}
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    path = out / (f"speedrun-{meta['date']}-{args.recipe}-{args.tokens}tok.json" if speed else
                  f"speedrun-{meta['date']}-throughput-{'-'.join(args.throughput_recipes)}.json")
    path.write_text(json.dumps({"meta": meta, "args": vars(args), "speedrun": speed, "throughput": tput}, indent=2))

    print(f"\n{meta['date']} | {meta['device']} | torch {meta['torch']} | load avg at end {' '.join(meta['load_avg_at_end'])} | `{meta['command']}`\n")
    if speed:
        print_speedrun(speed, args)
    for name, t in tput.items():
        print(f"\nThroughput, {name} shape ({t['shape']}, {t['batch_tokens']:,}-token batch), median of interleaved rounds:\n")
        print("| model + optimizer | tokens/s | vs plain (same compile) | compile speedup | compile warm-up s |")
        print("|---|---|---|---|---|")
        for cfg, c in t["configs"].items():
            speedup = f"{c['speedup_from_compile']:.2f}x" if "speedup_from_compile" in c else "-"
            warm = f"{c['compile_warmup_s']:.0f}" if c["compile_warmup_s"] else "-"
            print(f"| {cfg} | {c['tokens_per_s']:,.0f} | {c['vs_plain_same_compile']:.2f}x ({c['vs_plain_min']:.2f}-{c['vs_plain_max']:.2f}) | {speedup} | {warm} |")
    print(f"\nraw results: {path} ({meta['wall_s']:.0f}s)")


if __name__ == "__main__":
    main()
