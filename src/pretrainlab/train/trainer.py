"""The trainer: one readable loop from recipe to run directory.

    pretrainlab train --recipe tiny-cpu [--set key=value ...] [--out DIR]
    pretrainlab train --resume DIR
    torchrun --nproc_per_node N -m pretrainlab train --recipe small      # DDP (gloo on CPU, NCCL on GPU)
    torchrun ... -m pretrainlab train --recipe small --set train.parallel=fsdp   # FSDP2 (parallel.py)

`train()` reads top to bottom:
  1. processes and device      5. run directory (new, resumed from its last intact checkpoint, or restarted)
  2. corpus and tokenizer      6. the loop: batch -> forward/backward (accumulated) -> clip
  3. model                        -> step -> telemetry -> eval -> checkpoint -> stop checks
  4. optimizers, compile, loader  7. final evaluation and summary.json
The global batch (train.batch_tokens) is drawn identically on every process and split by
rows by global rank, so 1 process with gradient accumulation and N processes (on one node or
several) compute the same gradient.
"""

from __future__ import annotations

import hashlib
import math
import os
import signal
import sys
import time
import traceback
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from .. import eval as evaluation
from .. import rundir
from ..config import Recipe
from ..data import BatchLoader, Corpus, builtin_corpus_dir, prepare_builtin
from ..errors import UserError
from ..model import GPT, kernels
from ..model.gpt import attention_kernel_used, attention_kernels
from . import checkpoint, compiling, parallel, rundir_lock
from .optim import build_optimizers, lr_multiplier, set_lr
from .telemetry import gpu_utilisation, peak_flops, peak_memory_mb, provenance

EXIT_OK = 0
EXIT_DIVERGED = 3
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again later" — schedulers requeue on it
STATUS_EXIT = {"ok": EXIT_OK, "timeout": EXIT_OK, "diverged": EXIT_DIVERGED, "preempted": EXIT_PREEMPTED}


@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str, parallel_mode: str) -> Dist:
    """Join the torchrun process group when launched by torchrun, else a single process.

    RANK is the process's global rank (it picks the batch rows and rank 0 writes the run
    directory), LOCAL_RANK its index on its node (its GPU), LOCAL_WORLD_SIZE the processes on
    its node (they share its CPU threads): the same code serves one node and many. FSDP
    shards over a process group even when there is one process, so a single process makes a
    group of its own (an in-memory store, no port)."""
    backend = "nccl" if device_type == "cuda" else "gloo"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        if parallel_mode == "fsdp" and not dist.is_initialized():
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)  # train() destroys it
        return Dist()
    d = Dist(int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), world, int(os.environ.get("LOCAL_WORLD_SIZE", world)))
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return d


def resolve_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device=cuda but no CUDA device is visible: use --set train.device=cpu (or auto)")
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(requested)


def open_corpus(recipe: Recipe, d: Dist) -> Corpus:
    """The builtin corpus is derived data: it is prepared on first use (rank 0 only)."""
    if recipe.data.corpus == "builtin":
        path = builtin_corpus_dir(recipe.data.tokenizer.replace(":", ""))
        if d.main and not (path / "manifest.json").exists():
            print(f"[pretrainlab] preparing the builtin corpus ({recipe.data.tokenizer}) at {path}", file=sys.stderr)
            prepare_builtin(tokenizer=recipe.data.tokenizer, out_dir=path)
        if d.world_size > 1:
            dist.barrier()
    else:
        path = Path(recipe.data.corpus).expanduser()
    return Corpus.open(path, verify=True)


class RunLog:
    """Appends human-readable lines to RUN_DIR/log.txt and echoes them to stderr."""

    def __init__(self, path: Path | None, echo: bool):
        self.path, self.echo = path, echo

    def __call__(self, msg: str) -> None:
        line = f"{datetime.now().strftime('%H:%M:%S')} {msg}"
        if self.echo:
            print(line, file=sys.stderr, flush=True)
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(line + "\n")


