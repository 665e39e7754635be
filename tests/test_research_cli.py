"""`pretrainlab research ...` and `pretrainlab report` from the command line."""

import json
import re

from conftest import cli, set_args, tiny_overrides


def test_research_cli_round_trip(corpus_dir, tmp_path):
    env = {"PRETRAINLAB_WORKSPACE": str(tmp_path)}
    res = cli("research", "start", "--recipe", "tiny-cpu", *set_args(tiny_overrides(corpus_dir)), "--run-budget", "8192tok",
              "--budget-runs", "4", "--parallel", "2", "--seeds", "2", "--strategy", "random", "--decision", "paired", "--author", "dana",
              "--json", env_extra=env)
    assert res.returncode == 0, res.stderr[-3000:]
    status = json.loads(res.stdout)
    cid = status["campaign"]
    assert status["status"] == "done" and status["runs"] == 4
    assert (tmp_path / "runs" / "campaigns" / cid / "report.html").exists()

    listing = json.loads(cli("research", "status", "--json", env_extra=env).stdout)
    assert [c["id"] for c in listing] == [cid]

    log = cli("research", "log", cid[:6], env_extra=env)
    assert log.returncode == 0 and "# Research log" in log.stdout and "baseline" in log.stdout
    assert "seed noise of the baseline: std" in log.stdout.lower() and "over 2 seeds" in log.stdout
    record = json.loads(cli("research", "log", cid, "--json", env_extra=env).stdout)  # --json: the same log, as data
    assert record["campaign"]["id"] == cid and record["markdown"].rstrip("\n") == log.stdout.rstrip("\n")
    assert record["campaign"]["config"]["started_by"] == "dana" and f"{record['campaign']['created_at']} by dana." in log.stdout
    assert [r["seed"] for r in record["experiments"][0]["runs"]] == [0, 1]

    out = tmp_path / "report.html"
    rep = cli("report", cid, "-o", str(out), env_extra=env)
    assert rep.returncode == 0, rep.stderr
    page = out.read_text()
    assert "seed noise of the baseline" in page.lower()
    assert "<svg" in page and "Ablations" in page and "Final recipe" in page and "http" not in page.replace("http://www.w3.org", "")
    checked = re.search(r"(\d+) of 4 runs were scored by the lab.*?; (\d+) passed the causality and replay probes", page)
    assert checked and int(checked.group(1)) >= 2 and checked.group(1) == checked.group(2), page[page.find("How the scores"):][:600]

    sug = cli("research", "suggest", cid, "a deeper model helps", "--set", "model.n_layer=3", "--author", "alice", "--json", env_extra=env)
    assert sug.returncode == 0, sug.stderr
    exp = json.loads(sug.stdout)["experiment"]
    res = cli("research", "resume", cid, "--json", env_extra=env)  # budget already spent: nothing runs, the queue stays
    assert res.returncode == 0, res.stderr[-2000:]
    queued = [e for e in json.loads(res.stdout)["experiments"] if e["experiment"] == exp]
    assert queued[0]["proposer"] == "alice" and queued[0]["status"] == "queued"
    bad = cli("research", "resume", cid, "--parallel", "0", env_extra=env)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--parallel" in bad.stderr
    res = cli("research", "resume", cid, "--budget-runs", "6", "--author", "carol", "--json", env_extra=env)  # extend: the queue runs
    assert res.returncode == 0, res.stderr[-2000:]
    extended = json.loads(res.stdout)
    assert 4 < extended["runs"] <= 6 and extended["budget_runs"] == 6
    assert next(e for e in extended["experiments"] if e["experiment"] == exp)["verdict"] is not None

    baseline = status["experiments"][0]["experiment"]
    refused = cli("research", "reject", baseline, "--reason", "seed 1 looked odd", "--author", "bob", env_extra=env)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "cannot be rejected" in refused.stderr
    rejected = cli("research", "reject", exp, "--reason", "seed 1 looked odd", "--author", "bob", "--json", env_extra=env)
    assert rejected.returncode == 0, rejected.stderr
    assert {k: v for k, v in json.loads(rejected.stdout).items() if k != "warning"} == {
        "experiment": exp, "action": "reject", "author": "bob", "reason": "seed 1 looked odd", "status": "decided", "decision": "discard"}
    log = cli("research", "log", cid, env_extra=env).stdout
    assert "**discard** by bob" in log and "seed 1 looked odd" in log

    stop = cli("research", "stop", cid, "--json", env_extra=env)  # it has ended: nothing to stop, nothing changes
    assert json.loads(stop.stdout) == {"campaign": cid, "status": "done"}
    assert json.loads(cli("research", "status", cid, "--json", env_extra=env).stdout)["status"] == "done"
    written = json.loads(cli("report", cid, "-o", str(tmp_path / "again.html"), "--json", env_extra=env).stdout)
    assert written == {"campaign": cid, "report": str(tmp_path / "again.html")} and (tmp_path / "again.html").is_file()


def test_research_bad_input_is_one_line(tmp_path):
    env = {"PRETRAINLAB_WORKSPACE": str(tmp_path), "ANTHROPIC_API_KEY": ""}
    for args, fragment in ((["--goal", "accuracy"], "--goal"), (["--budget-runs", "1"], "--budget-runs"),
                           (["--run-budget", "soon"], "--run-budget"), (["--strategy", "claude"], "ANTHROPIC_API_KEY"),
                           (["--strategy", "openai", "--llm-model", "m", "--llm-base-url", "http://127.0.0.1:9/v1"], "does not answer"),
                           (["--strategy", "genetic"], "--strategy"), (["--spend-cap-usd", "-1"], "--spend-cap-usd")):
        res = cli("research", "start", "--recipe", "tiny-cpu", *args, env_extra=env)
        assert res.returncode == 2, (args, res.stderr[-1500:])
        assert res.stderr.count("\n") == 1 and fragment in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "runs").exists()
    res = cli("research", "status", "nope", env_extra=env)
    assert res.returncode == 2 and "no campaign" in res.stderr
