"""The conversations ``merc predict`` reads: merc's native folder or a simple utterance table.

Formats, chosen by the path:

- **a native dataset folder** (``metadata.json``, :mod:`merc.data.formats.native`): its
  texts, speakers, labels (kept as gold labels), any ``features/<m>.safetensors`` (with
  how they were made, ``meta.feature_specs``) and the media its conversations point to
  (keys ``audio``, ``video``, ``start``, ``end``); every split is read (``--split`` picks
  one);
- **CSV** (``.csv``, UTF-8, header row) or **JSONL** (``.jsonl``, one JSON object per
  line), one row per utterance with the fields

  ============== ========= ===========================================================
  field          required  meaning
  ============== ========= ===========================================================
  dialogue_id    yes       dialogue the utterance belongs to (any string)
  speaker        yes       speaker name (any string; see ``merc predict --help``)
  text           yes       the transcript; an empty cell / ``null`` = no text
  utterance_index no       order within the dialogue (integers); default: file order
  utterance_id   no        id copied to the output; default ``<dialogue_id>_<index>``
  label          no        gold emotion name, copied to the output as ``gold_label``
  audio          no        the utterance's sound file (wav, flac, mp3, ogg, or anything
                           with an audio track); empty / ``null``: none
  video          no        the utterance's video file (mp4, mkv, ...); an utterance
                           without ``audio`` gets its audio features from its track
  start, end     no        seconds: where the utterance is in its ``audio`` / ``video``
                           file; empty / ``null``: from the beginning / to the end
  ============== ========= ===========================================================

  Media paths are relative to the input file (absolute paths work too). One recording
  for a whole dialogue is named on each of its rows, each row with its ``start`` and
  ``end``: a file named by several utterances of a dialogue needs both on each of them.
  The media fields of a dialogue are checked exactly as the native format's media keys
  (:func:`merc.data.formats.native.read_media`); the files themselves are opened only
  when the model needs their features (:func:`merc.inference.predict.prepare`).
  Dialogues are kept in order of first appearance; other columns are ignored;
- **a plain transcript** (``.txt``): one utterance per line ``SPEAKER: text``, a blank
  line between dialogues (named ``dialogue_1``, ``dialogue_2``, ...), lines starting with
  ``#`` ignored.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from merc.data.formats.native import MEDIA_STREAMS, ConversationMedia, MediaSegment
from merc.data.schema import SPLITS, UNLABELLED, Conversation
from merc.errors import DataError

#: Field names of the CSV / JSONL utterance table.
REQUIRED_FIELDS: tuple[str, ...] = ("dialogue_id", "speaker", "text")
MEDIA_FIELDS: tuple[str, ...] = ("audio", "video", "start", "end")
OPTIONAL_FIELDS: tuple[str, ...] = ("utterance_index", "utterance_id", "label", *MEDIA_FIELDS)
INPUT_SUFFIXES: tuple[str, ...] = (".csv", ".jsonl", ".txt")


@dataclass
class PredictInput:
    """Conversations to predict.

    Attributes:
        conversations: The dialogues, utterances in order; ``texts`` hold ``""`` where
            an utterance has no text; ``features`` the provided features (native input).
        text_present: Per dialogue id, ``bool [n_utt]``: the utterance has a text.
        gold: Per dialogue id, the gold label name of each utterance (``None``: unlabelled).
        source: The path read.
        provided: Modalities whose features the input provides (native folders only).
        dims: Their dims.
        specs: How they were made (:func:`merc.features.spec.feature_specs` of the folder).
        media: Per dialogue id with media, its audio and video segments per utterance.
    """

    conversations: list[Conversation]
    text_present: dict[str, np.ndarray]
    gold: dict[str, list[str | None]]
    source: str
    provided: tuple[str, ...] = ()
    dims: dict[str, int] = field(default_factory=dict)
    specs: dict[str, dict[str, Any]] = field(default_factory=dict)
    media: dict[str, ConversationMedia] = field(default_factory=dict)

    @property
    def num_utterances(self) -> int:
        return sum(len(c) for c in self.conversations)

    def segments(self, modality: str) -> list[MediaSegment | None]:
        """Per utterance (dialogue-major), the media segment ``modality``'s features come from, or ``None``.

        Audio comes from the ``audio`` file, else from the audio track of the ``video``
        file (:meth:`ConversationMedia.audio_source`); visual from the ``video`` file.
        """
        out: list[MediaSegment | None] = []
        for conv in self.conversations:
            media = self.media.get(conv.id)
            out.extend(media.stream(modality) if media is not None else (None,) * len(conv))
        return out


def read_input(path: str | Path, split: str | None = None) -> PredictInput:
    """Read the conversations of ``path`` (module docstring).

    Args:
        path: Native folder, ``.csv``, ``.jsonl`` or ``.txt``.
        split: Native folders only: read this split alone (``train``, ``valid``, ``test``).

    Raises:
        DataError: A missing file or column, an empty input, an utterance index that is
            not an integer or repeats, or anything the native reader refuses.
    """
    p = Path(path)
    if p.is_dir():
        return _read_native(p, split)
    if split is not None:
        raise DataError(f"--split {split}: only a native dataset folder has splits, not {p.name}")
    if not p.is_file():
        raise DataError(f"--input {p} not found; give a native dataset folder, or a .csv, .jsonl or .txt file")
    suffix = p.suffix.lower()
    if suffix not in INPUT_SUFFIXES:
        raise DataError(f"--input {p}: unknown format {suffix or '(no suffix)'}; use .csv, .jsonl, .txt or a folder")
    try:
        text = p.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{p}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    if suffix == ".txt":
        rows = _transcript_rows(text, p)
    elif suffix == ".csv":
        rows = _csv_rows(text, p)
    else:
        rows = _jsonl_rows(text, p)
    if not rows:
        raise DataError(f"{p}: no utterances (an empty input); one row per utterance is expected")
    return _from_rows(rows, p)


def _read_native(folder: Path, split: str | None) -> PredictInput:
    from merc.data.formats.native import read_media, read_native
    from merc.features.spec import feature_specs

    if split is not None and split not in SPLITS:
        raise DataError(f"--split {split!r} is not one of {', '.join(SPLITS)}")
    dataset = read_native(folder, require_all_splits=False)
    convs = list(dataset.conversations(split))
    if not convs:
        raise DataError(f"{folder}: no dialogues{f' in split {split!r}' if split else ''} to predict")
    out: list[Conversation] = []
    present: dict[str, np.ndarray] = {}
    gold: dict[str, list[str | None]] = {}
    for conv in convs:
        texts = list(conv.texts) if conv.texts is not None else [""] * len(conv)
        present[conv.id] = np.array([bool(t.strip()) for t in texts])
        gold[conv.id] = [dataset.label_names[int(y)] if y != UNLABELLED else None for y in conv.labels]
        out.append(conv.replace(texts=texts))
    media = {cid: m for cid, m in read_media(folder).items() if cid in present}
    return PredictInput(
        out, present, gold, str(folder), tuple(dataset.modalities), dataset.dims, feature_specs(dataset), media
    )


def _check_fields(keys: Any, where: str) -> None:
    missing = [k for k in REQUIRED_FIELDS if k not in keys]
    if missing:
        raise DataError(
            f"{where}: missing field(s) {', '.join(missing)}; the fields are {', '.join(REQUIRED_FIELDS)} "
            f"and optionally {', '.join(OPTIONAL_FIELDS)}"
        )


def _csv_rows(text: str, path: Path) -> list[dict[str, Any]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if reader.fieldnames is None:
        return []
    _check_fields([f.strip() for f in reader.fieldnames], f"{path} (header)")
    rows = []
    try:
        for line, row in enumerate(reader, start=2):
            clean = {(k or "").strip(): v for k, v in row.items()}
            if any(clean.get(k) is None for k in REQUIRED_FIELDS):
                raise DataError(f"{path}:{line}: too few columns (expected {', '.join(REQUIRED_FIELDS)} at least)")
            rows.append({**clean, "_where": f"{path}:{line}"})
    except csv.Error as exc:
        raise DataError(f"{path}: not valid CSV ({exc})") from None
    return rows


def _jsonl_rows(text: str, path: Path) -> list[dict[str, Any]]:
    rows = []
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        where = f"{path}:{line}"
        try:
            row = json.loads(raw)
        except ValueError as exc:
            raise DataError(f"{where}: bad JSON ({exc})") from None
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object per utterance, got {type(row).__name__}")
        _check_fields(row, where)
        rows.append({**row, "_where": where})
    return rows


def _transcript_rows(text: str, path: Path) -> list[dict[str, Any]]:
    rows = []
    dialogue = 1
    seen_in_dialogue = False
    for line, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#"):
            continue
        if not stripped:
            if seen_in_dialogue:
                dialogue += 1
                seen_in_dialogue = False
            continue
        speaker, colon, utterance = stripped.partition(":")
        if not colon or not speaker.strip():
            raise DataError(f"{path}:{line}: expected 'SPEAKER: text', got {stripped[:60]!r}")
        rows.append(
            {
                "dialogue_id": f"dialogue_{dialogue}",
                "speaker": speaker.strip(),
                "text": utterance.strip(),
                "_where": f"{path}:{line}",
            }
        )
        seen_in_dialogue = True
    return rows


def _string(row: dict[str, Any], key: str, allow_empty: bool = False) -> str:
    value = row.get(key)
    if value is None and allow_empty:
        return ""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "text":
        value = str(value)
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        raise DataError(f"{row['_where']}: {key!r} must be a non-empty string, got {value!r}")
    return value.strip() if key != "text" else value


def _from_rows(rows: list[dict[str, Any]], path: Path) -> PredictInput:
    by_dialogue: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_dialogue.setdefault(_string(row, "dialogue_id"), []).append(row)
    convs: list[Conversation] = []
    present: dict[str, np.ndarray] = {}
    gold: dict[str, list[str | None]] = {}
    media: dict[str, ConversationMedia] = {}
    for dia, group in by_dialogue.items():
        if any(r.get("utterance_index") not in (None, "") for r in group):
            indexed = [(_index(r), r) for r in group]
            indices = [i for i, _ in indexed]
            if len(set(indices)) != len(indices):
                dup = next(i for i in indices if indices.count(i) > 1)
                raise DataError(f"{path}: dialogue {dia!r}: utterance_index {dup} repeats")
            group = [r for _, r in sorted(indexed, key=lambda x: x[0])]
        texts = [_string(r, "text", allow_empty=True) for r in group]
        utt_ids = [str(r["utterance_id"]) if r.get("utterance_id") not in (None, "") else "" for r in group]
        utt_ids = [u or f"{dia}_{k}" for k, u in enumerate(utt_ids)]
        labels = [r.get("label") for r in group]
        gold[dia] = [str(y).strip() if y not in (None, "") else None for y in labels]
        present[dia] = np.array([bool(t.strip()) for t in texts])
        convs.append(
            Conversation(
                id=dia,
                speakers=[_string(r, "speaker") for r in group],
                labels=np.full(len(group), UNLABELLED, dtype=np.int64),
                utterance_ids=utt_ids,
                texts=texts,
                split="test",
            )
        )
        found = _row_media(group, dia, utt_ids, path)
        if found is not None:
            media[dia] = found
    return PredictInput(convs, present, gold, str(path), media=media)


def _media_value(row: dict[str, Any], key: str) -> Any:
    """A media field as the native format's media keys hold it: ``None`` for an empty cell."""
    value = row.get(key)
    if isinstance(value, str):
        value = value.strip()
        if not value:
            return None
        if key in ("start", "end"):
            try:
                return float(value)  # a CSV cell is text; the native check then sees the number
            except ValueError:
                return value  # refused by the native check, with the utterance named
    return value


