"""The fixed evaluation windows and the bits-per-byte arithmetic, in numpy: the lab's scorer
(runners/scoring.py) runs in the campaign's job process, which never imports torch.

    for x, y in eval_windows(corpus, "code", seq_len=128, max_tokens=32768, split="val"): ...
    nats, nbytes, counted = nll_sums(logits, y, token_bytes)   # logits float32 [T, V]
    bits_per_byte(nats, nbytes)

The trainer's evaluate_bpb (eval.py) reads the same windows through data.loader.iter_eval_windows
and sums the same quantities with torch, so the two agree to float rounding on the same model.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from ..errors import UserError
from .shards import Corpus


def bits_per_byte(nats: float, num_bytes: int) -> float:
    return nats / math.log(2) / num_bytes if num_bytes else float("nan")


def eval_windows(corpus: Corpus, domain: str, seq_len: int, max_tokens: int, split: str = "val") -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """A domain's `split` cut into its first non-overlapping windows of seq_len + 1 tokens, up to
    max_tokens targets: (x, y) int64 [seq_len], y = x shifted by one. Only full windows; the same
    tokens every call."""
    tokens = corpus.tokens(domain, split)
    num_targets = min(max_tokens, len(tokens) - 1)
    num_windows = num_targets // seq_len
    if num_windows == 0:
        raise UserError(
            f"domain {domain!r} has {len(tokens)} {split} tokens, not enough for one window of seq_len {seq_len}: "
            "lower seq_len, raise the eval token budget, or prepare the corpus with a larger val_fraction"
        )
    for i in range(0, num_windows * seq_len, seq_len):
        window = tokens[i : i + seq_len + 1].astype(np.int64)
        yield window[:-1], window[1:]


def nll_sums(logits: np.ndarray, targets: np.ndarray, token_bytes: np.ndarray) -> tuple[float, int, int]:
    """(nats, bytes, counted targets) of float32 logits [N, V] against int64 targets [N];
    targets spelling zero bytes (separators) are not counted. The exponentials are float32, as
    in torch's cross-entropy; each row's sum and the log-probabilities are float64."""
    logits = np.asarray(logits, dtype=np.float32)
    rows = np.arange(len(targets))
    top = logits.max(axis=1)
    with np.errstate(over="ignore"):  # a logit ~3e38 below its row's top is -inf here: its probability is 0, as it should be
        shifted = logits - top[:, None]
    np.exp(shifted, out=shifted)
    log_z = top.astype(np.float64) + np.log(shifted.sum(axis=1, dtype=np.float64))
    nats = log_z - logits[rows, targets].astype(np.float64)
    nbytes = token_bytes[targets]
    counted = nbytes > 0
    return float(nats[counted].sum()), int(nbytes.sum()), int(counted.sum())
