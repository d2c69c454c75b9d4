"""Emotion-shift curriculum (MultiDAG+CL eq. 8, Algorithm 1) as a trainer plug-in."""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pytest
import torch

from merc.data.batching import to_tensors
from merc.data.schema import UNLABELLED, Conversation, MercDataset
from merc.data.synthetic import generate_synthetic
from merc.errors import ConfigError, DataError
from merc.models import build_model
from merc.training.plugins import build_plugins
from merc.training.plugins.base import TrainerPlugin
from merc.training.plugins.curriculum import (
    EmotionShiftCurriculum,
    build_curriculum,
    difficulty_buckets,
    emotion_shift_difficulty,
)
from merc.training.trainer import TrainConfig, Trainer


@pytest.mark.parametrize(
    ("speakers", "labels", "expected"),
    [
        # Each speaker keeps its emotion; changes between speakers are not shifts: (0+2)/(4+2).
        ("ABAB", [0, 1, 0, 1], 2 / 6),
        # A: 0,2,0 -> 2 shifts; B: 1,1 -> 0: (2+2)/(5+2).
        ("ABABA", [0, 1, 2, 1, 0], 4 / 7),
        # One speaker 0,1,1 -> 1 shift: (1+1)/(3+1).
        ("AAA", [0, 1, 1], 2 / 4),
        # Three speakers; A: 3,3,4 (1), B: 0,1 (1), C: 2 (0): (2+3)/(6+3).
        ("ABACBA", [3, 0, 3, 2, 1, 4], 5 / 9),
        # A single utterance: (0+1)/(1+1).
        ("A", [5], 1 / 2),
        # Every utterance a shift for its speaker: A: 0,1,2 (2), B: 0,1,2 (2): (4+2)/(6+2).
        ("ABABAB", [0, 0, 1, 1, 2, 2], 6 / 8),
    ],
)
def test_difficulty_matches_hand_computed_eq8(speakers: str, labels: list[int], expected: float) -> None:
    assert emotion_shift_difficulty(labels, list(speakers)) == pytest.approx(expected)


def test_unlabelled_utterances_are_skipped_in_shifts_but_counted_in_n_u() -> None:
    # A: 0, ?, 1 -> one shift (0 vs 1); N_u = 3, N_sp = 1: (1+1)/(3+1).
    assert emotion_shift_difficulty([0, UNLABELLED, 1], ["A", "A", "A"]) == pytest.approx(0.5)
    # A: 0, ?, 0 -> no shift: (0+1)/(3+1).
    assert emotion_shift_difficulty(np.array([0, UNLABELLED, 0]), ["A", "A", "A"]) == pytest.approx(0.25)


def test_difficulty_errors() -> None:
    with pytest.raises(DataError):
        emotion_shift_difficulty([], [])
    with pytest.raises(DataError):
        emotion_shift_difficulty([0, 1], ["A"])


def test_buckets_are_sorted_balanced_and_stable() -> None:
    diffs = [0.9, 0.1, 0.5, 0.1, 0.7, 0.3, 0.5]
    buckets = difficulty_buckets(diffs, 3)
    assert buckets == [[1, 3, 5], [2, 6], [4, 0]]  # ties (1, 3) and (2, 6) keep dataset order
    flat = [i for b in buckets for i in b]
    assert sorted(flat) == list(range(len(diffs)))
    assert all(max(diffs[i] for i in a) <= min(diffs[j] for j in b) for a, b in zip(buckets, buckets[1:]))
    # Always k buckets (the ceil-sized chunks of the authors' code give 5 for n=9, k=6).
    assert len(difficulty_buckets(list(range(9)), 6)) == 6
    assert len(difficulty_buckets([0.1, 0.2], 5)) == 2
    with pytest.raises(ConfigError):
        difficulty_buckets([0.1], 0)


def test_schedule_adds_one_bucket_per_epoch_then_all() -> None:
    diffs = [0.6, 0.2, 0.9, 0.4, 0.1, 0.8, 0.3, 0.5]
    cur = EmotionShiftCurriculum(diffs, buckets=4)
    # Sorted: 4(.1) 1(.2) | 6(.3) 3(.4) | 7(.5) 0(.6) | 5(.8) 2(.9)
    assert cur.buckets == [[4, 1], [6, 3], [7, 0], [5, 2]]
    assert sorted(cur.select_training_dialogues(None, 0, list(range(8)))) == [1, 4]  # type: ignore[arg-type]
    assert sorted(cur.dialogues_for_epoch(1)) == [1, 3, 4, 6]
    assert sorted(cur.dialogues_for_epoch(2)) == [0, 1, 3, 4, 6, 7]
    for epoch in (3, 4, 29):
        assert sorted(cur.dialogues_for_epoch(epoch)) == list(range(8))
    # Respects a narrower selection made by an earlier plug-in, in its order.
    assert cur.select_training_dialogues(None, 1, [6, 0, 4]) == [6, 4]  # type: ignore[arg-type]


def test_state_round_trips_through_json_and_rejects_other_buckets() -> None:
    cur = EmotionShiftCurriculum([0.3, 0.1, 0.2], buckets=2)
    cur.select_training_dialogues(None, 1, [0, 1, 2])  # type: ignore[arg-type]
    state = json.loads(json.dumps(cur.state_dict()))
    fresh = EmotionShiftCurriculum([0.3, 0.1, 0.2], buckets=2)
    fresh.load_state_dict(state)
    assert fresh.last_epoch == 1 and fresh.buckets == cur.buckets
    with pytest.raises(ConfigError):
        EmotionShiftCurriculum([0.3, 0.1, 0.2], buckets=3).load_state_dict(state)
    with pytest.raises(ConfigError):
        EmotionShiftCurriculum([0.1, 0.3, 0.2], buckets=2).load_state_dict(state)


