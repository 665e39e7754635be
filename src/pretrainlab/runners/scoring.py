"""The lab's score of a run: val_bpb computed in a process that never imports experiment code.

    score = score_run(run_dir, code_src, corpus, seq_len=128, tokens_per_domain=32768, batch_rows=64)
    score["splits"]["val"]["val_bpb"]       # what decisions use
    score["splits"]["monitor"]["val_bpb"]   # compared with what the run reported about itself

The experiment's model code runs in a sandboxed worker (scoring_worker.py) whose only job
is to turn token windows into logits; this process sends it the windows of each split one
batch at a time, in an order drawn from a secret seed, reads the logits back one row at a
time and computes the NLL itself (data.windows.nll_sums). Then a second, fresh worker scores rows
drawn at random from the first pass again, shuffled together:
  - causality (CAUSALITY_PROBES rows): a row keeps its tokens up to a random cut and takes
    another window's tokens after it; up to the cut, each position's log-probability of its
    true next token must match the first pass (a model that looks ahead fails). Only the
    position at the cut can catch a model that looks one token ahead, so the rows are many,
    and cheap to keep (one float per position): a model that looks ahead at 1 position in 50
    passes all 384 with probability 4e-4;
  - replay (REPLAY_PROBES rows): sent unchanged; every position must match the first pass (a
    model that uses other rows of its batch, or learns from what it has scored so far, fails).
The log-probability of the true next token is what a score is made of, so it is what the
probes compare: a model can gain nothing they do not see.
Two processes that never shared memory cannot agree on what they saw, so a model cannot
pass by remembering the first pass; and the first worker cannot know which of its rows
will be checked. A run of the lab's own, unpatched code is scored by one worker doing both
passes: that code keeps no state between calls, nothing in such a run is the experiment's
but its recipe and weights, and a second torch process would only cost the run a start-up. Nothing passes between them: the probe worker runs experiment code only once
the first has exited (it starts early, but waits for the lab's word after importing torch and
reading the weights), each sees only a private copy of the weights and recipe (not the run directory,
where the lab keeps their logs), and each runs in a session of its own (no terminal to type
into, no process group shared with the lab). Rows are compared as log-probabilities, which a
constant added to every logit does not move (it would blow up a tolerance relative to the
logits' scale). Logits must also be finite and of the shape asked for, and a worker that
stops reading or answering is given up on. The limit: both workers run on one kernel, and a
model built to pass data through the page cache (or timing) defeats the probes; closing that
takes a VM or machine per worker (docs/research.md, "Known limit of the probes").
A failed probe raises ScoreRejected with the reason; the campaign records it.
"""

from __future__ import annotations

import fcntl
import os
import random
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from ..data import Corpus
from ..data.windows import bits_per_byte, eval_windows, nll_sums
from ..rundir import create_new, open_regular
from ..scoring_worker import START
from .limits import RunCap
from .sandbox import Sandbox, scrubbed_env

LAB_CODE = Path(__file__).resolve().parents[2]  # the lab's own source tree: what unpatched runs train and are scored with
MAX_LOGIT_FLOATS = 2**26  # logits per request (256 MB of float32): rows per batch shrink for a large vocabulary
MAX_VOCAB = 2**21  # a logit width beyond this is not a language model's: refuse it before allocating
VOCAB_SLACK = 1024  # logit columns beyond the tokenizer's (a padded head): more only cost the lab memory
# log-probabilities of the same row must agree to this (nats): fp32 batching noise is ~1e-6 on CPU; a GPU's kernels
# vary more with the batch's shape. A model that leaks the future below it gains at most this per token.
PROBE_TOL = {"cpu": 1e-4, "gpu": 2e-3}
LOGP_FLOOR = -100.0  # log-probabilities compared down to this: tokens less likely than e^-100 cannot move a score
MAX_WORKER_FILE = 64 << 20  # bytes: a scoring worker's log, or any file it writes
READ_TIMEOUT_S = 1800  # a worker silent this long (no byte of an answer) has stopped: the scoring gives up on it
# a whole scoring, both workers: one that answers each request just inside READ_TIMEOUT_S would otherwise hold a
# campaign's close (which scores the hidden test split outside any job's timeout) for hours per batch
SCORE_TIMEOUT_S = 4 * 3600
# rows the probe worker scores. A causality row tests one position for a one-token look-ahead (the one at its cut), so a
# model that looks ahead at a fraction r of positions passes all of them with probability (1 - r)^n: 384 rows catch
# 1 in 50 with 99.96%, 1 in 100 with 97.9%, 1 in 200 with 85% (per run; every run of an experiment must pass)
CAUSALITY_PROBES = 384
REPLAY_PROBES = 64  # rows sent unchanged: every position of each is compared


