"""Mixture campaigns: the sampling, fitting and choosing math in milliseconds, the campaign's
spine in process against a simulated per-domain landscape, and one end-to-end run of the CLI
on tiny real runs."""

import json
import math

import numpy as np
import pytest
from conftest import cli, set_args, tiny_overrides

from pretrainlab.errors import UserError
from pretrainlab.research import manage, mixture
from pretrainlab.research.mixture_campaign import MixtureCampaign, MixtureConfig, plan
from pretrainlab.research.report import research_log, campaign_record, write_report
from pretrainlab.research.simulate import MixtureLandscape, SimulatedRunner, simulate_mixture

NATURAL = np.array([0.48, 0.063, 0.457])  # the builtin corpus's train tokens: code, docs, literature


def quick(**kw) -> MixtureConfig:
    """A small design: enough proxies for 3 domains, a small search pool."""
    base = dict(proxies=12, confirm_seeds=3, pool_size=2000, top=20, num_resamples=40)
    return MixtureConfig(**{**base, **kw})


# ---- the math ----------------------------------------------------------------------------------


def test_proxies_start_with_the_natural_and_uniform_mixtures_and_cover_the_simplex_between():
    X = mixture.sample_mixtures(NATURAL, 200, np.random.default_rng(0))
    assert np.allclose(X[0], NATURAL, atol=1e-4) and np.allclose(X[1], 1 / 3, atol=1e-4)
    assert (X >= 0).all() and np.allclose(X.sum(1), 1, atol=1e-3)  # rounded to 4 decimals as the recipe holds them
    # tempered toward uniform: docs (6% of the corpus) gets a share like the uniform mixture's in a good part of the draws
    assert 0.1 < np.mean(X[2:, 1] > 0.2) < 0.6
    assert np.array_equal(X, mixture.sample_mixtures(NATURAL, 200, np.random.default_rng(0)))  # reproducible by seed


@pytest.mark.parametrize("spec", mixture.CANDIDATES, ids=lambda s: s.label)
def test_leave_one_out_shortcut_equals_refitting_without_each_proxy(spec):
    rng = np.random.default_rng(1)
    X = mixture.sample_mixtures(NATURAL, 14, rng)
    y = 3 + X @ np.array([0.2, -0.3, 0.1]) + 0.5 * X[:, 0] * X[:, 1] + rng.normal(0, 0.01, len(X))
    fixed = mixture.standardiser(spec.features(X))  # the shortcut's design: the full sample's scaling
    refits = [mixture.fit_ridge(spec, np.delete(X, i, 0), np.delete(y, i), standardise=fixed).predict(X[i : i + 1])[0] for i in range(len(y))]
    assert np.allclose(mixture.loo_predictions(spec, X, y), refits, atol=1e-8)


def test_the_model_is_chosen_by_held_out_error():
    rng = np.random.default_rng(2)
    X = mixture.sample_mixtures(NATURAL, 24, rng)
    linear = 3 + X @ np.array([0.3, -0.2, 0.1]) + rng.normal(0, 0.003, len(X))
    assert mixture.rank_candidates(X, linear)[0].spec.kind == "linear"
    curved = 3 + 4 * ((X - np.array([0.3, 0.4, 0.3])) ** 2).sum(1) + rng.normal(0, 0.003, len(X))
    ranked = mixture.rank_candidates(X, curved)
    assert ranked[0].spec.kind == "quadratic"
    assert [c.loo_rmse for c in ranked] == sorted(c.loo_rmse for c in ranked)
    assert ranked[0].loo_spearman > 0.9


def test_the_search_finds_a_known_optimum_and_the_bootstrap_says_how_sure():
    best = np.array([0.3, 0.4, 0.3])
    rng = np.random.default_rng(3)
    X = mixture.sample_mixtures(NATURAL, 24, rng)
    bowl = lambda X: 3 + 4 * ((mixture.normalise_rows(X) - best) ** 2).sum(1)
    exact = mixture.design(X, bowl(X), NATURAL, np.random.default_rng(4), pool_size=4000, top=20, num_resamples=50)
    assert np.abs(exact.recommended - best).max() < 0.05
    assert exact.predicted["recommended"] < exact.predicted["uniform"] < exact.predicted["natural"]
    assert exact.p_better == {"natural": 1.0, "uniform": 1.0}
    assert (exact.weights_low <= exact.recommended + 1e-3).all() and (exact.recommended <= exact.weights_high + 1e-3).all()  # (rounded)
    noisy = mixture.design(X, bowl(X) + rng.normal(0, 0.05, len(X)), NATURAL, np.random.default_rng(4), pool_size=4000, top=20,
                           num_resamples=50)
    assert (noisy.weights_high - noisy.weights_low).sum() > (exact.weights_high - exact.weights_low).sum()
    record = noisy.to_dict(["code", "docs", "literature"])
    assert json.loads(json.dumps(record)) == record  # plain JSON for the ledger
    assert record["model"] == noisy.chosen.spec.label and set(record["recommended"]) == {"code", "docs", "literature"}


