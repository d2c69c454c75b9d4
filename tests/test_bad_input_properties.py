"""Property-based bad input: generated corruptions of a native dataset and generated overrides.

Whatever hypothesis generates, ``merc train`` either stops with one line ``merc: error:``
(exit 2, nothing written) or trains (exit 0) a run whose result is right for the input:
the values it used are the values given (no silent truncation or coercion), the labels
it read are the labels in the file, and its metrics are finite. Never a traceback, never
the exit status of a bug.
"""

from __future__ import annotations

import io
import json
import math
import shutil
import tempfile
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from bad_input_env import CHEAP, train_argv
from helpers import make_dataset
from merc.cli import main
from merc.config import parse_override
from merc.data.formats.native import write_native
from merc.models.registry import check_model_arguments
from merc.training.data_checks import DataOptions
from merc.training.trainer import TrainConfig

SETTINGS = settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def run_merc(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, err.getvalue()


def assert_clean_outcome(code: int, err: str, out: Path) -> None:
    """Exit 0, or exit 2 with one ``merc: error:`` line and no run folder left behind."""
    assert "Traceback" not in err, err
    assert code in (0, 2), f"exit {code}: {err}"
    if code == 2:
        lines = [line for line in err.strip().splitlines() if not line.startswith("WARNING")]
        assert len(lines) == 1 and lines[0].startswith("merc: error: "), err
        assert not out.exists(), "a failed run left its folder behind"
    else:
        results = json.loads((out / "results.json").read_text())
        for split in ("valid", "test"):
            for metric in ("weighted_f1", "accuracy", "macro_f1", "ua"):
                value = results[split][metric]["mean"]
                assert math.isfinite(value) and 0 <= value <= 100, (split, metric, value)  # percent
    if out.parent.exists():
        assert not list(out.parent.rglob("*.tmp")), "a temporary file was left behind"


@pytest.fixture(scope="module")
def clean_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("props") / "ds"
    write_native(make_dataset((3, 4, 5, 2), "ta", separable=True), folder)
    return folder


# -- corrupted native datasets ----------------------------------------------------------------------
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=2),
    max_leaves=5,
)
METADATA_KEYS = ["format_version", "name", "description", "label_names", "modalities", "dims", "speaker_vocab", "meta"]
RECORD_KEYS = ["id", "split", "speakers", "labels", "texts", "utterance_ids", "meta"]


def _skip_if_already_broken(mutate: Callable[[Path], None]) -> Callable[[Path], None]:
    """A mutation of a file an earlier mutation made unreadable does nothing."""

    def safe(folder: Path) -> None:
        try:
            mutate(folder)
        except (ValueError, OSError, TypeError, AttributeError, SafetensorError):
            pass

    return safe


def _set_metadata(key: str, value: Any) -> Callable[[Path], None]:
    @_skip_if_already_broken
    def mutate(folder: Path) -> None:
        meta = json.loads((folder / "metadata.json").read_text())
        meta[key] = value
        (folder / "metadata.json").write_text(json.dumps(meta))

    return mutate


def _set_record(line: int, key: str, value: Any, index: int | None) -> Callable[[Path], None]:
    @_skip_if_already_broken
    def mutate(folder: Path) -> None:
        path = folder / "conversations.jsonl"
        lines = path.read_text().splitlines()
        record = json.loads(lines[line % len(lines)])
        if index is not None and isinstance(record.get(key), list) and record[key]:
            record[key][index % len(record[key])] = value
        else:
            record[key] = value
        lines[line % len(lines)] = json.dumps(record)
        path.write_text("\n".join(lines) + "\n")

    return mutate


def _damage_bytes(name: str, position: float, data: bytes, cut: bool) -> Callable[[Path], None]:
    @_skip_if_already_broken
    def mutate(folder: Path) -> None:
        path = folder / name
        raw = path.read_bytes()
        at = int(position * len(raw))
        path.write_bytes(raw[:at] if cut else raw[:at] + data + raw[at + len(data) :])

    return mutate


def _set_feature(modality: str, which: int, value: float) -> Callable[[Path], None]:
    @_skip_if_already_broken
    def mutate(folder: Path) -> None:
        path = folder / "features" / f"{modality}.safetensors"
        tensors = dict(load_file(path))
        key = sorted(tensors)[which % len(tensors)]
        array = tensors[key].copy()
        array.flat[which % array.size] = value
        tensors[key] = array
        save_file(tensors, path)

    return mutate


FILES = ["metadata.json", "conversations.jsonl", "features/t.safetensors", "features/a.safetensors"]
mutations = st.one_of(
    st.builds(_set_metadata, st.sampled_from(METADATA_KEYS), json_values),
    st.builds(
        _set_record,
        st.integers(0, 11),
        st.sampled_from(RECORD_KEYS),
        json_values,
        st.none() | st.integers(0, 4),
    ),
    st.builds(_damage_bytes, st.sampled_from(FILES), st.floats(0, 1), st.binary(min_size=1, max_size=8), st.booleans()),
    st.builds(
        _set_feature,
        st.sampled_from("ta"),
        st.integers(0, 500),
        st.sampled_from([np.nan, np.inf, -np.inf, 1e30, 0.0, -3.5]),
    ),
)