class ScoreRejected(Exception):
    """The run's model may not be scored: it failed a probe or broke the protocol."""


class ScoringFailed(Exception):
    """The scoring could not finish for a reason that may not be the model's (a worker killed by a signal, as the OOM
    killer or a person would): no verdict; the campaign scores the run once more."""


class ScoringOutOfMemory(ScoringFailed):
    """A worker was killed at the run's memory cap (runners/limits.py): the model needs more memory than the run may
    have. Not a verdict on its honesty, and not worth another try: the run crashed."""

    def __init__(self, message: str, cap):
        super().__init__(message)
        self.cap = cap


_LIVE: set = set()  # the workers of this process, for abort_workers


def abort_workers() -> None:
    """Kill every scoring worker this process has running (a job told to stop: its workers are in sessions of their
    own, so the SIGTERM that stops the job does not reach them, and one may be blocked in experiment code)."""
    for worker in list(_LIVE):
        worker.kill()


def _limit_files() -> None:
    """preexec_fn: no file a worker writes grows past MAX_WORKER_FILE (its log in the run directory is on the lab's disk;
    an honest worker prints a few lines). One that tries is killed (SIGXFSZ), and its scoring rejected."""
    import resource

    resource.setrlimit(resource.RLIMIT_FSIZE, (MAX_WORKER_FILE, MAX_WORKER_FILE))


