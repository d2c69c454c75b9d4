"""Utterance-level audio features: openSMILE (eGeMAPS, ComParE) or librosa statistics.

Every extractor reads the utterance's samples as :mod:`merc.features.media` decodes them
(mono, 16 kHz) and returns one vector per utterance, or, with ``level="lld"``, its
frames of low-level descriptors for frame-level models.

=========== ============================================================== ======= =========
name        what                                                           dim     LLD dim
=========== ============================================================== ======= =========
``egemaps`` eGeMAPSv02 functionals (Eyben et al., IEEE TAC 2016), through    88      25
            the ``opensmile`` package (audEERING's openSMILE 3 in its wheel)
``compare`` ComParE_2016 functionals (Schuller et al., Interspeech 2016),   6373     65
            through ``opensmile``
``librosa`` log-mel (64 bands, 25 ms window, 10 ms hop, dB re 1) and       168      84
            20 MFCCs, mean and standard deviation over frames
=========== ============================================================== ======= =========

openSMILE needs at least 60 ms of signal; shorter segments are zero-padded at the end
to :data:`MIN_SECONDS` (and counted in the extraction report), never returned as NaN.
"""

from __future__ import annotations

import importlib.metadata
import warnings
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from merc.data.formats.native import MediaSegment
from merc.errors import ConfigError, DataError, resolve_choice
from merc.features.media import AUDIO_RATE, MediaInfo, decode_audio, segment_bounds

#: Audio extractors by name (``merc extract --audio-extractor``).
AUDIO_EXTRACTORS: tuple[str, ...] = ("egemaps", "compare", "librosa")
DEFAULT_AUDIO_EXTRACTOR = "egemaps"
#: Feature levels: one vector per utterance, or low-level descriptor frames.
AUDIO_LEVELS: tuple[str, ...] = ("functionals", "lld")
#: Segments shorter than this are zero-padded to it (openSMILE's functionals need 60 ms).
MIN_SECONDS: float = 0.1

_OPENSMILE_SETS: dict[str, str] = {"egemaps": "eGeMAPSv02", "compare": "ComParE_2016"}
_OPENSMILE_DIMS: dict[tuple[str, str], int] = {
    ("egemaps", "functionals"): 88,
    ("egemaps", "lld"): 25,
    ("compare", "functionals"): 6373,
    ("compare", "lld"): 65,
}


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - depends on the installation
        return None


def _require(module: str, package: str) -> Any:
    try:
        return __import__(module)
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ConfigError(
            f"audio features need the package {package}; install merc's audio extra: pip install -e '.[audio]'"
        ) from exc


class AudioExtractor:
    """Base of the audio extractors: decoding, segments, padding; subclasses compute features.

    Attributes:
        name: Registry name (``egemaps``, ``compare``, ``librosa``).
        level: ``"functionals"`` (one vector per utterance) or ``"lld"`` (frames).
        modality: ``"a"``.
    """

    name: str = ""
    library: str = ""
    modality: str = "a"
    stream: str = "audio"

    def __init__(self, level: str = "functionals") -> None:
        self.level = resolve_choice("audio feature level", level, AUDIO_LEVELS)

    @property
    def frame_level(self) -> bool:
        return self.level == "lld"

    @property
    def dim(self) -> int:
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """Everything that changes the output (part of the cache key and the spec)."""
        return {"level": self.level, "sample_rate": AUDIO_RATE, "channels": "mean", "min_seconds": MIN_SECONDS}

    def spec(self) -> dict[str, Any]:
        """The feature specification (:mod:`merc.features.spec`) of these features."""
        return {
            "source": "audio-extractor",
            "extractor": self.name,
            "library": self.library,
            "library_version": _version(self.library),
            "settings": self.settings(),
            "dim": self.dim,
        }

    def compute(self, signal: np.ndarray, rate: int) -> np.ndarray:
        """Features of one utterance's samples: ``[d]`` (functionals) or ``[L, d]`` (lld)."""
        raise NotImplementedError

    def extract_file(
        self, path: Path, info: MediaInfo, segments: Sequence[MediaSegment]
    ) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
        """Decode ``path`` once and compute every segment of it.

        Returns:
            Per segment its features, and per-segment extras: ``padded`` (bool: shorter
            than :data:`MIN_SECONDS`, zero-padded) and ``seconds`` (the segment's length).
        """
        where = segments[0].where()
        signal = decode_audio(path, AUDIO_RATE, where)
        out: list[np.ndarray] = []
        padded = np.zeros(len(segments), dtype=bool)
        seconds = np.zeros(len(segments), dtype=np.float32)
        min_len = int(round(MIN_SECONDS * AUDIO_RATE))
        for i, seg in enumerate(segments):
            begin, end = segment_bounds(seg, len(signal), AUDIO_RATE)
            if end <= begin:
                raise DataError(
                    f"{seg.where()}: segment holds no audio (the decoded file is {len(signal) / AUDIO_RATE:.3f} s)"
                )
            x = signal[begin:end]
            seconds[i] = len(x) / AUDIO_RATE
            if len(x) < min_len:
                padded[i] = True
                x = np.concatenate([x, np.zeros(min_len - len(x), np.float32)])
            feats = np.asarray(self.compute(x, AUDIO_RATE), dtype=np.float32)
            if not np.isfinite(feats).all():
                raise DataError(f"{seg.where()}: {self.name} gave NaN or inf features for this segment")
            out.append(feats)
        return out, {"padded": padded, "seconds": seconds}


