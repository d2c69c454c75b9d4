"""Recipes: inheritance from default.yaml, section checks, and training-option validation."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from merc.config import apply_overrides, deep_merge, load_recipe, load_yaml, recipe_files
from merc.errors import ConfigError
from merc.evaluation.metrics import classification_metrics
from merc.training import runner
from merc.training.runner import resolve_recipe
from merc.training.trainer import SELECTION_METRICS, TrainConfig

#: The checkout's recipes (not $MERC_CONFIG_DIR: these tests are about the files shipped).
REAL_CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DATASET_RECIPES = [p for p in recipe_files(REAL_CONFIGS) if p.name != "default.yaml"]

DEFAULT_YAML = """\
model:
  hidden_size: 100
  dropout: 0.5
  windows: {past: 11, future: 9}
  layers: [1, 2]
training:
  lr: 0.1
  epochs: 5
  batch_size: 4
data:
  standardize: true
"""
#: The toy dataset recipe's name: a registered dataset, since resolve_recipe looks it up.
DS = "synthetic"
DATASET_YAML = """\
model:
  windows: {future: 4}
  layers: [3]
training:
  epochs: 7
"""


@pytest.fixture
def toy_configs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ``$MERC_CONFIG_DIR`` with ``toy/default.yaml`` and ``toy/<DS>.yaml``; returns ``toy/``."""
    folder = tmp_path / "configs" / "toy"
    folder.mkdir(parents=True)
    (folder / "default.yaml").write_text(DEFAULT_YAML, encoding="utf-8")
    (folder / f"{DS}.yaml").write_text(DATASET_YAML, encoding="utf-8")
    monkeypatch.setenv("MERC_CONFIG_DIR", str(tmp_path / "configs"))
    return folder


