"""Token/frame-level sequences: batching, availability, native storage, registry requests, generators."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

from helpers import make_dataset
from merc.data.batching import collate, iterate_batches, sequence_dims, to_tensors
from merc.data.formats.native import read_native, write_native
from merc.data.registry import load_dataset, split_sequence_request
from merc.data.schema import MODALITIES, MercDataset
from merc.data.synthetic import add_frames, add_generated_av, generate_synthetic, proxy_wf1
from merc.errors import ConfigError, DataError
from merc.models.base import MercModel

SEQ_DIMS = {"t": 5, "a": 3}


def _with_sequences(
    lengths: tuple[int, ...] = (1, 7, 3, 5), seed: int = 0, unavailable: float = 0.0, max_frames: int = 9
) -> MercDataset:
    """``make_dataset`` plus random sequences of t and a (some utterances of 0 frames, some unavailable)."""
    ds = make_dataset(lengths, "tav", seed=seed)
    rng = np.random.default_rng(seed + 100)
    for conv in ds.conversations():
        n = len(conv)
        conv.sequences = {
            m: [rng.normal(size=(int(rng.integers(0, max_frames + 1)), d)).astype(np.float32) for _ in range(n)]
            for m, d in SEQ_DIMS.items()
        }
        if unavailable:
            conv.availability = rng.random((n, len(MODALITIES))) >= unavailable
    return ds


def _reference(ds: MercDataset, split: str, m: str) -> tuple[list[np.ndarray], list[int]]:
    """Per utterance of ``split`` (dialogue-major), the frames a model may see and their count."""
    rows, lengths = [], []
    col = MODALITIES.index(m)
    for conv in ds.conversations(split):
        for i, frames in enumerate(conv.sequences[m]):
            seen = conv.availability is None or bool(conv.availability[i, col])
            rows.append(frames if seen else frames[:0])
            lengths.append(len(frames) if seen else 0)
    return rows, lengths


# -- batching ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("unavailable", [0.0, 0.4])
def test_collate_pads_each_utterance_like_a_brute_force_reference(unavailable: float) -> None:
    ds = _with_sequences(unavailable=unavailable)
    assert sequence_dims(ds) == SEQ_DIMS
    items = to_tensors(ds)["train"]
    batch = collate(items, ds.modalities)
    assert set(batch.sequences) == {"t", "a"} == set(batch.sequence_lengths)
    for m, d in SEQ_DIMS.items():
        rows, lengths = _reference(ds, "train", m)
        seq, lens = batch.sequences[m], batch.sequence_lengths[m]
        assert seq.shape == (batch.num_utterances, max(max(lengths), 1), d) and seq.dtype == torch.float32
        assert lens.dtype == torch.long and lens.tolist() == lengths
        for k, frames in enumerate(rows):
            assert torch.equal(seq[k, : len(frames)], torch.as_tensor(frames))
            assert (seq[k, len(frames) :] == 0).all()  # zero past each length
    if unavailable:
        assert (batch.sequence_lengths["a"] == 0).sum() > (
            sum(1 for c in ds.conversations("train") for r in c.sequences["a"] if len(r) == 0)
        )


def test_sequences_follow_the_batch_composition() -> None:
    ds = _with_sequences()
    items = to_tensors(ds)["train"]
    whole = collate(items, ds.modalities)
    part = collate([items[2], items[0]], ds.modalities)
    starts = np.cumsum([0, *(len(c) for c in ds.conversations("train"))])
    order = [*range(starts[2], starts[3]), *range(starts[0], starts[1])]
    lens = part.sequence_lengths["t"]
    assert lens.tolist() == whole.sequence_lengths["t"][order].tolist()
    width = part.sequences["t"].shape[1]
    assert torch.equal(part.sequences["t"], whole.sequences["t"][order, :width])


def test_a_batch_without_frames_still_has_one_zero_frame_per_utterance() -> None:
    ds = _with_sequences(max_frames=0)
    batch = collate(to_tensors(ds)["train"], ds.modalities)
    assert batch.sequences["a"].shape == (batch.num_utterances, 1, 3)
    assert not batch.sequences["a"].any() and not batch.sequence_lengths["a"].any()


def test_datasets_without_sequences_batch_as_before() -> None:
    ds = make_dataset((2, 3), "ta")
    items = to_tensors(ds)["train"]
    assert all(not it.sequences and not it.sequence_lengths for it in items)
    batch = next(iterate_batches(items, ds.modalities, batch_size=4))
    assert batch.sequences == {} and batch.sequence_lengths == {}


def test_only_the_selected_modalities_sequences_are_built() -> None:
    ds = _with_sequences().with_modalities("a")
    assert sequence_dims(ds) == {"a": 3}
    batch = collate(to_tensors(ds)["valid"], ds.modalities)
    assert set(batch.sequences) == {"a"}
    moved = batch.to("cpu")
    assert torch.equal(moved.sequences["a"], batch.sequences["a"])
    assert torch.equal(moved.sequence_lengths["a"], batch.sequence_lengths["a"])


def test_inconsistent_frame_dims_are_refused() -> None:
    ds = _with_sequences()
    conv = ds.splits["valid"][0]
    conv.sequences["t"] = [np.zeros((2, 4), np.float32)] * len(conv)
    with pytest.raises(DataError, match="'t' sequences have dim"):
        to_tensors(ds)


class _SeesAvailability(MercModel):
    """Just enough of a model to call :meth:`MercModel.apply_availability`."""

    model_name: ClassVar[str] = "sees-availability"
    models_missing: ClassVar[bool] = True


def test_hidden_utterances_lose_their_frames_too() -> None:
    ds = _with_sequences(lengths=(6, 9, 7, 8))
    batch = collate(to_tensors(ds)["train"], ds.modalities)
    model = _SeesAvailability(in_dims={"t": 12, "a": 6, "v": 8}, num_classes=3)
    model.train_mask_rate = 0.5
    torch.manual_seed(0)
    seen = model.train().apply_availability(batch)
    assert seen.complete is batch
    for k, m in enumerate(model.modalities):
        if m not in SEQ_DIMS:
            continue
        visible = batch.flatten(seen.availability[..., k])
        assert (~visible).any() and visible.any()
        lens = seen.sequence_lengths[m]
        assert (lens[~visible] == 0).all() and not seen.sequences[m][~visible].any()
        assert torch.equal(lens[visible], batch.sequence_lengths[m][visible])
        assert torch.equal(seen.sequences[m][visible], batch.sequences[m][visible])
    unchanged = model.eval().apply_availability(batch)
    assert torch.equal(unchanged.sequence_lengths["t"], batch.sequence_lengths["t"])


# -- native storage ----------------------------------------------------------------------------------
def test_native_round_trip_of_sequences_is_bit_exact(tmp_path: Path) -> None:
    ds = _with_sequences()
    write_native(ds, tmp_path / "ds")
    meta = json.loads((tmp_path / "ds" / "metadata.json").read_text())
    assert meta["sequence_dims"] == SEQ_DIMS and meta["format_version"] == 1
    back = read_native(tmp_path / "ds")
    for before, after in zip(ds.conversations(), back.conversations(), strict=True):
        assert set(after.sequences) == set(SEQ_DIMS)
        for m in SEQ_DIMS:
            assert len(after.sequences[m]) == len(before.sequences[m])
            for x, y in zip(before.sequences[m], after.sequences[m], strict=True):
                assert y.dtype == np.float32 and y.shape == x.shape
                assert x.tobytes() == y.tobytes()
    only_a = read_native(tmp_path / "ds", read_sequences="a")
    assert all(set(c.sequences) == {"a"} for c in only_a.conversations())
    assert all(not c.sequences for c in read_native(tmp_path / "ds", read_sequences=False).conversations())


def test_folders_without_sequences_load_as_before(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_native(make_dataset((2, 3), "ta"), tmp_path / "ds")
    meta = json.loads((tmp_path / "ds" / "metadata.json").read_text())
    assert "sequence_dims" not in meta and not (tmp_path / "ds" / "sequences").exists()
    back = read_native(tmp_path / "ds")
    assert all(not c.sequences for c in back.conversations())
    with pytest.raises(DataError, match="no stored 't' sequences"):
        read_native(tmp_path / "ds", read_sequences="t")
    assert "dropped" not in caplog.text


def test_damaged_sequence_files_are_named(tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    write_native(_with_sequences(), tmp_path / "ds")
    path = tmp_path / "ds" / "sequences" / "a.safetensors"
    tensors = load_file(path)
    key = next(k for k in tensors if k.endswith("/offsets"))
    tensors[key] = tensors[key][:-1]
    save_file(tensors, path)
    with pytest.raises(DataError, match="offsets of"):
        read_native(tmp_path / "ds")
    meta_path = tmp_path / "ds" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["sequence_dims"]["t"] = 0
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(DataError, match="sequence_dims"):
        read_native(tmp_path / "ds")


def test_a_native_folder_name_asks_for_its_sequences(tmp_path: Path) -> None:
    write_native(_with_sequences(), tmp_path / "ds")
    plain = load_dataset(str(tmp_path / "ds"), modalities="ta")
    assert all(not c.sequences for c in plain.conversations())
    asked = load_dataset(f"{tmp_path / 'ds'}@a", modalities="ta")
    assert all(set(c.sequences) == {"a"} for c in asked.conversations())
    with pytest.raises(DataError, match="merc extract --dataset .* --modalities v --level sequence"):
        load_dataset(f"{tmp_path / 'ds'}@v", modalities="tav")


# -- registry and runner -----------------------------------------------------------------------------
def test_sequence_requests_in_names() -> None:
    assert split_sequence_request("iemocap4") == ("iemocap4", ())
    assert split_sequence_request("iemocap4@t") == ("iemocap4", ("t",))
    assert split_sequence_request("synthetic@va") == ("synthetic", ("a", "v"))
    with pytest.raises(DataError, match="unknown modality"):
        split_sequence_request("synthetic@x")


def test_synthetic_frames_through_the_registry() -> None:
    small: dict[str, Any] = {"num_dialogues": (3, 2, 2), "seed": 2}
    plain = load_dataset("synthetic", modalities="tav", **small)
    framed = load_dataset("synthetic@av", modalities="tav", **small)
    assert all(not c.sequences for c in plain.conversations())
    for a, b in zip(plain.conversations(), framed.conversations(), strict=True):
        assert set(b.sequences) == {"a", "v"}
        for m in "tav":
            np.testing.assert_array_equal(a.features[m], b.features[m])
    with pytest.raises(ConfigError, match="not among --modalities"):
        load_dataset("synthetic@av", modalities="ta", **small)
    # Generated text gets generated frames too (there are no transcripts to tokenise).
    text = load_dataset("synthetic", modalities="t", sequences="t", num_dialogues=(2, 1, 1), dims={"t": 4})
    assert sequence_dims(text) == {"t": 4}


def test_text_sequences_need_transcripts(tmp_path: Path) -> None:
    write_native(make_dataset((2, 3), "ta"), tmp_path / "ds")
    with pytest.raises(DataError, match="no text sequences: its dialogues need transcripts"):
        load_dataset(f"{tmp_path / 'ds'}@t", modalities="ta")


def test_model_for_passes_sequence_dims_to_models_that_take_them(monkeypatch: pytest.MonkeyPatch) -> None:
    from merc.training import runner

    class TakesSequences:
        def __init__(self, in_dims: dict[str, int], num_classes: int, sequence_dims: dict[str, int]) -> None: ...

    class TakesNone:
        def __init__(self, in_dims: dict[str, int], num_classes: int) -> None: ...

    seen: list[dict[str, Any]] = []
    monkeypatch.setattr(runner, "build_model", lambda name, **kwargs: seen.append(kwargs))
    ds = _with_sequences()
    monkeypatch.setattr(runner, "get_model_class", lambda name: TakesSequences)
    runner.model_for(ds, "x", {})
    assert seen[-1]["sequence_dims"] == SEQ_DIMS
    monkeypatch.setattr(runner, "get_model_class", lambda name: TakesNone)
    runner.model_for(ds, "x", {})
    assert "sequence_dims" not in seen[-1]


# -- generators --------------------------------------------------------------------------------------
def test_frames_average_to_the_utterance_vectors_and_change_nothing_else() -> None:
    plain = generate_synthetic(num_dialogues=(6, 3, 3), seed=5)
    framed = generate_synthetic(num_dialogues=(6, 3, 3), seed=5, sequence_modalities="av", frames_per_utterance=(2, 6))
    assert framed.meta["frames"]["modalities"] == ["a", "v"]
    lengths = []
    for a, b in zip(plain.conversations(), framed.conversations(), strict=True):
        np.testing.assert_array_equal(a.labels, b.labels)
        assert "t" not in b.sequences
        for m in "tav":
            np.testing.assert_array_equal(a.features[m], b.features[m])
        for m in "av":
            rows = b.sequences[m]
            assert len(rows) == len(b)
            lengths += [len(r) for r in rows]
            means = np.stack([r.mean(axis=0) for r in rows])
            np.testing.assert_allclose(means, b.features[m], atol=1e-5)
            # The frames do vary around that mean (the frame noise is not zero).
            assert max(float(r.std(axis=0).mean()) for r in rows) > 0.5
    assert min(lengths) == 2 and max(lengths) == 6


def test_frames_of_semi_synthetic_data_keep_its_published_profile() -> None:
    base = generate_synthetic(num_dialogues=(40, 10, 10), dims={"t": 16}, seed=1)
    generated = add_generated_av(base, dims={"a": 12, "v": 12}, calibrate=False, informativeness={"a": 2, "v": 1})
    framed = add_frames(generated, "av", frame_noise=2.0, seed=3)
    for m in ("a", "v", "tav"):
        assert proxy_wf1(framed, m) == proxy_wf1(generated, m)
    conv = framed.splits["test"][0]
    np.testing.assert_allclose(np.stack([r.mean(0) for r in conv.sequences["v"]]), conv.features["v"], atol=1e-5)
    with pytest.raises(ConfigError, match="frames_per_utterance"):
        add_frames(generated, "a", frames_per_utterance=(0, 3))


def test_validate_checks_sequences() -> None:
    ds = _with_sequences()
    ds.validate()
    conv = ds.splits["test"][1]
    conv.sequences["a"][0] = np.full((2, 3), np.nan, np.float32)
    with pytest.raises(DataError, match="audio sequences contain NaN"):
        ds.validate()
    conv.sequences["a"] = conv.sequences["a"][:-1]
    with pytest.raises(DataError, match="one array per utterance"):
        ds.validate()


def test_the_trainer_hands_the_sequences_to_the_model() -> None:
    from merc.models.registry import build_model
    from merc.training.trainer import TrainConfig, Trainer

    ds = load_dataset("synthetic@a", modalities="ta", num_dialogues=(4, 2, 2), seed=1)
    model = build_model("bclstm", in_dims=ds.dims, num_classes=ds.num_classes)
    seen: list[Any] = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    config = TrainConfig.from_dict({"epochs": 1, "show_progress": False, "batch_size": 2})
    Trainer(model, to_tensors(ds), ds.modalities, ds.num_classes, config).fit()
    assert seen and all(set(b.sequences) == {"a"} for b in seen)
    assert all(b.sequences["a"].shape[0] == b.num_utterances == b.sequence_lengths["a"].shape[0] for b in seen)
