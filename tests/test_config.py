from pathlib import Path

import pytest

from admmprune.runs.config import Config, ConfigError, load_config, parse_value

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


def test_defaults_are_valid():
    config = Config().validate()
    assert config.stages == 1 and config.final_percent() == 98.6


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_loads(recipe):
    config = load_config(recipe)
    assert 0 <= config.final_percent() < 100


def test_recipes_exist():
    assert any(p.name == "lenet5.yaml" for p in RECIPES)


def test_yaml_scientific_notation_becomes_float(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("rho: 1e-3\nall_percent: 99\nlearning_rate: 2e-4\n")
    config = load_config(recipe)
    assert config.rho == pytest.approx(1e-3) and isinstance(config.rho, float)
    assert config.all_percent == 99.0 and isinstance(config.all_percent, float)


def test_overrides_win_over_recipe(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("k_step: 3\n")
    assert load_config(recipe, {"k_step": 5}).k_step == 5


def test_unknown_key_suggests_the_right_one(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("all_precent: 99\n")
    with pytest.raises(ConfigError, match="did you mean 'all_percent'"):
        load_config(recipe)


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"all_percent": -1}, "all_percent"),
        ({"all_percent": 100}, "all_percent"),
        ({"all_percent": 150}, "all_percent"),
        ({"all_percent": [90, 80]}, "all_percent"),
        ({"k_step": 0}, "k_step"),
        ({"k_step": 2.5}, "k_step"),
        ({"rho": 0}, "rho"),
        ({"rho": -1e-3}, "rho"),
        ({"rho_growth": 0.5}, "rho_growth"),
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"learning_rate": 0}, "learning_rate"),
        ({"projection": "diagonal"}, "projection"),
        ({"all_percent": [90, 99], "k_step": [1, 2, 3]}, "k_step"),
    ],
)
def test_bad_values_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key):
        load_config(None, overrides)


def test_missing_and_corrupt_recipe(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("k_step: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_stage_values():
    config = load_config(None, {"all_percent": [90, 99], "k_step": [2, 4], "rho": 1e-3})
    assert config.stages == 2
    assert config.stage_value("k_step", 1) == 4 and config.stage_value("rho", 1) == 1e-3
    assert config.final_percent() == 99.0


def test_parse_value_types():
    assert parse_value("[90, 99.6]") == [90, 99.6]
    assert parse_value("true") is True
    assert parse_value("null") is None
    assert parse_value("lenet5") == "lenet5"
