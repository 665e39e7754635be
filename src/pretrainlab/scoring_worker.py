"""The scoring worker: the one process that runs an experiment's model code on evaluation
inputs. It turns token windows into logits and nothing else; the lab's scorer
(runners/scoring.py), in a process that never imports experiment code, computes the score.

    python -m pretrainlab.scoring_worker RUN_DIR        # started by scoring.score_run, in the sandbox

It builds the model from RUN_DIR/recipe.json with the `pretrainlab.model` on its
PYTHONPATH (the experiment's code) and loads RUN_DIR/model.pt (tensors only). Protocol on
stdin/stdout, little-endian:
    start     the 4 bytes b"GO!\n": until then only the lab's own code has run here (torch, numpy,
              the recipe's parser), so the lab can start a worker early and let its experiment
              code run only once no other worker's is running
    request   int32 rows, int32 seq_len, then rows x seq_len int32 token ids (rows = 0: exit)
    response  int32 rows, int32 seq_len, int32 vocab, then rows x seq_len x vocab float32 logits
Nothing else may reach stdout: the protocol stream is a private copy of fd 1, and fd 1
itself is pointed at stderr before any experiment code is imported.

A run of the lab's own, unpatched code needs no worker of its own: its trainer serves the same
protocol once it has trained (`pretrainlab train ... --score-fds R,W`, started so by
runners/job.py), on two pipes of the job's. It first says TRAINED and its exit code, then reads
the weights back from the run directory (what the run saved is what is scored) and waits for
the start as a worker does; a job that will not score it closes the pipe, and it exits with
the training's code. Nothing in such a run is the experiment's but its recipe and weights, so
sparing it a second torch process (its start-up is most of a short run's CPU) changes no verdict.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

START = b"GO!\n"


TRAINED = b"TRND"  # a trainer that scores its own run: training is over (then int32 its exit code)


def main(run_dir: str) -> int:
    protocol_out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # prints from model code land in stderr, not in the logit stream
    sys.stdout = sys.stderr
    protocol_in = os.fdopen(os.dup(0), "rb", buffering=0)
    served = serve(Path(run_dir), protocol_in, protocol_out)
    return 2 if served is None else served


def after_training(run_dir: Path, fds: str, code: int) -> int:
    """The trainer of a run of the lab's own code, its training over with exit `code`: say so on the job's pipe
    (`fds`: "R,W", the ends this process reads and writes), then score the run as a worker when the job starts it.
    Returns the training's code (the job closed the pipe without starting it, or the scoring ended cleanly), else the
    worker's."""
    import signal
    import struct

    read_fd, write_fd = (int(fd) for fd in fds.split(","))
    protocol_in, protocol_out = os.fdopen(read_fd, "rb", buffering=0), os.fdopen(write_fd, "wb", buffering=0)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # training is over: a stop now ends the process (nothing to checkpoint)
    try:
        protocol_out.write(TRAINED + struct.pack("<i", code))
    except OSError:  # the job has gone
        return code
    if code != 0:
        return code  # nothing to score: the job reads the status from the run's summary
    try:
        served = serve(Path(run_dir), protocol_in, protocol_out)
    except (EOFError, BrokenPipeError):  # the job stopped (early stop, shutdown) or was killed mid-scoring
        return code
    return code if served in (None, 0) else served


def serve(run_dir: Path, protocol_in, protocol_out) -> int | None:
    """Load RUN_DIR's recipe and weights, wait for the start, then answer requests until told to exit (0). None: the
    stream closed before the start (no scoring)."""
    import numpy as np
    import torch

    from pretrainlab import rundir  # the lab's own modules: a patch may change only model/ and train/
    from pretrainlab.config import Recipe

    def read_exact(n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = protocol_in.read(n - len(buf))
            if not chunk:
                raise EOFError("the scorer closed the stream")
            buf += chunk
        return bytes(buf)

    recipe = Recipe.from_dict(rundir.load_json(run_dir / rundir.RECIPE))
    state = torch.load(run_dir / "model.pt", map_location="cpu", weights_only=True)  # tensors only: no code runs
    try:
        if read_exact(4) != START:
            return 2
    except EOFError:
        return None
    from pretrainlab.model import GPT  # the experiment's code, from here on

    device = torch.device("cuda" if torch.cuda.is_available() and recipe.train.device != "cpu" else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    model = GPT(recipe.model)
    model.load_state_dict(state)
    del state
    model.to(device).eval()

    with torch.no_grad():
        while True:
            rows, seq_len = np.frombuffer(read_exact(8), dtype="<i4")
            if rows == 0:
                return 0
            x = np.frombuffer(read_exact(4 * int(rows) * int(seq_len)), dtype="<i4").reshape(int(rows), int(seq_len))
            logits = model(torch.from_numpy(x.astype(np.int64)).to(device))
            protocol_out.write(np.array([rows, seq_len, logits.size(-1)], dtype="<i4").tobytes())
            for row in logits:  # one row at a time: the scorer never needs a whole batch of a large vocabulary
                protocol_out.write(row.float().cpu().numpy().astype("<f4", copy=False).tobytes())


if __name__ == "__main__":
    code = main(sys.argv[1])
    sys.stderr.flush()
    os._exit(code)  # without the interpreter's teardown (a quarter of a second with torch loaded, per worker); nothing is left to write
