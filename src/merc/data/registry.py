"""The dataset registry: one place for every dataset's facts and loader.

A dataset is registered by name with :func:`register_dataset`; :func:`load_dataset`
builds it, attaches text features on first use (cached), keeps the requested
modalities and validates it. Label names, modalities and dims are read from the loaded
:class:`~merc.data.schema.MercDataset`, never copied into a model or trainer.

Token/frame-level sequences (``Conversation.sequences``, for token-level models) are
loaded only when asked, with ``load_dataset(..., sequences="ta")`` or, where only a
name can be given (``merc train --dataset``), a name ending in ``@`` and modality
letters: ``iemocap4@t``, ``iemocap6-synthav@tav``, ``synthetic@av``, ``data/mine@a``
(:func:`split_sequence_request`). Who provides them:

- a loader with a ``sequences`` parameter makes what it can (the synthetic generators
  make frames of their generated modalities, :func:`merc.data.synthetic.add_frames`);
- a native folder reads its stored ``sequences/<m>.safetensors``;
- text that is still missing is computed from the transcripts: the sentence encoder's
  token states, cached (:func:`attach_text_sequences`);
- anything else is a :class:`~merc.errors.DataError` saying how to make it.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from merc.data.schema import MODALITY_NAMES, MercDataset, parse_modalities
from merc.errors import ConfigError, DataError

#: A loader gets the data root (``None`` for datasets that need none) and keyword
#: options, and returns a dataset whose conversations carry texts and/or features.
Loader = Callable[..., MercDataset]


@dataclass(frozen=True)
class DatasetSpec:
    """What the registry knows about a dataset before loading it.

    Attributes:
        name: Registry name.
        loader: Builds the dataset (see :data:`Loader`).
        description: One paragraph; must say if any features are generated.
        modalities: Modalities the dataset can provide (text may be computed).
        needs_data_root: Whether the loader reads files under the data root.
        annotations_of: Another dataset with the same dialogues, speakers and labels;
            summaries (``merc datasets``) read that one instead of building features.
        recipe_defaults: Values a recipe's plug-in sections take on this dataset unless
            the recipe or the command line sets them, e.g. ``{"curriculum": {"buckets": 5}}``
            (MultiDAG+CL Table 4's best bucket count for IEMOCAP).
    """

    name: str
    loader: Loader
    description: str
    modalities: tuple[str, ...]
    needs_data_root: bool = True
    annotations_of: str | None = None
    recipe_defaults: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


_DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(
    name: str,
    description: str,
    modalities: str = "t",
    needs_data_root: bool = True,
    annotations_of: str | None = None,
    recipe_defaults: Mapping[str, Mapping[str, Any]] | None = None,
) -> Callable[[Loader], Loader]:
    """Decorator registering a loader under ``name`` (arguments: :class:`DatasetSpec`)."""

    def deco(fn: Loader) -> Loader:
        if name in _DATASETS:
            raise ValueError(f"dataset {name!r} registered twice")
        _DATASETS[name] = DatasetSpec(
            name,
            fn,
            description,
            parse_modalities(modalities),
            needs_data_root,
            annotations_of,
            dict(recipe_defaults or {}),
        )
        return fn

    return deco


def list_datasets() -> list[str]:
    _import_builtin_datasets()
    return sorted(_DATASETS)


def get_dataset_spec(name: str) -> DatasetSpec:
    _import_builtin_datasets()
    if name not in _DATASETS:
        raise ConfigError(
            f"unknown dataset {name!r}; choose one of: {', '.join(sorted(_DATASETS))} (see `merc datasets`)"
        )
    return _DATASETS[name]


#: Separates a dataset name from the modalities whose sequences to load (``iemocap4@t``).
SEQUENCE_SEPARATOR = "@"


def split_sequence_request(name: str) -> tuple[str, tuple[str, ...]]:
    """``"iemocap4@ta"`` -> ``("iemocap4", ("t", "a"))``; a name without ``@`` -> ``(name, ())``.

    An existing file or folder whose own name contains ``@`` is taken as it is.

    Raises:
        DataError: The letters after ``@`` are not modalities.

    >>> split_sequence_request("iemocap6-synthav@va")
    ('iemocap6-synthav', ('a', 'v'))
    """
    if SEQUENCE_SEPARATOR not in name or Path(name).exists():
        return name, ()
    base, letters = name.rsplit(SEQUENCE_SEPARATOR, 1)
    return base, parse_modalities(letters)


def dataset_recipe_defaults(name: str) -> Mapping[str, Mapping[str, Any]]:
    """:attr:`DatasetSpec.recipe_defaults` of a registered dataset; nothing for a user's path."""
    name = split_sequence_request(name)[0]
    if is_dataset_path(name):
        return {}
    return get_dataset_spec(name).recipe_defaults


def _import_builtin_datasets() -> None:
    # Importing the modules runs their @register_dataset decorators.
    from merc.data import corpora, synthetic  # noqa: F401


def repo_root() -> Path:
    """The checkout root when merc runs from a source tree (``src/merc/..``)."""
    return Path(__file__).resolve().parents[3]


def resolve_data_root(data_root: str | os.PathLike[str] | None = None) -> Path:
    """The folder holding ``iemocap/`` and ``meld/``.

    Looks at, in order: the ``data_root`` argument (``--data-root``), ``$MERC_DATA_ROOT``,
    and ``../shared/data`` beside the checkout.

    Raises:
        DataError: none of them exists.
    """
    candidates: list[tuple[str, Path]] = []
    if data_root is not None:
        candidates.append(("--data-root", Path(data_root)))
    elif os.environ.get("MERC_DATA_ROOT"):
        candidates.append(("MERC_DATA_ROOT", Path(os.environ["MERC_DATA_ROOT"])))
    else:
        candidates.append(("default", repo_root().parent / "shared" / "data"))
    source, path = candidates[0]
    if not path.is_dir():
        raise DataError(
            f"data root not found: {path} ({source}); pass --data-root DIR or set MERC_DATA_ROOT "
            "to the folder that holds iemocap/ and meld/"
        )
    return path


def load_dataset(
    name: str,
    modalities: str | Sequence[str] | None = None,
    data_root: str | os.PathLike[str] | None = None,
    text_encoder: str | None = None,
    validate: bool = True,
    show_progress: bool = True,
    sequences: str | Sequence[str] | None = None,
    **options: Any,
) -> MercDataset:
    """Build a registered dataset with the requested modalities' features attached.

    Args:
        name: Registry name (``merc datasets`` lists them), or a dataset path; either
            may end in ``@`` + modality letters to ask for sequences (module docstring).
        modalities: e.g. ``"tav"``; ``None`` keeps every modality the loader attached
            and attaches no computed text features (annotations only, fast).
        data_root: See :func:`resolve_data_root`; ignored by datasets that need none.
        text_encoder: Sentence encoder for computed text features (default MiniLM).
        validate: Run :meth:`MercDataset.validate`.
        sequences: Modalities whose token/frame-level sequences to attach, besides
            those the name asks for (e.g. ``"t"``). Default none: no sequences, as
            fast as before.
        **options: Loader-specific options (e.g. ``seed`` for synthetic data).

    Raises:
        ConfigError: unknown dataset.
        DataError: missing files, unavailable modality or invalid data.
    """
    name, from_name = split_sequence_request(name)
    wanted = parse_modalities(sorted(set(from_name) | set(sequences or ()))) if from_name or sequences else ()
    if is_dataset_path(name):
        if Path(name).is_dir():
            from merc.data.formats.native import read_metadata, read_native

            stored = set(read_metadata(name).get("sequence_dims") or {})
            dataset = read_native(name, read_sequences=[m for m in wanted if m in stored])
        else:
            dataset = read_dataset_path(name, **options)
    else:
        spec = get_dataset_spec(name)
        root = resolve_data_root(data_root) if spec.needs_data_root else None
        if wanted and "sequences" in inspect.signature(spec.loader).parameters:
            options = {**options, "sequences": wanted}
        dataset = spec.loader(root, **options) if spec.needs_data_root else spec.loader(**options)
    if modalities is not None:
        mods = parse_modalities(modalities)
        outside = [m for m in wanted if m not in mods]
        if outside:
            raise ConfigError(
                f"{MODALITY_NAMES[outside[0]]} sequences asked for, but modality {outside[0]!r} is not among "
                f"--modalities {''.join(mods)}; add it or drop it from the sequences"
            )
        if "t" in mods and "t" not in dataset.modalities:
            attach_text_features(dataset, text_encoder=text_encoder, show_progress=show_progress)
        _refer_to_extract(name, [m for m in mods if m in ("a", "v") and m not in dataset.modalities])
    _attach_sequences(dataset, name, wanted, text_encoder, show_progress)
    if modalities is not None:
        dataset = dataset.with_modalities(parse_modalities(modalities))
    if validate:
        dataset.validate()
    return dataset


def _attach_sequences(
    dataset: MercDataset, name: str, wanted: Sequence[str], text_encoder: str | None, show_progress: bool
) -> None:
    """Give ``dataset`` the requested sequences its loader did not provide (module docstring), in place."""
    for m in wanted:
        if all(m in c.sequences for c in dataset.conversations()):
            continue
        if m == "t" and all(c.texts is not None for c in dataset.conversations()):
            attach_text_sequences(dataset, text_encoder=text_encoder, show_progress=show_progress)
            continue
        if m == "t":
            how = "its dialogues need transcripts (texts), from which merc computes token states"
        elif is_dataset_path(name) and Path(name).is_dir():
            how = f"compute them once with `merc extract --dataset {name} --modalities {m} --level sequence`"
        else:
            how = (
                "merc has no frames of it; export it (merc export), point its conversations to media and run "
                f"`merc extract --modalities {m} --level sequence`"
            )
        raise DataError(f"dataset {name!r} has no {MODALITY_NAMES[m]} sequences: {how}")


def _refer_to_extract(name: str, absent: Sequence[str]) -> None:
    """Audio / visual features a native folder lacks but could have: say how to compute them."""
    if not absent or not (is_dataset_path(name) and Path(name).is_dir()):
        return
    from merc.data.formats.native import read_media

    media = read_media(name)
    computable = [m for m in absent if any(any(s is not None for s in cm.stream(m)) for cm in media.values())]
    if computable:
        letters = "".join(computable)
        raise DataError(
            f"dataset {name} has no {', '.join(MODALITY_NAMES[m] for m in computable)} features yet, but its "
            f"conversations name media files: compute them once with `merc extract --dataset {name} "
            f"--modalities {letters}`"
        )


def is_dataset_path(name: str) -> bool:
    """Whether ``name`` names a file or folder rather than a registered dataset."""
    return "/" in name or name.endswith(".pkl") or Path(name).exists()


def read_dataset_path(path: str | os.PathLike[str], **options: Any) -> MercDataset:
    """Read users' data: a merc folder (``metadata.json``) or a published feature pickle.

    Pickles are recognised by their structure: a dict with ``train``/``dev``/``test`` is
    CORECT's ``data_<dataset>.pkl``; a 9- or 10-tuple is the DialogueGCN/MMGCN layout.
    """
    from merc.data.formats.corect import read_corect_pickle
    from merc.data.formats.dialoguegcn import read_dialoguegcn_pickle
    from merc.data.formats.native import read_native
    from merc.data.safe_pickle import safe_load_pickle

    p = Path(path)
    if p.is_dir():
        return read_native(p)
    if not p.is_file():
        raise DataError(
            f"dataset path not found: {p}; give a registered name (merc datasets) or an existing file/folder"
        )
    head = safe_load_pickle(p)
    if isinstance(head, dict):
        return read_corect_pickle(p, name=p.stem, **options)
    return read_dialoguegcn_pickle(p, name=p.stem, **options)


def attach_text_features(dataset: MercDataset, text_encoder: str | None = None, show_progress: bool = True) -> None:
    """Compute (or read from cache) sentence embeddings of every transcript, in place.

    Records how they were made in ``dataset.meta["feature_specs"]["t"]``
    (:func:`merc.features.spec.text_encoder_spec`), which training writes into the run
    folder so that ``merc predict`` encodes new texts the same way.

    Raises:
        DataError: A dialogue has no transcripts (named in the message).
    """
    from merc.features.spec import record_spec, text_encoder_spec
    from merc.features.text import DEFAULT_TEXT_ENCODER, cached_text_features

    convs = list(dataset.conversations())
    without = [c for c in convs if c.texts is None]
    if without:
        more = f" (and {len(without) - 1} more)" if len(without) > 1 else ""
        raise DataError(
            f'dataset {dataset.name!r}: dialogue {without[0].id!r}{more} has no transcripts ("texts": null), '
            "so text features cannot be computed; add its texts, or give features/t.safetensors"
        )
    texts = [t for c in convs for t in c.texts or []]
    encoder = text_encoder or DEFAULT_TEXT_ENCODER
    feats = cached_text_features(
        dataset.meta.get("text_cache_key", dataset.name),
        texts,
        encoder=encoder,
        show_progress=show_progress,
    )
    offsets = np.cumsum([0] + [len(c) for c in convs])
    for conv, start, end in zip(convs, offsets[:-1], offsets[1:]):
        conv.features["t"] = feats[start:end]
    dataset.modalities = tuple(m for m in ("t", "a", "v") if m == "t" or m in dataset.modalities)
    record_spec(dataset, "t", text_encoder_spec(encoder, int(feats.shape[1])))


def attach_text_sequences(
    dataset: MercDataset,
    text_encoder: str | None = None,
    show_progress: bool = True,
    keep_special_tokens: bool = True,
) -> None:
    """Attach token-level text (the sentence encoder's hidden states, cached) to every utterance, in place.

    ``conv.sequences["t"]`` becomes a list of ``float32 [L_i, 384]`` (MiniLM), with
    ``[CLS]`` and ``[SEP]`` by default (:mod:`merc.features.text`); how they were made
    goes to ``dataset.meta["sequence_specs"]["t"]``. The cache key is the one of the
    utterance-level text features (``meta["text_cache_key"]``, the texts' hash), so
    ``iemocap6`` and ``iemocap6-synthav`` share one entry.

    Raises:
        DataError: A dialogue has no transcripts.
    """
    from merc.features.spec import SEQUENCE_META_KEY, text_token_spec
    from merc.features.text import DEFAULT_TEXT_ENCODER, cached_text_sequences

    convs = list(dataset.conversations())
    without = [c for c in convs if c.texts is None]
    if without:
        raise DataError(
            f"dataset {dataset.name!r}: dialogue {without[0].id!r} has no transcripts, so token-level text "
            "cannot be computed"
        )
    encoder = text_encoder or DEFAULT_TEXT_ENCODER
    rows = cached_text_sequences(
        dataset.meta.get("text_cache_key", dataset.name),
        [t for c in convs for t in c.texts or []],
        encoder=encoder,
        show_progress=show_progress,
        keep_special_tokens=keep_special_tokens,
    )
    offsets = np.cumsum([0] + [len(c) for c in convs])
    for conv, start, end in zip(convs, offsets[:-1], offsets[1:]):
        # A new dict: conversations copied with ``replace`` share the old one.
        conv.sequences = {**conv.sequences, "t": rows[start:end]}
    specs = dict(dataset.meta.get(SEQUENCE_META_KEY) or {})
    specs["t"] = text_token_spec(encoder, int(rows[0].shape[1]), keep_special_tokens)
    dataset.meta[SEQUENCE_META_KEY] = specs
