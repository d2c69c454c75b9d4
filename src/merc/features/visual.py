"""Utterance-level face features from video frames, with OpenCV's own models, offline.

The detectors are the Viola-Jones Haar cascades (Viola & Jones, CVPR 2001) that ship
inside the ``opencv-python-headless`` wheel (``cv2.data.haarcascades``, OpenCV 4.x):
``haarcascade_frontalface_default.xml`` for the face, ``haarcascade_eye.xml`` for the
eyes, ``haarcascade_smile.xml`` for a smile. Nothing is downloaded.

Per utterance, frames are sampled from its time span at ``fps`` (default 5;
:func:`merc.features.media.frame_times`). Per frame (8-bit grey):

1. downscale so the longer side is at most ``max_side`` pixels, equalise the histogram;
2. detect faces (scale step 1.1, 5 neighbours, at least ``min_face`` of the shorter
   side); keep the largest. A frame without one is counted, not described;
3. find the eyes in the upper 60 % of the face (enlarged to at least 128 pixels wide)
   and a smile in its lower half; with two eyes (left and right half, tilt under 30
   degrees) rotate so the eye line is level (the *aligned* crop);
4. the aligned face, resized to 64 x 64, is described by a HOG (Dalal & Triggs,
   CVPR 2005: 9 orientation bins, 16-pixel cells, 2 x 2-cell blocks with a 16-pixel
   stride, L2-Hys: 324 values), plus 8 geometry values: face centre x, y and width,
   height (fractions of the frame), eyes found / 2, eye-line angle (radians),
   eye distance / face width, smile found (0/1) in the lower half of the face.

Pooled over the utterance's frames with a face: mean and standard deviation of the 332
frame values, then the fraction of sampled frames with a face: ``2 * 332 + 1 = 665``
values. An utterance with no face in any frame has zeros there and face fraction 0; it
is counted, listed in the extraction report and named in a warning.
"""

from __future__ import annotations

import importlib.metadata
import math
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from merc.data.formats.native import MediaSegment
from merc.errors import ConfigError, DataError, resolve_choice
from merc.features.media import MediaInfo, frame_times, video_duration, video_frames

