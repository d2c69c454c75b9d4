"""The command line: happy paths and one-line errors (no traceback) for bad input."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import numpy as np
import pytest

from helpers import make_dataset
from merc.cli import main
from merc.data.formats.native import write_native


def _dialoguegcn_pickle(path, t_dims=(10, 10, 10), nan=False, empty=False) -> None:
    """A tiny file in the DialogueGCN 9-tuple layout."""
    rng = np.random.default_rng(0)
    ids = ["d0", "d1", "d2"]
    lens = [3, 0 if empty else 4, 2]
    video_ids = {d: [f"{d}_{i}" for i in range(n)] for d, n in zip(ids, lens)}
    speakers = {d: ["M", "F"] * 2 for d in ids}
    speakers = {d: speakers[d][:n] for d, n in zip(ids, lens)}
    labels = {d: list(rng.integers(0, 4, n)) for d, n in zip(ids, lens)}
    text = {d: rng.normal(size=(n, td)) for d, n, td in zip(ids, lens, t_dims)}
    if nan:
        text["d0"][1, 2] = np.nan
    audio = {d: rng.normal(size=(n, 5)) for d, n in zip(ids, lens)}
    visual = {d: rng.normal(size=(n, 6)) for d, n in zip(ids, lens)}
    sentence = {d: ["hi"] * n for d, n in zip(ids, lens)}
    with open(path, "wb") as fh:
        pickle.dump((video_ids, speakers, labels, text, audio, visual, sentence, ["d0", "d1"], ["d2"]), fh, protocol=2)


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def _error_line(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("merc: error: ")
    return err


def test_unknown_dataset_and_model(capsys, tmp_path) -> None:
    assert "unknown dataset 'nope'" in _error_line(
        capsys, ["train", "--model", "bclstm", "--dataset", "nope", "--out", str(tmp_path)]
    )
    assert "unknown model 'nope'" in _error_line(
        capsys, ["train", "--model", "nope", "--dataset", "synthetic", "--out", str(tmp_path)]
    )


def test_missing_data_root(capsys, tmp_path) -> None:
    err = _error_line(
        capsys,
        [
            "train",
            "--model",
            "bclstm",
            "--dataset",
            "iemocap6",
            "--data-root",
            str(tmp_path / "x"),
            "--out",
            str(tmp_path),
        ],
    )
    assert "data root not found" in err and "--data-root" in err


@pytest.mark.parametrize(
    "kwargs, message",
    [({"t_dims": (10, 12, 10)}, "dim"), ({"nan": True}, "NaN"), ({"empty": True}, "empty")],
)
def test_bad_feature_files(capsys, tmp_path, kwargs, message) -> None:
    path = tmp_path / "feats.pkl"
    _dialoguegcn_pickle(path, **kwargs)
    err = _error_line(
        capsys,
        ["train", "--model", "bclstm", "--dataset", str(path), "--modalities", "ta", "--out", str(tmp_path / "run")],
    )
    assert message in err


def test_truncated_and_malicious_pickles(capsys, tmp_path) -> None:
    good = tmp_path / "good.pkl"
    _dialoguegcn_pickle(good)
    truncated = tmp_path / "truncated.pkl"
    truncated.write_bytes(good.read_bytes()[:200])
    assert "truncated" in _error_line(
        capsys, ["train", "--model", "bclstm", "--dataset", str(truncated), "--out", str(tmp_path / "r")]
    )
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"train": [_Evil()]}))
    assert "refused to load" in _error_line(
        capsys, ["train", "--model", "bclstm", "--dataset", str(evil), "--out", str(tmp_path / "r")]
    )


def test_label_out_of_range_in_own_format(capsys, tmp_path) -> None:
    folder = tmp_path / "mine"
    write_native(make_dataset((3, 4), "t"), folder)
    lines = (folder / "conversations.jsonl").read_text().splitlines()
    record = json.loads(lines[0])
    record["labels"][0] = 9
    lines[0] = json.dumps(record)
    (folder / "conversations.jsonl").write_text("\n".join(lines) + "\n")
    err = _error_line(capsys, ["train", "--model", "bclstm", "--dataset", str(folder), "--out", str(tmp_path / "r")])
    assert "label 9 out of range" in err


def test_bad_override(capsys, tmp_path) -> None:
    err = _error_line(
        capsys, ["train", "--model", "bclstm", "--dataset", "synthetic", "--out", str(tmp_path), "training.nope=1"]
    )
    assert "unknown training option" in err


def test_train_evaluate_and_resume_own_data(capsys, tmp_path) -> None:
    folder = tmp_path / "mine"
    write_native(make_dataset((3, 4, 5, 2), "ta", separable=True), folder)
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
        "0,1",
        "--out",
        str(run),
        "--quiet",
        "training.epochs=3",
        "model.hidden_size=8",
    ]
    assert main(argv) == 0
    results = json.loads((run / "results.json").read_text())
    assert set(results["test"]["weighted_f1"]) == {"mean", "std", "per_seed"}
    assert len(results["test"]["accuracy"]["per_seed"]) == 2
    assert results["timing"]["epoch_seconds_median"] > 0
    assert (run / "config.yaml").is_file() and (run / "seed_1" / "best.pt").is_file()
    # Re-running the same command reuses the finished seeds; evaluate re-scores them identically.
    assert main(argv) == 0
    assert main(["evaluate", str(run)]) == 0
    evaluation = json.loads((run / "evaluation.json").read_text())
    assert evaluation["test"]["weighted_f1"]["per_seed"] == pytest.approx(results["test"]["weighted_f1"]["per_seed"])


def test_datasets_json_lists_synthetic(capsys) -> None:
    assert main(["datasets", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["synthetic"]["splits"]["train"]["dialogues"] > 0
    assert "generated" in rows["synthetic"]["description"].lower()


def test_datasets_shows_a_sequence_request(capsys) -> None:
    assert main(["datasets", "synthetic@a", "--json"]) == 0
    detail = json.loads(capsys.readouterr().out)
    assert detail["name"] == "synthetic" and detail["sequences"] == ["a"]
    assert main(["datasets", "synthetic", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["sequences"] == []


def test_real_process_prints_no_traceback(tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "merc.cli", "train", "--model", "bclstm", "--dataset", "nope", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("merc: error: unknown dataset") and "Traceback" not in proc.stderr


def test_curriculum_switches_become_overrides_and_defaults_come_from_the_dataset_registry() -> None:
    from merc.cli import build_parser, plugin_overrides
    from merc.errors import ConfigError
    from merc.training.runner import resolve_recipe

    def overrides(*flags: str) -> list[str]:
        return plugin_overrides(
            build_parser().parse_args(["train", "--model", "bclstm", "--dataset", "x", "--out", "o", *flags])
        )

    assert overrides("--curriculum", "emotion-shift") == ["curriculum.strategy=emotion-shift"]
    assert overrides("--curriculum", "emotion-shift", "--buckets", "3")[-1] == "curriculum.buckets=3"
    assert overrides() == []
    with pytest.raises(ConfigError, match="--buckets needs --curriculum"):
        overrides("--buckets", "3")
    # MultiDAG+CL Table 4's bucket counts are dataset facts, filled into the resolved recipe.
    on = ["curriculum.strategy=emotion-shift"]
    assert resolve_recipe("multidag", "iemocap6", on)["curriculum"]["buckets"] == 5
    assert resolve_recipe("multidag", "meld7", on)["curriculum"]["buckets"] == 12
    assert resolve_recipe("multidag", "meld7", [*on, "curriculum.buckets=3"])["curriculum"]["buckets"] == 3
    assert "curriculum" not in resolve_recipe("multidag", "meld7")  # a default never switches a plug-in on


def test_a_new_plugin_gets_its_switch_without_editing_the_cli() -> None:
    from merc.cli import build_parser, plugin_overrides
    from merc.training.plugins.registry import PluginOption, register_plugin, unregister_plugin

    register_plugin(
        "toy-balance",
        help="a test plug-in",
        group="balance",
        options=(PluginOption("toy-alpha", "alpha", float, "its alpha"),),
    )(lambda cfg, ds: None)
    try:
        args = build_parser().parse_args(
            ["train", "--model", "m", "--dataset", "d", "--out", "o", "--balance", "toy-balance", "--toy-alpha", "0.5"]
        )
        assert plugin_overrides(args) == ["toy-balance.enabled=true", "toy-balance.alpha=0.5"]
        with pytest.raises(SystemExit):  # argparse: not one of the group's plug-ins
            build_parser().parse_args(["train", "--model", "m", "--dataset", "d", "--out", "o", "--balance", "x"])
    finally:
        unregister_plugin("toy-balance")


def test_train_with_curriculum_records_it(tmp_path) -> None:
    run = tmp_path / "run"
    argv = [
        "train",
        "--model",
        "bclstm",
        "--dataset",
        "synthetic",
        "--modalities",
        "t",
        "--out",
        str(run),
        "--quiet",
        "--curriculum",
        "emotion-shift",
        "--buckets",
        "3",
        "training.epochs=2",
        "model.hidden_size=8",
    ]
    assert main(argv) == 0
    import yaml

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["curriculum"] == {"strategy": "emotion-shift", "buckets": 3}


def test_overrides_may_stand_anywhere_on_the_command_line(tmp_path) -> None:
    folder = tmp_path / "mine"
    write_native(make_dataset((3, 4, 5, 2), "ta", separable=True), folder)
    run = tmp_path / "run"
    argv = ["train", "--model", "bclstm", "--dataset", str(folder), "--out", str(run), "training.num_threads=1"]
    argv += ["--quiet", "training.epochs=2", "--seeds", "0", "model.hidden_size=4", "-v", "training.epochs=1"]
    assert main(argv) == 0
    import yaml

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    # In command-line order: the last of two values of a key wins.
    assert cfg["training"]["epochs"] == 1 and cfg["training"]["num_threads"] == 1
    assert cfg["model"]["hidden_size"] == 4


def test_a_bug_is_one_line_with_a_log_file_and_v_prints_the_traceback(capsys, tmp_path, monkeypatch) -> None:
    import merc.cli

    def broken(args):
        raise KeyError("a bug")

    monkeypatch.setenv("MERC_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.setitem(merc.cli.COMMANDS, "models", broken)
    assert main(["models"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("merc: internal error") and "KeyError" in err
    log = next((tmp_path / "logs").glob("merc-*.log"))
    assert str(log) in err and "Traceback" in log.read_text() and "a bug" in log.read_text()
    assert main(["models", "-v"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_real_process_prints_one_line_for_an_unsafe_checkpoint(tmp_path) -> None:
    """torch warns about foreign pickles on stderr; a real process must still print one line."""
    folder = tmp_path / "mine"
    write_native(make_dataset((3, 4, 5, 2), "ta", separable=True), folder)
    run = tmp_path / "run"
    argv = ["train", "--model", "bclstm", "--dataset", str(folder), "--out", str(run), "--quiet"]
    argv += ["training.epochs=1", "model.hidden_size=4"]
    assert main(argv) == 0
    (run / "seed_0" / "best.pt").write_bytes(pickle.dumps(_Evil()))
    proc = subprocess.run([sys.executable, "-m", "merc.cli", "evaluate", str(run)], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().startswith("merc: error: ") and len(proc.stderr.strip().splitlines()) == 1
    assert "refused to load the selected weights" in proc.stderr
