"""A lab for the dashboard's tests: campaigns whose runs are written over real seconds by an
in-process runner (research/simulate.py's landscape on the wall clock, with train rows as a
trainer writes them), a ledger with the awkward things a page must show safely, and the real
server (uvicorn) in a thread on a free port."""

from __future__ import annotations

import math
import socket
import threading
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from pretrainlab import api, rundir
from pretrainlab.ledger import Ledger
from pretrainlab.recipes import budget_tokens
from pretrainlab.research.campaign import Campaign, CampaignConfig
from pretrainlab.research.manage import make_strategy
from pretrainlab.research.simulate import Landscape, SimulatedRunner

NUM_STEPS = 40  # train rows per simulated run
XSS = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">'
FAKE_KEY = "sk-ant-api03-FAKEKEYfakekeyFAKEKEY0123456789abcdef"
PATCH = """diff --git a/src/pretrainlab/model/gpt.py b/src/pretrainlab/model/gpt.py
--- a/src/pretrainlab/model/gpt.py
+++ b/src/pretrainlab/model/gpt.py
@@ -10,3 +10,3 @@ class MLP(nn.Module):
     def forward(self, x):
-        return self.proj(F.relu(self.fc(x)).square())
+        return self.proj(F.silu(self.fc(x)) * self.gate(x))  # </pre><script>window.__xss = 3</script>
"""


class PacedRunner(SimulatedRunner):
    """The simulated runner on the wall clock: a run takes `run_s` real seconds and appends
    train rows (loss, lr, grad-norm, tokens/s) as it goes, so a page sees runs being written,
    finishing and being decided."""

    def __init__(self, landscape: Landscape, num_slots: int, run_s: float):
        super().__init__(landscape, num_slots, run_s)
        self.created = self.last_submit = time.time()
        self.steps_written: dict[str, int] = {}
        self._frozen: float | None = None  # one clock reading for a whole poll (see poll)

    @property
    def now(self) -> float:
        frozen = getattr(self, "_frozen", None)
        return frozen if frozen is not None else time.time()

    @now.setter
    def now(self, value: float) -> None:
        pass  # the wall clock moves by itself

    def sleep(self, seconds: float) -> None:
        self.write_steps()
        time.sleep(min(seconds, 0.05))

    def poll(self):
        # one clock reading for the steps written and the runs found finished: a run that ends between the two would
        # otherwise be finished without its last train rows
        self._frozen = time.time()
        try:
            self.write_steps()
            done = super().poll()
        finally:
            self._frozen = None
        for result in done:  # the trainer's layout: evals at the steps they ran, and when the run ended
            out = result.job.out_dir
            rows = list(rundir.iter_metrics(out))
            for row in rows:
                if row.get("type") == "eval":
                    row["step"] = NUM_STEPS // 2 if row["step"] == 1 else NUM_STEPS
            rundir.write_rows(out, rows)
            summary = rundir.read_summary(out) or {}
            summary.update(finished_at=datetime.fromtimestamp(result.ended_at, UTC).isoformat(),
                           wall_seconds=result.ended_at - result.started_at)
            rundir.write_summary(out, summary)
        return done

    def write_steps(self) -> None:
        for key, r in self._running.items():
            now = self.now
            upto = NUM_STEPS if r.reason or now >= r.ends_at else int(NUM_STEPS * (now - r.started_at) / self.run_s)
            done = self.steps_written.get(key, 0)
            if upto > done:
                final = self.landscape.value(r.recipe, r.seed) * math.log(2)  # nats per byte
                per_step = int(budget_tokens(r.recipe)) // NUM_STEPS
                rundir.append_rows(r.job.out_dir, [train_row(step, per_step, final, r.seed) for step in range(done + 1, upto + 1)])
                self.steps_written[key] = upto


def train_row(step: int, tokens_per_step: int, final_loss: float, seed: int) -> dict:
    wiggle = 0.02 * math.sin(step * 1.7 + seed)
    lr = 0.02 * min(1.0, step / 4) * (1.0 if step < NUM_STEPS * 0.6 else (NUM_STEPS - step) / (NUM_STEPS * 0.4))
    return {"type": "train", "step": step, "tokens": step * tokens_per_step, "loss": final_loss + 3.0 * math.exp(-step / 8) + wiggle, "lr": lr,
            "grad_norm": 1.5 * math.exp(-step / 15) + 0.3 + abs(wiggle), "max_layer_grad_norm": 0.8 * math.exp(-step / 15) + 0.2,
            "tokens_per_s": 48000 + 900 * math.sin(step), "mfu": None, "step_s": 0.04, "data_wait_frac": 0.01, "peak_mem_mb": 210.0,
            "train_seconds": step * 0.04, "domain_rows": {"code": 8, "docs": 8}, "domain_loss": {"code": final_loss + wiggle,
                                                                                                "docs": final_loss + 0.1 - wiggle}}


