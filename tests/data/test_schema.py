"""Schema validation: every malformed input gets a DataError naming the problem."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import make_dataset
from merc.data.schema import parse_modalities
from merc.data.transforms import standardize_features
from merc.errors import DataError


def test_parse_modalities_canonical_order_and_errors() -> None:
    assert parse_modalities("vat") == ("t", "a", "v")
    assert parse_modalities("t,v") == ("t", "v")
    for bad, msg in [("x", "unknown modality"), ("tt", "repeated"), ("", "no modality")]:
        with pytest.raises(DataError, match=msg):
            parse_modalities(bad)


def test_valid_dataset_passes() -> None:
    make_dataset().validate()


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda c: c.features.__setitem__("t", c.features["t"][:, :-1]), "dim"),
        (lambda c: c.features["a"].__setitem__((0, 0), np.nan), "NaN"),
        (lambda c: setattr(c, "labels", np.array([7] * len(c))), "out of range"),
        (lambda c: c.features.__setitem__("v", c.features["v"][:-1]), "shape"),
        (lambda c: setattr(c, "speakers", c.speakers[:-1]), "speakers"),
    ],
)
def test_validate_rejects(corrupt, message) -> None:
    ds = make_dataset((3, 4))
    corrupt(ds.splits["valid"][1])
    with pytest.raises(DataError, match=message):
        ds.validate()


def test_empty_dialogue_rejected() -> None:
    ds = make_dataset((3, 4))
    conv = ds.splits["test"][0]
    ds.splits["test"][0] = conv.select_utterances(np.zeros(len(conv), bool))
    with pytest.raises(DataError, match="empty dialogue"):
        ds.validate()


def test_with_modalities_rejects_unavailable() -> None:
    ds = make_dataset(modalities="t")
    with pytest.raises(DataError, match="has no a features"):
        ds.with_modalities("ta")


def test_standardize_uses_train_statistics_only() -> None:
    ds = make_dataset((5, 6, 7))
    ds.splits["test"] = [c.replace(features={m: f + 100.0 for m, f in c.features.items()}) for c in ds.splits["test"]]
    z = standardize_features(ds)
    train = np.concatenate([c.features["t"] for c in z.splits["train"]])
    np.testing.assert_allclose(train.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(train.std(0), 1, atol=1e-3)
    # Test features were shifted by +100: standardised with *train* stats they stay far off.
    assert np.concatenate([c.features["t"] for c in z.splits["test"]]).mean() > 10