class OpenSmileExtractor(AudioExtractor):
    """openSMILE feature sets through the ``opensmile`` package.

    Args:
        feature_set: ``"egemaps"`` (eGeMAPSv02, default) or ``"compare"`` (ComParE_2016).
        level: ``"functionals"`` (default: 88 / 6373 values per utterance) or ``"lld"``
            (25 / 65 low-level descriptors every 10 ms).
    """

    library = "opensmile"

    def __init__(self, feature_set: str = "egemaps", level: str = "functionals") -> None:
        super().__init__(level)
        self.name = resolve_choice("openSMILE feature set", feature_set, tuple(_OPENSMILE_SETS))

    @property
    def dim(self) -> int:
        return _OPENSMILE_DIMS[(self.name, self.level)]

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "feature_set": _OPENSMILE_SETS[self.name]}

    @cached_property
    def _smile(self) -> Any:
        opensmile = _require("opensmile", "opensmile")
        level = (
            opensmile.FeatureLevel.Functionals
            if self.level == "functionals"
            else opensmile.FeatureLevel.LowLevelDescriptors
        )
        return opensmile.Smile(
            feature_set=getattr(opensmile.FeatureSet, _OPENSMILE_SETS[self.name]), feature_level=level
        )

    @property
    def feature_names(self) -> list[str]:
        return list(self._smile.feature_names)

    def compute(self, signal: np.ndarray, rate: int) -> np.ndarray:
        with warnings.catch_warnings():
            # Its "segment too short" warning cannot happen after padding; others pass through.
            warnings.filterwarnings("ignore", message="Segment too short")
            values = self._smile.process_signal(signal, rate).to_numpy(dtype=np.float32)
        return values[0] if self.level == "functionals" else values


class LibrosaExtractor(AudioExtractor):
    """Log-mel and MFCC statistics through ``librosa``.

    Per 10 ms frame (25 ms Hann window): ``n_mels`` log-mel energies
    (``10 log10(max(S, 1e-10))``, dB relative to 1, so loudness is kept) and the first
    ``n_mfcc`` MFCCs of them. Functionals: mean and standard deviation of each over the
    utterance's frames, ``2 (n_mels + n_mfcc)`` values (168 by default).

    Args:
        n_mels: Mel bands. Default 64.
        n_mfcc: MFCCs. Default 20.
        level: ``"functionals"`` (default) or ``"lld"`` (frames of ``n_mels + n_mfcc``).
    """

    name = "librosa"
    library = "librosa"

    def __init__(self, n_mels: int = 64, n_mfcc: int = 20, level: str = "functionals") -> None:
        super().__init__(level)
        if not 1 <= n_mfcc <= n_mels:
            raise ConfigError(f"librosa extractor: need 1 <= n_mfcc <= n_mels, got n_mfcc={n_mfcc}, n_mels={n_mels}")
        self.n_mels = int(n_mels)
        self.n_mfcc = int(n_mfcc)

    @property
    def dim(self) -> int:
        per_frame = self.n_mels + self.n_mfcc
        return per_frame if self.frame_level else 2 * per_frame

    def settings(self) -> dict[str, Any]:
        return {
            **super().settings(),
            "n_mels": self.n_mels,
            "n_mfcc": self.n_mfcc,
            "n_fft": 400,
            "hop_length": 160,
            "window": "hann",
            "db_reference": 1.0,
            "statistics": ["mean", "std"],
        }

    def compute(self, signal: np.ndarray, rate: int) -> np.ndarray:
        librosa = _require("librosa", "librosa")
        mel = librosa.feature.melspectrogram(
            y=signal, sr=rate, n_fft=400, hop_length=160, window="hann", n_mels=self.n_mels, power=2.0
        )
        logmel = librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None)
        mfcc = librosa.feature.mfcc(S=logmel, n_mfcc=self.n_mfcc)
        frames = np.concatenate([logmel, mfcc], axis=0).T.astype(np.float32)  # [L, n_mels + n_mfcc]
        if self.frame_level:
            return frames
        return np.concatenate([frames.mean(axis=0), frames.std(axis=0)])


def build_audio_extractor(name: str = DEFAULT_AUDIO_EXTRACTOR, **settings: Any) -> AudioExtractor:
    """The audio extractor ``name`` (``egemaps``, ``compare``, ``librosa``) with ``settings``.

    Raises:
        ConfigError: An unknown name or setting.

    >>> build_audio_extractor("egemaps").dim
    88
    """
    name = resolve_choice("audio extractor", name, AUDIO_EXTRACTORS)
    try:
        if name == "librosa":
            return LibrosaExtractor(**settings)
        return OpenSmileExtractor(name, **settings)
    except TypeError as exc:
        raise ConfigError(f"audio extractor {name!r}: {exc}") from None


def audio_extractor_from_spec(spec: Mapping[str, Any]) -> AudioExtractor:
    """Rebuild the extractor a ``{"source": "audio-extractor", ...}`` specification describes."""
    settings = dict(spec.get("settings") or {})
    options: dict[str, Any] = {"level": settings.get("level", "functionals")}
    if spec.get("extractor") == "librosa":
        options.update(n_mels=settings.get("n_mels", 64), n_mfcc=settings.get("n_mfcc", 20))
    extractor = build_audio_extractor(str(spec.get("extractor")), **options)
    if extractor.settings() != settings:
        raise ConfigError(
            f"audio feature specification {spec!r} does not match what this merc computes ({extractor.settings()}); "
            "use the merc version the model was trained with"
        )
    return extractor
