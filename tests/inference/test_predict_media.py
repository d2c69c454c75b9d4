"""merc predict on raw media: the model's own extractors and settings, missing media, refusals.

One tiny native folder with media of every layout (tests/media_helpers.py: speech-like
wavs, flac, mp3, a filmed face with an AAC track), its audio and visual features
extracted by ``merc extract``, one bc-LSTM trained on tav and bundled, once per module.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bad_input_env import one_error_line
from media_helpers import add_media, face_video, media_dataset, speech_like, write_wav
from merc.cli import main
from merc.data.registry import load_dataset
from merc.data.transforms import standardize_features
from merc.errors import DataError
from merc.features.extract import media_cache_dir
from merc.inference.bundle import load_bundle
from merc.inference.inputs import read_input
from merc.inference.predict import prepare
from merc.training.runner import training_statistics
from predict_helpers import evaluate_path, train, utterance_probabilities


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def media_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, Path]]:
    """(media folder with extracted a/v features, run folder of a tav bc-LSTM, its bundle)."""
    root = tmp_path_factory.mktemp("media_run")
    patch = pytest.MonkeyPatch()
    patch.setenv("MERC_CACHE_DIR", str(root / "cache"))  # this module's own cache, emptied at will
    folder = media_dataset(root / "ds")
    # The test split gets a video too (a face for 2 s, then grey), so every split has every layout.
    face_video(folder / "video" / "test-d0.mp4")
    add_media(
        folder,
        {
            "test-d0": {
                "audio": "wav/test-d0.wav",
                "video": "video/test-d0.mp4",
                "start": [0.0, 1.2],
                "end": [1.1, 2.5],
            }
        },
    )
    assert main(["extract", "--dataset", str(folder), "--modalities", "a,v", "--quiet"]) == 0
    run = train(folder, root / "run", "tav", seeds="0")
    bundle = root / "model.merc"
    assert main(["bundle", str(run), "--out", str(bundle)]) == 0
    yield folder, run, bundle
    patch.undo()


def media_rows(folder: Path, relative_to: Path, dialogues: list[str] | None = None) -> list[dict[str, Any]]:
    """The folder's utterances (of ``dialogues``, in that order) as predict's rows with media fields.

    Media paths are written relative to ``relative_to``.
    """
    labels = json.loads((folder / "metadata.json").read_text())["label_names"]
    records = {r["id"]: r for r in map(json.loads, (folder / "conversations.jsonl").read_text().splitlines())}
    rows = []
    for rec in (records[d] for d in (dialogues or list(records))):
        for i, uid in enumerate(rec["utterance_ids"]):
            row: dict[str, Any] = {
                "dialogue_id": rec["id"],
                "speaker": rec["speakers"][i],
                "text": rec["texts"][i],
                "utterance_id": uid,
                "label": labels[rec["labels"][i]],
            }
            for key in ("audio", "video"):
                value = rec.get(key)
                value = value[i] if isinstance(value, list) else value
                if value is not None:
                    row[key] = os.path.relpath(folder / value, relative_to)
            for key in ("start", "end"):
                if rec.get(key) is not None:
                    row[key] = rec[key][i]
            rows.append(row)
    return rows


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        fields = ["dialogue_id", "speaker", "text", "utterance_id", "label", "audio", "video", "start", "end"]
        with path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
    return path


def predict_rows(model: Path, data: Path, out: Path, *extra: str) -> list[dict]:
    assert main(["predict", str(model), "--input", str(data), "--out", str(out), "--quiet", *extra]) == 0
    return read_jsonl(out)


def test_bundle_records_the_extractors(media_run) -> None:
    _, _, bundle_file = media_run
    specs = load_bundle(bundle_file).feature_specs
    assert specs["a"]["source"] == "audio-extractor" and specs["a"]["extractor"] == "egemaps"
    assert specs["v"]["source"] == "visual-extractor" and specs["v"]["settings"]["fps"] == 5.0
    assert specs["t"]["source"] == "text-encoder"


def test_predict_on_media_matches_evaluate(media_run, tmp_path) -> None:
    folder, run, bundle = media_run
    table = write_rows(tmp_path / "elsewhere" / "utterances.jsonl", media_rows(folder, tmp_path / "elsewhere"))
    shutil.rmtree(media_cache_dir())  # predict extracts the media itself, not from merc extract's cache
    rows = predict_rows(bundle, table, tmp_path / "p.jsonl")
    assert {p.name.split("-")[0] for p in media_cache_dir().iterdir()} == {"egemaps", "faces"}  # and caches it
    assert len(rows) == 10
    test = [r for r in rows if r["dialogue_id"] == "test-d0"]
    expected, _ = evaluate_path(run, 0)
    assert expected.shape == (2, 3)
    np.testing.assert_allclose(utterance_probabilities(test), expected, atol=1e-5)
    assert [r["modalities_present"] for r in test] == ["tav", "tav"]
    # Every split: the same as the folder's own features (merc extract), read from its files.
    native = predict_rows(bundle, folder, tmp_path / "n.jsonl")
    assert [r["utterance_id"] for r in native] == [r["utterance_id"] for r in rows]
    np.testing.assert_allclose(utterance_probabilities(rows), utterance_probabilities(native), atol=1e-5)
    # No video (train-d0, valid-d0_1) or no face (train-d1_2): visual missing, the same both ways.
    missing = {r["utterance_id"]: r["modalities_missing"] for r in rows}
    assert missing == {r["utterance_id"]: r["modalities_missing"] for r in native}
    without_v = {"train-d0_0", "train-d0_1", "train-d0_2", "valid-d0_1", "train-d1_2"}
    assert {u for u, m in missing.items() if m} == without_v and set(missing.values()) == {"", "v"}
    # The features themselves: those training standardised, and the same availability (the
    # extractor's zero rows are missing entries in training too, not all-zero features).
    raw = load_dataset(str(folder), modalities="tav", show_progress=False)
    trained = list(standardize_features(raw, statistics=training_statistics(raw)).conversations())
    prepared, _ = prepare(load_bundle(bundle), read_input(table), show_progress=False)

    def availability(conv):
        return conv.availability if conv.availability is not None else np.ones((len(conv), 3), bool)

    training_missing = {conv.utterance_ids[i] for conv in trained for i in np.flatnonzero(~availability(conv)[:, 2])}
    assert training_missing == without_v
    for ours, theirs in zip(prepared.conversations(), trained, strict=True):
        assert ours.id == theirs.id
        np.testing.assert_array_equal(availability(ours), availability(theirs))
        for m in "tav":
            np.testing.assert_allclose(ours.features[m], theirs.features[m], atol=1e-5)


def test_a_native_folder_with_media_and_no_feature_files(media_run, tmp_path) -> None:
    folder, run, bundle = media_run
    raw = tmp_path / "raw"
    shutil.copytree(folder, raw)
    shutil.rmtree(raw / "features")
    meta = json.loads((raw / "metadata.json").read_text())
    meta.update(modalities=[], dims={}, meta={})
    (raw / "metadata.json").write_text(json.dumps(meta))
    rows = predict_rows(bundle, raw, tmp_path / "p.jsonl", "--split", "test")
    np.testing.assert_allclose(utterance_probabilities(rows), evaluate_path(run, 0)[0], atol=1e-5)


def test_utterances_without_media_or_face_are_predicted_with_the_mask(media_run, tmp_path, capsys) -> None:
    folder, _, bundle_file = media_run
    rows = media_rows(folder, tmp_path, ["test-d0", "train-d1"])
    for key in ("audio", "video", "start", "end"):
        rows[1].pop(key)  # test-d0_1: no media at all
    table = write_rows(tmp_path / "in.jsonl", rows)
    capsys.readouterr()
    got = predict_rows(bundle_file, table, tmp_path / "p.jsonl")
    err = capsys.readouterr().err
    assert [(r["utterance_id"], r["modalities_present"], r["modalities_missing"]) for r in got] == [
        ("test-d0_0", "tav", ""),
        ("test-d0_1", "t", "av"),
        ("train-d1_0", "tav", ""),
        ("train-d1_1", "tav", ""),
        ("train-d1_2", "ta", "v"),  # the grey second: audio from the video's track, no face
    ]
    assert "audio is missing for 1 of 5 utterances (1 without audio or video (first: 'test-d0_1'))" in err
    assert (
        "visual is missing for 2 of 5 utterances (1 without video (first: 'test-d0_1'); "
        "1 with no face in any sampled frame (first: 'train-d1_2'))" in err
    )
    probs = utterance_probabilities(got)
    assert np.isfinite(probs).all() and np.allclose(probs.sum(1), 1, atol=1e-5)
    # Missing entries are the training mean (0 after standardisation) and masked.
    bundle = load_bundle(bundle_file)
    dataset, warnings = prepare(bundle, read_input(table), show_progress=False)
    assert len(warnings) == 2
    conv = next(dataset.conversations())
    assert conv.availability[:, :2].tolist() == [[True, True], [True, False]]
    np.testing.assert_array_equal(conv.features["a"][1], 0.0)
    assert np.abs(conv.features["a"][0]).sum() > 0
    # The same input as CSV (empty cells, times as text) gives the same predictions.
    as_csv = write_rows(tmp_path / "in.csv", rows)
    again = predict_rows(bundle_file, as_csv, tmp_path / "p2.jsonl")
    np.testing.assert_allclose(utterance_probabilities(again), probs, atol=1e-6)
    assert [r["modalities_missing"] for r in again] == ["", "av", "", "", "v"]


def _provided_audio_bundle(run: Path, out: Path) -> Path:
    """A bundle of the run whose manifest says the audio features came with the data."""
    assert main(["bundle", str(run), "--out", f"{out}/"]) == 0
    manifest = json.loads((out / "bundle.json").read_text())
    manifest["features"]["a"] = {"source": "provided", "dim": 88}
    (out / "bundle.json").write_text(json.dumps(manifest))
    return out


def test_provided_features_are_not_recomputed_from_media(media_run, tmp_path, capsys) -> None:
    folder, run, _ = media_run
    bundle = _provided_audio_bundle(run, tmp_path / "b")
    table = write_rows(tmp_path / "in.jsonl", media_rows(folder, tmp_path, ["test-d0"]))
    out = tmp_path / "p.jsonl"
    line = one_error_line(capsys, ["predict", str(bundle), "--input", str(table), "--out", str(out)])
    assert (
        "the model's audio features are provided features (88-d) that came with its training data (not computed "
        "by merc), so they cannot be recomputed from the input's media" in line
    )
    assert not out.exists()
    # With the features file they came in, the same model predicts.
    assert main(["predict", str(bundle), "--input", str(folder), "--out", str(out), "--quiet"]) == 0


def test_features_made_otherwise_are_refused(media_run, tmp_path, capsys) -> None:
    folder, _, bundle = media_run
    other = tmp_path / "other"
    shutil.copytree(folder, other)
    meta = json.loads((other / "metadata.json").read_text())
    del meta["meta"]["feature_specs"]["a"]  # audio features of unknown making, and no media to remake them
    (other / "metadata.json").write_text(json.dumps(meta))
    records = [json.loads(x) for x in (other / "conversations.jsonl").read_text().splitlines()]
    for r in records:
        for key in ("audio", "video", "start", "end"):
            r.pop(key, None)
    (other / "conversations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    line = one_error_line(capsys, ["predict", str(bundle), "--input", str(other), "--out", str(tmp_path / "p.jsonl")])
    assert "its audio features are provided features (88-d), the model was trained on egemaps features" in line


BAD_MEDIA = [
    ({"audio": "missing.wav"}, "dialogue 'test-d0', utterance 'test-d0_0' (audio missing.wav): media file not found"),
    ({"audio": "junk.wav"}, "dialogue 'test-d0', utterance 'test-d0_0' (audio junk.wav): cannot read"),
    ({"video": "speech.wav"}, "utterance 'test-d0_0' (video speech.wav): ", "has no video stream"),
    (
        {"audio": "speech.wav", "start": 0.5, "end": 9.0},
        "utterance 'test-d0_0' (audio speech.wav): segment ends at 9 s, after the end of the file (1.000 s)",
    ),
    ({"audio": "speech.wav", "start": 0.5}, "in.jsonl: dialogue 'test-d0': 'start' given without 'end'; give both"),
    ({"audio": "speech.wav", "start": "soon", "end": 1}, "utterance 'test-d0_0': 'start' must be a number of seconds"),
    (
        {"audio": "speech.wav", "start": 0.8, "end": 0.8},
        "utterance 'test-d0_0': empty segment (start 0.8 s, end 0.8 s)",
    ),
    ({"audio": 3}, "utterance 'test-d0_0': 'audio' must be a file name or null, got 3"),
    ({"audio": "speech.wav", "video": None, "start": None, "end": None, "_both": True}, "is named by 2 utterances"),
]


@pytest.mark.parametrize("change", BAD_MEDIA, ids=[str(i) for i in range(len(BAD_MEDIA))])
def test_bad_media_is_one_line_naming_the_utterance(media_run, tmp_path, capsys, change) -> None:
    folder, _, bundle = media_run
    fields, *fragments = change
    fields = dict(fields)
    write_wav(tmp_path / "speech.wav", speech_like(1.0))
    (tmp_path / "junk.wav").write_bytes(np.random.default_rng(0).bytes(512))
    rows = media_rows(folder, tmp_path, ["test-d0"])
    targets = rows if fields.pop("_both", False) else rows[:1]
    for row in rows:
        for key in ("audio", "video", "start", "end"):
            row.pop(key, None)
    for row in targets:
        row.update({k: v for k, v in fields.items() if v is not None})
    table = write_rows(tmp_path / "in.jsonl", rows)
    out = tmp_path / "p.jsonl"
    line = one_error_line(capsys, ["predict", str(bundle), "--input", str(table), "--out", str(out)])
    assert all(f in line for f in fragments), line
    assert not out.exists()


def test_row_media_fields_reuse_the_native_checks(tmp_path) -> None:
    table = tmp_path / "in.csv"
    table.write_text("dialogue_id,speaker,text,start,end\nd,A,hi,0,1\n")
    with pytest.raises(DataError, match=r"in.csv: dialogue 'd': 'start'/'end' given but no 'audio' or 'video' file"):
        read_input(table)
    table.write_text("dialogue_id,speaker,text,audio,start,end\nd,A,hi,x.wav,-1,1\n")
    with pytest.raises(DataError, match="utterance 'd_0': start -1 s is negative"):
        read_input(table)
    # Paths are relative to the input file; a row without media has none.
    table.write_text(
        "dialogue_id,speaker,text,audio,video,start,end\nd,A,hi,w/x.wav,,0.5,\nd,B,yo,,,,\nd,A,ok,/y.mp3,,,2\n"
    )
    data = read_input(table)
    first, second, third = data.segments("a")
    assert second is None and first is not None and third is not None
    assert (first.path, first.start, first.end, first.declared) == (tmp_path / "w/x.wav", 0.5, None, "w/x.wav")
    assert (third.path, third.start, third.end) == (Path("/y.mp3"), None, 2.0)
    assert data.segments("v") == [None, None, None]
    # A file named by several utterances of a dialogue needs the times of each.
    table.write_text("dialogue_id,speaker,text,video,start,end\nd,A,hi,d.mp4,0,1\nd,B,yo,d.mp4,1,\n")
    with pytest.raises(DataError, match="'video' d.mp4 is named by 2 utterances, so each needs its 'start' and 'end'"):
        read_input(table)


def test_a_text_model_ignores_media_and_says_so(text_run, tmp_path, capsys) -> None:
    _, run = text_run
    table = tmp_path / "in.csv"
    table.write_text("dialogue_id,speaker,text,audio,video\nd,A,I am so happy today!,none.wav,\nd,B,Okay.,,none.mp4\n")
    capsys.readouterr()
    rows = predict_rows(run, table, tmp_path / "p.jsonl")
    assert [r["modalities_present"] for r in rows] == ["t", "t"]
    assert (
        "the input names audio files for 1 utterance and video files for 1 utterance; the model (t) does not use them"
        in capsys.readouterr().err
    )
