"""merc bundle / merc predict: same predictions as merc evaluate, own inputs, missing modalities."""

from __future__ import annotations

import csv
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from merc.cli import main
from merc.inference.bundle import bundle_from_run, load_bundle
from merc.inference.predict import speaker_ids, uses_global_speakers
from merc.models import build_model
from predict_helpers import evaluate_path, train, utterance_probabilities, write_text_dataset


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_predict_on_a_bundle_matches_evaluate(feature_run, tmp_path, capsys) -> None:
    folder, run = feature_run
    bundle_file = tmp_path / "model.merc"
    assert main(["bundle", str(run), "--out", str(bundle_file)]) == 0
    assert f"wrote {bundle_file}" in capsys.readouterr().out
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE(bundle_file.stat().st_mode) == 0o666 & ~mask  # shareable, not a private temporary file
    bundle = load_bundle(bundle_file)
    metrics = {s: json.loads((run / f"seed_{s}" / "metrics.json").read_text()) for s in (0, 1)}
    best = max((0, 1), key=lambda s: (metrics[s]["valid"]["weighted_f1"], -s))
    assert bundle.seed == best and bundle.modalities == ("t", "a")
    assert bundle.manifest["features"] == {
        "t": {"source": "provided", "dim": 12},
        "a": {"source": "provided", "dim": 6},
    }

    out = tmp_path / "pred.jsonl"
    assert main(["predict", str(bundle_file), "--input", str(folder), "--split", "test", "--out", str(out)]) == 0
    rows = read_jsonl(out)
    expected, accuracy = evaluate_path(run, best)
    got = utterance_probabilities(rows)
    assert got.shape == expected.shape == (14, 3)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert [r["label"] for r in rows] == [bundle.label_names[k] for k in expected.argmax(1)]
    # merc evaluate's test accuracy of that seed is the accuracy of these rows.
    assert main(["evaluate", str(run)]) == 0
    evaluation = json.loads((run / "evaluation.json").read_text())
    seed_accuracy = evaluation["test"]["accuracy"]["per_seed"][[0, 1].index(best)]
    assert np.mean([r["label"] == r["gold_label"] for r in rows]) * 100 == pytest.approx(seed_accuracy)
    assert accuracy == pytest.approx(seed_accuracy)
    assert {r["modalities_present"] for r in rows} == {"ta"} and {r["modalities_missing"] for r in rows} == {""}

    # The folder layout, a run folder and --seed give the same (or the chosen seed's) predictions.
    assert main(["bundle", str(run), "--out", str(tmp_path / "folder") + "/"]) == 0
    assert (tmp_path / "folder" / "bundle.json").is_file()
    for source in (str(tmp_path / "folder"), str(run)):
        again = tmp_path / "again.csv"
        assert main(["predict", source, "--input", str(folder), "--split", "test", "--out", str(again)]) == 0
        with again.open() as fh:
            table = list(csv.DictReader(fh))
        probs = np.array([[float(r[f"p_{c}"]) for c in bundle.label_names] for r in table])
        np.testing.assert_allclose(probs, expected, atol=1e-5)
    other = 1 - best
    assert (
        main(["predict", str(run), "--seed", str(other), "--input", str(folder), "--split", "test", "--out", str(out)])
        == 0
    )
    np.testing.assert_allclose(utterance_probabilities(read_jsonl(out)), evaluate_path(run, other)[0], atol=1e-5)


def test_bundle_never_unpickles(feature_run, tmp_path, monkeypatch) -> None:
    _, run = feature_run
    bundle_file = tmp_path / "m.merc"
    assert main(["bundle", str(run), "--out", str(bundle_file)]) == 0

    def refuse(*args, **kwargs):
        raise AssertionError("a bundle was unpickled")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr("pickle.loads", refuse)
    bundle = load_bundle(bundle_file)
    assert set(bundle.state_dict) == set(bundle.build().state_dict())


def test_text_model_on_transcripts_without_feature_files(text_run, tmp_path, capsys) -> None:
    folder, run = text_run
    inputs = json.loads((run / "inputs.json").read_text())
    spec = inputs["specs"]["t"]
    assert spec["source"] == "text-encoder" and spec["encoder"] == "all-MiniLM-L6-v2" and spec["dim"] == 384
    from safetensors.numpy import load_file

    stats = load_file(run / "standardization.safetensors")
    assert stats["t.mean"].shape == (384,) and (stats["t.std"] >= 0).all() and stats["t.std"].max() > 0

    # Texts typed by a user: unseen speakers, an utterance without text.
    transcript = tmp_path / "chat.txt"
    transcript.write_text("# a chat\nAnna: I am so happy today!\nBen: This is terrible.\n\nAnna: Okay.\n")
    out = tmp_path / "chat.jsonl"
    assert main(["predict", str(run), "--input", str(transcript), "--out", str(out), "--quiet"]) == 0
    rows = read_jsonl(out)
    assert [(r["dialogue_id"], r["utterance_index"], r["speaker"]) for r in rows] == [
        ("dialogue_1", 0, "Anna"),
        ("dialogue_1", 1, "Ben"),
        ("dialogue_2", 0, "Anna"),
    ]
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-5 for r in rows)
    assert [r["label"] for r in rows] == [max(r["probabilities"], key=r["probabilities"].get) for r in rows]

    table = tmp_path / "chat.csv"
    table.write_text(
        "dialogue_id,speaker,text,utterance_index\nd1,B,Okay.,1\nd1,A,I feel so sad and alone.,0\nd1,A,,2\n"
    )
    err_before = capsys.readouterr()
    assert main(["predict", str(run), "--input", str(table), "--out", str(out), "--quiet"]) == 0
    rows = read_jsonl(out)
    assert [r["text"] for r in rows] == ["I feel so sad and alone.", "Okay.", None]
    assert [r["modalities_missing"] for r in rows] == ["", "", "t"]
    assert "text is missing for 1 of 3 utterances" in capsys.readouterr().err
    del err_before