#: Visual extractors by name (``merc extract --visual-extractor``).
VISUAL_EXTRACTORS: tuple[str, ...] = ("faces",)
DEFAULT_VISUAL_EXTRACTOR = "faces"
#: Side (pixels) of the aligned face crop the HOG describes.
CROP = 64
#: Faces narrower than this (pixels) are enlarged to it before the eye and smile search.
FEATURE_SIDE = 128
#: HOG layout: window, block, block stride, cell, bins (OpenCV HOGDescriptor order).
HOG_LAYOUT: tuple[int, int, int, int, int] = (64, 32, 16, 16, 9)
GEOMETRY_NAMES: tuple[str, ...] = (
    "face_x",
    "face_y",
    "face_width",
    "face_height",
    "eyes_found",
    "eye_angle",
    "eye_distance",
    "smile",
)
_HOG_DIM = ((HOG_LAYOUT[0] - HOG_LAYOUT[1]) // HOG_LAYOUT[2] + 1) ** 2 * (HOG_LAYOUT[1] // HOG_LAYOUT[3]) ** 2 * 9
#: Values per frame: geometry then HOG.
FRAME_DIM = len(GEOMETRY_NAMES) + _HOG_DIM
_MAX_EYE_TILT = math.radians(30)


def _cv2() -> Any:
    try:
        import cv2
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ConfigError(
            "visual features need opencv-python-headless (4.x); install merc's video extra: pip install -e '.[video]'"
        ) from exc
    return cv2


def cascade_path(name: str) -> Path:
    """A Haar cascade that ships in the OpenCV wheel.

    Raises:
        ConfigError: This OpenCV has no such file (OpenCV 5 wheels ship none: merc needs 4.x).
    """
    cv2 = _cv2()
    folder = getattr(getattr(cv2, "data", None), "haarcascades", "")
    path = Path(folder) / name
    if not path.is_file():
        raise ConfigError(
            f"OpenCV {cv2.__version__} has no {name} in its wheel; merc's face features need "
            "opencv-python-headless>=4.8,<5 (pip install -c constraints.txt 'opencv-python-headless<5')"
        )
    return path


class FaceExtractor:
    """Face features per utterance (module docstring).

    Args:
        fps: Frames sampled per second of the utterance. Default 5.
        max_side: Frames are downscaled to at most this many pixels on the longer side
            before detection. Default 480.
        min_face: Smallest face, as a fraction of the frame's shorter side. Default 0.08.

    Shapes:
        - per utterance: ``[665]``; per frame (:meth:`describe_frame`): ``[332]`` or ``None``.
    """

    name = "faces"
    library = "opencv-python-headless"
    modality = "v"
    stream = "video"

    @property
    def frame_level(self) -> bool:
        return False

    def __init__(self, fps: float = 5.0, max_side: int = 480, min_face: float = 0.08) -> None:
        if not (isinstance(fps, int | float) and math.isfinite(fps) and 0 < fps <= 120):
            raise ConfigError(f"visual fps must be a number in (0, 120], got {fps!r}")
        if not (isinstance(max_side, int) and max_side >= 64):
            raise ConfigError(f"visual max_side must be an integer >= 64, got {max_side!r}")
        if not (isinstance(min_face, int | float) and 0 < min_face < 1):
            raise ConfigError(f"visual min_face must be a fraction in (0, 1), got {min_face!r}")
        self.fps = float(fps)
        self.max_side = int(max_side)
        self.min_face = float(min_face)

    @property
    def dim(self) -> int:
        return 2 * FRAME_DIM + 1

    def settings(self) -> dict[str, Any]:
        return {
            "fps": self.fps,
            "max_side": self.max_side,
            "min_face": self.min_face,
            "detector": "haarcascade_frontalface_default.xml, scale 1.1, 5 neighbours, largest face",
            "eyes": "haarcascade_eye.xml in the upper 60% of the face, enlarged to >= 128 px, 5 neighbours",
            "smile": "haarcascade_smile.xml in the lower half of the face, enlarged to >= 128 px, 15 neighbours",
            "crop": CROP,
            "hog": dict(zip(("window", "block", "stride", "cell", "bins"), HOG_LAYOUT)),
            "frame_features": [*GEOMETRY_NAMES, f"hog[{_HOG_DIM}]"],
            "pooling": ["mean", "std", "face_fraction"],
        }

    def spec(self) -> dict[str, Any]:
        try:
            version: str | None = importlib.metadata.version(self.library)
        except importlib.metadata.PackageNotFoundError:  # pragma: no cover - depends on the installation
            version = None
        return {
            "source": "visual-extractor",
            "extractor": self.name,
            "library": self.library,
            "library_version": version,
            "settings": self.settings(),
            "dim": self.dim,
        }

    @cached_property
    def _models(self) -> tuple[Any, Any, Any, Any]:
        cv2 = _cv2()
        cascades = [
            cv2.CascadeClassifier(str(cascade_path(n)))
            for n in ("haarcascade_frontalface_default.xml", "haarcascade_eye.xml", "haarcascade_smile.xml")
        ]
        hog = cv2.HOGDescriptor(
            (HOG_LAYOUT[0],) * 2, (HOG_LAYOUT[1],) * 2, (HOG_LAYOUT[2],) * 2, (HOG_LAYOUT[3],) * 2, HOG_LAYOUT[4]
        )
        return cascades[0], cascades[1], cascades[2], hog

    def describe_frame(self, grey: np.ndarray) -> np.ndarray | None:
        """The 332 values of one ``uint8 [H, W]`` frame, or ``None`` when no face is found."""
        cv2 = _cv2()
        face_model, eye_model, smile_model, hog = self._models
        h0, w0 = grey.shape[:2]
        scale = min(1.0, self.max_side / max(h0, w0))
        img = (
            grey
            if scale == 1.0
            else cv2.resize(grey, (round(w0 * scale), round(h0 * scale)), interpolation=cv2.INTER_AREA)
        )
        img = cv2.equalizeHist(img)
        h, w = img.shape
        side = max(24, int(self.min_face * min(h, w)))
        faces = face_model.detectMultiScale(img, scaleFactor=1.1, minNeighbors=5, minSize=(side, side))
        if len(faces) == 0:
            return None
        # Largest face; ties broken by position so the choice never depends on detector order.
        x, y, fw, fh = (int(v) for v in sorted(faces.tolist(), key=lambda b: (-b[2] * b[3], b[1], b[0]))[0])
        cx, cy = x + fw / 2, y + fh / 2
        # Eyes and smile are searched in the face enlarged to FEATURE_SIDE pixels: small faces have tiny eyes.
        zoom = max(1.0, FEATURE_SIDE / fw)
        face = img[y : y + fh, x : x + fw]
        if zoom > 1.0:
            face = cv2.resize(face, (round(fw * zoom), round(fh * zoom)), interpolation=cv2.INTER_LINEAR)
        zw, zh = face.shape[1], face.shape[0]
        eyes = eye_model.detectMultiScale(
            face[: int(0.6 * zh)], scaleFactor=1.1, minNeighbors=5, minSize=(max(8, zw // 8),) * 2
        )
        eye_centres = sorted(
            ((ex + ew / 2, ey + eh / 2, ew * eh) for ex, ey, ew, eh in np.asarray(eyes).reshape(-1, 4)),
            key=lambda e: (-e[2], e[0], e[1]),
        )
        left = next((e for e in eye_centres if e[0] < zw / 2), None)
        right = next((e for e in eye_centres if e[0] >= zw / 2), None)
        angle, distance, found = 0.0, 0.0, float((left is not None) + (right is not None))
        if left is not None and right is not None:
            tilt = math.atan2(right[1] - left[1], right[0] - left[0])
            if abs(tilt) < _MAX_EYE_TILT:
                angle, distance = tilt, math.hypot(right[0] - left[0], right[1] - left[1]) / zw
        smiles = smile_model.detectMultiScale(
            face[zh // 2 :], scaleFactor=1.1, minNeighbors=15, minSize=(max(10, zw // 4), max(5, zh // 8))
        )
        # Rotate about the face centre so the eye line is level, scaled so the face box fills the crop.
        m = cv2.getRotationMatrix2D((cx, cy), math.degrees(angle), CROP / fw)
        m[0, 2] += CROP / 2 - cx
        m[1, 2] += CROP / 2 - cy
        crop = cv2.warpAffine(img, m, (CROP, CROP), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        geometry = np.array(
            [cx / w, cy / h, fw / w, fh / h, found / 2, angle, distance, float(len(smiles) > 0)], dtype=np.float32
        )
        return np.concatenate([geometry, hog.compute(crop).reshape(-1).astype(np.float32)])

    def pool(self, frames: Sequence[np.ndarray | None]) -> np.ndarray:
        """Mean and std of the frames with a face, then the face fraction: ``[665]``."""
        found = [f for f in frames if f is not None]
        if not found:
            return np.zeros(self.dim, dtype=np.float32)
        stack = np.stack(found).astype(np.float64)
        fraction = len(found) / max(1, len(frames))
        return np.concatenate([stack.mean(axis=0), stack.std(axis=0), [fraction]]).astype(np.float32)

    def extract_file(
        self, path: Path, info: MediaInfo, segments: Sequence[MediaSegment]
    ) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
        """Decode ``path`` once and describe every segment of it.

        Returns:
            Per segment its ``[665]`` features, and per-segment extras ``frames``
            (sampled) and ``face_frames`` (with a face).
        """
        duration = info.duration if info.duration is not None else video_duration(path)
        spans = [(seg.start or 0.0, seg.end if seg.end is not None else duration) for seg in segments]
        # End clipped to the stream: a segment may end up to END_TOLERANCE_S after it.
        spans = [(s, min(e, duration) if min(e, duration) > s else e) for s, e in spans]
        times: list[float] = []
        owner: list[int] = []
        for i, (s, e) in enumerate(spans):
            t = frame_times(s, e, self.fps)
            times.extend(t.tolist())
            owner.extend([i] * len(t))
        described: list[list[np.ndarray | None]] = [[] for _ in segments]
        for k, grey in video_frames(path, times, segments[0].where()):
            described[owner[k]].append(self.describe_frame(grey))
        counts = np.array([len(d) for d in described], dtype=np.int64)
        if (counts == 0).any():
            raise DataError(f"{segments[int(np.argmin(counts))].where()}: no video frame in this segment")
        faces = np.array([sum(f is not None for f in d) for d in described], dtype=np.int64)
        return [self.pool(d) for d in described], {"frames": counts, "face_frames": faces}


def build_visual_extractor(name: str = DEFAULT_VISUAL_EXTRACTOR, **settings: Any) -> FaceExtractor:
    """The visual extractor ``name`` (``faces``) with ``settings`` (``fps``, ``max_side``, ``min_face``).

    Raises:
        ConfigError: An unknown name or setting.
    """
    resolve_choice("visual extractor", name, VISUAL_EXTRACTORS)
    try:
        return FaceExtractor(**settings)
    except TypeError as exc:
        raise ConfigError(f"visual extractor {name!r}: {exc}") from None


def visual_extractor_from_spec(spec: Mapping[str, Any]) -> FaceExtractor:
    """Rebuild the extractor a ``{"source": "visual-extractor", ...}`` specification describes."""
    settings = dict(spec.get("settings") or {})
    extractor = build_visual_extractor(
        str(spec.get("extractor")),
        fps=settings.get("fps", 5.0),
        max_side=settings.get("max_side", 480),
        min_face=settings.get("min_face", 0.08),
    )
    if extractor.settings() != settings:
        raise ConfigError(
            f"visual feature specification does not match what this merc computes ({extractor.settings()}); "
            "use the merc version the model was trained with"
        )
    return extractor
