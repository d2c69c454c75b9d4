"""Media in merc's native format, decoding, segment checks, and `merc extract` end to end.

All media are made here (numpy speech-like audio, a video of scikit-image's astronaut
photograph); nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from bad_input_env import one_error_line
from helpers import make_dataset
from media_helpers import (
    RATE,
    add_media,
    blank_image,
    face_video,
    media_dataset,
    speech_like,
    write_sound,
    write_video,
    write_wav,
)
from merc.cli import main
from merc.data.formats.native import read_media, read_native, write_native
from merc.errors import DataError
from merc.features import media


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MERC_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def media_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return media_dataset(tmp_path_factory.mktemp("media") / "ds")


def _folder(tmp_path: Path, n: int = 3) -> Path:
    """A tiny native folder (train/valid/test, dialogues of ``n`` utterances) without media."""
    folder = tmp_path / "ds"
    write_native(make_dataset((n, 2), "a"), folder)
    return folder


# -- the format ------------------------------------------------------------------------------------
def test_read_media_resolves_every_layout(media_folder: Path) -> None:
    got = read_media(media_folder)
    assert sorted(got) == ["test-d0", "train-d0", "train-d1", "valid-d0"]
    d0 = got["train-d0"]
    assert [s.path for s in d0.audio] == [media_folder / "wav" / f"train-d0_{i}.wav" for i in range(3)]
    assert all(s.start is None and s.end is None and not s.shared for s in d0.audio)
    assert d0.video == (None, None, None)
    d1 = got["train-d1"]
    assert d1.audio == (None, None, None)
    # No audio file: the audio features come from the video's audio track.
    assert [(s.path.name, s.start, s.end, s.field) for s in d1.stream("a")] == [
        ("train-d1.mp4", 0.0, 1.0, "video"),
        ("train-d1.mp4", 1.0, 2.0, "video"),
        ("train-d1.mp4", 2.0, 3.0, "video"),
    ]
    assert got["valid-d0"].stream("v")[1] is None
    test = got["test-d0"].audio
    assert [(s.start, s.end, s.shared) for s in test] == [(0.0, 1.1, True), (1.2, 2.5, True)]
    assert test[0].where() == "dialogue 'test-d0', utterance 'test-d0_0' (audio wav/test-d0.wav)"


def test_media_keys_leave_the_rest_of_the_format_unchanged(media_folder: Path, tmp_path: Path) -> None:
    ds = read_native(media_folder)
    assert ds.modalities == () and [c.id for c in ds.conversations()] == ["train-d0", "train-d1", "valid-d0", "test-d0"]
    write_native(ds, tmp_path / "copy")
    assert read_media(tmp_path / "copy") == {}  # exports do not carry media keys (documented)


def test_times_with_per_utterance_files_cut_each_file(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    add_media(folder, {"train-d0": {"audio": ["a.wav", "b.wav", None], "start": [0.5, None, None], "end": [1, 2, 3]}})
    segs = read_media(folder)["train-d0"].audio
    assert [(s.start, s.end) for s in segs[:2]] == [(0.5, 1.0), (None, 2.0)] and segs[2] is None


def test_beside_a_dialogue_file_per_utterance_files_are_used_whole(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    add_media(folder, {"train-d0": {"audio": ["a.wav"] * 3, "video": "d.mp4", "start": [0, 1, 2], "end": [1, 2, 3]}})
    got = read_media(folder)["train-d0"]
    assert [(s.start, s.end) for s in got.audio] == [(None, None)] * 3
    assert [(s.start, s.end) for s in got.video] == [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0)]


SYNTAX_ERRORS = [
    ({"audio": 3}, "'audio' must be a file name (one for the dialogue), a list of file names or null"),
    ({"video": ["a.mp4"]}, "1 'video' files for 3 utterances"),
    ({"audio": ["a.wav", 5, None]}, "utterance 'd0_1': 'audio' must be a file name or null, got 5"),
    ({"audio": ["a.wav", "", None]}, "'audio' must be a file name or null"),
    ({"audio": "d.wav"}, "one file for the whole dialogue, so every utterance needs its 'start' and 'end'"),
    ({"audio": "d.wav", "start": [0, 1, None], "end": [1, 2, 3]}, "utterance 'd0_2' has none"),
    ({"audio": "d.wav", "start": [0, 1, 2]}, "'start' given without 'end'; give both"),
    ({"start": [0, 1, 2], "end": [1, 2, 3]}, "'start'/'end' given but no 'audio' or 'video' file"),
    ({"audio": "d.wav", "start": [0, 1], "end": [1, 2]}, "2 'start' times for 3 utterances"),
    ({"audio": "d.wav", "start": "0", "end": [1, 2, 3]}, "'start' must be a list of seconds"),
    ({"audio": "d.wav", "start": [0, "1", 2], "end": [1, 2, 3]}, "'start' must be a number of seconds, got '1'"),
    ({"audio": "d.wav", "start": [0, True, 2], "end": [1, 2, 3]}, "'start' must be a number of seconds, got True"),
    ({"audio": "d.wav", "start": [-0.5, 1, 2], "end": [1, 2, 3]}, "utterance 'd0_0': start -0.5 s is negative"),
    ({"audio": "d.wav", "start": [0, 1, 2], "end": [1, 1, 3]}, "utterance 'd0_1': empty segment"),
    ({"audio": "d.wav", "start": [0, 2, 2], "end": [1, 1.5, 3]}, "negative segment (start 2 s, end 1.5 s)"),
    ({"audio": ["a.wav"] * 3, "start": [None] * 3, "end": [0, 1, 2]}, "end 0 s is not after the start"),
]


@pytest.mark.parametrize(("keys", "fragment"), SYNTAX_ERRORS, ids=[f for _, f in SYNTAX_ERRORS])
def test_malformed_media_keys_are_refused_with_line_and_utterance(tmp_path: Path, keys: dict, fragment: str) -> None:
    folder = _folder(tmp_path)
    add_media(folder, {"train-d0": keys})
    for reader in (read_media, read_native):
        with pytest.raises(DataError) as err:
            reader(folder)
        assert fragment in str(err.value)
        assert "conversations.jsonl:1:" in str(err.value)


# -- decoding and checks ---------------------------------------------------------------------------
def test_every_audio_container_decodes_to_the_same_16k_mono_signal(tmp_path: Path) -> None:
    x = speech_like(1.5)
    wav = media.decode_audio(write_wav(tmp_path / "a.wav", x))
    flac = media.decode_audio(write_sound(tmp_path / "a.flac", x))
    mp3 = media.decode_audio(write_sound(tmp_path / "a.mp3", x))
    stereo = media.decode_audio(write_wav(tmp_path / "s.wav", speech_like(1.5, 44100), 44100, channels=2))
    assert wav.dtype == np.float32 and wav.shape == (len(x),)
    np.testing.assert_allclose(wav, flac, atol=1e-4)  # both lossless 16-bit (scaled by 32767 vs 32768)
    assert np.abs(wav - x).max() < 1e-4
    assert abs(len(mp3) - len(x)) < 0.05 * RATE and np.corrcoef(mp3[: len(x)], x[: len(mp3)])[0, 1] > 0.9
    assert stereo.shape == (int(1.5 * RATE),)  # 44.1 kHz, 2 channels -> 16 kHz mono


def test_the_audio_track_of_a_video_decodes(tmp_path: Path) -> None:
    x = speech_like(2.0, seed=3)
    path = face_video(tmp_path / "v.mp4", face_seconds=1.0, blank_seconds=1.0, audio=x)
    info = media.probe(path, "audio", "here")
    assert info.reader == "av" and info.has_audio and info.has_video and abs(info.duration - 2.0) < 0.1
    y = media.decode_audio(path)
    assert abs(len(y) - len(x)) < 0.1 * RATE
    # AAC delays the signal by its priming samples: compare envelopes, not samples.
    env = [np.abs(s[: len(x) // 160 * 160]).reshape(-1, 160).mean(1) for s in (x, y[: len(x)])]
    assert np.corrcoef(env[0][: len(env[1])], env[1][: len(env[0])])[0, 1] > 0.8


def test_the_frame_shown_at_each_time_is_returned(tmp_path: Path) -> None:
    frames = [np.full((64, 64, 3), 20 * k, np.uint8) for k in range(10)]  # frame k at k/10 s
    path = write_video(tmp_path / "ramp.mp4", frames, fps=10)
    times = [0.95, 0.0, 0.31, 0.5, 0.05]
    got = dict(media.video_frames(path, times))
    assert sorted(got) == list(range(len(times)))
    brightness = {t: round(float(got[i].mean()) / 20) for i, t in enumerate(times)}
    assert brightness == {0.95: 9, 0.0: 0, 0.31: 3, 0.5: 5, 0.05: 0}


def test_frame_times() -> None:
    assert media.frame_times(1.0, 2.0, 5.0).tolist() == pytest.approx([1.1, 1.3, 1.5, 1.7, 1.9])
    assert media.frame_times(0.0, 0.1, 5.0).tolist() == [0.05]  # shorter than a frame: its middle


def test_missing_and_unreadable_files_and_streams_are_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="here: media file not found: .*nope.wav"):
        media.probe(tmp_path / "nope.wav", "audio", "here")
    (tmp_path / "junk.wav").write_bytes(np.random.default_rng(0).bytes(2000))
    with pytest.raises(DataError, match="here: cannot read .*junk.wav as audio or video"):
        media.probe(tmp_path / "junk.wav", "audio", "here")
    silent = write_video(tmp_path / "silent.mp4", [blank_image(64)] * 5, fps=5)
    with pytest.raises(DataError, match="silent.mp4 has no audio track"):
        media.probe(silent, "audio", "here")
    sound = write_wav(tmp_path / "a.wav", speech_like(0.5))
    with pytest.raises(DataError, match="a.wav has no video stream"):
        media.probe(sound, "video", "here")


def test_segments_outside_their_file_are_refused(tmp_path: Path) -> None:
    write_wav(tmp_path / "d.wav", speech_like(2.0))
    folder = tmp_path
    from merc.data.formats.native import MediaSegment

    def seg(start: float | None, end: float | None) -> MediaSegment:
        return MediaSegment(folder / "d.wav", start, end, "d.wav", "audio", "d", "u7", True)

    media.check_segments([seg(0, 1), seg(1, 2.03), None], "audio")  # within the tolerance
    with pytest.raises(DataError, match=r"utterance 'u7' \(audio d.wav\): segment ends at 2.5 s, after the end"):
        media.check_segments([seg(0, 1), seg(1.5, 2.5)], "audio")
    with pytest.raises(DataError, match="segment starts at 2 s, at or after the end of the file"):
        media.check_segments([seg(2.0, 3.0)], "audio")


def test_file_digest_follows_the_content(tmp_path: Path) -> None:
    a = write_wav(tmp_path / "a.wav", speech_like(0.5))
    before = media.file_digest(a)
    assert media.file_digest(a) == before
    write_wav(a, speech_like(0.5, seed=1))
    assert media.file_digest(a) != before


# -- merc extract end to end -----------------------------------------------------------------------
def test_extract_writes_audio_and_visual_features_and_training_uses_them(
    media_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    import shutil

    folder = tmp_path / "ds"
    shutil.copytree(media_folder, folder)
    assert main(["extract", "--dataset", str(folder), "--modalities", "a,v", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "wrote 88-d audio features (egemaps, opensmile " in out and str(folder / "features" / "a.safetensors") in out
    assert "wrote 665-d visual features (faces, opencv-python-headless" in out
    assert "show no face" in caplog.text and "'train-d1_2'" in caplog.text

    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["modalities"] == ["a", "v"] and meta["dims"] == {"a": 88, "v": 665}
    spec = meta["meta"]["feature_specs"]
    assert spec["a"]["source"] == "audio-extractor" and spec["a"]["settings"]["feature_set"] == "eGeMAPSv02"
    assert spec["v"]["source"] == "visual-extractor" and spec["v"]["settings"]["fps"] == 5.0
    report = meta["meta"]["extraction"]
    assert report["a"]["without_media"] == 0 and report["a"]["files"] == 7
    assert report["v"]["without_media"] == 6 and report["v"]["files"] == 2
    # train-d1: 3 utterances of 1 s at 5 fps; valid-d0_0: 1 s. The third of train-d1 is grey.
    assert report["v"]["frames"] == 20 and report["v"]["frames_without_face"] == 5
    assert report["v"]["utterances_without_face_ids"] == ["train-d1_2"]

    ds = read_native(folder)
    assert ds.dims == {"a": 88, "v": 665}
    v = load_file(folder / "features" / "v.safetensors")
    assert v["train-d1"][:2, -1].tolist() == [1.0, 1.0] and not v["train-d1"][2].any()  # face fraction, then none
    assert not v["train-d0"].any()  # no video at all
    a = load_file(folder / "features" / "a.safetensors")
    assert all(np.isfinite(x).all() and np.abs(x).sum(1).min() > 0 for x in a.values())

    # Again: nothing to do. Another extractor: refused unless --overwrite.
    assert main(["extract", "--dataset", str(folder), "--modalities", "a", "--quiet"]) == 0
    assert "already has these audio features (88-d" in capsys.readouterr().out
    line = one_error_line(
        capsys, ["extract", "--dataset", str(folder), "--modalities", "a", "--audio-extractor", "librosa"]
    )
    assert "already has audio features (egemaps features of the audio (opensmile, 88-d)); pass --overwrite" in line
    assert (
        main(
            [
                "extract",
                "--dataset",
                str(folder),
                "--modalities",
                "a",
                "--audio-extractor",
                "librosa",
                "--overwrite",
                "--quiet",
            ]
        )
        == 0
    )
    assert json.loads((folder / "metadata.json").read_text())["dims"]["a"] == 168

    run = tmp_path / "run"
    argv = [
        "train",
        "--model",
        "bclstm",
        "--dataset",
        str(folder),
        "--modalities",
        "ta",
        "--seeds",
        "0",
        "--out",
        str(run),
    ]
    cheap = ["model.hidden_size=4", "model.dense_size=4", "training.epochs=2", "training.batch_size=2", "--quiet"]
    assert main([*argv, *cheap]) == 0
    specs = json.loads((run / "inputs.json").read_text())["specs"]
    assert (
        specs["a"]["source"] == "audio-extractor" and specs["a"]["extractor"] == "librosa" and specs["a"]["dim"] == 168
    )
    assert specs["t"]["source"] == "text-encoder"


def test_training_on_media_without_features_says_to_extract(media_folder: Path, capsys) -> None:
    argv = ["train", "--model", "bclstm", "--dataset", str(media_folder), "--modalities", "a", "--out", "unused"]
    line = one_error_line(capsys, argv)
    assert (
        f"no audio features yet, but its conversations name media files: compute them once with `merc extract --dataset {media_folder} --modalities a`"
        in line
    )


def test_metadata_listing_an_unextracted_modality_says_to_extract(media_folder: Path, tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "ds"
    shutil.copytree(media_folder, folder)
    meta = json.loads((folder / "metadata.json").read_text())
    meta.update(modalities=["v"], dims={"v": 665})
    (folder / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"v.safetensors: missing; .* `merc extract --dataset .* --modalities v`"):
        read_native(folder)


EXTRACT_ERRORS = [
    (
        {"audio": ["none.wav", None, None]},
        "a",
        "dialogue 'train-d0', utterance 'd0_0' (audio none.wav): media file not found",
    ),
    ({"audio": ["junk.wav", None, None]}, "a", "(audio junk.wav): cannot read"),
    ({"video": ["sound.wav", None, None]}, "v", "sound.wav has no video stream"),
    ({"audio": ["silent.mp4", None, None]}, "a", "silent.mp4 has no audio track"),
    (
        {"audio": "sound.wav", "start": [0, 1, 1.5], "end": [1, 1.5, 3.0]},
        "a",
        "utterance 'd0_2' (audio sound.wav): segment ends at 3 s, after the end of the file (2.000 s)",
    ),
    (
        {"video": "silent.mp4", "start": [0, 1, 2.5], "end": [1, 2, 2.8]},
        "v",
        "segment starts at 2.5 s, at or after the end of the file (2.000 s)",
    ),
    (
        {"audio": "sound.wav", "start": [0, 1, 1], "end": [1, 1, 2]},
        "a",
        "utterance 'd0_1': empty segment (start 1 s, end 1 s)",
    ),
    ({}, "v", "no conversation names visual media"),
]


@pytest.mark.parametrize(("keys", "modality", "fragment"), EXTRACT_ERRORS, ids=[f[:40] for *_, f in EXTRACT_ERRORS])
def test_extract_refuses_bad_media_in_one_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], keys: dict, modality: str, fragment: str
) -> None:
    folder = tmp_path / "ds"
    write_native(make_dataset((3, 2), "t"), folder)
    write_wav(folder / "sound.wav", speech_like(2.0))
    (folder / "junk.wav").write_bytes(np.random.default_rng(0).bytes(4000))
    write_video(folder / "silent.mp4", [blank_image(64)] * 10, fps=5)
    add_media(folder, {"train-d0": keys})
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    line = one_error_line(capsys, ["extract", "--dataset", str(folder), "--modalities", modality])
    assert fragment in line
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before


def test_extract_of_a_registered_dataset_is_text_only(capsys) -> None:
    line = one_error_line(capsys, ["extract", "--dataset", "iemocap6", "--modalities", "ta"])
    assert (
        "--modalities a: audio and visual features are computed from the media files of a native dataset folder" in line
    )


def test_extract_options_are_checked(media_folder: Path, capsys) -> None:
    argv = ["extract", "--dataset", str(media_folder), "--modalities"]
    assert "unknown audio extractor 'opensmile'; choose one of: compare, egemaps, librosa" in one_error_line(
        capsys, [*argv, "a", "--audio-extractor", "opensmile"]
    )
    assert "visual fps must be a number in (0, 120], got 0.0" in one_error_line(capsys, [*argv, "v", "--fps", "0"])
    assert "unknown visual extractor 'mediapipe'; choose one of: faces" in one_error_line(
        capsys, [*argv, "v", "--visual-extractor", "mediapipe"]
    )


def test_the_command_line_stays_import_light() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from merc.cli import build_parser; build_parser(); "
        "heavy = [m for m in ('opensmile', 'librosa', 'av', 'cv2', 'soundfile', 'skimage') if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_datasets_shows_what_the_media_can_give(media_folder: Path, capsys) -> None:
    assert main(["datasets", str(media_folder), "--json"]) == 0
    modalities = json.loads(capsys.readouterr().out)["modalities"]
    assert modalities["a"] == {
        "dim": None,
        "source": "media files named for 10 utterances (merc extract --modalities a computes them)",
    }
    assert modalities["v"]["source"].startswith("media files named for 4 utterances")
