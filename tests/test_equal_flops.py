"""Under a token --run-budget a campaign's runs get equal FLOPs (--compare-at flops, the default): the base recipe trains
the budget's tokens, a wider model fewer, so a change cannot win on extra compute, and each run costs the same share of
--budget-runs. --compare-at tokens keeps equal tokens."""

import json

import pytest
from conftest import tiny_overrides

from pretrainlab import api
from pretrainlab.config import apply_overrides
from pretrainlab.errors import UserError
from pretrainlab.recipes import budget_tokens, estimate_flops_per_token
from pretrainlab.research import state
from pretrainlab.research.config import CampaignConfig, at_rung

WIDER = ["model.n_embd=96", "model.n_head=3"]


def test_the_trainer_spends_the_same_flops_on_a_wider_model(corpus_dir, tmp_path):
    cfg = CampaignConfig(recipe="tiny-cpu", overrides=tiny_overrides(corpus_dir), run_budget="8192tok", early_stop=False)
    base = cfg.base_recipe()
    assert base.budget.tokens == 0 and base.budget.flops == 8192 * estimate_flops_per_token(base) and cfg.equal_flops()
    runs = {}
    for name, change in (("base", []), ("lr", ["optim.lr=0.004"]), ("wider", WIDER)):
        recipe = apply_overrides(base, change)
        _, runs[name] = api.train_run(str(_write(tmp_path / f"{name}.json", recipe)), [], tmp_path / name, echo=False, ledger=False)
    assert runs["base"]["tokens"] == runs["lr"]["tokens"] == 8192  # a change that costs no compute trains as before
    wider = runs["wider"]
    assert wider["flops_per_token"] == estimate_flops_per_token(apply_overrides(base, WIDER)) > runs["base"]["flops_per_token"]
    assert wider["tokens"] < 8192 and abs(wider["tokens"] * wider["flops_per_token"] - base.budget.flops) <= 1024 * wider["flops_per_token"]
    # equal tokens, where asked for
    tokens = CampaignConfig(recipe="tiny-cpu", overrides=tiny_overrides(corpus_dir), run_budget="8192tok", compare_at="tokens")
    assert tokens.base_recipe().budget.tokens == 8192 and not tokens.base_recipe().budget.flops and not tokens.equal_flops()
    seconds = CampaignConfig(recipe="tiny-cpu", run_budget="60s")  # a time budget is a time budget
    assert seconds.base_recipe().budget.seconds == 60 and not seconds.equal_flops()
    with pytest.raises(UserError, match="--compare-at"):
        CampaignConfig(compare_at="params")


def _write(path, recipe):
    path.write_text(json.dumps(recipe.to_dict()))
    return path


def test_a_wider_runs_cost_is_counted_with_the_labs_flops_not_its_summarys(tmp_path):
    base = CampaignConfig(run_budget="8e4tok").base_recipe()
    wider = apply_overrides(base, ["model.n_embd=256", "model.n_head=4"])
    ratio = estimate_flops_per_token(wider) / estimate_flops_per_token(base)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "summary.json").write_text(json.dumps({"status": "preempted", "tokens": 0.6 * budget_tokens(wider), "flops_per_token": 1}))
    row = {"status": "preempted", "run_dir": str(run_dir)}  # stopped after 60% of its FLOPs
    assert state.run_cost(row, base, True, estimate_flops_per_token(wider)) == pytest.approx(0.6)
    # counted at the base's FLOPs per token, its tokens would cost 0.6 / ratio, below the half-budget rung's floor (its
    # summary's own figure is never read)
    assert ratio > 3 and state.run_cost(row, base, True) == pytest.approx(0.5)


def test_a_transfer_rung_splits_its_larger_compute_equally():
    cfg = CampaignConfig(run_budget="8e4tok", decision="paired", transfer=["model.n_layer=6", "model.n_embd=256", "model.n_head=4"])
    base = cfg.base_recipe()
    inc = apply_overrides(base, ["optim.lr=0.004"])
    candidate = apply_overrides(base, ["model.mlp_ratio=6"])
    inc_rung, cand_rung = (at_rung(r, cfg.transfer, inc, base, True) for r in (inc, candidate))
    assert budget_tokens(inc_rung) == pytest.approx(80_000)  # the incumbent trains the campaign's tokens at the larger rung
    assert cand_rung.budget.flops == inc_rung.budget.flops > base.budget.flops  # a larger rung, the same FLOPs for both
    assert budget_tokens(cand_rung) < 80_000
    explicit = at_rung(inc, [*cfg.transfer, "budget.flops=1e13"], inc, base, True)  # a rung's own budget is kept
    assert explicit.budget.flops == 1e13
    assert at_rung(inc, cfg.transfer, inc, base, False).budget.flops == base.budget.flops  # (equal tokens: as given)


def test_the_flops_are_counted_with_the_corpus_vocabulary_not_the_tokenizers_name(tmp_path):
    """A prepared BPE corpus given by path keeps data.tokenizer's default 'byte': the trainer takes the vocabulary from
    the corpus, and so must the FLOP budget, or the base trains fewer tokens than the run budget says."""
    corpus = tmp_path / "bpe"
    corpus.mkdir()
    (corpus / "manifest.json").write_text(json.dumps({"tokenizer": {"name": "bpe4096", "vocab_size": 4096, "eot_id": 0}}))
    cfg = CampaignConfig(recipe="tiny-cpu", overrides=[f"data.corpus={corpus}"], run_budget="8e4tok")
    base = cfg.base_recipe()
    assert base.data.tokenizer == "byte" and base.model.vocab_size == 4096
    assert budget_tokens(base) == 80_000 and base.budget.flops == 80_000 * estimate_flops_per_token(base)
    assert estimate_flops_per_token(base) > estimate_flops_per_token(apply_overrides(base, ["model.vocab_size=256"]))
    # not prepared yet: the tokenizer's name says it, and nothing is pinned
    missing = CampaignConfig(recipe="tiny-cpu", overrides=[f"data.corpus={tmp_path / 'none'}"], run_budget="8e4tok").base_recipe()
    assert missing.model.vocab_size is None and budget_tokens(missing) == 80_000