def _leaves(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> ``{"section.key": value}`` for every non-mapping value."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# --- inheritance ---------------------------------------------------------------------


def test_dataset_recipe_is_merged_over_the_default(toy_configs: Path) -> None:
    recipe = load_recipe("toy", DS)
    assert recipe["model"] == {
        "hidden_size": 100,
        "dropout": 0.5,
        "windows": {"past": 11, "future": 4},  # nested mappings merge key by key
        "layers": [3],  # lists are replaced, not appended
    }
    assert recipe["training"] == {"lr": 0.1, "epochs": 7, "batch_size": 4}
    assert recipe["data"] == {
        "standardize": True,
        "recipe_file": str(toy_configs / f"{DS}.yaml"),
        "recipe_base": str(toy_configs / "default.yaml"),
    }


def test_dataset_without_a_recipe_gets_the_default(toy_configs: Path) -> None:
    recipe = load_recipe("toy", "other")
    assert recipe["training"] == {"lr": 0.1, "epochs": 5, "batch_size": 4}
    assert recipe["data"]["recipe_file"] == str(toy_configs / "default.yaml")
    assert "recipe_base" not in recipe["data"]


def test_dataset_recipe_without_a_default_is_read_alone(toy_configs: Path) -> None:
    (toy_configs / "default.yaml").unlink()
    recipe = load_recipe("toy", DS)
    assert recipe["training"] == {"epochs": 7}
    assert recipe["data"] == {"recipe_file": str(toy_configs / f"{DS}.yaml")}


def test_no_recipe_gives_empty_sections(toy_configs: Path) -> None:
    assert load_recipe("unknown-model", DS) == {"model": {}, "training": {}}


def test_explicit_path_is_a_full_recipe(toy_configs: Path, tmp_path: Path) -> None:
    full = tmp_path / "mine.yaml"
    full.write_text("training:\n  epochs: 2\n", encoding="utf-8")
    recipe = load_recipe("toy", DS, full)
    assert recipe["model"] == {} and recipe["training"] == {"epochs": 2}  # nothing from default.yaml
    assert recipe["data"] == {"recipe_file": str(full)}


def test_override_order_default_then_dataset_then_command_line(toy_configs: Path) -> None:
    # (resolve_recipe also checks the model section against a registered model; "toy" is none.)
    recipe = apply_overrides(load_recipe("toy", DS), ["training.epochs=9", "model.windows.past=3"])
    assert recipe["training"] == {"lr": 0.1, "epochs": 9, "batch_size": 4}
    assert recipe["model"]["windows"] == {"past": 3, "future": 4}
    # apply_overrides alone gives the same, and does not touch load_recipe's result.
    loaded = load_recipe("toy", DS)
    assert apply_overrides(loaded, ["training.epochs=9"])["training"]["epochs"] == 9
    assert loaded["training"]["epochs"] == 7


def test_deep_merge_copies_and_does_not_mutate() -> None:
    base = {"model": {"a": 1, "nested": {"x": 1, "y": 2}}, "training": {"lr": 0.1}}
    override = {"model": {"nested": {"y": 3}, "b": None}, "curriculum": {"strategy": "emotion-shift"}}
    merged = deep_merge(base, override)
    assert merged == {
        "model": {"a": 1, "nested": {"x": 1, "y": 3}, "b": None},
        "training": {"lr": 0.1},
        "curriculum": {"strategy": "emotion-shift"},
    }
    merged["model"]["nested"]["x"] = 99
    merged["curriculum"]["strategy"] = "none"
    assert base["model"]["nested"] == {"x": 1, "y": 2}
    assert override == {"model": {"nested": {"y": 3}, "b": None}, "curriculum": {"strategy": "emotion-shift"}}


@pytest.mark.parametrize("file", ["default.yaml", f"{DS}.yaml"])
@pytest.mark.parametrize("section", ["model: [1, 2]", "model: corect", "training: 3", "data: [standardize]"])
def test_a_section_that_is_not_a_mapping_names_file_and_section(toy_configs: Path, file: str, section: str) -> None:
    (toy_configs / file).write_text(section + "\n", encoding="utf-8")
    name = section.split(":")[0]
    with pytest.raises(ConfigError, match=rf"{file}: section '{name}' must be a mapping"):
        load_recipe("toy", DS)


def test_an_empty_section_is_no_options(toy_configs: Path) -> None:
    (toy_configs / f"{DS}.yaml").write_text("model:\ntraining:\n  epochs: 7\n", encoding="utf-8")
    assert load_recipe("toy", DS)["model"]["hidden_size"] == 100


# --- the shipped recipes -------------------------------------------------------------


def test_there_are_dataset_recipes() -> None:
    assert len(DATASET_RECIPES) >= 5


@pytest.mark.parametrize("path", DATASET_RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_dataset_recipe_states_only_what_differs_from_its_default(path: Path) -> None:
    default = path.parent / "default.yaml"
    base = _leaves(load_yaml(default)) if default.is_file() else {}
    own = _leaves(load_yaml(path))
    redundant = sorted(k for k, v in own.items() if k in base and base[k] == v)
    assert not redundant, f"{path} repeats {default.name}'s value of {', '.join(redundant)}; drop them (inherited)"


@pytest.mark.parametrize("path", DATASET_RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_merged_dataset_recipe_is_a_valid_training_config(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MERC_CONFIG_DIR", str(REAL_CONFIGS))
    recipe = load_recipe(path.parent.name, path.stem)
    TrainConfig.from_dict(recipe["training"])
    assert recipe["data"]["recipe_file"] == str(path)


@pytest.mark.parametrize(
    ("model", "dataset", "expected"),
    [
        # Values the pruned files now inherit, or state: the papers' settings survive the merge.
        (
            "corect",
            "iemocap6",
            {
                "model.past_window": 11,
                "model.future_window": 9,
                "model.speaker_ids": "global",
                "training.lr": 0.0003,
                "training.batch_size": 10,
                "training.epochs": 50,
            },
        ),
        (
            "corect",
            "meld7",
            {
                "model.past_window": 5,
                "model.future_window": 4,
                "model.speaker_ids": "party",
                "training.lr": 0.0003,
                "training.batch_size": 10,
            },
        ),
        (
            "multidag",
            "iemocap6",
            {
                "model.num_layers": 4,
                "model.dropout": 0.4,
                "training.lr": 0.0005,
                "training.epochs": 30,
                "training.batch_size": 16,
            },
        ),
        (
            "multidag",
            "meld7",
            {
                "model.num_layers": 2,
                "model.dropout": 0.1,
                "training.lr": 0.00001,
                "training.epochs": 60,
                "training.batch_size": 64,
                "training.optimizer": "adamw",
            },
        ),
        ("bclstm", "meld7", {"model.hidden_size": 300, "training.batch_size": 16, "training.weight_decay": 0.00001}),
        ("bclstm", "synthetic", {"model.hidden_size": 48, "training.lr": 0.005, "training.weight_decay": 0.0}),
    ],
)
def test_merged_recipes_hold_the_documented_values(
    model: str, dataset: str, expected: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MERC_CONFIG_DIR", str(REAL_CONFIGS))
    leaves = _leaves(load_recipe(model, dataset))
    assert {k: leaves.get(k) for k in expected} == expected


# --- training options ----------------------------------------------------------------

BAD_OPTIONS = [
    "training.optimizer=adan",
    "training.scheduler=cosin",
    "training.selection_metric=f2",
    "training.selection_metric=loss",  # lower is better: selection maximises
    "training.precision=fp16",
    "training.class_weighted_loss=ture",
    "training.class_weighted_loss=2",
    "training.show_progress=maybe",
    "training.epochs=2.7",
    "training.epochs=0",
    "training.epochs=true",
    "training.epochs=ten",
    "training.batch_size=-1",
    "training.eval_batch_size=0",
    "training.lr=nan",
    "training.lr=inf",
    "training.lr=-1",
    "training.lr=0",
    "training.lr=fast",
    "training.weight_decay=-0.1",
    "training.clip_grad_norm=-1",
    "training.patience=-1",
    "training.patience=1.5",
    "training.warmup_epochs=-2",
    "training.step_size=0",
    "training.gamma=0",
    "training.gamma=1.5",
    "training.momentum=1",
    "training.momentum=-0.1",
    "training.num_threads=-1",
    "training.seed=-1",
    "training.seed=123456789012345678901",
    "training.seed=9223372036854775808",  # 2**63
]


@pytest.mark.parametrize("override", BAD_OPTIONS)
def test_bad_training_option_names_its_key(override: str) -> None:
    key = override.split("=")[0]
    section = apply_overrides({"training": {}}, [override])["training"]
    with pytest.raises(ConfigError, match=rf"{key}\b") as info:
        TrainConfig.from_dict(section)
    # The message says what is valid: a range ("expected ...") or the choices.
    assert "expected" in str(info.value) or "choose one of" in str(info.value)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("lr", float("nan")),
        ("lr", math.inf),
        ("epochs", 2.5),
        ("epochs", False),
        ("seed", 2**63),
        ("class_weighted_loss", 1.0),
        ("class_weighted_loss", None),
        ("batch_size", None),
        ("lr", [0.1]),
    ],
)
def test_bad_values_from_code_are_refused_too(key: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=rf"training\.{key}\b"):
        TrainConfig(**{key: value})
    with pytest.raises(ConfigError, match=rf"training\.{key}\b"):
        TrainConfig.from_dict({key: value})


@pytest.mark.parametrize(
    ("override", "key", "expected"),
    [
        ("training.epochs=3.0", "epochs", 3),
        ("training.epochs=1e3", "epochs", 1000),
        ("training.epochs='12'", "epochs", 12),
        ("training.lr=3e-4", "lr", 3e-4),
        ("training.lr=1", "lr", 1.0),
        ("training.weight_decay=0", "weight_decay", 0.0),
        ("training.momentum=0", "momentum", 0.0),
        ("training.gamma=1", "gamma", 1.0),
        ("training.patience=0", "patience", 0),
        ("training.num_threads=0", "num_threads", 0),
        ("training.seed=9223372036854775807", "seed", 2**63 - 1),
        ("training.class_weighted_loss=Yes", "class_weighted_loss", True),
        ("training.class_weighted_loss=TRUE", "class_weighted_loss", True),
        ("training.class_weighted_loss=0", "class_weighted_loss", False),
        ("training.class_weighted_loss='no'", "class_weighted_loss", False),
        ("training.show_progress=1", "show_progress", True),
        ("training.optimizer=AdamW", "optimizer", "adamw"),
        ("training.scheduler=Plateau", "scheduler", "plateau"),
        ("training.selection_metric=macro-f1", "selection_metric", "macro_f1"),
        ("training.selection_metric=ua", "selection_metric", "ua"),
        ("training.precision=32", "precision", "32"),
    ],
)
def test_good_training_option_is_accepted(override: str, key: str, expected: Any) -> None:
    config = TrainConfig.from_dict(apply_overrides({"training": {}}, [override])["training"])
    value = getattr(config, key)
    assert value == expected and type(value) is type(expected)


def test_defaults_are_valid_and_unknown_keys_refused() -> None:
    assert TrainConfig.from_dict({}) == TrainConfig()
    with pytest.raises(ConfigError, match="unknown training option.*learning_rate"):
        TrainConfig.from_dict({"learning_rate": 0.1})
    with pytest.raises(ConfigError, match="training section must be a mapping"):
        TrainConfig.from_dict([("lr", 0.1)])  # type: ignore[arg-type]


def test_selection_metrics_are_metrics_the_evaluation_reports() -> None:
    reported = classification_metrics(np.array([0, 1, 1]), np.array([0, 1, 0]), 2)
    assert set(SELECTION_METRICS) <= set(reported)
    assert "loss" not in SELECTION_METRICS


# --- failing early: the recipe is checked before any data loads ----------------------


@pytest.mark.parametrize(
    "override",
    [
        "training.optimizer=adan",
        "training.class_weighted_loss=ture",
        "training.epochs=2.7",
        "training.selection_metric=f2",
    ],
)
def test_resolve_recipe_refuses_a_bad_override(override: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MERC_CONFIG_DIR", str(REAL_CONFIGS))
    with pytest.raises(ConfigError, match=override.split("=")[0]):
        resolve_recipe("bclstm", "synthetic", [override])


def test_resolve_recipe_refuses_a_bad_recipe_file(toy_configs: Path) -> None:
    (toy_configs / f"{DS}.yaml").write_text("training:\n  scheduler: cosin\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"training\.scheduler.*cosine"):
        resolve_recipe("toy", DS)


def test_run_experiment_fails_on_a_bad_option_before_loading_data(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def no_data(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("data was loaded before the recipe was checked")

    monkeypatch.setenv("MERC_CONFIG_DIR", str(REAL_CONFIGS))
    monkeypatch.setattr(runner, "prepare_dataset", no_data)
    monkeypatch.setattr(runner, "load_dataset", no_data)
    with pytest.raises(ConfigError, match=r"training\.optimizer"):
        runner.run_experiment("bclstm", "synthetic", overrides=["training.optimizer=adan"], out_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "config.yaml").exists()


# --- model option ranges and the data section ------------------------------------------------


def _model_defaults() -> list[tuple[str, str, Any]]:
    import inspect

    from merc.models import list_models
    from merc.models.registry import get_model_class

    rows = []
    for name in list_models():
        for key, param in inspect.signature(get_model_class(name).__init__).parameters.items():
            if param.default is not inspect.Parameter.empty and param.default is not None:
                rows.append((name, key, param.default))
    return rows


def test_every_models_defaults_pass_the_model_option_ranges() -> None:
    """The naming-convention ranges never refuse a value a model itself chose as default."""
    from merc.config import MODEL_OPTION_RANGES, check_model_ranges

    rows = _model_defaults()
    assert len(rows) > 50
    checked = 0
    for name, key, default in rows:
        try:
            check_model_ranges({key: default})
        except ConfigError as exc:
            raise AssertionError(f"{name}'s own default is refused: {exc}") from None
        checked += any(applies(key) for applies, _, _ in MODEL_OPTION_RANGES)
    assert checked > 30  # the rules do apply to most options


@pytest.mark.parametrize("path", DATASET_RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_recipes_pass_the_model_ranges_and_data_schema(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MERC_CONFIG_DIR", str(REAL_CONFIGS))
    recipe = resolve_recipe(path.parent.name, path.stem)  # raises on any out-of-range value
    assert recipe["model"] is not None


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.dropout=1.5", r"model\.dropout=1\.5: expected a number in \[0, 1\)"),
        ("model.hidden_size=0", r"model\.hidden_size=0: expected an integer in \[1, 65536\]"),
        ("model.hidden_size=100000", r"model\.hidden_size=100000"),
        ("data.standardize=perhaps", r"data\.standardize='perhaps': expected a boolean"),
        ("data.max_utterances_per_dialogue=0", r"data\.max_utterances_per_dialogue=0"),
        ("data.unknown=1", r"unknown data option\(s\) unknown"),
    ],
)
def test_resolve_recipe_checks_model_ranges_and_the_data_section(
    override: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MERC_CONFIG_DIR", str(REAL_CONFIGS))
    with pytest.raises(ConfigError, match=message):
        resolve_recipe("bclstm", "synthetic", [override])


def test_data_options_defaults_and_conversion() -> None:
    from merc.training.data_checks import DataOptions

    assert DataOptions.from_recipe({}) == DataOptions()
    options = DataOptions.from_recipe({"data": {"standardize": "no", "max_feature_gib": "2", "recipe_file": "x"}})
    assert options.standardize is False and options.max_feature_gib == 2.0


def test_a_non_utf8_recipe_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_bytes(b"training:\n  lr: \xff\n")
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_yaml(path)


def test_a_sequence_request_reads_its_datasets_recipe() -> None:
    # "iemocap6@t" is iemocap6 with token-level text: the same recipe file.
    assert load_recipe("corect", "iemocap6@t") == load_recipe("corect", "iemocap6")
    assert load_recipe("corect", "iemocap6@t")["data"]["recipe_file"].endswith("corect/iemocap6.yaml")