def prepare_run_dir(out_dir: Path) -> rundir_lock.RunDirLock:
    """Create and lock a new run directory, failing early, before anything is written, when
    the output cannot be created or already holds something."""
    parent = out_dir if out_dir.exists() else next(p for p in [out_dir, *out_dir.parents] if p.exists())
    if not parent.is_dir():
        raise UserError(f"--out {out_dir}: {parent} is a file, not a directory; choose a new or empty --out directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"--out {out_dir}: {parent} is not writable; choose a writable --out directory")
    lock = rundir_lock.acquire(out_dir, create=True)  # a run in progress there is refused here, naming its pid
    if any(p.name != rundir_lock.LOCK_FILE for p in out_dir.iterdir()):
        lock.release()
        if rundir.is_run_dir(out_dir):
            raise UserError(f"--out {out_dir} already holds a run: continue it with --resume {out_dir}, or choose a new --out")
        raise UserError(f"--out {out_dir} already exists and is not empty, and holds no run to --resume (no recipe.json): "
                        "choose a new --out")
    return lock


def train(recipe: Recipe | None = None, out_dir: Path | None = None, resume_dir: Path | None = None, echo: bool = True) -> dict:
    """Train `recipe` into `out_dir` (or continue `resume_dir`); returns summary.json's dict.

    Rank 0 holds the run directory's lock (rundir_lock.py) from before its first write until
    after summary.json, so two processes never write one run directory."""
    if resume_dir is not None:
        resume_dir = Path(resume_dir)
        if not rundir.is_run_dir(resume_dir):
            raise UserError(f"--resume {resume_dir}: no recipe.json there; pass a run directory written by `pretrainlab train`")
        try:
            recipe = Recipe.from_dict(rundir.load_json(resume_dir / rundir.RECIPE))
        except (ValueError, OSError) as e:  # not JSON, not an object, wrong types, a link: the run cannot be continued as it is
            raise UserError(f"--resume {resume_dir}: its recipe.json cannot be read as a recipe ({str(e)[:200]}); restore it, "
                            "or start a new run with --recipe") from None
        out_dir = resume_dir
    assert recipe is not None and out_dir is not None
    out_dir = Path(out_dir)
    lock = None
    if os.environ.get("WORLD_SIZE", "1") == "1" or os.environ.get("RANK") == "0":  # the process that writes the run dir (Dist.main)
        lock = rundir_lock.acquire(out_dir) if resume_dir is not None else prepare_run_dir(out_dir)
    had_group = dist.is_initialized()
    try:
        with attention_kernels(recipe.train.attention):
            return _train(recipe, out_dir, resume_dir is not None, echo)
    finally:
        if lock is not None:
            lock.release()
        if not had_group and os.environ.get("WORLD_SIZE", "1") == "1" and dist.is_initialized():
            dist.destroy_process_group()  # the one-process group a single-process fsdp run made (init_distributed)


def keep_freed_memory() -> bool:
    """Training on CPU: keep freed tensor memory in the process. glibc gives blocks of 128 KB and
    more back to the kernel when they are freed (they are mmap'd, or trimmed off the heap), so
    each step's activations fault in again, page by page: 3,800 page faults a step at tiny-cpu,
    48,000 at small. With mallopt's mmap and trim thresholds at 1 GB they stay in the heap and
    are reused: bare tiny-cpu steps run about 5% faster, a tiny-cpu run about 2% (docs/benchmarks.md).
    True if set (glibc only; elsewhere nothing changes)."""
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    return bool(libc.mallopt(m_mmap_threshold, 1 << 30)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))


