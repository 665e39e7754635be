"""Offline strategies and the search space."""

import math

import pytest

from pretrainlab.recipes import get_recipe
from pretrainlab.research.space import Param, apply, default_space, recipe_diff
from pretrainlab.research.strategies import CampaignView, ManualStrategy, OptunaStrategy, Proposal, RandomStrategy, current_values, same_value, validate


def view():
    base = get_recipe("tiny-cpu")
    return CampaignView(base=base, incumbent=base, space=default_space(base), incumbent_value=None, history=[])


@pytest.mark.parametrize("cls", [RandomStrategy, OptunaStrategy])
def test_proposals_are_small_valid_changes_inside_the_space(cls):
    v = view()
    now = current_values(v.incumbent, v.space)
    strategy = cls(seed=0)
    sizes = set()
    for p in strategy.propose(v, 12):
        assert p.kind == "config" and p.proposer == strategy.name
        recipe = validate(v, p)
        assert recipe.model.n_embd % recipe.model.n_head == 0
        assert 1 <= len(p.values) <= v.max_changes and all(p.values[k] != now[k] for k in p.values)
        if cls is OptunaStrategy:  # no run spent on a change too small to matter
            space = {q.key: q for q in v.space}
            assert not any(same_value(space[k], p.values[k], now[k]) for k in p.values)
        assert set(recipe_diff(v.incumbent, recipe)) >= set(p.values)  # n_head may follow n_embd
        sizes.add(len(p.values))
        for param in v.space:
            if param.key not in p.values:
                continue
            value = p.values[param.key]
            if param.kind == "categorical":
                assert value in param.choices
            else:
                assert param.low <= value <= param.high
        strategy.observe(p, 3.0)
    assert sizes == {1, 2}


@pytest.mark.parametrize("cls", [RandomStrategy, OptunaStrategy])
def test_max_changes_zero_samples_the_whole_space(cls):
    v = view()
    v.max_changes = 0
    (p,) = cls(seed=1).propose(v, 1)
    assert len(p.values) >= len(v.space) - 1  # a sample may land on the incumbent's value of one key


def test_optuna_keeps_unchanged_keys_at_the_incumbent_and_learns_from_history():
    v = view()
    base = v.base
    better = apply(base, {"optim.lr": base.optim.lr * 2})
    v.history = [{"kind": "config", "recipe": base.to_dict(), "value": 3.0, "values": {}},
                 {"kind": "config", "recipe": better.to_dict(), "value": 2.9, "values": {"optim.lr": better.optim.lr}},
                 {"kind": "code", "recipe": None, "value": 2.8}]
    v.incumbent, v.incumbent_value = better, 2.9
    s = OptunaStrategy(seed=0)
    proposals = s.propose(v, 4)
    warm = [t for t in s.study.trials if t.state.name == "COMPLETE"]
    assert sorted(t.value for t in warm) == [2.9, 3.0] and warm[0].params["optim.lr"] == base.optim.lr
    now = current_values(better, v.space)
    for p in proposals:
        trial = s.study.trials[p.handle]
        assert all(trial.params[k] == now[k] for k in now if k not in p.values)  # TPE saw the full recipe


def test_optuna_learns_a_simple_objective():
    """TPE should concentrate near the optimum of a smooth function of the LR."""
    v = view()
    v.space = [p for p in v.space if p.key == "optim.lr"]
    target = math.log(0.05)  # well away from the incumbent's 0.015: proposals near the incumbent are skipped
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


def test_same_value_tolerance():
    lr = Param("optim.lr", "float", 1e-3, 1e-1, log=True)
    assert same_value(lr, 0.01, 0.0105) and not same_value(lr, 0.01, 0.02)
    wd = Param("optim.weight_decay", "float", 0.0, 0.1)
    assert same_value(wd, 0.0399, 0.0390) and not same_value(wd, 0.0, 0.04)
    assert not same_value(Param("model.n_layer", "int", 2, 8), 4, 5)
