"""Every recipe under configs/ parses, names real options and builds its model."""

from __future__ import annotations

from pathlib import Path

import pytest

from merc.config import load_recipe, recipe_files
from merc.models import build_model, list_models
from merc.training.trainer import TrainConfig

# configs/tune/ holds search presets (merc tune), not a model's recipes: tests/training/test_tuning.py.
RECIPES = recipe_files()


def test_recipes_exist_for_every_model() -> None:
    have = {p.parent.name for p in RECIPES}
    assert set(list_models()) <= have, f"models without a recipe: {set(list_models()) - have}"


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_recipe_builds(path: Path) -> None:
    recipe = load_recipe(path.parent.name, path.stem)  # a dataset recipe over its model's default.yaml
    TrainConfig.from_dict(recipe.get("training", {}))
    dims = {"t": 384, "a": 100, "v": 256}
    model = build_model(
        path.parent.name, in_dims=dims, num_classes=6, num_speakers=2, num_parties=2, **recipe.get("model", {})
    )
    assert sum(p.numel() for p in model.parameters()) > 0


def test_override_parsing() -> None:
    from merc.config import apply_overrides, parse_override
    from merc.errors import ConfigError

    assert parse_override("training.lr=3e-4") == (["training", "lr"], 3e-4)
    assert apply_overrides({"model": {"a": 1}}, ["model.b=true"])["model"] == {"a": 1, "b": True}
    with pytest.raises(ConfigError, match="start with a section"):
        parse_override("lr=1")


@pytest.mark.parametrize(
    ("model", "override", "fragment"),
    [
        ("bclstm", "model.fusion=hierarchcal", "model.fusion"),
        ("bclstm", "model.bidirectional=ture", "model.bidirectional"),
        ("bclstm", "model.hidden_size=2.5", "model.hidden_size"),
        ("bclstm", "model.dropout=nan", "model.dropout"),
        ("bclstm", "model.hidden_sizes=3", "model.hidden_sizes"),
        ("corect", "model.window_owner=both", "model.window_owner"),
        ("corect", "model.encoders.t=cnn", "model.encoders.t"),
        ("corect", "model.use_pcm=maybe", "model.use_pcm"),
        ("multidag", "model.attention=cosine", "model.attention"),
        ("micga", "model.reconstruction_loss=l1", "model.reconstruction_loss"),
        ("gcnet", "model.time_attention=sometimes", "model.time_attention"),
    ],
)
def test_bad_model_options_fail_when_the_recipe_is_read(model: str, override: str, fragment: str) -> None:
    from merc.errors import ConfigError
    from merc.training.runner import resolve_recipe

    # resolve_recipe loads no data: the error comes from reading the recipe.
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        resolve_recipe(model, "synthetic", [override])


def test_model_options_are_converted_to_their_declared_types() -> None:
    from merc.training.runner import resolve_recipe

    recipe = resolve_recipe("corect", "iemocap6", ["model.use_pcm=no", "model.past_window=3.0", "model.encoders.t=FC"])
    assert recipe["model"]["use_pcm"] is False and recipe["model"]["past_window"] == 3
    assert recipe["model"]["encoders"] == {"t": "fc", "a": "fc", "v": "fc"}
