"""Robustness sweeps on tiny synthetic data (1-2 epochs): both protocols and the command."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from merc.data.missing import read_masks
from merc.data.schema import MercDataset
from merc.data.synthetic import generate_synthetic
from merc.errors import ConfigError, DataError
from merc.evaluation.robustness import MASK_DIR, write_robustness_report
from merc.training.robustness_sweep import (
    add_robustness_arguments,
    robustness_by_retraining,
    robustness_from_run,
    robustness_main,
)
from merc.training.runner import run_experiment

SMALL = [
    "model.hidden_size=8",
    "model.fe_hidden=8",
    "model.gat_hidden=4",
    "model.cma_dim=4",
    "model.classifier_hidden=8",
]


@pytest.fixture(scope="module")
def tiny() -> MercDataset:
    return generate_synthetic(num_dialogues=(8, 3, 5), min_len=3, max_len=8, dims={"t": 8, "a": 4, "v": 4}, seed=0)


@pytest.fixture(scope="module")
def trained_run(tiny: MercDataset, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("run") / "micga"
    res = run_experiment(
        "micga", tiny, "tav", seeds=(0, 1), out_dir=out, overrides=["training.epochs=2", *SMALL], show_progress=False
    )
    return out, res


def test_train_complete_protocol(trained_run, tiny: MercDataset, tmp_path) -> None:
    run, res = trained_run
    rep = robustness_from_run(run, rates=(0.0, 0.3, 0.7), drops=("a", "tv"), mask_seeds=(0, 1), dataset=tiny)
    assert rep["protocol"] == "train-complete" and rep["model"] == "micga" and rep["train_seeds"] == [0, 1]
    by_name = {c["name"]: c for c in rep["conditions"]}
    assert list(by_name) == ["rate=0.00", "rate=0.30", "rate=0.70", "drop=a", "drop=tv"]
    # Rate 0 reuses the selected weights on the untouched test split: the run's own test scores.
    np.testing.assert_allclose(
        by_name["rate=0.00"]["metrics"]["weighted_f1"]["per_seed"], res["test"]["weighted_f1"]["per_seed"]
    )
    assert len(by_name["rate=0.00"]["runs"]) == 2  # one mask-free evaluation per training seed
    assert len(by_name["rate=0.30"]["runs"]) == 4  # 2 training seeds x 2 mask seeds
    assert by_name["rate=0.70"]["effective_rate"] == pytest.approx(2 / 3)
    assert all(r["realized_rate"] == pytest.approx(2 / 3) for r in by_name["rate=0.70"]["runs"])
    assert all(r["realized_rate"] == pytest.approx(1 / 3) for r in by_name["drop=a"]["runs"])
    # Masks were written once and are reused: a second sweep gives identical numbers.
    files = sorted((run / MASK_DIR / "test-only" / "tav").glob("*.npz"))
    assert [f.name for f in files][:2] == ["drop-a_seed0.npz", "drop-a_seed1.npz"]
    masks, meta = read_masks(run / MASK_DIR / "test-only" / "tav" / "rate0.30_seed1.npz")
    assert set(masks) == {c.id for c in tiny.splits["test"]} and meta["condition"] == "rate=0.30"
    again = robustness_from_run(run, rates=(0.3,), drops=(), mask_seeds=(0, 1), dataset=tiny)
    assert again["conditions"][0]["metrics"] == by_name["rate=0.30"]["metrics"]
    # The evaluation side writes the sweep's report as any other.
    paths = write_robustness_report([rep], tmp_path)
    assert "| micga |" in paths["markdown"].read_text()


def test_train_complete_imputations(trained_run, tiny: MercDataset) -> None:
    """MeanImp fills the raw training mean, which z-scoring maps to merc's default 0."""
    run, _ = trained_run
    reps = {
        m: robustness_from_run(
            run,
            rates=(0.5,),
            drops=(),
            mask_seeds=(0,),
            imputation=m,
            dataset=tiny,
            mask_dir=run.parent / "other_masks",
        )
        for m in ("none", "mean", "zero")
    }
    assert reps["mean"]["imputation"] == "mean" and len(reps["mean"]["conditions"][0]["runs"]) == 2
    f1 = {m: r["conditions"][0]["metrics"]["weighted_f1"]["per_seed"] for m, r in reps.items()}
    np.testing.assert_allclose(f1["mean"], f1["none"], atol=1e-6)
    assert all(np.isfinite(f1["zero"]))