class _Worker:
    """The sandboxed worker process and its two pipes."""

    def __init__(self, cmd: list[str], env: dict, stderr_path: Path, ends_at: float = float("inf"), cap: RunCap | None = None):
        self.stderr_path = Path(stderr_path)
        self.cap = cap or RunCap(None, None)
        self.ends_at = ends_at  # time.monotonic() by which the whole scoring must be done
        try:
            self.stderr = create_new(stderr_path)  # in the run directory, which experiment code wrote: never through a symlink
        except OSError as e:  # e.g. a directory planted at the log's name
            raise ScoreRejected(f"the lab cannot write its log {stderr_path.name} in the run directory ({e.strerror or e}): the "
                                "trainer left something else at that name") from None
        self.deadline = 0.0
        # a session of its own: no controlling terminal to push keystrokes into (TIOCSTI), and kill(0, ...) from inside
        # reaches only its own group, never the lab's process (at a campaign's close, the loop in the user's terminal)
        # its memory and tasks capped (a cgroup of its own: runners/limits.py), like the trainer's
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, env=env,
                                     start_new_session=True, preexec_fn=lambda: (self.cap.enter(), _limit_files()))
        self.stdin, self.stdout, self.own_session, self.started = self.proc.stdin, self.proc.stdout, True, False
        self.closed = False
        _LIVE.add(self)

    @classmethod
    def trainer(cls, proc: subprocess.Popen, to_fd: int, from_fd: int, cap, ends_at: float = float("inf")) -> _Worker:
        """The trainer of a run of the lab's own code, which serves the protocol on two pipes once it has trained
        (scoring_worker.after_training): `to_fd` and `from_fd` are the job's ends, now this object's to close. It is in the
        job's process group (a stop reaches it with the job's), its log is the job's, and its cap the training's."""
        self = cls.__new__(cls)
        self.proc, self.cap, self.ends_at, self.deadline = proc, cap or RunCap(None, None), ends_at, 0.0
        self.stdin, self.stdout = os.fdopen(to_fd, "wb", buffering=0), os.fdopen(from_fd, "rb", buffering=0)
        self.stderr, self.stderr_path, self.own_session, self.started = None, None, False, False
        self.closed = False
        _LIVE.add(self)
        return self

    def kill(self) -> None:
        import signal

        try:  # a worker and all it started (its own session), else the trainer's sandbox (bwrap takes its child with it)
            os.killpg(self.proc.pid, signal.SIGKILL) if self.own_session else self.proc.kill()
        except OSError:
            pass

    def start(self) -> None:
        """Let it run the experiment's code: until now it has only imported torch and loaded the weights."""
        self.started = True
        try:
            self.stdin.write(START)
            self.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # it has exited: the first request says so, with its log

    def logits(self, x: np.ndarray, vocab_min: int):
        """Send one batch [rows, T]; yield each row's float32 logits [T, V] as it arrives."""
        rows, seq_len = x.shape
        # the whole answer, not each read: a trickle of bytes is no answer
        self.deadline = min(time.monotonic() + READ_TIMEOUT_S, self.ends_at)
        try:
            self._write(np.array([rows, seq_len], dtype="<i4").tobytes() + x.astype("<i4").tobytes())
            head = np.frombuffer(self._read(12), dtype="<i4")
        except (BrokenPipeError, EOFError):
            self._ended()
        if head[0] != rows or head[1] != seq_len or not vocab_min <= head[2] <= min(MAX_VOCAB, vocab_min + VOCAB_SLACK):
            raise ScoreRejected(f"the model returned logits of shape {tuple(int(v) for v in head)} for a [{rows}, {seq_len}] "
                                f"batch (a vocabulary of at least {vocab_min} expected)")
        vocab = int(head[2])
        for _ in range(rows):
            try:
                raw = self._read(4 * seq_len * vocab)
            except EOFError:  # (gone midway through its answer: the same verdicts as before it)
                self._ended()
            row = np.frombuffer(raw, dtype="<f4").reshape(seq_len, vocab)
            if not np.isfinite(row).all():
                raise ScoreRejected("the model returned non-finite logits (NaN or Inf)")
            yield row

    def _ended(self) -> None:
        """The worker's end of the stream closed: raise why (out of memory, killed, or exited: a rejection)."""
        # never its output in the reason: the reason reaches the ledger and the strategy's prompt, and a worker that was
        # just sent evaluation windows would print them there for the next proposal to learn by heart
        code = self.proc.wait()
        where = (f"what it printed is in {self.stderr_path or 'the job log'} (kept out of this reason: it may hold evaluation "
                 "text)")
        killed = code < 0 or 128 < code <= 128 + 64  # by a signal (bwrap passes its child's on as 128 + n)
        if killed and self.cap.out_of_memory():  # (a worker that exits on its own after a child of its was is no OOM)
            raise ScoringOutOfMemory(f"the model process ran out of memory while scoring; {where}", self.cap) from None
        if killed:
            raise ScoringFailed(f"the model process was killed by signal {-code if code < 0 else code - 128} while "
                                f"scoring; {where}") from None
        raise ScoreRejected(f"the model process exited while scoring (exit {code}); {where}") from None

    def _write(self, data: bytes) -> None:
        """Send a request within the deadline (a worker that stops reading its input would block a plain write forever)."""
        fd = self.stdin.fileno()
        os.set_blocking(fd, False)
        view = memoryview(data)
        while view:
            if not select.select([], [fd], [], max(0.0, self.deadline - time.monotonic()))[1]:
                raise ScoreRejected(f"the model process stopped reading its input {self._limit()}: it was stopped")
            try:
                view = view[os.write(fd, view[: 1 << 16]) :]
            except BlockingIOError:
                continue

    def _limit(self) -> str:
        return (f"before the scoring's time ran out ({SCORE_TIMEOUT_S} s in all)" if self.deadline >= self.ends_at
                else f"within {READ_TIMEOUT_S} s")

    def _read(self, n: int) -> bytes:
        buf = bytearray()
        fd = self.stdout.fileno()
        while len(buf) < n:
            if not select.select([fd], [], [], max(0.0, self.deadline - time.monotonic()))[0]:
                raise ScoreRejected(f"the model process did not answer {self._limit()}: it was stopped")
            chunk = os.read(fd, min(n - len(buf), 1 << 20))
            if not chunk:
                raise EOFError
            buf += chunk
        return bytes(buf)

    def close(self, abort: bool = False) -> None:
        """Tell the worker to exit and wait for it; `abort` (a pass given up midway, e.g. on a
        failed probe) kills it at once: it may be blocked writing logits nobody will read."""
        if self.closed:
            return
        self.closed = True
        try:
            if not abort:
                if self.started:  # (one never started, a trainer the job will not have score, ends at the end of its input)
                    self.stdin.write(np.zeros(2, dtype="<i4").tobytes())
                self.stdin.close()
                self.proc.wait(timeout=30)
        except (BrokenPipeError, OSError, subprocess.TimeoutExpired):
            pass
        if self.proc.poll() is None:
            self.kill()
            self.proc.wait()
        _LIVE.discard(self)
        for f in (self.stdin, self.stdout, self.stderr):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass


