"""Helpers of the inference tests: tiny native datasets with transcripts, cheap training runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from helpers import make_dataset
from merc.cli import main
from merc.config import load_yaml
from merc.data.batching import to_tensors
from merc.data.formats.native import write_native
from merc.data.registry import load_dataset
from merc.data.transforms import standardize_features
from merc.training.runner import run_info, selected_trainers, training_statistics

#: Overrides that keep a training a fraction of a second.
CHEAP = ["model.hidden_size=4", "model.dense_size=4", "training.epochs=2", "training.batch_size=2", "--quiet"]
#: Sentences whose class a text model can learn from a few examples.
SENTENCES = {
    0: ["I am so happy today!", "This is wonderful news.", "I love it, thank you!"],
    1: ["This is terrible.", "I feel so sad and alone.", "Everything went wrong again."],
    2: ["Okay.", "The meeting is at noon.", "Please pass the salt."],
}


def write_text_dataset(folder: Path, modalities: list[str], with_av: bool = False) -> Path:
    """A native folder with transcripts and no text features file, declared as the README shows."""
    ds = make_dataset((3, 4, 5, 2), "av" if with_av else "a", num_classes=3, separable=True)
    for conv in ds.conversations():
        conv.texts = [SENTENCES[int(y)][k % 3] for k, y in enumerate(conv.labels)]
        if not with_av:
            conv.features = {}
    if not with_av:
        ds.modalities = ()
    write_native(ds, folder)
    meta = json.loads((folder / "metadata.json").read_text())
    meta["modalities"] = modalities
    (folder / "metadata.json").write_text(json.dumps(meta))
    return folder


def train(dataset: Path, out: Path, modalities: str, *extra: str, seeds: str = "0,1") -> Path:
    argv = ["train", "--model", "bclstm", "--dataset", str(dataset), "--modalities", modalities, "--seeds", seeds]
    assert main([*argv, "--out", str(out), *CHEAP, *extra]) == 0
    return out


def utterance_probabilities(rows: list[dict]) -> np.ndarray:
    return np.array([list(r["probabilities"].values()) for r in rows])


def evaluate_path(run: Path, seed: int) -> tuple[np.ndarray, float]:
    """Test-split probabilities and accuracy of ``seed`` through the code ``merc evaluate`` runs."""
    recipe = load_yaml(run / "config.yaml")
    info = run_info(run, recipe)
    raw = load_dataset(info["dataset_arg"], modalities=info["modalities"], show_progress=False)
    data = standardize_features(raw, statistics=training_statistics(raw))
    trainer = selected_trainers(run, recipe, data)[seed]
    preds, labels, logits = trainer.predict(to_tensors(data)["test"])
    return torch.softmax(torch.from_numpy(logits), -1).numpy(), float((preds == labels).mean() * 100)
