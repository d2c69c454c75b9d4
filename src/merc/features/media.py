"""Media files of utterances: checking, hashing and decoding audio and video, offline.

Decoding uses maintained PyPI packages only, never a system binary:

- **audio**: wav, flac, mp3 and ogg through ``soundfile`` (libsndfile ships inside its
  wheel); anything else, and the audio track of a video, through PyAV (``av``, which
  ships its own FFmpeg). Every signal is mixed down to mono (mean of the channels) and
  resampled to :data:`AUDIO_RATE` (16 kHz) with a polyphase filter
  (:func:`scipy.signal.resample_poly`), the same way whichever decoder read it.
- **video**: PyAV decodes the frames, as 8-bit grey images, in presentation order; the
  frame shown at a requested time is the last one whose timestamp is not after it.

:func:`check_segments` opens every file once before anything is decoded, so a missing
file, a file that is not media, a file without the needed stream or a segment past the
file's end is reported (naming dialogue and utterance) before any work starts.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from merc.data.formats.native import MediaSegment
from merc.errors import DataError

#: Sample rate (Hz) every audio signal is resampled to before feature extraction.
AUDIO_RATE: int = 16000
#: A segment may end this many seconds after the probed end of its file (container
#: durations are rounded); later is an error. Decoded signals are cut at their real end.
END_TOLERANCE_S: float = 0.05
#: Suffixes ``soundfile`` reads; other files go through PyAV.
SOUNDFILE_SUFFIXES: tuple[str, ...] = (".wav", ".flac", ".mp3", ".ogg", ".aiff", ".aif")

_DIGESTS: dict[tuple[str, int, int], str] = {}


@dataclass(frozen=True)
class MediaInfo:
    """What :func:`probe` found in a file.

    Attributes:
        path: The file.
        duration: Seconds (of the needed stream where the container says it), or
            ``None`` when the container does not say.
        has_audio: It has an audio stream.
        has_video: It has a video stream.
        reader: ``"soundfile"`` or ``"av"``.
    """

    path: Path
    duration: float | None
    has_audio: bool
    has_video: bool
    reader: str


def file_digest(path: Path) -> str:
    """SHA-256 of the file's bytes (remembered per path, size and modification time)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def _open_av(path: Path) -> Any:
    import av

    return av.open(str(path), mode="r")


def probe(path: Path, need: str, where: str) -> MediaInfo:
    """Open ``path`` and read its streams and duration.

    Args:
        path: The media file.
        need: ``"audio"`` or ``"video"``: the stream the caller will decode.
        where: Who points to the file, for messages (``dialogue 'd', utterance 'u' (...)``).

    Raises:
        DataError: The file is missing, not readable as media, or lacks the needed stream.
    """
    if not path.is_file():
        raise DataError(f"{where}: media file not found: {path}")
    if need == "audio" and path.suffix.lower() in SOUNDFILE_SUFFIXES:
        import soundfile

        try:
            info = soundfile.info(str(path))
        except (RuntimeError, OSError, ValueError):
            pass  # not what its suffix says: PyAV may still read it
        else:
            if info.frames > 0 and info.samplerate > 0:
                return MediaInfo(path, info.frames / info.samplerate, True, False, "soundfile")
    try:
        container = _open_av(path)
    except Exception as exc:  # PyAV raises its own FFmpeg error classes, one per errno
        raise DataError(f"{where}: cannot read {path} as audio or video ({_av_message(exc)})") from None
    try:
        audio = list(container.streams.audio)
        video = list(container.streams.video)
        if need == "audio" and not audio:
            raise DataError(f"{where}: {path} has no audio track")
        if need == "video" and not video:
            raise DataError(f"{where}: {path} has no video stream (an audio file given as 'video'?)")
        stream = (audio if need == "audio" else video)[0]
        duration: float | None = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000  # FFmpeg's AV_TIME_BASE
        return MediaInfo(path, duration, bool(audio), bool(video), "av")
    finally:
        container.close()


