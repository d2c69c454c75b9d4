"""Audio extractors: openSMILE eGeMAPS / ComParE, librosa, frame-level descriptors, the cache.

Speech-like signals are made with numpy (harmonics of a gliding f0 under vowel
formants, pauses); real synthetic speech comes from Debian's espeak-ng when installed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from media_helpers import RATE, espeak, face_video, speech_like, write_wav
from merc.data.formats.native import MediaSegment
from merc.errors import ConfigError
from merc.features import audio, extract
from merc.features.audio import build_audio_extractor
from merc.features.extract import extract_segments, extractor_from_spec


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MERC_CACHE_DIR", str(tmp_path / "cache"))


def _seg(path: Path, start: float | None = None, end: float | None = None, uid: str = "u0") -> MediaSegment:
    return MediaSegment(path, start, end, path.name, "audio", "d", uid, start is not None)


def _count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    calls: list[Path] = []
    real = audio.decode_audio

    def counting(path: Path, *args, **kwargs):
        calls.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(audio, "decode_audio", counting)
    return calls


@pytest.mark.parametrize(("name", "dim"), [("egemaps", 88), ("compare", 6373), ("librosa", 168)])
def test_functionals_have_the_documented_dims_and_are_deterministic(tmp_path: Path, name: str, dim: int) -> None:
    path = write_wav(tmp_path / "s.wav", speech_like(1.5))
    ex = build_audio_extractor(name)
    assert ex.dim == dim and ex.spec()["dim"] == dim
    first = extract_segments([_seg(path)], ex, show_progress=False).features
    assert first.shape == (1, dim) and first.dtype == np.float32 and np.isfinite(first).all()
    again = ex.compute(audio.decode_audio(path), RATE)
    np.testing.assert_array_equal(first[0], again)


def test_egemaps_names_and_what_they_measure(tmp_path: Path) -> None:
    ex = build_audio_extractor("egemaps")
    names = ex.feature_names
    assert len(names) == 88
    f0 = names.index("F0semitoneFrom27.5Hz_sma3nz_amean")
    loud = names.index("loudness_sma3_amean")
    low, high, quiet = (
        ex.compute(x, RATE) for x in (speech_like(2, f0=110), speech_like(2, f0=220), 0.1 * speech_like(2, f0=110))
    )
    # An octave is 12 semitones.
    assert 10 < high[f0] - low[f0] < 14
    assert quiet[loud] < 0.5 * low[loud]


def test_low_level_descriptors_are_frames(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "s.wav", speech_like(1.0))
    for name, dim in (("egemaps", 25), ("compare", 65), ("librosa", 84)):
        ex = build_audio_extractor(name, level="lld")
        got = extract_segments([_seg(path), None], ex, show_progress=False)
        assert got.features is None and got.sequences is not None and got.sequences[1] is None
        frames = got.sequences[0]
        assert frames.shape[1] == dim and 90 <= frames.shape[0] <= 101  # 10 ms hop


def test_segments_of_a_dialogue_file_equal_the_cut_out_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x = speech_like(3.0, seed=4)
    whole = write_wav(tmp_path / "dialogue.wav", x)
    spans = [(0.0, 1.0), (1.25, 2.0), (2.0, 3.0)]
    cut = [write_wav(tmp_path / f"u{i}.wav", x[int(s * RATE) : int(e * RATE)]) for i, (s, e) in enumerate(spans)]
    ex = build_audio_extractor("egemaps")
    calls = _count_decodes(monkeypatch)
    from_dialogue = extract_segments(
        [_seg(whole, s, e, f"u{i}") for i, (s, e) in enumerate(spans)], ex, show_progress=False
    )
    assert calls == [whole]  # one file, decoded once for its three segments
    from_files = extract_segments([_seg(p) for p in cut], ex, show_progress=False)
    np.testing.assert_array_equal(from_dialogue.features, from_files.features)
    assert not np.allclose(from_dialogue.features[0], from_dialogue.features[1])


def test_the_cache_is_keyed_by_extractor_settings_content_and_times(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_wav(tmp_path / "s.wav", speech_like(2.0))
    ex = build_audio_extractor("egemaps")
    calls = _count_decodes(monkeypatch)
    first = extract_segments([_seg(path, 0, 1), _seg(path, 1, 2)], ex, show_progress=False)
    second = extract_segments([_seg(path, 0, 1), _seg(path, 1, 2)], ex, show_progress=False)
    assert len(calls) == 1 and second.cached_files == 1  # the second call did not decode
    np.testing.assert_array_equal(first.features, second.features)
    extract_segments([_seg(path, 0, 1), _seg(path, 1, 1.9)], ex, show_progress=False)  # other times
    extract_segments([_seg(path, 0, 1), _seg(path, 1, 2)], build_audio_extractor("librosa"), show_progress=False)
    extract_segments(
        [_seg(path, 0, 1), _seg(path, 1, 2)], build_audio_extractor("librosa", n_mels=32), show_progress=False
    )
    extract_segments(
        [_seg(path, 0, 1), _seg(path, 1, 2)], build_audio_extractor("egemaps", level="lld"), show_progress=False
    )
    assert len(calls) == 5
    write_wav(path, speech_like(2.0, seed=9))  # same name, other content
    changed = extract_segments([_seg(path, 0, 1), _seg(path, 1, 2)], ex, show_progress=False)
    assert len(calls) == 6 and not np.array_equal(changed.features, first.features)
    files = list((tmp_path / "cache" / "features" / "media").iterdir())
    assert len(files) == 6 and not [f for f in files if ".tmp" in f.name]


def test_an_unreadable_cache_entry_is_recomputed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_wav(tmp_path / "s.wav", speech_like(1.0))
    ex = build_audio_extractor("egemaps")
    first = extract_segments([_seg(path)], ex, show_progress=False).features
    (entry,) = (tmp_path / "cache" / "features" / "media").iterdir()
    entry.write_bytes(b"not an npz")
    calls = _count_decodes(monkeypatch)
    np.testing.assert_array_equal(extract_segments([_seg(path)], ex, show_progress=False).features, first)
    assert len(calls) == 1


def test_short_segments_are_padded_and_counted_never_nan(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "s.wav", speech_like(1.0))
    got = extract_segments(
        [_seg(path, 0.0, 0.03), _seg(path, 0.1, 0.9)], build_audio_extractor("egemaps"), show_progress=False
    )
    assert np.isfinite(got.features).all()
    assert got.extras["padded"].tolist() == [True, False]
    assert got.extras["seconds"].tolist() == pytest.approx([0.03, 0.8])


def test_the_audio_track_of_a_video_gives_features(tmp_path: Path) -> None:
    path = face_video(tmp_path / "v.mp4", face_seconds=1.0, blank_seconds=1.0, audio=speech_like(2.0))
    seg = MediaSegment(path, 0.5, 1.5, "v.mp4", "video", "d", "u0")
    feats = extract_segments([seg], build_audio_extractor("egemaps"), show_progress=False).features
    assert feats.shape == (1, 88) and np.isfinite(feats).all() and np.abs(feats).sum() > 0


def test_real_speech_from_espeak(tmp_path: Path) -> None:
    path = espeak(tmp_path / "speech.wav", "I cannot believe you did that to me. Get out of here!")
    if path is None:
        pytest.skip("Debian's espeak-ng is not installed (apt-get install espeak-ng): no real speech to test on")
    ex = build_audio_extractor("egemaps")
    feats = extract_segments([_seg(path)], ex, show_progress=False).features[0]
    names = ex.feature_names
    # Real speech is voiced part of the time and has a speaking rate a voice can have.
    assert 0 < feats[names.index("VoicedSegmentsPerSec")] < 10
    assert 15 < feats[names.index("F0semitoneFrom27.5Hz_sma3nz_amean")] < 45  # 65-360 Hz


def test_specs_rebuild_the_same_extractor() -> None:
    for ex in (build_audio_extractor("compare"), build_audio_extractor("librosa", n_mels=40, n_mfcc=13, level="lld")):
        spec = ex.spec()
        assert spec["source"] == "audio-extractor" and spec["library_version"]
        again = extractor_from_spec(spec)
        assert again.settings() == ex.settings() and again.dim == ex.dim
    spec = build_audio_extractor("egemaps").spec()
    spec["settings"]["sample_rate"] = 8000
    with pytest.raises(ConfigError, match="does not match what this merc computes"):
        extractor_from_spec(spec)


def test_unknown_names_and_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="choose one of: compare, egemaps, librosa"):
        build_audio_extractor("gemaps")
    with pytest.raises(ConfigError, match="choose one of: functionals, lld"):
        build_audio_extractor("egemaps", level="frames")
    with pytest.raises(ConfigError, match="audio extractor 'egemaps'"):
        build_audio_extractor("egemaps", n_mels=3)
    with pytest.raises(ConfigError, match="n_mfcc <= n_mels"):
        build_audio_extractor("librosa", n_mels=10, n_mfcc=20)
    with pytest.raises(ConfigError, match="use a \\(audio\\) or v \\(visual\\)"):
        extract.build_extractor("t")


def test_frame_level_audio_of_a_folder_is_stored_and_batched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``merc extract --level sequence``: eGeMAPS LLD frames (25-d, 10 ms) into sequences/a.safetensors."""
    import json

    from media_helpers import media_dataset
    from merc.cli import main
    from merc.data.batching import collate, to_tensors
    from merc.data.formats.native import read_native
    from merc.data.registry import load_dataset

    folder = media_dataset(tmp_path / "ds")
    direct = extract.extract_folder(folder, build_audio_extractor("egemaps", level="lld"), show_progress=False)
    assert direct.features == {} and direct.report["without_media"] == 0
    frames = direct.sequences["train-d0"]
    assert [f.shape[1] for f in frames] == [25] * 3 and all(90 <= len(f) <= 101 for f in frames)  # 1 s each

    assert main(["extract", "--dataset", str(folder), "--modalities", "a", "--level", "frame", "--quiet"]) == 0
    assert "wrote 25-d audio sequences" in capsys.readouterr().out
    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["sequence_dims"] == {"a": 25} and meta["modalities"] == []
    assert meta["meta"]["sequence_specs"]["a"]["settings"]["level"] == "lld"
    stored = read_native(folder, require_all_splits=False).splits["train"][0].sequences["a"]
    for x, y in zip(frames, stored, strict=True):
        np.testing.assert_array_equal(x, y)
    assert main(["extract", "--dataset", str(folder), "--modalities", "a", "--level", "sequence", "--quiet"]) == 0
    assert "already has these audio sequences" in capsys.readouterr().out
    assert main(["extract", "--dataset", str(folder), "--modalities", "t", "--level", "token", "--quiet"]) == 0
    assert "wrote 384-d text sequences" in capsys.readouterr().out
    assert json.loads((folder / "metadata.json").read_text())["sequence_dims"] == {"t": 384, "a": 25}
    assert main(["extract", "--dataset", str(folder), "--modalities", "t,a", "--level", "token", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "already has these text sequences (384-d)" in out and "already has these audio sequences (25-d)" in out

    # Training data: utterance-level features for the model's inputs plus the frames.
    assert main(["extract", "--dataset", str(folder), "--modalities", "a", "--quiet"]) == 0
    ds = load_dataset(f"{folder}@ta", modalities="ta")
    assert ds.splits["train"][0].sequences["t"][0].shape == (8, 384)  # "I am so happy today!": 6 pieces + 2
    batch = collate(to_tensors(ds)["train"], ds.modalities)
    assert batch.sequences["a"].shape[0] == batch.num_utterances == 6 and batch.sequences["a"].shape[2] == 25
    assert batch.sequence_lengths["a"][:3].tolist() == [len(f) for f in frames]


def test_visual_frames_and_unknown_levels_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from merc.cli import main

    argv = ["extract", "--dataset", str(tmp_path), "--modalities", "v", "--quiet"]
    assert main([*argv, "--level", "sequence"]) == 2
    assert "no frame-level visual extractor" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*argv, "--level", "word"])
    assert "invalid level 'word'" in capsys.readouterr().err
