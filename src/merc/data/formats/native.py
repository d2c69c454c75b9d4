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
      sequences/<m>.safetensors  optional, per modality m with token/frame-level
                                 sequences: per conversation ``<id>/frames``, float32
                                 [sum_i L_i, d'_m] (its utterances' frames one after
                                 another) and ``<id>/offsets``, int64 [n_utt + 1]
                                 (utterance i is frames[offsets[i]:offsets[i+1]])
      <media files>              optional: audio / video the conversations point to

A conversation may point to media instead of (or beside) feature arrays, for
``merc extract`` (:mod:`merc.features`) to compute audio and visual features from. The
optional keys of a conversations.jsonl record (paths relative to the dataset folder;
absolute paths work too):

- ``audio``: one file per utterance, ``["wav/u0.wav", null, ...]`` (``null``: none), or
  one string, a file for the whole dialogue (wav, flac, mp3, or anything with an
  audio track that PyAV decodes);
- ``video``: the same for video files (mp4, mkv, avi, ...). Audio features of an
  utterance without ``audio`` come from its video's audio track;
- ``start`` / ``end``: per utterance, seconds from the start of the file. Required
  (numbers) with a dialogue-level file, whose utterances they locate (per-utterance
  files beside it are used whole); with per-utterance files only, optional: a segment
  of each file (``null``: from the beginning / to the end).

:func:`read_media` parses them (:class:`MediaSegment` per utterance and stream);
:func:`read_native` checks their syntax (types, lengths, ``0 <= start < end``), and
``merc extract`` checks the files themselves (present, decodable, segment inside the
file) before it decodes anything. :func:`write_native` does not store media keys.

Everything but the features is plain JSON, readable and writable without merc; the
features use safetensors, which (unlike a pickle) cannot run code on load.