def _labels_as_written(folder: Path) -> dict[str, list[Any]] | None:
    """The labels of each dialogue as the JSON file holds them (None: not readable as JSON)."""
    try:
        records = [json.loads(line) for line in (folder / "conversations.jsonl").read_bytes().splitlines() if line]
        return {r["id"]: r["labels"] for r in records}
    except (ValueError, KeyError, TypeError):
        return None


@SETTINGS
@given(changes=st.lists(mutations, min_size=1, max_size=3))
def test_a_corrupted_dataset_is_a_clean_error_or_a_faithful_run(clean_dataset: Path, changes) -> None:
    root = Path(tempfile.mkdtemp())
    try:
        folder = root / "ds"
        shutil.copytree(clean_dataset, folder)
        for change in changes:
            change(folder)
        out = root / "run"
        code, err = run_merc(train_argv(folder, out))
        assert_clean_outcome(code, err, out)
        if code == 0:
            from merc.data.formats.native import read_native

            written = _labels_as_written(folder)
            assert written is not None
            read = {c.id: c.labels.tolist() for c in read_native(folder).conversations()}
            assert read.keys() == written.keys()
            for cid, labels in written.items():
                # Read as written: integers, the same ones (no 1.0 -> 1, no True -> 1).
                assert all(type(x) is int for x in labels), labels
                assert read[cid] == labels
            fingerprint = json.loads((out / "fingerprint.json").read_text())
            assert fingerprint["dataset"]["utterances"] == sum(len(v) for v in written.values())
    finally:
        torch.set_num_threads(1)
        shutil.rmtree(root, ignore_errors=True)


# -- generated overrides ----------------------------------------------------------------------------
#: Keys whose valid values cost time or memory: generated only small, or invalid.
COSTLY = {
    "training.epochs": 10**6,
    "training.num_threads": 1024,
    "model.hidden_size": 2**16,
    "model.dense_size": 2**16,
    "training.warmup_epochs": 10**9,
}
KEYS = [
    "training.lr",
    "training.epochs",
    "training.batch_size",
    "training.eval_batch_size",
    "training.weight_decay",
    "training.optimizer",
    "training.momentum",
    "training.scheduler",
    "training.step_size",
    "training.gamma",
    "training.warmup_epochs",
    "training.clip_grad_norm",
    "training.patience",
    "training.selection_metric",
    "training.class_weighted_loss",
    "training.num_threads",
    "training.precision",
    "training.device",
    "training.nope",
    "model.hidden_size",
    "model.dense_size",
    "model.dropout",
    "model.fusion",
    "model.bidirectional",
    "model.unimodal_loss_weight",
    "model.unimodal_heads",
    "model.nope",
    "data.standardize",
    "data.max_utterances_per_dialogue",
    "data.max_feature_gib",
    "data.nope",
    "nope.key",
]
WORDS = ["true", "no", "abc", "", "[1, 2]", "{a: 1}", "null", "1e400", "3.0", "0x10", ".5", "1_000", "nan", "-inf"]
WORDS += ["adam", "AdamW", "sgd", "cosine", "plateau", "macro-f1", "ua", "32", "bf16-mixed", "cpu", "cuda:7", "concat"]


@st.composite
def overrides(draw: st.DrawFn) -> str:
    key = draw(st.sampled_from(KEYS))
    if key in COSTLY:
        value = draw(
            st.sampled_from(WORDS)
            | st.integers(-3, 2).map(str)
            | st.integers(COSTLY[key] + 1, 10**25).map(str)
            | st.floats(-3, 2.5).map(repr)
        )
    else:
        value = draw(
            st.sampled_from(WORDS)
            | st.integers(-(10**25), 10**25).map(str)
            | st.floats(allow_nan=True, allow_infinity=True).map(repr)
            | st.floats(0, 1).map(repr)
        )
    return f"{key}={value}"


def _same_value(given: Any, used: Any) -> bool:
    """Whether a converted option ``used`` means what the override ``given`` said."""
    if isinstance(used, bool):
        text = str(given).strip().lower()
        return text in (("true", "yes", "1") if used else ("false", "no", "0"))
    if isinstance(used, (int, float)):
        return not isinstance(given, bool) and float(given) == float(used)
    if isinstance(used, str):
        return str(given).lower().replace("_", "-") == used.lower().replace("_", "-")
    return True


@SETTINGS
@given(extra=st.lists(overrides(), min_size=1, max_size=3))
def test_generated_overrides_are_a_clean_error_or_used_as_given(clean_dataset: Path, extra: list[str]) -> None:
    root = Path(tempfile.mkdtemp())
    try:
        out = root / "run"
        code, err = run_merc(train_argv(clean_dataset, out, *extra))
        assert_clean_outcome(code, err, out)
        if code == 0:
            cfg = yaml.safe_load((out / "config.yaml").read_text())
            used = {
                **{f"training.{k}": v for k, v in vars(TrainConfig.from_dict(cfg["training"])).items()},
                **{f"model.{k}": v for k, v in check_model_arguments("bclstm", cfg["model"]).items()},
                **{f"data.{k}": v for k, v in vars(DataOptions.from_recipe(cfg)).items()},
            }
            last: dict[str, Any] = {}
            for text in [*CHEAP, *extra]:
                parts, value = parse_override(text)
                last[".".join(parts)] = value
            for key, value in last.items():
                assert key in used, key
                assert _same_value(value, used[key]), (key, value, used[key])
    finally:
        torch.set_num_threads(1)
        shutil.rmtree(root, ignore_errors=True)
