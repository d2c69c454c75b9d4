"""Face features from video: a real face photograph (scikit-image's astronaut) and frames without one."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from media_helpers import blank_image, face_image, face_video
from merc.data.formats.native import MediaSegment
from merc.errors import ConfigError
from merc.features import visual
from merc.features.extract import extract_segments, extractor_from_spec
from merc.features.visual import FRAME_DIM, GEOMETRY_NAMES, build_visual_extractor


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MERC_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 s of the face, then 1 s of grey, at 10 fps."""
    return face_video(tmp_path_factory.mktemp("video") / "face.mp4")


def _grey(rgb: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def _segs(path: Path, spans: list[tuple[float, float]]) -> list[MediaSegment]:
    return [MediaSegment(path, s, e, path.name, "video", "d", f"u{i}", True) for i, (s, e) in enumerate(spans)]


def test_the_face_is_found_and_described_and_a_blank_frame_has_none() -> None:
    ex = build_visual_extractor()
    desc = ex.describe_frame(_grey(face_image(256)))
    assert desc is not None and desc.shape == (FRAME_DIM,) == (332,) and np.isfinite(desc).all()
    geometry = dict(zip(GEOMETRY_NAMES, desc[: len(GEOMETRY_NAMES)]))
    # The astronaut's face is in the upper middle of the photograph, about a fifth of its width.
    assert 0.35 < geometry["face_x"] < 0.55 and 0.15 < geometry["face_y"] < 0.3
    assert 0.15 < geometry["face_width"] < 0.3
    assert geometry["eyes_found"] == 1.0 and geometry["smile"] == 1.0  # she smiles
    assert ex.describe_frame(_grey(blank_image(256))) is None


def test_alignment_follows_a_tilted_head() -> None:
    import cv2

    ex = build_visual_extractor()
    grey = _grey(face_image(256))
    angle = GEOMETRY_NAMES.index("eye_angle")
    upright = ex.describe_frame(grey)[angle]
    tilted = ex.describe_frame(cv2.warpAffine(grey, cv2.getRotationMatrix2D((128, 128), 10, 1.0), (256, 256)))
    # Rotating the picture 10 degrees counter-clockwise turns the eye line about -10 degrees.
    assert tilted is not None and np.degrees(tilted[angle] - upright) == pytest.approx(-10, abs=4)


def test_utterances_pool_their_frames_and_count_those_without_a_face(video: Path, caplog) -> None:
    ex = build_visual_extractor(fps=5)
    got = extract_segments(
        _segs(video, [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0), (1.5, 2.5)]) + [None], ex, show_progress=False
    )
    assert got.features.shape == (5, 665) and got.features.dtype == np.float32
    assert got.extras["frames"].tolist() == [5, 5, 5, 5, 0]
    assert got.extras["face_frames"].tolist() == [5, 5, 0, 2] + [0]
    fraction = got.features[:, -1]
    assert fraction.tolist() == pytest.approx([1.0, 1.0, 0.0, 0.4, 0.0])
    assert not got.features[2].any() and not got.features[4].any()
    assert got.present.tolist() == [True, True, True, True, False]
    # Mean over the face frames of a still picture: the frame description; std about zero.
    frame = ex.describe_frame(_grey(face_image(256)))
    np.testing.assert_allclose(got.features[0, :FRAME_DIM], frame, atol=0.05)
    assert np.abs(got.features[0, FRAME_DIM:-1]).max() < 0.05


def test_folder_extraction_reports_frames_without_a_face(tmp_path: Path, video: Path, caplog) -> None:
    from helpers import make_dataset
    from media_helpers import add_media
    from merc.data.formats.native import write_native
    from merc.features.extract import extract_folder

    folder = tmp_path / "ds"
    write_native(make_dataset((3, 2), "t"), folder)
    (folder / "v.mp4").write_bytes(video.read_bytes())
    add_media(folder, {"train-d0": {"video": "v.mp4", "start": [0, 1, 2], "end": [1, 2, 3]}})
    with caplog.at_level(logging.WARNING):
        got = extract_folder(folder, build_visual_extractor(), show_progress=False)
    assert got.report["frames"] == 15 and got.report["frames_without_face"] == 5
    assert got.report["utterances_without_face_ids"] == ["d0_2"]
    assert got.report["without_media"] == 12  # the other five dialogues have no video
    assert "5 of 15 sampled frames show no face; 1 utterances have none at all (first: 'd0_2')" in caplog.text
    assert got.features["train-d0"].shape == (3, 665) and got.spec["dim"] == 665


def test_determinism_and_the_cache(video: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[Path] = []
    real = visual.video_frames

    def counting(path, *args, **kwargs):
        calls.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(visual, "video_frames", counting)
    segs = _segs(video, [(0.0, 1.5), (1.5, 3.0)])
    first = extract_segments(segs, build_visual_extractor(), show_progress=False)
    second = extract_segments(segs, build_visual_extractor(), show_progress=False)
    assert len(calls) == 1 and second.cached_files == 1
    np.testing.assert_array_equal(first.features, second.features)
    np.testing.assert_array_equal(first.extras["face_frames"], second.extras["face_frames"])
    monkeypatch.setenv("MERC_CACHE_DIR", str(tmp_path / "other-cache"))
    fresh = extract_segments(segs, build_visual_extractor(), show_progress=False)
    assert len(calls) == 2
    np.testing.assert_array_equal(first.features, fresh.features)  # decoded again: the same numbers
    more = extract_segments(segs, build_visual_extractor(fps=2), show_progress=False)
    assert len(calls) == 3 and more.extras["frames"].tolist() == [3, 3]


def test_spec_rebuilds_the_extractor() -> None:
    ex = build_visual_extractor(fps=2.5, max_side=320)
    spec = ex.spec()
    assert spec["source"] == "visual-extractor" and spec["dim"] == 665 and spec["library_version"].startswith("4.")
    assert extractor_from_spec(spec).settings() == ex.settings()


def test_bad_settings_and_a_wheel_without_cascades(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for bad in ({"fps": 0}, {"fps": float("nan")}, {"max_side": 10}, {"min_face": 1.5}):
        with pytest.raises(ConfigError):
            build_visual_extractor(**bad)
    with pytest.raises(ConfigError, match="choose one of: faces"):
        build_visual_extractor("openface")
    import cv2

    monkeypatch.setattr(cv2.data, "haarcascades", str(tmp_path))
    with pytest.raises(ConfigError, match="opencv-python-headless>=4.8,<5"):
        visual.cascade_path("haarcascade_frontalface_default.xml")
