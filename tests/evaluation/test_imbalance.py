"""Imbalance measures (OGM-GE eq. 9, Ada2I eq. 16-17) and what the trainer records with them."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from helpers import make_dataset
from merc.data.batching import IGNORE_INDEX, to_tensors
from merc.evaluation.imbalance import (
    modality_ratios,
    plot_imbalance,
    true_class_probabilities,
    true_class_scores,
    unimodal_summary,
)
from merc.models import build_model
from merc.training.trainer import TrainConfig, Trainer


def test_true_class_scores_by_hand() -> None:
    logits = {"t": torch.tensor([[2.0, 0.0], [0.0, 1.0], [5.0, 5.0]]), "a": torch.zeros(3, 2)}
    labels = torch.tensor([0, 1, IGNORE_INDEX])
    p_t = [math.exp(2) / (math.exp(2) + 1), math.exp(1) / (math.exp(1) + 1)]
    assert true_class_probabilities(logits["t"], labels).tolist() == pytest.approx(p_t, rel=1e-6)
    summed = true_class_scores(logits, labels)
    assert float(summed["t"]) == pytest.approx(sum(p_t), rel=1e-6)
    assert float(summed["a"]) == pytest.approx(1.0)  # the unlabelled row is left out
    mean = true_class_scores(logits, labels, reduce="mean")
    assert float(mean["t"]) == pytest.approx(sum(p_t) / 2, rel=1e-6)
    ratios = modality_ratios(summed)
    assert ratios == pytest.approx({"t": sum(p_t), "a": 1.0})
    with pytest.raises(ValueError, match="reduce"):
        true_class_scores(logits, labels, reduce="max")


def test_unimodal_summary_scores_each_modality_on_its_own() -> None:
    labels = np.array([0, 1, 2, 2])
    logits = {
        "t": np.eye(3)[labels] * 4.0,  # right everywhere
        "a": np.eye(3)[[0, 0, 0, 0]] * 4.0,  # always class 0
    }
    out = unimodal_summary(logits, labels, 3)
    assert out["t"]["accuracy"] == 100.0 and out["a"]["accuracy"] == 25.0
    assert out["t"]["ratio"] > out["a"]["ratio"] == 1.0
    assert unimodal_summary({}, labels, 3) == {} and unimodal_summary(logits, labels[:0], 3) == {}


def _trainer(name: str = "bclstm", epochs: int = 2, **model_args: object) -> Trainer:
    ds = make_dataset((3, 5, 4, 6), "tav", separable=True)
    torch.manual_seed(0)
    model = build_model(name, in_dims=ds.dims, num_classes=3, num_speakers=2, num_parties=2, **model_args)
    config = TrainConfig(epochs=epochs, batch_size=2, show_progress=False, patience=0)
    return Trainer(model, to_tensors(ds), ds.modalities, 3, config)


def test_trainer_records_unimodal_scores_per_epoch() -> None:
    trainer = _trainer()
    trainer.fit()
    for entry in trainer.history:
        record = entry["unimodal"]
        assert set(record) == {"train", "valid"}
        for split in ("train", "valid"):
            assert set(record[split]) == {"t", "a", "v"}
            for scores in record[split].values():
                assert 0 <= scores["accuracy"] <= 100 and 0 < scores["score"] < 1 and scores["ratio"] >= 1
            assert min(s["ratio"] for s in record[split].values()) == pytest.approx(1.0)
    # The validation numbers are those of the weights after the epoch: recompute them.
    trainer.model.eval()
    again = trainer.evaluate(trainer.valid_items, unimodal=True)["unimodal"]
    assert again["t"]["weighted_f1"] == pytest.approx(trainer.history[-1]["unimodal"]["valid"]["t"]["weighted_f1"])
    # evaluate() without the flag keeps its plain metrics.
    assert "unimodal" not in trainer.evaluate(trainer.valid_items)


def test_early_fusion_models_record_no_unimodal_scores() -> None:
    trainer = _trainer("gcnet", epochs=1)
    trainer.fit()
    assert "unimodal" not in trainer.history[-1]
    assert "unimodal" not in trainer.test(unimodal=True)


def test_plot_imbalance(tmp_path) -> None:
    history = [
        {
            "epoch": e,
            "unimodal": {
                split: {m: {"weighted_f1": 40 + e + k, "ratio": 1 + 0.1 * e * k} for k, m in enumerate("tav")}
                for split in ("train", "valid")
            },
            "plugins": {"spcl": {"selected_share": 0.5 + 0.1 * e, "note": "text is skipped"}},
        }
        for e in range(4)
    ]
    path = plot_imbalance({0: history, 1: history}, tmp_path / "imbalance.png")
    assert path is not None and path.stat().st_size > 10_000
    assert plot_imbalance({0: [{"epoch": 0}]}, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_run_folder_gets_unimodal_results_and_plot(tmp_path) -> None:
    from merc.data.synthetic import generate_synthetic
    from merc.training.runner import run_experiment

    ds = generate_synthetic(num_dialogues=(8, 3, 5), min_len=3, max_len=8, dims={"t": 8, "a": 4, "v": 4}, seed=0)
    out = tmp_path / "run"
    results = run_experiment(
        "bclstm", ds, "tav", [0, 1], out, overrides=["training.epochs=2", "training.batch_size=2"], show_progress=False
    )
    per_seed = [json.loads((out / f"seed_{s}" / "metrics.json").read_text())["test"]["unimodal"] for s in (0, 1)]
    test_t = results["unimodal"]["test"]["t"]["weighted_f1"]
    assert test_t["per_seed"] == pytest.approx([p["t"]["weighted_f1"] for p in per_seed])
    assert set(results["unimodal"]) == {"test", "valid"}
    assert (out / "imbalance.png").is_file()
