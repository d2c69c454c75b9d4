"""Missing-modality masks: rates, patterns, seeds, protocols, mask files and imputation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import make_dataset
from merc.data.missing import (
    apply_missing,
    check_rate,
    drop_available,
    drop_modalities,
    impute,
    load_masks,
    missing_count_distribution,
    missing_patterns,
    read_masks,
    realized_missing_rate,
    save_masks,
)
from merc.data.schema import Conversation, MercDataset
from merc.data.synthetic import generate_synthetic
from merc.data.transforms import feature_statistics, standardize_features
from merc.errors import DataError

RATES = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 2 / 3]


@pytest.fixture(scope="module")
def synthetic() -> MercDataset:
    # ~2,500 utterances x 3 modalities: the realised rate's standard error is ~0.005.
    return generate_synthetic(seed=0)


def _avail(ds: MercDataset, split: str | None = None) -> np.ndarray:
    return np.concatenate([c.availability for c in ds.conversations(split)])


@pytest.mark.parametrize("rate", RATES)
def test_scheme_expectation_is_exactly_the_rate(rate: float) -> None:
    p = missing_count_distribution(rate, 3)
    assert p.sum() == pytest.approx(1.0)
    assert (np.arange(3) * p).sum() / 3 == pytest.approx(rate, abs=1e-9)


@pytest.mark.parametrize("rate", RATES)
def test_realised_rates_within_tolerance_overall_and_per_modality(synthetic: MercDataset, rate: float) -> None:
    masked = apply_missing(synthetic, rate, seed=3)
    assert realized_missing_rate(masked) == pytest.approx(rate, abs=0.02)
    per_modality = 1.0 - _avail(masked).mean(0)
    np.testing.assert_allclose(per_modality, rate, atol=0.03)


@pytest.mark.parametrize("rate", [0.3, 0.5, 2 / 3])
def test_no_utterance_loses_every_modality(synthetic: MercDataset, rate: float) -> None:
    assert _avail(apply_missing(synthetic, rate, seed=1)).any(1).all()
    two = synthetic.with_modalities("ta")
    assert _avail(apply_missing(two, 0.5, seed=1))[:, :2].any(1).all()


def test_all_seven_patterns_occur(synthetic: MercDataset) -> None:
    patterns = {tuple(row) for row in _avail(apply_missing(synthetic, 0.3, seed=0))}
    assert patterns == {tuple(p) for p in missing_patterns(3)}
    # Rate (M-1)/M: every utterance keeps exactly one modality.
    assert (_avail(apply_missing(synthetic, 2 / 3, seed=0)).sum(1) == 1).all()


def test_papers_grid_end_point_0_7_keeps_one_modality(synthetic: MercDataset) -> None:
    assert check_rate(0.7, 3) == pytest.approx(2 / 3)
    masked = apply_missing(synthetic, 0.7, seed=0)
    assert (_avail(masked).sum(1) == 1).all()
    assert masked.meta["missing"][-1]["requested_rate"] == 0.7
    with pytest.raises(DataError, match="outside"):
        apply_missing(synthetic, 0.75, seed=0)
    with pytest.raises(DataError, match="outside"):
        apply_missing(synthetic.with_modalities("ta"), 0.6, seed=0)
    with pytest.raises(DataError, match="outside"):
        apply_missing(synthetic.with_modalities("t"), 0.1, seed=0)


def test_same_seed_same_masks_different_seed_different(synthetic: MercDataset) -> None:
    a, b, c = (apply_missing(synthetic, 0.4, seed=s) for s in (5, 5, 6))
    np.testing.assert_array_equal(_avail(a), _avail(b))
    assert (_avail(a) != _avail(c)).mean() > 0.1


def test_masks_depend_on_dialogue_id_not_on_composition(synthetic: MercDataset) -> None:
    full = apply_missing(synthetic, 0.4, seed=2)
    only_test = MercDataset(
        name="x",
        label_names=synthetic.label_names,
        modalities=synthetic.modalities,
        splits={"test": list(reversed(synthetic.splits["test"]))},
    )
    alone = {c.id: c.availability for c in apply_missing(only_test, 0.4, seed=2, splits=["test"]).conversations()}
    for conv in full.conversations("test"):
        np.testing.assert_array_equal(conv.availability, alone[conv.id])


def test_masks_are_nested_across_rates(synthetic: MercDataset) -> None:
    low, high = _avail(apply_missing(synthetic, 0.2, seed=4)), _avail(apply_missing(synthetic, 0.5, seed=4))
    assert not (~low & high).any()  # missing at 0.2 -> missing at 0.5


def test_missing_features_are_zero_and_others_untouched(synthetic: MercDataset) -> None:
    masked = apply_missing(synthetic, 0.5, seed=0)
    for before, after in zip(synthetic.conversations(), masked.conversations(), strict=True):
        for k, m in enumerate("tav"):
            keep = after.availability[:, k]
            assert (after.features[m][~keep] == 0).all()
            np.testing.assert_array_equal(after.features[m][keep], before.features[m][keep])
        assert before.availability is None  # the input is not modified


def test_test_only_protocol_leaves_train_and_valid_complete(synthetic: MercDataset) -> None:
    masked = apply_missing(synthetic, 0.5, seed=0, protocol="test-only")
    for split in ("train", "valid"):
        for before, after in zip(synthetic.conversations(split), masked.conversations(split), strict=True):
            assert after.availability is None
            assert after.features["a"] is before.features["a"]
    assert realized_missing_rate(masked, "test") == pytest.approx(0.5, abs=0.05)
    info = masked.meta["missing"][-1]
    assert info["protocol"] == "test-only" and info["splits"] == ["test"]


def test_masking_twice_is_refused(synthetic: MercDataset) -> None:
    with pytest.raises(DataError, match="already has missing"):
        apply_missing(apply_missing(synthetic, 0.3, seed=0), 0.3, seed=1)


def test_drop_modalities_everywhere(synthetic: MercDataset) -> None:
    dropped = drop_modalities(synthetic, "av", protocol="test-only")
    avail = _avail(dropped, "test")
    assert avail[:, 0].all() and not avail[:, 1:].any()
    assert all(c.availability is None for c in dropped.conversations("train"))
    assert all((c.features["v"] == 0).all() for c in dropped.conversations("test"))
    with pytest.raises(DataError, match="leaves no modality"):
        drop_modalities(synthetic, "tav")
    with pytest.raises(DataError, match="cannot drop"):
        drop_modalities(synthetic.with_modalities("ta"), "v")


def test_saved_and_loaded_masks_are_identical(synthetic: MercDataset, tmp_path) -> None:
    masked = apply_missing(synthetic, 0.3, seed=9)
    path = save_masks(masked, tmp_path / "masks.npz")
    loaded = load_masks(synthetic, path)
    for a, b in zip(masked.conversations(), loaded.conversations(), strict=True):
        np.testing.assert_array_equal(a.availability, b.availability)
        for m in "tav":
            np.testing.assert_array_equal(a.features[m], b.features[m])
    masks, meta = read_masks(path)
    assert meta["missing"][-1]["rate"] == 0.3 and len(masks) == sum(len(s) for s in synthetic.splits.values())
    # No pickle inside: the file opens with allow_pickle=False (read_masks does).
    with np.load(path, allow_pickle=False) as data:
        assert data["availability"].dtype == bool


def test_mask_file_for_another_dataset_is_refused(synthetic: MercDataset, tmp_path) -> None:
    path = save_masks(apply_missing(synthetic, 0.3, seed=0), tmp_path / "m.npz")
    with pytest.raises(DataError, match="no mask for dialogue"):
        load_masks(make_dataset(), path)
    # Masks drawn over t, a, v may keep only v: not valid for the t+a view of the data.
    with pytest.raises(DataError, match="keeps none"):
        load_masks(synthetic.with_modalities("ta"), path)


def _tiny_incomplete() -> MercDataset:
    # One dialogue of 4 utterances, audio missing at utterances 1 and 3.
    t = np.arange(8, dtype=np.float32).reshape(4, 2)
    a = np.array([[1, 2], [0, 0], [5, 6], [0, 0]], dtype=np.float32)
    avail = np.array([[1, 1, 1], [1, 0, 1], [1, 1, 1], [1, 0, 1]], dtype=bool)
    conv = Conversation(
        id="d",
        speakers=["x", "y", "x", "y"],
        labels=np.zeros(4),
        features={"t": t, "a": a},
        availability=avail,
        split="train",
    )
    other = Conversation(
        id="e",
        speakers=["x"],
        labels=np.zeros(1),
        features={"t": np.ones((1, 2), np.float32), "a": np.full((1, 2), 9.0, np.float32)},
    )
    return MercDataset(
        name="tiny",
        label_names=["c0", "c1"],
        modalities=("t", "a"),
        splits={"train": [conv, other], "valid": [], "test": []},
    )


def test_imputation_values() -> None:
    ds = _tiny_incomplete()
    zero = impute(ds, "zero").splits["train"][0].features["a"]
    np.testing.assert_array_equal(zero[[1, 3]], 0.0)
    # MeanImp: mean of the available training audio rows (1,2), (5,6), (9,9).
    mean = impute(ds, "mean").splits["train"][0].features["a"]
    np.testing.assert_allclose(mean[[1, 3]], [[5.0, 17 / 3]] * 2, rtol=1e-6)
    # Neighbour: average of the dialogue's other utterances that have audio.
    nb = impute(ds, "neighbour").splits["train"][0].features["a"]
    np.testing.assert_allclose(nb[[1, 3]], [[3.0, 4.0], [3.0, 4.0]])
    # Window of one turn: utterance 3 only sees utterance 2.
    nb1 = impute(ds, "neighbour", window=1).splits["train"][0].features["a"]
    np.testing.assert_allclose(nb1[3], [5.0, 6.0])
    for out in (zero, mean, nb, nb1):
        np.testing.assert_array_equal(out[[0, 2]], [[1, 2], [5, 6]])  # available rows untouched
    kept = impute(ds, "mean").splits["train"][0]
    np.testing.assert_array_equal(kept.availability, ds.splits["train"][0].availability)
    assert impute(ds, "none") is ds
    with pytest.raises(Exception, match="imputation method"):
        impute(ds, "median")


def test_standardisation_after_imputation_keeps_the_raw_space_fill() -> None:
    """ZeroImp is a raw zero (-mean/std once z-scored); MeanImp and "none" both end at 0."""
    ds = _tiny_incomplete()
    mean, std = feature_statistics(ds, "a")  # available training rows only
    np.testing.assert_allclose(mean, [5.0, 17 / 3], rtol=1e-6)
    none = standardize_features(impute(ds, "none")).splits["train"][0].features["a"]
    zero = standardize_features(impute(ds, "zero")).splits["train"][0].features["a"]
    mean_imp = standardize_features(impute(ds, "mean")).splits["train"][0].features["a"]
    np.testing.assert_array_equal(none[[1, 3]], 0.0)
    np.testing.assert_allclose(zero[[1, 3]], np.broadcast_to(-mean / (std + 1e-6), (2, 2)), rtol=1e-5)
    np.testing.assert_allclose(mean_imp[[1, 3]], 0.0, atol=1e-6)
    for out in (zero, mean_imp):  # available rows are z-scored the same way whatever the fill
        np.testing.assert_allclose(out[[0, 2]], none[[0, 2]], rtol=1e-6)
    # Given statistics replace the split's (a test-only view has no training split).
    shifted = standardize_features(
        ds,
        statistics={
            "t": (np.zeros(2, np.float32), np.ones(2, np.float32)),
            "a": (np.ones(2, np.float32), np.ones(2, np.float32)),
        },
    )
    np.testing.assert_allclose(shifted.splits["train"][0].features["a"][0], [0.0, 1.0], atol=1e-5)


def test_drop_available_keeps_one_per_utterance_and_only_hides_available() -> None:
    g = torch.Generator().manual_seed(0)
    avail = torch.rand(2000, 3, generator=g) < 0.7
    avail[:, 0] |= ~avail.any(-1)
    hide = drop_available(avail, 0.5, generator=g)
    assert not (hide & ~avail).any()
    assert (avail & ~hide).any(-1).all()
    share = hide.sum() / avail.sum()
    assert 0.35 < float(share) < 0.5
    assert not drop_available(avail, 0.0).any()
