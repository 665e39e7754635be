"""The lab's score of a run: val_bpb computed in a process that never imports experiment code.

    score = score_run(run_dir, code_src, corpus, seq_len=128, tokens_per_domain=32768, batch_rows=64)
    score["splits"]["val"]["val_bpb"]       # what decisions use
    score["splits"]["monitor"]["val_bpb"]   # compared with what the run reported about itself

The experiment's model code runs in a sandboxed worker (scoring_worker.py) whose only job
is to turn token windows into logits; this process sends it the windows of each split one
batch at a time, in an order drawn from a secret seed, reads the logits back one row at a
time and computes the NLL itself (eval.nll_sums). Before a score counts, three probes run
on the same real windows, so a model cannot tell a probe from a scoring request:
  - causality: each row keeps its tokens up to a random cut and takes another row's tokens
    after it; the logits up to the cut must not change (a model that looks ahead fails).
    The altered batch goes first half the time, so a model that remembers what it has seen
    cannot tell the real batch from its probe;
  - replay: rows scored earlier are sent again, shuffled among other rows; their logits
    must not change (a model that depends on other rows of its batch, or that learns from
    what it has scored so far, fails);
  - sanity: logits are finite and have the shape asked for.
A failed probe raises ScoreRejected with the reason; the campaign records it.
"""

from __future__ import annotations

import random
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from .data import Corpus, iter_eval_windows
from .eval import bits_per_byte, nll_sums
from .runners.sandbox import Sandbox, scrubbed_env

MAX_LOGIT_FLOATS = 2**26  # logits per request (256 MB of float32): rows per batch shrink for a large vocabulary
MAX_VOCAB = 2**21  # a logit width beyond this is not a language model's: refuse it before allocating
PROBE_REL_TOL = 1e-3  # logits of the same row must agree to this, relative to the logits' scale (fp32 batching noise is ~1e-6)
NUM_CAUSALITY_PROBES = 2  # batches probed (the first and one drawn at random)


class ScoreRejected(Exception):
    """The run's model may not be scored: it failed a probe or broke the protocol."""


class _Worker:
    """The sandboxed worker process and its two pipes."""

    def __init__(self, cmd: list[str], env: dict, stderr_path: Path):
        self.stderr = open(stderr_path, "wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, env=env)

    def logits(self, x: np.ndarray, vocab_min: int):
        """Send one batch [rows, T]; yield each row's float32 logits [T, V] as it arrives."""
        rows, seq_len = x.shape
        try:
            self.proc.stdin.write(np.array([rows, seq_len], dtype="<i4").tobytes() + x.astype("<i4").tobytes())
            self.proc.stdin.flush()
            head = np.frombuffer(self._read(12), dtype="<i4")
        except (BrokenPipeError, EOFError):
            raise ScoreRejected(f"the model process exited while scoring (exit {self.proc.wait()}): {self.tail()}") from None
        if head[0] != rows or head[1] != seq_len or not vocab_min <= head[2] <= MAX_VOCAB:
            raise ScoreRejected(f"the model returned logits of shape {tuple(int(v) for v in head)} for a [{rows}, {seq_len}] "
                                f"batch (a vocabulary of at least {vocab_min} expected)")
        vocab = int(head[2])
        for _ in range(rows):
            row = np.frombuffer(self._read(4 * seq_len * vocab), dtype="<f4").reshape(seq_len, vocab)
            if not np.isfinite(row).all():
                raise ScoreRejected("the model returned non-finite logits (NaN or Inf)")
            yield torch.from_numpy(row.copy())

    def _read(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.proc.stdout.read(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return bytes(buf)

    def tail(self) -> str:
        self.stderr.flush()
        text = Path(self.stderr.name).read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-3:]) or "no output"

    def close(self) -> None:
        try:
            self.proc.stdin.write(np.zeros(2, dtype="<i4").tobytes())
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        except (BrokenPipeError, OSError, subprocess.TimeoutExpired):
            pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.stderr.close()


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max()) / (1.0 + float(b.abs().max()))