def _row_media(group: list[dict[str, Any]], dia: str, utt_ids: list[str], path: Path) -> ConversationMedia | None:
    """The media fields of one dialogue's rows, checked by the native format's own reader.

    The rows become the media keys of a native conversations.jsonl record (per-utterance
    lists, ``null`` where a row has none) and go through
    :func:`merc.data.formats.native.read_media`'s parser, so both formats give the same
    errors. One more rule, which the native format states with a dialogue-level file: a
    file named by several utterances of the dialogue needs each one's ``start`` and ``end``.
    """
    from merc.data.formats.native import parse_media

    values = {key: [_media_value(r, key) for r in group] for key in MEDIA_FIELDS}
    record: dict[str, Any] = {
        "id": dia,
        "labels": [UNLABELLED] * len(group),
        "utterance_ids": utt_ids,
        **{key: (v if any(x is not None for x in v) else None) for key, v in values.items()},
    }
    where = f"{path}: dialogue {dia!r}"
    media = parse_media(record, where, path.parent)
    if media is None:
        return None
    for key in MEDIA_STREAMS:
        named: dict[str, list[int]] = {}
        for i, value in enumerate(values[key]):
            if isinstance(value, str):
                named.setdefault(str((path.parent / value).resolve()), []).append(i)
        for indices in named.values():
            untimed = [i for i in indices if values["start"][i] is None or values["end"][i] is None]
            if len(indices) > 1 and untimed:
                i = untimed[0]
                raise DataError(
                    f"{where}: {key!r} {values[key][i]} is named by {len(indices)} utterances, so each needs its "
                    f"'start' and 'end' seconds; utterance {utt_ids[i]!r} has none"
                )
    return media


def _index(row: dict[str, Any]) -> int:
    value = row.get("utterance_index")
    try:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise DataError(f"{row['_where']}: utterance_index must be an integer, got {value!r}") from None
