"""merc's own on-disk dataset format, for users' data and for exports.

A native dataset is a folder::

    folder/
      metadata.json              name, description, label_names, modalities, dims,
                                 speaker_vocab, meta, format_version (= 1)
      conversations.jsonl        one JSON object per conversation, in split order:
                                 id, split, speakers, labels, texts (or null),
                                 utterance_ids, meta
      features/<m>.safetensors   per attached modality m: one float32 [n_utt, d_m]
                                 tensor per conversation, keyed by conversation id

Everything but the features is plain JSON, readable and writable without merc; the
features use safetensors, which (unlike a pickle) cannot run code on load.

Limits of format version 1:

- Token/frame-level ``Conversation.sequences`` are not stored (a warning is logged when a
  dataset has some); re-extract them after loading.
- Features are stored as float32 (what every merc reader produces); other float dtypes are
  converted on write.
- ``meta`` dicts must be JSON-serialisable; JSON turns tuples into lists and dict keys
  into strings.

Within those limits a write/read round trip is identical: ids, order, splits, labels,
speakers, texts, utterance ids, meta and bit-exact features.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from merc.data.schema import SPLITS, UNLABELLED, Conversation, MercDataset, parse_modalities
from merc.errors import DataError

logger = logging.getLogger(__name__)

FORMAT_VERSION: int = 1
METADATA_FILE = "metadata.json"
CONVERSATIONS_FILE = "conversations.jsonl"
FEATURES_DIR = "features"
_RECORD_KEYS: tuple[str, ...] = ("id", "split", "speakers", "labels", "texts", "utterance_ids", "meta")
_METADATA_KEYS: tuple[str, ...] = ("name", "label_names", "modalities", "dims", "speaker_vocab", "format_version")


def _json_text(obj: Any, what: str, indent: int | None = None) -> str:
    try:
        # allow_nan=False: NaN is not JSON, and other readers of the file would choke on it.
        return json.dumps(obj, ensure_ascii=False, allow_nan=False, indent=indent)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{what} is not JSON-serialisable ({exc}); keep meta to str/int/float/bool/list/dict") from None


def write_native(dataset: MercDataset, folder: str | Path, overwrite: bool = False) -> Path:
    """Write ``dataset`` to ``folder`` in merc's native format (see module docstring).

    The dataset is written into a temporary sibling folder which then replaces
    ``folder`` with :func:`os.replace`, so an interrupted export leaves either the old
    folder or the complete new one, never a half-written one (at worst a hidden
    ``.<name>.*.tmp`` sibling).

    Args:
        dataset: A dataset that passes :meth:`MercDataset.validate`.
        folder: Destination folder.
        overwrite: Replace ``folder`` if it already holds a native dataset. Default
            ``False``. A non-empty folder that is not a native dataset is never replaced.

    Returns:
        The folder written.

    Raises:
        DataError: the dataset is invalid, ids repeat, meta is not JSON, or ``folder``
            exists and may not be replaced.
    """
    folder = Path(folder)
    dataset.validate()
    _check_destination(folder, overwrite)

    unknown_splits = [s for s in dataset.splits if s not in SPLITS]
    if unknown_splits:
        raise DataError(
            f"dataset {dataset.name!r} has split(s) {unknown_splits}; native datasets hold {', '.join(SPLITS)}"
        )
    seen: set[str] = set()
    for conv in dataset.conversations():
        if conv.id in seen:
            raise DataError(
                f"dataset {dataset.name!r}: dialogue id {conv.id!r} repeats; ids must be unique to be stored"
            )
        seen.add(conv.id)
    if any(conv.sequences for conv in dataset.conversations()):
        logger.warning("native format v%d does not store token-level sequences; they are dropped", FORMAT_VERSION)

    lines: list[str] = []
    for split, convs in dataset.splits.items():
        for conv in convs:
            record = {
                "id": conv.id,
                "split": split,
                "speakers": list(conv.speakers),
                "labels": [int(x) for x in conv.labels],
                "texts": None if conv.texts is None else list(conv.texts),
                "utterance_ids": list(conv.utterance_ids),
                "meta": conv.meta,
            }
            lines.append(_json_text(record, f"dialogue {conv.id!r}"))
    metadata = {
        "format_version": FORMAT_VERSION,
        "name": dataset.name,
        "description": dataset.description,
        "label_names": list(dataset.label_names),
        "modalities": list(dataset.modalities),
        "dims": dataset.dims,
        "speaker_vocab": list(dataset.speaker_vocab),
        "meta": dataset.meta,
    }
    metadata_text = _json_text(metadata, f"dataset {dataset.name!r} metadata", indent=2)

    folder.parent.mkdir(parents=True, exist_ok=True)
    # A sibling temp folder is on the same filesystem, which os.replace needs to be atomic.
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        # mkdtemp makes the folder private (0700); the export gets the user's umask like any new folder.
        tmp.chmod(0o777 & ~_umask())
        (tmp / CONVERSATIONS_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
        if dataset.modalities:
            (tmp / FEATURES_DIR).mkdir()
        for m in dataset.modalities:
            tensors = {
                conv.id: np.ascontiguousarray(conv.features[m], dtype=np.float32) for conv in dataset.conversations()
            }
            save_file(
                tensors, tmp / FEATURES_DIR / f"{m}.safetensors", metadata={"format": "merc-native", "modality": m}
            )
        # metadata.json last: its presence marks a complete dataset folder.
        (tmp / METADATA_FILE).write_text(metadata_text + "\n", encoding="utf-8")
        _swap_into_place(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("wrote %s (%d dialogues)", folder, len(seen))
    return folder


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def add_features(
    folder: str | Path, modality: str, features: Mapping[str, np.ndarray], spec: Mapping[str, Any] | None = None
) -> Path:
    """Write ``features/<modality>.safetensors`` into a native dataset folder and declare it.

    ``metadata.json`` then lists the modality with its dim (and ``spec`` in
    ``meta.feature_specs``, see :mod:`merc.features.spec`). The features file is written
    first and renamed into place, then ``metadata.json`` is replaced, so an interrupted
    call leaves a readable folder.

    Args:
        folder: A native dataset folder (:func:`read_native` reads it).
        modality: ``t``, ``a`` or ``v``.
        features: ``{conversation id: float32 [n_utt, d]}`` for every conversation.
        spec: How the features were made.

    Returns:
        The features file written.

    Shapes:
        - features[id]: ``[n_utt, d]``, one ``d`` for all conversations.
    """
    folder = Path(folder)
    meta = _read_metadata(folder)
    dims = {int(np.shape(a)[1]) for a in features.values()}
    if len(dims) != 1:
        raise DataError(f"{folder}: {modality} features of different dims {sorted(dims)}")
    dim = dims.pop()
    path = folder / FEATURES_DIR / f"{modality}.safetensors"
    path.parent.mkdir(exist_ok=True)
    tensors = {cid: np.ascontiguousarray(a, dtype=np.float32) for cid, a in features.items()}
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp_name, metadata={"format": "merc-native", "modality": modality})
        os.chmod(tmp_name, 0o666 & ~_umask())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    meta["modalities"] = [m for m in ("t", "a", "v") if m == modality or m in meta["modalities"]]
    meta["dims"] = {**meta["dims"], modality: dim}
    if spec is not None:
        extra = dict(meta.get("meta") or {})
        extra["feature_specs"] = {**(extra.get("feature_specs") or {}), modality: dict(spec)}
        meta["meta"] = extra
    text = _json_text(meta, f"{folder / METADATA_FILE}", indent=2) + "\n"
    fd, tmp_name = tempfile.mkstemp(prefix=f".{METADATA_FILE}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp_name, 0o666 & ~_umask())
        os.replace(tmp_name, folder / METADATA_FILE)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def _check_destination(folder: Path, overwrite: bool) -> None:
    if not folder.exists():
        return
    if not folder.is_dir():
        raise DataError(f"{folder} exists and is not a folder; choose another destination")
    if not any(folder.iterdir()):
        return
    if not (folder / METADATA_FILE).is_file():
        raise DataError(
            f"{folder} exists and is not a merc native dataset; refusing to replace it, choose another folder"
        )
    if not overwrite:
        raise DataError(f"{folder} already holds a dataset; delete it, choose another folder or pass overwrite=True")


def _swap_into_place(tmp: Path, folder: Path) -> None:
    if folder.exists() and any(folder.iterdir()):
        # os.replace cannot replace a non-empty folder: move the old one aside first.
        old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".old", dir=folder.parent))
        os.replace(folder, old)
        try:
            os.replace(tmp, folder)
        except BaseException:
            os.replace(old, folder)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, folder)


def _read_metadata(folder: Path) -> dict[str, Any]:
    path = folder / METADATA_FILE
    if not path.is_file():
        raise DataError(f"{folder}: no {METADATA_FILE}; not a merc native dataset folder (write one with write_native)")
    try:
        meta = json.loads(path.read_bytes().decode("utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: bad JSON at line {exc.lineno}, column {exc.colno} ({exc.msg})") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply") from None
    if not isinstance(meta, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    missing = [k for k in _METADATA_KEYS if k not in meta]
    if missing:
        raise DataError(f"{path}: missing key(s) {', '.join(missing)}")
    if meta["format_version"] != FORMAT_VERSION:
        raise DataError(
            f"{path}: format_version {meta['format_version']!r}; this merc reads version {FORMAT_VERSION} (upgrade merc?)"
        )
    if not isinstance(meta["dims"], dict):
        raise DataError(f"{path}: 'dims' must be an object mapping modality to dim")
    for m, dim in meta["dims"].items():
        if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= 2**20:
            raise DataError(f"{path}: dims[{m!r}] = {dim!r}; a feature dim is an integer in [1, 2**20]")
    for key in ("label_names", "speaker_vocab", "modalities"):
        if not isinstance(meta[key], list) or not all(isinstance(x, str) for x in meta[key]):
            raise DataError(f"{path}: {key!r} must be a list of strings")
    labels = meta["label_names"]
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise DataError(f"{path}: 'label_names' must name at least 2 classes, each once; got {labels!r}")
    if not isinstance(meta.get("meta", {}) or {}, dict):
        raise DataError(f"{path}: 'meta' must be an object")
    if not isinstance(meta.get("name"), str) or not meta["name"]:
        raise DataError(f"{path}: 'name' must be a non-empty string")
    if not isinstance(meta.get("description", ""), str):
        raise DataError(f"{path}: 'description' must be a string")
    return meta


def _parse_record(raw: bytes, where: str, num_classes: int) -> dict[str, Any]:
    try:
        rec = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise DataError(f"{where}: not UTF-8 text (byte {exc.start} of the line); save the file as UTF-8") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: bad JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise DataError(f"{where}: JSON nested too deeply") from None
    if not isinstance(rec, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    missing = [k for k in _RECORD_KEYS if k not in rec]
    if missing:
        raise DataError(f"{where}: missing key(s) {', '.join(missing)}")
    if not isinstance(rec["id"], str):
        raise DataError(f"{where}: 'id' must be a string")
    if rec["split"] not in SPLITS:
        raise DataError(f"{where}: split {rec['split']!r} is not one of {', '.join(SPLITS)}")
    for key in ("speakers", "labels", "utterance_ids"):
        if not isinstance(rec[key], list):
            raise DataError(f"{where}: {key!r} must be a list")
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in rec["labels"]):
        raise DataError(f"{where}: 'labels' must be integers")
    if not rec["labels"]:
        raise DataError(f"{where}: empty dialogue (no utterances); remove it")
    for x in rec["labels"]:
        if x != UNLABELLED and not 0 <= x < num_classes:
            raise DataError(
                f"{where}: label {x} out of range; labels must be 0..{num_classes - 1} (ids into metadata.json "
                f"label_names) or {UNLABELLED} for unlabelled"
            )
    if not all(isinstance(x, str) for x in rec["speakers"]):
        raise DataError(f"{where}: 'speakers' must be strings")
    if not all(isinstance(x, str) for x in rec["utterance_ids"]):
        raise DataError(f"{where}: 'utterance_ids' must be strings")
    if rec["texts"] is not None and not (
        isinstance(rec["texts"], list) and all(isinstance(x, str) for x in rec["texts"])
    ):
        raise DataError(f"{where}: 'texts' must be a list of strings or null")
    if not isinstance(rec["meta"], dict):
        raise DataError(f"{where}: 'meta' must be an object")
    return rec


def _read_features(path: Path, m: str, dim: int, convs: Mapping[str, Conversation]) -> None:
    if not path.is_file():
        raise DataError(f"{path}: missing; metadata.json lists modality {m!r}, so its features file is required")
    try:
        tensors = load_file(path)
    except (KeyboardInterrupt, SystemExit):
        raise
    except (SafetensorError, OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable safetensors file ({exc}); it may be truncated or corrupt") from None
    except BaseException as exc:  # the Rust reader's panics derive from BaseException
        raise DataError(
            f"{path}: not a readable safetensors file ({type(exc).__name__}); it may be truncated or corrupt"
        ) from None
    unknown = sorted(set(tensors) - set(convs))
    if unknown:
        raise DataError(f"{path}: features for unknown conversation {unknown[0]!r} (not in {CONVERSATIONS_FILE})")
    for cid, conv in convs.items():
        if cid not in tensors:
            raise DataError(f"{path}: no features for conversation {cid!r}")
        arr = tensors[cid]
        if arr.dtype.kind != "f":
            raise DataError(f"{path}: features of {cid!r} have dtype {arr.dtype}; expected float32")
        if arr.ndim != 2 or arr.shape[1] != dim:
            raise DataError(
                f"{path}: features of {cid!r} have shape {tuple(arr.shape)}, but metadata.json says dim {dim}; "
                "the features and metadata disagree"
            )
        if arr.shape[0] != len(conv):
            raise DataError(f"{path}: features of {cid!r} have {arr.shape[0]} rows for {len(conv)} utterances")
        # A private, writable float32 copy: callers may normalise features in place.
        conv.features[m] = np.array(arr, dtype=np.float32, copy=True)


def read_native(folder: str | Path, require_all_splits: bool = True) -> MercDataset:
    """Read a dataset written by :func:`write_native` (or by hand in that layout).

    Args:
        folder: The dataset folder.
        require_all_splits: Refuse a dataset without train, valid and test dialogues
            (training needs all three). ``False`` for conversations to predict.

    Returns:
        The validated :class:`MercDataset`.

    Raises:
        DataError: a missing file, a bad JSON line (with its line number), features for
            an unknown conversation, dims disagreeing with ``metadata.json``, labels out
            of range, or anything else :meth:`MercDataset.validate` rejects.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"dataset folder not found: {folder}")
    meta = _read_metadata(folder)
    modalities = parse_modalities(meta["modalities"]) if meta["modalities"] else ()
    # Transcripts without a text features file: merc computes the text features on first
    # use (load_dataset with "t"), so neither the file nor dims["t"] is required.
    computed_text = "t" in modalities and not (folder / FEATURES_DIR / "t.safetensors").exists()
    missing_dims = [m for m in modalities if m not in meta["dims"] and not (m == "t" and computed_text)]
    if missing_dims:
        raise DataError(f"{folder / METADATA_FILE}: 'dims' lacks modality {missing_dims[0]!r}")

    conv_path = folder / CONVERSATIONS_FILE
    if not conv_path.is_file():
        raise DataError(f"{conv_path}: missing; a native dataset needs one JSON line per conversation")
    splits: dict[str, list[Conversation]] = {}
    by_id: dict[str, Conversation] = {}
    vocab = set(meta["speaker_vocab"])
    # Bytes, decoded line by line: a non-UTF-8 byte is reported with its line number.
    with conv_path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            where = f"{conv_path}:{lineno}"
            rec = _parse_record(raw, where, len(meta["label_names"]))
            if rec["id"] in by_id:
                raise DataError(f"{where}: conversation id {rec['id']!r} repeats an earlier line")
            strangers = sorted(set(rec["speakers"]) - vocab)
            if strangers:
                raise DataError(f"{where}: speaker {strangers[0]!r} is not in metadata.json speaker_vocab")
            conv = Conversation(
                id=rec["id"],
                speakers=rec["speakers"],
                labels=np.asarray(rec["labels"], dtype=np.int64),
                utterance_ids=rec["utterance_ids"],
                texts=rec["texts"],
                split=rec["split"],
                meta=rec["meta"],
            )
            if len(conv.utterance_ids) != len(conv):
                raise DataError(f"{where}: {len(conv.utterance_ids)} utterance ids for {len(conv)} labels")
            by_id[conv.id] = conv
            splits.setdefault(rec["split"], []).append(conv)

    if computed_text:
        untranscribed = [c.id for c in by_id.values() if c.texts is None]
        if untranscribed:
            raise DataError(
                f"{folder / FEATURES_DIR / 't.safetensors'}: missing, and dialogue {untranscribed[0]!r} has no texts: "
                "metadata.json lists modality 't', so give every dialogue its texts (merc then computes the text "
                "features) or write the features file"
            )
        modalities = tuple(m for m in modalities if m != "t")
    for m in modalities:
        _read_features(folder / FEATURES_DIR / f"{m}.safetensors", m, meta["dims"][m], by_id)

    dataset = MercDataset(
        name=str(meta["name"]),
        label_names=[str(x) for x in meta["label_names"]],
        splits=splits,
        modalities=modalities,
        speaker_vocab=list(meta["speaker_vocab"]),
        description=str(meta.get("description", "")),
        meta=meta.get("meta") or {},
    )
    if require_all_splits:
        dataset.validate()
    else:
        # The same checks of every dialogue, whichever splits hold them.
        everything = list(dataset.conversations())
        dataclasses.replace(dataset, splits={s: everything for s in SPLITS}).validate()
    return dataset
