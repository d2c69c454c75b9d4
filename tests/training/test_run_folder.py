"""Fault tests of the run folder: truncated checkpoints, stale best weights, locks, full disks,
mismatched reruns, unreadable metrics, and the fingerprint that ties a run to its data."""

from __future__ import annotations

import errno
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import merc.training.run_folder as run_folder
from bad_input_env import one_error_line, snapshot, train_argv
from helpers import KillAt, assert_same_training, make_dataset
from merc.cli import main
from merc.data.batching import to_tensors
from merc.data.formats.native import write_native
from merc.models import build_model
from merc.training.run_folder import LOCK_FILE, RunLock, dataset_hash, load_torch_file
from merc.training.trainer import BEST_WEIGHTS, CHECKPOINT, PREVIOUS_CHECKPOINT, TrainConfig, Trainer


def _trainer(run_dir: Path | None, epochs: int = 5, plugins=()) -> Trainer:
    ds = make_dataset((5, 7, 3, 6), "ta", seed=4, separable=True)
    torch.manual_seed(0)
    model = build_model("bclstm", in_dims=ds.dims, num_classes=ds.num_classes, hidden_size=8, dense_size=8)
    cfg = TrainConfig(epochs=epochs, batch_size=2, lr=0.01, patience=0, show_progress=False)
    return Trainer(model, to_tensors(ds), ds.modalities, ds.num_classes, cfg, plugins=list(plugins), run_dir=run_dir)


def _killed_at(run_dir: Path, epoch: int, epochs: int = 5) -> None:
    with pytest.raises(KeyboardInterrupt):
        _trainer(run_dir, epochs, plugins=[KillAt(epoch)]).fit()


# -- checkpoints ------------------------------------------------------------------------------------
def test_truncated_last_checkpoint_falls_back_to_the_previous_with_a_warning(tmp_path, caplog) -> None:
    straight = _trainer(tmp_path / "a")
    straight.fit()
    _killed_at(tmp_path / "b", 3)
    assert torch.load(tmp_path / "b" / PREVIOUS_CHECKPOINT, weights_only=True)["epoch"] == 2
    last = tmp_path / "b" / CHECKPOINT
    last.write_bytes(last.read_bytes()[:1000])
    resumed = _trainer(tmp_path / "b")
    with caplog.at_level(logging.WARNING):
        resumed.fit()
    assert "truncated or corrupt" in caplog.text and PREVIOUS_CHECKPOINT in caplog.text
    assert_same_training(resumed, straight)  # epoch 2 trained again, exactly


def test_a_kill_between_the_two_renames_resumes_from_the_previous_checkpoint(tmp_path) -> None:
    straight = _trainer(tmp_path / "a")
    straight.fit()
    _killed_at(tmp_path / "b", 3)
    (tmp_path / "b" / CHECKPOINT).unlink()
    resumed = _trainer(tmp_path / "b")
    resumed.fit()
    assert_same_training(resumed, straight)


def test_best_weights_are_derived_from_the_checkpoint_so_they_cannot_be_stale(tmp_path, monkeypatch) -> None:
    # Every improvement "killed" between the checkpoint and best.pt: best.pt never written.
    monkeypatch.setattr(Trainer, "save_best", lambda self: None)
    _killed_at(tmp_path, 4)
    assert not (tmp_path / BEST_WEIGHTS).exists()
    monkeypatch.undo()
    resumed = _trainer(tmp_path)
    resumed.fit()
    best = load_torch_file(tmp_path / BEST_WEIGHTS, "selected weights")
    in_checkpoint = torch.load(tmp_path / CHECKPOINT, weights_only=True)["best_state"]
    assert best.keys() == in_checkpoint.keys()
    for key in best:
        assert torch.equal(best[key], in_checkpoint[key])
    assert resumed.best_epoch == max(range(5), key=lambda e: (resumed.history[e]["valid_weighted_f1"], -e))


def test_no_checkpoint_readable_is_one_error_saying_what_to_do(tmp_path) -> None:
    _killed_at(tmp_path, 3)
    for name in (CHECKPOINT, PREVIOUS_CHECKPOINT):
        (tmp_path / name).write_bytes(b"PK\x03\x04 not a zip")
    from merc.errors import CheckpointError

    with pytest.raises(CheckpointError, match="no readable checkpoint is left: delete"):
        _trainer(tmp_path).fit()


