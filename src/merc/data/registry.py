"""The dataset registry: one place for every dataset's facts and loader.

A dataset is registered by name with :func:`register_dataset`; :func:`load_dataset`
builds it, attaches text features on first use (cached), keeps the requested
modalities and validates it. Label names, modalities and dims are read from the loaded
:class:`~merc.data.schema.MercDataset`, never copied into a model or trainer.
"""

from __future__ import annotations

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


def dataset_recipe_defaults(name: str) -> Mapping[str, Mapping[str, Any]]:
    """:attr:`DatasetSpec.recipe_defaults` of a registered dataset; nothing for a user's path."""
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
    **options: Any,
) -> MercDataset:
    """Build a registered dataset with the requested modalities' features attached.

    Args:
        name: Registry name (``merc datasets`` lists them).
        modalities: e.g. ``"tav"``; ``None`` keeps every modality the loader attached
            and attaches no computed text features (annotations only, fast).
        data_root: See :func:`resolve_data_root`; ignored by datasets that need none.
        text_encoder: Sentence encoder for computed text features (default MiniLM).
        validate: Run :meth:`MercDataset.validate`.
        **options: Loader-specific options (e.g. ``seed`` for synthetic data).

    Raises:
        ConfigError: unknown dataset.
        DataError: missing files, unavailable modality or invalid data.
    """
    if is_dataset_path(name):
        dataset = read_dataset_path(name, **options)
    else:
        spec = get_dataset_spec(name)
        root = resolve_data_root(data_root) if spec.needs_data_root else None
        dataset = spec.loader(root, **options) if spec.needs_data_root else spec.loader(**options)
    if modalities is not None:
        mods = parse_modalities(modalities)
        if "t" in mods and "t" not in dataset.modalities:
            attach_text_features(dataset, text_encoder=text_encoder, show_progress=show_progress)
        _refer_to_extract(name, [m for m in mods if m in ("a", "v") and m not in dataset.modalities])
        dataset = dataset.with_modalities(mods)
    if validate:
        dataset.validate()
    return dataset


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