Token/frame-level sequences (``Conversation.sequences``, e.g. MiniLM token states or
eGeMAPS low-level descriptor frames from ``merc extract --level sequence``) are an
optional addition to version 1: ``metadata.json`` then has ``sequence_dims`` (``{m:
d'_m}``, and ``meta.sequence_specs.<m>`` says how they were made) and
``sequences/<m>.safetensors`` holds them. Folders without them, and readers that do not
know them, are unaffected (no new required key, so the version stays 1). A
conversation without sequences of a stored modality is written with zero-length
utterances.

Limits of format version 1:

- Features and sequences are stored as float32 (what every merc reader produces); other float dtypes are
  converted on write.
- ``meta`` dicts must be JSON-serialisable; JSON turns tuples into lists and dict keys
  into strings.

Within those limits a write/read round trip is identical: ids, order, splits, labels,
speakers, texts, utterance ids, meta and bit-exact features and sequences.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from merc.data.schema import MODALITIES, SPLITS, UNLABELLED, Conversation, MercDataset, parse_modalities
from merc.errors import DataError

logger = logging.getLogger(__name__)

FORMAT_VERSION: int = 1
METADATA_FILE = "metadata.json"
CONVERSATIONS_FILE = "conversations.jsonl"
FEATURES_DIR = "features"
SEQUENCES_DIR = "sequences"
_RECORD_KEYS: tuple[str, ...] = ("id", "split", "speakers", "labels", "texts", "utterance_ids", "meta")
#: Optional keys of a conversations.jsonl record that point to media (module docstring).
MEDIA_KEYS: tuple[str, ...] = ("audio", "video", "start", "end")
MEDIA_STREAMS: tuple[str, ...] = ("audio", "video")
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
    seq_dims = _dataset_sequence_dims(dataset)

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
    if seq_dims:
        metadata["sequence_dims"] = seq_dims
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
        if seq_dims:
            (tmp / SEQUENCES_DIR).mkdir()
        for m, dim in seq_dims.items():
            ragged = {
                conv.id: conv.sequences.get(m) or [np.zeros((0, dim), np.float32)] * len(conv)
                for conv in dataset.conversations()
            }
            _save_sequences(tmp / SEQUENCES_DIR / f"{m}.safetensors", m, ragged, dim)
        # metadata.json last: its presence marks a complete dataset folder.
        (tmp / METADATA_FILE).write_text(metadata_text + "\n", encoding="utf-8")
        _swap_into_place(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("wrote %s (%d dialogues)", folder, len(seen))
    return folder


def _dataset_sequence_dims(dataset: MercDataset) -> dict[str, int]:
    """``{m: d'}`` of the sequences any conversation of ``dataset`` carries, checked for shape."""
    dims: dict[str, int] = {}
    for conv in dataset.conversations():
        for m, rows in conv.sequences.items():
            where = f"dataset {dataset.name!r}, dialogue {conv.id!r}: {m!r} sequences"
            if m not in MODALITIES:
                raise DataError(f"{where}: unknown modality; use t, a or v")
            if len(rows) != len(conv):
                raise DataError(f"{where}: {len(rows)} for {len(conv)} utterances")
            for row in rows:
                if np.ndim(row) != 2:
                    raise DataError(f"{where}: an utterance's frames have shape {np.shape(row)}, expected [L, d]")
                d = int(np.shape(row)[1])
                if dims.setdefault(m, d) != d:
                    raise DataError(f"{where}: frames of dim {d}, elsewhere {dims[m]}")
    return {m: dims[m] for m in MODALITIES if m in dims}


def _save_sequences(path: Path, modality: str, sequences: Mapping[str, Sequence[np.ndarray]], dim: int) -> None:
    """Write ``{conversation id: per-utterance frames}`` as ``<id>/frames`` + ``<id>/offsets`` tensors."""
    tensors: dict[str, np.ndarray] = {}
    for cid, rows in sequences.items():
        mats = [np.asarray(r, dtype=np.float32).reshape(-1, dim) for r in rows]
        tensors[f"{cid}/frames"] = (
            np.ascontiguousarray(np.concatenate(mats)) if mats else np.zeros((0, dim), np.float32)
        )
        tensors[f"{cid}/offsets"] = np.concatenate([[0], np.cumsum([len(x) for x in mats])]).astype(np.int64)
    save_file(tensors, path, metadata={"format": "merc-native", "modality": modality, "kind": "sequences"})


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def add_features(
    folder: str | Path,
    modality: str,
    features: Mapping[str, np.ndarray],
    spec: Mapping[str, Any] | None = None,
    report: Mapping[str, Any] | None = None,
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
        report: What the extraction found (counts of utterances without media, frames
            without a face, ...), stored as ``meta.extraction.<modality>``.

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
    if report is not None:
        extra = dict(meta.get("meta") or {})
        extra["extraction"] = {**(extra.get("extraction") or {}), modality: dict(report)}
        meta["meta"] = extra
    _write_metadata(folder, meta)
    return path


def add_sequences(
    folder: str | Path,
    modality: str,
    sequences: Mapping[str, Sequence[np.ndarray]],
    spec: Mapping[str, Any] | None = None,
    report: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``sequences/<modality>.safetensors`` into a native dataset folder and declare it.

    The token/frame-level counterpart of :func:`add_features`: ``metadata.json`` then
    has ``sequence_dims[modality]`` (and ``spec`` in ``meta.sequence_specs``, ``report``
    in ``meta.extraction.<modality>_sequences``); written first to a temporary file and
    renamed, then ``metadata.json`` is replaced, so an interrupted call leaves a
    readable folder.

    Args:
        folder: A native dataset folder.
        modality: ``t``, ``a`` or ``v``.
        sequences: ``{conversation id: [float32 [L_i, d] per utterance]}`` for every
            conversation (``L_i`` may be 0).
        spec: How the sequences were made.
        report: What the extraction found.

    Returns:
        The sequences file written.
    """
    folder = Path(folder)
    meta = _read_metadata(folder)
    dims = {int(np.shape(r)[-1]) for rows in sequences.values() for r in rows}
    if len(dims) != 1:
        raise DataError(f"{folder}: {modality} sequences of dims {sorted(dims)}; expected one dim")
    dim = dims.pop()
    path = folder / SEQUENCES_DIR / f"{modality}.safetensors"
    path.parent.mkdir(exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        _save_sequences(Path(tmp_name), modality, sequences, dim)
        os.chmod(tmp_name, 0o666 & ~_umask())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    meta["sequence_dims"] = {
        m: d
        for m, d in sorted(
            {**(meta.get("sequence_dims") or {}), modality: dim}.items(), key=lambda x: MODALITIES.index(x[0])
        )
    }
    extra = dict(meta.get("meta") or {})
    if spec is not None:
        extra["sequence_specs"] = {**(extra.get("sequence_specs") or {}), modality: dict(spec)}
    if report is not None:
        extra["extraction"] = {**(extra.get("extraction") or {}), f"{modality}_sequences": dict(report)}
    meta["meta"] = extra
    _write_metadata(folder, meta)
    return path


def _write_metadata(folder: Path, meta: Mapping[str, Any]) -> None:
    """Replace ``metadata.json`` atomically (write-then-rename)."""
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


def read_metadata(folder: str | Path) -> dict[str, Any]:
    """The checked ``metadata.json`` of a native dataset folder.

    Raises:
        DataError: Missing, not JSON, or lacking or mistyping a required key.
    """
    return _read_metadata(Path(folder))


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
    seq_dims = meta.get("sequence_dims", {})
    if not isinstance(seq_dims, dict):
        raise DataError(f"{path}: 'sequence_dims' must be an object mapping modality to frame dim")
    for m, dim in seq_dims.items():
        if m not in MODALITIES:
            raise DataError(f"{path}: sequence_dims names modality {m!r}; use t, a or v")
        if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= 2**20:
            raise DataError(f"{path}: sequence_dims[{m!r}] = {dim!r}; a frame dim is an integer in [1, 2**20]")
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


def _records(conv_path: Path, num_classes: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, record)`` per non-blank line of ``conversations.jsonl``, each checked by :func:`_parse_record`.

    Read as bytes and decoded line by line, so a non-UTF-8 byte is reported with its line number.
    """
    with conv_path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if raw.strip():
                where = f"{conv_path}:{lineno}"
                yield where, _parse_record(raw, where, num_classes)


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


@dataclass(frozen=True)
class MediaSegment:
    """The media of one utterance: a file and, optionally, a time span of it.

    Attributes:
        path: The media file (resolved against the dataset folder).
        start: Seconds from the start of the file; ``None``: from the beginning.
        end: Seconds from the start of the file; ``None``: to the end.
        declared: The path as written in conversations.jsonl (for messages).
        field: ``"audio"`` or ``"video"``: the key that named the file.
        dialogue: Dialogue id.
        utterance: Utterance id.
        shared: The file holds the whole dialogue (one string in the record), not one utterance.
    """

    path: Path
    start: float | None
    end: float | None
    declared: str
    field: str
    dialogue: str
    utterance: str
    shared: bool = False

    def where(self) -> str:
        """``dialogue 'd1', utterance 'd1_0' (audio wav/d1.wav)``: where a message points."""
        return f"dialogue {self.dialogue!r}, utterance {self.utterance!r} ({self.field} {self.declared})"


@dataclass(frozen=True)
class ConversationMedia:
    """Per utterance of one dialogue, its audio and video segments (``None``: none given).

    ``audio_source()`` is what audio features are computed from: the ``audio`` segment,
    else the audio track of the ``video`` segment.
    """

    audio: tuple[MediaSegment | None, ...]
    video: tuple[MediaSegment | None, ...]

    def audio_source(self) -> tuple[MediaSegment | None, ...]:
        return tuple(a if a is not None else v for a, v in zip(self.audio, self.video))

    def stream(self, modality: str) -> tuple[MediaSegment | None, ...]:
        """The segments features of ``modality`` (``a`` or ``v``) are computed from."""
        if modality == "a":
            return self.audio_source()
        if modality == "v":
            return self.video
        raise DataError(f"modality {modality!r} has no media; media give audio (a) and visual (v) features")


def _seconds(value: Any, key: str, where: str, utterance: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise DataError(f"{where}: utterance {utterance!r}: {key!r} must be a number of seconds, got {value!r}")
    return float(value)


def parse_media(rec: Mapping[str, Any], where: str, folder: Path) -> ConversationMedia | None:
    """The media keys of one record, checked for syntax; ``None`` when it has none."""
    if not any(rec.get(k) is not None for k in MEDIA_KEYS):
        return None
    n = len(rec["labels"])
    uids = rec["utterance_ids"] if len(rec["utterance_ids"]) == n else [f"{rec['id']}_{i}" for i in range(n)]
    times: dict[str, list[Any]] = {}
    for key in ("start", "end"):
        value = rec.get(key)
        if value is None:
            continue
        if not isinstance(value, list):
            raise DataError(f"{where}: {key!r} must be a list of seconds, one per utterance")
        if len(value) != n:
            raise DataError(f"{where}: {len(value)} {key!r} times for {n} utterances")
        times[key] = value
    if len(times) == 1:
        given = next(iter(times))
        raise DataError(f"{where}: {given!r} given without {'end' if given == 'start' else 'start'!r}; give both")
    if times and all(rec.get(k) is None for k in MEDIA_STREAMS):
        raise DataError(f"{where}: 'start'/'end' given but no 'audio' or 'video' file they refer to")
    starts = [_seconds(x, "start", where, uids[i]) for i, x in enumerate(times.get("start", [None] * n))]
    ends = [_seconds(x, "end", where, uids[i]) for i, x in enumerate(times.get("end", [None] * n))]
    for i, (s, e) in enumerate(zip(starts, ends)):
        if s is not None and s < 0:
            raise DataError(f"{where}: utterance {uids[i]!r}: start {s:g} s is negative")
        if s is not None and e is not None and e <= s:
            kind = "empty" if e == s else "negative"
            raise DataError(f"{where}: utterance {uids[i]!r}: {kind} segment (start {s:g} s, end {e:g} s)")
        if e is not None and e <= 0:
            raise DataError(f"{where}: utterance {uids[i]!r}: end {e:g} s is not after the start of the file")
    streams: dict[str, tuple[MediaSegment | None, ...]] = {}
    # The times locate utterances in a dialogue-level file; beside one, per-utterance files are used whole.
    dialogue_level = any(isinstance(rec.get(k), str) for k in MEDIA_STREAMS)
    for key in MEDIA_STREAMS:
        value = rec.get(key)
        if value is None:
            streams[key] = (None,) * n
            continue
        shared = isinstance(value, str)
        if shared:
            missing = [uids[i] for i in range(n) if starts[i] is None or ends[i] is None]
            if missing:
                raise DataError(
                    f"{where}: {key!r} is one file for the whole dialogue, so every utterance needs its 'start' and "
                    f"'end' seconds; utterance {missing[0]!r} has none"
                )
            paths: list[Any] = [value] * n
        elif isinstance(value, list):
            if len(value) != n:
                raise DataError(f"{where}: {len(value)} {key!r} files for {n} utterances")
            paths = value
        else:
            raise DataError(
                f"{where}: {key!r} must be a file name (one for the dialogue), a list of file names or null "
                f"(one per utterance), got {type(value).__name__}"
            )
        segs: list[MediaSegment | None] = []
        for i, p in enumerate(paths):
            if p is None:
                segs.append(None)
                continue
            if not isinstance(p, str) or not p.strip():
                raise DataError(f"{where}: utterance {uids[i]!r}: {key!r} must be a file name or null, got {p!r}")
            start, end = (starts[i], ends[i]) if shared or not dialogue_level else (None, None)
            segs.append(MediaSegment(folder / p, start, end, p, key, str(rec["id"]), uids[i], shared))
        streams[key] = tuple(segs)
    return ConversationMedia(audio=streams["audio"], video=streams["video"])


def read_media(folder: str | Path) -> dict[str, ConversationMedia]:
    """The media each conversation of a native folder points to (module docstring).

    Only conversations with at least one media key are in the result. Files are not
    opened here: :func:`merc.features.media.check_segments` does that.

    Raises:
        DataError: A malformed media key (named with its line and utterance), or
            anything :func:`read_native` refuses in the records.
    """
    folder = Path(folder)
    meta = _read_metadata(folder)
    conv_path = folder / CONVERSATIONS_FILE
    if not conv_path.is_file():
        raise DataError(f"{conv_path}: missing; a native dataset needs one JSON line per conversation")
    out: dict[str, ConversationMedia] = {}
    for where, rec in _records(conv_path, len(meta["label_names"])):
        media = parse_media(rec, where, folder)
        if media is not None:
            out[rec["id"]] = media
    return out


def _mark_unextracted(
    modalities: tuple[str, ...], extraction: Mapping[str, Any], convs: Iterable[Conversation]
) -> None:
    """Mark the zero rows of features ``merc extract`` made as unavailable.

    The extractors write a zero row for an utterance without media or without a face in
    any sampled frame (and say so in ``meta.extraction.<m>``); as ``merc predict`` does,
    training then treats that modality as missing for the utterance (availability mask,
    training mean after standardisation) rather than as a real all-zero feature vector.
    Features that did not come from ``merc extract`` are taken as given.
    """
    for m in modalities:
        if m not in ("a", "v") or m not in extraction:
            continue
        col = MODALITIES.index(m)
        for conv in convs:
            empty = ~np.asarray(conv.features[m]).any(axis=1)
            if empty.any():
                if conv.availability is None:
                    conv.availability = np.ones((len(conv), len(MODALITIES)), dtype=bool)
                conv.availability[empty, col] = False


def _load_tensors(path: Path) -> dict[str, np.ndarray]:
    try:
        return load_file(path)
    except (KeyboardInterrupt, SystemExit):
        raise
    except (SafetensorError, OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable safetensors file ({exc}); it may be truncated or corrupt") from None
    except BaseException as exc:  # the Rust reader's panics derive from BaseException
        raise DataError(
            f"{path}: not a readable safetensors file ({type(exc).__name__}); it may be truncated or corrupt"
        ) from None


def _read_features(path: Path, m: str, dim: int, convs: Mapping[str, Conversation]) -> None:
    if not path.is_file():
        raise DataError(f"{path}: missing; metadata.json lists modality {m!r}, so its features file is required")
    tensors = _load_tensors(path)
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


def _read_sequences(path: Path, m: str, dim: int, convs: Mapping[str, Conversation]) -> None:
    """Attach ``sequences/<m>.safetensors`` to ``convs`` as per-utterance float32 ``[L_i, dim]`` arrays."""
    if not path.is_file():
        raise DataError(f"{path}: missing; metadata.json lists sequence_dims[{m!r}], so its sequences file is required")
    tensors = _load_tensors(path)
    for cid, conv in convs.items():
        frames, offsets = tensors.get(f"{cid}/frames"), tensors.get(f"{cid}/offsets")
        if frames is None or offsets is None:
            raise DataError(f"{path}: no sequences for conversation {cid!r}")
        if frames.dtype.kind != "f" or frames.ndim != 2 or frames.shape[1] != dim:
            raise DataError(
                f"{path}: frames of {cid!r} have shape {tuple(frames.shape)} ({frames.dtype}), but metadata.json "
                f"says float frames of dim {dim}"
            )
        if (
            offsets.dtype.kind not in "iu"
            or offsets.shape != (len(conv) + 1,)
            or offsets[0] != 0
            or offsets[-1] != frames.shape[0]
            or (np.diff(offsets) < 0).any()
        ):
            raise DataError(
                f"{path}: offsets of {cid!r} are not 0 <= ... <= {frames.shape[0]} rising, one per utterance plus one "
                f"({len(conv) + 1})"
            )
        # Private float32 copies, one per utterance (callers may change them in place).
        block = np.array(frames, dtype=np.float32, copy=True)
        conv.sequences[m] = np.split(block, offsets[1:-1])
    unknown = sorted({k.rsplit("/", 1)[0] for k in tensors} - set(convs))
    if unknown:
        raise DataError(f"{path}: sequences for unknown conversation {unknown[0]!r} (not in {CONVERSATIONS_FILE})")


def read_native(
    folder: str | Path,
    require_all_splits: bool = True,
    read_features: bool = True,
    read_sequences: bool | Iterable[str] = True,
) -> MercDataset:
    """Read a dataset written by :func:`write_native` (or by hand in that layout).

    Args:
        folder: The dataset folder.
        require_all_splits: Refuse a dataset without train, valid and test dialogues
            (training needs all three). ``False`` for conversations to predict.
        read_features: Read ``features/``. ``False``: the conversations alone, no
            modality attached (what ``merc extract`` needs to compute features).
        read_sequences: Which stored token/frame-level sequences to attach: ``True``
            (default) every one ``metadata.json`` lists in ``sequence_dims``, ``False``
            none, or modality letters (e.g. ``"ta"``; each must be stored). Only with
            ``read_features``.

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
    if not read_features:
        modalities = ()
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
    with_media: set[str] = set()
    for where, rec in _records(conv_path, len(meta["label_names"])):
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
        if parse_media(rec, where, folder) is not None:
            with_media.add(conv.id)
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
        path = folder / FEATURES_DIR / f"{m}.safetensors"
        if m in ("a", "v") and with_media and not path.is_file():
            raise DataError(
                f"{path}: missing; metadata.json lists modality {m!r} and the conversations point to media: "
                f"compute it with `merc extract --dataset {folder} --modalities {m}`"
            )
        _read_features(path, m, meta["dims"][m], by_id)
    _mark_unextracted(modalities, (meta.get("meta") or {}).get("extraction") or {}, by_id.values())
    stored = meta.get("sequence_dims") or {}
    if not read_features or read_sequences is False:
        wanted: tuple[str, ...] = ()
    elif read_sequences is True:
        wanted = tuple(m for m in MODALITIES if m in stored)
    else:
        letters = list(read_sequences)
        wanted = parse_modalities(letters) if letters else ()
        absent = [m for m in wanted if m not in stored]
        if absent:
            have = "".join(stored) or "none"
            raise DataError(
                f"{folder}: no stored {absent[0]!r} sequences (it has: {have}); compute them with "
                f"`merc extract --dataset {folder} --modalities {absent[0]} --level sequence`"
            )
    for m in wanted:
        _read_sequences(folder / SEQUENCES_DIR / f"{m}.safetensors", m, int(stored[m]), by_id)

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