def _av_message(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def check_segments(segments: Sequence[MediaSegment | None], need: str) -> dict[Path, MediaInfo]:
    """Probe every file the segments name (once each) and check the segments against it.

    Args:
        segments: Per utterance, its segment or ``None``.
        need: ``"audio"`` or ``"video"``.

    Returns:
        ``{path: MediaInfo}`` for every file named.

    Raises:
        DataError: A file is missing, unreadable or lacks the stream; a segment starts
            at or after the end of its file, or ends more than :data:`END_TOLERANCE_S`
            after it. The message names the dialogue and the utterance.
    """
    infos: dict[Path, MediaInfo] = {}
    for seg in segments:
        if seg is None:
            continue
        info = infos.get(seg.path)
        if info is None:
            info = infos[seg.path] = probe(seg.path, need, seg.where())
        if info.duration is None:
            continue  # checked against the decoded length instead
        if seg.start is not None and seg.start >= info.duration:
            raise DataError(
                f"{seg.where()}: segment starts at {seg.start:g} s, at or after the end of the file "
                f"({info.duration:.3f} s)"
            )
        if seg.end is not None and seg.end > info.duration + END_TOLERANCE_S:
            raise DataError(
                f"{seg.where()}: segment ends at {seg.end:g} s, after the end of the file ({info.duration:.3f} s)"
            )
    return infos


def _to_mono_16k(channels: np.ndarray, rate: int, sample_rate: int) -> np.ndarray:
    """``[channels, n]`` at ``rate`` -> mono float32 ``[m]`` at ``sample_rate``."""
    mono = channels.astype(np.float64).mean(axis=0)
    if rate != sample_rate:
        from scipy.signal import resample_poly

        ratio = Fraction(sample_rate, rate)
        mono = resample_poly(mono, ratio.numerator, ratio.denominator)
    return np.ascontiguousarray(mono, dtype=np.float32)


def decode_audio(path: Path, sample_rate: int = AUDIO_RATE, where: str = "") -> np.ndarray:
    """The whole audio of ``path`` (a sound file or a video's audio track), mono at ``sample_rate``.

    Returns:
        ``float32 [n]`` in [-1, 1] (as decoded).

    Raises:
        DataError: The file cannot be decoded (``where`` names who points to it).
    """
    prefix = f"{where}: " if where else ""
    if path.suffix.lower() in SOUNDFILE_SUFFIXES:
        import soundfile

        try:
            data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
        except (RuntimeError, OSError, ValueError):
            pass  # e.g. an mp3 libsndfile cannot read: PyAV tries
        else:
            if data.shape[0]:
                return _to_mono_16k(data.T, int(rate), sample_rate)
    import av

    try:
        container = _open_av(path)
    except Exception as exc:
        raise DataError(f"{prefix}cannot read {path} as audio ({_av_message(exc)})") from None
    try:
        if not container.streams.audio:
            raise DataError(f"{prefix}{path} has no audio track")
        stream = container.streams.audio[0]
        # Planar float keeps each channel apart whatever the codec's own sample format.
        resampler = av.AudioResampler(format="fltp")
        chunks: list[np.ndarray] = []
        rate = 0
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                rate = out.sample_rate
                chunks.append(out.to_ndarray())
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray())
    except av.FFmpegError as exc:
        raise DataError(f"{prefix}cannot decode the audio of {path} ({_av_message(exc)})") from None
    finally:
        container.close()
    if not chunks or not rate:
        raise DataError(f"{prefix}{path}: its audio track holds no samples")
    return _to_mono_16k(np.concatenate(chunks, axis=1), rate, sample_rate)


def segment_bounds(seg: MediaSegment | tuple[float | None, float | None], length: int, rate: int) -> tuple[int, int]:
    """Sample indices ``[begin, end)`` of a segment in a signal of ``length`` samples."""
    start, end = (seg.start, seg.end) if isinstance(seg, MediaSegment) else seg
    begin = 0 if start is None else min(length, int(round(start * rate)))
    stop = length if end is None else min(length, int(round(end * rate)))
    return begin, stop


def frame_times(start: float, end: float, fps: float) -> np.ndarray:
    """Times at which frames of the span ``[start, end)`` are sampled at ``fps``.

    ``n = max(1, round((end - start) * fps))`` frames at the centres of ``n`` equal
    sub-spans: one every ``1/fps`` seconds, and at least the middle frame of a span
    shorter than that.

    >>> frame_times(0.0, 1.0, 4.0).tolist()
    [0.125, 0.375, 0.625, 0.875]
    """
    n = max(1, int(math.floor((end - start) * fps + 0.5)))
    return start + (np.arange(n) + 0.5) * ((end - start) / n)


def video_duration(path: Path) -> float:
    """Seconds of the first video stream: the end of its last decoded frame when the container does not say."""
    container = _open_av(path)
    try:
        stream = container.streams.video[0]
        if stream.duration is not None and stream.time_base is not None:
            return float(stream.duration * stream.time_base)
        if container.duration is not None:
            return container.duration / 1_000_000
        last = 0.0
        for frame in container.decode(stream):
            if frame.time is not None:
                last = float(frame.time)
        rate = float(stream.average_rate or 25)
        return last + 1.0 / rate
    finally:
        container.close()


def video_frames(path: Path, times: Sequence[float], where: str = "") -> Iterator[tuple[int, np.ndarray]]:
    """Decode ``path`` once and yield ``(i, grey frame)`` for each requested time ``times[i]``.

    The frame for time ``t`` (seconds from the stream's first timestamp) is the last
    frame whose timestamp is ``<= t`` (the one on screen at ``t``; the first frame for
    ``t`` before it). ``times`` may come in any order; the frames come in time order.

    Shapes:
        - each frame: ``uint8 [H, W]``.

    Raises:
        DataError: The video cannot be decoded.
    """
    import av

    order = np.argsort(np.asarray(times, dtype=np.float64), kind="stable")
    sorted_times = np.asarray(times, dtype=np.float64)[order]
    prefix = f"{where}: " if where else ""
    try:
        container = _open_av(path)
    except Exception as exc:
        raise DataError(f"{prefix}cannot read {path} as video ({_av_message(exc)})") from None
    j = 0
    previous: Any = None
    try:
        stream = container.streams.video[0]
        # Times count from the start of the stream (MPEG-TS and some mp4 start later than 0).
        offset = float(stream.start_time * stream.time_base) if stream.start_time and stream.time_base else 0.0
        for frame in container.decode(stream):
            t = float(frame.time) - offset if frame.time is not None else math.inf
            # Every requested time before this frame's timestamp shows the previous frame.
            while j < len(sorted_times) and sorted_times[j] < t:
                shown = previous if previous is not None else frame
                yield int(order[j]), shown.to_ndarray(format="gray")
                j += 1
            if j == len(sorted_times):
                break
            previous = frame
        while j < len(sorted_times) and previous is not None:
            yield int(order[j]), previous.to_ndarray(format="gray")
            j += 1
    except av.FFmpegError as exc:
        raise DataError(f"{prefix}cannot decode the video of {path} ({_av_message(exc)})") from None
    finally:
        container.close()
    if j < len(sorted_times):
        raise DataError(f"{prefix}{path}: its video stream holds no frames")
