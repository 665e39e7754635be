"""What the lab's own scoring costs per run: sandboxed training, then the scorer.

    python bench/scoring.py [--recipe tiny-cpu] [--tokens 80000] [--repeats 3]

Trains one run of the recipe on the builtin corpus, then times, each `--repeats` times:
  - score_run on the decision and monitor splits in the sandbox (worker start-up, logits
    streamed back, NLL in this process, causality and replay probes) — what every campaign
    run pays after training;
  - the same without the sandbox, to show what bubblewrap itself costs;
  - the trainer's own in-process evaluation of the same two splits, for scale.
Prints one JSON object; results with device and date go in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

from pretrainlab import eval as evaluation
from pretrainlab.api import resolve_recipe
from pretrainlab.config import Recipe
from pretrainlab.data import Corpus
from pretrainlab.model import GPT
from pretrainlab.runners.job import corpus_path
from pretrainlab.runners.base import PACKAGE_SRC
from pretrainlab.runners.sandbox import Sandbox
from pretrainlab.runners.scoring import score_run
from pretrainlab.train.trainer import train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="tiny-cpu")
    ap.add_argument("--tokens", type=float, default=80_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    recipe = resolve_recipe(args.recipe, [f"budget.tokens={int(args.tokens)}", "budget.seconds=0", f"train.num_threads={args.threads}"])
    corpus = Corpus.open(corpus_path(recipe), verify=False)
    run_dir = Path(tempfile.mkdtemp(prefix="bench-scoring-")) / "run"
    t0 = time.perf_counter()
    train(recipe, run_dir, echo=False)
    train_s = time.perf_counter() - t0
    torch.set_num_threads(args.threads)
    kw = dict(seq_len=recipe.model.seq_len, tokens_per_domain=recipe.eval.tokens_per_domain, batch_rows=recipe.eval.batch_rows,
              threads=args.threads)
    timings: dict[str, list[float]] = {"sandboxed": [], "unsandboxed": [], "in_process_eval": []}
    scored_tokens = 0
    box = Sandbox.detect()
    for _ in range(args.repeats):
        if box.active:
            t0 = time.perf_counter()
            s = score_run(run_dir, PACKAGE_SRC, corpus, sandbox=box, **kw)
            timings["sandboxed"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        s = score_run(run_dir, PACKAGE_SRC, corpus, sandbox=Sandbox(None, "bench"), **kw)
        timings["unsandboxed"].append(time.perf_counter() - t0)
        scored_tokens = sum(v["tokens"] for v in s["splits"].values())
        model = GPT(Recipe.from_dict(json.loads((run_dir / "recipe.json").read_text())).model)
        model.load_state_dict(torch.load(run_dir / "model.pt", weights_only=True))
        t0 = time.perf_counter()
        for split in ("val", "monitor"):
            evaluation.evaluate_bpb(model, corpus, recipe.model.seq_len, recipe.eval.tokens_per_domain, recipe.eval.batch_rows,
                                    torch.device("cpu"), split=split)
        timings["in_process_eval"].append(time.perf_counter() - t0)
    out = {
        "command": "python bench/scoring.py " + " ".join(f"--{k} {v}" for k, v in vars(args).items()),
        "date": date.today().isoformat(), "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
        "recipe": args.recipe, "train_tokens": int(args.tokens), "train_wall_s": round(train_s, 2),
        "scored_tokens": scored_tokens, "probes": s["probes"],
        **{f"{k}_s_median": round(statistics.median(v), 2) for k, v in timings.items() if v},
        **{f"{k}_s_all": [round(x, 2) for x in v] for k, v in timings.items() if v},
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
