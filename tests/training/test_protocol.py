"""Leave-one-session-out cross-validation (``merc train --protocol loso``): the folds, the
run folder, its results, resuming it, and what the default protocol keeps."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

import merc.training.runner as runner
from bad_input_env import CHEAP, one_error_line, snapshot
from helpers import DIMS, make_dataset
from merc.cli import main
from merc.data.formats.native import write_native
from merc.data.protocols import dialogue_session, dialogue_sessions, fold_dataset, session_folds
from merc.data.schema import Conversation, MercDataset
from merc.errors import ConfigError, DataError
from merc.evaluation.html_report import render_report
from merc.evaluation.tables import balance_table
from merc.training.run_folder import FINGERPRINT_FILE, FOLDS_FILE

#: The tiny runs' recipe: one epoch of a 4-unit bc-LSTM.
OVERRIDES = list(CHEAP)
SESSIONS = (1, 2, 3, 4, 5)


def iemocap_like(sessions=SESSIONS, per_session: int = 3, modalities: str = "ta", seed: int = 0) -> MercDataset:
    """Dyadic dialogues named as IEMOCAP's (``Ses03M_script01`` ...), in the COSMIC-like
    split (last session = test, one dialogue of each other session = valid), learnable labels."""
    rng = np.random.default_rng(seed)
    protos = {m: rng.normal(size=(3, d)) * 2 for m, d in DIMS.items()}
    splits: dict[str, list[Conversation]] = {"train": [], "valid": [], "test": []}
    for s in sessions:
        for i in range(per_session):
            n = int(rng.integers(3, 7))
            labels = rng.integers(0, 3, n)
            feats = {
                m: (protos[m][labels] + 0.3 * rng.normal(size=(n, DIMS[m]))).astype(np.float32) for m in modalities
            }
            split = "test" if s == sessions[-1] else ("valid" if i == 0 else "train")
            kind = "impro" if i % 2 == 0 else "script"
            conv = Conversation(
                id=f"Ses{s:02d}{'FM'[i % 2]}_{kind}{i + 1:02d}",
                speakers=["F" if j % 2 == 0 else "M" for j in range(n)],
                labels=labels,
                features=feats,
                split=split,
            )
            splits[split].append(conv)
    return MercDataset(name="iemocap6", label_names=["hap", "sad", "ang"], splits=splits, modalities=tuple(modalities))


def loso(dataset, out, seeds=(0, 1), overrides=(), **kwargs):
    return runner.run_experiment(
        "bclstm",
        dataset,
        "ta",
        list(seeds),
        out,
        overrides=[*OVERRIDES, *overrides],
        show_progress=False,
        protocol="loso",
        **kwargs,
    )


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, dict]:
    """A finished loso run of two seeds on the tiny corpus."""
    out = tmp_path_factory.mktemp("loso") / "run"
    return out, loso(iemocap_like(), out)


# -- sessions and folds -----------------------------------------------------------------------------
def test_sessions_come_from_iemocap_ids_or_from_meta() -> None:
    conv = Conversation(id="Ses04M_script02_1", speakers=["M"], labels=[0])
    assert dialogue_session(conv) == 4
    assert dialogue_session(Conversation(id="chat7", speakers=["a"], labels=[0], meta={"session": 9})) == 9
    assert dialogue_session(Conversation(id="Session1", speakers=["a"], labels=[0])) is None
    assert dialogue_session(Conversation(id="x", speakers=["a"], labels=[0], meta={"session": True})) is None


def test_folds_partition_the_dialogues_and_hold_each_session_out_once() -> None:
    ds = iemocap_like(per_session=6)
    sessions = dialogue_sessions(ds)
    every = set(sessions)
    folds = session_folds(ds, valid_share=0.25)
    assert [f.held_out_session for f in folds] == list(SESSIONS)
    tested: list[str] = []
    for fold in folds:
        train, valid, test = set(fold.train), set(fold.valid), set(fold.test)
        assert not train & valid and not train & test and not valid & test
        assert train | valid | test == every
        # The whole held-out session is the test split, and nothing else is.
        assert test == {d for d, s in sessions.items() if s == fold.held_out_session}
        # Validation: from the training sessions only, the same share (6 * 0.25 -> 2) of each.
        counts = {s: sum(sessions[d] == s for d in valid) for s in SESSIONS if s != fold.held_out_session}
        assert counts == dict.fromkeys(counts, 2)
        tested += fold.test
    assert sorted(tested) == sorted(every)  # each dialogue tested exactly once


def test_validation_is_a_fixed_draw_per_session_whatever_the_fold() -> None:
    ds = iemocap_like(per_session=8)
    a, b = session_folds(ds), session_folds(ds)
    assert a == b
    # A session's validation dialogues are the same in every fold that trains on it.
    sessions = dialogue_sessions(ds)
    for s in SESSIONS:
        chosen = {frozenset(d for d in f.valid if sessions[d] == s) for f in a if f.held_out_session != s}
        assert len(chosen) == 1 and len(next(iter(chosen))) == 1  # round(0.1 * 8) = 1
    # Another split seed draws others (so the draw is seeded, not "the first ids").
    other = session_folds(ds, split_seed=1)
    assert any(x.valid != y.valid for x, y in zip(a, other, strict=True))


def test_fold_dataset_regroups_dialogues_and_keeps_the_facts() -> None:
    ds = iemocap_like()
    fold = session_folds(ds)[1]
    fd = fold_dataset(ds, fold)
    assert {s: [c.id for c in convs] for s, convs in fd.splits.items()} == {
        k: list(v) for k, v in fold.splits().items()
    }
    assert all(c.split == s for s, convs in fd.splits.items() for c in convs)
    assert fd.label_names == ds.label_names and fd.speaker_vocab == ds.speaker_vocab and fd.dims == ds.dims
    fd.validate()


def test_bad_datasets_and_shares_are_refused() -> None:
    with pytest.raises(DataError, match="loso needs session ids"):
        session_folds(make_dataset())
    with pytest.raises(DataError, match="at least two sessions"):
        session_folds(iemocap_like(sessions=(2,)))
    with pytest.raises(ConfigError, match="share in"):
        session_folds(iemocap_like(), valid_share=1.0)
    twice = iemocap_like()
    twice.splits["valid"].append(twice.splits["train"][0])
    with pytest.raises(DataError, match="twice"):
        session_folds(twice)


# -- the run ----------------------------------------------------------------------------------------
def test_a_loso_run_writes_one_folder_per_fold_and_the_folds(finished) -> None:
    out, results = finished
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [f"fold_{k}" for k in SESSIONS]
    for k in SESSIONS:
        assert (out / f"fold_{k}" / "results.json").is_file()
        for seed in (0, 1):
            assert (out / f"fold_{k}" / f"seed_{seed}" / "metrics.json").is_file()
    stored = json.loads((out / FOLDS_FILE).read_text())
    expected = session_folds(iemocap_like())
    assert [(f["fold"], f["train"], f["valid"], f["test"]) for f in stored] == [
        (f.held_out_session, list(f.train), list(f.valid), list(f.test)) for f in expected
    ]
    assert json.loads((out / FINGERPRINT_FILE).read_text())["protocol"] == {
        "name": "loso",
        "split_seed": 0,
        "valid_share": 0.1,
    }
    assert results["protocol"]["name"] == "loso" and results["protocol"]["folds"] == list(SESSIONS)


def test_every_seed_of_every_fold_trains_on_the_same_fixed_folds(tmp_path, monkeypatch) -> None:
    seen: dict[tuple[str, int], dict[str, list[str]]] = {}
    real = runner.train_one_seed

    def spy(dataset, tensors, model_name, recipe, seed, seed_dir, *args, **kwargs):
        splits = {s: [c.id for c in convs] for s, convs in dataset.splits.items()}
        seen[(model_name, dataset.meta["fold"], seed)] = splits
        return real(dataset, tensors, model_name, recipe, seed, seed_dir, *args, **kwargs)

    monkeypatch.setattr(runner, "train_one_seed", spy)
    ds = iemocap_like()
    loso(ds, None, seeds=(0, 1))
    runner.run_experiment(
        "dialoguernn", ds, "ta", [3], None, overrides=OVERRIDES[2:], show_progress=False, protocol="loso"
    )
    folds = {f.held_out_session: f for f in session_folds(ds)}
    sessions = dialogue_sessions(ds)
    assert len(seen) == 3 * len(SESSIONS)
    for (_, k, _), splits in seen.items():
        assert splits == {s: list(v) for s, v in folds[k].splits().items()}  # seed and model do not matter
        assert all(sessions[d] != k for d in splits["train"] + splits["valid"])


def test_the_aggregates_are_those_of_the_per_fold_results(finished) -> None:
    out, results = finished
    assert results == json.loads((out / "results.json").read_text())
    per_run = {
        (k, s): json.loads((out / f"fold_{k}" / f"seed_{s}" / "metrics.json").read_text())["test"]
        for k in SESSIONS
        for s in (0, 1)
    }
    assert [(r["fold"], r["seed"]) for r in results["runs"]] == list(per_run)
    for metric in ("weighted_f1", "accuracy", "ua", "macro_f1"):
        values = np.array([m[metric] for m in per_run.values()])
        pooled = results["test"][metric]
        assert pooled["per_run"] == pytest.approx(values.tolist())
        assert pooled["mean"] == pytest.approx(values.mean()) and pooled["n"] == 10
        assert pooled["std"] == pytest.approx(values.std(ddof=1))
        fold_means = [np.mean([per_run[(k, s)][metric] for s in (0, 1)]) for k in SESSIONS]
        for k, fold in zip(SESSIONS, results["folds"], strict=True):
            on_disk = json.loads((out / f"fold_{k}" / "results.json").read_text())
            assert fold["test"][metric]["mean"] == pytest.approx(on_disk["test"][metric]["mean"])
            assert fold["test"][metric]["mean"] == pytest.approx(fold_means[k - 1])
        assert results["fold_means"]["test"][metric]["std"] == pytest.approx(np.std(fold_means, ddof=1))
        seed_means = [np.mean([per_run[(k, s)][metric] for k in SESSIONS]) for s in (0, 1)]
        assert results["seed_means"]["test"][metric]["per_seed"] == pytest.approx(seed_means)
        # Every fold has every seed: the three means agree, only the spreads differ.
        assert results["fold_means"]["test"][metric]["mean"] == pytest.approx(pooled["mean"])
        assert results["seed_means"]["test"][metric]["mean"] == pytest.approx(pooled["mean"])
    # UA is the mean per-class recall of each run's confusion matrix.
    metrics = json.loads((out / "fold_2" / "seed_1" / "metrics.json").read_text())["test"]
    cm = np.array(metrics["confusion"])
    recall = np.diag(cm)[cm.sum(1) > 0] / cm.sum(1)[cm.sum(1) > 0]
    assert metrics["ua"] == pytest.approx(100 * recall.mean())


def test_an_interrupted_run_reuses_its_finished_folds(tmp_path, monkeypatch, finished) -> None:
    out = tmp_path / "run"
    real = runner.train_one_seed
    trained: list[tuple[int, int]] = []
    killing = [True]

    def stop_in_fold_3(dataset, tensors, model_name, recipe, seed, seed_dir, *args, **kwargs):
        if killing[0] and dataset.meta["fold"] == 3 and seed == 1:
            raise KeyboardInterrupt
        trained.append((dataset.meta["fold"], seed))
        return real(dataset, tensors, model_name, recipe, seed, seed_dir, *args, **kwargs)

    monkeypatch.setattr(runner, "train_one_seed", stop_in_fold_3)
    with pytest.raises(KeyboardInterrupt):
        loso(iemocap_like(), out)
    assert trained == [(1, 0), (1, 1), (2, 0), (2, 1), (3, 0)]
    assert not (out / "results.json").exists()
    trained.clear()
    killing[0] = False
    again = loso(iemocap_like(), out)
    assert trained == [(3, 1), (4, 0), (4, 1), (5, 0), (5, 1)]
    assert again["timing"]["reused_runs"] == [
        "fold_1/seed_0",
        "fold_1/seed_1",
        "fold_2/seed_0",
        "fold_2/seed_1",
        "fold_3/seed_0",
    ]
    # The same numbers as the run that went straight through.
    straight = finished[1]
    assert again["test"] == straight["test"] and again["runs"] == straight["runs"]
    trained.clear()
    assert loso(iemocap_like(), out)["test"] == straight["test"]
    assert trained == []  # all reused


def test_a_loso_folder_is_not_resumed_with_other_settings_and_overwrite_clears_it(tmp_path, capsys) -> None:
    ds = tmp_path / "ds"
    write_native(iemocap_like(), ds)
    out = tmp_path / "run"
    argv = ["train", "--model", "bclstm", "--dataset", str(ds), "--modalities", "ta", "--out", str(out), "--quiet"]
    assert main([*argv, "--protocol", "loso", *OVERRIDES]) == 0
    printed = capsys.readouterr().out
    assert "leave-one-session-out: 5 folds x 1 seed(s)" in printed and "fold 3 (session 3 held out" in printed
    before = snapshot(out)
    line = one_error_line(capsys, [*argv, *OVERRIDES])
    assert "--protocol split here, loso (split_seed 0, valid_share 0.1) in the run" in line
    line = one_error_line(capsys, [*argv, "--protocol", "loso", "--valid-share", "0.3", *OVERRIDES])
    assert "valid_share 0.3" in line and "valid_share 0.1" in line
    assert snapshot(out) == before
    assert main([*argv, "--overwrite", *OVERRIDES]) == 0
    assert not list(out.glob("fold_*")) and not (out / FOLDS_FILE).exists() and (out / "seed_0").is_dir()
    # The commands that need one split's weights say why they cannot take a loso run.
    assert main([*argv, "--overwrite", "--protocol", "loso", *OVERRIDES]) == 0
    line = one_error_line(capsys, ["evaluate", str(out)])
    assert "leave-one-session-out run (--protocol loso)" in line


def test_a_dataset_without_sessions_is_one_clear_error(tmp_path, capsys) -> None:
    ds = tmp_path / "ds"
    write_native(make_dataset((3, 4, 5, 2), "ta", separable=True), ds)
    out = tmp_path / "run"
    argv = ["train", "--model", "bclstm", "--dataset", str(ds), "--modalities", "ta", "--out", str(out), "--quiet"]
    line = one_error_line(capsys, [*argv, "--protocol", "loso", *OVERRIDES])
    assert "loso needs session ids" in line and "train-d0" in line and "--protocol split" in line
    assert not out.exists()
    assert "choose one of: loso, split" in one_error_line(capsys, [*argv, "--protocol", "kfold"])
    assert "applies to --protocol loso" in one_error_line(capsys, [*argv, "--valid-share", "0.2"])
    assert "share in (0, 1)" in one_error_line(capsys, [*argv, "--protocol", "loso", "--valid-share", "0"])
    assert not out.exists()


def test_a_registered_dataset_without_sessions_fails_before_its_features_load(monkeypatch) -> None:
    loaded: list[object] = []
    real = runner.load_dataset

    def spy(name, modalities=None, **kwargs):
        loaded.append(modalities)
        return real(name, modalities=modalities, **kwargs)

    monkeypatch.setattr(runner, "load_dataset", spy)
    with pytest.raises(DataError, match="loso needs session ids: dataset 'synthetic'"):
        runner.run_experiment("bclstm", "synthetic", "ta", [0], None, overrides=OVERRIDES, protocol="loso")
    assert loaded == [None]  # annotations only, never the features


# -- the default protocol ---------------------------------------------------------------------------
def test_the_default_protocol_is_unchanged(tmp_path) -> None:
    ds = iemocap_like()
    plain = runner.run_experiment("bclstm", ds, "ta", [0], tmp_path / "a", overrides=OVERRIDES, show_progress=False)
    split = runner.run_experiment(
        "bclstm", ds, "ta", [0], tmp_path / "b", overrides=OVERRIDES, show_progress=False, protocol="split"
    )
    for run in (tmp_path / "a", tmp_path / "b"):
        assert not list(run.glob("fold_*")) and not (run / FOLDS_FILE).exists()
        assert "protocol" not in json.loads((run / FINGERPRINT_FILE).read_text())
        assert "protocol" not in (run / "config.yaml").read_text()
    assert json.loads((tmp_path / "a" / FINGERPRINT_FILE).read_text()) == json.loads(
        (tmp_path / "b" / FINGERPRINT_FILE).read_text()
    )
    assert not {"protocol", "runs", "folds"} & set(plain) and {"test", "valid", "per_seed", "timing"} <= set(plain)
    assert plain["test"] == split["test"] and plain["valid"] == split["valid"]
    # The dataset's own test split (session 5) is what it is scored on.
    test_utts = sum(len(c) for c in ds.splits["test"])
    per_seed = json.loads((tmp_path / "a" / "seed_0" / "metrics.json").read_text())
    assert per_seed["test"]["num_utterances"] == test_utts


# -- reports ----------------------------------------------------------------------------------------
def _bench_results_table():
    path = Path(__file__).resolve().parents[2] / "bench" / "results_table.py"
    spec = importlib.util.spec_from_file_location("bench_results_table", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tables_and_the_html_report_show_a_loso_run_pooled(finished, tmp_path) -> None:
    out, results = finished
    pooled = f"{results['test']['weighted_f1']['mean']:.2f} ± {results['test']['weighted_f1']['std']:.2f}"
    ua = f"UA {results['test']['ua']['mean']:.2f} ± {results['test']['ua']['std']:.2f}"
    row = _bench_results_table().row(out)
    assert row is not None and "LOSO 5 folds" in row and pooled in row and ua in row
    page = render_report([out])
    assert "0,1 × 5 folds (loso)" in page and pooled in page
    assert "Leave-one-session-out folds" in page and "fold 5 seed 1" in page
    table = balance_table([out], ["ogm-ge"])
    assert "| bclstm (loso) | base |" in table and pooled in table
    # A loso run and a split run of the same model are other rows; a loso variant is
    # paired with the loso base run by seed (on each seed's mean over the folds).
    variant = tmp_path / "variant"
    loso(iemocap_like(), variant, overrides=["ogm-ge.alpha=0.5"])
    table = balance_table([out, variant], ["ogm-ge"])
    assert "| bclstm (loso) | +ogm-ge |" in table and "(loso) rows: leave-one-session-out" in table


def test_pooled_std_is_over_folds_and_seeds_and_says_so(finished) -> None:
    _, results = finished
    assert "folds x seeds" in results["protocol"]["std_over"]
    assert math.isfinite(results["test"]["accuracy"]["std"])
    assert len(results["folds"]) == 5 and all(f["dialogues"]["test"] == 3 for f in results["folds"])
