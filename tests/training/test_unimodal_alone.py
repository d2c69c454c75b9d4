"""``merc imbalance``: each modality alone beside a joint run, compared with the joint heads."""

from __future__ import annotations

import json

import pytest

from merc.data.synthetic import generate_synthetic
from merc.errors import ConfigError
from merc.training.runner import run_experiment
from merc.training.unimodal_alone import alone_recipe, compare_with_alone

OVERRIDES = ["training.epochs=2", "training.batch_size=4", "model.hidden_size=8", "model.dense_size=8"]


@pytest.fixture(scope="module")
def tiny():
    return generate_synthetic(num_dialogues=(8, 3, 5), min_len=3, max_len=8, dims={"t": 8, "a": 4, "v": 4}, seed=0)


def test_alone_runs_match_a_plain_one_modality_run(tiny, tmp_path) -> None:
    run = tmp_path / "joint"
    run_experiment("bclstm", tiny, "ta", [0, 1], run, overrides=[*OVERRIDES, "ogm-ge.alpha=0.5"], show_progress=False)
    report = compare_with_alone(run, dataset=tiny, show_progress=False)
    assert set(report["rows"]) == {"t", "a"}
    joint = json.loads((run / "results.json").read_text())["unimodal"]["test"]
    for m, row in report["rows"].items():
        assert row["joint"]["weighted_f1"] == joint[m]["weighted_f1"]
        # The alone run is the same recipe on one modality, without the balance plug-in.
        plain = run_experiment("bclstm", tiny, m, [0, 1], None, overrides=OVERRIDES, show_progress=False)
        assert row["alone"]["weighted_f1"]["per_seed"] == pytest.approx(plain["test"]["weighted_f1"]["per_seed"])
        gaps = [a - j for a, j in zip(row["alone"]["weighted_f1"]["per_seed"], joint[m]["weighted_f1"]["per_seed"])]
        assert row["gap_weighted_f1"]["per_seed"] == pytest.approx(gaps)
    for suffix in ("json", "md", "png"):
        assert (run / f"unimodal_vs_alone.{suffix}").is_file()
    assert "| t |" in (run / "unimodal_vs_alone.md").read_text()
    # Rerunning reuses the finished alone runs (same numbers, nothing retrained).
    again = compare_with_alone(run, dataset=tiny, show_progress=False)
    assert again["rows"] == report["rows"]


def test_alone_recipe_drops_only_balance_sections() -> None:
    recipe = {"model": {"a": 1}, "training": {}, "ogm-ge": {"alpha": 1}, "spcl": {}, "curriculum": {"buckets": 2}}
    assert set(alone_recipe(recipe)) == {"model", "training", "curriculum"}


def test_refuses_what_it_cannot_compare(tiny, tmp_path) -> None:
    with pytest.raises(ConfigError, match="not a folder"):
        compare_with_alone(tmp_path / "missing")
    one = tmp_path / "one"
    run_experiment("bclstm", tiny, "t", [0], one, overrides=OVERRIDES, show_progress=False)
    with pytest.raises(ConfigError, match="nothing to compare"):
        compare_with_alone(one, dataset=tiny)
    early = tmp_path / "early"
    run_experiment(
        "gcnet", tiny, "ta", [0], early, overrides=["training.epochs=1", "model.hidden_size=8"], show_progress=False
    )
    with pytest.raises(ConfigError, match="no unimodal test scores"):
        compare_with_alone(early, dataset=tiny)