def _target_log_probs(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Each position's log-probability (float64) of its true next token, floored at LOGP_FLOOR: what a score is made of."""
    x = logits.astype(np.float64)
    top = x.max(axis=-1)
    log_z = top + np.log(np.exp(x - top[:, None]).sum(axis=-1))
    return np.maximum(x[np.arange(len(targets)), targets] - log_z, LOGP_FLOOR)


def private_copy(run_dir: Path, into: Path) -> Path:
    """The run's weights and recipe in a directory of the lab's, for the workers to read: a
    worker sees neither the run directory (the lab's logs of the other worker are there) nor
    anything experiment code could change. Hard links where the file system allows (the trainer
    has exited: nothing writes the files), copies elsewhere; never through a symlink."""
    for name in ("model.pt", "recipe.json"):
        src, dst = run_dir / name, into / name
        try:
            with open_regular(src) as f:  # a regular file, not a link the trainer planted
                try:
                    os.link(f"/proc/self/fd/{f.fileno()}", dst, follow_symlinks=True)
                except OSError:
                    with create_new(dst) as out:
                        shutil.copyfileobj(f, out, 1 << 22)
        except OSError as e:  # missing, or a link or special file
            raise ScoreRejected(f"the run's {name} cannot be scored ({e.strerror or e}): the lab reads only the regular file "
                                "the trainer wrote") from None
    return into


def sweep_scratch(scratch: Path) -> None:
    """Remove what scorings that died (a job killed with SIGKILL, a machine that went down) left in `scratch`: folders
    whose lock no live scoring holds. They hold hard links to weights, which would keep a deleted run's disk in use."""
    for entry in scratch.iterdir():
        if entry.suffix == ".lock" or not entry.is_dir() or entry.is_symlink():
            continue
        try:
            fd = os.open(f"{entry}.lock", os.O_RDWR | os.O_NOFOLLOW)
        except FileNotFoundError:
            fd = None  # its lock is made before it: a folder without one was left by a scoring that died between the two
        except OSError:
            continue
        try:
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # a live scoring's
        else:
            shutil.rmtree(entry, ignore_errors=True)
            if fd is not None:
                os.unlink(f"{entry}.lock")
        finally:
            if fd is not None:
                os.close(fd)


def score_run(run_dir: Path, code_src: Path, corpus: Corpus, *, seq_len: int, tokens_per_domain: int, batch_rows: int,
              splits: tuple[str, ...] = ("val", "monitor"), sandbox: Sandbox | None = None, threads: int = 1,
              gpus: bool = False, python: str | None = None, env: dict[str, str] | None = None, memory: int | None = None,
              tasks: int | None = None, trainer: _Worker | None = None) -> dict:
    """Score the model in run_dir (recipe.json + model.pt) with the code in code_src on each
    split; returns {"splits": {split: {"val_bpb", "domains", "tokens", "bytes"}}, "probes": {...},
    "sandboxed": bool, "seconds": float}. Raises ScoreRejected when a probe fails. `env` adds
    variables for the workers (e.g. the slot's CUDA_VISIBLE_DEVICES); secrets are dropped. `memory` (bytes) and `tasks`
    cap each worker's process tree (runners/limits.py); ScoringOutOfMemory when a worker is killed at its cap.
    `trainer` (the lab's own code only: `trainer_worker`): the run's live trainer scores it, no worker is started; it is
    closed (it exits) whatever happens."""
    import sys

    t0 = time.time()
    run_dir = Path(run_dir).resolve()
    sandbox = sandbox or Sandbox.detect()
    if trainer is not None and Path(code_src).resolve() != LAB_CODE:
        trainer.close(abort=True)
        raise ValueError("only a run of the lab's own code is scored by its trainer")
    vocab_min = corpus.tokenizer.vocab_size
    token_bytes = np.asarray(corpus.token_bytes(), dtype=np.float64)
    windows = [(split, d, x, y) for split in splits for d, domain in enumerate(corpus.domains)
               for x, y in eval_windows(corpus, domain, seq_len, tokens_per_domain, split)]
    rng = random.Random(random.SystemRandom().getrandbits(64))  # an order the model cannot predict
    rng.shuffle(windows)
    rows = max(1, min(batch_rows, MAX_LOGIT_FLOATS // (seq_len * vocab_min)))
    # the probes, drawn now and kept secret: (row of the scoring pass, cut) for causality; the cut is None for replay
    probes = [(rng.randrange(len(windows)), rng.randrange(seq_len - 1)) for _ in range(CAUSALITY_PROBES if seq_len > 1 else 0)]
    probes += [(rng.randrange(len(windows)), None) for _ in range(REPLAY_PROBES)]

    if trainer is not None:
        # (it closes the trainer however it ends: the trainer exits)
        sums, probes = _both_passes([], {}, run_dir, corpus, windows, probes, rows, vocab_min, token_bytes, splits, rng,
                                    PROBE_TOL["gpu" if gpus else "cpu"], time.monotonic() + SCORE_TIMEOUT_S, trainer.cap,
                                    one_worker=True, worker=trainer)
        return _scored(sums, probes, corpus, sandbox, t0, workers=1, in_trainer=True)
    scratch = run_dir.parent / ".scoring"  # beside the run (a hard link, not a copy), in no sandbox's view, never a run's name
    scratch.mkdir(exist_ok=True)
    sweep_scratch(scratch)
    fd, lock = tempfile.mkstemp(prefix=f"{run_dir.name}-", suffix=".lock", dir=scratch)
    fcntl.flock(fd, fcntl.LOCK_EX)  # held while this scoring lives: a sweep leaves its folder alone
    private = Path(lock[: -len(".lock")])
    private.mkdir()
    try:
        private_copy(run_dir, private)
        cmd = [python or sys.executable, "-m", "pretrainlab.scoring_worker", str(private)]
        env = scrubbed_env({**(env or {}), "PYTHONPATH": str(Path(code_src).resolve()), "OMP_NUM_THREADS": str(threads),
                            "PYTHONUNBUFFERED": "1"})
        wrapped = sandbox.wrap(cmd, code_src=code_src, read_only=[private], gpus=gpus)
        caps = (memory, tasks, gpus)
        one_worker = Path(code_src).resolve() == LAB_CODE  # the lab's own code: no experiment code to keep apart
        sums, probes = _score_and_probe(wrapped, env, run_dir, corpus, windows, probes, rows, vocab_min, token_bytes,
                                        splits, rng, PROBE_TOL["gpu" if gpus else "cpu"], caps, one_worker)
    finally:
        shutil.rmtree(private, ignore_errors=True)
        os.unlink(lock)
        os.close(fd)
    return _scored(sums, probes, corpus, sandbox, t0, workers=1 if one_worker else 2)


def trainer_worker(proc: subprocess.Popen, to_fd: int, from_fd: int, cap=None) -> _Worker:
    """The live trainer of a run of the lab's own code as its scoring worker (score_run's `trainer`)."""
    return _Worker.trainer(proc, to_fd, from_fd, cap)


def _scored(sums: dict, probes: dict, corpus: Corpus, sandbox: Sandbox, t0: float, workers: int, in_trainer: bool = False) -> dict:
    result = {}
    for split, s in sums.items():
        nats, nbytes = s[:, 0].sum(), int(s[:, 1].sum())
        result[split] = {"val_bpb": bits_per_byte(nats, nbytes), "tokens": int(s[:, 2].sum()), "bytes": nbytes,
                         "domains": {dom: bits_per_byte(s[d, 0], int(s[d, 1])) for d, dom in enumerate(corpus.domains)}}
    probes["workers"] = workers
    probes["in_trainer"] = in_trainer  # the run's own trainer served the logits (the lab's code), no worker was started
    return {"splits": result, "probes": probes, "sandboxed": sandbox.active, "seconds": round(time.time() - t0, 2)}


def _score_and_probe(wrapped: list[str], env: dict, run_dir: Path, corpus: Corpus, windows: list, probes: list, rows: int,
                     vocab_min: int, token_bytes: np.ndarray, splits: tuple[str, ...], rng: random.Random,
                     tol: float, caps: tuple = (None, None, False), one_worker: bool = False) -> tuple[dict, dict]:
    """The scoring pass, then the probe pass in a fresh worker (or the same one, `one_worker`): (NLL sums per split, probe
    stats)."""
    ends_at = time.monotonic() + SCORE_TIMEOUT_S
    memory, tasks, gpus = caps
    # one cap for both workers (their start-up overlaps): the run's memory, not twice it. Nothing passes between them
    # through it that matters: the probe worker runs no experiment code until the first has exited
    cap = RunCap.create(f"{run_dir.name}-score", memory, tasks, gpus)
    try:
        return _both_passes(wrapped, env, run_dir, corpus, windows, probes, rows, vocab_min, token_bytes, splits, rng, tol, ends_at,
                            cap, one_worker)
    finally:
        cap.remove()


def _both_passes(wrapped: list[str], env: dict, run_dir: Path, corpus: Corpus, windows: list, probes: list, rows: int,
                 vocab_min: int, token_bytes: np.ndarray, splits: tuple[str, ...], rng: random.Random, tol: float,
                 ends_at: float, cap: RunCap, one_worker: bool = False, worker: _Worker | None = None) -> tuple[dict, dict]:
    sums = {split: np.zeros((len(corpus.domains), 3)) for split in splits}  # nats, bytes, counted targets
    wanted = {i for i, _ in probes}
    kept: dict[int, np.ndarray] = {}  # row of the scoring pass -> its log-probability of each true next token
    # 1. the scoring worker: every window once, in the secret order (its stderr goes to the run directory, which no
    # worker sees); or the trainer given (one_worker)
    if worker is None:
        worker = _Worker(wrapped, env, run_dir / "scorer.log", ends_at, cap)
    else:
        worker.ends_at = ends_at
    worker.start()
    # the probe worker starts now, so its start-up (importing torch, reading the weights) overlaps the scoring pass; it
    # runs no experiment code until it is told to start, after the first worker has exited
    prober = worker if one_worker else _Worker(wrapped, env, run_dir / "scorer-probe.log", ends_at, cap)
    try:
        for b in range(0, len(windows), rows):
            batch = windows[b : b + rows]
            x = np.stack([w[2] for w in batch])
            for r, ((split, d, _, y), row) in enumerate(zip(batch, worker.logits(x, vocab_min))):
                sums[split][d] += nll_sums(row, y, token_bytes)
                if b + r in wanted:
                    kept[b + r] = _target_log_probs(row, y)
    except BaseException:
        worker.close(abort=True)
        prober.close(abort=True)
        raise
    if not one_worker:
        worker.close()  # gone, with everything it started, before the probe worker runs experiment code: nothing passes between them
    # 2. the probe worker: a fresh process, which never saw what the first one saw, scores some of the same rows again,
    # most of them with the tokens after a random cut taken from another window. An honest model gives the same
    # log-probabilities (up to the cut, for the altered rows). Whatever a model remembers, or reads in other rows of its
    # batch, or sees after position t, it cannot make two processes agree unless its output at t depends only on tokens
    # up to t.
    probe_rows = []  # (inputs sent, targets, log-probabilities from the first pass, cut or None)
    for i, c in probes:
        x, y = windows[i][2], windows[i][3]
        if c is not None:
            donor = windows[rng.randrange(len(windows))][2] if len(windows) > 1 else np.roll(x, 1)
            x = np.concatenate([x[: c + 1], donor[c + 1 :]])
        probe_rows.append((x, y, kept[i], c))
    rng.shuffle(probe_rows)
    stats = {"rows": len(probe_rows), "causality_rows": sum(c is not None for *_, c in probe_rows), "causality_max_diff": 0.0,
             "replay_rows": sum(c is None for *_, c in probe_rows), "replay_max_diff": 0.0, "tolerance": tol}
    n = stats["causality_rows"]
    stats["lookahead_caught"] = {f"1 in {k}": round(1 - (1 - 1 / k) ** n, 4) for k in (50, 100, 200)}
    if not probe_rows:
        prober.close(abort=True)
        return sums, stats
    if not one_worker:
        prober.start()
    worker = prober
    try:
        for i in range(0, len(probe_rows), rows):
            chunk = probe_rows[i : i + rows]
            for (_, y, first, c), logits in zip(chunk, worker.logits(np.stack([p[0] for p in chunk]), vocab_min)):
                again = _target_log_probs(logits, y)
                if c is not None:  # causality: up to the cut, nothing may move
                    diff = float(np.abs(again[: c + 1] - first[: c + 1]).max())
                    stats["causality_max_diff"] = max(stats["causality_max_diff"], diff)
                    if diff > tol:
                        raise ScoreRejected(f"non-causal model: its log-probabilities at position {c} or before changed (by "
                                            f"{diff:.3g} nats) when only tokens after position {c} changed; a language model "
                                            "may not look ahead")
                else:  # replay: the same window must get the same output in another process, among other rows
                    diff = float(np.abs(again - first).max())
                    stats["replay_max_diff"] = max(stats["replay_max_diff"], diff)
                    if diff > tol:
                        raise ScoreRejected(f"the model's log-probabilities for a window changed (by {diff:.3g} nats) when a "
                                            "fresh process scored it among other windows: its output depends on other rows or "
                                            "on what it saw before")
    except BaseException:
        worker.close(abort=True)
        raise
    worker.close()
    return sums, stats