def score_run(run_dir: Path, code_src: Path, corpus: Corpus, *, seq_len: int, tokens_per_domain: int, batch_rows: int,
              splits: tuple[str, ...] = ("val", "monitor"), sandbox: Sandbox | None = None, threads: int = 1,
              gpus: bool = False, python: str | None = None) -> dict:
    """Score the model in run_dir (recipe.json + model.pt) with the code in code_src on each
    split; returns {"splits": {split: {"val_bpb", "domains", "tokens", "bytes"}}, "probes": {...},
    "sandboxed": bool, "seconds": float}. Raises ScoreRejected when a probe fails."""
    import sys

    t0 = time.time()
    run_dir = Path(run_dir).resolve()
    sandbox = sandbox or Sandbox.detect()
    vocab_min = corpus.tokenizer.vocab_size
    token_bytes = torch.as_tensor(corpus.token_bytes(), dtype=torch.float64)
    windows = [(split, d, x.numpy(), y) for split in splits for d, domain in enumerate(corpus.domains)
               for x, y in iter_eval_windows(corpus, domain, seq_len, tokens_per_domain, split)]
    rng = random.Random(random.SystemRandom().getrandbits(64))  # an order the model cannot predict
    rng.shuffle(windows)
    rows = max(1, min(batch_rows, MAX_LOGIT_FLOATS // (seq_len * vocab_min)))
    batches = [windows[i : i + rows] for i in range(0, len(windows), rows)]
    probed = {0} | set(rng.sample(range(len(batches)), min(len(batches), NUM_CAUSALITY_PROBES - 1)))

    cmd = [python or sys.executable, "-m", "pretrainlab.scoring_worker", str(run_dir)]
    env = scrubbed_env({"PYTHONPATH": str(Path(code_src).resolve()), "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"})
    # the worker's stderr goes to RUN_DIR/scorer.log, opened here: the worker sees the run dir read-only
    worker = _Worker(sandbox.wrap(cmd, code_src=code_src, read_only=[run_dir], gpus=gpus), env, run_dir / "scorer.log")
    sums = {split: np.zeros((len(corpus.domains), 3)) for split in splits}  # nats, bytes, counted targets
    kept: dict[int, tuple[np.ndarray, list[torch.Tensor]]] = {}  # batch index -> (inputs, logits) for the probes
    probes = {"causality_rows": 0, "causality_max_diff": 0.0, "replay_rows": 0, "replay_max_diff": 0.0}
    try:
        for b, batch in enumerate(batches):
            x = np.stack([w[2] for w in batch])
            cut_logits = None
            if b in probed:  # causality: every row keeps its tokens up to a random cut and takes another row's after it
                cuts = [rng.randrange(seq_len - 1) for _ in batch] if seq_len > 1 else [0] * len(batch)
                donor = np.roll(x, 1, axis=0) if len(batch) > 1 else np.roll(x, 1, axis=1)
                x_cut = x.copy()
                for r, c in enumerate(cuts):
                    x_cut[r, c + 1 :] = donor[r, c + 1 :]
                if rng.random() < 0.5:  # the altered copy first, half the time: a model cannot tell the real batch from the probe
                    cut_logits = list(worker.logits(x_cut, vocab_min))
            logits = []
            for (split, d, _, y), row in zip(batch, worker.logits(x, vocab_min)):
                nats, nbytes, counted = nll_sums(row, y, token_bytes)
                sums[split][d] += (nats, nbytes, counted)
                if b in probed or b == len(batches) - 1:
                    logits.append(row)
            if logits:
                kept[b] = (x, logits)
            if b in probed:  # nothing up to the cut may move
                if cut_logits is None:
                    cut_logits = list(worker.logits(x_cut, vocab_min))
                for r, (c, row) in enumerate(zip(cuts, cut_logits)):
                    diff = _max_diff(row[: c + 1], logits[r][: c + 1])
                    probes["causality_rows"] += 1
                    probes["causality_max_diff"] = max(probes["causality_max_diff"], diff)
                    if diff > PROBE_REL_TOL:
                        raise ScoreRejected(f"non-causal model: its logits at position {c} changed (by {diff:.3g} of their scale) "
                                            f"when only tokens after position {c} changed; a language model may not look ahead")
        # replay: earlier rows again, shuffled among the last batch's rows
        pool = [(b, r) for b, (x, _) in kept.items() for r in range(len(x))]
        rng.shuffle(pool)
        pool = pool[:rows]
        if pool:
            x_replay = np.stack([kept[b][0][r] for b, r in pool])
            for (b, r), row in zip(pool, worker.logits(x_replay, vocab_min)):
                diff = _max_diff(row, kept[b][1][r])
                probes["replay_rows"] += 1
                probes["replay_max_diff"] = max(probes["replay_max_diff"], diff)
                if diff > PROBE_REL_TOL:
                    raise ScoreRejected(f"the model's logits for a window changed (by {diff:.3g} of their scale) when it was scored "
                                        "again among other windows: its output depends on other rows or on what it saw before")
    finally:
        worker.close()
    result = {}
    for split, s in sums.items():
        nats, nbytes = s[:, 0].sum(), int(s[:, 1].sum())
        result[split] = {"val_bpb": bits_per_byte(nats, nbytes), "tokens": int(s[:, 2].sum()), "bytes": nbytes,
                         "domains": {dom: bits_per_byte(s[d, 0], int(s[d, 1])) for d, dom in enumerate(corpus.domains)}}
    return {"splits": result, "probes": probes, "sandboxed": sandbox.active, "seconds": round(time.time() - t0, 2)}