def test_train_complete_needs_a_run_folder(tmp_path) -> None:
    with pytest.raises(ConfigError, match="not a merc run folder"):
        robustness_from_run(tmp_path)


def test_retrain_protocol_masks_every_split(tiny: MercDataset, tmp_path) -> None:
    rep = robustness_by_retraining(
        "micga",
        tiny,
        "tav",
        tmp_path,
        rates=(0.0, 0.5),
        drops=("v",),
        seeds=(0,),
        overrides=["training.epochs=1", *SMALL],
    )
    assert [c["name"] for c in rep["conditions"]] == ["rate=0.00", "rate=0.50", "drop=v"]
    assert (tmp_path / "micga" / "rate0.50" / "mask_0" / "results.json").is_file()
    masks, _ = read_masks(tmp_path / MASK_DIR / "same-rate" / "tav" / "rate0.50_seed0.npz")
    train_ids = {c.id for c in tiny.splits["train"]}
    train = np.concatenate([masks[i] for i in train_ids])
    assert 0.3 < 1 - train.mean() < 0.7  # the training split is masked too
    assert rep["protocol"] == "retrain" and rep["conditions"][1]["runs"][0]["train_seed"] == 0


def test_cli_entry(tmp_path) -> None:
    run = tmp_path / "run"
    run_experiment(
        "micga",
        "synthetic",
        "tav",
        seeds=(0,),
        out_dir=run,
        overrides=["training.epochs=1", *SMALL],
        show_progress=False,
    )
    parser = add_robustness_arguments(argparse.ArgumentParser())
    args = parser.parse_args([str(run), "--rates", "0,0.4", "--drops", "v", "--mask-seeds", "0"])
    assert robustness_main(args) == 0
    report = json.loads((run / "robustness.json").read_text())
    assert [c["name"] for c in report["reports"][0]["conditions"]] == ["rate=0.00", "rate=0.40", "drop=v"]
    assert (run / "robustness.md").is_file() and (run / "robustness.png").is_file()
    with pytest.raises(ConfigError, match="give one of"):
        robustness_main(parser.parse_args([str(run), "--model", "micga"]))
    with pytest.raises(ConfigError, match="--dataset and --out"):
        robustness_main(parser.parse_args(["--model", "micga"]))
    # Earlier sweeps combine into one table; an imputed sweep is labelled by its imputation.
    zero = tmp_path / "zero"
    assert (
        robustness_main(
            parser.parse_args(
                [
                    str(run),
                    "--rates",
                    "0.4",
                    "--drops",
                    "none",
                    "--mask-seeds",
                    "0",
                    "--imputation",
                    "zero",
                    "--out",
                    str(zero),
                ]
            )
        )
        == 0
    )
    merged = tmp_path / "merged"
    assert (
        robustness_main(parser.parse_args(["--merge", str(run / "robustness.json"), str(zero), "--out", str(merged)]))
        == 0
    )
    md = (merged / "robustness.md").read_text()
    assert "| micga |" in md and "| micga + zero imputation |" in md
    with pytest.raises(ConfigError, match="--merge needs --out"):
        robustness_main(parser.parse_args(["--merge", str(zero)]))
    with pytest.raises(DataError, match="not a robustness.json"):
        robustness_main(parser.parse_args(["--merge", str(tmp_path), "--out", str(merged)]))