def test_a_disk_full_at_a_checkpoint_leaves_no_temporary_file_and_the_run_resumes(
    tmp_path, monkeypatch, capsys
) -> None:
    ds = tmp_path / "ds"
    write_native(make_dataset((3, 4, 5, 2), "ta", separable=True), ds)
    straight = tmp_path / "straight"
    assert main(train_argv(ds, straight, "training.epochs=3")) == 0
    calls = {"checkpoint": 0}
    real = run_folder._write_all

    def fill_up(fh, data: bytes, path: Path) -> None:
        if path.name == CHECKPOINT:
            calls["checkpoint"] += 1
            if calls["checkpoint"] == 2:  # the second epoch's checkpoint
                fh.write(data[: len(data) // 3])
                raise OSError(errno.ENOSPC, "No space left on device")
        real(fh, data, path)

    monkeypatch.setattr(run_folder, "_write_all", fill_up)
    run = tmp_path / "run"
    line = one_error_line(capsys, train_argv(ds, run, "training.epochs=3"))
    assert "no space left on device" in line and "checkpoint.pt" in line
    assert not list(run.rglob("*.tmp"))
    assert torch.load(run / "seed_0" / PREVIOUS_CHECKPOINT, weights_only=True)["epoch"] == 1
    assert not (run / "seed_0" / "metrics.json").exists() and not (run / "results.json").exists()
    monkeypatch.undo()
    assert main(train_argv(ds, run, "training.epochs=3")) == 0
    a = json.loads((straight / "results.json").read_text())
    b = json.loads((run / "results.json").read_text())
    assert a["test"] == b["test"] and a["valid"] == b["valid"]


# -- the lock ---------------------------------------------------------------------------------------
HOLD_LOCK = (
    "import sys, time\n"
    "from merc.training.run_folder import RunLock\n"
    "RunLock(sys.argv[1]).acquire()\n"
    "print('locked', flush=True)\n"
    "time.sleep(120)\n"
)


def test_concurrent_start_is_refused_naming_the_pid_and_a_killed_holder_frees_it(tmp_path, capsys) -> None:
    ds = tmp_path / "ds"
    write_native(make_dataset((3, 4, 5, 2), "ta", separable=True), ds)
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        before = snapshot(out)
        line = one_error_line(capsys, train_argv(ds, out))
        assert f"in use by pid {holder.pid}" in line
        assert snapshot(out) == before  # nothing written, the holder's lock file untouched
    finally:
        holder.kill()  # kill -9: the kernel drops its flock, its lock file stays behind
        holder.wait()
    assert (out / LOCK_FILE).is_file()
    assert main(train_argv(ds, out)) == 0  # the stale lock is detected and taken over
    assert not (out / LOCK_FILE).exists()


def test_a_stale_lock_file_of_a_dead_process_is_taken_over_with_a_warning(tmp_path, caplog) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": "here", "started": "then"}))
    with caplog.at_level(logging.WARNING), RunLock(out):
        assert json.loads((out / LOCK_FILE).read_text())["pid"] != dead.pid
    assert f"lock of pid {dead.pid}" in caplog.text and "stale" in caplog.text
    assert not (out / LOCK_FILE).exists()


def test_the_lock_is_released_on_every_way_out(tmp_path, capsys) -> None:
    ds = tmp_path / "ds"
    write_native(make_dataset((3, 4, 5, 2), "ta", separable=True), ds)
    out = tmp_path / "run"
    with RunLock(tmp_path):
        pass
    assert not (tmp_path / LOCK_FILE).exists()
    with pytest.raises(RuntimeError), RunLock(tmp_path):
        raise RuntimeError("boom")
    assert not (tmp_path / LOCK_FILE).exists()
    # An error after the lock was taken (the model cannot be built for this data).
    one_error_line(capsys, train_argv(ds, out, "--modalities", "tv"))
    assert not out.exists()
    # Ctrl-C during training.
    from merc.training import trainer as trainer_module

    def interrupt(self):
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer_module.Trainer, "train_epoch", interrupt)
        assert main(train_argv(ds, out)) == 130
    assert out.is_dir() and not (out / LOCK_FILE).exists()


# -- the fingerprint --------------------------------------------------------------------------------
def test_a_mismatched_rerun_changes_nothing_and_overwrite_starts_afresh(tmp_path, capsys) -> None:
    ds = tmp_path / "ds"
    write_native(make_dataset((3, 4, 5, 2), "ta", separable=True), ds)
    run = tmp_path / "run"
    assert main(train_argv(ds, run)) == 0
    before = snapshot(run)
    line = one_error_line(capsys, train_argv(ds, run, "training.lr=0.5"))
    assert "training.lr=0.5 here, 0.001 in the run" in line and "--overwrite" in line
    assert snapshot(run) == before
    assert main(train_argv(ds, run, "training.lr=0.5", "--overwrite")) == 0
    fingerprint = json.loads((run / "fingerprint.json").read_text())
    assert fingerprint["config"]["training"]["lr"] == 0.5
    # Another spelling of the same values, or another thread count (it does not decide
    # results), is the same run: it resumes.
    same = ("training.lr=5e-1", "training.epochs=1.0", "training.class_weighted_loss=no", "training.num_threads=2")
    assert main(train_argv(ds, run, *same)) == 0
    torch.set_num_threads(1)


def test_fingerprint_hashes_the_data_a_model_sees() -> None:
    ds = make_dataset((3, 4), "ta")
    same = make_dataset((3, 4), "ta")
    assert dataset_hash(ds) == dataset_hash(same)
    same.name = "renamed"
    assert dataset_hash(ds) == dataset_hash(same)
    relabelled = make_dataset((3, 4), "ta")
    relabelled.splits["test"][0].labels[0] = (relabelled.splits["test"][0].labels[0] + 1) % 3
    assert dataset_hash(relabelled) != dataset_hash(ds)
    nudged = make_dataset((3, 4), "ta")
    nudged.splits["valid"][1].features["a"][0, 0] += 1e-6
    assert dataset_hash(nudged) != dataset_hash(ds)


def test_an_unreadable_metrics_file_is_recomputed_from_the_checkpoint(tmp_path, caplog) -> None:
    ds = tmp_path / "ds"
    write_native(make_dataset((3, 4, 5, 2), "ta", separable=True), ds)
    run = tmp_path / "run"
    assert main(train_argv(ds, run, "--seeds", "0,1")) == 0
    original = json.loads((run / "results.json").read_text())
    (run / "seed_1" / "metrics.json").write_bytes(b'{"seed": 1, "test": {"weighted')
    with caplog.at_level(logging.WARNING):
        assert main(train_argv(ds, run, "--seeds", "0,1")) == 0
    assert "seed_1/metrics.json is unreadable" in caplog.text
    again = json.loads((run / "results.json").read_text())
    assert again["test"] == original["test"] and again["valid"] == original["valid"]


def test_evaluate_of_a_run_older_than_fingerprints_warns_and_rescores(tmp_path, caplog) -> None:
    ds = tmp_path / "ds"
    write_native(make_dataset((3, 4, 5, 2), "ta", separable=True), ds)
    run = tmp_path / "run"
    assert main(train_argv(ds, run)) == 0
    (run / "fingerprint.json").unlink()
    with caplog.at_level(logging.WARNING):
        assert main(["evaluate", str(run)]) == 0
    assert "cannot check it is evaluated on its own data" in caplog.text
    results = json.loads((run / "results.json").read_text())
    evaluation = json.loads((run / "evaluation.json").read_text())
    assert evaluation["test"]["weighted_f1"]["per_seed"] == pytest.approx(results["test"]["weighted_f1"]["per_seed"])
    # Rerunning it adopts a fingerprint: the folder is checked from then on.
    assert main(train_argv(ds, run)) == 0
    assert (run / "fingerprint.json").is_file()


# -- warnings ---------------------------------------------------------------------------------------
def test_suspicious_data_is_warned_about(tmp_path, caplog) -> None:
    ds = make_dataset((3, 4, 5, 2), "ta", separable=True)
    for conv in ds.splits["train"]:
        conv.labels[conv.labels == 2] = 0  # class c2 absent from training
        conv.features["a"][:] = 0.5  # audio constant
    write_native(ds, tmp_path / "ds")
    with caplog.at_level(logging.WARNING):
        assert main(train_argv(tmp_path / "ds", tmp_path / "run")) == 0
    assert "class(es) c2 have no training utterance" in caplog.text
    assert "audio features are the same for every training utterance" in caplog.text


def test_plugin_sections_are_checked_before_any_data_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad plug-in option fails in resolve_recipe, before the dataset is read."""
    from merc.errors import ConfigError
    from merc.training import runner

    def no_data(*args: object, **kwargs: object) -> None:
        raise AssertionError("data was loaded before the recipe was checked")

    monkeypatch.setattr(runner, "prepare_dataset", no_data)
    with pytest.raises(ConfigError, match="curriculum.buckets must be a positive integer"):
        runner.resolve_recipe("multidag", "iemocap6", ["curriculum.strategy=emotion-shift", "curriculum.buckets=0"])
    recipe = runner.resolve_recipe("multidag", "iemocap6", ["curriculum.strategy=emotion-shift"])
    assert recipe["curriculum"]["buckets"] == 5  # the dataset's default, filled before the check
