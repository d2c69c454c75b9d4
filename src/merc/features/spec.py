"""Feature specifications: how each modality's features of a dataset were made.

A trained model is only usable on new conversations whose features are made the same
way as its training features. The specification of a modality is a small JSON object,
recorded in ``MercDataset.meta["feature_specs"]`` where merc computes the features
(:func:`merc.data.registry.attach_text_features`), written into the run folder at
training time (``features.json``) and into model bundles (:mod:`merc.inference.bundle`):

- ``{"source": "text-encoder", "encoder": "all-MiniLM-L6-v2", "dim": 384, ...}``: sentence
  embeddings of the transcripts computed by merc (:mod:`merc.features.text`); ``merc
  predict`` computes them from the input's texts with exactly this encoder.
- ``{"source": "audio-extractor", "extractor": "egemaps", "library": "opensmile",
  "library_version": ..., "settings": {...}, "dim": 88}`` and ``{"source":
  "visual-extractor", "extractor": "faces", ...}``: features ``merc extract`` computed
  from the media the conversations point to (:mod:`merc.features.audio`,
  :mod:`merc.features.visual`); ``settings`` is everything that changes the output, so
  :func:`merc.features.extract.extractor_from_spec` rebuilds the same extractor.
- ``{"source": "provided", "dim": d}``: features that came with the data (a native
  folder's ``features/<m>.safetensors``, a published pickle, generated features); ``merc
  predict`` takes them from a native input folder, or treats the modality as missing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from merc.data.schema import MercDataset
from merc.errors import DataError

#: Sources of features merc knows.
FEATURE_SOURCES: tuple[str, ...] = ("text-encoder", "audio-extractor", "visual-extractor", "provided")
#: Sources computed from media files by an extractor.
MEDIA_SOURCES: tuple[str, ...] = ("audio-extractor", "visual-extractor")
#: Key of :attr:`MercDataset.meta` holding ``{modality: spec}``.
META_KEY = "feature_specs"


def text_encoder_spec(encoder: str, dim: int) -> dict[str, Any]:
    """The specification of MiniLM-style text features made by :func:`merc.features.text.encode_texts`.

    Args:
        encoder: Encoder name (``all-MiniLM-L6-v2``) or a local sentence-transformers folder.
        dim: Embedding width (384 for MiniLM).
    """
    from merc.features.text import encoder_version

    return {
        "source": "text-encoder",
        "encoder": encoder,
        "encoder_version": encoder_version(encoder),
        "library": "sentence-transformers",
        "pooling": "the encoder's own (mean for MiniLM)",
        "normalize_embeddings": True,
        "dim": int(dim),
    }


def text_token_spec(encoder: str, dim: int, keep_special_tokens: bool = True) -> dict[str, Any]:
    """The specification of token-level text made by :func:`merc.features.text.encode_token_sequences`.

    Recorded in ``meta["sequence_specs"]["t"]`` (not among the utterance-level
    :data:`META_KEY` specs: a model bundle's inputs stay the utterance features).
    """
    from merc.features.text import encoder_version

    return {
        "source": "text-encoder",
        "encoder": encoder,
        "encoder_version": encoder_version(encoder),
        "library": "sentence-transformers",
        "level": "token",
        "output": "last hidden states (token_embeddings), not normalised",
        "special_tokens": "kept ([CLS] first, [SEP] last)" if keep_special_tokens else "dropped",
        "cache_dtype": "float16",
        "dim": int(dim),
    }


#: Key of :attr:`MercDataset.meta` holding ``{modality: spec}`` of token/frame-level sequences.
SEQUENCE_META_KEY = "sequence_specs"


def feature_specs(dataset: MercDataset) -> dict[str, dict[str, Any]]:
    """``{modality: spec}`` for every attached modality of ``dataset``.

    A modality without a recorded specification (or whose recorded dim disagrees with
    the attached features) is ``{"source": "provided", "dim": d}``.
    """
    recorded = dataset.meta.get(META_KEY) or {}
    dims = dataset.dims
    out: dict[str, dict[str, Any]] = {}
    for m in dataset.modalities:
        spec = recorded.get(m) if isinstance(recorded, Mapping) else None
        if isinstance(spec, Mapping) and spec.get("dim") == dims[m] and spec.get("source") in FEATURE_SOURCES:
            out[m] = dict(spec)
        else:
            out[m] = {"source": "provided", "dim": int(dims[m])}
    return out


def record_spec(dataset: MercDataset, modality: str, spec: Mapping[str, Any]) -> None:
    """Record ``spec`` as how ``dataset``'s ``modality`` features were made (in place)."""
    specs = dict(dataset.meta.get(META_KEY) or {})
    specs[modality] = dict(spec)
    dataset.meta[META_KEY] = specs


def check_spec(modality: str, spec: Any, where: str) -> dict[str, Any]:
    """A specification read from a file, checked.

    Raises:
        DataError: Not an object with a known ``source`` and a positive integer ``dim``
            (and an ``encoder`` string for text-encoder features).
    """
    if not isinstance(spec, Mapping) or spec.get("source") not in FEATURE_SOURCES:
        raise DataError(f"{where}: feature specification of {modality!r} is not one merc knows ({spec!r})")
    dim = spec.get("dim")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise DataError(f"{where}: feature specification of {modality!r} has no valid dim ({dim!r})")
    if spec["source"] == "text-encoder" and not isinstance(spec.get("encoder"), str):
        raise DataError(f"{where}: text-encoder specification of {modality!r} names no encoder")
    if spec["source"] in MEDIA_SOURCES and not (
        isinstance(spec.get("extractor"), str) and isinstance(spec.get("settings"), Mapping)
    ):
        raise DataError(f"{where}: {spec['source']} specification of {modality!r} names no extractor and settings")
    return dict(spec)


def describe_spec(spec: Mapping[str, Any]) -> str:
    """One phrase: ``"all-MiniLM-L6-v2 sentence embeddings (384-d)"``, ``"egemaps features of the audio (opensmile, 88-d)"``."""
    if spec.get("source") == "text-encoder":
        return f"{spec.get('encoder')} sentence embeddings of the texts ({spec.get('dim')}-d)"
    if spec.get("source") in MEDIA_SOURCES:
        what = "audio" if spec["source"] == "audio-extractor" else "video frames"
        return f"{spec.get('extractor')} features of the {what} ({spec.get('library')}, {spec.get('dim')}-d)"
    return f"provided features ({spec.get('dim')}-d)"