def test_text_predictions_match_evaluate(text_run, tmp_path) -> None:
    folder, run = text_run
    out = tmp_path / "p.jsonl"
    assert main(["predict", str(run), "--input", str(folder), "--split", "test", "--out", str(out), "--quiet"]) == 0
    expected, _ = evaluate_path(run, 0)
    got = utterance_probabilities(read_jsonl(out))
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert (got.argmax(1) == expected.argmax(1)).all()


def test_bfloat16_predictions_are_close_to_float32(text_run, tmp_path) -> None:
    folder, run = text_run
    probs = {}
    for precision in ("32", "bf16-mixed"):
        out = tmp_path / f"p{precision}.jsonl"
        args = ["predict", str(run), "--input", str(folder), "--split", "test", "--out", str(out), "--quiet"]
        assert main([*args, "--precision", precision]) == 0
        probs[precision] = utterance_probabilities(read_jsonl(out))
    assert not np.array_equal(probs["32"], probs["bf16-mixed"])  # it did run in bfloat16
    np.testing.assert_allclose(probs["bf16-mixed"], probs["32"], atol=2e-2)


def test_tav_model_on_text_only_input_uses_the_availability_mask(tmp_path, capsys) -> None:
    folder = write_text_dataset(tmp_path / "ds", ["t", "a", "v"], with_av=True)
    run = train(folder, tmp_path / "run", "tav", seeds="0")
    bundle = bundle_from_run(run)
    assert bundle.manifest["features"]["a"] == {"source": "provided", "dim": 6}
    table = tmp_path / "in.jsonl"
    table.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"dialogue_id": "x", "speaker": "s0", "text": "I love it, thank you!", "label": "c0"},
                {"dialogue_id": "x", "speaker": "s1", "text": "Everything went wrong again.", "label": "c1"},
            ]
        )
        + "\n"
    )
    out = tmp_path / "out.csv"
    capsys.readouterr()
    assert main(["predict", str(run), "--input", str(table), "--out", str(out), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "the model was trained with tav; audio is missing for 2 of 2 utterances" in err
    with out.open() as fh:
        table_rows = list(csv.DictReader(fh))
    assert [r["modalities_present"] for r in table_rows] == ["t", "t"]
    assert [r["modalities_missing"] for r in table_rows] == ["av", "av"]
    assert [r["gold_label"] for r in table_rows] == ["c0", "c1"]
    # Predicting with the mask is predicting with training-mean a/v features given explicitly.
    from merc.inference.inputs import read_input
    from merc.inference.predict import predict, prepare

    data = read_input(table)
    dataset, _ = prepare(bundle, data, show_progress=False)
    conv = next(dataset.conversations())
    assert not conv.availability[:, 1:].any() and conv.availability[:, 0].all()
    np.testing.assert_array_equal(conv.features["a"], 0.0)
    probs = predict(bundle, data, show_progress=False).probabilities
    assert probs.shape == (2, 3) and np.isfinite(probs).all()


def test_unseen_speakers_of_a_global_id_model_take_free_training_ids() -> None:
    ids, unseen = speaker_ids(["Ann", "M", "Bob", "Ann"], ["F", "M"])
    assert ids == {"M": 1, "Ann": 0, "Bob": 0} and unseen == ["Ann", "Bob"]
    ids, _ = speaker_ids(["x", "y", "z"], ["a", "b", "c", "d"])
    assert sorted(ids.values()) == [0, 1, 2]
    from merc.errors import DataError

    with pytest.raises(DataError, match="not seen in training"):
        speaker_ids(["Ann"], ["F", "M"], policy="refuse", where="dialogue 'd'")
    corect = build_model("corect", in_dims={"t": 12}, num_classes=3, num_speakers=2, num_parties=2)
    bclstm = build_model("bclstm", in_dims={"t": 12}, num_classes=3, num_speakers=2, num_parties=2)
    assert uses_global_speakers(corect) and not uses_global_speakers(bclstm)


def test_a_run_trained_before_inputs_were_recorded_is_bundled_from_its_data(feature_run, tmp_path, capsys) -> None:
    import shutil

    _, run = feature_run
    old = tmp_path / "old"
    shutil.copytree(run, old)
    (old / "inputs.json").unlink()
    (old / "standardization.safetensors").unlink()
    recorded, rebuilt = bundle_from_run(run), bundle_from_run(old)
    assert rebuilt.manifest["features"] == recorded.manifest["features"]
    for m in ("t", "a"):
        np.testing.assert_array_equal(rebuilt.statistics[m][0], recorded.statistics[m][0])
        np.testing.assert_array_equal(rebuilt.statistics[m][1], recorded.statistics[m][1])


def test_a_run_on_token_or_frame_sequences_is_not_bundled(tmp_path, capsys) -> None:
    # Bundles carry utterance-level features only: a sequence-trained model would be fed
    # something else than it learned on, so merc refuses and says what to do.
    run = tmp_path / "run"
    argv = ["train", "--model", "rsm", "--dataset", "synthetic@a", "--modalities", "ta", "--seeds", "0"]
    assert main([*argv, "--out", str(run), "--quiet", "training.epochs=1", "model.hidden_size=8"]) == 0
    capsys.readouterr()
    assert main(["bundle", str(run), "--out", str(tmp_path / "m.merc")]) == 2
    err = capsys.readouterr().err
    assert "token/frame sequences" in err and "merc evaluate" in err
    assert not (tmp_path / "m.merc").exists()
