"""Robustness conditions, masks and reports, on hand-made reports (no training).

The sweeps that produce reports from trained runs are tested in
tests/training/test_robustness_sweep.py.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from merc.data.missing import read_masks, realized_missing_rate
from merc.data.schema import MercDataset
from merc.data.synthetic import generate_synthetic
from merc.errors import ConfigError, DataError
from merc.evaluation.robustness import (
    MASK_DIR,
    Condition,
    condition_entry,
    headline_metrics,
    load_robustness_reports,
    make_conditions,
    mask_condition,
    mask_seeds_for,
    merge_robustness_reports,
    model_report,
    robustness_markdown,
    write_robustness_report,
)


@pytest.fixture(scope="module")
def tiny() -> MercDataset:
    return generate_synthetic(num_dialogues=(8, 3, 5), min_len=3, max_len=8, dims={"t": 8, "a": 4, "v": 4}, seed=0)


def fake_report(model: str = "micga", imputation: str = "none", offset: float = 0.0) -> dict:
    """A report as a sweep writes it: 2 training seeds x 2 mask seeds, scores falling with the rate."""
    conditions, skipped = make_conditions("tav", (0.0, 0.5, 0.7), ("a", "tv"))
    entries = []
    for cond in conditions:
        base = 60.0 - 20 * float(cond.value) if cond.kind == "rate" else 50.0
        runs = [
            {
                "train_seed": s,
                "mask_seed": m,
                "realized_rate": 0.0,
                **headline_metrics({"weighted_f1": base + offset + s + m, "accuracy": base + s, "other": 1.0}),
            }
            for m in mask_seeds_for(cond, [0, 1])
            for s in (0, 1)
        ]
        entries.append(condition_entry(cond, runs, "tav"))
    return model_report(
        "train-complete", model, f"runs/{model}", "synthetic", "tav", imputation, [0, 1], [0, 1], skipped, entries
    )


def test_conditions_skip_what_the_modalities_cannot_have() -> None:
    conds, skipped = make_conditions("tav", [0.0, 0.7, 0.8], ["a", "tav", "ta"])
    assert [c.name for c in conds] == ["rate=0.00", "rate=0.70", "drop=a", "drop=ta"]
    assert len(skipped) == 2
    assert [c.slug for c in conds] == ["rate0.00", "rate0.70", "drop-a", "drop-ta"]


def test_mask_condition_writes_masks_once_and_reuses_them(tiny: MercDataset, tmp_path) -> None:
    cond = Condition("rate", 0.3)
    tiny = dataclasses.replace(tiny, splits={"test": list(tiny.splits["test"])})  # as the train-complete sweep
    first = mask_condition(tiny, cond, 1, "test-only", tmp_path / MASK_DIR)
    path = tmp_path / MASK_DIR / "test-only" / "tav" / "rate0.30_seed1.npz"
    masks, meta = read_masks(path)
    assert set(masks) == {c.id for c in tiny.splits["test"]} and meta["condition"] == "rate=0.30"
    stamp = path.stat().st_mtime_ns
    again = mask_condition(tiny, cond, 1, "test-only", tmp_path / MASK_DIR)
    assert path.stat().st_mtime_ns == stamp
    assert realized_missing_rate(again, "test") == realized_missing_rate(first, "test") > 0
    # Without a folder the masks are drawn, not stored; a drop removes the modality everywhere.
    dropped = mask_condition(tiny, Condition("drop", "a"), 0, "test-only")
    assert realized_missing_rate(dropped, "test") == pytest.approx(1 / 3)


def test_condition_entry_aggregates_training_x_mask_seeds() -> None:
    rep = fake_report()
    by_name = {c["name"]: c for c in rep["conditions"]}
    assert list(by_name) == ["rate=0.00", "rate=0.50", "rate=0.70", "drop=a", "drop=tv"]
    assert len(by_name["rate=0.00"]["runs"]) == 2  # rate 0: one mask-free evaluation per training seed
    assert len(by_name["rate=0.50"]["runs"]) == 4  # 2 training seeds x 2 mask seeds
    assert by_name["rate=0.70"]["effective_rate"] == pytest.approx(2 / 3)
    assert "effective_rate" not in by_name["drop=a"]
    np.testing.assert_allclose(by_name["rate=0.50"]["metrics"]["weighted_f1"]["per_seed"], [50, 51, 51, 52])
    assert by_name["rate=0.50"]["metrics"]["weighted_f1"]["mean"] == pytest.approx(51.0)
    assert set(rep) == {
        "protocol",
        "model",
        "source",
        "dataset",
        "modalities",
        "imputation",
        "train_seeds",
        "mask_seeds",
        "skipped",
        "conditions",
    }


def test_report_files(tmp_path) -> None:
    a, b = fake_report(), fake_report("other", offset=5.0)
    paths = write_robustness_report([a, b], tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["metric"] == "weighted_f1" and [r["model"] for r in data["reports"]] == ["micga", "other"]
    md = paths["markdown"].read_text()
    assert "| micga |" in md and "| other |" in md and "0.50" in md and "average" in md and "tv" in md
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert load_robustness_reports(tmp_path) == data["reports"]
    with pytest.raises(ConfigError, match="unknown metric"):
        write_robustness_report([a], tmp_path, metric="auc")


def test_merge_is_reporting_only(tmp_path) -> None:
    write_robustness_report([fake_report()], tmp_path / "none")
    write_robustness_report([fake_report(imputation="zero")], tmp_path / "zero")
    paths = merge_robustness_reports([tmp_path / "none" / "robustness.json", tmp_path / "zero"], tmp_path / "merged")
    md = paths["markdown"].read_text()
    assert md == robustness_markdown([fake_report(), fake_report(imputation="zero")])
    assert "| micga |" in md and "| micga + zero imputation |" in md
    with pytest.raises(DataError, match="not a robustness.json"):
        merge_robustness_reports([tmp_path], tmp_path / "merged")