def test_the_target_comes_from_the_labs_score():
    score = {"status": "ok", "splits": {"val": {"val_bpb": 3.1, "domains": {"code": 2.5, "docs": 3.0, "literature": 3.8}}}}
    assert mixture.target_value(score, []) == 3.1
    assert mixture.target_value(score, ["code", "docs"]) == pytest.approx(2.75)
    assert mixture.target_value(score, ["prose"]) is None
    assert mixture.target_value({**score, "status": "rejected"}, []) is None
    assert mixture.target_value({"status": "ok", "splits": {"val": {"val_bpb": math.nan}}}, []) is None


def test_bad_settings_are_one_line_errors_before_anything_runs():
    with pytest.raises(UserError, match="--confirm-seeds"):
        MixtureConfig(confirm_seeds=1)
    with pytest.raises(UserError, match="--run-budget"):
        MixtureConfig(run_budget="soon")
    with pytest.raises(UserError, match="--transfer"):
        MixtureConfig(transfer=["model.n_layers=8"])
    counts = {"code": 480, "docs": 63, "literature": 457}
    with pytest.raises(UserError, match="--target.*prose.*code, docs, literature"):
        plan(MixtureConfig(target=["prose"]), counts)
    with pytest.raises(UserError, match="--proxies 5 .* at least 6"):
        plan(MixtureConfig(proxies=5), counts)
    with pytest.raises(UserError, match="one domain"):
        plan(MixtureConfig(), {"code": 10})
    info = plan(MixtureConfig(proxies=10, confirm_seeds=2, transfer=["model.n_layer=6"]), counts)
    assert info["planned_runs"] == 10 + 3 * 2 * 2 and info["domains"] == ["code", "docs", "literature"]
    with pytest.warns(UserWarning, match="data.weights"):
        assert MixtureConfig(overrides=["data.weights=code:1,docs:1"]).base_recipe().data.weights is None


# ---- the campaign, in process ------------------------------------------------------------------


def test_simulated_campaign_fits_recommends_and_confirms_with_attribution(tmp_path):
    land = MixtureLandscape()
    result = simulate_mixture(quick(), land, tmp_path)
    s, ledger, cid = result["summary"], result["ledger"], result["campaign_id"]
    assert s["status"] == "done" and s["runs"] == s["planned_runs"] == 12 + 3 * 3
    exps = ledger.list_experiments(cid)
    proxies = [e for e in exps if e["change"]["role"] == "proxy"]
    assert len(proxies) == 12 and all(e["proposer"] == "mixture design" and e["kind"] == "data" for e in proxies)
    runs = ledger.list_runs(campaign=cid, limit=0, columns=("run_id", "experiment_id", "seed", "status"))
    assert len({(r["experiment_id"], r["seed"]) for r in runs}) == len(runs)  # nothing ran twice
    assert all(r["seed"] == 0 for r in runs if r["experiment_id"] in {e["id"] for e in proxies})
    assert all(r["seed"] in (1, 2, 3) for r in runs if r["experiment_id"] not in {e["id"] for e in proxies})  # fresh seeds
    refs = [e for e in exps if e["change"]["role"] in ("natural", "uniform")]
    assert [e["proposer"] for e in refs] == ["campaign", "campaign"]
    rec = next(e for e in exps if e["change"]["role"] == "recommended")
    assert rec["proposer"] == "mixture design" and "leave-one-out" in rec["rationale"] and rec["status"] == "decided"
    assert rec["change"]["design"]["model"] == s["design"]["model"]
    # the recommendation is really better under the landscape, and the claims say so
    assert result["true"]["recommended"] < result["true"]["natural"] - 0.01
    claims = {c["against"]: c for c in s["claims"]}
    assert set(claims) == {"natural", "uniform"} and claims["natural"]["verdict"] == "keep" and claims["natural"]["effect"] < 0
    assert set(claims["natural"]["domains"]) == {"code", "docs", "literature"} and claims["natural"]["predicted_effect"] < 0
    decisions = [d for d in ledger.list_decisions(campaign_id=cid) if (d["evidence"] or {}).get("stage") == "claim"]
    assert len(decisions) == 2 and all(d["decided_by"].startswith("pretrainlab stats (pooled paired") for d in decisions)
    # every proxy has a measured value and a held-out prediction; the reads
    assert all(p["value"] is not None and p["loo_prediction"] is not None for p in s["proxies"])
    status = manage.status(cid, db=str(tmp_path / "ledger.db"))
    assert status["budget_runs"] == 21 and status["mixture"]["recommended"]["weights"] == rec["change"]["weights"]
    assert "mixture design" in research_log(campaign_record(ledger, cid))
    page = write_report(ledger, cid, tmp_path / "mixture.html").read_text()
    assert page.count("<svg") == 2 and "predicted vs measured val_bpb" in page and "domain shares" in page
    assert "quadratic" in page and "Claims" in page


