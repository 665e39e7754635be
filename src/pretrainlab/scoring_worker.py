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
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

START = b"GO!\n"


def main(run_dir: str) -> int:
    protocol_out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # prints from model code land in stderr, not in the logit stream
    sys.stdout = sys.stderr
    protocol_in = os.fdopen(os.dup(0), "rb", buffering=0)

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

    recipe = Recipe.from_dict(rundir.load_json(Path(run_dir) / rundir.RECIPE))
    state = torch.load(Path(run_dir) / "model.pt", map_location="cpu", weights_only=True)  # tensors only: no code runs
    if read_exact(4) != START:
        return 2
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
