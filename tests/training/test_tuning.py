"""``merc tune``: search-space parsing, presets, a search that never reads the test split,
continuing an interrupted search, and the final run with the best values."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import merc.training.runner as runner
import merc.training.tuning as tuning
from bad_input_env import CHEAP
from helpers import make_dataset
from merc.cli import main
from merc.config import apply_overrides, configs_dir
from merc.errors import ConfigError, RunFolderError
from merc.training.tuning import SearchParameter, as_overrides, load_preset

pytest.importorskip("optuna")


# -- the search space --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("spcl.epsilon=0.6:1.2", SearchParameter("spcl.epsilon", "float", 0.6, 1.2)),
        ("training.lr=1e-4:3e-4:log", SearchParameter("training.lr", "float", 1e-4, 3e-4, log=True)),
        ("model.num_layers=1:4", SearchParameter("model.num_layers", "int", 1.0, 4.0)),
        ("model.num_layers=1:4.0", SearchParameter("model.num_layers", "float", 1.0, 4.0)),
        (
            "spcl.regularizer=hard,linear,logistic",
            SearchParameter("spcl.regularizer", "categorical", choices=("hard", "linear", "logistic")),
        ),
        (
            "model.bidirectional=true,false",
            SearchParameter("model.bidirectional", "categorical", choices=(True, False)),
        ),
    ],
)
def test_parameters_parse_and_describe_themselves(text: str, expected: SearchParameter) -> None:
    parsed = SearchParameter.parse(text)
    assert parsed == expected
    assert SearchParameter.parse(parsed.describe()) == parsed


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("spcl.epsilon", "expected KEY=LOW:HIGH"),
        ("epsilon=0.6:1.2", "section.key"),
        ("data.standardize=true,false", "data.* options"),
        ("spcl.epsilon=1.2:0.6", "LOW must be below HIGH"),
        ("training.lr=0:1e-3:log", "LOW > 0"),
        ("spcl.regularizer=hard", "two or more distinct"),
        ("spcl.regularizer=hard,hard", "two or more distinct"),
    ],
)
def test_bad_parameters_say_what_is_expected(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment.replace("*", r"\*")):
        SearchParameter.parse(text)


def test_sampled_values_become_the_recipe_values() -> None:
    values = {"spcl.epsilon": 0.7312, "model.num_layers": 3, "spcl.regularizer": "linear", "model.flag": False}
    recipe = apply_overrides({}, as_overrides(values))
    assert recipe == {"spcl": {"epsilon": 0.7312, "regularizer": "linear"}, "model": {"num_layers": 3, "flag": False}}


def test_the_spcl_preset_is_table_2s_ranges() -> None:
    params, overrides = load_preset("spcl")
    assert [p.describe() for p in params] == ["spcl.epsilon=0.6:1.2", "spcl.alpha=1.05:1.4"]
    assert overrides == ["spcl.enabled=true"]


@pytest.mark.parametrize("path", sorted((configs_dir() / "tune").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_preset_makes_valid_recipes_at_its_corners(path: Path) -> None:
    params, overrides = load_preset(str(path))
    for corner in tuning._corners(params):
        runner.resolve_recipe("mmgcn", "synthetic", [*overrides, *as_overrides(corner)])


def test_an_unknown_preset_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="presets: .*spcl"):
        load_preset("nope")


# -- a search --------------------------------------------------------------------------------------------
def tiny():
    """Four small dialogues (tests/helpers.py), under a registered name for its recipe defaults."""
    dataset = make_dataset()
    dataset.name = "synthetic"
    return dataset


SPACE = [SearchParameter.parse("training.lr=1e-3:1e-1:log"), SearchParameter.parse("model.dropout=0.0,0.5")]


def search(tmp_path: Path, trials: int, **kwargs):
    return tuning.tune(
        "bclstm",
        tiny(),
        "ta",
        tmp_path / "tune",
        SPACE,
        trials=trials,
        trial_seeds=[0, 1],
        final_seeds=[0],
        overrides=list(CHEAP),
        show_progress=False,
        **kwargs,
    )


def test_a_search_selects_on_validation_and_tests_only_the_final_run(tmp_path, monkeypatch) -> None:
    from merc.training.trainer import Trainer

    tested = []
    real_test = Trainer.test
    monkeypatch.setattr(Trainer, "test", lambda self, *a, **k: tested.append(1) or real_test(self, *a, **k))
    summary = search(tmp_path, trials=3)
    assert len(tested) == 1  # the final run's one seed, never a trial
    rows = summary["trials"]
    assert len(rows) == 3 and summary["failed_trials"] == 0
    for row in rows:
        assert 1e-3 <= row["params"]["training.lr"] <= 1e-1 and row["params"]["model.dropout"] in (0.0, 0.5)
        assert len(row["valid_per_seed"]) == 2 and math.isclose(row["valid"], sum(row["valid_per_seed"]) / 2)
    best = max(rows, key=lambda r: r["valid"])
    assert summary["best"]["params"] == best["params"]
    # The final run trains the best values (its recipe holds them) and is tested.
    config = (tmp_path / "tune" / "best" / "config.yaml").read_text()
    assert f"lr: {best['params']['training.lr']}" in config
    assert summary["final"]["test"]["weighted_f1"]["per_seed"]
    # A trial's score is what fit_seed selects for that seed: rerun one and compare.
    recipe = runner.resolve_recipe("bclstm", "synthetic", [*CHEAP, *as_overrides(best["params"])])
    data = runner.prepare_dataset(tiny(), "ta", recipe)
    trainer, _ = runner.fit_seed(data, runner.to_tensors(data), "bclstm", recipe, 1, None, None, False)
    assert math.isclose(trainer.best_score, best["valid_per_seed"][1], abs_tol=1e-9)
    on_disk = json.loads((tmp_path / "tune" / "tune.json").read_text())
    assert on_disk["best"] == summary["best"] and "final" in on_disk
    assert (tmp_path / "tune" / "tune.png").read_bytes()[:4] == b"\x89PNG"


def test_a_continued_search_keeps_its_trials_and_draws_new_values(tmp_path) -> None:
    first = search(tmp_path, trials=2)
    second = search(tmp_path, trials=4)
    assert second["trials"][:2] == first["trials"]
    drawn = [tuple(r["params"].values()) for r in second["trials"]]
    assert len(set(drawn)) == len(drawn), "a continued search replayed its first draws"
    # Asking for no more trials than it holds trains nothing new.
    assert search(tmp_path, trials=3)["trials"] == second["trials"]


def test_a_trial_cut_off_is_marked_failed_and_the_search_goes_on(tmp_path, monkeypatch) -> None:
    calls = []
    real = tuning._Objective.__call__

    def interrupted(self, values, show_progress):
        calls.append(values)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, values, show_progress)

    monkeypatch.setattr(tuning._Objective, "__call__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        search(tmp_path, trials=3)
    monkeypatch.setattr(tuning._Objective, "__call__", real)
    summary = search(tmp_path, trials=3)
    assert len(summary["trials"]) == 3 and summary["failed_trials"] == 1
    assert [r["number"] for r in summary["trials"]] == [0, 2, 3]


def test_an_interrupted_final_run_is_recorded_and_finished_by_the_next_call(tmp_path, monkeypatch) -> None:
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_experiment", interrupted)
    with pytest.raises(KeyboardInterrupt):
        search(tmp_path, trials=2)
    recorded = json.loads((tmp_path / "tune" / "tune.json").read_text())["final"]
    assert "test" not in recorded  # what the final run was training, before it ended
    assert recorded["overrides"][-2:] == as_overrides(
        json.loads((tmp_path / "tune" / "tune.json").read_text())["best"]["params"]
    )
    monkeypatch.undo()
    summary = search(tmp_path, trials=2)
    assert summary["final"]["overrides"] == recorded["overrides"] and summary["final"]["test"]["weighted_f1"]


def test_another_search_in_the_same_folder_is_refused(tmp_path) -> None:
    search(tmp_path, trials=1)
    with pytest.raises(RunFolderError, match="another search|other settings"):
        tuning.tune(
            "bclstm",
            tiny(),
            "ta",
            tmp_path / "tune",
            SPACE[:1],
            trials=1,
            overrides=list(CHEAP),
            show_progress=False,
        )


def test_bad_values_fail_before_any_data_loads(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(runner, "load_run_data", lambda *a, **k: pytest.fail("data loaded"))
    with pytest.raises(ConfigError, match="model.dropout"):
        tuning.tune(
            "bclstm",
            "synthetic",
            "ta",
            tmp_path / "t",
            [SearchParameter.parse("model.dropout=0.0,1.5")],
            overrides=list(CHEAP),
        )
    with pytest.raises(ConfigError, match="nothing to search"):
        tuning.tune("bclstm", "synthetic", "ta", tmp_path / "t", [])
    assert not (tmp_path / "t").exists()


def test_the_command_line_runs_a_preset_search(tmp_path, capsys) -> None:
    out = tmp_path / "cli"
    code = main(
        [
            "tune",
            "--model",
            "bclstm",
            "--dataset",
            "synthetic",
            "--modalities",
            "ta",
            "--out",
            str(out),
            "--space",
            "spcl",
            "--trials",
            "2",
            "--seeds",
            "0",
            "--quiet",
            *CHEAP,
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert printed.count("-> valid weighted_f1") == 2
    assert "best of 2 trials: spcl.epsilon=" in printed and "final run" in printed
    summary = json.loads((out / "tune.json").read_text())
    assert summary["overrides"][0] == "spcl.enabled=true"
    assert "enabled: true" in (out / "best" / "config.yaml").read_text().split("spcl:")[1]
