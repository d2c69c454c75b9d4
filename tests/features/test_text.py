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