def test_a_domain_target_and_the_transfer_rung(tmp_path):
    cfg = quick(target=["docs"], transfer=["model.n_layer=6"], confirm_seeds=2)
    result = simulate_mixture(cfg, MixtureLandscape(), tmp_path)
    s = result["summary"]
    assert s["target"] == "mean val_bpb of docs" and s["runs"] == 12 + 3 * 2 * 2
    assert {(c["against"], c["scale"]) for c in s["claims"]} == {(a, b) for a in ("natural", "uniform") for b in ("campaign", "transfer")}
    transfer = [e for e in result["ledger"].list_experiments(result["campaign_id"]) if e["change"]["scale"] == "transfer"]
    assert len(transfer) == 3 and all(e["change"]["recipe"]["model"]["n_layer"] == 6 for e in transfer)
    # docs is 6% of the natural mixture: a docs target wants far more of it
    assert s["recommended"]["weights"]["docs"] > 0.3 and result["true"]["recommended"] < result["true"]["natural"]


class StoppingRunner(SimulatedRunner):
    """Asks the campaign to stop after `after` runs have started (a person's `research stop`)."""

    def __init__(self, ledger, cid, after, *a, **kw):
        super().__init__(*a, **kw)
        self.ledger, self.cid, self.after = ledger, cid, after

    def submit(self, job):
        super().submit(job)
        if len(self.submitted) == self.after:
            self.ledger.set_campaign_status(self.cid, "stopping")


def test_stop_and_resume_lose_nothing_and_repeat_nothing(tmp_path):
    from dataclasses import asdict

    from pretrainlab.ledger import Ledger
    from pretrainlab.research.mixture_campaign import KIND

    cfg, land = quick(), MixtureLandscape()
    ledger = Ledger(str(tmp_path / "ledger.db"))
    info = plan(cfg, {d: round(w * 1e6) for d, w in land.natural.items()})
    cid = ledger.create_campaign("m", config={"kind": KIND, "mixture": asdict(cfg), "base_recipe": cfg.base_recipe().to_dict(), **info})
    first = StoppingRunner(ledger, cid, 9, land, num_slots=2)
    MixtureCampaign(ledger, cid, first, tmp_path / "runs", echo=False).run(poll_s=1.0)
    assert ledger.get_campaign(cid)["status"] == "stopped"
    columns = ("run_id", "experiment_id", "seed")
    done_before = {(r["experiment_id"], r["seed"]) for r in ledger.list_runs(campaign=cid, limit=0, columns=columns)}
    assert 0 < len(done_before) < 9
    ledger.set_campaign_status(cid, "running")
    second = SimulatedRunner(land, num_slots=2)
    MixtureCampaign(ledger, cid, second, tmp_path / "runs", echo=False).run(poll_s=1.0)
    runs = ledger.list_runs(campaign=cid, limit=0, columns=("run_id", "experiment_id", "seed"))
    assert len(runs) == info["planned_runs"] and ledger.get_campaign(cid)["status"] == "done"
    assert not {f"{e}-s{s}" for e, s in done_before} & set(second.submitted)  # finished runs were not trained again
    third = SimulatedRunner(land, num_slots=2)  # a resume of a finished campaign: nothing to do, nothing decided twice
    MixtureCampaign(ledger, cid, third, tmp_path / "runs", echo=False).run(poll_s=1.0)
    assert third.submitted == []
    assert len([d for d in ledger.list_decisions(campaign_id=cid) if (d["evidence"] or {}).get("stage") == "claim"]) == 2