def _train(recipe: Recipe, out_dir: Path, resume: bool, echo: bool) -> dict:
    t_start = time.time()
    # ---- 1. processes and device --------------------------------------------------------
    tc = recipe.train
    device = resolve_device(tc.device)
    d = init_distributed(device.type, tc.parallel)
    if device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        torch.set_num_threads(tc.num_threads or max(1, (os.cpu_count() or 1) // d.local_world_size))
        keep_freed_memory()
    dtype = tc.dtype if tc.dtype != "auto" else ("bfloat16" if device.type == "cuda" else "float32")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if dtype == "bfloat16" else nullcontext()

    # ---- 2. corpus and tokenizer ----------------------------------------------------------
    corpus = open_corpus(recipe, d)
    vocab = corpus.tokenizer.vocab_size
    if recipe.model.vocab_size is None:
        recipe.model.vocab_size = vocab
    elif recipe.model.vocab_size < vocab:
        raise UserError(f"model.vocab_size={recipe.model.vocab_size} is smaller than the corpus tokenizer's {vocab}: set model.vocab_size=none")
    seq_len = recipe.model.seq_len
    rows_per_step = tc.batch_tokens // seq_len
    rows_per_micro = tc.micro_batch_rows * d.world_size
    if tc.batch_tokens % seq_len or rows_per_step % rows_per_micro:
        raise UserError(
            f"train.batch_tokens={tc.batch_tokens} must be a multiple of model.seq_len x train.micro_batch_rows x processes "
            f"= {seq_len} x {tc.micro_batch_rows} x {d.world_size} = {seq_len * rows_per_micro}: "
            f"e.g. --set train.batch_tokens={max(1, round(tc.batch_tokens / (seq_len * rows_per_micro))) * seq_len * rows_per_micro}"
        )
    grad_accum = rows_per_step // rows_per_micro

    # ---- 3. model -------------------------------------------------------------------------
    torch.manual_seed(recipe.seed)
    np.random.seed(recipe.seed)
    model = GPT(recipe.model).to(device)
    model.use_kernels(tc.kernels)
    num_params = model.num_params()
    flops_per_token = model.flops_per_token()
    raw_model = model
    compile_plan = compiling.plan(tc.compile, device.type, d.world_size, tc.parallel)  # on | off | measure (compiling.py)
    compiled, compile_note = False, None
    if tc.parallel == "fsdp":  # sharded in place: raw_model's parameters become DTensors, its names stay
        if compile_plan == "on":  # no eager fallback here: the blocks compile at their first forward
            for block in raw_model.blocks:
                block.compile(mode=compiling.MODES[tc.compile_mode])  # per block, before sharding (as torchtitan); Module.compile keeps parameter names
            compiled = True
        parallel.shard_model(raw_model, device, bf16=device.type == "cuda" and dtype == "bfloat16")

    # ---- 4. optimizers, compile and loader -------------------------------------------------
    optimizers = build_optimizers(raw_model, recipe.optim)

    def warm_up(m) -> None:
        """One forward/backward on the training shapes (compilation happens here, not in a
        timed step); the gradients it leaves are zeroed."""
        x, y = (torch.zeros((tc.micro_batch_rows, seq_len), dtype=torch.long, device=device) for _ in range(2))  # two tensors, as in
        with autocast:  # training: the compiled graph is specialised on whether inputs alias
            m(x, y, per_row=True).mean().backward()
        raw_model.zero_grad(set_to_none=False)

    if compile_plan == "on" and tc.parallel == "ddp":
        model, compiled, compile_note = compiling.compile_model(model, optimizers, warm_up, compiling.shape_key(recipe, device.type),
                                                                  tc.compile_mode)
    if d.world_size > 1 and tc.parallel == "ddp":
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    try:
        loader = BatchLoader(corpus, split="train", seq_len=seq_len, batch_rows=rows_per_step, weights=recipe.data.weights,
                             seed=recipe.seed, bias_domain=recipe.faults.mixture_bias)
    except ValueError as e:
        raise UserError(f"data.weights: {e}") from None
    layer_of_param = _layer_index(raw_model).to(device)
    num_layers_tracked = int(layer_of_param.max()) + 1
    layer_names = ["embed", *[f"block{i}" for i in range(recipe.model.n_layer)], "head"]

    # ---- 5. run directory -------------------------------------------------------------------
    state = {"step": 0, "tokens": 0, "train_seconds": 0.0, "timed_tokens": 0, "last_step_s": 0.0,
             "next_eval_frac": tc.eval_every_frac, "loss_ema": None, "best_ema": math.inf, "bad_steps": 0}
    metrics_path = out_dir / rundir.METRICS
    log = RunLog(out_dir / "log.txt" if d.main else None, echo and d.main)
    ckpt = None
    if resume and tc.parallel == "fsdp":  # the model and optimizers are loaded in place, resharded to this run's processes
        ckpt = checkpoint.load_latest_sharded(out_dir / "ckpt", raw_model, optimizers, warn=log if d.main else None)
    elif resume:
        ckpt = checkpoint.load_latest(out_dir / "ckpt", warn=log if d.main else None)
        if ckpt is not None:
            raw_model.load_state_dict(ckpt["model"])
            for opt, opt_state in zip(optimizers, ckpt["optimizers"]):
                opt.load_state_dict(opt_state)
    if resume and ckpt is None:
        _check_restartable(out_dir)
    if ckpt is not None:
        if not recipe.faults.replay_on_resume:
            loader.load_state_dict(ckpt["loader"])
        state.update(ckpt["trainer"])
        checkpoint.set_rng_state(ckpt["rng"])
        if d.main:
            _truncate_metrics(metrics_path, state["step"])
            prov = rundir.load_json(out_dir / rundir.PROVENANCE)
            prov.setdefault("resumes", []).append({"step": state["step"], "time": _now()})
            rundir.write_json_atomic(out_dir / rundir.PROVENANCE, prov)
        log(f"resumed {out_dir} at step {state['step']} ({state['tokens']:,} tokens)"
            + (f" on {d.world_size} process(es), saved by {ckpt['world_size']}" if "world_size" in ckpt else ""))
    elif d.main:
        prov = provenance(seed=recipe.seed, device=device, world_size=d.world_size, corpus=corpus,
                          eval_sha256=evaluation.module_sha256(), recipe_hash=recipe.hash(), data_weights=loader.weights,
                          attention=attention_kernel_used(tc.attention, device.type), kernels=kernels.used(tc.kernels, device.type))
        if resume:  # killed before its first checkpoint (or every checkpoint is damaged): the same recipe again from step 0
            log(f"warning: {out_dir} has no intact checkpoint to resume from; restarting it from step 0 with its recipe.json "
                "(the earlier attempt's rows move to metrics.superseded.jsonl)")
            _truncate_metrics(metrics_path, 0, restart=True)
            old = rundir.read_provenance(out_dir) or {}
            # this process's environment, under the run's ledger id; the restart goes on record
            prov = {**old, **prov, "run_id": old.get("run_id", prov["run_id"]),
                    "resumes": [*old.get("resumes", []), {"step": 0, "time": _now(), "restarted": "no intact checkpoint"}]}
        else:
            rundir.write_json_atomic(out_dir / rundir.RECIPE, recipe.to_dict())
        rundir.write_json_atomic(out_dir / rundir.PROVENANCE, prov)
        attention = (f" | attention {attention_kernel_used(tc.attention, device.type)} | kernels {kernels.used(tc.kernels, device.type)}"
                     if device.type == "cuda" else "")
        log(f"run {out_dir} | recipe {recipe.name} | {num_params / 1e6:.2f}M params | {d.world_size} process(es) on {device} {dtype} "
            f"| {tc.parallel} | grad_accum {grad_accum}{attention}")
    if compile_note:
        log(compile_note)

    peak = peak_flops(device, dtype)
    sample_util = gpu_utilisation(device)  # None on CPU: no gpu_util in the rows
    budget = recipe.budget
    domains = corpus.domains
    # sigterm: a stop was asked for (SIGTERM, or a first Ctrl-C); stepping: a step boundary is still ahead to stop at
    stop_signal = {"sigterm": False, "sigint": False, "warming_up": False, "stepping": True}

    def on_sigterm(*_):
        stop_signal["sigterm"] = True
        if stop_signal["warming_up"]:  # a compile warm-up can take minutes: give it up, train on eagerly and stop at this step
            raise _WarmUpInterrupted

    def on_sigint(*_):
        """Ctrl-C stops as SIGTERM does. A second one while stopping, or one after the last step
        (no step boundary is left to stop at), aborts at once, as Python's own handler does."""
        if stop_signal["sigint"] or not stop_signal["stepping"]:
            raise KeyboardInterrupt
        stop_signal["sigint"] = True
        on_sigterm()

    previous_handler = signal.signal(signal.SIGTERM, on_sigterm) if _is_main_thread() else None
    # only over Python's own handler: a SIGINT ignored (a script's background job) or handled by the caller stays so
    previous_sigint = (signal.signal(signal.SIGINT, on_sigint)
                       if _is_main_thread() and signal.getsignal(signal.SIGINT) is signal.default_int_handler else None)
    untimed_steps = 3 if compiled else 1  # the first steps carry allocator (and compiled-graph) warm-up
    pending_rows: list[rundir.TrainRow | rundir.EvalRow] = []

    def flush_metrics():
        if d.main:
            rundir.append_rows(metrics_path, pending_rows)
        pending_rows.clear()

    def progress(ahead: bool = False) -> float:
        """Share of the binding budget used; `ahead` = as it will be after the next step
        (what the LR schedule uses, so the first step does not run at LR 0)."""
        tokens = state["tokens"] + (tc.batch_tokens if ahead else 0)
        seconds = state["train_seconds"] + (state["last_step_s"] if ahead else 0.0)
        parts = []
        if budget.tokens:
            parts.append(tokens / budget.tokens)
        if budget.seconds:
            parts.append(seconds / budget.seconds)
        if budget.flops:
            parts.append(tokens * flops_per_token / budget.flops)
        return max(parts)

    def remaining_s(step_s: float) -> float:
        """Training seconds the budget has left at `step_s` per step: the tightest of the
        token, FLOP, time and wall-clock budgets."""
        steps_left = []
        if budget.tokens:
            steps_left.append((budget.tokens - state["tokens"]) / tc.batch_tokens)
        if budget.flops:
            steps_left.append((budget.flops / flops_per_token - state["tokens"]) / tc.batch_tokens)
        left = [n * step_s for n in steps_left]
        if budget.seconds:
            left.append(budget.seconds - state["train_seconds"])
        if budget.wall_limit_s:
            left.append(wall_deadline - time.time())
        return max(0.0, min(left))

    def run_eval(split: str = "monitor") -> dict:
        """In-run evaluations score the monitor slice (experiments may read it); the final one
        scores the decision split when this process can read it (a plain `pretrainlab train`),
        the monitor slice inside a campaign's sandbox, where the lab scores val itself."""
        t0 = time.perf_counter()
        result = evaluation.evaluate_bpb(raw_model, corpus, seq_len, recipe.eval.tokens_per_domain, recipe.eval.batch_rows,
                                         device, autocast if dtype == "bfloat16" else None, d.rank, d.world_size, split=split,
                                         lockstep=tc.parallel == "fsdp")
        result["split"] = split
        row: rundir.EvalRow = {"type": "eval", "step": state["step"], "tokens": state["tokens"], "progress": min(1.0, progress()),
                               "val_bpb": result["val_bpb"], "val_bpb_domains": result["domains"], "eval_tokens": result["tokens"],
                               "eval_s": time.perf_counter() - t0, "split": split}
        pending_rows.append(row)
        flush_metrics()
        log(f"eval step {state['step']}: val_bpb {result['val_bpb']:.4f} " + " ".join(f"{k} {v:.3f}" for k, v in result["domains"].items()))
        return result

    saved_step = -1

    def save_ckpt():
        nonlocal saved_step
        flush_metrics()  # rows up to this step must be on disk before the checkpoint claims them
        if saved_step == state["step"]:
            return  # a SIGTERM right after this step's periodic checkpoint
        saved_step = state["step"]
        if tc.parallel == "fsdp":  # every process writes its shards
            checkpoint.save_sharded(out_dir / "ckpt", state["step"], raw_model, optimizers, {
                "loader": loader.state_dict(), "trainer": dict(state), "recipe": recipe.to_dict(), "world_size": d.world_size},
                keep=tc.ckpt_keep)
        elif d.main:
            checkpoint.save_checkpoint(out_dir / "ckpt", state["step"], {
                "model": raw_model.state_dict(), "optimizers": [o.state_dict() for o in optimizers],
                "loader": loader.state_dict(), "trainer": dict(state), "recipe": recipe.to_dict()}, keep=tc.ckpt_keep)

    # ---- 6. the loop ---------------------------------------------------------------------------
    status, final_eval, error = "ok", None, None
    wall_deadline = t_start + budget.wall_limit_s if budget.wall_limit_s else math.inf
    last_print = time.time()
    model.train()
    try:
        if tc.eval_at_start and state["step"] == 0:
            run_eval()  # the untrained model: each domain's starting point
        cpu_prev = time.process_time()
        while progress() < 1.0:
            t0 = time.perf_counter()
            # a floor so the very first step of a time budget (no step duration measured yet) does not run at LR 0
            lr = set_lr(optimizers, lr_multiplier(max(progress(ahead=True), 1e-3), recipe.optim))
            # 6a. data: the global batch, this rank's rows
            x_all, y_all = loader.next_batch()
            if recipe.faults.data_sleep_s:
                time.sleep(recipe.faults.data_sleep_s)
            batch_hash = hashlib.blake2b(x_all[:, :16].numpy().tobytes(), digest_size=6).hexdigest()  # replay detection
            lo = d.rank * tc.micro_batch_rows * grad_accum
            x_all = x_all[lo : lo + tc.micro_batch_rows * grad_accum].to(device, non_blocking=True)
            y_all = y_all[lo : lo + tc.micro_batch_rows * grad_accum].to(device, non_blocking=True)
            batch_domains = loader.last_batch_domains()
            rank_domains = torch.from_numpy(batch_domains[lo : lo + tc.micro_batch_rows * grad_accum]).to(device, non_blocking=True)
            domain_loss_sum = torch.zeros(len(domains), device=device)
            t_data = time.perf_counter() - t0
            # 6b. forward/backward, accumulated over micro-batches
            loss_sum = torch.zeros((), device=device)
            t_presync = 0.0
            for micro in range(grad_accum):
                sl = slice(micro * tc.micro_batch_rows, (micro + 1) * tc.micro_batch_rows)
                sync = micro == grad_accum - 1 or d.world_size == 1
                with parallel.gradient_sync(model, sync), autocast:
                    row_loss = model(x_all[sl], y_all[sl], per_row=True)
                loss = row_loss.mean()
                domain_loss_sum.index_add_(0, rank_domains[sl], row_loss.detach().float())
                if state["step"] + 1 == recipe.faults.nan_at_step:
                    loss = loss * float("nan")
                if micro == 0 and d.rank == recipe.faults.slow_rank:
                    time.sleep(recipe.faults.slow_rank_s)
                if sync and d.world_size > 1:  # this rank's own work so far: nothing has waited on another rank yet
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    t_presync = time.perf_counter() - t0
                (loss / grad_accum).backward()
                loss_sum += loss.detach()
            # 6c. grad norms (global and per layer), clipping, optimizer step
            grads = parallel.local([p.grad for p in raw_model.parameters()])  # fsdp: this process's shard of each
            sq = torch.stack(torch._foreach_norm(grads)).float() ** 2
            if tc.parallel == "fsdp" and d.world_size > 1:
                dist.all_reduce(sq)  # the shards split each gradient by rows: their squared norms add up to the whole's
            layer_norms = torch.zeros(num_layers_tracked, device=device).index_add_(0, layer_of_param, sq).sqrt()
            grad_norm = sq.sum().sqrt()
            if recipe.optim.grad_clip:
                torch._foreach_mul_(grads, (recipe.optim.grad_clip / (grad_norm + 1e-6)).clamp(max=1.0))
            for opt in optimizers:
                opt.step()
            for opt in optimizers:
                opt.zero_grad(set_to_none=False)
            # 6d. agree across processes on the loss and on whether to stop
            shared = torch.cat([torch.stack([loss_sum / grad_accum, grad_norm, layer_norms.max()]) / d.world_size, domain_loss_sum])
            flags = torch.tensor([float(stop_signal["sigterm"]), float(time.time() > wall_deadline)], device=device)
            util = sample_util() if sample_util else math.nan
            ranks = {"gpu_util": util} if sample_util else {}
            if d.world_size > 1:
                times = torch.tensor([time.perf_counter() - t0, t_presync, t_data, util], dtype=torch.float64, device=device)
                gathered = [torch.zeros_like(times) for _ in range(d.world_size)]
                dist.all_gather(gathered, times)  # per-rank times (stragglers) and GPU utilisation (idle GPUs)
                per_rank = torch.stack(gathered).cpu().tolist()
                ranks = {"rank_step_s": [r[0] for r in per_rank], "rank_presync_s": [r[1] for r in per_rank],
                         "rank_data_s": [r[2] for r in per_rank]}
                if sample_util:
                    ranks |= {"gpu_util": sum(r[3] for r in per_rank) / d.world_size, "rank_gpu_util": [r[3] for r in per_rank]}
                dist.all_reduce(shared)  # SUM of pre-divided means (gloo has no AVG) and of per-domain loss sums
                dist.all_reduce(flags, op=dist.ReduceOp.MAX)
            loss_v, grad_norm_v, max_layer_v, *domain_sums = shared.tolist()  # one device sync per step
            max_layer = layer_names[int(layer_norms.argmax())]
            dt = time.perf_counter() - t0
            state["step"] += 1
            state["tokens"] += tc.batch_tokens
            state["last_step_s"] = dt
            if state["step"] > untimed_steps:
                state["train_seconds"] += dt
                state["timed_tokens"] += tc.batch_tokens
            tokens_per_s = tc.batch_tokens / dt
            mfu = flops_per_token * tokens_per_s / (peak * d.world_size) if peak else None
            domain_rows = np.bincount(batch_domains, minlength=len(domains)).tolist()
            cpu_now = time.process_time()
            train_row: rundir.TrainRow = {
                "type": "train", "step": state["step"], "tokens": state["tokens"], "loss": loss_v, "lr": lr,
                "grad_norm": grad_norm_v, "max_layer_grad_norm": max_layer_v, "max_grad_layer": max_layer,
                "tokens_per_s": tokens_per_s, "mfu": mfu, "step_s": dt, "data_wait_frac": t_data / dt,
                "peak_mem_mb": peak_memory_mb(device), "train_seconds": state["train_seconds"],
                "domain_rows": dict(zip(domains, domain_rows)), "batch_hash": batch_hash,
                "domain_loss": {k: v / n for k, v, n in zip(domains, domain_sums, domain_rows) if n},
                "cpu_s": cpu_now - cpu_prev, "compiled": compiled,
                **ranks,
            }
            pending_rows.append(train_row)
            cpu_prev = cpu_now
            if state["step"] % tc.log_every == 0:
                flush_metrics()
            # 6e. divergence fast-fail: NaN/Inf at once; a sustained blow-up over the best EMA
            if not math.isfinite(loss_v):
                status = "diverged"
                log(f"step {state['step']}: loss is {loss_v}; stopping as diverged")
                break
            ema = loss_v if state["loss_ema"] is None else 0.9 * state["loss_ema"] + 0.1 * loss_v
            state["loss_ema"] = ema
            state["best_ema"] = min(state["best_ema"], ema)
            state["bad_steps"] = state["bad_steps"] + 1 if loss_v > tc.diverge_ratio * state["best_ema"] else 0
            if state["bad_steps"] >= tc.diverge_patience:
                status = "diverged"
                log(f"step {state['step']}: loss {loss_v:.3f} > {tc.diverge_ratio} x best EMA {state['best_ema']:.3f} for {tc.diverge_patience} steps; stopping as diverged")
                break
            if time.time() - last_print > 5 or state["step"] == 1:
                last_print = time.time()
                log(f"step {state['step']} | loss {loss_v:.4f} | lr {lr:.2e} | {tokens_per_s:,.0f} tok/s"
                    + (f" | mfu {mfu:.1%}" if mfu is not None else "") + f" | {progress():.0%} of budget")
            # 6f. train.compile=auto on one CPU process: decided once, from this process's first step
            if compile_plan == "measure":
                compile_plan = "decided"
                left = remaining_s(dt)
                key = compiling.shape_key(recipe, device.type)
                if compiling.compile_pays(left, recipe.model.n_layer, key) and not stop_signal["sigterm"]:
                    try:
                        stop_signal["warming_up"] = True
                        model, compiled, note = compiling.compile_model(raw_model, optimizers, warm_up, key, tc.compile_mode)
                    except _WarmUpInterrupted:
                        by = "SIGINT" if stop_signal["sigint"] else "SIGTERM"
                        model, compiled, note = raw_model, False, f"{by} during the compile warm-up: eager"
                        compiling.uncompile_optimizers(optimizers)
                        flags[0] = 1.0  # checkpoint and stop at this step, as a SIGTERM at a step boundary does
                    finally:
                        stop_signal["warming_up"] = False
                    untimed_steps = max(untimed_steps, state["step"] + 2) if compiled else untimed_steps
                    log(f"train.compile=auto: ~{left:.0f}s of training left at {dt:.2f}s/step; {note}")
                else:
                    log(f"train.compile=auto: eager (~{left:.0f}s of training left at {dt:.2f}s/step does not repay "
                        f"~{compiling.expected_warmup_s(recipe.model.n_layer, key):.0f}s of compile warm-up)")
            # 6g. periodic eval and checkpoint, then the stop checks
            frac_due = tc.eval_every_frac and progress() < 1.0 and progress() >= state["next_eval_frac"]
            if frac_due:
                state["next_eval_frac"] = (math.floor(progress() / tc.eval_every_frac) + 1) * tc.eval_every_frac
            if progress() < 1.0 and (frac_due or (tc.eval_every and state["step"] % tc.eval_every == 0)):
                run_eval()
            if tc.ckpt_every and state["step"] % tc.ckpt_every == 0:
                save_ckpt()
            if flags[0].item():
                status = "preempted"
                if stop_signal["sigint"]:  # a person at the terminal: say how to go on
                    log(f"SIGINT (Ctrl-C): checkpointing at step {state['step']} and exiting as preempted; continue with "
                        f"`pretrainlab train --resume {out_dir}` (Ctrl-C again aborts without the checkpoint)")
                else:
                    log(f"SIGTERM: checkpointing at step {state['step']} and exiting as preempted")
                save_ckpt()
                break
            if flags[1].item():
                status = "timeout"
                log(f"wall-clock limit budget.wall_limit_s={budget.wall_limit_s} reached at step {state['step']}")
                break
        stop_signal["stepping"] = False
        flush_metrics()
        # ---- 7. final evaluation and summary ------------------------------------------------------
        if status in ("ok", "timeout"):
            if tc.ckpt_every and state["step"] % tc.ckpt_every:
                save_ckpt()
        if status != "preempted" and parallel.all_finite(list(raw_model.parameters())):
            weights = parallel.full_state_dict(raw_model)  # fsdp: gathered from every process onto rank 0
            if d.main:  # the final weights, for the lab's scorer (runners/scoring.py), which never trusts this process's numbers
                torch.save(weights, out_dir / "model.pt.tmp")
                os.replace(out_dir / "model.pt.tmp", out_dir / "model.pt")
            final_eval = run_eval("val" if corpus.has_split("val") else "monitor")
    except BaseException as e:  # KeyboardInterrupt too: the summary must say the run did not finish
        status, error = "crashed", "".join(traceback.format_exception(e))[-4000:]
        flush_metrics()
        raise
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
        if previous_sigint is not None:
            signal.signal(signal.SIGINT, previous_sigint)
        summary = _summary(status, state, final_eval, error, num_params, flops_per_token, peak, d, device, t_start)
        summary["compiled"] = compiled
        if d.main and out_dir.exists():
            rundir.write_summary(out_dir, summary)
            log(f"done: status {status} | val_bpb {summary['val_bpb']} | {state['step']} steps | {state['tokens']:,} tokens | {summary['seconds']:.1f}s training")
        if d.world_size > 1 and status != "crashed":
            dist.barrier()
    return summary


def _summary(status, state, final_eval, error, num_params, flops_per_token, peak, d, device, t_start) -> rundir.Summary:
    """summary.json: final status and metric; throughput over the timed steps only."""
    tokens_per_s = state["timed_tokens"] / state["train_seconds"] if state["train_seconds"] else None
    return {
        "status": status,
        "val_bpb": final_eval["val_bpb"] if final_eval else None,
        "val_bpb_domains": final_eval["domains"] if final_eval else None,
        "eval_split": final_eval["split"] if final_eval else None,
        "params": num_params,
        "tokens": state["tokens"],
        "steps": state["step"],
        "seconds": state["train_seconds"],
        "wall_seconds": time.time() - t_start,
        "tokens_per_s": tokens_per_s,
        "mfu": flops_per_token * tokens_per_s / (peak * d.world_size) if (peak and tokens_per_s) else None,
        "flops_per_token": flops_per_token,
        "peak_mem_mb": peak_memory_mb(device),
        "world_size": d.world_size,
        "error": error,
        "finished_at": _now(),
    }


def _layer_index(model: GPT) -> torch.Tensor:
    """For each parameter (in model.parameters() order): 0 = embeddings, 1..L = blocks, L+1 = head."""
    idx = []
    for name, _ in model.named_parameters():
        if name.startswith("blocks."):
            idx.append(1 + int(name.split(".")[1]))
        elif name.startswith("lm_head"):
            idx.append(model.cfg.n_layer + 1)
        else:
            idx.append(0)
    return torch.tensor(idx)


def _check_restartable(out_dir: Path) -> None:
    """--resume without an intact checkpoint restarts the run from step 0, unless it already
    finished: training a finished run again belongs in a new run directory."""
    summary = rundir.read_summary(out_dir)
    if summary is None:
        return  # no (readable) summary: the run was killed before it could finish
    status = summary.get("status")
    if status not in ("crashed", "preempted"):
        raise UserError(f"--resume {out_dir}: the run already finished (status {status}) and has no checkpoint to continue from; "
                        f"to train it again use --recipe {out_dir / 'recipe.json'} --out NEW_DIR")


def _truncate_metrics(path: Path, step: int, restart: bool = False) -> None:
    """Move rows logged after the checkpoint we resume from (they will be recomputed) to
    metrics.superseded.jsonl, tagged with the resume step: what happened between the
    checkpoint and the interruption stays on record. A restart (step 0, no checkpoint)
    moves every row, the step-0 evaluation included."""
    if not path.exists():
        return
    kept, superseded = [], []
    for row in rundir.iter_metrics(path):  # a line torn by the kill is dropped
        if row.get("step", 0) <= step and not restart:
            kept.append(row)
        else:
            superseded.append({**row, "superseded_by_resume_at": step})
    rundir.append_rows(path.with_name(rundir.SUPERSEDED), superseded)
    rundir.write_rows(path, kept)


def _is_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


class _WarmUpInterrupted(BaseException):
    """Raised by the SIGTERM handler inside a compile warm-up (not an Exception: the compiler's
    own error handling must not swallow it)."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
