"""Batches for training (domain-weighted random windows) and the fixed validation windows.

    loader = BatchLoader(corpus, seq_len=256, batch_rows=64, weights={"code": 1, "literature": 2}, seed=0)
    x, y = loader.next_batch()          # int64 [batch_rows, seq_len]; y is x shifted by one
    state = loader.state_dict()         # later: loader.load_state_dict(state) -> same batches

A batch is the GLOBAL batch: every process draws the same one and keeps its own rows, so a
run on 1 or N processes sees identical data. Windows may cross document separators, as in
nanoGPT; the separator token tells the model where a document starts.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from ..errors import UserError
from .shards import Corpus, rebuild_hint, vocab_overflow_error
from .windows import eval_windows


class BatchLoader:
    """Each row: a domain drawn with probability proportional to its weight, then a start
    offset uniform over that domain's split, then seq_len + 1 consecutive tokens.

    Randomness comes only from a private numpy PCG64 generator seeded with `seed`, never
    from global RNG state, so `state_dict()` captures everything needed to resume exactly.
    """

    def __init__(
        self,
        corpus: Corpus,
        split: str = "train",
        *,
        seq_len: int,
        batch_rows: int,
        weights: dict[str, float] | None = None,
        seed: int = 0,
        bias_domain: str = "",
    ):
        if seq_len < 1 or batch_rows < 1:
            raise ValueError(f"seq_len and batch_rows must be >= 1, got seq_len={seq_len}, batch_rows={batch_rows}")
        self.corpus = corpus
        self.split = split
        self.seq_len = seq_len
        self.batch_rows = batch_rows
        self.domains = corpus.domains
        self.arrays = [corpus.tokens(d, split) for d in self.domains]
        self.probs = self._probabilities(weights)
        for domain, array, p in zip(self.domains, self.arrays, self.probs):
            if p > 0 and len(array) < seq_len + 1:
                raise UserError(
                    f"domain {domain!r} has {len(array)} {split} tokens, fewer than seq_len + 1 = {seq_len + 1}: "
                    f"lower seq_len or give {domain} weight 0"
                )
        if bias_domain and bias_domain not in self.domains:
            raise UserError(f"faults.mixture_bias={bias_domain!r} is not a domain of this corpus: choose one of {', '.join(self.domains)}")
        # a deliberate fault (FaultConfig.mixture_bias): every other row comes from this domain
        self.bias_index = self.domains.index(bias_domain) if bias_domain else None
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self.num_batches = 0
        self._last_domains = np.zeros(0, dtype=np.int64)
        self._offsets = np.arange(seq_len + 1, dtype=np.int64)

    def _probabilities(self, weights: dict[str, float] | None) -> np.ndarray:
        if weights is None:
            counts = self.corpus.domain_token_counts(self.split)
            raw = np.array([counts[d] for d in self.domains], dtype=np.float64)
        else:
            unknown = sorted(set(weights) - set(self.domains))
            if unknown:
                raise UserError(
                    f"data.weights names {', '.join(map(repr, unknown))}, not a domain of this corpus: "
                    f"its domains are {', '.join(self.domains)}"
                )
            raw = np.array([float(weights.get(d, 0.0)) for d in self.domains], dtype=np.float64)
            if any(not math.isfinite(w) or w < 0 for w in raw):
                raise UserError(f"data.weights must be finite and >= 0, got {weights}")
        if raw.sum() <= 0:
            raise UserError(f"data.weights are all zero for domains {', '.join(self.domains)}: give at least one a positive weight")
        return raw / raw.sum()

    @property
    def weights(self) -> dict[str, float]:
        """The normalised sampling probability of each domain."""
        return {d: float(p) for d, p in zip(self.domains, self.probs)}

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y), both int64 [batch_rows, seq_len], y[:, t] = the token after x[:, t]."""
        rows = self.rng.choice(len(self.domains), size=self.batch_rows, p=self.probs)
        if self.bias_index is not None:
            rows[::2] = self.bias_index
        # Start offsets in [0, len - seq_len - 1]; unsampled domains get a dummy high of 1.
        highs = np.array([max(len(a) - self.seq_len, 1) for a in self.arrays], dtype=np.int64)
        starts = self.rng.integers(0, highs[rows])
        window = np.empty((self.batch_rows, self.seq_len + 1), dtype=np.int64)
        for d in np.unique(rows):
            picked = rows == d
            window[picked] = self.arrays[d][starts[picked, None] + self._offsets]  # fancy-index gather from the memmap
        if window.max(initial=0) >= self.corpus.tokenizer.vocab_size:  # an id the model has no embedding for: a damaged shard
            d = next(d for d in np.unique(rows) if window[rows == d].max() >= self.corpus.tokenizer.vocab_size)
            raise _out_of_vocabulary(self.corpus, self.domains[d], self.split, int(window[rows == d].max()))
        self.num_batches += 1
        self._last_domains = rows.astype(np.int64)
        batch = torch.from_numpy(window)
        return batch[:, :-1].contiguous(), batch[:, 1:].contiguous()

    def last_batch_domains(self) -> np.ndarray:
        """Index into `self.domains` of each row of the last batch (int64 [batch_rows])."""
        return self._last_domains

    def state_dict(self) -> dict:
        """Plain Python (JSON- and pickle-safe): the generator state and batches drawn."""
        return {"bit_generator": self.rng.bit_generator.state, "num_batches": self.num_batches}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["bit_generator"]
        self.num_batches = state["num_batches"]


def iter_eval_windows(corpus: Corpus, domain: str, seq_len: int, max_tokens: int,
                      split: str = "val") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """windows.eval_windows as torch tensors: the fixed evaluation windows of a domain, its
    `split`'s first max_tokens + 1 tokens (or all of them, if fewer) cut into non-overlapping
    windows, x = tokens[i : i + seq_len], y = tokens[i + 1 : i + seq_len + 1], int64 [seq_len]."""
    for x, y in eval_windows(corpus, domain, seq_len, max_tokens, split):  # held-out shards are checked for ids when first mapped
        yield torch.from_numpy(x), torch.from_numpy(y)


def _out_of_vocabulary(corpus: Corpus, domain: str, split: str, token_id: int) -> UserError:
    shard = corpus.path / corpus.manifest["domains"][domain][split]["file"]
    return vocab_overflow_error(shard, token_id, corpus.tokenizer.vocab_size, rebuild_hint(corpus.path, corpus.manifest))
