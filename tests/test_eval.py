"""The metric: bits-per-byte against a hand computation, fixed windows, tamper-evidence."""

import math

import numpy as np
import pytest
import torch

from pretrainlab import eval as evaluation
from pretrainlab.data import Corpus, iter_eval_windows, windows


class FixedDistribution(torch.nn.Module):
    """A 'model' that predicts the same next-token distribution everywhere."""

    def __init__(self, probs: torch.Tensor):
        super().__init__()
        self.logits = torch.nn.Parameter(probs.log())

    def forward(self, idx):
        return self.logits.expand(*idx.shape, -1)


def test_uniform_byte_model_scores_eight_bits(corpus_dir):
    corpus = Corpus.open(corpus_dir)
    result = evaluation.evaluate_bpb(FixedDistribution(torch.full((256,), 1 / 256)), corpus, 64, 1024, 8, torch.device("cpu"))
    assert result["val_bpb"] == pytest.approx(8.0, abs=1e-6)
    assert all(v == pytest.approx(8.0, abs=1e-6) for v in result["domains"].values())


def test_bpb_matches_a_hand_computation(corpus_dir):
    corpus = Corpus.open(corpus_dir)
    gen = torch.Generator().manual_seed(0)
    probs = torch.rand(256, generator=gen, dtype=torch.float64) + 0.01
    probs /= probs.sum()
    seq_len, per_domain = 64, 1000  # 1000 targets -> 15 full windows of 64 (960 targets)
    result = evaluation.evaluate_bpb(FixedDistribution(probs.float()), corpus, seq_len, per_domain, 4, torch.device("cpu"))

    # by hand, straight from the shards: targets are tokens[1 : 1 + 15*64]; separators (0 bytes) excluded
    token_bytes = corpus.token_bytes()
    logp = torch.log_softmax(probs.float().log().double(), -1).numpy()  # the model's own fp32 logits
    total_nats, total_bytes = 0.0, 0
    for domain in corpus.domains:
        targets = np.asarray(corpus.tokens(domain, "val")[1 : 1 + (per_domain // seq_len) * seq_len], dtype=np.int64)
        counted = token_bytes[targets] > 0
        nats = -logp[targets[counted]].sum()
        nbytes = int(token_bytes[targets].sum())
        assert result["domains"][domain] == pytest.approx(nats / math.log(2) / nbytes, rel=1e-6)
        total_nats, total_bytes = total_nats + nats, total_bytes + nbytes
    assert result["val_bpb"] == pytest.approx(total_nats / math.log(2) / total_bytes, rel=1e-6)
    assert result["bytes"] == total_bytes


def test_eval_windows_are_the_same_every_time(corpus_dir):
    corpus = Corpus.open(corpus_dir)
    domain = corpus.domains[0]
    a = [x.tolist() for x, _ in iter_eval_windows(corpus, domain, 64, 2048)]
    b = [x.tolist() for x, _ in iter_eval_windows(corpus, domain, 64, 2048)]
    assert a == b and len(a) == 32


def test_eval_module_hash_is_the_file_hash():
    import hashlib
    from pathlib import Path

    assert evaluation.module_sha256() == hashlib.sha256(Path(evaluation.__file__).read_bytes()).hexdigest()


def test_bits_per_byte_units():
    # one byte predicted with p = 1/2 costs one bit
    assert evaluation.bits_per_byte(math.log(2), 1) == pytest.approx(1.0)


class Bigram(torch.nn.Module):
    """Logits that depend on the input token: a random lookup table."""

    def __init__(self, vocab: int = 256):
        super().__init__()
        self.table = torch.nn.Embedding(vocab, vocab)
        torch.nn.init.normal_(self.table.weight, std=4.0, generator=torch.Generator().manual_seed(1))

    def forward(self, idx):
        return self.table(idx)


def test_the_lab_scorers_numpy_sums_match_the_trainers_evaluation(corpus_dir):
    """runners/scoring.py sums windows.nll_sums over windows.eval_windows in numpy; the trainer's
    evaluate_bpb sums torch's cross-entropy over iter_eval_windows: the same figure per domain."""
    corpus = Corpus.open(corpus_dir)
    model = Bigram().eval()
    result = evaluation.evaluate_bpb(model, corpus, 64, 1500, 4, torch.device("cpu"), split="monitor")
    token_bytes = np.asarray(corpus.token_bytes(), dtype=np.float64)
    for domain in corpus.domains:
        nats = nbytes = counted = 0
        for (x, y), (tx, ty) in zip(windows.eval_windows(corpus, domain, 64, 1500, "monitor"),
                                    iter_eval_windows(corpus, domain, 64, 1500, "monitor"), strict=True):
            assert x.dtype == y.dtype == np.int64 and x.tolist() == tx.tolist() and y.tolist() == ty.tolist()
            with torch.no_grad():
                logits = model(torch.from_numpy(x)[None])[0].numpy()
            n, b, c = windows.nll_sums(logits, y, token_bytes)
            nats, nbytes, counted = nats + n, nbytes + b, counted + c
        assert counted > 0
        assert windows.bits_per_byte(nats, nbytes) == pytest.approx(result["domains"][domain], rel=1e-7)


def test_the_job_process_scores_without_torch():
    """A campaign's job process scores every run (runners/job.py -> runners/scoring.py): it never
    imports torch, which would cost each run another second or two of CPU and its memory."""
    import subprocess
    import sys

    code = ("import sys; import pretrainlab.runners.job, pretrainlab.runners.scoring; "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:5]")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr[-2000:]


def test_the_scorers_sums_stay_exact_at_the_edges_of_float32():
    """Logits at float32's limits (a hostile or broken model's) give the exact float64 loss, without warnings."""
    import warnings

    logits = np.zeros((3, 8), np.float32)
    logits[0, 0], logits[0, 1] = 3e38, -3e38  # the target gets probability 0: its loss is the full 6e38 nats
    logits[1, :] = -3e38  # all equal: uniform
    logits[2, 5] = 1e30  # the target takes all the probability: no loss
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nats, nbytes, counted = windows.nll_sums(logits, np.array([1, 2, 5]), np.array([1, 1, 1, 1, 1, 1, 0, 1], dtype=np.float64))
    assert nats == pytest.approx(6e38 + math.log(8), rel=1e-6) and (nbytes, counted) == (3, 3)
