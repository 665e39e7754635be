"""Offline strategies and the search space."""

import math

import pytest

from pretrainlab.recipes import get_recipe
from pretrainlab.research.space import apply, default_space, recipe_diff
from pretrainlab.research.strategies import CampaignView, ManualStrategy, OptunaStrategy, Proposal, RandomStrategy, validate


def view():
    base = get_recipe("tiny-cpu")
    return CampaignView(base=base, incumbent=base, space=default_space(base), incumbent_value=None, history=[])


@pytest.mark.parametrize("cls", [RandomStrategy, OptunaStrategy])
def test_proposals_are_valid_recipes_inside_the_space(cls):
    v = view()
    strategy = cls(seed=0)
    for p in strategy.propose(v, 8):
        assert p.kind == "config" and p.proposer == strategy.name
        recipe = validate(v, p)
        assert recipe.model.n_embd % recipe.model.n_head == 0
        for param in v.space:
            value = p.values[param.key]
            if param.kind == "categorical":
                assert value in param.choices
            else:
                assert param.low <= value <= param.high
        strategy.observe(p, 3.0)


def test_optuna_learns_a_simple_objective():
    """TPE should concentrate near the optimum of a smooth function of the LR."""
    v = view()
    v.space = [p for p in v.space if p.key == "optim.lr"]
    target = math.log(0.02)
    strategy = OptunaStrategy(seed=0)
    values = []
    for _ in range(30):
        (p,) = strategy.propose(v, 1)
        loss = (math.log(p.values["optim.lr"]) - target) ** 2
        strategy.observe(p, loss)
        values.append(loss)
    assert min(values[-10:]) < 0.05
    assert sum(values[-10:]) < sum(values[:10])


def test_failed_experiments_are_told_as_failures():
    v = view()
    s = OptunaStrategy(seed=0)
    (p,) = s.propose(v, 1)
    s.observe(p, None)
    assert s.study.trials[0].state.name == "FAIL"


def test_manual_queue():
    s = ManualStrategy()
    s.queue.append(Proposal("config", "deeper", "I think depth helps", "alice", values={"model.n_layer": 6}))
    assert [p.proposer for p in s.propose(view(), 4)] == ["alice"]
    assert s.propose(view(), 4) == []


def test_space_apply_keeps_shapes_consistent_and_diff_names_changes():
    base = get_recipe("tiny-cpu")
    r = apply(base, {"model.n_embd": 192, "train.batch_tokens": 4096})
    assert r.model.n_head == 192 // (base.model.n_embd // base.model.n_head)
    diff = recipe_diff(base, r)
    assert diff["model.n_embd"] == (128, 192) and "model.n_layer" not in diff
    with pytest.raises(ValueError, match="n_layer"):
        apply(base, {"model.n_layer": 0})