def _dataset() -> MercDataset:
    ds = generate_synthetic(num_dialogues=(10, 3, 3), min_len=3, max_len=9, dims={"t": 8, "a": 4}, seed=3)
    return ds


class _Recorder(TrainerPlugin):
    name = "recorder"

    def __init__(self) -> None:
        self.seen: dict[int, set[str]] = defaultdict(set)

    def on_batch_end(self, trainer, batch, output, loss) -> None:  # type: ignore[no-untyped-def]
        self.seen[trainer.epoch].update(batch.dialogue_ids)


def _trainer(
    ds: MercDataset, plugins: list[TrainerPlugin], epochs: int, model: str = "bclstm", run_dir=None
) -> Trainer:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    small = {"bclstm": {"hidden_size": 4, "dense_size": 4}, "multidag": {"hidden_size": 8, "num_layers": 1}}[model]
    net = build_model(model, in_dims=ds.dims, num_classes=ds.num_classes, **small)
    cfg = TrainConfig(epochs=epochs, batch_size=3, lr=0.01, patience=0, show_progress=False)
    return Trainer(net, to_tensors(ds), ds.modalities, ds.num_classes, cfg, plugins=plugins, run_dir=run_dir)


@pytest.mark.parametrize("model", ["bclstm", "multidag"])
def test_trainer_sees_only_the_scheduled_dialogues(model: str) -> None:
    ds = _dataset()
    plugins = build_plugins({"curriculum": {"strategy": "emotion-shift", "buckets": 3}}, ds)
    assert len(plugins) == 1 and isinstance(plugins[0], EmotionShiftCurriculum)
    cur = plugins[0]
    ids = [c.id for c in ds.splits["train"]]
    expected_diffs = [emotion_shift_difficulty(c.labels, c.speakers) for c in ds.splits["train"]]
    assert cur.difficulties == expected_diffs
    assert len(set(expected_diffs)) > 3  # the data really ranks dialogues
    rec = _Recorder()
    _trainer(ds, [cur, rec], epochs=5, model=model).fit()
    for epoch in range(5):
        expected = {ids[i] for b in cur.buckets[: min(epoch + 1, 3)] for i in b}
        assert rec.seen[epoch] == expected, epoch
    assert len(rec.seen[0]) == 4 and len(rec.seen[1]) == 7 and len(rec.seen[2]) == 10
    easiest, hardest = max(expected_diffs[i] for i in cur.buckets[0]), min(expected_diffs[i] for i in cur.buckets[-1])
    assert easiest <= hardest


def test_resumed_run_continues_the_schedule(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ds = _dataset()
    ids = [c.id for c in ds.splits["train"]]
    first = build_curriculum({"buckets": 4}, ds)
    assert first is not None
    _trainer(ds, [first], epochs=2, run_dir=tmp_path).fit()
    second = build_curriculum({"buckets": 4}, ds)
    assert second is not None
    rec = _Recorder()
    resumed = _trainer(ds, [second, rec], epochs=4, run_dir=tmp_path)
    resumed.fit()
    assert second.last_epoch == 3
    assert sorted(rec.seen) == [2, 3]
    assert rec.seen[2] == {ids[i] for b in second.buckets[:3] for i in b}
    assert rec.seen[3] == set(ids)
    # Resuming with another bucket count is refused, not silently re-scheduled.
    other = build_curriculum({"buckets": 5}, ds)
    assert other is not None
    with pytest.raises(ConfigError, match="curriculum"):
        _trainer(ds, [other], epochs=6, run_dir=tmp_path).fit()


def test_builder_options() -> None:
    ds = _dataset()
    assert build_curriculum({"strategy": "none", "buckets": 5}, ds) is None
    assert build_plugins({"curriculum": {"strategy": "none"}}, ds) == []
    with pytest.raises(ConfigError, match="buckets"):
        build_curriculum({"strategy": "emotion-shift"}, ds)
    with pytest.raises(ConfigError, match="emotion-shift"):
        build_curriculum({"strategy": "self-paced", "buckets": 5}, ds)
    with pytest.raises(ConfigError, match="bucket_number"):
        build_curriculum({"buckets": 5, "bucket_number": 5}, ds)
    for bad in (0, 2.5, "five", True):
        with pytest.raises(ConfigError):
            build_curriculum({"buckets": bad}, ds)
    assert build_curriculum({"strategy": "Emotion_Shift", "buckets": 12.0}, ds) is not None


def test_mismatched_training_set_is_an_error() -> None:
    ds = _dataset()
    cur = EmotionShiftCurriculum([0.1, 0.2], buckets=2)
    with pytest.raises(ConfigError, match="difficulties for 2"):
        _trainer(ds, [cur], epochs=1).fit()


def test_hand_built_dataset_order_is_train_split_order() -> None:
    convs = [
        Conversation(
            id="hard",
            speakers=list("ABAB"),
            labels=np.array([0, 1, 2, 0]),
            features={"t": np.zeros((4, 2), np.float32)},
        ),
        Conversation(
            id="easy",
            speakers=list("ABAB"),
            labels=np.array([0, 1, 0, 1]),
            features={"t": np.zeros((4, 2), np.float32)},
        ),
    ]
    ds = MercDataset(
        name="hand",
        label_names=["x", "y", "z"],
        splits={"train": convs, "valid": convs, "test": convs},
        modalities=("t",),
    )
    cur = build_curriculum({"buckets": 2}, ds)
    assert cur is not None
    assert cur.difficulties == pytest.approx([(2 + 2) / (4 + 2), 2 / 6])
    assert cur.dialogues_for_epoch(0) == [1]
