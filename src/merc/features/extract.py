"""Audio and visual features of many utterances: per file, cached on disk, with a progress bar.

:func:`extract_segments` is the one loop every media extractor runs through
(:mod:`merc.features.audio`, :mod:`merc.features.visual`):

1. every file is probed first (:func:`merc.features.media.check_segments`), so bad
   input stops the run before anything is decoded;
2. the utterances are grouped by file, and each file is decoded **once** for all of its
   segments (a dialogue-level recording of 40 utterances is read once, not 40 times);
3. each file's features are cached in ``$MERC_CACHE_DIR/features/media/`` under a key
   that is the SHA-256 of: the extractor's name, its settings
   (:meth:`settings`), the library version, the file's content hash (SHA-256 of its
   bytes) and the segment times of that file in order. Another extractor, setting,
   library version, file content or segmentation gives another entry, and the same
   work is never done twice;
4. a tqdm bar counts utterances.

:func:`extract_folder` applies it to a native dataset folder whose conversations point
to media (:mod:`merc.data.formats.native`), which is what ``merc extract --modalities
a,v`` writes into ``features/<m>.safetensors``; with a frame-level extractor (``merc
extract --level sequence``: eGeMAPSv02 low-level descriptors, 25 per 10 ms frame) it
gives per-utterance frames instead, which go to ``sequences/<m>.safetensors``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from merc.data.formats.native import MediaSegment
from merc.data.schema import MODALITY_NAMES
from merc.errors import ConfigError, DataError
from merc.features.media import MediaInfo, check_segments, file_digest
from merc.features.text import cache_dir

log = logging.getLogger(__name__)

#: How many utterance ids a report lists (the counts are always complete).
REPORT_IDS = 20


class MediaExtractor(Protocol):
    """What :func:`extract_segments` needs of an extractor."""

    name: str
    modality: str
    stream: str

    @property
    def frame_level(self) -> bool: ...

    @property
    def dim(self) -> int: ...

    def settings(self) -> dict[str, Any]: ...

    def spec(self) -> dict[str, Any]: ...

    def extract_file(
        self, path: Path, info: MediaInfo, segments: Sequence[MediaSegment]
    ) -> tuple[list[np.ndarray], dict[str, np.ndarray]]: ...


@dataclass
class MediaFeatures:
    """Features of a list of utterances.

    Attributes:
        features: ``float32 [N, d]`` (utterance-level extractors): zeros where an
            utterance has no media (``present`` false).
        sequences: Frame-level extractors: per utterance ``float32 [L_i, d]`` or ``None``.
        present: ``bool [N]``: the utterance had media.
        extras: Per-utterance counts of the extractor, ``[N]`` each (visual: ``frames``,
            ``face_frames``; audio: ``padded``, ``seconds``), zero without media.
        files: Files read.
        cached_files: Of those, files whose features came from the cache (not decoded).
    """

    features: np.ndarray | None
    sequences: list[np.ndarray | None] | None
    present: np.ndarray
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    files: int = 0
    cached_files: int = 0


def cache_key(extractor: MediaExtractor, digest: str, segments: Sequence[MediaSegment]) -> str:
    """SHA-256 of extractor, settings, library version, file content hash and segment times."""
    spec = extractor.spec()
    payload = {
        "extractor": extractor.name,
        "settings": extractor.settings(),
        "library": spec.get("library"),
        "library_version": spec.get("library_version"),
        "file_sha256": digest,
        "segments": [[s.start, s.end] for s in segments],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


def media_cache_dir() -> Path:
    """``$MERC_CACHE_DIR/features/media`` (``~/.cache/merc/features/media`` by default)."""
    return cache_dir() / "media"


def _cache_path(extractor: MediaExtractor, key: str) -> Path:
    level = "lld" if extractor.frame_level else "utt"
    return media_cache_dir() / f"{extractor.name}-{level}--{key[:32]}.npz"


def _read_cache(path: Path, count: int, dim: int) -> tuple[list[np.ndarray], dict[str, np.ndarray]] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            values = np.asarray(data["values"], dtype=np.float32)
            lengths = np.asarray(data["lengths"], dtype=np.int64)
            extras = {k[len("extra_") :]: np.asarray(data[k]) for k in data.files if k.startswith("extra_")}
    except (OSError, ValueError, KeyError) as exc:
        log.warning("ignoring unreadable feature cache %s (%s)", path, exc)
        return None
    if len(lengths) != count or values.ndim != 2 or values.shape[1] != dim or int(lengths.sum()) != len(values):
        log.warning("ignoring stale feature cache %s", path)
        return None
    rows = np.split(values, np.cumsum(lengths)[:-1])
    return rows, extras


def _write_cache(path: Path, rows: list[np.ndarray], extras: Mapping[str, np.ndarray], frame_level: bool) -> None:
    mats = [r.reshape(-1, r.shape[-1]) if frame_level else r.reshape(1, -1) for r in rows]
    arrays: dict[str, np.ndarray] = {
        "values": np.concatenate(mats).astype(np.float32),
        "lengths": np.array([len(m) for m in mats], dtype=np.int64),
        **{f"extra_{k}": np.asarray(v) for k, v in extras.items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write-then-rename: an interrupted run never leaves a truncated cache file.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp.npz", dir=path.parent)
    os.close(fd)
    try:
        np.savez(tmp, **arrays)  # type: ignore[arg-type]  # numpy stubs read **kwds as allow_pickle
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def extract_segments(
    segments: Sequence[MediaSegment | None],
    extractor: MediaExtractor,
    show_progress: bool = True,
    what: str = "",
) -> MediaFeatures:
    """Features of every utterance's segment (module docstring).

    Args:
        segments: Per utterance, its media segment or ``None`` (no media).
        extractor: An audio or visual extractor.
        show_progress: Before any decoding (not when everything is cached), print one
            line to stderr (how many utterances and files, where the cache goes), then a
            progress bar over utterances.
        what: Name of the data, for that line (e.g. the dataset folder).

    Returns:
        :class:`MediaFeatures`, rows in the order of ``segments``.

    Raises:
        DataError: A missing or unreadable file, a segment outside its file, or a
            segment the extractor cannot describe; nothing is cached for the file.

    Shapes:
        - features: ``[len(segments), extractor.dim]``.
    """
    infos = check_segments(segments, extractor.stream)
    groups: dict[Path, list[int]] = {}
    for i, seg in enumerate(segments):
        if seg is not None:
            groups.setdefault(seg.path, []).append(i)
    n = len(segments)
    present = np.array([s is not None for s in segments], dtype=bool)
    rows: list[np.ndarray | None] = [None] * n
    extras: dict[str, np.ndarray] = {}
    plan: list[tuple[Path, list[int], list[MediaSegment], Path]] = []
    for path, idx in groups.items():
        segs = [s for s in (segments[i] for i in idx) if s is not None]
        plan.append((path, idx, segs, _cache_path(extractor, cache_key(extractor, file_digest(path), segs))))
    todo = [p for p in plan if not p[3].is_file()]
    if todo and show_progress:
        print(
            f"merc: {extractor.name} {MODALITY_NAMES[extractor.modality]} features of "
            f"{sum(len(p[1]) for p in todo):,} utterances from {len(todo):,} files{f' of {what}' if what else ''} "
            f"(once: cached in {media_cache_dir()})",
            file=sys.stderr,
            flush=True,
        )
    from tqdm.auto import tqdm

    cached = 0
    with tqdm(
        total=int(present.sum()),
        unit="utt",
        desc=f"{extractor.name} {MODALITY_NAMES[extractor.modality]}",
        disable=not (show_progress and todo),
        file=sys.stderr,
    ) as bar:
        for path, idx, segs, cache_file in plan:
            got = _read_cache(cache_file, len(idx), extractor.dim)
            if got is None:
                got = extractor.extract_file(path, infos[path], segs)
                _write_cache(cache_file, got[0], got[1], extractor.frame_level)
            else:
                cached += 1
            values, file_extras = got
            for k, i in enumerate(idx):
                rows[i] = values[k]
            for name, arr in file_extras.items():
                extras.setdefault(name, np.zeros(n, dtype=arr.dtype))[idx] = arr
            bar.update(len(idx))
    if extractor.frame_level:
        return MediaFeatures(None, rows, present, extras, len(plan), cached)
    feats = np.zeros((n, extractor.dim), dtype=np.float32)
    for i, r in enumerate(rows):
        if r is not None:
            feats[i] = r.reshape(-1)
    return MediaFeatures(feats, None, present, extras, len(plan), cached)


@dataclass
class FolderFeatures:
    """What :func:`extract_folder` computed for one modality of a dataset folder.

    Attributes:
        modality: ``a`` or ``v``.
        features: ``{conversation id: float32 [n_utt, d]}`` (utterance-level
            extractors; ``{}`` for frame-level ones).
        spec: The feature specification (:mod:`merc.features.spec`).
        report: Counts for ``metadata.json`` (``meta.extraction.<m>``): utterances,
            without media; visual: sampled frames, frames without a face, utterances
            without a face (and their first ids); audio: zero-padded short segments.
        warnings: One line per thing the user should know (no media, no face, padding).
    """

    modality: str
    features: dict[str, np.ndarray]
    spec: dict[str, Any]
    report: dict[str, Any]
    warnings: list[str]
    #: Frame-level extractors: ``{conversation id: [float32 [L_i, d] per utterance]}``;
    #: an utterance without media has ``L_i = 0``.
    sequences: dict[str, list[np.ndarray]] = field(default_factory=dict)


def build_extractor(modality: str, name: str | None = None, **settings: Any) -> MediaExtractor:
    """The extractor of ``modality`` (``a``: ``egemaps``, ``compare``, ``librosa``; ``v``: ``faces``)."""
    if modality == "a":
        from merc.features.audio import DEFAULT_AUDIO_EXTRACTOR, build_audio_extractor

        return build_audio_extractor(name or DEFAULT_AUDIO_EXTRACTOR, **settings)
    if modality == "v":
        from merc.features.visual import DEFAULT_VISUAL_EXTRACTOR, build_visual_extractor

        return build_visual_extractor(name or DEFAULT_VISUAL_EXTRACTOR, **settings)
    raise ConfigError(f"modality {modality!r} has no media extractor; use a (audio) or v (visual)")


def extractor_from_spec(spec: Mapping[str, Any]) -> MediaExtractor:
    """Rebuild the extractor a recorded feature specification describes (so new data is described alike).

    Raises:
        ConfigError: Not a media extractor's specification, or one this merc cannot reproduce.
    """
    if spec.get("source") == "audio-extractor":
        from merc.features.audio import audio_extractor_from_spec

        return audio_extractor_from_spec(spec)
    if spec.get("source") == "visual-extractor":
        from merc.features.visual import visual_extractor_from_spec

        return visual_extractor_from_spec(spec)
    raise ConfigError(f"feature specification {spec!r} is not a media extractor's")


def _ids(ids: Sequence[str]) -> list[str]:
    return list(ids[:REPORT_IDS])


def extract_folder(folder: str | Path, extractor: MediaExtractor, show_progress: bool = True) -> FolderFeatures:
    """Features of every utterance of a native dataset folder from the media its conversations name.

    Utterances without media get zero rows; utterances without a face in any sampled
    frame get zero face statistics (face fraction 0). Both are counted in the report and
    named in a warning, never silent.

    Raises:
        DataError: No conversation names media for this modality, or anything
            :func:`extract_segments` refuses.
    """
    from merc.data.formats.native import read_media, read_native

    folder = Path(folder)
    dataset = read_native(folder, require_all_splits=False, read_features=False)
    media = read_media(folder)
    m = extractor.modality
    convs = list(dataset.conversations())
    segments: list[MediaSegment | None] = []
    uids: list[str] = []
    for conv in convs:
        segments.extend(media[conv.id].stream(m) if conv.id in media else (None,) * len(conv))
        uids.extend(conv.utterance_ids)
    if not any(s is not None for s in segments):
        keys = "'audio' or 'video'" if m == "a" else "'video'"
        raise DataError(
            f"{folder}: no conversation names {MODALITY_NAMES[m]} media (keys {keys} in conversations.jsonl), so "
            f"there is nothing to compute {MODALITY_NAMES[m]} features from; see the README's format section"
        )
    result = extract_segments(segments, extractor, show_progress=show_progress, what=str(folder))
    n = len(segments)
    without = [u for u, ok in zip(uids, result.present) if not ok]
    report: dict[str, Any] = {
        "extractor": extractor.name,
        "utterances": n,
        "without_media": len(without),
        "without_media_ids": _ids(without),
        "files": result.files,
    }
    warnings: list[str] = []
    if without:
        warnings.append(
            f"{len(without)} of {n} utterances have no {MODALITY_NAMES[m]} media (first: {without[0]!r}): "
            + (f"their {m} sequences are empty" if extractor.frame_level else f"their {m} features are zeros")
        )
    if "face_frames" in result.extras:
        frames, faces = result.extras["frames"], result.extras["face_frames"]
        no_face = [u for u, ok, f in zip(uids, result.present, faces) if ok and f == 0]
        report.update(
            frames=int(frames.sum()),
            frames_without_face=int((frames - faces).sum()),
            utterances_without_face=len(no_face),
            utterances_without_face_ids=_ids(no_face),
        )
        if report["frames_without_face"]:
            warnings.append(
                f"{report['frames_without_face']} of {report['frames']} sampled frames show no face"
                + (
                    f"; {len(no_face)} utterances have none at all (first: {no_face[0]!r}): zero face statistics, "
                    "face fraction 0"
                    if no_face
                    else ""
                )
            )
    if "padded" in result.extras:
        padded = [u for u, p in zip(uids, result.extras["padded"]) if p]
        report.update(padded=len(padded), padded_ids=_ids(padded))
        if padded:
            from merc.features.audio import MIN_SECONDS

            warnings.append(
                f"{len(padded)} utterances are shorter than {MIN_SECONDS:g} s (first: {padded[0]!r}): zero-padded"
            )
    for line in warnings:
        log.warning("%s: %s", folder, line)
    features: dict[str, np.ndarray] = {}
    sequences: dict[str, list[np.ndarray]] = {}
    empty = np.zeros((0, extractor.dim), dtype=np.float32)
    start = 0
    for conv in convs:
        if result.features is not None:
            features[conv.id] = result.features[start : start + len(conv)]
        else:
            rows = (result.sequences or [None] * n)[start : start + len(conv)]
            sequences[conv.id] = [empty if r is None else r for r in rows]
        start += len(conv)
    if extractor.frame_level:
        report["frames"] = int(sum(len(r) for rows in sequences.values() for r in rows))
    return FolderFeatures(m, features, extractor.spec(), report, warnings, sequences)