def campaign_config(**kw) -> CampaignConfig:
    base = dict(recipe="tiny-cpu", run_budget="8192tok", budget_runs=8, parallel=2, seeds=2, strategy="optuna")
    return CampaignConfig(**{**base, **kw})


def new_campaign(db: str, name: str, cfg: CampaignConfig) -> str:
    with Ledger(db) as lg:
        base = cfg.base_recipe()
        return lg.create_campaign(name, goal=f"lowest {cfg.goal} per run budget {cfg.run_budget}",
                                  config={"campaign": asdict(cfg), "base_recipe": base.to_dict()})


def run_campaign(db: str, campaign_id: str, workdir: Path, run_s: float) -> None:
    """The campaign loop (research/campaign.py) on the paced runner, to its end."""
    ledger = Ledger(db)
    try:
        cfg = CampaignConfig(**ledger.get_campaign(campaign_id)["config"]["campaign"])
        runner = PacedRunner(Landscape(seed=0), cfg.parallel, run_s)
        campaign = Campaign(ledger, campaign_id, make_strategy(cfg, ledger, campaign_id, echo=False), runner, workdir, echo=False)
        campaign.record_hidden_test = lambda: None  # simulated runs have no weights to score on the hidden split
        campaign.run(poll_s=0.05)
    finally:
        ledger.close()


def start_campaign_thread(db: str, campaign_id: str, workdir: Path, run_s: float) -> threading.Thread:
    thread = threading.Thread(target=run_campaign, args=(db, campaign_id, workdir, run_s), daemon=True)
    thread.start()
    return thread


def campaign_workdir(campaign_id: str) -> Path:
    """Where `research start` keeps a campaign's runs, and where the dashboard looks for live ones."""
    return api.workspace() / "runs" / "campaigns" / campaign_id


def build_lab(db: str) -> dict:
    """A finished campaign (with LLM spend on record), a person's suggestion, a code patch
    awaiting approval whose hypothesis and patch carry markup, and notes with a key-shaped
    string in them. Returns the ids the tests use."""
    cid = new_campaign(db, "finished tiny-cpu sweep", campaign_config(budget_runs=6))
    run_campaign(db, cid, campaign_workdir(cid), run_s=0.15)
    suggested = api.research_suggest(cid, "a deeper model helps", ["model.n_layer=5"], "alice", db=db)
    with Ledger(db) as lg:
        row = lg.get_campaign(cid)
        lg.set_campaign_config(cid, {**row["config"], "llm_spend": {"model": "claude-opus-5", "input_tokens": 120_000, "output_tokens": 9_000,
                                                                    "cache_write_tokens": 30_000, "cache_read_tokens": 400_000,
                                                                    "calls": 14, "dollars": 1.2345}})
        recipe = row["config"]["base_recipe"]
        patch_exp = lg.add_experiment(XSS + " gated MLP", kind="code", proposer="claude", proposer_type="strategy", model_id="claude-opus-5",
                                      rationale=f"SwiGLU-style gating helps small models. {XSS}", campaign_id=cid, parent_recipe=recipe,
                                      change={"values": {}, "patch": PATCH, "recipe": recipe, "diff": {}}, status="awaiting-approval")
        decided = [e for e in lg.list_experiments(cid) if e["status"] == "decided"]
        runs = lg.list_runs(campaign=cid, columns=("run_id", "experiment_id", "val_bpb"))
    api.note_run(runs[0]["run_id"], f"loss looks fine; my key was {FAKE_KEY} oops", author="bob", db=db)
    api.note_experiment(decided[-1]["id"], f"note with markup {XSS}", author="carol", db=db)
    return {"campaign": cid, "patch_experiment": patch_exp, "suggested": suggested, "decided": decided[-1]["id"],
            "runs": [r["run_id"] for r in runs]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """uvicorn serving an app in a thread, on a free loopback port."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            assert time.time() < deadline and self.thread.is_alive(), "the dashboard did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
