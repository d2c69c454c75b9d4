"""Text features: the offline MiniLM encoder and the on-disk cache."""

from __future__ import annotations

import numpy as np
import pytest

from merc.features import text as text_features


def test_minilm_loads_offline_and_embeds(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    emb = text_features.encode_texts(
        ["I am so happy today!", "This is terrible.", "I am so happy today!"], show_progress=False
    )
    assert emb.shape == (3, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
    np.testing.assert_allclose(emb[0], emb[2], atol=1e-5)  # same text, same vector, whatever the batch order
    assert float(emb[0] @ emb[1]) < 0.9


def test_cache_is_keyed_by_dataset_encoder_and_text(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MERC_CACHE_DIR", str(tmp_path))
    calls = []

    def fake_encode(texts, **kwargs):
        calls.append(list(texts))
        return np.arange(len(texts) * 4, dtype=np.float32).reshape(len(texts), 4)

    monkeypatch.setattr(text_features, "encode_texts", fake_encode)
    a = text_features.cached_text_features("ds", ["x", "y"], show_progress=False)
    b = text_features.cached_text_features("ds", ["x", "y"], show_progress=False)
    np.testing.assert_array_equal(a, b)
    assert len(calls) == 1  # the second call read the cache
    text_features.cached_text_features("ds", ["x", "z"], show_progress=False)
    text_features.cached_text_features("other", ["x", "y"], show_progress=False)
    assert len(calls) == 3
    assert len(list((tmp_path / "features").glob("*.npy"))) == 3
    assert not list((tmp_path / "features").glob("*.tmp*"))


def test_unknown_encoder_is_a_clear_error() -> None:
    from merc.errors import ConfigError

    with pytest.raises(ConfigError, match="merc loads nothing from the internet"):
        text_features.encode_texts(["a"], encoder="some-hub/model-that-is-not-here")


# -- token level -------------------------------------------------------------------------------------
SENTENCES = ["I am so happy today!", "This is terrible.", "", "Okay, see you at noon."]


def test_token_states_average_to_the_sentence_embedding(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rows = text_features.encode_token_sequences(SENTENCES, show_progress=False)
    tokenizer = text_features.load_sentence_encoder().tokenizer
    assert [r.shape for r in rows] == [(len(tokenizer(s)["input_ids"]), 384) for s in SENTENCES]
    assert rows[2].shape == (2, 384)  # an empty text is [CLS] [SEP]
    assert all(r.dtype == np.float32 for r in rows)
    # MiniLM pools by the mean over every token, specials included, then L2-normalises.
    means = np.stack([r.mean(axis=0) for r in rows])
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    np.testing.assert_allclose(means, text_features.encode_texts(SENTENCES, show_progress=False), atol=1e-5)
    inner = text_features.encode_token_sequences(SENTENCES, show_progress=False, keep_special_tokens=False)
    assert [len(r) for r in inner] == [len(r) - 2 for r in rows]
    np.testing.assert_allclose(inner[0], rows[0][1:-1], atol=1e-6)


def test_token_cache_is_float16_and_read_back(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MERC_CACHE_DIR", str(tmp_path))
    calls = []

    def fake(texts, **kwargs):
        calls.append(kwargs["keep_special_tokens"])
        return [np.full((len(t) + 1, 3), 1 / 3, dtype=np.float32) for t in texts]

    monkeypatch.setattr(text_features, "encode_token_sequences", fake)
    first = text_features.cached_text_sequences("ds", ["ab", "c"], show_progress=False)
    again = text_features.cached_text_sequences("ds", ["ab", "c"], show_progress=False)
    assert len(calls) == 1 and [r.shape for r in again] == [(3, 3), (2, 3)]
    for x, y in zip(first, again):
        assert y.dtype == np.float32
        np.testing.assert_array_equal(x, y)  # a first run returns what the cache will hold
        np.testing.assert_allclose(y, 1 / 3, rtol=1e-3)
    (path,) = (tmp_path / "features").glob("ds--*--tokens--*.npz")
    with np.load(path) as data:
        assert data["values"].dtype == np.float16 and data["lengths"].tolist() == [3, 2]
    text_features.cached_text_sequences("ds", ["ab", "c"], show_progress=False, keep_special_tokens=False)
    text_features.cached_text_sequences("ds", ["ab", "d"], show_progress=False)
    assert len(calls) == 3 and not list((tmp_path / "features").glob("*.tmp*"))


def test_token_level_text_of_a_folder_through_the_registry_and_batches(tmp_path, monkeypatch) -> None:
    from helpers import make_dataset
    from merc.data.batching import collate, to_tensors
    from merc.data.formats.native import write_native
    from merc.data.registry import load_dataset

    monkeypatch.setenv("MERC_CACHE_DIR", str(tmp_path / "cache"))
    ds = make_dataset((2, 3), "a")
    for conv in ds.conversations():
        conv.texts = [SENTENCES[i % len(SENTENCES)] for i in range(len(conv))]
    write_native(ds, tmp_path / "ds")
    got = load_dataset(f"{tmp_path / 'ds'}@t", modalities="ta")
    assert got.meta["sequence_specs"]["t"]["special_tokens"].startswith("kept")
    conv = got.splits["train"][1]
    means = np.stack([r.mean(axis=0) for r in conv.sequences["t"]])
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    np.testing.assert_allclose(means, conv.features["t"], atol=2e-3)  # float16 cache
    batch = collate(to_tensors(got)["train"], got.modalities)
    assert batch.sequences["t"].shape[-1] == 384 and batch.sequence_lengths["t"].min() >= 2
