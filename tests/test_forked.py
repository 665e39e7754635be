"""tests/forked.py, the forked `pretrainlab train` the suite's own trainers run as: each one gets the arguments,
environment and working directory it is given, its own pid, and the exit code and output a fresh
`python -m pretrainlab` would have."""

import os
import signal
import time

import forked
from conftest import set_args, tiny_overrides


def test_a_forked_trainer_is_its_own_process_with_the_given_env_and_cwd(corpus_dir, tmp_path):
    bad = forked.run(["train", "--bogus"])
    assert bad.returncode == 2 and "--bogus" in bad.stderr and "Traceback" not in bad.stderr

    env = {**os.environ, "PRETRAINLAB_WORKSPACE": str(tmp_path / "ws")}
    ok = forked.run(["train", "--recipe", "tiny-cpu", *set_args(tiny_overrides(corpus_dir, **{"budget.tokens": 2048})),
                     "--out", "rel-run", "--json"], env=env, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "rel-run" / "summary.json").exists()  # --out relative to the cwd it was given
    assert (tmp_path / "ws" / "pretrainlab.db").exists()  # the ledger where its environment says
    assert '"status": "ok"' in ok.stdout

    proc = forked.Forked(["train", "--recipe", "tiny-cpu", *set_args(tiny_overrides(corpus_dir, **{"budget.tokens": 1024 * 10**5})),
                          "--out", str(tmp_path / "long"), "--no-ledger"])
    assert proc.pid != os.getpid() and proc.poll() is None
    deadline = time.time() + 120
    while not (tmp_path / "long" / "metrics.jsonl").exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-2000:]
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