class CrashingRunner(SimulatedRunner):
    """Runs whose key is listed crash: no summary, no score."""

    def __init__(self, crash, *a, **kw):
        super().__init__(*a, **kw)
        self.crash = crash

    def poll(self):
        out = []
        for result in super().poll():
            if result.job.key in self.crash:
                (result.job.out_dir / "summary.json").unlink()
                result.job.score_path.unlink()
                result = type(result)(result.job, "crashed", 1, None, "Traceback: boom", result.slot, result.started_at, result.ended_at)
            out.append(result)
        return out


def test_crashed_proxies_leave_the_fit_to_the_others_and_too_many_end_it(tmp_path):
    from dataclasses import asdict

    from pretrainlab.ledger import Ledger
    from pretrainlab.research.mixture_campaign import KIND

    land = MixtureLandscape()
    for n_crash, status in ((2, "done"), (8, "failed")):
        cfg = quick()
        ledger = Ledger(str(tmp_path / f"ledger{n_crash}.db"))
        info = plan(cfg, {d: round(w * 1e6) for d, w in land.natural.items()})
        cid = ledger.create_campaign("m", config={"kind": KIND, "mixture": asdict(cfg), "base_recipe": cfg.base_recipe().to_dict(), **info})
        proxies_planned = MixtureCampaign(ledger, cid)
        proxies_planned.plan()
        crash = {f"{e['id']}-s0" for e in proxies_planned.experiments("proxy")[2 : 2 + n_crash]}
        MixtureCampaign(ledger, cid, CrashingRunner(crash, land, num_slots=2), tmp_path / f"runs{n_crash}", echo=False).run(poll_s=1.0)
        assert ledger.get_campaign(cid)["status"] == status
        notes = [n["text"] for n in ledger.list_notes(campaign_id=cid)] + [n["text"] for e in ledger.list_experiments(cid)
                                                                          for n in ledger.list_notes(experiment_id=e["id"])]
        assert sum("ended crashed" in t for t in notes) == n_crash
        if status == "done":
            design = MixtureCampaign(ledger, cid).arm("recommended")["change"]["design"]
            assert len(design["proxies"]) == 12 - n_crash
        else:
            assert any("no recommendation: 4 of 12 proxies" in t for t in notes)


# ---- end to end: tiny real runs ------------------------------------------------------------------


def test_mixture_campaign_on_real_runs(corpus_dir, ledger_workspace):
    """6 proxies and 3 arms x 2 seeds of a ~50k-parameter model: trained in the sandbox,
    scored by the lab, fitted, confirmed; then the CLI's reads of it."""
    from pretrainlab import api

    args = ["research", "mixture", "--recipe", "tiny-cpu", *set_args(tiny_overrides(corpus_dir)), "--proxies", "6",
            "--run-budget", "4096tok", "--confirm-seeds", "2", "--target", "code,prose"]
    bad = cli(*args)
    assert bad.returncode == 2 and "prose is not a domain" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert not (ledger_workspace / "runs").exists()
    cid = api.research_mixture("tiny-cpu", tiny_overrides(corpus_dir), echo=False, proxies=6, run_budget="4096tok", confirm_seeds=2,
                               target=["code", "docs"], pool_size=2000, num_resamples=50)
    s = api.research_status(cid)["mixture"]
    assert s["status"] == "done" and s["runs"] == s["planned_runs"] == 12 and s["target"] == "mean val_bpb of code, docs"
    assert all(p["value"] is not None for p in s["proxies"]) and s["recommended"] and s["design"]["candidates"]
    assert {c["against"] for c in s["claims"]} == {"natural", "uniform"} and all(c["effect"] is not None for c in s["claims"])
    assert all(set(c["domains"]) == set(s["domains"]) for c in s["claims"])
    st = cli("research", "status", cid, "--json")
    assert st.returncode == 0, st.stderr
    assert json.loads(st.stdout)["mixture"]["recommended"] == s["recommended"]
    rep = cli("report", cid, "-o", str(ledger_workspace / "m.html"))
    assert rep.returncode == 0 and "predicted vs measured" in (ledger_workspace / "m.html").read_text()
    resumed = cli("research", "resume", cid, "--budget-runs", "40")
    assert resumed.returncode == 2 and "mixture campaign" in resumed.stderr
