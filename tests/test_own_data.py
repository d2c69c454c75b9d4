"""A user's own folder, as a new user meets it: transcripts only, extract, datasets PATH, resume, exports."""

from __future__ import annotations

import json
import os
import stat

import pytest

from bad_input_env import one_error_line
from helpers import make_dataset
from merc.cli import main
from merc.data.formats.native import read_native, write_native
from merc.data.registry import load_dataset
from merc.evaluation.aggregate import aggregate_seeds, format_mean_std
from predict_helpers import CHEAP, write_text_dataset


def test_transcripts_declared_as_text_are_computed_and_extract_writes_them(tmp_path, capsys) -> None:
    folder = write_text_dataset(tmp_path / "mine", ["t"])
    assert not (folder / "features" / "t.safetensors").exists()
    ds = load_dataset(str(folder), modalities="t", show_progress=False)
    assert ds.dims == {"t": 384} and ds.meta["feature_specs"]["t"]["encoder"] == "all-MiniLM-L6-v2"

    assert main(["extract", "--dataset", str(folder)]) == 0
    out = capsys.readouterr().out
    assert f"to {folder / 'features' / 't.safetensors'}" in out
    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["modalities"] == ["t"] and meta["dims"]["t"] == 384
    again = read_native(folder)
    assert again.modalities == ("t",)
    for a, b in zip(ds.conversations(), again.conversations()):
        assert (a.features["t"] == b.features["t"]).all()
    assert main(["extract", "--dataset", str(folder)]) == 0
    assert "already has text features" in capsys.readouterr().out


def test_the_encoder_says_what_it_does_before_a_long_encoding(tmp_path, monkeypatch, capsys) -> None:
    from merc.features import text

    monkeypatch.setenv("MERC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(text, "encode_texts", lambda texts, **kw: __import__("numpy").zeros((len(texts), 4), "f4"))
    text.cached_text_features("corpus", ["a", "b", "c"], show_progress=True)
    err = capsys.readouterr().err
    assert "encoding 3 utterances of corpus with all-MiniLM-L6-v2" in err and str(tmp_path / "cache") in err
    text.cached_text_features("corpus", ["a", "b", "c"], show_progress=True)
    assert capsys.readouterr().err == ""  # read from the cache: nothing to announce


def test_no_transcripts_names_the_dialogue(tmp_path, capsys) -> None:
    folder = tmp_path / "mine"
    write_native(make_dataset((3, 4), "a"), folder)
    line = one_error_line(capsys, ["extract", "--dataset", str(folder)])
    assert "dialogue 'train-d0' (and 5 more) has no transcripts" in line


def test_datasets_shows_a_users_folder(tmp_path, capsys) -> None:
    folder = write_text_dataset(tmp_path / "mine", ["t", "a", "v"], with_av=True)
    assert main(["datasets", str(folder), "--json"]) == 0
    detail = json.loads(capsys.readouterr().out)
    assert detail["splits"]["train"]["dialogues"] == 4 and detail["splits"]["test"]["utterances"] == 14
    assert sum(detail["splits"]["valid"]["classes"].values()) == 14
    assert detail["modalities"]["a"]["dim"] == 6 and detail["modalities"]["v"]["dim"] == 8
    assert "computed from the texts" in detail["modalities"]["t"]["source"]
    assert main(["datasets", str(folder)]) == 0
    shown = capsys.readouterr().out
    assert "c0" in shown and "modality a: 6-d" in shown and "modality t:" in shown


def test_resumed_runs_count_earlier_time_and_name_reused_seeds(tmp_path, capsys) -> None:
    folder = tmp_path / "mine"
    write_native(make_dataset((3, 4, 5, 2), "ta", separable=True), folder)
    run = tmp_path / "run"
    argv = ["train", "--model", "bclstm", "--dataset", str(folder), "--modalities", "ta", "--out", str(run), *CHEAP]
    assert main([*argv, "--seeds", "0"]) == 0
    first = json.loads((run / "results.json").read_text())["timing"]["total_seconds"]
    # Only the recipe's seeds count towards the fingerprint: rerun seed 0 alone after faking more time.
    metrics = json.loads((run / "seed_0" / "metrics.json").read_text())
    metrics["seconds"] = 1000.0
    (run / "seed_0" / "metrics.json").write_text(json.dumps(metrics))
    capsys.readouterr()
    assert main([*argv, "--seeds", "0"]) == 0
    timing = json.loads((run / "results.json").read_text())["timing"]
    assert timing["reused_seeds"] == [0] and timing["total_seconds"] >= 1000.0 > first
    out = capsys.readouterr().out
    assert "reused finished seed(s) 0" in out and "in earlier runs" in out


def test_one_seed_prints_n_equals_1() -> None:
    one = aggregate_seeds([{"accuracy": 61.5}], keys=["accuracy"])["accuracy"]
    two = aggregate_seeds([{"accuracy": 61.0}, {"accuracy": 62.0}], keys=["accuracy"])["accuracy"]
    assert format_mean_std(one) == "61.50 (n = 1)" and format_mean_std(two) == "61.50 ± 0.71"


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_exported_folders_get_the_users_umask(tmp_path, mask) -> None:
    old = os.umask(mask)
    try:
        folder = write_native(make_dataset((3, 4), "t"), tmp_path / "export")
    finally:
        os.umask(old)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~mask


def test_a_seed_resumed_from_its_checkpoint_counts_its_earlier_epochs(tmp_path, capsys) -> None:
    folder = tmp_path / "mine"
    write_native(make_dataset((3, 4, 5, 2), "ta", separable=True), folder)
    run = tmp_path / "run"
    argv = ["train", "--model", "bclstm", "--dataset", str(folder), "--modalities", "ta", "--out", str(run), *CHEAP]
    assert main(argv) == 0
    epochs = json.loads((run / "seed_0" / "metrics.json").read_text())["epoch_seconds"]
    # As after a kill between the last epoch's checkpoint and metrics.json.
    (run / "seed_0" / "metrics.json").unlink()
    assert main(argv) == 0
    result = json.loads((run / "seed_0" / "metrics.json").read_text())
    timing = json.loads((run / "results.json").read_text())["timing"]
    assert result["resumed_at_epoch"] == len(epochs) and timing["resumed_seeds"] == [0]
    assert timing["total_seconds"] >= timing["this_run_seconds"] + sum(epochs) - 1e-9
    assert "resumed seed(s) 0" in capsys.readouterr().out
