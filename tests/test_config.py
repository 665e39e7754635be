"""Config validation and --set parsing."""

import pytest

from pretrainlab.config import ModelConfig, Recipe, apply_overrides
from pretrainlab.recipes import get_recipe


def test_override_types():
    r = apply_overrides(get_recipe("tiny-cpu"), ["model.n_layer=6", "optim.lr=1e-3", "model.qk_norm=false",
                                                  "model.n_kv_head=2", "data.weights=code:1,docs:0.5", "seed=7"])
    assert r.model.n_layer == 6 and r.optim.lr == 1e-3 and r.model.qk_norm is False
    assert r.model.n_kv_head == 2 and r.data.weights == {"code": 1.0, "docs": 0.5} and r.seed == 7


def test_setting_one_budget_replaces_the_recipe_budget():
    r = apply_overrides(get_recipe("tiny-cpu"), ["budget.tokens=100000"])
    assert r.budget.tokens == 100000 and r.budget.seconds == 0
    r = apply_overrides(get_recipe("tiny-cpu"), ["budget.tokens=1e5", "budget.seconds=5"])
    assert (r.budget.tokens, r.budget.seconds) == (100000, 5.0)


@pytest.mark.parametrize("assignment, fragment", [
    ("model.n_layr=3", "did you mean 'model.n_layer'"),
    ("modle.n_layer=3", "unknown config key"),
    ("model.n_layer=abc", "model.n_layer expects an integer"),
    ("model.qk_norm=maybe", "expects true/false"),
    ("model.n_head=5", "not divisible by model.n_head=5"),
    ("model.n_kv_head=3", "must divide model.n_head"),
    ("optim.name=sgd", "optim.name must be"),
    ("budget.seconds=-1", "budget"),
    ("model=3", "is a section"),
    ("model.n_layer", "expected key=value"),
])
def test_bad_overrides_name_the_field(assignment, fragment):
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(".", r"\.")):
        apply_overrides(get_recipe("tiny-cpu"), [assignment])


def test_round_trip_through_dict():
    r = get_recipe("autoresearch-50m")
    assert Recipe.from_dict(r.to_dict()) == r
    assert Recipe.from_dict(r.to_dict()).hash() == r.hash()


def test_every_field_has_a_frozen_hash_base():
    """Recipe.hash() leaves out the values in config._HASH_BASE. A new field needs its entry there: the
    value that keeps the old behaviour, so that every earlier recipe keeps its hash."""
    from pretrainlab.config import _HASH_BASE, _recipe_keys

    keys = {k: v for k, v in _recipe_keys().items() if k != "name"}
    assert {k: sorted(v) if v else None for k, v in keys.items()} == \
        {k: sorted(v) if isinstance(v, dict) else None for k, v in _HASH_BASE.items()}, \
        "add the new field to config._HASH_BASE with the value that keeps the old behaviour"


def test_a_field_added_later_leaves_earlier_hashes_alone():
    from pretrainlab.config import recipe_hash

    r = get_recipe("tiny-cpu")
    old = r.to_dict()
    del old["model"]["residual_dtype"]  # a recipe.json from before the field existed
    assert recipe_hash(old) == r.hash()
    assert recipe_hash({**old, "model": {**old["model"], "residual_dtype": "bfloat16"}}) != r.hash()
    assert recipe_hash({"model": {"n_layer": "four"}}) is None  # unreadable: no hash of this version's kind


def test_from_dict_rejects_wrong_types_and_unknown_keys():
    d = get_recipe("tiny-cpu").to_dict()
    d["model"]["n_layer"] = "4"
    with pytest.raises(ValueError, match="model.n_layer must be int"):
        Recipe.from_dict(d)
    d = get_recipe("tiny-cpu").to_dict()
    d["train"]["bogus"] = 1
    with pytest.raises(ValueError, match="train.bogus"):
        Recipe.from_dict(d)


def test_head_dim_must_be_even():
    with pytest.raises(ValueError, match="even for RoPE"):
        ModelConfig(n_embd=12, n_head=4)
